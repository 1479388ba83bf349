/* sharedkey: keys, resources and entries of shared routes (pure). */
#include "quotecache/sharedkey.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "quotecache/hash.h"
#include "quotecache/hdrlist.h"
#include "quotecache/hex.h"
#include "quotecache/mem.h"
#include "quotecache/sha256.h"
#include "quotecache/strbuf.h"

#define QUERY_PARTS_MAX 64
#define ABSENT "\x02" /* a named parameter or field the request lacks */

/* ---- canonical requests ---- */

static bool ignored(const route *r, const char *name, size_t n)
{
    for (int i = 0; i < r->nignore; i++) {
        const char *p = r->ignore[i];
        size_t pl = strlen(p);
        if (pl > 0 && p[pl - 1] == '*' ? n >= pl - 1 && strncmp(name, p, pl - 1) == 0
                                       : n == pl && strncmp(name, p, n) == 0)
            return true;
    }
    return false;
}

static int named(const route *r, const char *name, size_t n)
{
    for (int i = 0; i < r->nquery; i++) {
        if (strlen(r->query[i].name) == n && strncmp(r->query[i].name, name, n) == 0)
            return i;
    }
    return -1;
}

static void put_folded(strbuf *sb, const char *v, size_t n, enum route_case fold)
{
    for (size_t i = 0; i < n; i++) {
        char c = v[i];
        if (fold == CASE_LOWER)
            c = (char)tolower((unsigned char)c);
        else if (fold == CASE_UPPER)
            c = (char)toupper((unsigned char)c);
        strbuf_mem(sb, &c, 1);
    }
}

/* The one value of field name in h (NULL: absent). Returns -1 when it
 * is sent twice: the key would hold the first while the application may
 * read the last, or both, and store its answer for another value. */
static int field_once(const struct evkeyvalq *h, const char *name, const char **out)
{
    *out = NULL;
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, name) != 0)
            continue;
        if (*out != NULL)
            return -1;
        *out = kv->value;
    }
    return 0;
}

/* A control byte: never in a valid field value or query, and \x02 in
 * one would spell ABSENT (a request without the field would get the
 * answer to this one). */
static bool has_ctl(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return true;
    }
    return false;
}

int skey_canonical(const route *r, const char *path, const char *query,
                   const struct evkeyvalq *headers, char *canon, size_t canon_len, char *fwd,
                   size_t fwd_len)
{
    const char *val[ROUTE_QUERY_MAX] = {0};
    size_t vlen[ROUTE_QUERY_MAX] = {0};
    for (const char *p = query ? query : ""; *p;) {
        size_t plen = strcspn(p, "&");
        size_t nlen = strcspn(p, "=&");
        if (plen > 0) {
            int i = named(r, p, nlen);
            if (i >= 0) {
                if (val[i] != NULL)
                    return -1; /* twice: which one would the application read? */
                val[i] = nlen < plen ? p + nlen + 1 : "";
                vlen[i] = nlen < plen ? plen - nlen - 1 : 0;
                if (has_ctl(val[i], vlen[i]))
                    return -1;
            } else if (!ignored(r, p, nlen)) {
                return -1;
            }
        }
        p += plen + (p[plen] == '&');
    }
    /* RFC 9111 2: the key is the target URI, its authority included; an
     * application that builds links from Host (or X-Forwarded-Host, which
     * the upstream module sets from it) would have one client's Host
     * served to every other. A host has no case. */
    const char *host;
    if (field_once(headers, "Host", &host) < 0 || (host && has_ctl(host, strlen(host))))
        return -1;
    strbuf c = strbuf_on(canon, canon_len), f = strbuf_on(fwd, fwd_len);
    strbuf_str(&c, r->name);
    strbuf_str(&c, "\n");
    strbuf_str(&c, path);
    strbuf_str(&c, "\n");
    if (host != NULL)
        put_folded(&c, host, strlen(host), CASE_LOWER);
    else
        strbuf_str(&c, ABSENT);
    strbuf_str(&c, "\n");
    for (int i = 0; i < r->nquery; i++) {
        const route_query *q = &r->query[i];
        strbuf_str(&c, q->name);
        strbuf_str(&c, "=");
        if (val[i] != NULL) {
            put_folded(&c, val[i], vlen[i], q->fold);
            strbuf_str(&f, f.len ? "&" : "");
            strbuf_str(&f, q->name);
            strbuf_str(&f, "=");
            put_folded(&f, val[i], vlen[i], q->fold);
        } else if (q->def[0] != '\0') {
            put_folded(&c, q->def, strlen(q->def), q->fold);
        } else {
            strbuf_str(&c, ABSENT);
        }
        strbuf_str(&c, "&");
    }
    for (int i = 0; i < r->nheaders; i++) {
        const char *v;
        if (field_once(headers, r->headers[i], &v) < 0 || (v && has_ctl(v, strlen(v))))
            return -1;
        strbuf_str(&c, "\n");
        strbuf_str(&c, v ? v : ABSENT);
    }
    return strbuf_ok(&c) && strbuf_ok(&f) ? 0 : -1;
}

