/* httpcache: RFC 9111 storage and freshness rules, and RFC 9110
 * conditional requests, over header lists. Pure. */
#include "quotecache/httpcache.h"

#include <ctype.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "quotecache/httphdr.h"

/* Calls fn on every element of every field called name (comma lists),
 * trimmed; stops when fn returns false. A comma inside a quoted string
 * does not separate, and neither does a quote a backslash escapes there
 * (RFC 9110 5.6.4 quoted-pair): read as a closing quote, it hid the rest
 * of the field, and `foo="a\"", no-store` was stored. */
typedef bool elem_fn(const char *e, size_t n, void *arg);

static void each_element(const struct evkeyvalq *h, const char *name, elem_fn *fn, void *arg)
{
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, name) != 0)
            continue;
        const char *p = kv->value;
        bool quoted = false;
        const char *start = p;
        for (;; p++) {
            if (quoted && *p == '\\' && p[1] != '\0') {
                p++;
                continue;
            }
            if (*p == '"')
                quoted = !quoted;
            if (*p != '\0' && (*p != ',' || quoted))
                continue;
            const char *a = start, *b = p;
            while (a < b && (*a == ' ' || *a == '\t'))
                a++;
            while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
                b--;
            if (b > a && !fn(a, (size_t)(b - a), arg))
                return;
            if (*p == '\0')
                break;
            start = p + 1;
        }
    }
}

static bool is_directive(const char *e, size_t n, const char *name, const char **value)
{
    size_t len = strlen(name);
    if (n < len || strncasecmp(e, name, len) != 0)
        return false;
    if (n == len) {
        *value = NULL;
        return true;
    }
    if (e[len] != '=')
        return false;
    *value = e + len + 1;
    return true;
}

/* delta-seconds, maybe quoted; malformed: 0 (RFC 9111 4.2.1 says treat
 * an invalid max-age as stale). */
static int64_t delta_seconds(const char *v, const char *end)
{
    if (v < end && *v == '"')
        v++;
    int64_t n = 0;
    const char *p = v;
    for (; p < end && isdigit((unsigned char)*p); p++) {
        if (n < INT64_MAX / 10 - 10)
            n = n * 10 + (*p - '0');
    }
    if (p == v)
        return 0;
    return n;
}

/* RFC 9111 4.2.1: a directive given twice means its first value or
 * stale; the least of them is never fresher than either (the last one,
 * read before, let `max-age=5, max-age=500` live 500 s). */
static void least(int64_t *slot, int64_t v)
{
    if (*slot < 0 || v < *slot)
        *slot = v;
}

static bool cc_element(const char *e, size_t n, void *arg)
{
    httpcache_cc *cc = arg;
    const char *v;
    if (is_directive(e, n, "no-store", &v))
        cc->no_store = true;
    else if (is_directive(e, n, "no-cache", &v))
        cc->no_cache = true;
    else if (is_directive(e, n, "private", &v))
        cc->private_ = true;
    else if (is_directive(e, n, "public", &v))
        cc->public_ = true;
    else if (is_directive(e, n, "must-revalidate", &v))
        cc->must_revalidate = true;
    else if (is_directive(e, n, "max-age", &v))
        least(&cc->max_age, v ? delta_seconds(v, e + n) : 0);
    else if (is_directive(e, n, "s-maxage", &v))
        least(&cc->s_maxage, v ? delta_seconds(v, e + n) : 0);
    return true;
}

void httpcache_parse_cc(const struct evkeyvalq *h, httpcache_cc *out)
{
    memset(out, 0, sizeof(*out));
    out->max_age = out->s_maxage = -1;
    each_element(h, "Cache-Control", cc_element, out);
}

bool httpcache_status_cacheable(int status)
{
    static const int ok[] = {200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (ok[i] == status)
            return true;
    }
    return false;
}

static bool vary_element(const char *e, size_t n, void *arg)
{
    httpcache_verdict *v = arg;
    if (n == 1 && e[0] == '*') {
        v->why = "Vary: *";
        return false;
    }
    /* A name listed twice (two Vary: Origin fields, as middleware stacks
     * add them) is one field: kept twice, the entry held two values of it
     * and matched no request, so every request fetched and stored again. */
    for (int i = 0; i < v->nvary; i++) {
        if (strlen(v->vary[i]) == n && strncasecmp(v->vary[i], e, n) == 0)
            return true;
    }
    if (v->nvary == HTTPCACHE_VARY_MAX || n >= sizeof(v->vary[0])) {
        v->why = "Vary names too many fields";
        return false;
    }
    memcpy(v->vary[v->nvary], e, n);
    v->vary[v->nvary++][n] = '\0';
    return true;
}

