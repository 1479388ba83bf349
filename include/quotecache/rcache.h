/* rcache: everything quotecache asks of Redis, over hiredis' async API on the
 * worker's libevent loop: reads, fenced stores, the cross-instance load lock,
 * generation counters (and the guard that keeps them trustworthy across
 * Redis restarts), and one shared pub/sub subscriber connection. The two
 * connections' life (connect, ready check, hung detection, backoff) is
 * rconn.h's.
 *
 * Ownership: every command in flight is an op owned by this module. The op,
 * not the caller's context, is what hiredis holds. Each op has its own
 * deadline timer (hiredis 0.14 has no command timeouts): when it fires, the
 * caller's callback runs with RCACHE_ERR and the op is marked done; the late
 * reply (or the NULL reply hiredis gives every pending callback when the
 * context dies) then only frees the op.
 *
 * Callbacks: a submit function returns 0 and its callback then fires exactly
 * once, later (never before the submit returns); or it returns -1 (Redis is
 * down, too many commands are in flight, or an argument is unusable; nothing
 * was sent) and the callback never fires. */
#ifndef QUOTECACHE_RCACHE_H
#define QUOTECACHE_RCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quotecache/scope.h"

struct event_base;

typedef struct rcache rcache;

enum { RCACHE_OK = 0, RCACHE_ERR = -1 };

/* What one read returns; pointers are valid only during the callback. */
typedef struct rcache_value {
    const char *entry; /* NULL when the key is absent */
    size_t entry_len;
    uint64_t gen_global; /* 0 when the counter does not exist */
    /* The sum of the quote's scope counters (scope.h: product, product in
     * region, currency, tier, region promotions), each 0 when absent. */
    uint64_t gen_product;
} rcache_value;

/* The keys one read fetches: the global counter, the scope counters, the
 * entry. */
#define RCACHE_READ_KEYS (2 + SCOPE_KINDS)

typedef void rcache_read_cb(void *arg, int status, const rcache_value *v);
/* status RCACHE_OK: result is the command's integer answer (see each call). */
typedef void rcache_done_cb(void *arg, int status, long long result);
/* A message on a subscribed channel; msg NULL (len 0) each time the
 * subscription is (re)confirmed on a new subscriber connection: messages
 * published while it was down were lost. */
typedef void rcache_message_cb(void *arg, const char *msg, size_t len);
/* Connection state changes: up == true once a (re)connected command
 * connection has answered its ready check, false when it is lost or dropped
 * as hung. */
typedef void rcache_state_cb(void *arg, bool up);

/* Connects (asynchronously) to host:port and keeps reconnecting with backoff
 * (100 ms doubling to 2 s) whenever a connection is lost (rconn.h). A
 * connection counts as up only once Redis has answered on it; a hung one
 * (3 command timeouts in a row, or a second without any answer) is dropped
 * and reconnected, and reads as down meanwhile. cmd_timeout_ms is the
 * deadline of every command. */
rcache *rcache_new(struct event_base *base, const char *host, int port, int cmd_timeout_ms,
                   rcache_state_cb *state_cb, void *state_arg);
/* Redis Cluster mode (rcluster.h): the same calls, on a cluster found from
 * the seeds hosts[i]:ports[i]. Each command goes to the master of its first
 * key's slot; the keys of one command share a slot. The counters without a
 * hash tag (the global generation; currency, tier and region promotions:
 * "dimensions") are fields, under their names, of the hash dims_key, which
 * each worker mirrors in process (read every 250 ms, right after each
 * dimension bump it sends is answered, never accepting a lower value): a
 * read is then one MGET in the entry's slot (product and product-in-region
 * counters, entry), with the global generation and the dimensions' share of
 * gen_product taken from the mirror; a store fences the slot-local counters
 * in Redis and the mirror in process. A counter seen going backwards, or a
 * master replaced (failover), bumps the global generation above all seen.
 * Up (state_cb, rcache_is_up) means: every slot's master connected, the
 * mirror read within the last second. Needs rcache_guard_generations (its
 * global key; the marker is not used). */
rcache *rcache_new_cluster(struct event_base *base, const char *const *hosts, const int *ports,
                           int n, const char *dims_key, int cmd_timeout_ms,
                           rcache_state_cb *state_cb, void *state_arg);
/* Closes both connections; pending callbacks fire with RCACHE_ERR before it
 * returns (the one exception to "never before returning": shutdown). Not
 * from inside a reply, message or state callback of this rcache (it aborts
 * with a log line); from a deadline callback it is fine. */
void rcache_free(rcache *rc);
bool rcache_is_up(const rcache *rc);
/* True while the subscriber connection is up (its subscriptions confirmed
 * on it): what is published from now on reaches rcache_subscribe's
 * callbacks. It can be down while rcache_is_up. */
bool rcache_subscribed(const rcache *rc);
/* Made by rcache_new_cluster. There a PUBLISH is answered by the
 * channel's master before the cluster bus hands the message to the
 * subscribers of other nodes: its answer says nothing of their having it. */
bool rcache_is_cluster(const rcache *rc);

/* The generation guard; call right after rcache_new. Every command
 * connection then runs one check (a Lua script) before anything else is
 * sent on it, which bumps gen_global_key only when invalidations may have
 * been missed: this process owes a bump (rcache_bump could not be applied),
 * or Redis lost data (a new run_id since marker_key was set: restarted,
 * maybe from an older snapshot or empty; or the marker is gone). Then the
 * counter is also lifted above every global generation this process has
 * seen, so a load that recorded the old counters can never pass the fence.
 * A plain reconnect, or another instance starting, bumps nothing. */
