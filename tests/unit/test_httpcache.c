/* Unit tests for httpcache: what may be stored (RFC 9111 3), for how long,
 * under which Vary fields, and conditional requests (RFC 9110 13). */
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <string.h>
#include <sys/queue.h>

#include "check.h"
#include "quotecache/hdrlist.h"
#include "quotecache/httpcache.h"

/* Builds a header list from "Name: value" strings, NULL-terminated. */
static void headers(struct evkeyvalq *h, const char *const *lines)
{
    TAILQ_INIT(h);
    for (size_t i = 0; lines && lines[i]; i++) {
        char name[64];
        const char *colon = strchr(lines[i], ':');
        size_t n = (size_t)(colon - lines[i]);
        memcpy(name, lines[i], n);
        name[n] = '\0';
        evhttp_add_header(h, name, colon + 2);
    }
}

static httpcache_verdict decide(int status, const char *const *req, const char *const *resp,
                                bool shared, int ttl)
{
    struct evkeyvalq q, r;
    headers(&q, req);
    headers(&r, resp);
    httpcache_verdict v;
    httpcache_decide(status, &q, &r, shared, ttl, &v);
    hdrlist_clear(&q);
    hdrlist_clear(&r);
    return v;
}

#define H(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_statuses(void)
{
    CHECK(decide(200, NULL, NULL, false, 60).store);
    CHECK(decide(404, NULL, NULL, false, 60).store);
    CHECK(decide(301, NULL, NULL, false, 60).store);
    CHECK(!decide(201, NULL, NULL, false, 60).store);
    CHECK(!decide(302, NULL, NULL, false, 60).store);
    CHECK(!decide(500, NULL, NULL, false, 60).store);
    CHECK(!decide(503, NULL, NULL, false, 60).store);
    CHECK(!decide(206, NULL, NULL, false, 60).store);
}

static void test_never_stored(void)
{
    CHECK(!decide(200, NULL, H("Cache-Control: no-store"), false, 60).store);
    CHECK(!decide(200, NULL, H("Cache-Control: max-age=60, No-Store"), false, 60).store);
    CHECK(!decide(200, NULL, H("Cache-Control: public", "Cache-Control: no-store"), true, 60)
               .store); /* a second field is part of the list */
    CHECK(!decide(200, H("Cache-Control: no-store"), NULL, false, 60).store);
    CHECK(!decide(200, NULL, H("Cache-Control: no-cache"), false, 60).store);
    CHECK(!decide(200, NULL, H("Set-Cookie: a=1"), false, 60).store);
    CHECK(!decide(200, NULL, H("Set-Cookie: a=1"), true, 60).store);
    CHECK(!decide(200, NULL, H("Vary: *"), false, 60).store);
    CHECK(!decide(200, NULL, H("Vary: Accept, *"), false, 60).store);
    CHECK(!decide(200, NULL, H("Cache-Control: max-age=0"), false, 60).store);
    CHECK(!decide(200, NULL, H("Cache-Control: max-age=junk"), false, 60).store);
    CHECK(!decide(200, NULL, H("Cache-Control: max-age=10", "Age: 10"), false, 60).store);
}

static void test_private_and_authorization(void)
{
    CHECK(decide(200, NULL, H("Cache-Control: private"), false, 60).store);
    CHECK(!decide(200, NULL, H("Cache-Control: private"), true, 60).store);
    CHECK(!decide(200, NULL, H("Cache-Control: private=\"x\", max-age=9"), true, 60).store);
    CHECK(!decide(200, H("Authorization: Bearer a"), NULL, true, 60).store);
    CHECK(decide(200, H("Authorization: Bearer a"), NULL, false, 60).store);
    CHECK(decide(200, H("Authorization: Bearer a"), H("Cache-Control: public"), true, 60).store);
    CHECK(
        decide(200, H("Authorization: Bearer a"), H("Cache-Control: s-maxage=5"), true, 60).store);
    /* "no-cache" inside a quoted private="..." does not count */
    CHECK(decide(200, NULL, H("Cache-Control: private=\"no-cache, x\""), false, 60).store);
}

static void test_lifetime(void)
{
    CHECK(decide(200, NULL, NULL, false, 60).ttl_s == 60);
    CHECK(decide(200, NULL, H("Cache-Control: max-age=10"), false, 60).ttl_s == 10);
    CHECK(decide(200, NULL, H("Cache-Control: max-age=600"), false, 60).ttl_s == 60);
    CHECK(decide(200, NULL, H("Cache-Control: max-age=\"7\""), false, 60).ttl_s == 7);
    CHECK(decide(200, NULL, H("Cache-Control: max-age=10, s-maxage=5"), false, 60).ttl_s == 10);
    CHECK(decide(200, NULL, H("Cache-Control: max-age=10, s-maxage=5"), true, 60).ttl_s == 5);
    CHECK(decide(200, NULL, H("Cache-Control: max-age=10", "Age: 3"), false, 60).ttl_s == 7);
    CHECK(decide(200, NULL, H("Age: 50"), false, 60).ttl_s == 10);
    CHECK(decide(200, NULL,
                 H("Date: Sun, 06 Nov 1994 08:49:37 GMT", "Expires: Sun, 06 Nov 1994 08:50:07 GMT"),
                 false, 60)
              .ttl_s == 30);
    CHECK(!decide(200, NULL, H("Expires: 0"), false, 60).store); /* invalid: expired */
    CHECK(
        !decide(200, NULL,
                H("Date: Sun, 06 Nov 1994 08:49:37 GMT", "Expires: Thu, 19 Nov 1981 08:52:00 GMT"),
                false, 60)
             .store);
    CHECK(decide(200, NULL, H("Expires: Sun, 06 Nov 1994 08:50:07 GMT"), false, 60).ttl_s == 60);
    /* max-age wins over Expires */
    CHECK(decide(200, NULL, H("Cache-Control: max-age=5", "Expires: 0"), false, 60).ttl_s == 5);
    /* Given twice: the least (RFC 9111 4.2.1: the first or stale), not the
     * last (found writing the httpcache fuzz target's oracle). */
    CHECK(decide(200, NULL, H("Cache-Control: max-age=5, max-age=500"), false, 60).ttl_s == 5);
    CHECK(decide(200, NULL, H("Cache-Control: max-age=50", "Cache-Control: max-age=9"), false, 60)
              .ttl_s == 9);
    CHECK(
        decide(200, NULL, H("Cache-Control: s-maxage=4, max-age=9, s-maxage=40"), true, 60).ttl_s ==
        4);
}

