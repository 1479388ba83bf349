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

enum route_policy { ROUTE_BYPASS, ROUTE_LOCAL };
enum route_identity { IDENT_HEADER, IDENT_COOKIE };

#define ROUTES_MAX 64
#define ROUTE_NAME_MAX 48

typedef struct route {
    char name[ROUTE_NAME_MAX]; /* [A-Za-z0-9_-]: also a metrics label */
    unsigned methods;          /* evhttp_cmd_type bits; every method when absent */
    char path[256];
    enum route_policy policy;
    int ttl_s;                      /* local: 60 by default */
    enum route_identity ident_kind; /* local: whose copy it is */
    char ident[64];                 /* the header or cookie name */
} route;

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

/* True when path (raw, no query) must not be passed on: it could reach
 * /admin or /admin/... at an upstream that decodes %XX (even twice), folds
 * case, treats \ as /, merges slashes, resolves . and .. and drops
 * ;parameters (admin routes are never passed on, however they are
 * spelled); or a ".." climbs above the root, out of the upstream's path
 * prefix; or it is longer than 4096 bytes. */
bool routes_not_forwarded(const char *path);

/* Copies the request's identity for r (the header's value, or the
 * cookie's) into buf. Returns its length, or -1 when the request has
 * none (or it does not fit). */
int routes_identity(const route *r, const struct evkeyvalq *h, char *buf, size_t len);

#endif