void rcache_guard_generations(rcache *rc, const char *marker_key, const char *gen_global_key);
/* During state_cb(up): true when that connection's check moved the global
 * generation (what this process derived from the old counters is void). */
bool rcache_connect_bumped(const rcache *rc);

/* One round trip: MGET gen_global_key <scopes' counters> entry_key. */
int rcache_read(rcache *rc, const char *entry_key, const char *gen_global_key,
                const scope_keys *scopes, rcache_read_cb *cb, void *arg);

/* Fenced store (one Lua script): SET entry_key value PX ttl_ms and PUBLISH
 * entry_key on channel, only if the global counter still holds gen_global
 * and the scope counters still sum to gen_product (as rcache_value's).
 * result: 1 stored, 0 refused (a write happened
 * since the load began: the value may be stale and must not be served as
 * fresh). */
int rcache_store(rcache *rc, const char *entry_key, const char *gen_global_key,
                 const scope_keys *scopes, uint64_t gen_global, uint64_t gen_product,
                 const char *value, size_t len, int64_t ttl_ms, const char *channel,
                 rcache_done_cb *cb, void *arg);

/* SET lock_key token NX PX ttl_ms. result: 1 acquired, 0 held by another. */
int rcache_lock(rcache *rc, const char *lock_key, const char *token, int64_t ttl_ms,
                rcache_done_cb *cb, void *arg);
/* Compare-and-delete (Lua): deletes lock_key only if it still holds token.
 * result: 1 deleted, 0 not ours any more. cb may be NULL. */
int rcache_unlock(rcache *rc, const char *lock_key, const char *token, rcache_done_cb *cb,
                  void *arg);

/* INCR key. result: the new value. cb may be NULL. */
int rcache_incr(rcache *rc, const char *key, rcache_done_cb *cb, void *arg);
/* The same, but a counter it creates starts at Redis's clock (ms), not 1:
 * above any value a lost (evicted, failed over) counter had; and with
 * rcache_bump's debt rule (not applied for sure: owed). */
int rcache_incr_unique(rcache *rc, const char *key, rcache_done_cb *cb, void *arg);

/* INCR of a generation counter (an invalidation). Like rcache_incr, and
 * more: when Redis may not have applied it (refused here: then -1, Redis
 * down; or the connection lost before its answer), this process owes a
 * bump, and the next global bump pays it (at once while up, else in the
 * check of the next connection, before any read on it). Needs
 * rcache_guard_generations. */
int rcache_bump(rcache *rc, const char *key, rcache_done_cb *cb, void *arg);
/* Product generation bumps in one command (a Lua script): for each i, INCR
 * keys[i], unless once_keys[i] is not "" and another client set it already
 * (SET once_keys[i] NX PX once_ttl_ms): a change that every worker of
 * every instance is told of costs one bump for the fleet. n is
 * 1..RCACHE_BUMP_MANY_MAX. result: n. Same debt rule as rcache_bump. */
#define RCACHE_BUMP_MANY_MAX 1024
int rcache_bump_many(rcache *rc, const char *const *keys, const char *const *once_keys, size_t n,
                     int64_t once_ttl_ms, rcache_done_cb *cb, void *arg);

/* PUBLISH msg on channel. result: receivers. cb may be NULL. */
int rcache_publish(rcache *rc, const char *channel, const char *msg, rcache_done_cb *cb, void *arg);

/* Subscribes the shared subscriber connection to channel; cb runs for every
 * message, across reconnects (the module re-subscribes by itself). One
 * subscription per channel name; call once at start. */
void rcache_subscribe(rcache *rc, const char *channel, rcache_message_cb *cb, void *arg);

/* What a lock attempt or a lock check returns. */
typedef struct rcache_lock_value {
    rcache_value v;    /* as rcache_read; pointers valid only during the callback */
    bool acquired;     /* the lock is ours now */
    int64_t lock_pttl; /* rcache_check: ms the lock still lives; -2 none, -1 no expiry */
} rcache_lock_value;
typedef void rcache_lock_cb(void *arg, int status, const rcache_lock_value *lv);

/* SET lock_key token NX PX ttl_ms and, in the same round trip and right
 * after it, the read of rcache_read: when the lock is won, v shows
 * everything stored before (check after the lock). lock_pttl is -2. With
 * RCACHE_ERR, lv is NULL unless the lock was won but the read failed: then
 * only lv->acquired (true) is meaningful, and the lock is the caller's to
 * release. */
int rcache_lock_read(rcache *rc, const char *lock_key, const char *token, int64_t ttl_ms,
                     const char *entry_key, const char *gen_global_key, const scope_keys *scopes,
                     rcache_lock_cb *cb, void *arg);
/* One script: the read of rcache_read and PTTL lock_key; with a token, a
 * free lock is also taken (SET NX PX ttl_ms) in the same step: no value
 * and no lock means take over at once. */
int rcache_check(rcache *rc, const char *lock_key, const char *token, int64_t ttl_ms,
                 const char *entry_key, const char *gen_global_key, const scope_keys *scopes,
                 rcache_lock_cb *cb, void *arg);
/* Token-guarded PEXPIRE (Lua): extends lock_key to ttl_ms only if it still
 * holds token. result: 1 extended, 0 not ours any more. cb may be NULL. */
int rcache_extend(rcache *rc, const char *lock_key, const char *token, int64_t ttl_ms,
                  rcache_done_cb *cb, void *arg);

#endif
