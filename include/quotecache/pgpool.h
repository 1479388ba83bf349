/* pgpool: a small pool of asynchronous PostgreSQL connections on the
 * worker's libevent loop. Nothing here blocks: connections are opened with
 * PQconnectStart/PQconnectPoll, queries go out with PQsendQueryPrepared and
 * results are read when libevent says the socket is readable. A query
 * pool's connections run in libpq pipeline mode: one connection carries up
 * to 32 statements at once, each followed by its own Sync so that a failed
 * statement fails only its own query; queries go to the connection with the
 * fewest in flight. A listening pool's connections stay plain.
 *
 * Ownership: each query is an op owned by the pool, with a deadline that
 * covers queueing and execution. A query that passes its deadline is answered
 * with an error at once, and its statement is cancelled on the server (a
 * cancel request sent from a short-lived helper thread, since libpq 15's
 * PQcancel blocks, repeated every 100 ms since the server ignores one that
 * arrives between two messages); the connection takes new work once the
 * statement has ended, and is replaced if it has not within another
 * deadline. A query whose statement ends "canceled" by a cancel meant for
 * another is queued again, so every statement must be safe to run twice
 * (sql.c's are reads and pg_notify). Callbacks fire exactly once, never
 * before the submit returns. */
#ifndef QUOTECACHE_PGPOOL_H
#define QUOTECACHE_PGPOOL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "quotecache/error.h"

struct event_base;

typedef struct pgpool pgpool;

/* A statement prepared on every connection, addressed by its index. */
typedef struct pgpool_stmt {
    const char *name;
    const char *sql;
    int nparams;
} pgpool_stmt;

/* res is the statement's result (PGRES_TUPLES_OK or PGRES_COMMAND_OK) or NULL
 * with err filled (503 unreachable, 504 deadline, 500 query error). The pool
 * clears res after the callback returns. */
typedef void pgpool_cb(void *arg, const PGresult *res, const qc_error *err);

/* stmts must outlive the pool. queue_max bounds queries waiting for a free
 * connection. */
pgpool *pgpool_new(struct event_base *base, const char *conninfo, int size, int timeout_ms,
                   int queue_max, const pgpool_stmt *stmts, size_t nstmts);
/* Closes every connection; pending callbacks fire with an error before it
 * returns. */
void pgpool_free(pgpool *p);

/* Queues statement stmt with text params (copied). Returns 0 (callback
 * later), or -1 with err filled when no connection is up or the queue is
 * full (the callback never fires). */
int pgpool_query(pgpool *p, int stmt, const char *const *params, pgpool_cb *cb, void *arg,
                 qc_error *err);

typedef void pgpool_notify_cb(void *arg, const char *payload);
typedef void pgpool_ready_cb(void *arg);

/* Makes every connection of the pool LISTEN on channel (lower-case letters
 * and '_') as the last step of its set-up. on_ready fires each time a
 * connection becomes ready (so also after every reconnect: notifications
 * sent while it was away are lost); on_notify for each notification on it.
 * A listening connection also proves it is alive: one second after each
 * answer it sends the LISTEN again (idempotent, one round trip) and is
 * dropped and reconnected (backoff up to 1 s) when the answer takes more
 * than 2 s, so a backend that went silent is replaced within about 3 s.
 * Call right after pgpool_new, before the loop runs. */
void pgpool_listen(pgpool *p, const char *channel, pgpool_notify_cb *on_notify,
                   pgpool_ready_cb *on_ready, void *arg);

/* True when at least one connection is ready (for a listening pool: its
 * heartbeat has not failed). Every connection uses TCP keepalives (idle 5 s,
 * then 3 probes 1 s apart) and a 10 s TCP user timeout unless the conninfo
 * sets them. */
bool pgpool_is_up(const pgpool *p);

/* Runs one SQL script on a fresh blocking connection and returns 0, or -1
 * with a message in err. For start-up tools only (never on the loop). */
int pgpool_exec_blocking(const char *conninfo, const char *sql, char *err, size_t errlen);

#endif
