/* routes: the route table of the pass-through, from its JSON file. */
#include "quotecache/routes.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "quotecache/hex.h"
#include "quotecache/mem.h"

#define ROUTES_FILE_MAX (1 << 20)
#define LOCAL_TTL_DEFAULT 60

struct routes {
    int n;
    route r[ROUTES_MAX];
};

static const struct {
    const char *name;
    unsigned bit;
} method_names[] = {
    {"GET", EVHTTP_REQ_GET},         {"HEAD", EVHTTP_REQ_HEAD},     {"POST", EVHTTP_REQ_POST},
    {"PUT", EVHTTP_REQ_PUT},         {"DELETE", EVHTTP_REQ_DELETE}, {"PATCH", EVHTTP_REQ_PATCH},
    {"OPTIONS", EVHTTP_REQ_OPTIONS},
};

bool routes_path_matches(const char *pat, const char *path)
{
    while (*pat) {
        if (pat[0] == '*' && pat[1] == '\0')
            return true;
        if (pat[0] == '{') {
            const char *close = strchr(pat, '}');
            size_t seg = strcspn(path, "/");
            if (close == NULL || seg == 0)
                return false;
            pat = close + 1;
            path += seg;
            continue;
        }
        if (*pat != *path)
            return false;
        pat++;
        path++;
    }
    return *path == '\0';
}

int routes_path_params(const char *pat, const char *path, route_param *out)
{
    int n = 0;
    while (*pat) {
        if (pat[0] == '*' && pat[1] == '\0')
            return n;
        if (pat[0] == '{') {
            const char *close = strchr(pat, '}');
            size_t seg = strcspn(path, "/");
            if (close == NULL || seg == 0 || n == ROUTE_PARAMS_MAX)
                return -1;
            size_t nl = (size_t)(close - pat - 1);
            if (nl >= sizeof(out[n].name))
                nl = sizeof(out[n].name) - 1;
            memcpy(out[n].name, pat + 1, nl);
            out[n].name[nl] = '\0';
            out[n].value = path;
            out[n].len = seg;
            n++;
            pat = close + 1;
            path += seg;
            continue;
        }
        if (*pat != *path)
            return -1;
        pat++;
        path++;
    }
    return *path == '\0' ? n : -1;
}

int routes_count(const routes *rt)
{
    return rt ? rt->n : 0;
}

const route *routes_at(const routes *rt, int i)
{
    return &rt->r[i];
}

/* A pattern is /-separated; {x} fills a whole segment; * only at the end.
 * A {param}'s name is 1 to 63 bytes without '/' or '{' (route_param holds
 * 63), and a pattern has at most ROUTE_PARAMS_MAX of them: "/{a/{b}" was
 * one param named "a/{b" (found by the routes fuzz target), and a ninth
 * matched paths that routes_path_params then refused, so the route never
 * cached and a write never reached it (found writing its oracle). */
static bool pattern_ok(const char *p)
{
    int params = 0;
    if (p[0] != '/')
        return false;
    for (const char *c = p; *c; c++) {
        if (*c == '*' && c[1] != '\0')
            return false;
        if (*c == '{') {
            size_t nl = strcspn(c + 1, "}/{");
            const char *close = c + 1 + nl;
            if (c[-1] != '/' || *close != '}' || nl == 0 ||
                nl >= sizeof(((route_param *)0)->name) || (close[1] != '\0' && close[1] != '/') ||
                ++params > ROUTE_PARAMS_MAX)
                return false;
            c = close;
        } else if (*c == '}' || *c == '?' || *c == '#') {
            return false;
        }
    }
    return true;
}

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n < ROUTE_NAME_MAX &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

