/* routes: the cache policy of each route of the upstream application,
 * read from a JSON file (--routes). Pure: parsing and matching.
 *
 *   {"routes": [
 *     {"name": "cart", "methods": ["GET", "HEAD"], "path": "/cart/{id}",
 *      "policy": "local", "ttl": 60, "identity": "cookie:session"},
 *     {"name": "orders", "path": "/orders/<*>", "policy": "bypass"}]}
 *
 * A path is literal segments, {name} for exactly one non-empty segment,
 * and an optional final * for any rest (a prefix; written <*> above, as
 * a C comment cannot hold slash-star). The first route that
 * matches method and path wins; none: bypass. */
#ifndef QUOTECACHE_ROUTES_H
#define QUOTECACHE_ROUTES_H

#include <stdbool.h>
#include <stddef.h>

struct evkeyvalq;

enum route_policy { ROUTE_BYPASS, ROUTE_LOCAL, ROUTE_SHARED };
enum route_identity { IDENT_HEADER, IDENT_COOKIE };

#define ROUTES_MAX 64
#define ROUTE_NAME_MAX 48
#define ROUTE_QUERY_MAX 8   /* shared: named query parameters in the key */
#define ROUTE_IGNORE_MAX 8  /* shared: query parameters left out of it */
#define ROUTE_HEADERS_MAX 4 /* shared: request fields in it */
#define ROUTE_PARAMS_MAX 8  /* {params} of one pattern */

enum route_case { CASE_KEEP, CASE_LOWER, CASE_UPPER };

/* A named query parameter of a shared route's key. */
typedef struct route_query {
    char name[64];
    char def[64]; /* the value when absent ("" : absent stays absent) */
    enum route_case fold;
} route_query;

typedef struct route {
    char name[ROUTE_NAME_MAX]; /* [A-Za-z0-9_-]: also a metrics label */
    unsigned methods;          /* evhttp_cmd_type bits; every method when absent */
    char path[256];
    enum route_policy policy;
    int ttl_s;                      /* local: 60 by default */
    enum route_identity ident_kind; /* local: whose copy it is */
    char ident[64];                 /* the header or cookie name */
    /* shared: */
    int stale_s; /* past the ttl, served STALE while the upstream fails */
    int nquery, nignore, nheaders;
    route_query query[ROUTE_QUERY_MAX];
    char ignore[ROUTE_IGNORE_MAX][64]; /* a name, or a prefix ending in * ("utm_*") */
    char headers[ROUTE_HEADERS_MAX][64];
} route;

/* One {param} of a matched path. */
typedef struct route_param {
    char name[64];
    const char *value; /* into the path */
    size_t len;
} route_param;

typedef struct routes routes;

/* Parses the JSON text. Returns the table, or NULL with one line in err. */
routes *routes_parse(const char *text, size_t len, char *err, size_t errlen);
/* Reads and parses a file. */
routes *routes_load(const char *path, char *err, size_t errlen);
void routes_free(routes *rt);

/* The first route for method (an evhttp_cmd_type) and path (no query),
 * or NULL: unlisted, bypass. */
const route *routes_match(const routes *rt, unsigned method, const char *path);
/* True when path matches the pattern (as above). */
bool routes_path_matches(const char *pattern, const char *path);
/* When path matches pattern, fills out with its {params} in pattern order
 * and returns their number (0..ROUTE_PARAMS_MAX); else -1. */
int routes_path_params(const char *pattern, const char *path, route_param *out);

/* The routes of the table, for whoever walks them (write invalidation). */
int routes_count(const routes *rt);
const route *routes_at(const routes *rt, int i);

/* True when path (raw, no query) must not be passed on: it could reach
 * /admin or /admin/... at an upstream that decodes %XX (even twice), folds
 * case, treats \ as /, merges slashes, resolves . and .. and drops
 * ;parameters (admin routes are never passed on, however they are
 * spelled); or a ".." climbs above the root, out of the upstream's path
 * prefix, in any of those spellings; or it holds %00 (at any decoding); or
 * it is longer than 4096 bytes. */
bool routes_not_forwarded(const char *path);

/* Copies the request's identity for r (the header's value, or the
 * cookie's, across every Cookie field) into buf. Returns its length, or
 * -1 when the request has none, names it more than once (even empty),
 * or it is empty or does not fit. */
int routes_identity(const route *r, const struct evkeyvalq *h, char *buf, size_t len);

#endif