/* ---- resources ---- */

/* A {param}'s value in its RFC 3986 6.2.2 normal form: an unreserved
 * character decoded, any other escape in upper case, and a '%' that starts
 * no escape written as one (%25). /catalog/q%31 is /catalog/q1 to the
 * application: a write to one spelling must reach the copies of the
 * other, or they outlive the write. A bare '%' kept bare made the form
 * depend on its neighbours: %%341 became %41 (decoded: A), while the
 * application reads it as the text %41, as it does %2541 (found writing
 * the sharedkey fuzz target's oracle). */
static void put_segment(strbuf *sb, const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (v[i] == '%' && i + 2 < n && (hi = hex_digit((unsigned char)v[i + 1])) >= 0 &&
            (lo = hex_digit((unsigned char)v[i + 2])) >= 0) {
            char c = (char)(hi * 16 + lo);
            char esc[3] = {'%', "0123456789ABCDEF"[hi], "0123456789ABCDEF"[lo]};
            if (isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_' || c == '~')
                strbuf_mem(sb, &c, 1);
            else
                strbuf_mem(sb, esc, 3);
            i += 2;
            continue;
        }
        if (v[i] == '%')
            strbuf_str(sb, "%25");
        else
            strbuf_mem(sb, &v[i], 1);
    }
}

int skey_resource(const route *r, const char *path, char *out, size_t len)
{
    route_param ps[ROUTE_PARAMS_MAX];
    int n = routes_path_params(r->path, path, ps);
    if (n < 0)
        return -1;
    strbuf sb = strbuf_on(out, len);
    strbuf_str(&sb, r->name);
    for (int i = 0; i < n; i++) {
        strbuf_str(&sb, "\x1f");
        put_segment(&sb, ps[i].value, ps[i].len);
    }
    return strbuf_ok(&sb) ? 0 : -1;
}

/* The resource's 16 hex: FNV-1a, not SHA-256 (a third of a hit's cost
 * was digests). Two resources of one route that collide share a counter
 * and a slot: a write to one also drops the other's copies, never fewer. */
static void resource_hex(const char *resource, char out[17])
{
    hex_u64(hash_str(resource), out);
    out[16] = '\0';
}

static int tag_of(char *out, size_t len, const char *version, const char *route_name,
                  const char *resource)
{
    char h[17];
    resource_hex(resource, h);
    int n = snprintf(out, len, "qc:%s:{r:%s:%s}", version, route_name, h);
    return n > 0 && (size_t)n < len ? n : -1;
}

int skey_gen_key(char out[KEY_MAX], const char *version, const char *route_name,
                 const char *resource)
{
    int n = tag_of(out, KEY_MAX, version, route_name, resource);
    if (n < 0 || (size_t)n + 5 > KEY_MAX)
        return -1;
    memcpy(out + n, ":gen", 5);
    return 0;
}

int skey_keys_of(skey_keys *out, const char *version, const char *route_name, const char *resource,
                 const char *canon)
{
    char tag[KEY_MAX], d[33];
    int n = tag_of(tag, sizeof(tag), version, route_name, resource);
    if (n < 0)
        return -1;
    strbuf v = strbuf_on(out->entry, KEY_MAX); /* the version is in the digest too */
    strbuf_str(&v, version);
    strbuf_str(&v, "\n");
    strbuf_str(&v, canon);
    if (!strbuf_ok(&v)) {
        /* A canonical form longer than a key: digest it whole instead. */
        size_t cl = strlen(canon);
        char *all = xmalloc(strlen(version) + 1 + cl + 1);
        sprintf(all, "%s\n%s", version, canon);
        sha256_hex(all, strlen(all), 16, d);
        free(all);
    } else {
        sha256_hex(out->entry, v.len, 16, d);
    }
    strbuf e = strbuf_on(out->entry, KEY_MAX), l = strbuf_on(out->lock, KEY_MAX),
           g = strbuf_on(out->gen, KEY_MAX);
    strbuf_str(&e, tag);
    strbuf_str(&e, ":");
    strbuf_str(&e, d);
    strbuf_str(&l, out->entry);
    strbuf_str(&l, ":lock");
    strbuf_str(&g, tag);
    strbuf_str(&g, ":gen");
    if (!strbuf_ok(&e) || !strbuf_ok(&l) || !strbuf_ok(&g))
        return -1;
    return 0;
}

