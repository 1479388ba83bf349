/* Fuzz target: httpcache_decide, on a request's and an upstream answer's
 * fields (the upstream, and the client, choose every byte).
 *
 * Input: byte 0 picks shared / private and the status, bytes 1-2 the
 * route's ttl (1 .. 86400), then the request's fields ("Name:value" lines),
 * an empty line, the answer's fields.
 *
 * Oracles, with the Cache-Control lists read apart from httpcache.c, as
 * RFC 9110 5.6 reads them (quoted strings and their quoted-pairs): a
 * verdict that stores has a cacheable status, no no-store (request or
 * answer), no no-cache, no Set-Cookie, no private in a shared cache, and a
 * shared answer to an Authorization request says public, s-maxage or
 * must-revalidate; its ttl is 1 .. the route's ttl less Age, at most every
 * s-maxage (shared) or else every max-age given, else Expires - Date, and
 * an Expires that is not a date does not store; its Vary names are every
 * element of the Vary fields, each once (no case), none "*". A refusal has
 * a reason; the same input gives the same verdict.
 *
 * httpcache_not_modified, on the same request and the answer's ETag and
 * Last-Modified as the stored copy's validators: deterministic; with
 * neither validator only an If-None-Match of "*" gives a 304; an
 * If-None-Match decides alone (If-Modified-Since is then not read), a 304
 * by it needs "*" or the stored tag's opaque part, whole and quoted, in
 * one of its elements (no stored tag, no such element); without one, a
 * 304 exactly when both dates parse and Last-Modified <= If-Modified-Since. */
#include "fuzz_headers.h"

#include <ctype.h>
#include <stdint.h>

#include "quotecache/hdrlist.h"
#include "quotecache/httpcache.h"

#define BIG 1000000000LL /* larger than any route's ttl */

static const int statuses[] = {200, 203, 204, 300, 301, 308, 404, 405, 410,
                               414, 501, 201, 206, 302, 304, 500, 503, 0};

/* What the directives of one Cache-Control list say, read by this file. */
typedef struct cc_seen {
    bool no_store, no_cache, private_, public_, must_revalidate;
    int64_t max_age, s_maxage; /* the least given; -1: none */
} cc_seen;

/* A directive's delta-seconds as RFC 9111 1.2.2 allows: digits, maybe in
 * quotes; anything else 0 (stale). Trailing bytes after the digits are not
 * judged here (whatever the code makes of them, the digits bound it). */
static int64_t seconds_of(const char *v, size_t n)
{
    size_t i = 0;
    int64_t s = 0;
    if (i < n && v[i] == '"')
        i++;
    if (i == n || !isdigit((unsigned char)v[i]))
        return 0;
    for (; i < n && isdigit((unsigned char)v[i]); i++)
        s = s < BIG ? s * 10 + (v[i] - '0') : BIG;
    return s;
}

static void least(int64_t *slot, int64_t v)
{
    if (*slot < 0 || v < *slot)
        *slot = v;
}

static bool cc_elem(const char *e, size_t n, void *arg)
{
    cc_seen *cc = arg;
    const char *eq = memchr(e, '=', n);
    size_t nl = eq ? (size_t)(eq - e) : n;
    const char *v = eq ? eq + 1 : e + n;
    size_t vl = (size_t)(e + n - v);
#define IS(name) (nl == strlen(name) && strncasecmp(e, name, nl) == 0)
    if (IS("no-store"))
        cc->no_store = true;
    else if (IS("no-cache"))
        cc->no_cache = true;
    else if (IS("private"))
        cc->private_ = true;
    else if (IS("public"))
        cc->public_ = true;
    else if (IS("must-revalidate"))
        cc->must_revalidate = true;
    else if (IS("max-age"))
        least(&cc->max_age, seconds_of(v, vl));
    else if (IS("s-maxage"))
        least(&cc->s_maxage, seconds_of(v, vl));
#undef IS
    return true;
}

static void cc_read(const struct evkeyvalq *h, cc_seen *cc)
{
    memset(cc, 0, sizeof(*cc));
    cc->max_age = cc->s_maxage = -1;
    fuzz_each_element(h, "Cache-Control", cc_elem, cc);
}

