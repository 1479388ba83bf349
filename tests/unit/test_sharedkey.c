/* Unit tests for sharedkey: canonical requests of shared routes (named
 * query parameters, defaults, case, ignored ones), resources and the
 * resources a write touches, keys in one hash slot, entry encoding. */
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "check.h"
#include "quotecache/hdrlist.h"
#include "quotecache/httpcache.h"
#include "quotecache/sharedkey.h"

static const char *file =
    "{\"routes\": ["
    "{\"name\": \"catalog\", \"path\": \"/catalog/{product}\", \"policy\": \"shared\", "
    " \"query\": {\"currency\": {\"default\": \"USD\", \"case\": \"upper\"}, \"lang\": {}}, "
    " \"ignore\": [\"utm_*\", \"fbclid\"], \"headers\": [\"Accept-Language\"]},"
    "{\"name\": \"reviews\", \"path\": \"/catalog/{product}/reviews\", \"policy\": \"shared\"},"
    "{\"name\": \"list\", \"path\": \"/catalog\", \"policy\": \"shared\"},"
    "{\"name\": \"cart\", \"path\": \"/cart/{product}\", \"policy\": \"local\", "
    " \"identity\": \"header:X-User\"}]}";

static int canon(const route *r, const char *path, const char *q, const struct evkeyvalq *h,
                 char *out, char *fwd)
{
    return skey_canonical(r, path, q, h, out, SKEY_CANON_MAX, fwd, 256);
}

static void test_canonical(const routes *rt)
{
    const route *r = routes_match(rt, EVHTTP_REQ_GET, "/catalog/7");
    struct evkeyvalq h;
    TAILQ_INIT(&h);
    char a[SKEY_CANON_MAX], b[SKEY_CANON_MAX], fa[256], fb[256];
    CHECK(r != NULL && r->policy == ROUTE_SHARED && r->stale_s == 0);
    /* Case, default, ignored parameters, order: one canonical form. */
    CHECK(canon(r, "/catalog/7", "currency=usd&utm_source=x&fbclid=1", &h, a, fa) == 0);
    CHECK(canon(r, "/catalog/7", NULL, &h, b, fb) == 0);
    CHECK(strcmp(a, b) == 0);
    CHECK(strcmp(fa, "currency=USD") == 0 && strcmp(fb, "") == 0);
    CHECK(canon(r, "/catalog/7", "lang=en&currency=Usd", &h, b, fb) == 0);
    CHECK(strcmp(a, b) != 0 && strcmp(fb, "currency=USD&lang=en") == 0);
    CHECK(canon(r, "/catalog/7", "currency=eur", &h, b, fb) == 0 && strcmp(a, b) != 0);
    /* lang keeps its case; absent differs from empty. */
    CHECK(canon(r, "/catalog/7", "lang=EN", &h, a, fa) == 0);
    CHECK(canon(r, "/catalog/7", "lang=en", &h, b, fb) == 0 && strcmp(a, b) != 0);
    CHECK(canon(r, "/catalog/7", "lang=", &h, a, fa) == 0);
    CHECK(canon(r, "/catalog/7", "", &h, b, fb) == 0 && strcmp(a, b) != 0);
    /* Not cacheable: an unknown parameter, a named one twice. */
    CHECK(canon(r, "/catalog/7", "color=red", &h, a, fa) == -1);
    CHECK(canon(r, "/catalog/7", "currency=usd&currency=eur", &h, a, fa) == -1);
    /* A named field is in the key. */
    CHECK(canon(r, "/catalog/7", NULL, &h, a, fa) == 0);
    evhttp_add_header(&h, "Accept-Language", "fr");
    CHECK(canon(r, "/catalog/7", NULL, &h, b, fb) == 0 && strcmp(a, b) != 0);
    /* A control byte (\x02 would read as "absent"): not cacheable. */
    CHECK(canon(r, "/catalog/7", "lang=\x02", &h, a, fa) == -1);
    evhttp_add_header(&h, "Accept-Language", "\x02");
    CHECK(canon(r, "/catalog/7", NULL, &h, a, fa) == -1);
    /* The authority is in the key, whatever its case. */
    hdrlist_clear(&h);
    evhttp_add_header(&h, "Host", "shop.example");
    CHECK(canon(r, "/catalog/7", NULL, &h, a, fa) == 0);
    hdrlist_clear(&h);
    evhttp_add_header(&h, "Host", "evil.example");
    CHECK(canon(r, "/catalog/7", NULL, &h, b, fb) == 0 && strcmp(a, b) != 0);
    hdrlist_clear(&h);
    evhttp_add_header(&h, "Host", "Shop.EXAMPLE");
    CHECK(canon(r, "/catalog/7", NULL, &h, b, fb) == 0 && strcmp(a, b) == 0);
    evhttp_add_header(&h, "Accept-Language", "fr");
    /* Named twice: the key has the first, the application may read the
     * last (or both); its answer for "de" would be stored as "fr"'s. */
    evhttp_add_header(&h, "Accept-Language", "de");
    CHECK(canon(r, "/catalog/7", NULL, &h, b, fb) == -1);
    hdrlist_clear(&h);
}

