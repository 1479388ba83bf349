/* Unit tests for proxyhdr: hop-by-hop removal (by name and by Connection),
 * the forwarding fields, and the framing checks against smuggling. */
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include "check.h"
#include "quotecache/hdrlist.h"
#include "quotecache/proxyhdr.h"
#include "quotecache/upstream.h"

static int count(const struct evkeyvalq *h, const char *name)
{
    int n = 0;
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next)
        n += strcasecmp(kv->key, name) == 0;
    return n;
}

static void test_hop_by_hop_names(void)
{
    const char *hop[] = {"Connection",
                         "keep-alive",
                         "TE",
                         "Trailer",
                         "transfer-encoding",
                         "Upgrade",
                         "Proxy-Authorization",
                         "proxy-connection",
                         "Proxy-Authenticate"};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        CHECK(proxyhdr_is_hop_by_hop(hop[i]));
    CHECK(!proxyhdr_is_hop_by_hop("Host"));
    CHECK(!proxyhdr_is_hop_by_hop("Trailers")); /* not Trailer */
    CHECK(!proxyhdr_is_hop_by_hop("Proxy"));    /* no dash: not Proxy-* */
    CHECK(!proxyhdr_is_hop_by_hop("Content-Length"));
    CHECK(!proxyhdr_is_hop_by_hop("X-Connection"));
}

