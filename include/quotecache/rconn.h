/* rconn: one hiredis async connection to Redis that keeps itself usable:
 * connect, ready check, hung detection, disconnect at a safe point and
 * reconnect with backoff. It knows nothing of the commands its owner (rcache)
 * sends; the owner tells it what it sent and what came back.
 *
 * States, changed only by the transition function in rconn.c, each with one
 * timer armed on entry:
 *   WAITING     backoff before the next attempt
 *   CONNECTING  TCP connect in progress           (deadline: connect timeout)
 *   HANDSHAKE   connected, ready check in flight  (deadline: command timeout)
 *   UP          commands flow                     (tick: heartbeat, hung check)
 *   CLOSED      rconn_free ran
 * A TCP connect to a stopped (SIGSTOP) Redis succeeds, since the kernel
 * accepts: the connection counts as UP only once the owner's ready check has
 * answered (rconn_ready).
 *
 * Hung: in UP, the connection is dropped (redisAsyncFree, from a timer, never
 * inside a hiredis callback) when the heartbeat PING sent after 1 s of
 * silence is not answered within the command timeout, or when the owner
 * reports 3 command timeouts in a row, or a timeout with nothing received
 * for a second. Then WAITING: the owner sees on_down and refuses commands
 * until the next UP. */
#ifndef QUOTECACHE_RCONN_H
#define QUOTECACHE_RCONN_H

#include <stdbool.h>

struct event_base;
struct redisAsyncContext;

typedef struct rconn rconn;

typedef struct rconn_hooks {
    /* Connected (HANDSHAKE): send the ready check now, on rconn_context(c),
     * and call rconn_ready when it has answered, rconn_fail if it failed.
     * Runs inside a hiredis callback. */
    void (*on_connected)(void *arg, rconn *c);
    /* UP after rconn_ready. */
    void (*on_up)(void *arg, rconn *c);
    /* The connection is gone, after on_connected (every pending reply has
     * had its NULL answer). was_up: on_up had run for it. */
    void (*on_down)(void *arg, rconn *c, bool was_up);
} rconn_hooks;

/* Starts connecting at once (asynchronously: no hook runs before this
 * returns). name ("command", "subscriber") is for logs and must outlive c.
 * probe: the argv of the heartbeat command, answered in any state by one
 * reply (PING; on a subscriber connection, where hiredis 0.14 drops PING's
 * answer, a SUBSCRIBE to a channel nobody publishes on); must outlive c. */
rconn *rconn_new(struct event_base *base, const char *name, const char *host, int port,
                 int timeout_ms, const char *const *probe, int probe_argc, const rconn_hooks *hooks,
                 void *arg);
/* Not from inside a hiredis callback of c: the pending replies get their
 * NULL answer before it returns, and no hook runs. */
void rconn_free(rconn *c);

/* The context to send on: non-NULL from on_connected until on_down. */
struct redisAsyncContext *rconn_context(const rconn *c);
bool rconn_is_up(const rconn *c);

/* The owner's ready check has answered: UP. */
void rconn_ready(rconn *c);
/* Something is wrong with this connection (a ready check that failed, a
 * reply that makes no sense): drop it at the next safe point and reconnect
 * after the backoff. Safe anywhere, also inside hiredis callbacks. */
void rconn_fail(rconn *c, const char *why);

/* Bookkeeping of the owner's commands, for hung detection: a reply (late
 * or not) arrived; a command's deadline passed before its reply. */
void rconn_replied(rconn *c, bool on_time);
void rconn_timed_out(rconn *c);

/* Sends the probe now; rconn_ready follows its answer if c is in HANDSHAKE.
 * For owners whose ready check is just "Redis answers". */
void rconn_probe(rconn *c);

#endif
