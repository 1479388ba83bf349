/* Unit tests for localcache: lifetime, Vary, the byte bound and LRU order. */
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <string.h>
#include <sys/queue.h>

#include "check.h"
#include "quotecache/hdrlist.h"
#include "quotecache/localcache.h"

static struct evkeyvalq none;

static int put(lcache *c, const char *key, const char *body, int ttl, int64_t now)
{
    httpcache_verdict v = {.store = true, .ttl_s = ttl};
    lcache_times t = {now, now + ttl * 1000, now + ttl * 1000};
    return lcache_put(c, key, 200, &none, body, strlen(body), &none, &v, &t);
}

static void test_hit_and_expiry(void)
{
    lcache *c = lcache_new(1 << 20);
    CHECK(lcache_get(c, "k", &none, 0) == NULL);
    CHECK(put(c, "k", "hello", 60, 1000) == 0);
    const lcache_entry *e = lcache_get(c, "k", &none, 1000 + 59999);
    CHECK(e && e->status == 200 && e->len == 5 && memcmp(e->body, "hello", 5) == 0);
    CHECK(e && e->stored_ms == 1000 && e->expires_ms == 61000);
    CHECK(lcache_get(c, "k2", &none, 2000) == NULL);
    CHECK(lcache_get(c, "k", &none, 61000) == NULL); /* expired: and dropped */
    CHECK(lcache_count(c) == 0 && lcache_bytes(c) == 0);
    CHECK(put(c, "k", "a", 60, 0) == 0 && put(c, "k", "bb", 60, 0) == 0); /* replaces */
    CHECK(lcache_count(c) == 1);
    e = lcache_get(c, "k", &none, 1);
    CHECK(e && e->len == 2);
    lcache_delete(c, "k");
    CHECK(lcache_get(c, "k", &none, 1) == NULL && lcache_count(c) == 0);
    lcache_free(c);
}

static void test_vary(void)
{
    lcache *c = lcache_new(1 << 20);
    struct evkeyvalq en, fr, resp;
    TAILQ_INIT(&en);
    TAILQ_INIT(&fr);
    TAILQ_INIT(&resp);
    evhttp_add_header(&en, "Accept-Language", "en");
    evhttp_add_header(&fr, "Accept-Language", "fr");
    evhttp_add_header(&resp, "ETag", "\"v1\"");
    httpcache_verdict v = {.store = true, .ttl_s = 60, .nvary = 1, .vary = {"accept-language"}};
    lcache_times t = {0, 60000, 30000};
    CHECK(lcache_put(c, "k", 200, &resp, "en body", 7, &en, &v, &t) == 0);
    const lcache_entry *e = lcache_get(c, "k", &en, 1);
    CHECK(e && strcmp(e->etag, "\"v1\"") == 0 && e->last_modified == NULL);
    CHECK(e && e->fresh_until_ms == 60000 && e->expires_ms == 30000);
    CHECK(e && e->nvary == 1 && strcmp(e->vary[0], "accept-language") == 0);
    CHECK(lcache_get(c, "k", &fr, 1) == NULL);
    CHECK(lcache_get(c, "k", &none, 1) == NULL); /* absent is a value too */
    CHECK(lcache_get(c, "k", &en, 29999) != NULL);
    CHECK(lcache_get(c, "k", &en, 30000) == NULL); /* kept until expires_ms only */
    /* The Vary values held count toward the bound. */
    char lang[1001];
    memset(lang, 'l', sizeof(lang) - 1);
    lang[sizeof(lang) - 1] = '\0';
    struct evkeyvalq lg;
    TAILQ_INIT(&lg);
    evhttp_add_header(&lg, "Accept-Language", lang);
    size_t before = lcache_bytes(c);
    CHECK(lcache_put(c, "k2", 200, &resp, "x", 1, &lg, &v, &t) == 0);
    CHECK(lcache_bytes(c) - before > 1000);
    hdrlist_clear(&lg);
    hdrlist_clear(&en);
    hdrlist_clear(&fr);
    hdrlist_clear(&resp);
    lcache_free(c);
}

static void test_byte_bound_lru(void)
{
    char body[1000];
    memset(body, 'x', sizeof(body) - 1);
    body[sizeof(body) - 1] = '\0';
    lcache *c = lcache_new(16 * 1024); /* room for about 12 entries of 1.3 kB */
    char key[16];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        CHECK(put(c, key, body, 60, 0) == 0);
        if (i == 50)
            CHECK(lcache_get(c, "k45", &none, 0) != NULL); /* k45 becomes recent */
        CHECK(lcache_bytes(c) <= 16 * 1024);
    }
    CHECK(lcache_get(c, "k99", &none, 0) != NULL);
    CHECK(lcache_get(c, "k0", &none, 0) == NULL);
    CHECK(lcache_count(c) >= 8 && lcache_count(c) <= 13);
    char big[2100];
    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CHECK(put(c, "big", big, 60, 0) < 0); /* over an eighth of the bound */
    lcache_free(c);
}

int main(void)
{
    TAILQ_INIT(&none);
    test_hit_and_expiry();
    test_vary();
    test_byte_bound_lru();
    return CHECK_DONE();
}