/* ---- writes ---- */

/* The {param} names of a pattern, in order. */
static int pattern_names(const char *pat, char names[ROUTE_PARAMS_MAX][64])
{
    int n = 0;
    for (const char *c = pat; (c = strchr(c, '{')) != NULL && n < ROUTE_PARAMS_MAX; n++) {
        const char *close = strchr(c, '}');
        if (close == NULL)
            break;
        snprintf(names[n], 64, "%.*s", (int)(close - c - 1), c + 1);
        c = close;
    }
    return n;
}

int skey_write_resources(const routes *rt, const char *wpath, enum route_policy pol,
                         skey_resource_cb *cb, void *arg)
{
    /* Every {param} value wpath gives, by name, from every route it matches. */
    route_param m[ROUTE_PARAMS_MAX * 2];
    int nm = 0;
    for (int i = 0; i < routes_count(rt); i++) {
        route_param ps[ROUTE_PARAMS_MAX];
        int n = routes_path_params(routes_at(rt, i)->path, wpath, ps);
        for (int j = 0; j < n && nm < (int)QC_ARRAY_LEN(m); j++)
            m[nm++] = ps[j];
    }
    int count = 0;
    char res[SKEY_RESOURCE_MAX];
    for (int i = 0; i < routes_count(rt); i++) {
        const route *r = routes_at(rt, i);
        if (r->policy != pol)
            continue;
        if (skey_resource(r, wpath, res, sizeof(res)) == 0) {
            cb(arg, r, res);
            count++;
            continue;
        }
        char names[ROUTE_PARAMS_MAX][64];
        int nn = pattern_names(r->path, names);
        if (nn == 0)
            continue;
        strbuf sb = strbuf_on(res, sizeof(res));
        strbuf_str(&sb, r->name);
        int found = 0;
        for (int k = 0; k < nn; k++) {
            for (int j = 0; j < nm; j++) {
                if (strcmp(m[j].name, names[k]) == 0) {
                    strbuf_str(&sb, "\x1f");
                    put_segment(&sb, m[j].value, m[j].len);
                    found++;
                    break;
                }
            }
        }
        if (found == nn && strbuf_ok(&sb)) {
            cb(arg, r, res);
            count++;
        }
    }
    return count;
}

/* ---- entries ---- */

/* A stored entry keeps a digest of each Vary field's value, not the value:
 * a route that varies on Cookie or Authorization must not leave users'
 * credentials readable in Redis. */
#define VARY_HEX 64

bool skey_entry_holds(const struct evkeyvalq *h)
{
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        size_t n = strlen(kv->key);
        if (n == 0 || n > SKEY_FIELD_NAME_MAX || strpbrk(kv->key, ":\n") != NULL ||
            strchr(kv->value, '\n') != NULL)
            return false;
    }
    return true;
}

char *skey_entry_encode(const skey_entry *e, size_t *len)
{
    struct evbuffer *b = evbuffer_new();
    int nh = 0, nv = 0;
    for (const struct evkeyval *kv = e->headers->tqh_first; kv; kv = kv->next.tqe_next)
        nh++;
    for (int i = 0; i < e->nvary; i++)
        nv += evhttp_find_header(e->vary_values, e->vary[i]) != NULL;
    evbuffer_add_printf(b, "QS3 %d %" PRId64 " %" PRId64 " %" PRIu64 " %" PRIu64 " %d %d %d %zu\n",
                        e->status, e->stored_ms, e->fresh_until_ms, e->gen_global, e->gen_sum, nh,
                        e->nvary, nv, e->len);
    for (const struct evkeyval *kv = e->headers->tqh_first; kv; kv = kv->next.tqe_next)
        evbuffer_add_printf(b, "%s:%s\n", kv->key, kv->value);
    for (int i = 0; i < e->nvary; i++)
        evbuffer_add_printf(b, "%s\n", e->vary[i]);
    for (int i = 0; i < e->nvary; i++) {
        const char *v = evhttp_find_header(e->vary_values, e->vary[i]);
        char hex[VARY_HEX + 1];
        if (v != NULL) {
            sha256_hex(v, strlen(v), VARY_HEX / 2, hex);
            evbuffer_add_printf(b, "%s:%s\n", e->vary[i], hex);
        }
    }
    evbuffer_add(b, e->body, e->len);
    *len = evbuffer_get_length(b);
    char *out = xmalloc(*len + 1);
    evbuffer_remove(b, out, *len);
    out[*len] = '\0';
    evbuffer_free(b);
    return out;
}

