/* Fuzz target: routes_parse on a --routes file (the operator's, but a
 * typo must not become a wrong route), and matching of the paths clients
 * send against what it accepted.
 *
 * Input: the JSON text, a NUL, then lines: each a method selector byte
 * and a path.
 *
 * Oracles: an accepted table has at most ROUTES_MAX routes, each with a
 * name of [A-Za-z0-9_-], a pattern of the grammar (checked apart: '/'
 * first, each {param} a whole non-empty segment, '*' only last, no '?',
 * '#' or stray '}', at most ROUTE_PARAMS_MAX {params} whose names are 1 to 63
 * bytes without '/' or '{'), a ttl of 1 .. 86400 and the limits of its lists;
 * parsing again gives the same table; a refusal says why. Matching is
 * deterministic and picks the first route whose methods and pattern
 * match; a path matches a pattern exactly when routes_path_params finds
 * its {params}, which are then as many as the pattern has, named as
 * there, non-empty substrings of the path without '/', in order, and
 * spelling them into the pattern gives the path back (the part before the
 * final '*' a prefix of it). routes_not_forwarded agrees with its rule
 * written out apart: refused when the path as sent or after any of three
 * %XX decodings reaches /admin or climbs above the root (dots resolved,
 * '\\' as '/', slashes merged, ;parameters dropped, no case), when a
 * decoding gives a NUL, when a fourth would still change it, or when it
 * is 4097 bytes or more.
 *
 * A second NUL starts an identity section: a byte (bit 0: header or
 * cookie; the next: the buffer's size, 1 .. 128), the identity's name to
 * a newline, then "Name:value" lines. routes_identity agrees with its
 * rule written apart: the one field of that name (no case), or the one
 * cookie of that name (case kept) in the Cookie fields joined with "; ",
 * each element's leading whitespace dropped; none, two (usable or not),
 * an empty value or one that does not fit the buffer: none. So two
 * requests get the same identity only when their identities are the
 * same; and the same request always the same one. */
#include "fuzz.h"
#include "fuzz_headers.h"

#include <event2/http.h>
#include <stdbool.h>

#include "quotecache/hdrlist.h"
#include "quotecache/routes.h"

static const unsigned methods[] = {EVHTTP_REQ_GET,     EVHTTP_REQ_HEAD,   EVHTTP_REQ_POST,
                                   EVHTTP_REQ_PUT,     EVHTTP_REQ_DELETE, EVHTTP_REQ_PATCH,
                                   EVHTTP_REQ_OPTIONS, EVHTTP_REQ_TRACE};

static bool grammar_ok(const char *p)
{
    size_t n = strlen(p);
    int params = 0;
    if (n == 0 || n >= 256 || p[0] != '/')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '*' && i != n - 1)
            return false;
        if (p[i] == '?' || p[i] == '#' || p[i] == '}')
            return false;
        if (p[i] == '{') {
            size_t j = i + 1;
            while (j < n && p[j] != '}' && p[j] != '/' && p[j] != '{')
                j++;
            if (p[i - 1] != '/' || j == n || p[j] != '}' || j == i + 1 || j - i - 1 >= 64 ||
                (j + 1 < n && p[j + 1] != '/') || ++params > ROUTE_PARAMS_MAX)
                return false;
            i = j;
        }
    }
    return true;
}

static bool charset(const char *s, const char *set)
{
    return s[0] != '\0' && strspn(s, set) == strlen(s);
}