/* The distinct Vary elements (no case), whether one is "*", and whether
 * one is too long (64 bytes or more) or there are more than 64. */
typedef struct vary_seen {
    int n;
    bool star, too_long;
    char names[64][64];
} vary_seen;

static bool vary_elem(const char *e, size_t n, void *arg)
{
    vary_seen *vs = arg;
    if (n == 1 && e[0] == '*')
        vs->star = true;
    if (vs->star || n >= 64) {
        vs->too_long = vs->too_long || n >= 64;
        return true;
    }
    for (int i = 0; i < vs->n; i++) {
        if (strlen(vs->names[i]) == n && strncasecmp(vs->names[i], e, n) == 0)
            return true; /* one field, however often named */
    }
    if (vs->n == 64)
        vs->too_long = true; /* more than the code keeps: it must refuse */
    else
        snprintf(vs->names[vs->n++], 64, "%.*s", (int)n, e);
    return true;
}

static bool verdict_has(const httpcache_verdict *v, const char *name)
{
    for (int i = 0; i < v->nvary; i++) {
        if (strcasecmp(v->vary[i], name) == 0)
            return true;
    }
    return false;
}

static void check_vary(const struct evkeyvalq *resp, const httpcache_verdict *v)
{
    vary_seen vs = {0};
    fuzz_each_element(resp, "Vary", vary_elem, &vs);
    FUZZ_CHECK(!vs.star && !vs.too_long);
    FUZZ_CHECK(v->nvary >= 0 && v->nvary <= HTTPCACHE_VARY_MAX);
    for (int i = 0; i < vs.n; i++)
        FUZZ_CHECK(verdict_has(v, vs.names[i])); /* a copy depends on every one */
    for (int i = 0; i < v->nvary; i++) {
        bool listed = false;
        FUZZ_CHECK(strlen(v->vary[i]) < sizeof(v->vary[i]));
        for (int j = 0; j < vs.n; j++)
            listed = listed || strcasecmp(vs.names[j], v->vary[i]) == 0;
        FUZZ_CHECK(listed);
        for (int j = 0; j < i; j++)
            FUZZ_CHECK(strcasecmp(v->vary[j], v->vary[i]) != 0);
    }
}

/* The first field called name as a date, or -1 absent, -2 not a date. */
static int first_date(const struct evkeyvalq *h, const char *name, time_t *t)
{
    const char *s = evhttp_find_header(h, name);
    if (s == NULL)
        return -1;
    return httpcache_parse_date(s, t) == 0 ? 0 : -2;
}

static void check_ttl(const struct evkeyvalq *resp, const cc_seen *cc, bool shared, int64_t route,
                      int64_t ttl)
{
    const char *age = evhttp_find_header(resp, "Age"); /* digits, never quoted */
    int64_t a = age && isdigit((unsigned char)age[0]) ? seconds_of(age, strlen(age)) : 0;
    FUZZ_CHECK(ttl >= 1 && ttl <= route - a);
    if (shared && cc->s_maxage >= 0) {
        FUZZ_CHECK(ttl <= cc->s_maxage);
    } else if (cc->max_age >= 0) {
        FUZZ_CHECK(ttl <= cc->max_age);
    } else {
        time_t e, d;
        int ge = first_date(resp, "Expires", &e);
        FUZZ_CHECK(ge != -2); /* an Expires that is not a date: expired */
        if (ge == 0 && first_date(resp, "Date", &d) == 0)
            FUZZ_CHECK(e > d && ttl <= (int64_t)(e - d));
    }
}

/* Is the If-None-Match value "*" (whitespace around it allowed)? */
static bool inm_star(const char *v)
{
    v += strspn(v, " \t");
    if (*v != '*')
        return false;
    v++;
    return v[strspn(v, " \t")] == '\0';
}

/* Does some element of an If-None-Match field hold the opaque part of the
 * stored tag, whole, between its quotes? Written apart: the stored tag
 * loses "W/" and its quotes, and the quoted opaque part must stand alone
 * in the field (a quote before it, whitespace or a comma or the end after). */