static void test_copy_drops_hop_and_connection_listed(void)
{
    struct evkeyvalq in, out;
    TAILQ_INIT(&in);
    TAILQ_INIT(&out);
    evhttp_add_header(&in, "Host", "shop.example");
    evhttp_add_header(&in, "Connection", "keep-alive, X-Secret");
    evhttp_add_header(&in, "Connection", "x-other");
    evhttp_add_header(&in, "X-Secret", "1");
    evhttp_add_header(&in, "X-Other", "2");
    evhttp_add_header(&in, "Keep-Alive", "timeout=5");
    evhttp_add_header(&in, "Transfer-Encoding", "chunked");
    evhttp_add_header(&in, "Proxy-Authorization", "Basic x");
    evhttp_add_header(&in, "Content-Length", "5");
    evhttp_add_header(&in, "Expect", "100-continue");
    evhttp_add_header(&in, "Cookie", "a=1");
    evhttp_add_header(&in, "Cookie", "b=2");
    proxyhdr_copy_end_to_end(&in, &out, proxyhdr_request_skip);
    CHECK(count(&out, "Host") == 1);
    CHECK(count(&out, "Cookie") == 2); /* repeated fields stay repeated */
    const char *gone[] = {
        "Connection",          "X-Secret",       "X-Other", "Keep-Alive", "Transfer-Encoding",
        "Proxy-Authorization", "Content-Length", "Expect"};
    for (size_t i = 0; i < sizeof(gone) / sizeof(gone[0]); i++)
        CHECK(count(&out, gone[i]) == 0);
    CHECK(out.tqh_first != NULL && strcmp(out.tqh_first->key, "Host") == 0); /* order kept */
    hdrlist_clear(&in);
    hdrlist_clear(&out);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A Connection field among many others, as a 64 KiB answer head holds
 * (21k fields "a:"), or a long Connection list beside many fields: every
 * field was asked of every other (the whole list walked for Connection
 * fields per field), 1.7 s of a worker's loop per answer (review3). */
static void test_connection_among_many_fields_is_linear(void)
{
    struct evkeyvalq in, out;
    TAILQ_INIT(&in);
    TAILQ_INIT(&out);
    evhttp_add_header(&in, "Connection", "X-Gone");
    for (int i = 0; i < 21000; i++)
        evhttp_add_header(&in, "a", "");
    evhttp_add_header(&in, "X-Gone", "1");
    double t0 = now_s();
    proxyhdr_move_end_to_end(&in, &out, proxyhdr_response_skip);
    double took = now_s() - t0;
    CHECK(count(&out, "a") == 21000 && count(&out, "X-Gone") == 0);
    CHECK(took < 0.3);
    if (took >= 0.3)
        fprintf(stderr, "21k fields beside a Connection field: %.2f s\n", took);
    hdrlist_clear(&in);
    hdrlist_clear(&out);

    /* 8k tokens listed, 8k fields: */
    size_t n = 8000;
    char *list = malloc(3 * n + 16);
    char *o = list;
    for (size_t i = 0; i < n; i++) {
        memcpy(o, "t, ", 3);
        o += 3;
    }
    memcpy(o, "X-Gone", 7);
    evhttp_add_header(&in, "Connection", list);
    for (size_t i = 0; i < n; i++)
        evhttp_add_header(&in, "f", "");
    evhttp_add_header(&in, "t", "1");
    evhttp_add_header(&in, "x-gone", "1");
    t0 = now_s();
    proxyhdr_move_end_to_end(&in, &out, proxyhdr_response_skip);
    took = now_s() - t0;
    CHECK(count(&out, "f") == (int)n && count(&out, "t") == 0 && count(&out, "X-Gone") == 0);
    CHECK(took < 0.3);
    if (took >= 0.3)
        fprintf(stderr, "8k fields beside 8k Connection tokens: %.2f s\n", took);
    free(list);
    hdrlist_clear(&in);
    hdrlist_clear(&out);
}

static void test_response_copy_keeps_end_to_end(void)
{
    struct evkeyvalq in, out;
    TAILQ_INIT(&in);
    TAILQ_INIT(&out);
    evhttp_add_header(&in, "Set-Cookie", "s=1");
    evhttp_add_header(&in, "Content-Length", "10");
    evhttp_add_header(&in, "Upgrade", "h2c");
    evhttp_add_header(&in, "Via", "1.1 legacy");
    evhttp_add_header(&in, "X-Forwarded-For", "kept in answers");
    evhttp_add_header(&in, "X-Cache", "HIT");
    evhttp_add_header(&in, "Cache-Status", "legacy; hit");
    proxyhdr_copy_end_to_end(&in, &out, proxyhdr_response_skip);
    CHECK(count(&out, "X-Cache") == 0);
    CHECK(count(&out, "Cache-Status") == 1);
    CHECK(count(&out, "Set-Cookie") == 1);
    CHECK(count(&out, "X-Forwarded-For") == 1);
    CHECK(count(&out, "Content-Length") == 0);
    CHECK(count(&out, "Upgrade") == 0);
    CHECK(count(&out, "Via") == 0);
    hdrlist_clear(&in);
    hdrlist_clear(&out);
}

static void test_forwarded_fields(void)
{
    struct evkeyvalq in, out;
    TAILQ_INIT(&in);
    TAILQ_INIT(&out);
    proxyhdr_set_forwarded(&in, &out, "10.0.0.9", "http");
    CHECK(strcmp(evhttp_find_header(&out, "X-Forwarded-For"), "10.0.0.9") == 0);
    CHECK(strcmp(evhttp_find_header(&out, "X-Forwarded-Proto"), "http") == 0);
    CHECK(evhttp_find_header(&out, "X-Forwarded-Host") == NULL); /* no Host given */
    CHECK(strcmp(evhttp_find_header(&out, "Via"), PROXYHDR_VIA) == 0);
    hdrlist_clear(&out);

    evhttp_add_header(&in, "Host", "shop.example:8080");
    evhttp_add_header(&in, "X-Forwarded-For", "1.1.1.1");
    evhttp_add_header(&in, "X-Forwarded-For", "2.2.2.2, 3.3.3.3");
    evhttp_add_header(&in, "Via", "1.0 edge");
    evhttp_add_header(&in, "X-Forwarded-Proto", "https"); /* replaced, not appended */
    proxyhdr_set_forwarded(&in, &out, "10.0.0.9", "http");
    CHECK(strcmp(evhttp_find_header(&out, "X-Forwarded-For"),
                 "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9") == 0);
    CHECK(strcmp(evhttp_find_header(&out, "X-Forwarded-Host"), "shop.example:8080") == 0);
    CHECK(strcmp(evhttp_find_header(&out, "Via"), "1.0 edge, " PROXYHDR_VIA) == 0);
    CHECK(strcmp(evhttp_find_header(&out, "X-Forwarded-Proto"), "http") == 0);
    CHECK(count(&out, "X-Forwarded-Proto") == 1);
    hdrlist_clear(&in);
    hdrlist_clear(&out);
}

/* A client's list past 4 KiB stays whole: cut, it kept the client's own
 * entries and lost the load balancer's, the one an upstream trusts. */
static void test_forwarded_long_list(void)
{
    struct evkeyvalq in, out;
    TAILQ_INIT(&in);
    TAILQ_INIT(&out);
    char forged[5001];
    memset(forged, '9', 5000);
    forged[5000] = '\0';
    evhttp_add_header(&in, "X-Forwarded-For", forged);
    evhttp_add_header(&in, "X-Forwarded-For", "203.0.113.7"); /* our load balancer's */
    proxyhdr_set_forwarded(&in, &out, "10.0.0.9", "http");
    const char *xff = evhttp_find_header(&out, "X-Forwarded-For");
    CHECK(xff != NULL && strlen(xff) == 5000 + strlen(", 203.0.113.7, 10.0.0.9"));
    CHECK(xff != NULL && strcmp(xff + 5000, ", 203.0.113.7, 10.0.0.9") == 0);
    hdrlist_clear(&in);
    hdrlist_clear(&out);
}

static int framing(const char *cl1, const char *cl2, const char *te1, const char *te2)
{
    struct evkeyvalq in;
    TAILQ_INIT(&in);
    if (cl1)
        evhttp_add_header(&in, "Content-Length", cl1);
    if (cl2)
        evhttp_add_header(&in, "content-length", cl2);
    if (te1)
        evhttp_add_header(&in, "Transfer-Encoding", te1);
    if (te2)
        evhttp_add_header(&in, "transfer-encoding", te2);
    const char *why = NULL;
    int rc = proxyhdr_check_framing(&in, &why);
    CHECK(rc == 0 || (why != NULL && why[0]));
    hdrlist_clear(&in);
    return rc;
}

static void test_framing(void)
{
    CHECK(framing(NULL, NULL, NULL, NULL) == 0);
    CHECK(framing("12", NULL, NULL, NULL) == 0);
    CHECK(framing("0", NULL, NULL, NULL) == 0);
    CHECK(framing(NULL, NULL, "chunked", NULL) == 0);
    CHECK(framing(NULL, NULL, "Chunked", NULL) == 0);
    CHECK(framing("5", NULL, "chunked", NULL) < 0); /* CL.TE / TE.CL */
    CHECK(framing("5", "5", NULL, NULL) < 0);       /* duplicate, even equal */
    CHECK(framing("5", "6", NULL, NULL) < 0);
    CHECK(framing(NULL, NULL, "chunked", "chunked") < 0); /* two TE fields */
    CHECK(framing(NULL, NULL, "gzip, chunked", NULL) < 0);
    CHECK(framing(NULL, NULL, "chunked, identity", NULL) < 0);
    CHECK(framing(NULL, NULL, "xchunked", NULL) < 0);
    CHECK(framing(NULL, NULL, "identity", NULL) < 0);
    CHECK(framing("+5", NULL, NULL, NULL) < 0);
    CHECK(framing("-1", NULL, NULL, NULL) < 0);
    CHECK(framing("5, 5", NULL, NULL, NULL) < 0);
    CHECK(framing("0x10", NULL, NULL, NULL) < 0);
    CHECK(framing("", NULL, NULL, NULL) < 0);
}

static void test_parse_url(void)
{
    char host[256], prefix[512];
    int port = 0;
    CHECK(upstream_parse_url("http://127.0.0.1:9000", host, sizeof(host), &port, prefix,
                             sizeof(prefix)) == 0);
    CHECK(strcmp(host, "127.0.0.1") == 0 && port == 9000 && prefix[0] == '\0');
    CHECK(upstream_parse_url("http://app.internal/legacy/", host, sizeof(host), &port, prefix,
                             sizeof(prefix)) == 0);
    CHECK(strcmp(host, "app.internal") == 0 && port == 80 && strcmp(prefix, "/legacy") == 0);
    CHECK(upstream_parse_url("https://x:1", host, sizeof(host), &port, prefix, sizeof(prefix)) < 0);
    CHECK(upstream_parse_url("http://x:1/?q=1", host, sizeof(host), &port, prefix, sizeof(prefix)) <
          0);
    CHECK(upstream_parse_url("http://u:p@x:1", host, sizeof(host), &port, prefix, sizeof(prefix)) <
          0);
    CHECK(upstream_parse_url("127.0.0.1:9000", host, sizeof(host), &port, prefix, sizeof(prefix)) <
          0);
    CHECK(upstream_parse_url("http://:9000", host, sizeof(host), &port, prefix, sizeof(prefix)) <
          0);
}

/* The move makes the same selection as the copy (hop-by-hop and
 * Connection-listed fields stay behind, even those listed by a Connection
 * field that comes after them), in order, and leaves the rest in place. */
static void test_move_selects_as_copy(void)
{
    struct evkeyvalq in, out, all;
    TAILQ_INIT(&in);
    TAILQ_INIT(&out);
    TAILQ_INIT(&all);
    evhttp_add_header(&in, "X-Secret", "1"); /* listed below: hop-by-hop */
    evhttp_add_header(&in, "Content-Type", "application/json");
    evhttp_add_header(&in, "Keep-Alive", "timeout=5");
    evhttp_add_header(&in, "Connection", "keep-alive, X-Secret");
    evhttp_add_header(&in, "Content-Length", "10");
    evhttp_add_header(&in, "Set-Cookie", "s=1");
    evhttp_add_header(&in, "Set-Cookie", "t=2");
    evhttp_add_header(&in, "X-Cache", "HIT");
    proxyhdr_move_end_to_end(&in, &out, proxyhdr_response_skip);
    CHECK(count(&out, "Content-Type") == 1 && count(&out, "Set-Cookie") == 2);
    const char *gone[] = {"X-Secret", "Keep-Alive", "Connection", "Content-Length", "X-Cache"};
    for (size_t i = 0; i < sizeof(gone) / sizeof(gone[0]); i++) {
        CHECK(count(&out, gone[i]) == 0);
        CHECK(count(&in, gone[i]) == 1); /* left where it was */
    }
    CHECK(count(&in, "Content-Type") == 0 && count(&in, "Set-Cookie") == 0);
    CHECK(out.tqh_first != NULL && strcmp(out.tqh_first->key, "Content-Type") == 0);
    CHECK(strcmp(evhttp_find_header(&out, "Set-Cookie"), "s=1") == 0); /* order kept */
    proxyhdr_move_all(&out, &all);
    CHECK(out.tqh_first == NULL && count(&all, "Set-Cookie") == 2);
    proxyhdr_move_all(&out, &all); /* from an empty list: nothing */
    CHECK(count(&all, "Content-Type") == 1);
    evhttp_add_header(&out, "X-After", "1"); /* the emptied list is usable */
    proxyhdr_move_all(&out, &all);
    CHECK(all.tqh_first != NULL && count(&all, "X-After") == 1);
    hdrlist_clear(&in);
    hdrlist_clear(&all);
}

/* A request target as reqparse reads it: from the line's first space to its last. */
static void test_target_valid(void)
{
    CHECK(proxyhdr_target_valid("/catalog/1?a=%0D%20b&c=d"));
    CHECK(proxyhdr_target_valid("http://h/x"));
    CHECK(proxyhdr_target_valid("/caf\xc3\xa9"));
    const char *bad[] = {
        "/a b", "/a\rb", "/a\nb", "/a\tb", "/a\x01", "/a\x7f", "/a HTTP/1.1\rHost: evil"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(!proxyhdr_target_valid(bad[i]));
}

int main(void)
{
    test_hop_by_hop_names();
    test_copy_drops_hop_and_connection_listed();
    test_connection_among_many_fields_is_linear();
    test_response_copy_keeps_end_to_end();
    test_move_selects_as_copy();
    test_forwarded_fields();
    test_forwarded_long_list();
    test_framing();
    test_parse_url();
    test_target_valid();
    return CHECK_DONE();
}
