/* Unit tests for reqparse: request lines, fields and what is refused in
 * them, the framing rules (one Content-Length, exactly chunked), chunk
 * extensions and trailers, the limits (414, 431, 413) and whether each is
 * fatal, keep-alive by version and Connection, 100-continue, and where a
 * request ends in a pipeline. Every request is also parsed in pieces of 1,
 * 2 and 3 bytes, and must read the same. */
#include <event2/buffer.h>
#include <event2/http.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quotecache/reqparse.h"

static const reqparse_limits LIM = {.max_uri = 64, .max_headers = 256, .max_body = 32};

typedef struct parsed {
    reqparse_result r;
    int method, minor, err_status;
    const char *err_code;
    bool keep_alive, expect_continue, head_done;
    size_t used;
    char target[512];
    char body[256];
    size_t body_len;
    char fields[1024]; /* "name=value;" each */
} parsed;

static parsed parse_in(const char *text, size_t n, size_t step)
{
    parsed out = {0};
    struct evbuffer *body = evbuffer_new();
    reqparse p;
    reqparse_init(&p, &LIM, body);
    size_t start = 0, avail = 0;
    reqparse_result r = REQPARSE_MORE;
    while (r == REQPARSE_MORE && avail < n) {
        avail = step == 0 || avail + step > n ? n : avail + step;
        size_t used = 0;
        r = reqparse_feed(&p, text + start, avail - start, &used);
        start += used;
    }
    out.r = r;
    out.method = p.method;
    out.minor = p.minor;
    out.err_status = p.err_status;
    out.err_code = p.err_code;
    out.keep_alive = p.keep_alive;
    out.expect_continue = p.expect_continue;
    out.head_done = p.head_done;
    out.used = start;
    if (p.target)
        snprintf(out.target, sizeof(out.target), "%s", p.target);
    out.body_len = evbuffer_get_length(body);
    evbuffer_copyout(body, out.body, sizeof(out.body) - 1);
    size_t o = 0;
    for (const struct evkeyval *kv = p.fields.tqh_first; kv; kv = kv->next.tqe_next) {
        int w = snprintf(out.fields + o, sizeof(out.fields) - o, "%s=%s;", kv->key, kv->value);
        o = w < 0 || (size_t)w >= sizeof(out.fields) - o ? sizeof(out.fields) - 1 : o + (size_t)w;
    }
    if (r != REQPARSE_MORE) { /* it stays, and takes nothing more */
        size_t used = 1;
        CHECK(reqparse_feed(&p, text, n, &used) == r && used == 0);
    }
    reqparse_clear(&p);
    evbuffer_free(body);
    return out;
}

static bool same(const parsed *a, const parsed *b)
{
    return a->r == b->r && a->method == b->method && a->minor == b->minor &&
           a->err_status == b->err_status && a->keep_alive == b->keep_alive &&
           a->expect_continue == b->expect_continue && a->used == b->used &&
           strcmp(a->target, b->target) == 0 && a->body_len == b->body_len &&
           memcmp(a->body, b->body, sizeof(a->body)) == 0 && strcmp(a->fields, b->fields) == 0;
}

static int ndiffer;

static parsed parse(const char *text)
{
    size_t n = strlen(text);
    parsed whole = parse_in(text, n, 0);
    for (size_t step = 1; step <= 3; step++) {
        parsed bytes = parse_in(text, n, step);
        if (!same(&whole, &bytes)) {
            ndiffer++;
            fprintf(stderr, "in steps of %zu, reads otherwise: %s\n", step, text);
        }
    }
    return whole;
}

static bool bad(const char *text, int status, const char *code)
{
    parsed p = parse(text);
    return p.r == REQPARSE_BAD && p.err_status == status && p.err_code != NULL &&
           strcmp(p.err_code, code) == 0 && !p.keep_alive;
}

static bool deferred(const char *text, int status, const char *code)
{
    parsed p = parse(text);
    return p.r == REQPARSE_DONE && p.err_status == status && strcmp(p.err_code, code) == 0 &&
           p.used == strlen(text);
}