static bool inm_names(const struct evkeyvalq *req, const char *etag)
{
    if (strncmp(etag, "W/", 2) == 0)
        etag += 2;
    size_t n = strlen(etag);
    if (n >= 2 && etag[0] == '"' && etag[n - 1] == '"') {
        etag++;
        n -= 2;
    }
    if (memchr(etag, '"', n) != NULL)
        return false; /* no element's opaque part holds a quote */
    for (const struct evkeyval *kv = req->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, "If-None-Match") != 0)
            continue;
        for (const char *q = kv->value; (q = strchr(q, '"')) != NULL; q++) {
            if (strncmp(q + 1, etag, n) == 0 && q[1 + n] == '"') {
                const char *after = q + 2 + n;
                after += strspn(after, " \t");
                if (*after == '\0' || *after == ',')
                    return true;
            }
        }
    }
    return false;
}

static void check_not_modified(const struct evkeyvalq *req, const struct evkeyvalq *resp)
{
    const char *et = evhttp_find_header(resp, "ETag");
    const char *lm = evhttp_find_header(resp, "Last-Modified");
    /* Exact copies: a read past their end is ASan's to see. */
    char *etag = et ? fuzz_cstr((const uint8_t *)et, strlen(et)) : NULL;
    char *lmod = lm ? fuzz_cstr((const uint8_t *)lm, strlen(lm)) : NULL;
    bool r = httpcache_not_modified(req, etag, lmod);
    FUZZ_CHECK(httpcache_not_modified(req, etag, lmod) == r);
    const char *inm = evhttp_find_header(req, "If-None-Match");
    if (etag == NULL && lmod == NULL)
        FUZZ_CHECK(!r || (inm != NULL && inm_star(inm)));
    if (inm != NULL) {
        if (r)
            FUZZ_CHECK(inm_star(inm) || (etag != NULL && inm_names(req, etag)));
        else
            FUZZ_CHECK(!(fuzz_count(req, "If-None-Match") == 1 && strcmp(inm, "*") == 0));
    } else {
        const char *ims = evhttp_find_header(req, "If-Modified-Since");
        time_t since, modified;
        bool older = ims != NULL && lmod != NULL && httpcache_parse_date(ims, &since) == 0 &&
                     httpcache_parse_date(lmod, &modified) == 0 && modified <= since;
        FUZZ_CHECK(r == older);
    }
    free(etag);
    free(lmod);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    bool shared = data[0] & 1;
    int status = statuses[(data[0] >> 1) % (sizeof(statuses) / sizeof(statuses[0]))];
    int64_t route = 1 + (data[1] << 8 | data[2]) % 86400;
    const char *text = (const char *)data + 3;
    size_t n = size - 3;
    struct evkeyvalq req, resp;
    size_t used = fuzz_header_block(text, n, &req);
    fuzz_header_block(text + used, n - used, &resp);

    httpcache_verdict v, again;
    httpcache_decide(status, &req, &resp, shared, route, &v);
    httpcache_decide(status, &req, &resp, shared, route, &again);
    FUZZ_CHECK(v.store == again.store && v.ttl_s == again.ttl_s && v.nvary == again.nvary);
    if (!v.store) {
        FUZZ_CHECK(v.why != NULL && v.why[0] != '\0');
    } else {
        cc_seen qcc, cc;
        cc_read(&req, &qcc);
        cc_read(&resp, &cc);
        FUZZ_CHECK(httpcache_status_cacheable(status));
        FUZZ_CHECK(!qcc.no_store && !cc.no_store && !cc.no_cache);
        FUZZ_CHECK(fuzz_count(&resp, "Set-Cookie") == 0);
        if (shared) {
            FUZZ_CHECK(!cc.private_);
            if (fuzz_count(&req, "Authorization") > 0)
                FUZZ_CHECK(cc.public_ || cc.s_maxage >= 0 || cc.must_revalidate);
        }
        check_ttl(&resp, &cc, shared, route, v.ttl_s);
        check_vary(&resp, &v);
    }
    check_not_modified(&req, &resp);
    hdrlist_clear(&req);
    hdrlist_clear(&resp);
    return 0;
}