static void test_keys(const routes *rt)
{
    const route *r = routes_match(rt, EVHTTP_REQ_GET, "/catalog/7");
    char res[SKEY_RESOURCE_MAX], gen[KEY_MAX];
    skey_keys k;
    CHECK(skey_resource(r, "/catalog/7", res, sizeof(res)) == 0);
    CHECK(strcmp(res, "catalog\x1f"
                      "7") == 0);
    CHECK(skey_keys_of(&k, "v1", r->name, res, "x") == 0);
    CHECK(skey_gen_key(gen, "v1", r->name, res) == 0 && strcmp(gen, k.gen) == 0);
    /* One hash tag for the entry, its lock and the counter. */
    const char *tag_end = strchr(k.entry, '}');
    size_t tag = (size_t)(tag_end - k.entry + 1);
    CHECK(strncmp(k.entry, "qc:v1:{r:catalog:", 17) == 0 && tag == 17 + 16 + 1);
    CHECK(strncmp(k.lock, k.entry, tag) == 0 && strncmp(k.gen, k.entry, tag) == 0);
    CHECK(strcmp(k.gen + tag, ":gen") == 0 && strlen(k.entry) == tag + 33);
    skey_keys k2;
    CHECK(skey_keys_of(&k2, "v1", r->name, res, "y") == 0 && strcmp(k.entry, k2.entry) != 0);
    CHECK(skey_resource(r, "/catalog/8", res, sizeof(res)) == 0);
    CHECK(skey_keys_of(&k2, "v1", r->name, res, "x") == 0 && strncmp(k2.entry, k.entry, tag) != 0);
}

typedef struct seen {
    int n;
    char what[8][128];
} seen;

static void note(void *arg, const route *r, const char *resource)
{
    seen *s = arg;
    snprintf(s->what[s->n++], 128, "%s|%s", r->name, resource);
}

