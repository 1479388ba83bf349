/* Fuzz target: sharedkey, on what a client sends a shared route (the path,
 * the query, the fields) and what the upstream answers (its Vary).
 *
 * Input: byte 0 picks the route (and a NULL query), then lines: the path,
 * the query, then three blocks of "Name:value" lines ended by an empty
 * line: request A's fields, request B's, the answer's.
 *
 * Oracles: skey_canonical accepts exactly the requests this file judges
 * cacheable (read apart: every query parameter named once or ignored, no
 * control byte in a named value, in Host or a named field, each sent at
 * most once, and it fits), and its canonical form is route, path, host
 * (no case) or ABSENT, the named parameters folded (or default, or
 * ABSENT) and the named fields, one per line: no raw newline inside a
 * field (the path here holds none), so two requests that differ in any of
 * them differ in the form; the order of the query does not count, nor the
 * case of Host; fwd holds the named parameters present, in the route's
 * order. Keys are qc:<version>:{r:<route>:<16 hex>}:<32 hex>, with lock
 * and counter in the same {slot}, equal for equal input. A resource is the
 * route and its {param} values, and a path spelled with the resource's own
 * values has the same resource (the normal form is a fixed point) and the
 * same meaning (one %XX decoding agrees). A write to a path reaches the
 * resource of every shared route matching it. skey_entry_holds takes
 * exactly the answers whose names are 1 to 255 bytes, and an entry of one
 * encodes and decodes back (fields, Vary names, body), and matches request B exactly when B has
 * A's values of the Vary fields (skey_vary_same). */
#include "fuzz_headers.h"

#include <ctype.h>

#include "quotecache/hdrlist.h"
#include "quotecache/httpcache.h"
#include "quotecache/sharedkey.h"

#define ABSENT "\x02"
#define FWD_MAX 8192 /* shared.c's TARGET_MAX */

static const char routes_json[] =
    "{\"routes\": ["
    "{\"name\": \"rev\", \"path\": \"/catalog/{id}/reviews/{page}\", \"policy\": \"shared\","
    " \"query\": {\"currency\": {\"default\": \"USD\", \"case\": \"upper\"},"
    "  \"lang\": {\"case\": \"lower\"}, \"q\": {}},"
    " \"ignore\": [\"utm_*\", \"ref\"], \"headers\": [\"Accept-Language\", \"X-Tenant\"]},"
    "{\"name\": \"revs\", \"path\": \"/catalog/{id}/reviews\", \"policy\": \"shared\","
    " \"query\": [\"page\", \"sort\"], \"headers\": [\"Accept\"]},"
    "{\"name\": \"cat\", \"path\": \"/catalog/{id}\", \"policy\": \"shared\"},"
    "{\"name\": \"cart\", \"path\": \"/cart/{id}\", \"policy\": \"local\","
    " \"identity\": \"cookie:session\"},"
    "{\"name\": \"all\", \"path\": \"/*\", \"policy\": \"shared\", \"ignore\": []}]}";

static const routes *table(void)
{
    static routes *rt;
    char err[256];
    if (rt == NULL &&
        (rt = routes_parse(routes_json, strlen(routes_json), err, sizeof(err))) == NULL)
        abort();
    return rt;
}

/* ---- the canonical form, judged apart ---- */

static bool ctl_in(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return true;
    }
    return false;
}

static void fold_into(char **o, const char *v, size_t n, enum route_case c)
{
    for (size_t i = 0; i < n; i++)
        *(*o)++ = c == CASE_LOWER   ? (char)tolower((unsigned char)v[i])
                  : c == CASE_UPPER ? (char)toupper((unsigned char)v[i])
                                    : v[i];
}

static void put(char **o, const char *s)
{
    size_t n = strlen(s);
    memcpy(*o, s, n);
    *o += n;
}

static bool dropped(const route *r, const char *name, size_t n)
{
    for (int i = 0; i < r->nignore; i++) {
        size_t pl = strlen(r->ignore[i]);
        bool prefix = pl > 0 && r->ignore[i][pl - 1] == '*';
        if (prefix ? n >= pl - 1 && memcmp(name, r->ignore[i], pl - 1) == 0
                   : n == pl && memcmp(name, r->ignore[i], n) == 0)
            return true;
    }
    return false;
}

/* The one field name of h, without a control byte: 1 and *v; 0 absent;
 * -1 twice or with a control byte. */
static int one_field(const struct evkeyvalq *h, const char *name, const char **v)
{
    *v = evhttp_find_header(h, name);
    if (*v == NULL)
        return 0;
    return fuzz_count(h, name) == 1 && !ctl_in(*v, strlen(*v)) ? 1 : -1;
}

/* Builds the canonical form and fwd this file expects into the buffers
 * (large enough for anything), or returns false: not cacheable. */
