/* server: the HTTP front of one worker — the public listener (quote,
 * health, metrics) and the admin listener — with request limits, routing,
 * validation against the catalog, and exactly one reply per request (HEAD
 * included: the GET's headers, no body). Quote requests that arrive before
 * the first catalog load wait for it (at most --pg-timeout); /healthz
 * says 503 "starting" until then. */
#ifndef QUOTECACHE_SERVER_H
#define QUOTECACHE_SERVER_H

#include <stddef.h>

#include "quotecache/accesslog.h"
#include "quotecache/catalog.h"
#include "quotecache/config.h"
#include "quotecache/invalidate.h"
#include "quotecache/lookup.h"
#include "quotecache/pgpool.h"
#include "quotecache/rcache.h"
#include "quotecache/tax.h"
#include "quotecache/proxy.h"

struct event_base;

typedef struct server server;

/* Connections the admin listener takes at once (besides --max-conns). */
#define SERVER_ADMIN_MAX_CONNS 16

/* What the routes need; all outlive the server. rc may be NULL. */
typedef struct server_deps {
    const qc_config *cfg;
    lookup *lk;
    catalog *cat;
    pgpool *pool;
    tax_client *tax;
    rcache *rc;
    invalidator *inv; /* admin purges */
    proxy *px;        /* --upstream: routes not ours go there; NULL: 404 */
    access_log *alog; /* NULL: --access-log off */
} server_deps;

/* Opens the listeners (SO_REUSEPORT, so workers share the port), or uses
 * cfg->listen_fd / cfg->admin_fd when the master passed them. Returns
 * NULL with one line in err when a listener cannot be opened. */
server *server_new(struct event_base *base, const server_deps *deps, char *err, size_t errlen);
/* Stops accepting new connections (graceful shutdown, step one); from then
 * on every answer carries "Connection: close". */
void server_stop_accepting(server *s);
/* Requests received and not yet answered, or answered but not all sent
 * (a drain that stopped at the answer would cut it). */
size_t server_inflight(const server *s);
/* Client connections open (idle keep-alive ones included). */
size_t server_connections(const server *s);
void server_free(server *s);

#endif
