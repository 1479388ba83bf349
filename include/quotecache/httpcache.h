/* httpcache: the RFC 9111 decisions about an upstream answer, as pure
 * functions: may it be stored, for how long, under which Vary fields, and
 * does a stored copy answer a conditional request with 304. No I/O, no
 * clock: the caller passes the time. */
#ifndef QUOTECACHE_HTTPCACHE_H
#define QUOTECACHE_HTTPCACHE_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

struct evkeyvalq;

/* The Cache-Control directives we act on (RFC 9111 5.2); -1: absent. */
typedef struct httpcache_cc {
    bool no_store, no_cache, private_, public_, must_revalidate;
    int64_t max_age, s_maxage;
} httpcache_cc;

/* Parses every Cache-Control field of h (a list; unknown directives and
 * malformed numbers ignored, a malformed max-age counts as 0, a max-age or
 * s-maxage given twice as the least of its values). */
void httpcache_parse_cc(const struct evkeyvalq *h, httpcache_cc *out);

/* True for the statuses RFC 9110 15.1 calls heuristically cacheable,
 * the only ones we store: 200 203 204 300 301 308 404 405 410 414 501. */
bool httpcache_status_cacheable(int status);

#define HTTPCACHE_VARY_MAX 8

/* What a store decision says. */
typedef struct httpcache_verdict {
    bool store;
    const char *why; /* why not (a static string), for logs and tests */
    int64_t ttl_s;   /* how long the copy is fresh */
    int nvary;       /* the request fields the copy depends on (Vary), each once */
    char vary[HTTPCACHE_VARY_MAX][64];
} httpcache_verdict;

/* Whether an answer to a GET may be stored, by a shared cache (Redis,
 * across users) or a private one (per identity). route_ttl_s caps the
 * lifetime, max-age (s-maxage when shared; else Expires - Date, an
 * invalid Expires counting as expired) lowers it, Age is taken off.
 * Never stored: other statuses, no-store (request or answer), no-cache
 * (we do not revalidate), Set-Cookie (in any cache: a cookie is a state
 * change meant for one response), private in a shared cache, Vary: *,
 * Vary on more than HTTPCACHE_VARY_MAX fields, a lifetime under 1 s, and
 * in a shared cache a request with Authorization unless the answer says
 * public, s-maxage or must-revalidate (RFC 9111 3.5). */
void httpcache_decide(int status, const struct evkeyvalq *req, const struct evkeyvalq *resp,
                      bool shared, int64_t route_ttl_s, httpcache_verdict *out);

/* Parses an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"). Returns 0 or -1. */
int httpcache_parse_date(const char *s, time_t *out);

/* RFC 9110 13.2.2: If-None-Match (weak comparison) decides when present;
 * else If-Modified-Since against last_modified. etag as sent ("..." or
 * W/"..."), either may be NULL. True: answer 304. */
bool httpcache_not_modified(const struct evkeyvalq *req, const char *etag,
                            const char *last_modified);

#endif