static int64_t age_of(const struct evkeyvalq *resp)
{
    const char *age = evhttp_find_header(resp, "Age");
    if (age == NULL || !isdigit((unsigned char)age[0]))
        return 0;
    return delta_seconds(age, age + strlen(age));
}

static const char *refusal(int status, const struct evkeyvalq *req, const httpcache_cc *qcc,
                           const httpcache_cc *cc, const struct evkeyvalq *resp, bool shared)
{
    if (!httpcache_status_cacheable(status))
        return "status not cacheable";
    if (qcc->no_store || cc->no_store)
        return "no-store";
    if (cc->no_cache)
        return "no-cache";
    if (evhttp_find_header(resp, "Set-Cookie") != NULL)
        return "Set-Cookie";
    if (shared && cc->private_)
        return "private";
    if (shared && evhttp_find_header(req, "Authorization") != NULL && !cc->public_ &&
        cc->s_maxage < 0 && !cc->must_revalidate)
        return "Authorization";
    return NULL;
}

/* RFC 9111 5.3: without max-age, Expires - Date caps the lifetime; an
 * Expires that is not a date means already expired. -1: no cap. */
static int64_t expires_cap(const struct evkeyvalq *resp)
{
    const char *expires = evhttp_find_header(resp, "Expires");
    const char *date = evhttp_find_header(resp, "Date");
    time_t e, d;
    if (expires == NULL)
        return -1;
    if (httpcache_parse_date(expires, &e) < 0)
        return 0;
    if (date == NULL || httpcache_parse_date(date, &d) < 0)
        return -1; /* no clock of the origin's to compare with */
    return e > d ? (int64_t)(e - d) : 0;
}

void httpcache_decide(int status, const struct evkeyvalq *req, const struct evkeyvalq *resp,
                      bool shared, int64_t route_ttl_s, httpcache_verdict *out)
{
    memset(out, 0, sizeof(*out));
    httpcache_cc qcc, cc;
    httpcache_parse_cc(req, &qcc);
    httpcache_parse_cc(resp, &cc);
    out->why = refusal(status, req, &qcc, &cc, resp, shared);
    if (out->why != NULL)
        return;
    each_element(resp, "Vary", vary_element, out);
    if (out->why != NULL)
        return;
    int64_t ttl = route_ttl_s;
    int64_t cap = shared && cc.s_maxage >= 0 ? cc.s_maxage : cc.max_age;
    if (cap < 0)
        cap = expires_cap(resp);
    if (cap >= 0 && cap < ttl)
        ttl = cap;
    ttl -= age_of(resp);
    if (ttl < 1) {
        out->why = "lifetime under 1 s";
        return;
    }
    out->ttl_s = ttl;
    out->store = true;
}

int httpcache_parse_date(const char *s, time_t *out)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *end = strptime(s, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || *end != '\0')
        return -1;
    *out = timegm(&tm);
    return 0;
}

/* The opaque part of a stored ETag ("W/" and the quotes off) into buf.
 * Returns -1 when it does not fit: it was cut to fit once, and a tag
 * longer than buf then matched any If-None-Match that named its first 255
 * bytes (a 304 for a representation the client does not hold; found
 * writing the httpcache fuzz target's oracle). A tag that long matches
 * no tag (only "*"): the full answer is always right. */
static int opaque_tag(const char *etag, char *buf, size_t len)
{
    if (strncmp(etag, "W/", 2) == 0)
        etag += 2;
    size_t n = strlen(etag);
    if (n >= 2 && etag[0] == '"' && etag[n - 1] == '"') {
        etag++;
        n -= 2;
    }
    if (n >= len)
        return -1;
    memcpy(buf, etag, n);
    buf[n] = '\0';
    return 0;
}

bool httpcache_not_modified(const struct evkeyvalq *req, const char *etag,
                            const char *last_modified)
{
    const char *inm = evhttp_find_header(req, "If-None-Match");
    if (inm != NULL) {
        if (etag == NULL)
            return strcmp(inm, "*") == 0;
        char tag[256];
        if (opaque_tag(etag, tag, sizeof(tag)) < 0)
            strcpy(tag, "\""); /* no element's opaque part holds a quote */
        return httphdr_etag_matches(inm, tag);
    }
    const char *ims = evhttp_find_header(req, "If-Modified-Since");
    time_t since, modified;
    if (ims == NULL || last_modified == NULL || httpcache_parse_date(ims, &since) < 0 ||
        httpcache_parse_date(last_modified, &modified) < 0)
        return false;
    return modified <= since;
}