static bool expect(const route *r, const char *path, const char *query, const struct evkeyvalq *h,
                   char *canon, char *fwd)
{
    const char *val[ROUTE_QUERY_MAX] = {0};
    size_t vlen[ROUTE_QUERY_MAX] = {0};
    for (const char *p = query ? query : ""; *p;) {
        size_t plen = strcspn(p, "&");
        const char *eq = memchr(p, '=', plen);
        size_t nlen = eq ? (size_t)(eq - p) : plen;
        int idx = -1;
        for (int i = 0; plen && i < r->nquery; i++) {
            if (strlen(r->query[i].name) == nlen && memcmp(r->query[i].name, p, nlen) == 0)
                idx = i;
        }
        if (idx >= 0) {
            if (val[idx] != NULL)
                return false;
            val[idx] = eq ? eq + 1 : "";
            vlen[idx] = eq ? plen - nlen - 1 : 0;
            if (ctl_in(val[idx], vlen[idx]))
                return false;
        } else if (plen && !dropped(r, p, nlen)) {
            return false;
        }
        p += plen;
        p += *p == '&';
    }
    const char *host, *fields[ROUTE_HEADERS_MAX];
    if (one_field(h, "Host", &host) < 0)
        return false;
    for (int i = 0; i < r->nheaders; i++) {
        if (one_field(h, r->headers[i], &fields[i]) < 0)
            return false;
    }
    char *c = canon, *f = fwd;
    put(&c, r->name);
    put(&c, "\n");
    put(&c, path);
    put(&c, "\n");
    if (host)
        fold_into(&c, host, strlen(host), CASE_LOWER);
    else
        put(&c, ABSENT);
    put(&c, "\n");
    for (int i = 0; i < r->nquery; i++) {
        const route_query *q = &r->query[i];
        put(&c, q->name);
        put(&c, "=");
        if (val[i]) {
            fold_into(&c, val[i], vlen[i], q->fold);
            if (f != fwd)
                put(&f, "&");
            put(&f, q->name);
            put(&f, "=");
            fold_into(&f, val[i], vlen[i], q->fold);
        } else {
            put(&c, q->def[0] ? q->def : ABSENT);
        }
        put(&c, "&");
    }
    for (int i = 0; i < r->nheaders; i++) {
        put(&c, "\n");
        put(&c, fields[i] ? fields[i] : ABSENT);
    }
    *c = *f = '\0';
    return strlen(canon) < SKEY_CANON_MAX && strlen(fwd) < FWD_MAX;
}

/* The query with its parameters in the opposite order. */
static char *reversed(const char *q)
{
    size_t n = strlen(q);
    char *out = malloc(n + 2), *o = out;
    if (out == NULL)
        abort();
    for (size_t end = n;;) {
        size_t start = end;
        while (start > 0 && q[start - 1] != '&')
            start--;
        memcpy(o, q + start, end - start);
        o += end - start;
        if (start == 0)
            break;
        *o++ = '&';
        end = start - 1;
    }
    *o = '\0';
    return out;
}

static bool hex_only(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
            return false;
    }
    return true;
}

/* qc:v7:{r:<route>:<16 hex>}:<32 hex>, lock and counter in its slot. */
static void check_keys(const route *r, const char *res, const char *canon)
{
    skey_keys k, k2;
    char gen[KEY_MAX], tag[KEY_MAX];
    FUZZ_CHECK(skey_keys_of(&k, "v7", r->name, res, canon) == 0);
    FUZZ_CHECK(skey_keys_of(&k2, "v7", r->name, res, canon) == 0);
    FUZZ_CHECK(strcmp(k.entry, k2.entry) == 0 && strcmp(k.lock, k2.lock) == 0 &&
               strcmp(k.gen, k2.gen) == 0);
    int n = snprintf(tag, sizeof(tag), "qc:v7:{r:%s:", r->name);
    size_t el = strlen(k.entry);
    FUZZ_CHECK(el == (size_t)n + 16 + 2 + 32 && strncmp(k.entry, tag, (size_t)n) == 0);
    FUZZ_CHECK(hex_only(k.entry + n, 16) && strncmp(k.entry + n + 16, "}:", 2) == 0 &&
               hex_only(k.entry + n + 18, 32));
    FUZZ_CHECK(strncmp(k.lock, k.entry, el) == 0 && strcmp(k.lock + el, ":lock") == 0);
    FUZZ_CHECK(strncmp(k.gen, k.entry, (size_t)n + 17) == 0 && strcmp(k.gen + n + 17, ":gen") == 0);
    FUZZ_CHECK(skey_gen_key(gen, "v7", r->name, res) == 0 && strcmp(gen, k.gen) == 0);
}