static int parse_methods(const cJSON *m, unsigned *out, const char **why)
{
    *out = 0;
    if (m == NULL)
        return 0;
    if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) == 0) {
        *why = "\"methods\" must be a non-empty array of method names";
        return -1;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, m)
    {
        unsigned bit = 0;
        for (size_t i = 0; cJSON_IsString(e) && i < QC_ARRAY_LEN(method_names); i++) {
            if (strcmp(e->valuestring, method_names[i].name) == 0)
                bit = method_names[i].bit;
        }
        if (bit == 0) {
            *why = "unknown method in \"methods\"";
            return -1;
        }
        *out |= bit;
    }
    return 0;
}

static int parse_identity(const cJSON *id, route *r, const char **why)
{
    const char *s = cJSON_IsString(id) ? id->valuestring : NULL;
    const char *name = NULL;
    if (s && strncmp(s, "header:", 7) == 0) {
        r->ident_kind = IDENT_HEADER;
        name = s + 7;
    } else if (s && strncmp(s, "cookie:", 7) == 0) {
        r->ident_kind = IDENT_COOKIE;
        name = s + 7;
    }
    if (name == NULL || name[0] == '\0' || strlen(name) >= sizeof(r->ident) ||
        strpbrk(name, " \t;,=:") != NULL) {
        *why = "a local route needs \"identity\": \"header:NAME\" or \"cookie:NAME\"";
        return -1;
    }
    snprintf(r->ident, sizeof(r->ident), "%s", name);
    return 0;
}

static bool field_name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    return n > 0 && n < max && strpbrk(s, " \t\r\n&=?#:;,") == NULL;
}

/* "query": ["a", ...] or {"a": {"default": "USD", "case": "upper"}, ...} */
static int parse_query_entry(const char *name, const cJSON *spec, route *r, const char **why)
{
    if (r->nquery == ROUTE_QUERY_MAX || !field_name_ok(name, sizeof(r->query[0].name))) {
        *why = "\"query\": at most 8 parameter names of 1 to 63 characters";
        return -1;
    }
    route_query *q = &r->query[r->nquery++];
    snprintf(q->name, sizeof(q->name), "%s", name);
    if (spec == NULL)
        return 0;
    const cJSON *def = cJSON_GetObjectItemCaseSensitive(spec, "default");
    const cJSON *fold = cJSON_GetObjectItemCaseSensitive(spec, "case");
    if (!cJSON_IsObject(spec) ||
        (def && (!cJSON_IsString(def) || strlen(def->valuestring) >= sizeof(q->def))) ||
        (fold && (!cJSON_IsString(fold) || (strcmp(fold->valuestring, "lower") != 0 &&
                                            strcmp(fold->valuestring, "upper") != 0)))) {
        *why = "a \"query\" parameter is {\"default\": \"...\", \"case\": \"lower\"|\"upper\"}";
        return -1;
    }
    if (def)
        snprintf(q->def, sizeof(q->def), "%s", def->valuestring);
    if (fold)
        q->fold = strcmp(fold->valuestring, "lower") == 0 ? CASE_LOWER : CASE_UPPER;
    return 0;
}

static int parse_names(const cJSON *a, char (*out)[64], int max, int *n, const char *what,
                       const char **why)
{
    const cJSON *e;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) > max) {
        *why = what;
        return -1;
    }
    cJSON_ArrayForEach(e, a)
    {
        if (!cJSON_IsString(e) || !field_name_ok(e->valuestring, 64)) {
            *why = what;
            return -1;
        }
        snprintf(out[(*n)++], 64, "%s", e->valuestring);
    }
    return 0;
}

