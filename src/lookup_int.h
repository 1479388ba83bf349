/* lookup_int: what the two halves of the lookup module share; private to
 * it (lookup.c, the request side: reads, answers, waiting, the in-process
 * tier; load.c, the load side: the per-key load state machine). Nothing
 * else includes this file. */
#ifndef QUOTECACHE_LOOKUP_INT_H
#define QUOTECACHE_LOOKUP_INT_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/time.h>
#include <time.h>

#include "quotecache/flight.h"
#include "quotecache/fresh.h"
#include "quotecache/hot.h"
#include "quotecache/key.h"
#include "quotecache/lookup.h"
#include "quotecache/scope.h"

#define LOCAL_GENS 4096   /* local invalidation counters, by product id hash */
#define LOCAL_SCOPES 1024 /* and by the other scopes' hash (scope_bucket) */
/* With Redis, how long a copy in process is served without asking Redis.
 * Changes reach the in-process tier through the local generations (LISTEN
 * carries both database changes and admin purges) and the announcements of
 * stores; this bounds the rest, e.g. a purge made while PostgreSQL was
 * away, seen only in Redis. */
#define HOT_REDIS_MS 500

typedef struct load load; /* load.c's; opaque to the request side */

/* ---- the request side's state (lookup.c owns it) ---- */

enum req_phase {
    REQ_READING,  /* the Redis read is in flight (it holds the request) */
    REQ_DEFERRED, /* no Redis: joins a flight from a zero-delay event */
    REQ_WAITING,  /* in a flight, with its deadline */
};

struct lookup_req {
    lookup *lk;
    enum req_phase phase;
    flight_waiter w;
    quote_req r;
    size_t npromos;
    uint64_t promo_hash; /* promoset's hash of promos, for the in-process tier */
    char key[KEY_MAX];
    uint64_t stamp;  /* local generation when the request arrived */
    fresh_gens gens; /* the Redis counters its read returned */
    bool has_gens;
    bool no_cache;
    bool too_many_promos; /* more active promotions than a key can name */
    int64_t arrived_us;   /* no-cache: must be answered from a load sent later */
    int64_t arrived_ms;   /* the same on the wall clock, for other instances' loads */
    bool leader;          /* started the flight: answered MISS rather than COALESCED */
    int64_t joined_us;    /* when it joined its flight, for the coalesced-wait histogram */
    lookup_cb *cb;        /* NULL once detached (lookup_cancel while reading) */
    void *arg;
    struct event *ev; /* REQ_DEFERRED: the deferred join; REQ_WAITING: the deadline */
    /* Its active promotions, npromos of them: allocated to size, so a
     * request costs a small block to zero, not KEY_MAX_PROMOS slots (2 KB
     * of a calloc per request when they were a fixed array). */
    int64_t promos[];
};

typedef struct lookup_req lk_req;

#define ABANDONED_MAX 64

struct lookup {
    struct event_base *base;
    const qc_config *cfg;
    fresh_policy policy;
    pgpool *pool;
    tax_client *tax;
    catalog *cat;
    rcache *rc;
    flight_table *flights;
    hot *hot;
    load *loads;
    char gen_global_key[KEY_MAX];
    char channel[KEY_MAX];
    uint64_t local_gen_all;
    uint64_t local_gen[LOCAL_GENS];
    uint64_t local_scope[LOCAL_SCOPES];
    size_t pending;
    bool closing;
    bool warned_waiters;
    /* The loads' lock tokens (load.c): a random seed drawn by this process's
     * first load, and a counter. */
    bool token_seeded;
    uint64_t token_seed;
    uint64_t token_next;
    /* Locks held by loads that finished while Redis was unusable (load.c):
     * released, and announced, once it is back, so that instances waiting
     * on them do not wait for their expiry (--lock-ttl). The oldest is
     * forgotten past ABANDONED_MAX: it expires. */
    struct abandoned_lock {
        char lock_key[KEY_MAX];
        char key[KEY_MAX];
        char token[33];
    } abandoned[ABANDONED_MAX];
    size_t nabandoned, abandoned_next;
};

static inline int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* The local stamp of r's quotes: the sum of its local counters, which only
 * grow, so it moves when any of them does (as scope.h's sum in Redis). */
static inline uint64_t local_gen_of(const lookup *lk, const quote_req *r)
{
    scope s[SCOPE_KINDS];
    scope_of_quote(r, s);
    uint64_t g = lk->local_gen_all + lk->local_gen[(uint64_t)r->product_id % LOCAL_GENS];
    for (int i = SCOPE_PRODUCT + 1; i < SCOPE_KINDS; i++)
        g += lk->local_scope[scope_bucket(&s[i], LOCAL_SCOPES)];
    return g;
}

static inline bool redis_usable(const lookup *lk)
{
    return lk->rc != NULL && rcache_is_up(lk->rc);
}

static inline fresh_gens gens_of(const rcache_value *v)
{
    fresh_gens g = {v->gen_global, v->gen_product};
    return g;
}

/* The in-process tier's key of q. */
static inline hot_req hot_req_of(const lk_req *q)
{
    hot_req k = {&q->r, q->promos, q->npromos, q->promo_hash};
    return k;
}

static inline struct timeval ms_tv(int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

/* How a load ended, for the request side to answer each waiter: the
 * stale copy it may serve (judged per waiter, now), and what no-cache
 * waiters need to tell whether it is recent enough for them. */
typedef struct load_outcome {
    const char *stale; /* envelope bytes, NULL when the load has none to offer */
    size_t stale_len;
    uint64_t stale_local; /* local generation when that copy was read */
    fresh_gens gens;      /* the Redis counters the load last read */
    bool local;           /* Redis was not part of the load */
    int64_t product_id;
    int64_t origin_us;       /* when its origin query was sent (0: none) */
    int64_t remote_began_ms; /* when the other instance's load began (0: none) */
} load_outcome;

/* Request side (lookup.c), called by the load side. */

/* Keeps a copy in the in-process tier (see lookup.c); k: the request it
 * answers, key its entry key. */
void lookup_hot_keep(lookup *lk, const hot_req *k, const char *key, const char *value, size_t len,
                     const envelope *e, uint64_t stamp);
/* Answers (or re-queues) every waiter of a finished load; w is the list
 * flight_take returned, a the load's answer. */
void lookup_wake(flight_waiter *w, const lookup_answer *a, const load_outcome *o);

/* Load side (load.c), called by the request side. */

/* Starts the flight of q's key (not in the table) and its load, not yet
 * begun. g: the counters q's read returned (NULL: Redis not in use).
 * stale: a copy (envelope bytes, copied) to offer if the origin fails. */
load *load_start(lookup *lk, const lk_req *q, const fresh_gens *g, const char *stale,
                 size_t stale_len, uint64_t stale_local);
/* Sends the load's first step. It may finish (and free) the load at once. */
void load_begin(load *ld);
/* q joined ld's flight. */
void load_join(load *ld, const lk_req *q);
/* The subscriber's message callback (see rcache_message_cb). */
void load_on_message(void *arg, const char *msg, size_t len);
/* Redis went away: loads waiting on another instance load in process. */
void load_redis_down(lookup *lk);
void load_redis_up(lookup *lk);
/* At start: says (once per worker) when --lock-ttl is shorter than a load
 * may run, which the lock's extension makes safe. */
void load_log_lease(const lookup *lk);
/* Shutdown: answers ld's waiters 503 and frees it (nothing in flight). */
void load_abort(load *ld);

#endif