static void test_request_line(void)
{
    parsed p = parse("GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(p.r == REQPARSE_DONE && p.method == EVHTTP_REQ_GET && p.minor == 1);
    CHECK(strcmp(p.target, "/a?b=1") == 0 && strcmp(p.fields, "Host=x;") == 0);
    CHECK(p.err_status == 0 && p.keep_alive && !p.expect_continue && p.body_len == 0);
    p = parse("PATCH /x HTTP/1.0\r\n\r\n");
    CHECK(p.r == REQPARSE_DONE && p.method == EVHTTP_REQ_PATCH && p.minor == 0 && !p.keep_alive);
    p = parse("PROPFIND /x HTTP/1.1\r\n\r\n");
    CHECK(p.r == REQPARSE_DONE && p.method == REQPARSE_METHOD_UNKNOWN);
    p = parse("get /x HTTP/1.1\r\n\r\n"); /* methods are case-sensitive */
    CHECK(p.r == REQPARSE_DONE && p.method == REQPARSE_METHOD_UNKNOWN);
    /* Blank lines before a request line are skipped (RFC 9112 2.2). */
    p = parse("\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    CHECK(p.r == REQPARSE_DONE && strcmp(p.target, "/") == 0);
    /* A bare LF ends a line as well. */
    p = parse("GET / HTTP/1.1\nHost: y\n\n");
    CHECK(p.r == REQPARSE_DONE && strcmp(p.fields, "Host=y;") == 0);
    CHECK(bad("GARBAGE\r\n\r\n", 400, "bad_request"));
    CHECK(bad("GET /healthz HTTP/9.9\r\n\r\n", 400, "bad_request"));
    CHECK(bad("GET /healthz HTTP/1.10\r\n\r\n", 400, "bad_request"));
    CHECK(bad("GET /healthz\r\n\r\n", 400, "bad_request")); /* HTTP/0.9 */
    CHECK(bad("G@T / HTTP/1.1\r\n\r\n", 400, "bad_request"));
    CHECK(bad(" / HTTP/1.1\r\n\r\n", 400, "bad_request"));
    CHECK(bad("GET  HTTP/1.1\r\n\r\n", 400, "bad_request"));
    /* A target with spaces or control bytes is named as such, and the
     * request is read to its end: the connection may carry on. */
    CHECK(deferred("GET /echo HTTP/1.1\rHost: evil\r HTTP/1.1\r\nHost: x\r\n\r\n", 400,
                   "bad_target"));
    CHECK(deferred("GET /a b HTTP/1.1\r\n\r\n", 400, "bad_target"));
    CHECK(deferred("GET /a\tb HTTP/1.1\r\n\r\n", 400, "bad_target"));
    CHECK(deferred("GET /a\x7f HTTP/1.1\r\n\r\n", 400, "bad_target"));
    static const char nul[] = "GET /a\0b HTTP/1.1\r\n\r\n";
    parsed w = parse_in(nul, sizeof(nul) - 1, 0);
    CHECK(w.r == REQPARSE_DONE && w.err_status == 400 && strcmp(w.err_code, "bad_target") == 0);
    p = parse("GET /echo?a=%0D%20b HTTP/1.1\r\n\r\n");
    CHECK(p.r == REQPARSE_DONE && p.err_status == 0);
}

static void test_fields(void)
{
    parsed p = parse("GET / HTTP/1.1\r\nA:  1 \r\nB:\r\nA: 2\t\r\n\r\n");
    CHECK(p.r == REQPARSE_DONE && strcmp(p.fields, "A=1;B=;A=2;") == 0);
    CHECK(bad("GET / HTTP/1.1\r\nHost x\r\n\r\n", 400, "bad_field"));
    CHECK(bad("GET / HTTP/1.1\r\n: empty\r\n\r\n", 400, "bad_field"));
    CHECK(bad("GET / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n", 400, "bad_field"));
    CHECK(bad("GET / HTTP/1.1\r\nX\t: 1\r\n\r\n", 400, "bad_field"));
    CHECK(bad("GET / HTTP/1.1\r\nX Bad: 1\r\n\r\n", 400, "bad_field"));
    CHECK(bad("GET / HTTP/1.1\r\nX@Y: 1\r\n\r\n", 400, "bad_field"));
    CHECK(bad("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400, "bad_field")); /* obs-fold */
    CHECK(bad("GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400, "bad_field"));
    CHECK(bad("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400, "bad_field")); /* bare CR */
    static const char nul[] = "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n";
    parsed w = parse_in(nul, sizeof(nul) - 1, 0);
    CHECK(w.r == REQPARSE_BAD && strcmp(w.err_code, "bad_field") == 0);
}

static void test_framing(void)
{
    parsed p = parse("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    CHECK(p.r == REQPARSE_DONE && p.body_len == 5 && memcmp(p.body, "hello", 5) == 0);
    p = parse("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    CHECK(p.r == REQPARSE_DONE && p.body_len == 0);
    p = parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
              "3\r\nabc\r\n4;ext=1;b=\"x\"\r\ndefg\r\nA \r\n0123456789\r\n0\r\nT: 1\r\n\r\n");
    CHECK(p.r == REQPARSE_DONE && p.body_len == 17 && memcmp(p.body, "abcdefg0123456789", 17) == 0);
    p = parse("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n");
    CHECK(p.r == REQPARSE_DONE && p.body_len == 0);
    CHECK(bad("POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
              "bad_framing"));
    CHECK(bad("POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", 400,
              "bad_framing"));
    CHECK(bad("POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\nabcd", 400, "bad_framing"));
    CHECK(bad("POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\nabcd", 400, "bad_framing"));
    CHECK(bad("POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, "bad_framing"));
    CHECK(bad("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", 400, "bad_framing"));
    CHECK(bad("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400, "bad_framing"));
    CHECK(
        bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400, "bad_framing"));
    CHECK(bad("POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", 400, "bad_framing"));
    CHECK(bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
              "\r\n",
              400, "bad_framing"));
    CHECK(bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n", 400,
              "bad_framing"));
    CHECK(bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-4\r\nabcd\r\n", 400,
              "bad_framing"));
    CHECK(bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n", 400,
              "bad_framing"));
    CHECK(bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\rx\r\nab\r\n", 400,
              "bad_framing"));
    /* RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 request is faulty
     * framing (a 1.0 hop before us may not have read it as chunked), even
     * with keep-alive asked for. */
    CHECK(bad("POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
              "3\r\nabc\r\n0\r\n\r\n",
              400, "bad_framing"));
}

static void test_limits(void)
{
    char buf[2048];
    /* 64 bytes of target: fine; 65: 414, deferred; the body is still read. */
    snprintf(buf, sizeof(buf), "GET /%063d HTTP/1.1\r\n\r\n", 0);
    CHECK(parse(buf).r == REQPARSE_DONE && parse(buf).err_status == 0);
    snprintf(buf, sizeof(buf), "POST /%064d HTTP/1.1\r\nContent-Length: 2\r\n\r\nab", 0);
    CHECK(deferred(buf, 414, "uri_too_long"));
    /* 414 before bad framing, but then it closes. */
    snprintf(buf, sizeof(buf),
             "POST /%064d HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab", 0);
    CHECK(bad(buf, 414, "uri_too_long"));
    /* Past the head's hard bound (2 * 256 + 64 + 1024) in the line: fatal. */
    char big[1800];
    memset(big, 'a', sizeof(big));
    memcpy(big, "GET /", 5);
    big[sizeof(big) - 1] = '\0';
    CHECK(bad(big, 414, "uri_too_long"));
    /* Fields: 256 bytes as counted (name + value + 4): fine; one more: 431. */
    snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nX: %0251d\r\n\r\n", 0);
    CHECK(parse(buf).r == REQPARSE_DONE && parse(buf).err_status == 0);
    snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nX: %0252d\r\n\r\n", 0);
    CHECK(deferred(buf, 431, "headers_too_large"));
    /* 431 is named before a bad target. */
    snprintf(buf, sizeof(buf), "GET /a\x01 HTTP/1.1\r\nX: %0252d\r\n\r\n", 0);
    CHECK(deferred(buf, 431, "headers_too_large"));
    snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nX: %01700d\r\n\r\n", 0);
    CHECK(bad(buf, 431, "headers_too_large"));
    /* Bodies: 32 bytes fine, 33 refused before they are read. */
    parsed p = parse("POST / HTTP/1.1\r\nContent-Length: 32\r\n\r\n"
                     "0123456789abcdef0123456789abcdef");
    CHECK(p.r == REQPARSE_DONE && p.body_len == 32);
    p = parse("POST / HTTP/1.1\r\nContent-Length: 33\r\n\r\n");
    CHECK(p.r == REQPARSE_BAD && p.err_status == 413 && strcmp(p.err_code, "body_too_large") == 0);
    CHECK(bad("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 413,
              "body_too_large"));
    CHECK(bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n"
              "0123456789abcdef0123456789abcdef\r\n1\r\n",
              413, "body_too_large"));
    CHECK(bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", 413,
              "body_too_large"));
}

static void test_connection(void)
{
    CHECK(parse("GET / HTTP/1.1\r\n\r\n").keep_alive);
    CHECK(!parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    CHECK(!parse("GET / HTTP/1.1\r\nConnection: Keep-Alive, Close\r\n\r\n").keep_alive);
    CHECK(!parse("GET / HTTP/1.0\r\n\r\n").keep_alive);
    CHECK(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    CHECK(
        !parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n").keep_alive);
    /* 100-continue: only with a body to come, on HTTP/1.1. */
    parsed p = parse("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab");
    CHECK(p.r == REQPARSE_DONE && p.expect_continue);
    CHECK(!parse("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    CHECK(!parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab")
               .expect_continue);
    /* The head is known before the body arrives. */
    struct evbuffer *body = evbuffer_new();
    reqparse rp;
    reqparse_init(&rp, &LIM, body);
    const char *h = "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
    size_t used = 0;
    CHECK(reqparse_feed(&rp, h, strlen(h), &used) == REQPARSE_MORE && used == strlen(h));
    CHECK(rp.head_done && rp.expect_continue && reqparse_started(&rp));
    CHECK(reqparse_feed(&rp, "ab", 2, &used) == REQPARSE_DONE && used == 2);
    reqparse_clear(&rp);
    reqparse_init(&rp, &LIM, body);
    CHECK(!reqparse_started(&rp));
    CHECK(reqparse_feed(&rp, "\r\n", 2, &used) == REQPARSE_MORE && !reqparse_started(&rp));
    CHECK(reqparse_feed(&rp, "G", 1, &used) == REQPARSE_MORE && used == 0 && reqparse_started(&rp));
    reqparse_clear(&rp);
    evbuffer_free(body);
}

static void test_pipeline(void)
{
    const char *two = "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /b HTTP/1.1\r\n\r\n";
    parsed p = parse(two);
    CHECK(p.r == REQPARSE_DONE && strcmp(p.target, "/a") == 0 && p.body_len == 3);
    CHECK(p.used == strlen(two) - strlen("GET /b HTTP/1.1\r\n\r\n"));
    const char *chunked = "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
                          "\r\nGET /b HTTP/1.1\r\n\r\n";
    p = parse(chunked);
    CHECK(p.r == REQPARSE_DONE && p.used == strlen(chunked) - strlen("GET /b HTTP/1.1\r\n\r\n"));
    /* A smuggled request in a body is a body. */
    p = parse("POST /a HTTP/1.1\r\nContent-Length: 21\r\n\r\nGET /admin HTTP/1.1\r\n");
    CHECK(p.r == REQPARSE_DONE && p.body_len == 21 && strcmp(p.target, "/a") == 0);
}

int main(void)
{
    test_request_line();
    test_fields();
    test_framing();
    test_limits();
    test_connection();
    test_pipeline();
    CHECK(ndiffer == 0);
    return CHECK_DONE();
}
