/* Unit tests for upresp: status lines, fields and what is refused in them,
 * the framing rules of RFC 9112 6.3, chunked decoding, interim answers,
 * connection reuse and the bounds. Every answer is also parsed a byte at
 * a time, and must read the same. */
#include <event2/buffer.h>
#include <event2/http.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quotecache/upresp.h"

typedef struct parsed {
    upresp_result r;
    int status;
    bool reusable, coded, bad_name;
    size_t used; /* bytes taken in all */
    char body[256];
    size_t body_len;
    char fields[512]; /* "name=value;" each */
} parsed;

/* Feeds text[0..n) in pieces of step bytes (0: whole), handing back what
 * was not taken, then the close when eof and the answer wants more. */
static parsed parse_in(const char *text, size_t n, bool head, size_t max_body, size_t step,
                       bool eof)
{
    parsed out = {0};
    struct evbuffer *body = evbuffer_new();
    upresp p;
    upresp_init(&p, head, max_body, body);
    size_t start = 0, avail = 0;
    upresp_result r = UPRESP_MORE;
    while (r == UPRESP_MORE && avail < n) {
        avail = step == 0 || avail + step > n ? n : avail + step;
        size_t used = 0;
        r = upresp_feed(&p, text + start, avail - start, &used);
        start += used;
    }
    if (r == UPRESP_MORE && eof)
        r = upresp_eof(&p);
    out.r = r;
    out.status = p.status;
    out.reusable = p.reusable;
    out.coded = p.coded;
    out.bad_name = p.bad_name;
    out.used = start;
    out.body_len = evbuffer_get_length(body);
    evbuffer_copyout(body, out.body, sizeof(out.body) - 1);
    size_t o = 0;
    for (const struct evkeyval *kv = p.fields.tqh_first; kv; kv = kv->next.tqe_next) {
        int w = snprintf(out.fields + o, sizeof(out.fields) - o, "%s=%s;", kv->key, kv->value);
        o = w < 0 || (size_t)w >= sizeof(out.fields) - o ? sizeof(out.fields) - 1 : o + (size_t)w;
    }
    upresp_clear(&p);
    evbuffer_free(body);
    return out;
}

static bool same(const parsed *a, const parsed *b)
{
    return a->r == b->r && a->status == b->status && a->reusable == b->reusable &&
           a->coded == b->coded && a->bad_name == b->bad_name && a->used == b->used &&
           a->body_len == b->body_len && memcmp(a->body, b->body, sizeof(a->body)) == 0 &&
           strcmp(a->fields, b->fields) == 0;
}

static int ndiffer; /* answers whose byte-at-a-time reading differed */

static parsed parse_opts(const char *text, bool head, size_t max_body, bool eof)
{
    size_t n = strlen(text);
    parsed whole = parse_in(text, n, head, max_body, 0, eof);
    for (size_t step = 1; step <= 3; step++) {
        parsed bytes = parse_in(text, n, head, max_body, step, eof);
        if (!same(&whole, &bytes)) {
            ndiffer++;
            fprintf(stderr, "in steps of %zu, reads otherwise: %s\n", step, text);
        }
    }
    return whole;
}

static parsed parse(const char *text)
{
    return parse_opts(text, false, 1000, true);
}

static void test_content_length(void)
{
    parsed p = parse("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
                     "helloGET");
    CHECK(p.r == UPRESP_DONE && p.status == 200 && p.reusable && !p.coded);
    CHECK(p.body_len == 5 && strcmp(p.body, "hello") == 0);
    CHECK(p.used == 69); /* what follows is not taken */
    CHECK(strcmp(p.fields, "Content-Type=text/plain;Content-Length=5;") == 0);
    /* bare LF line ends, a status without reason, OWS around values */
    p = parse("HTTP/1.1 404\nX-A:  a b \t\nContent-Length:2\n\nno");
    CHECK(p.r == UPRESP_DONE && p.status == 404 && strcmp(p.body, "no") == 0);
    CHECK(strcmp(p.fields, "X-A=a b;Content-Length=2;") == 0);
    p = parse("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n");
    CHECK(p.r == UPRESP_DONE && p.body_len == 0 && p.reusable);
    /* short: the close comes first */
    p = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel");
    CHECK(p.r == UPRESP_BROKEN);
    p = parse_opts("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", false, 1000, false);
    CHECK(p.r == UPRESP_MORE && p.body_len == 3);
}

