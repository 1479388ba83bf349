/* sharedkey: the pure half of `shared` routes (shared.h): their cache
 * keys, the resource a key belongs to, which resources a write touches,
 * and the stored entry's encoding. No I/O, no clock.
 *
 * Layout in Redis, one hash slot per resource (a route and the values of
 * its {params}), so that every command of a load (the counter, the entry,
 * its lock) touches one slot, as Redis Cluster requires:
 *   counter  qc:<version>:{r:<route>:<16 hex>}:gen
 *   entry    qc:<version>:{r:<route>:<16 hex>}:<32 hex>
 *   lock     <entry>:lock
 * the 16 hex an FNV-1a of the resource, the 32 a SHA-256 of the canonical
 * request (route, path, named query parameters normalized, named fields). */
#ifndef QUOTECACHE_SHAREDKEY_H
#define QUOTECACHE_SHAREDKEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quotecache/key.h"
#include "quotecache/routes.h"

struct evkeyvalq;

#define SKEY_CANON_MAX 8192
#define SKEY_RESOURCE_MAX 1024

/* The canonical request of path?query (query may be NULL) on shared route
 * r, into canon, and the query to send upstream (the named parameters
 * present, normalized, in the route's order; ignored ones dropped) into
 * fwd. Returns 0, or -1 when the request is not cacheable: a parameter
 * neither named nor ignored (it may change the answer and is not in the
 * key), one named twice, a named field sent twice, or too long. */
int skey_canonical(const route *r, const char *path, const char *query,
                   const struct evkeyvalq *headers, char *canon, size_t canon_len, char *fwd,
                   size_t fwd_len);

/* The resource of r for path (r must match it): "<route>" and each
 * {param}'s value (its escapes normalized, RFC 3986 6.2.2: q%31 is q1),
 * into out. Returns 0 or -1 (no match, too long). */
int skey_resource(const route *r, const char *path, char *out, size_t len);

/* The Redis keys of a canonical request under resource. */
typedef struct skey_keys {
    char gen[KEY_MAX];
    char entry[KEY_MAX];
    char lock[KEY_MAX];
} skey_keys;
/* Returns 0, or -1 when version or the route's name make a key too long. */
int skey_keys_of(skey_keys *out, const char *version, const char *route_name, const char *resource,
                 const char *canon);
/* The counter of one resource. */
int skey_gen_key(char out[KEY_MAX], const char *version, const char *route_name,
                 const char *resource);

/* RFC 9111 4.4, by resource: a 2xx write to wpath invalidates, on each
 * route of policy pol, the resource of wpath itself (the routes whose
 * pattern matches it) and the resource named by the same {param} values
 * (a route whose {params} all appear, by name, in a route matching wpath:
 * a PUT /catalog/7 reaches /catalog/{id}/reviews of id 7). cb runs once
 * per (route, resource); returns how many. */
typedef void skey_resource_cb(void *arg, const route *r, const char *resource);
int skey_write_resources(const routes *rt, const char *wpath, enum route_policy pol,
                         skey_resource_cb *cb, void *arg);

/* A stored answer. Encoded: a text head, the fields, the Vary fields with
 * the values the stored request had, then the body. */
typedef struct skey_entry {
    int status;
    int64_t stored_ms, fresh_until_ms;
    /* What its load read: the global generation and the resource's counter
     * as rcache sums it (rcache_value); a hit needs both unchanged. */
    uint64_t gen_global, gen_sum;
    const struct evkeyvalq *headers;
    int nvary;
    char vary[8][64];
    /* name: value of the stored request; absent: absent. Encoded as a
     * SHA-256 of each value, so a decoded entry holds digests. */
    const struct evkeyvalq *vary_values;
    const char *body;
    size_t len;
} skey_entry;

/* The longest field name an entry holds (the decoder's buffer). */
#define SKEY_FIELD_NAME_MAX 255
/* True when an entry can hold the fields of h as they are: every name 1
 * to SKEY_FIELD_NAME_MAX bytes without ':' or a newline, no value with a
 * newline. An answer with another is not stored: it was, and never
 * decoded, so every request fetched and stored it again while
 * Cache-Status said stored; dropping the field would change the answer. */
bool skey_entry_holds(const struct evkeyvalq *h);
/* Encodes e (headers, vary_values read) into a malloc'ed buffer; its
 * headers are ones skey_entry_holds takes. */
char *skey_entry_encode(const skey_entry *e, size_t *len);
/* Decodes buf into e, filling headers and vary (two lists the caller
 * initialised and clears); e->body points into buf. Returns 0 or -1. */
int skey_entry_decode(const char *buf, size_t len, skey_entry *e, struct evkeyvalq *headers,
                      struct evkeyvalq *vary_values);
/* True when req has the stored request's values of e's Vary fields
 * (e decoded: its values are digests). */
bool skey_vary_matches(const skey_entry *e, const struct evkeyvalq *req);
/* True when a and b have the same values of the n fields names (absent:
 * absent), and neither sends one of them twice: a field sent twice has no
 * one value a variant is made for (a variant stored under the first line
 * may have been answered for the last). skey_vary_same(n, names, r, r):
 * r may have a variant at all. */
bool skey_vary_same(int n, const char (*names)[64], const struct evkeyvalq *a,
                    const struct evkeyvalq *b);

#endif
