/* rcache: everything quotecache asks of Redis, over hiredis' async API on the
 * worker's libevent loop: reads, fenced stores, the cross-instance load lock,
 * generation counters, and one shared pub/sub subscriber connection.
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

struct event_base;

typedef struct rcache rcache;

enum { RCACHE_OK = 0, RCACHE_ERR = -1 };

/* What one read returns; pointers are valid only during the callback. */
typedef struct rcache_value {
    const char *entry; /* NULL when the key is absent */
    size_t entry_len;
    uint64_t gen_global; /* 0 when the counter does not exist */
    uint64_t gen_product;
} rcache_value;

typedef void rcache_read_cb(void *arg, int status, const rcache_value *v);
/* status RCACHE_OK: result is the command's integer answer (see each call). */
typedef void rcache_done_cb(void *arg, int status, long long result);
/* A message on a subscribed channel; msg NULL (len 0) each time the
 * subscription is (re)confirmed on a new subscriber connection: messages
 * published while it was down were lost. */
typedef void rcache_message_cb(void *arg, const char *msg, size_t len);
/* Connection state changes: up == true after every (re)connect of the
 * command connection, false when it is lost. */
typedef void rcache_state_cb(void *arg, bool up);

/* Connects (asynchronously) to host:port and keeps reconnecting with backoff
 * (100 ms doubling to 2 s) whenever a connection is lost. cmd_timeout_ms is
 * the deadline of every command. */
rcache *rcache_new(struct event_base *base, const char *host, int port, int cmd_timeout_ms,
                   rcache_state_cb *state_cb, void *state_arg);
/* Closes both connections; pending callbacks fire with RCACHE_ERR before it
 * returns (the one exception to "never before returning": shutdown). Not
 * from inside a reply, message or state callback of this rcache (it aborts
 * with a log line); from a deadline callback it is fine. */
void rcache_free(rcache *rc);
bool rcache_is_up(const rcache *rc);

/* One round trip: MGET gen_global_key gen_product_key entry_key. */
int rcache_read(rcache *rc, const char *entry_key, const char *gen_global_key,
                const char *gen_product_key, rcache_read_cb *cb, void *arg);

/* Fenced store (one Lua script): SET entry_key value PX ttl_ms and PUBLISH
 * entry_key on channel, only if both generation counters still hold
 * gen_global and gen_product. result: 1 stored, 0 refused (a write happened
 * since the load began: the value may be stale and must not be served as
 * fresh). */
int rcache_store(rcache *rc, const char *entry_key, const char *gen_global_key,
                 const char *gen_product_key, uint64_t gen_global, uint64_t gen_product,
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
 * everything stored before (check after the lock). lock_pttl is -2. */
int rcache_lock_read(rcache *rc, const char *lock_key, const char *token, int64_t ttl_ms,
                     const char *entry_key, const char *gen_global_key, const char *gen_product_key,
                     rcache_lock_cb *cb, void *arg);
/* One script: the read of rcache_read and PTTL lock_key; with a token, a
 * free lock is also taken (SET NX PX ttl_ms) in the same step: no value
 * and no lock means take over at once. */
int rcache_check(rcache *rc, const char *lock_key, const char *token, int64_t ttl_ms,
                 const char *entry_key, const char *gen_global_key, const char *gen_product_key,
                 rcache_lock_cb *cb, void *arg);
/* Token-guarded PEXPIRE (Lua): extends lock_key to ttl_ms only if it still
 * holds token. result: 1 extended, 0 not ours any more. cb may be NULL. */
int rcache_extend(rcache *rc, const char *lock_key, const char *token, int64_t ttl_ms,
                  rcache_done_cb *cb, void *arg);

#endif