static int parse_shared(const cJSON *o, route *r, const char **why)
{
    const cJSON *stale = cJSON_GetObjectItemCaseSensitive(o, "stale");
    const cJSON *query = cJSON_GetObjectItemCaseSensitive(o, "query");
    const cJSON *ignore = cJSON_GetObjectItemCaseSensitive(o, "ignore");
    const cJSON *headers = cJSON_GetObjectItemCaseSensitive(o, "headers");
    if (stale != NULL &&
        (!cJSON_IsNumber(stale) || stale->valuedouble < 0 || stale->valuedouble > 86400 ||
         stale->valuedouble != (int)stale->valuedouble)) {
        *why = "\"stale\" must be an integer from 0 to 86400";
        return -1;
    }
    r->stale_s = stale ? (int)stale->valuedouble : 0;
    const cJSON *e;
    if (cJSON_IsArray(query)) {
        cJSON_ArrayForEach(e, query)
        {
            if (!cJSON_IsString(e) || parse_query_entry(e->valuestring, NULL, r, why) < 0) {
                *why = *why ? *why : "\"query\" names must be strings";
                return -1;
            }
        }
    } else if (cJSON_IsObject(query)) {
        cJSON_ArrayForEach(e, query)
        {
            if (parse_query_entry(e->string, e, r, why) < 0)
                return -1;
        }
    } else if (query != NULL) {
        *why = "\"query\" must be an array of names or an object";
        return -1;
    }
    if (ignore == NULL) {
        snprintf(r->ignore[0], sizeof(r->ignore[0]), "utm_*");
        r->nignore = 1;
    } else if (parse_names(ignore, r->ignore, ROUTE_IGNORE_MAX, &r->nignore,
                           "\"ignore\" must be at most 8 names (a final * for a prefix)",
                           why) < 0) {
        return -1;
    }
    if (headers != NULL && parse_names(headers, r->headers, ROUTE_HEADERS_MAX, &r->nheaders,
                                       "\"headers\" must be at most 4 field names", why) < 0)
        return -1;
    return 0;
}

static int parse_route(const cJSON *o, route *r, const char **why)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
    const cJSON *path = cJSON_GetObjectItemCaseSensitive(o, "path");
    const cJSON *policy = cJSON_GetObjectItemCaseSensitive(o, "policy");
    const cJSON *ttl = cJSON_GetObjectItemCaseSensitive(o, "ttl");
    memset(r, 0, sizeof(*r));
    if (!cJSON_IsObject(o))
        *why = "each route must be an object";
    else if (!cJSON_IsString(name) || !name_ok(name->valuestring))
        *why = "\"name\" must be 1 to 47 characters of [A-Za-z0-9_-]";
    else if (!cJSON_IsString(path) || strlen(path->valuestring) >= sizeof(r->path) ||
             !pattern_ok(path->valuestring))
        *why = "\"path\" must be /literal/{param}/... with an optional final *";
    else if (!cJSON_IsString(policy) || (strcmp(policy->valuestring, "bypass") != 0 &&
                                         strcmp(policy->valuestring, "local") != 0 &&
                                         strcmp(policy->valuestring, "shared") != 0))
        *why = "\"policy\" must be \"shared\", \"local\" or \"bypass\"";
    else if (ttl != NULL && (!cJSON_IsNumber(ttl) || ttl->valuedouble < 1 ||
                             ttl->valuedouble > 86400 || ttl->valuedouble != (int)ttl->valuedouble))
        *why = "\"ttl\" must be an integer from 1 to 86400";
    if (*why != NULL)
        return -1;
    snprintf(r->name, sizeof(r->name), "%s", name->valuestring);
    snprintf(r->path, sizeof(r->path), "%s", path->valuestring);
    r->policy = strcmp(policy->valuestring, "local") == 0    ? ROUTE_LOCAL
                : strcmp(policy->valuestring, "shared") == 0 ? ROUTE_SHARED
                                                             : ROUTE_BYPASS;
    r->ttl_s = ttl ? (int)ttl->valuedouble : LOCAL_TTL_DEFAULT;
    if (parse_methods(cJSON_GetObjectItemCaseSensitive(o, "methods"), &r->methods, why) < 0)
        return -1;
    if (r->policy == ROUTE_LOCAL)
        return parse_identity(cJSON_GetObjectItemCaseSensitive(o, "identity"), r, why);
    if (r->policy == ROUTE_SHARED)
        return parse_shared(o, r, why);
    return 0;
}