static void check_canonical(const route *r, const char *path, const char *query,
                            struct evkeyvalq *h)
{
    static char canon[SKEY_CANON_MAX], fwd[FWD_MAX], again[SKEY_CANON_MAX], fwd2[FWD_MAX];
    static char want[1 << 17], want_fwd[1 << 17];
    int rc = skey_canonical(r, path, query, h, canon, sizeof(canon), fwd, sizeof(fwd));
    bool ok = expect(r, path, query, h, want, want_fwd);
    FUZZ_CHECK((rc == 0) == ok);
    if (rc != 0)
        return;
    FUZZ_CHECK(strcmp(canon, want) == 0 && strcmp(fwd, want_fwd) == 0);
    size_t lines = 0;
    for (const char *c = canon; (c = strchr(c, '\n')) != NULL; c++)
        lines++;
    FUZZ_CHECK(lines == 3 + (size_t)r->nheaders); /* no newline inside a field */

    /* The same request in another order, its Host in another case. */
    char *rq = query ? reversed(query) : NULL;
    FUZZ_CHECK(skey_canonical(r, path, rq, h, again, sizeof(again), fwd2, sizeof(fwd2)) == 0);
    FUZZ_CHECK(strcmp(canon, again) == 0 && strcmp(fwd, fwd2) == 0);
    free(rq);
    for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, "Host") == 0)
            for (char *c = kv->value; *c; c++)
                *c = (char)toupper((unsigned char)*c);
    }
    FUZZ_CHECK(skey_canonical(r, path, query, h, again, sizeof(again), fwd2, sizeof(fwd2)) == 0);
    FUZZ_CHECK(strcmp(canon, again) == 0);

    char res[SKEY_RESOURCE_MAX];
    if (skey_resource(r, path, res, sizeof(res)) == 0)
        check_keys(r, res, canon);
}

/* ---- resources ---- */

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* One %XX decoding (a '%' without two hex digits stays), into out. */
static size_t decoded(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            out[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    return o;
}

static bool same_meaning(const char *a, size_t an, const char *b, size_t bn)
{
    static char da[4096], db[4096];
    size_t x = decoded(a, an, da), y = decoded(b, bn, db);
    return x == y && memcmp(da, db, x) == 0;
}

static void check_resource(const route *r, const char *path)
{
    route_param ps[ROUTE_PARAMS_MAX];
    char res[SKEY_RESOURCE_MAX], res2[SKEY_RESOURCE_MAX];
    static char spelled[8192];
    int n = routes_path_params(r->path, path, ps);
    int rc = skey_resource(r, path, res, sizeof(res));
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (n < 0) {
        FUZZ_CHECK(rc == -1);
        return;
    }
    if (rc < 0 || strchr(path, '\x1f') != NULL || strlen(path) > 1024)
        return; /* too long; or a raw \x1f, which only merges resources */
    size_t nl = strlen(r->name);
    FUZZ_CHECK(strncmp(res, r->name, nl) == 0);
    /* The path spelled with the resource's values, the rest kept. */
    const char *v = res + nl, *pat = r->path, *rest = path;
    char *o = spelled;
    for (int i = 0; i < n; i++) {
        FUZZ_CHECK(*v == '\x1f');
        v++;
        const char *end = strchr(v, '\x1f');
        size_t vl = end ? (size_t)(end - v) : strlen(v);
        FUZZ_CHECK(same_meaning(v, vl, ps[i].value, ps[i].len));
        const char *brace = strchr(pat, '{');
        memcpy(o, pat, (size_t)(brace - pat));
        o += brace - pat;
        memcpy(o, v, vl);
        o += vl;
        pat = strchr(brace, '}') + 1;
        rest = ps[i].value + ps[i].len;
        v += vl;
    }
    FUZZ_CHECK(*v == '\0');
    size_t pl = strlen(pat);
    if (pl > 0 && pat[pl - 1] == '*') {
        /* the literal before the star, then whatever the path had */
        memcpy(o, pat, pl - 1);
        o += pl - 1;
        rest += pl - 1;
        strcpy(o, rest);
    } else {
        strcpy(o, pat);
    }
    FUZZ_CHECK(skey_resource(r, spelled, res2, sizeof(res2)) == 0);
    FUZZ_CHECK(strcmp(res, res2) == 0); /* the normal form is its own */
}

typedef struct reached {
    int n;
    const route *r[ROUTES_MAX];
    char res[ROUTES_MAX][SKEY_RESOURCE_MAX];
} reached;

static void on_resource(void *arg, const route *r, const char *res)
{
    reached *w = arg;
    FUZZ_CHECK(w->n < ROUTES_MAX);
    w->r[w->n] = r;
    snprintf(w->res[w->n++], SKEY_RESOURCE_MAX, "%s", res);
}

static void check_write(const char *path)
{
    const routes *rt = table();
    static reached w;
    w.n = 0;
    int count = skey_write_resources(rt, path, ROUTE_SHARED, on_resource, &w);
    FUZZ_CHECK(count == w.n);
    for (int i = 0; i < w.n; i++)
        FUZZ_CHECK(w.r[i]->policy == ROUTE_SHARED);
    for (int i = 0; i < routes_count(rt); i++) {
        const route *r = routes_at(rt, i);
        char res[SKEY_RESOURCE_MAX];
        if (r->policy != ROUTE_SHARED || skey_resource(r, path, res, sizeof(res)) < 0)
            continue;
        bool found = false;
        for (int j = 0; j < w.n; j++)
            found = found || (w.r[j] == r && strcmp(w.res[j], res) == 0);
        FUZZ_CHECK(found);
    }
}

/* ---- entries and Vary ---- */

static bool same_fields(const struct evkeyvalq *a, const struct evkeyvalq *b)
{
    const struct evkeyval *x = a->tqh_first, *y = b->tqh_first;
    for (; x && y; x = x->next.tqe_next, y = y->next.tqe_next) {
        if (strcmp(x->key, y->key) != 0 || strcmp(x->value, y->value) != 0)
            return false;
    }
    return x == NULL && y == NULL;
}

/* Names the entry format holds: 1 to 255 bytes (a name here never holds
 * ':', nor a value a newline: fuzz_header_block). */
static bool names_storable(const struct evkeyvalq *h)
{
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        size_t n = strlen(kv->key);
        if (n == 0 || n > 255)
            return false;
    }
    return true;
}