static void test_content_length_lists(void)
{
    parsed p = parse("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 003\r\n\r\nabc");
    CHECK(p.r == UPRESP_DONE && strcmp(p.body, "abc") == 0);
    const char *bad[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd",
        "HTTP/1.1 200 OK\r\nContent-Length: 3,\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n",
        /* a HEAD's length is passed on: it must mean one thing too */
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(parse_opts(bad[i], i == 7, 1000, true).r == UPRESP_BROKEN);
}

static void test_chunked(void)
{
    parsed p = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5;name=value\r\nhello\r\n1 ; x\r\n \r\nA\r\n0123456789\r\n"
                     "0\r\nX-Trailer: t\r\nAnother: u\r\n\r\nnext");
    CHECK(p.r == UPRESP_DONE && p.reusable && !p.coded);
    CHECK(strcmp(p.body, "hello 0123456789") == 0);
    CHECK(strcmp(p.fields, "Transfer-Encoding=chunked;") == 0); /* trailers discarded */
    p = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n\r\n"
              "3\r\nabc\r\n0\r\n\r\n");
    CHECK(p.r == UPRESP_DONE && p.coded && strcmp(p.body, "abc") == 0);
    /* Transfer-Encoding overrides Content-Length; the connection is not kept */
    p = parse("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
              "3\r\nabc\r\n0\r\n\r\n");
    CHECK(p.r == UPRESP_DONE && !p.reusable && strcmp(p.body, "abc") == 0);
    const char *bad[] = {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3 x\r\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", /* no last chunk */
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(parse(bad[i]).r == UPRESP_BROKEN);
    /* a chunk-size line is bounded, extensions included */
    char line[1200];
    snprintf(line, sizeof(line), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;%01100d",
             0);
    CHECK(parse(line).r == UPRESP_BROKEN);
}

static void test_to_the_close(void)
{
    parsed p = parse("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold style");
    CHECK(p.r == UPRESP_DONE && !p.reusable && strcmp(p.body, "old style") == 0);
    p = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzipped");
    CHECK(p.r == UPRESP_DONE && p.coded && !p.reusable && strcmp(p.body, "zipped") == 0);
    p = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nzipped");
    CHECK(p.r == UPRESP_DONE && p.coded && strcmp(p.body, "zipped") == 0);
    p = parse("HTTP/1.1 200 OK\r\n\r\n");
    CHECK(p.r == UPRESP_DONE && p.body_len == 0);
    p = parse_opts("HTTP/1.1 200 OK\r\n\r\nsome", false, 1000, false);
    CHECK(p.r == UPRESP_MORE && p.body_len == 4); /* only the close ends it */
}

static void test_no_body(void)
{
    parsed p =
        parse_opts("HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nHTTP/1.1 204", true, 10, true);
    CHECK(p.r == UPRESP_DONE && p.body_len == 0 && p.reusable && p.used == 39);
    p = parse("HTTP/1.1 304 Not Modified\r\nContent-Length: 20\r\nETag: \"a\"\r\n\r\n");
    CHECK(p.r == UPRESP_DONE && p.status == 304 && p.body_len == 0);
    p = parse("HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n");
    CHECK(p.r == UPRESP_DONE && p.status == 204 && p.body_len == 0 && p.reusable);
}

static void test_interim_answers(void)
{
    parsed p = parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                     "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok");
    CHECK(p.r == UPRESP_DONE && p.status == 201 && strcmp(p.body, "ok") == 0);
    CHECK(strcmp(p.fields, "Content-Length=2;") == 0); /* the interim fields are gone */
    CHECK(parse("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n").r == UPRESP_BROKEN);
}