static void test_quoted_pair(void)
{
    /* A backslash-escaped quote does not end a quoted string: the no-store
     * after it is a directive (found writing the httpcache fuzz target's oracle; it was
     * read as inside a string opened again, and the answer stored). */
    CHECK(!decide(200, NULL, H("Cache-Control: foo=\"a\\\"\", no-store, max-age=60"), true, 60)
               .store);
    CHECK(!decide(200, NULL, H("Cache-Control: ext=\"\\\"\", private"), true, 60).store);
    /* A comma inside the string still does not separate. */
    CHECK(
        decide(200, NULL, H("Cache-Control: ext=\"a\\\", no-store\", max-age=60"), true, 60).store);
}

static void test_vary(void)
{
    httpcache_verdict v = decide(200, NULL, H("Vary: Accept-Encoding, Accept-Language"), false, 60);
    CHECK(v.store && v.nvary == 2);
    CHECK(strcmp(v.vary[0], "Accept-Encoding") == 0 && strcmp(v.vary[1], "Accept-Language") == 0);
    v = decide(200, NULL, H("Vary: a", "Vary: b,c"), false, 60);
    CHECK(v.store && v.nvary == 3);
    v = decide(200, NULL, H("Vary: a,b,c,d,e,f,g,h,i"), false, 60);
    CHECK(!v.store);
    /* A name listed twice is one field (found writing the sharedkey
     * fuzz target's oracle: the stored entry held it twice and matched no request). */
    v = decide(200, NULL, H("Vary: Origin", "Vary: origin, Accept, ORIGIN"), false, 60);
    CHECK(v.store && v.nvary == 2);
    CHECK(strcmp(v.vary[0], "Origin") == 0 && strcmp(v.vary[1], "Accept") == 0);
    v = decide(200, NULL, H("Vary: a,a,a,a,a,a,a,a,a,b"), false, 60);
    CHECK(v.store && v.nvary == 2);
}

static bool nm(const char *const *req, const char *etag, const char *lm)
{
    struct evkeyvalq q;
    headers(&q, req);
    bool r = httpcache_not_modified(&q, etag, lm);
    hdrlist_clear(&q);
    return r;
}

static void test_conditional(void)
{
    const char *lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    CHECK(nm(H("If-None-Match: \"abc\""), "\"abc\"", NULL));
    CHECK(nm(H("If-None-Match: W/\"abc\""), "\"abc\"", NULL));
    CHECK(nm(H("If-None-Match: \"x\", \"abc\""), "W/\"abc\"", NULL));
    CHECK(nm(H("If-None-Match: *"), "\"abc\"", NULL));
    CHECK(!nm(H("If-None-Match: \"abd\""), "\"abc\"", NULL));
    CHECK(!nm(H("If-None-Match: \"abc\""), NULL, lm));
    /* If-None-Match decides when present, If-Modified-Since is ignored */
    CHECK(!nm(H("If-None-Match: \"zz\"", "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT"),
              "\"abc\"", lm));
    CHECK(nm(H("If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT"), NULL, lm));
    CHECK(nm(H("If-Modified-Since: Mon, 07 Nov 1994 08:49:37 GMT"), NULL, lm));
    CHECK(!nm(H("If-Modified-Since: Sat, 05 Nov 1994 08:49:37 GMT"), NULL, lm));
    CHECK(!nm(H("If-Modified-Since: garbage"), NULL, lm));
    CHECK(!nm(H("If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT"), NULL, NULL));
    CHECK(!nm(NULL, "\"abc\"", lm));
    /* A stored tag longer than the comparison's buffer was cut to fit:
     * the client's tag of its first 255 bytes got a 304. */
    char stored[303], asked[300];
    snprintf(stored, sizeof(stored), "\"%0300d\"", 0);
    snprintf(asked, sizeof(asked), "If-None-Match: \"%0255d\"", 0);
    CHECK(!nm(H(asked), stored, NULL));
    CHECK(nm(H("If-None-Match: *"), stored, NULL));
    snprintf(stored, sizeof(stored), "W/\"%0255d\"", 0);
    CHECK(nm(H(asked), stored, NULL)); /* a whole tag of 255 bytes still compares */
    time_t t;
    CHECK(httpcache_parse_date(lm, &t) == 0 && t == 784111777);
    CHECK(httpcache_parse_date("Sun, 06 Nov 1994 08:49:37 GMTx", &t) < 0);
}

int main(void)
{
    test_statuses();
    test_never_stored();
    test_private_and_authorization();
    test_lifetime();
    test_vary();
    test_quoted_pair();
    test_conditional();
    return CHECK_DONE();
}