routes *routes_parse(const char *text, size_t len, char *err, size_t errlen)
{
    cJSON *doc = cJSON_ParseWithLength(text, len);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(doc, "routes");
    routes *rt = NULL;
    if (!cJSON_IsObject(doc) || !cJSON_IsArray(list)) {
        snprintf(err, errlen, "expected a JSON object {\"routes\": [...]}");
        goto done;
    }
    if (cJSON_GetArraySize(list) > ROUTES_MAX) {
        snprintf(err, errlen, "more than %d routes", ROUTES_MAX);
        goto done;
    }
    rt = xcalloc(1, sizeof(*rt));
    const cJSON *o;
    cJSON_ArrayForEach(o, list)
    {
        const char *why = NULL;
        if (parse_route(o, &rt->r[rt->n], &why) < 0) {
            snprintf(err, errlen, "route %d: %s", rt->n + 1, why);
            free(rt);
            rt = NULL;
            goto done;
        }
        rt->n++;
    }
done:
    cJSON_Delete(doc);
    return rt;
}

routes *routes_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "cannot read '%.200s': %s", path, strerror(errno));
        return NULL;
    }
    char *buf = xmalloc(ROUTES_FILE_MAX);
    size_t n = fread(buf, 1, ROUTES_FILE_MAX, f);
    fclose(f);
    routes *rt = NULL;
    if (n == ROUTES_FILE_MAX) {
        snprintf(err, errlen, "'%.200s': larger than %d bytes", path, ROUTES_FILE_MAX);
    } else {
        char why[256];
        rt = routes_parse(buf, n, why, sizeof(why));
        if (rt == NULL)
            snprintf(err, errlen, "'%.200s': %s", path, why);
    }
    free(buf);
    return rt;
}

void routes_free(routes *rt)
{
    free(rt);
}

const route *routes_match(const routes *rt, unsigned method, const char *path)
{
    for (int i = 0; rt != NULL && i < rt->n; i++) {
        const route *r = &rt->r[i];
        if ((r->methods == 0 || (r->methods & method)) && routes_path_matches(r->path, path))
            return r;
    }
    return NULL;
}

/* One round of %XX decoding, in place: 1 when it changed something, 0
 * when not, -1 when it decoded a NUL (%00), which would end the C string
 * here but not the path at the upstream. */