static void test_reuse(void)
{
    CHECK(parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").reusable);
    CHECK(!parse("HTTP/1.1 200 OK\r\nConnection: x, Close\r\nContent-Length: 0\r\n\r\n").reusable);
    CHECK(!parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").reusable);
    CHECK(parse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").reusable);
    /* close wins over keep-alive in HTTP/1.0 as in 1.1 (review3: it was kept) */
    CHECK(!parse("HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n")
               .reusable);
    CHECK(!parse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\n"
                 "Content-Length: 0\r\n\r\n")
               .reusable);
}

static void test_broken_heads(void)
{
    const char *bad[] = {
        "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-Space : a\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\n: a\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX(y): a\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-Cr: a\rb\r\nContent-Length: 0\r\n\r\n",
        "HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 600 OK\r\nContent-Length: 0\r\n\r\n",
        "http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", /* closed inside the head */
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        parsed p = parse(bad[i]);
        CHECK(p.r == UPRESP_BROKEN);
        if (p.r != UPRESP_BROKEN)
            fprintf(stderr, "read as an answer: %s\n", bad[i]);
        /* the three bad names, and only they, say so (502 upstream_bad_field) */
        CHECK(p.bad_name == (i >= 2 && i <= 4));
    }
    /* a NUL in a value (strlen would stop at it: fed by length here) */
    const char nul[] = "HTTP/1.1 200 OK\r\nX-Nul: a\0b\r\nContent-Length: 0\r\n\r\n";
    struct evbuffer *b = evbuffer_new();
    upresp p;
    size_t used;
    upresp_init(&p, false, 100, b);
    CHECK(upresp_feed(&p, nul, sizeof(nul) - 1, &used) == UPRESP_BROKEN);
    CHECK(upresp_feed(&p, nul, sizeof(nul) - 1, &used) == UPRESP_BROKEN && used == 0);
    upresp_clear(&p);
    evbuffer_free(b);
}

static void test_head_bound(void)
{
    size_t big = UPRESP_HEAD_MAX + 100;
    char *text = malloc(big + 100);
    /* one field that makes the head just fit, then one byte over */
    const char *start = "HTTP/1.1 200 OK\r\nX-Big: ";
    const char *tail = "\r\nContent-Length: 0\r\n\r\n";
    size_t pad = UPRESP_HEAD_MAX - strlen(start) - strlen(tail);
    memcpy(text, start, strlen(start));
    memset(text + strlen(start), 'a', pad);
    strcpy(text + strlen(start) + pad, tail);
    parsed p = parse_in(text, strlen(text), false, 100, 0, true);
    CHECK(p.r == UPRESP_DONE);
    CHECK(parse_in(text, strlen(text), false, 100, 4096, true).r == UPRESP_DONE);
    memset(text + strlen(start), 'a', pad + 1);
    strcpy(text + strlen(start) + pad + 1, tail);
    CHECK(parse_in(text, strlen(text), false, 100, 0, true).r == UPRESP_BROKEN);
    CHECK(parse_in(text, strlen(text), false, 100, 4096, true).r == UPRESP_BROKEN);
    /* many small fields count the same */
    size_t o = (size_t)sprintf(text, "HTTP/1.1 200 OK\r\n");
    while (o < UPRESP_HEAD_MAX)
        o += (size_t)sprintf(text + o, "X: y\r\n");
    strcpy(text + o, "\r\n");
    CHECK(parse_in(text, strlen(text), false, 100, 1000, true).r == UPRESP_BROKEN);
    /* the bound holds before the line ends: no LF ever comes */
    memset(text, 'H', big);
    CHECK(parse_in(text, big, false, 100, 1000, false).r == UPRESP_BROKEN);
    free(text);
}

static void test_body_bound(void)
{
    CHECK(parse_opts("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false, 5, true).r ==
          UPRESP_DONE);
    CHECK(parse_opts("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello!", false, 5, true).r ==
          UPRESP_TOO_LARGE);
    CHECK(parse_opts("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
                     "2\r\nde\r\n0\r\n\r\n",
                     false, 5, true)
              .r == UPRESP_DONE);
    CHECK(parse_opts("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
                     "3\r\ndef\r\n0\r\n\r\n",
                     false, 5, true)
              .r == UPRESP_TOO_LARGE);
    CHECK(parse_opts("HTTP/1.0 200 OK\r\n\r\nhello", false, 5, true).r == UPRESP_DONE);
    CHECK(parse_opts("HTTP/1.0 200 OK\r\n\r\nhello!", false, 5, true).r == UPRESP_TOO_LARGE);
    /* a HEAD's length is no body */
    CHECK(parse_opts("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n", true, 5, true).r ==
          UPRESP_DONE);
}

int main(void)
{
    test_content_length();
    test_content_length_lists();
    test_chunked();
    test_to_the_close();
    test_no_body();
    test_interim_answers();
    test_reuse();
    test_broken_heads();
    test_head_bound();
    test_body_bound();
    CHECK(ndiffer == 0);
    return CHECK_DONE();
}