/* The next line of [*p, end): its start and length (without the \n);
 * advances *p past it. Returns -1 when there is none. */
static int next_line(const char **p, const char *end, const char **line, size_t *n)
{
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    if (nl == NULL)
        return -1;
    *line = *p;
    *n = (size_t)(nl - *p);
    *p = nl + 1;
    return 0;
}

/* "name:value" (not NUL-terminated) into to. */
static int add_field(const char *s, size_t n, struct evkeyvalq *to)
{
    const char *colon = memchr(s, ':', n);
    char name[SKEY_FIELD_NAME_MAX + 1], small[2048];
    if (colon == NULL || colon == s || (size_t)(colon - s) >= sizeof(name))
        return -1;
    memcpy(name, s, (size_t)(colon - s));
    name[colon - s] = '\0';
    size_t vl = n - (size_t)(colon + 1 - s);
    char *v = vl < sizeof(small) ? small : xmalloc(vl + 1);
    memcpy(v, colon + 1, vl);
    v[vl] = '\0';
    int rc = hdrlist_add(to, name, v);
    if (v != small)
        free(v);
    return rc;
}

int skey_entry_decode(const char *buf, size_t len, skey_entry *e, struct evkeyvalq *headers,
                      struct evkeyvalq *vary_values)
{
    const char *p = buf, *end = buf + len, *line;
    char head[256];
    size_t n;
    int nh, nv;
    memset(e, 0, sizeof(*e));
    if (next_line(&p, end, &line, &n) < 0 || n >= sizeof(head))
        return -1;
    memcpy(head, line, n);
    head[n] = '\0';
    if (sscanf(head, "QS3 %d %" SCNd64 " %" SCNd64 " %" SCNu64 " %" SCNu64 " %d %d %d %zu",
               &e->status, &e->stored_ms, &e->fresh_until_ms, &e->gen_global, &e->gen_sum, &nh,
               &e->nvary, &nv, &e->len) != 9 ||
        nh < 0 || e->nvary < 0 || e->nvary > 8 || nv < 0 || nv > e->nvary)
        return -1;
    for (int i = 0; i < nh; i++) {
        if (next_line(&p, end, &line, &n) < 0 || add_field(line, n, headers) < 0)
            return -1;
    }
    for (int i = 0; i < e->nvary; i++) {
        if (next_line(&p, end, &line, &n) < 0 || n >= sizeof(e->vary[i]))
            return -1;
        memcpy(e->vary[i], line, n);
        e->vary[i][n] = '\0';
    }
    for (int i = 0; i < nv; i++) {
        if (next_line(&p, end, &line, &n) < 0 || add_field(line, n, vary_values) < 0)
            return -1;
    }
    if ((size_t)(end - p) != e->len)
        return -1;
    e->body = p;
    e->headers = headers;
    e->vary_values = vary_values;
    return 0;
}

bool skey_vary_same(int n, const char (*names)[64], const struct evkeyvalq *a,
                    const struct evkeyvalq *b)
{
    for (int i = 0; i < n; i++) {
        const char *x, *y;
        if (field_once(a, names[i], &x) < 0 || field_once(b, names[i], &y) < 0)
            return false;
        if ((x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0))
            return false;
    }
    return true;
}

bool skey_vary_matches(const skey_entry *e, const struct evkeyvalq *req)
{
    for (int i = 0; i < e->nvary; i++) {
        const char *stored, *v;
        char hex[VARY_HEX + 1];
        if (field_once(e->vary_values, e->vary[i], &stored) < 0 ||
            field_once(req, e->vary[i], &v) < 0 || (stored == NULL) != (v == NULL))
            return false;
        if (v == NULL)
            continue;
        sha256_hex(v, strlen(v), VARY_HEX / 2, hex);
        if (strcmp(hex, stored) != 0)
            return false;
    }
    return true;
}