static void check_route(const route *r)
{
    FUZZ_CHECK(
        strlen(r->name) < ROUTE_NAME_MAX &&
        charset(r->name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"));
    FUZZ_CHECK(grammar_ok(r->path));
    FUZZ_CHECK(r->ttl_s >= 1 && r->ttl_s <= 86400);
    FUZZ_CHECK(r->policy == ROUTE_BYPASS || r->policy == ROUTE_LOCAL || r->policy == ROUTE_SHARED);
    if (r->policy == ROUTE_LOCAL)
        FUZZ_CHECK(r->ident[0] != '\0' && strpbrk(r->ident, " \t;,=:") == NULL);
    FUZZ_CHECK(r->nquery >= 0 && r->nquery <= ROUTE_QUERY_MAX);
    FUZZ_CHECK(r->nignore >= 0 && r->nignore <= ROUTE_IGNORE_MAX);
    FUZZ_CHECK(r->nheaders >= 0 && r->nheaders <= ROUTE_HEADERS_MAX);
    FUZZ_CHECK(r->stale_s >= 0 && r->stale_s <= 86400);
    for (int i = 0; i < r->nquery; i++)
        FUZZ_CHECK(r->query[i].name[0] != '\0' && strpbrk(r->query[i].name, "&=\n") == NULL);
    for (int i = 0; i < r->nheaders; i++)
        FUZZ_CHECK(r->headers[i][0] != '\0' && strpbrk(r->headers[i], ":\r\n") == NULL);
}

/* The {params} of path in pattern, checked against the pattern and spelled
 * back into it; returns whether it matched. */
static bool check_params(const char *pat, const char *path)
{
    route_param ps[ROUTE_PARAMS_MAX];
    static char spelled[8192];
    int n = routes_path_params(pat, path, ps);
    bool m = routes_path_matches(pat, path);
    int braces = 0;
    for (const char *c = pat; (c = strchr(c, '{')) != NULL; c++)
        braces++;
    FUZZ_CHECK((n >= 0) == m);
    if (n < 0)
        return m;
    FUZZ_CHECK(n == braces);
    size_t len = strlen(path);
    const char *at = path, *pp = pat;
    char *o = spelled;
    for (int i = 0; i < n; i++) {
        const char *open = strchr(pp, '{'), *close = strchr(open, '}');
        FUZZ_CHECK(strlen(ps[i].name) == (size_t)(close - open - 1) &&
                   memcmp(ps[i].name, open + 1, strlen(ps[i].name)) == 0);
        FUZZ_CHECK(ps[i].value >= at && ps[i].len >= 1 && ps[i].value + ps[i].len <= path + len);
        FUZZ_CHECK(memchr(ps[i].value, '/', ps[i].len) == NULL);
        memcpy(o, pp, (size_t)(open - pp));
        o += open - pp;
        memcpy(o, ps[i].value, ps[i].len);
        o += ps[i].len;
        at = ps[i].value + ps[i].len;
        pp = close + 1;
    }
    size_t rest = strlen(pp);
    bool star = rest > 0 && pp[rest - 1] == '*';
    memcpy(o, pp, rest - star);
    o += rest - star;
    *o = '\0';
    size_t sl = (size_t)(o - spelled);
    if (star)
        FUZZ_CHECK(sl <= len && memcmp(spelled, path, sl) == 0);
    else
        FUZZ_CHECK(strcmp(spelled, path) == 0);
    return true;
}

/* Whether one spelling reaches /admin or climbs above the root, read as
 * RFC 3986 5.2.4 resolves dots, with '\\' for '/', empty segments merged
 * and ;parameters dropped, a segment ending at a '?' or '#' too: a segment
 * that lands at the root decides. */
static bool spelling_escapes(const char *s)
{
    int depth = 0;
    while (*s) {
        size_t n = strcspn(s, "/\\");
        size_t seg = strcspn(s, ";?#");
        seg = seg < n ? seg : n;
        if (seg == 2 && s[0] == '.' && s[1] == '.') {
            if (depth-- == 0)
                return true;
        } else if (seg > 0 && !(seg == 1 && s[0] == '.')) {
            /* "admin" whole, or followed by a dot or whitespace */
            if (depth++ == 0 && seg >= 5 && strncasecmp(s, "admin", 5) == 0 &&
                (seg == 5 || s[5] == '.' || s[5] == ' ' || (s[5] >= '\t' && s[5] <= '\r')))
                return true;
        }
        s += n + (s[n] != '\0');
    }
    return false;
}

static int hex(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* routes_not_forwarded's rule, apart: a path too long, or one whose
 * spelling as sent or after any of three %XX decodings escapes, that
 * decodes a NUL, or that a fourth decoding would still change. */
static bool not_forwarded(const char *path)
{
    static char cur[4097];
    size_t n = strlen(path);
    if (n >= sizeof(cur))
        return true;
    memcpy(cur, path, n + 1);
    for (int level = 0; level <= 3; level++) {
        if (spelling_escapes(cur))
            return true;
        size_t o = 0;
        bool changed = false;
        for (size_t i = 0; cur[i]; i++) {
            if (cur[i] == '%' && hex(cur[i + 1]) >= 0 && hex(cur[i + 2]) >= 0) {
                char c = (char)(hex(cur[i + 1]) * 16 + hex(cur[i + 2]));
                if (c == '\0')
                    return true;
                cur[o++] = c;
                i += 2;
                changed = true;
            } else {
                cur[o++] = cur[i];
            }
        }
        cur[o] = '\0';
        if (!changed)
            break;
        if (level == 3)
            return true; /* a fourth decoding would change it */
    }
    return false;
}

static void check_match(const routes *rt, unsigned method, const char *path)
{
    FUZZ_CHECK(routes_not_forwarded(path) == not_forwarded(path));
    const route *m = routes_match(rt, method, path);
    FUZZ_CHECK(routes_match(rt, method, path) == m);
    const route *first = NULL;
    for (int i = 0; i < routes_count(rt); i++) {
        const route *r = routes_at(rt, i);
        bool pm = check_params(r->path, path);
        if (first == NULL && (r->methods == 0 || (r->methods & method)) && pm)
            first = r;
    }
    FUZZ_CHECK(m == first);
}

/* routes_identity's rule, apart: the identity into out (len bytes), its
 * length or -1. */
static int identity_of(const route *r, const struct evkeyvalq *h, char *out, size_t len)
{
    const char *value = NULL;
    size_t vlen = 0;
    int seen = 0;
    if (r->ident_kind == IDENT_HEADER) {
        for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
            if (strcasecmp(kv->key, r->ident) == 0) {
                seen++;
                value = kv->value;
                vlen = strlen(value);
            }
        }
    } else {
        static char joined[65536];
        size_t o = 0;
        for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
            size_t n = strlen(kv->value);
            if (strcasecmp(kv->key, "Cookie") != 0)
                continue;
            FUZZ_CHECK(o + n + 3 < sizeof(joined));
            if (o > 0)
                o += (size_t)snprintf(joined + o, 3, "; ");
            memcpy(joined + o, kv->value, n + 1);
            o += n;
        }
        joined[o] = '\0';
        size_t nl = strlen(r->ident);
        for (char *e = joined, *next; o > 0 && e != NULL; e = next) {
            next = strchr(e, ';');
            size_t n = next ? (size_t)(next - e) : strlen(e);
            next = next ? next + 1 : NULL;
            while (n > 0 && (*e == ' ' || *e == '\t')) {
                e++;
                n--;
            }
            if (n > nl && memcmp(e, r->ident, nl) == 0 && e[nl] == '=') {
                seen++;
                value = e + nl + 1;
                vlen = n - nl - 1;
            }
        }
    }
    if (seen != 1 || vlen == 0 || vlen >= len)
        return -1;
    memcpy(out, value, vlen);
    out[vlen] = '\0';
    return (int)vlen;
}

static void check_identity(const char *s, size_t n)
{
    if (n < 2)
        return;
    route r = {0};
    r.ident_kind = s[0] & 1 ? IDENT_COOKIE : IDENT_HEADER;
    size_t len = 1 + (unsigned char)s[1] % 128;
    const char *nl = memchr(s + 2, '\n', n - 2);
    size_t il = nl ? (size_t)(nl - s - 2) : n - 2;
    /* Only names routes_parse accepts. */
    if (il == 0 || il >= sizeof(r.ident) || memchr(s + 2, '\0', il) != NULL)
        return;
    memcpy(r.ident, s + 2, il);
    if (strpbrk(r.ident, " \t;,=:") != NULL)
        return;
    struct evkeyvalq h;
    size_t used = 2 + il + (nl != NULL);
    fuzz_header_block(s + used, n - used, &h);
    char *buf = malloc(len), *again = malloc(len), want[128];
    FUZZ_CHECK(buf != NULL && again != NULL);
    int rc = routes_identity(&r, &h, buf, len);
    int expect = identity_of(&r, &h, want, len);
    FUZZ_CHECK(rc == expect);
    if (rc >= 0) {
        FUZZ_CHECK(strlen(buf) == (size_t)rc && strcmp(buf, want) == 0);
        FUZZ_CHECK(routes_identity(&r, &h, again, len) == rc && strcmp(again, buf) == 0);
    }
    free(buf);
    free(again);
    hdrlist_clear(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, '\0', size);
    size_t jlen = nul ? (size_t)(nul - data) : size;
    if (nul != NULL) { /* the identity section, whatever the table */
        const uint8_t *id = memchr(nul + 1, '\0', (size_t)(data + size - nul - 1));
        if (id != NULL)
            check_identity((const char *)id + 1, (size_t)(data + size - id - 1));
    }
    char *json = fuzz_guarded(data, jlen);
    char err[256] = "", err2[256];
    routes *rt = routes_parse(json, jlen, err, sizeof(err));
    if (rt == NULL) {
        FUZZ_CHECK(err[0] != '\0' && strlen(err) < sizeof(err));
        fuzz_guarded_free(json, jlen);
        return 0;
    }
    routes *again = routes_parse(json, jlen, err2, sizeof(err2));
    FUZZ_CHECK(again != NULL && routes_count(again) == routes_count(rt));
    FUZZ_CHECK(routes_count(rt) >= 0 && routes_count(rt) <= ROUTES_MAX);
    for (int i = 0; i < routes_count(rt); i++) {
        check_route(routes_at(rt, i));
        FUZZ_CHECK(memcmp(routes_at(rt, i), routes_at(again, i), sizeof(route)) == 0);
    }
    routes_free(again);
    fuzz_guarded_free(json, jlen);

    const char *p = nul ? (const char *)nul + 1 : (const char *)data + size;
    const char *end = (const char *)data + size;
    const char *ident = memchr(p, '\0', (size_t)(end - p));
    if (ident != NULL)
        end = ident;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n > 0) {
            unsigned method = methods[(unsigned char)p[0] % (sizeof(methods) / sizeof(methods[0]))];
            char *path = fuzz_cstr((const uint8_t *)p + 1, n - 1);
            check_match(rt, method, path);
            free(path);
        }
        p += n + 1;
    }
    routes_free(rt);
    return 0;
}