static void test_writes(const routes *rt)
{
    seen s = {0};
    /* The target's resource, and the route naming the same {product}. */
    CHECK(skey_write_resources(rt, "/catalog/7", ROUTE_SHARED, note, &s) == 2);
    CHECK(strcmp(s.what[0], "catalog|catalog\x1f"
                            "7") == 0);
    CHECK(strcmp(s.what[1], "reviews|reviews\x1f"
                            "7") == 0);
    memset(&s, 0, sizeof(s));
    CHECK(skey_write_resources(rt, "/catalog/7", ROUTE_LOCAL, note, &s) == 1);
    CHECK(strcmp(s.what[0], "cart|cart\x1f"
                            "7") == 0);
    memset(&s, 0, sizeof(s));
    CHECK(skey_write_resources(rt, "/catalog", ROUTE_SHARED, note, &s) == 1);
    CHECK(strcmp(s.what[0], "list|list") == 0);
    memset(&s, 0, sizeof(s));
    CHECK(skey_write_resources(rt, "/elsewhere/7", ROUTE_SHARED, note, &s) == 0);
    /* One resource however its {params} are spelled (RFC 3986 6.2.2). */
    const route *r = routes_match(rt, EVHTTP_REQ_GET, "/catalog/7");
    char a[SKEY_RESOURCE_MAX], b[SKEY_RESOURCE_MAX];
    CHECK(skey_resource(r, "/catalog/q%31", a, sizeof(a)) == 0);
    CHECK(skey_resource(r, "/catalog/q1", b, sizeof(b)) == 0 && strcmp(a, b) == 0);
    CHECK(skey_resource(r, "/catalog/a%2fb", a, sizeof(a)) == 0);
    CHECK(skey_resource(r, "/catalog/a%2Fb", b, sizeof(b)) == 0 && strcmp(a, b) == 0);
    /* A '%' that starts no escape is %25: %%341 is the text %41, as %2541
     * is (found writing the sharedkey fuzz target's oracle: it became %41,
     * then A). */
    CHECK(skey_resource(r, "/catalog/a%2", a, sizeof(a)) == 0 && strcmp(a, "catalog\x1f"
                                                                           "a%252") == 0);
    CHECK(skey_resource(r, "/catalog/%%341", a, sizeof(a)) == 0);
    CHECK(skey_resource(r, "/catalog/%2541", b, sizeof(b)) == 0 && strcmp(a, b) == 0);
    CHECK(skey_resource(r, "/catalog/A", b, sizeof(b)) == 0 && strcmp(a, b) != 0);
    memset(&s, 0, sizeof(s));
    CHECK(skey_write_resources(rt, "/catalog/%71%31", ROUTE_SHARED, note, &s) == 2);
    CHECK(strcmp(s.what[0], "catalog|catalog\x1f"
                            "q1") == 0);
    CHECK(strcmp(s.what[1], "reviews|reviews\x1f"
                            "q1") == 0);
}

static void test_entry(void)
{
    struct evkeyvalq h, req, dh, dv;
    TAILQ_INIT(&h);
    TAILQ_INIT(&req);
    TAILQ_INIT(&dh);
    TAILQ_INIT(&dv);
    evhttp_add_header(&h, "Content-Type", "text/plain");
    evhttp_add_header(&h, "ETag", "\"a:b\"");
    evhttp_add_header(&req, "X-Lang", "en");
    skey_entry e = {0}, d;
    e.status = 203;
    e.stored_ms = 1000;
    e.fresh_until_ms = 61000;
    e.gen_global = 42;
    e.gen_sum = 7;
    e.headers = &h;
    e.nvary = 2;
    snprintf(e.vary[0], 64, "X-Lang");
    snprintf(e.vary[1], 64, "X-Absent");
    e.vary_values = &req;
    e.body = "hi\nthere\0!";
    e.len = 10;
    size_t len;
    char *buf = skey_entry_encode(&e, &len);
    CHECK(skey_entry_decode(buf, len, &d, &dh, &dv) == 0);
    CHECK(d.status == 203 && d.stored_ms == 1000 && d.fresh_until_ms == 61000 &&
          d.gen_global == 42 && d.gen_sum == 7);
    CHECK(d.len == 10 && memcmp(d.body, e.body, 10) == 0);
    CHECK(strcmp(evhttp_find_header(&dh, "ETag"), "\"a:b\"") == 0);
    CHECK(d.nvary == 2 && skey_vary_matches(&d, &req));
    evhttp_add_header(&req, "X-Lang", "evil"); /* twice: no one value */
    CHECK(!skey_vary_matches(&d, &req));
    hdrlist_remove(&req, "X-Lang");
    CHECK(!skey_vary_matches(&d, &req) && evhttp_find_header(&req, "X-Lang") != NULL);
    hdrlist_clear(&req);
    evhttp_add_header(&req, "X-Lang", "en");
    CHECK(skey_vary_matches(&d, &req));
    evhttp_add_header(&req, "X-Absent", "now present");
    CHECK(!skey_vary_matches(&d, &req));
    /* The stored form keeps a digest of a Vary value, never the value. */
    CHECK(memmem(buf, len, "X-Lang:en", 9) == NULL && memmem(buf, len, "X-Lang:", 7) != NULL);
    hdrlist_clear(&req);
    evhttp_add_header(&req, "X-Lang", "e");
    CHECK(!skey_vary_matches(&d, &req));
    /* Cut or grown: refused. */
    hdrlist_clear(&dh);
    hdrlist_clear(&dv);
    CHECK(skey_entry_decode(buf, len - 1, &d, &dh, &dv) == -1);
    hdrlist_clear(&dh);
    hdrlist_clear(&dv);
    CHECK(skey_entry_decode("QS1 200\n", 8, &d, &dh, &dv) == -1);
    free(buf);
    hdrlist_clear(&h);
    hdrlist_clear(&req);
    hdrlist_clear(&dh);
    hdrlist_clear(&dv);
}