static int pct_decode_once(char *s)
{
    char *w = s;
    int changed = 0;
    for (const char *r = s; *r;) {
        int hi = r[0] == '%' ? hex_digit((unsigned char)r[1]) : -1,
            lo = hi >= 0 ? hex_digit((unsigned char)r[2]) : -1;
        if (lo >= 0) {
            if (hi == 0 && lo == 0)
                return -1;
            *w++ = (char)(hi * 16 + lo);
            r += 3;
            changed = 1;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
    return changed;
}

/* A root segment an upstream may take for "admin": the name itself, or
 * it followed by a dot or whitespace. Frameworks strip a format suffix
 * (Rails' /admin.json, Spring MVC's suffix matching before 5.3) and
 * Windows servers trailing dots and spaces (/admin., /admin%20): each
 * reached the upstream's /admin. Longer names (/administrator) are not. */
static bool is_admin_name(const char *seg)
{
    return strncasecmp(seg, "admin", 5) == 0 &&
           (seg[5] == '\0' || strchr(". \t\r\n\v\f", seg[5]) != NULL);
}

/* Whether one spelling of a path (cut up in place) reaches /admin or
 * climbs above the root. The first segment left once empty and "."
 * segments are dropped and ".." pops: only that one decides. A ".." above
 * the root would leave the upstream's path prefix ("/legacy/../internal").
 * A segment ends at ';' (path parameters) and at a '?' or '#' a decoding
 * made: an upstream that parses the decoded target again (mod_rewrite's
 * %3F confusion, nginx's proxy_pass of $uri) ends the path there, and
 * /admin%3Fx was passed on. Cutting only ever refuses more. */
static bool spelling_escapes(char *buf)
{
    char *save = NULL;
    int depth = 0;
    for (char *seg = strtok_r(buf, "/\\", &save); seg; seg = strtok_r(NULL, "/\\", &save)) {
        seg[strcspn(seg, ";?#")] = '\0';
        if (seg[0] == '\0' || strcmp(seg, ".") == 0)
            continue;
        if (strcmp(seg, "..") == 0) {
            if (depth == 0)
                return true;
            depth--;
            continue;
        }
        if (depth == 0 && is_admin_name(seg))
            return true;
        depth++;
    }
    return false;
}

/* Every spelling an upstream may act on is judged: as sent and after each
 * decoding (one resolves dots before decoding, another after). Only the
 * last used to be, and a %00 cut it short: /x%00/../admin was judged as
 * /x and passed on, and an upstream that resolves the dots, before or
 * after decoding, served /admin (found writing the routes fuzz target's
 * oracle). A path with %00 is never passed on. */
bool routes_not_forwarded(const char *path)
{
    char buf[4096 + 1], cut[sizeof(buf)];
    size_t n = strlen(path);
    if (n >= sizeof(buf))
        return true; /* too long to judge whole: a later ".." could reach /admin */
    memcpy(buf, path, n + 1);
    for (int i = 0;; i++) {
        memcpy(cut, buf, strlen(buf) + 1);
        if (spelling_escapes(cut))
            return true;
        int rc = pct_decode_once(buf);
        if (rc < 0)
            return true;
        if (rc == 0)
            return false;
        if (i == 3)
            return true; /* an escape left after three decodings: a spelling not judged */
    }
}

/* The value of cookie name in a Cookie field ("a=1; b=2") into buf: its
 * length, or -1 when the field has none that is usable (empty, or too
 * long for buf). Every time the field names it counts in *seen, usable or
 * not: two are nobody's. A browser sends both when another site of the
 * domain has tossed its own (a more specific path comes first), and the
 * application may read the other one than we key on, so one user's
 * answer would be stored under another's identity. */
static int cookie_value(const char *field, const char *name, char *buf, size_t len, int *seen)
{
    size_t n = strlen(name);
    int found = -1;
    for (const char *p = field; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ';')
            p++;
        const char *end = p + strcspn(p, ";");
        if ((size_t)(end - p) >= n && strncmp(p, name, n) == 0 && p[n] == '=') {
            size_t vlen = (size_t)(end - (p + n + 1));
            (*seen)++;
            if (vlen > 0 && vlen < len) {
                memcpy(buf, p + n + 1, vlen);
                buf[vlen] = '\0';
                found = (int)vlen;
            }
        }
        p = end;
    }
    return found;
}

/* The identity is the one field (or cookie) of that name, across every
 * field of the request: the application may read any of them, so a
 * second one, even empty or too long to use, makes the request nobody's.
 * Only a second usable one did, and an empty Authorization beside a
 * user's, or a cookie named in two Cookie fields (a proxy or HTTP/2 joins
 * them into one list), was keyed on the usable one while the application
 * could answer for the other (found writing the routes fuzz target's
 * identity oracle). */
int routes_identity(const route *r, const struct evkeyvalq *h, char *buf, size_t len)
{
    int found = -1, seen = 0;
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        if (r->ident_kind == IDENT_HEADER && strcasecmp(kv->key, r->ident) == 0) {
            size_t n = strlen(kv->value);
            seen++;
            if (n > 0 && n < len) {
                memcpy(buf, kv->value, n + 1);
                found = (int)n;
            }
        } else if (r->ident_kind == IDENT_COOKIE && strcasecmp(kv->key, "Cookie") == 0) {
            int n = cookie_value(kv->value, r->ident, buf, len, &seen);
            if (n >= 0)
                found = n;
        }
    }
    return seen == 1 ? found : -1;
}