static void check_entry(const struct evkeyvalq *a, const struct evkeyvalq *b,
                        const struct evkeyvalq *resp, const char *body)
{
    httpcache_verdict v;
    httpcache_decide(200, a, resp, true, 60, &v);
    FUZZ_CHECK(skey_entry_holds(resp) == names_storable(resp));
    if (!v.store || !names_storable(resp) ||
        !skey_vary_same(v.nvary, (const char(*)[64])v.vary, a, a))
        return; /* shared.c stores only these */
    skey_entry e = {.status = 200,
                    .stored_ms = 1,
                    .fresh_until_ms = 60001,
                    .gen_global = 3,
                    .gen_sum = 9,
                    .headers = resp,
                    .nvary = v.nvary,
                    .vary_values = a,
                    .body = body,
                    .len = strlen(body)};
    memcpy(e.vary, v.vary, sizeof(e.vary));
    size_t len;
    char *buf = skey_entry_encode(&e, &len);
    skey_entry d;
    struct evkeyvalq dh, dv;
    TAILQ_INIT(&dh);
    TAILQ_INIT(&dv);
    FUZZ_CHECK(skey_entry_decode(buf, len, &d, &dh, &dv) == 0);
    FUZZ_CHECK(d.status == 200 && d.stored_ms == 1 && d.fresh_until_ms == 60001 &&
               d.gen_global == 3 && d.gen_sum == 9 && d.nvary == v.nvary);
    FUZZ_CHECK(d.len == e.len && memcmp(d.body, body, e.len) == 0);
    FUZZ_CHECK(same_fields(&dh, resp));
    for (int i = 0; i < v.nvary; i++)
        FUZZ_CHECK(strcmp(d.vary[i], v.vary[i]) == 0);
    FUZZ_CHECK(skey_vary_matches(&d, a));
    FUZZ_CHECK(skey_vary_matches(&d, b) ==
               skey_vary_same(v.nvary, (const char(*)[64])v.vary, a, b));
    hdrlist_clear(&dh);
    hdrlist_clear(&dv);
    free(buf);
}

/* The next line of [*p, end) as a C string (caller frees), or NULL. */
static char *line_of(const char **p, const char *end)
{
    if (*p >= end)
        return NULL;
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    size_t n = nl ? (size_t)(nl - *p) : (size_t)(end - *p);
    char *s = fuzz_cstr((const uint8_t *)*p, n);
    *p += n + (nl != NULL);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const routes *rt = table();
    const route *r = routes_at(rt, data[0] % routes_count(rt));
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    char *path = line_of(&p, end), *query = line_of(&p, end);
    if (path == NULL) {
        free(query);
        return 0;
    }
    struct evkeyvalq a, b, resp;
    p += fuzz_header_block(p, (size_t)(end - p), &a);
    p += fuzz_header_block(p, (size_t)(end - p), &b);
    fuzz_header_block(p, (size_t)(end - p), &resp);

    const char *q = data[0] & 0x80 ? NULL : query ? query : "";
    check_entry(&a, &b, &resp, q ? q : "");
    check_resource(r, path);
    check_write(path);
    check_canonical(r, path, q, &a);

    free(path);
    free(query);
    hdrlist_clear(&a);
    hdrlist_clear(&b);
    hdrlist_clear(&resp);
    return 0;
}