/* An answer whose field name is empty or longer than 255 bytes was stored
 * and never decoded: every request fetched and stored it again. Such an
 * answer is not held (shared.c then does not store it); a 255-byte name
 * is, and decodes back. */
static void test_entry_holds(void)
{
    struct evkeyvalq h, dh, dv;
    TAILQ_INIT(&h);
    TAILQ_INIT(&dh);
    TAILQ_INIT(&dv);
    char name[258];
    memset(name, 'x', 255);
    name[255] = '\0';
    evhttp_add_header(&h, "Content-Type", "text/plain");
    evhttp_add_header(&h, name, "v");
    CHECK(skey_entry_holds(&h));
    skey_entry e = {0}, d;
    e.status = 200;
    e.headers = &h;
    e.vary_values = &dv;
    e.body = "b";
    e.len = 1;
    size_t len;
    char *buf = skey_entry_encode(&e, &len);
    CHECK(skey_entry_decode(buf, len, &d, &dh, &dv) == 0 &&
          strcmp(evhttp_find_header(&dh, name), "v") == 0);
    free(buf);
    hdrlist_clear(&dh);
    name[255] = 'x';
    name[256] = '\0';
    evhttp_add_header(&h, name, "v");
    CHECK(!skey_entry_holds(&h));
    hdrlist_clear(&h);
    evhttp_add_header(&h, "", "v"); /* ": v" from the upstream */
    CHECK(!skey_entry_holds(&h));
    hdrlist_clear(&h);
    evhttp_add_header(&h, "X-A", "v");
    CHECK(skey_entry_holds(&h));
    hdrlist_clear(&h);
}

/* An answer that names a Vary field twice (two Vary: Origin fields) is
 * stored once per variant and found again (found writing the sharedkey fuzz
 * target's oracle: the entry held two digests of Origin and matched no request). */
static void test_vary_named_twice(void)
{
    struct evkeyvalq resp, req, dh, dv;
    TAILQ_INIT(&resp);
    TAILQ_INIT(&req);
    TAILQ_INIT(&dh);
    TAILQ_INIT(&dv);
    evhttp_add_header(&resp, "Vary", "Origin");
    evhttp_add_header(&resp, "Vary", "origin, Accept");
    evhttp_add_header(&req, "Origin", "https://a.example");
    httpcache_verdict v;
    httpcache_decide(200, &req, &resp, true, 60, &v);
    CHECK(v.store && v.nvary == 2);
    skey_entry e = {.status = 200,
                    .headers = &resp,
                    .nvary = v.nvary,
                    .vary_values = &req,
                    .body = "x",
                    .len = 1},
               d;
    memcpy(e.vary, v.vary, sizeof(e.vary));
    size_t len;
    char *buf = skey_entry_encode(&e, &len);
    CHECK(skey_entry_decode(buf, len, &d, &dh, &dv) == 0);
    CHECK(skey_vary_matches(&d, &req));
    hdrlist_clear(&req);
    evhttp_add_header(&req, "Origin", "https://b.example");
    CHECK(!skey_vary_matches(&d, &req));
    free(buf);
    hdrlist_clear(&resp);
    hdrlist_clear(&req);
    hdrlist_clear(&dh);
    hdrlist_clear(&dv);
}

int main(void)
{
    char err[256] = "";
    routes *rt = routes_parse(file, strlen(file), err, sizeof(err));
    CHECK(rt != NULL);
    if (rt == NULL) {
        fprintf(stderr, "%s\n", err);
        return CHECK_DONE();
    }
    test_canonical(rt);
    test_keys(rt);
    test_writes(rt);
    test_entry();
    test_entry_holds();
    test_vary_named_twice();
    routes_free(rt);
    return CHECK_DONE();
}
