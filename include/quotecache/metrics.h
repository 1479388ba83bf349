/* metrics: counters, gauges and the request-duration histogram, rendered in
 * the Prometheus text format for the whole instance. Each process records
 * into its own slot (workers are single-threaded); with shared slots mapped
 * by the master before it forks, reads and renders sum every worker's. */
#ifndef QUOTECACHE_METRICS_H
#define QUOTECACHE_METRICS_H

#include <stddef.h>
#include <stdint.h>

enum metrics_counter {
    M_ORIGIN_LOADS,  /* loads started against PostgreSQL + tax */
    M_ORIGIN_ERRORS, /* loads that ended in 5xx */
    M_COALESCED,     /* requests answered from another request's load */
    M_LOCK_ACQUIRED, /* cross-instance lock won */
    M_LOCK_WAITED,   /* lock found taken: waited for another instance */
    M_LOCK_EXPIRED,  /* lock expired without a value: taken over */
    M_STORE_FENCED,  /* cache write refused: generation moved mid-load */
    M_INVALIDATIONS, /* invalidations applied (notify or admin) */
    M_REDIS_ERRORS,
    M_REDIS_RECONNECTS,
    M_PG_ERRORS,
    M_PG_RECONNECTS,
    M_PG_STATEMENTS,  /* statements answered on query connections */
    M_PG_ROUND_TRIPS, /* reads that ended >= 1 of them (pipelining: several) */
    M_TAX_ERRORS,
    M_LISTEN_RECONNECTS,
    M_WAITERS_REJECTED,   /* waiter bound hit: 503 */
    M_CONNS_REJECTED,     /* connection bound hit */
    M_WORKER_RESTARTS,    /* workers the master restarted after they died */
    M_LOADS_AVOIDED,      /* lock won, but the value was already stored: no load */
    M_HOT_HITS,           /* answers served from the in-process tier */
    M_ACCESS_LOG_DROPPED, /* access-log lines dropped: buffer full */
    M_CLUSTER_MOVED,      /* Redis Cluster MOVED redirections followed */
    M_CLUSTER_ASK,        /* Redis Cluster ASK redirections followed */
    M_CLUSTER_REFRESHES,  /* Redis Cluster slot maps read (CLUSTER SLOTS answered) */
    M_COUNTER_COUNT
};

enum metrics_gauge {
    G_CONNECTIONS,
    G_FLIGHTS,
    G_WAITERS,
    G_HOT_ENTRIES, /* copies in the in-process tier */
    G_HOT_BYTES,   /* their keys and values */
    G_GAUGE_COUNT
};

/* Histogram families (seconds). Each has up to METRICS_HIST_LABELS values
 * of one label; an unlabelled family has one. To add one: an enum entry
 * here and a row in metrics.c's hist_desc; labels known only at startup
 * (e.g. configured routes) are added with metrics_hist_label before fork. */
enum metrics_hist {
    H_QUOTE_DURATION,   /* quote requests, label cache = X-Cache result */
    H_ORIGIN_PG,        /* the PostgreSQL part of an origin load */
    H_ORIGIN_TAX,       /* the tax-service part of an origin load */
    H_COALESCED_WAIT,   /* a request's wait for another request's load */
    H_LOCK_HOLD,        /* cross-instance load lock won to released */
    H_REDIS_COMMAND,    /* cache command sent to answered */
    H_INVALIDATION_LAG, /* change notification received to its bump acknowledged */
    H_HIST_COUNT
};
#define METRICS_HIST_LABELS 16

enum metrics_route { R_QUOTE, R_HEALTHZ, R_METRICS, R_ADMIN, R_OTHER, R_ROUTE_COUNT };

enum metrics_xcache {
    X_NONE, /* not a cacheable answer (errors before lookup, other routes) */
    X_HIT,
    X_MISS,
    X_COALESCED,
    X_STALE,
    X_BYPASS,
    X_XCACHE_COUNT
};

/* Maps nslots shared slots (MAP_SHARED|MAP_ANONYMOUS) and records into
 * slot 0 (the master's). Call before forking. Returns 0 or -1. */
int metrics_shared_init(size_t nslots);
/* In a worker after fork: record into this slot from now on. Its counters
 * carry on from the slot's previous owner; its gauges start at 0. */
void metrics_use_slot(size_t slot);
/* In the master once the slot's worker is gone: its gauges drop to 0. */
void metrics_release_slot(size_t slot);

void metrics_inc(enum metrics_counter c);
void metrics_add(enum metrics_counter c, uint64_t n);
/* The instance's value: summed over every slot. */
uint64_t metrics_get(enum metrics_counter c);
void metrics_gauge_set(enum metrics_gauge g, int64_t v);
void metrics_gauge_add(enum metrics_gauge g, int64_t delta);
/* One finished request: route, HTTP status, X-Cache result, duration. */
void metrics_request(enum metrics_route r, int status, enum metrics_xcache x, double seconds);
/* One pass-through request: its route's name (at most
 * METRICS_ROUTE_NAME_MAX - 1 bytes), status, X-Cache result, and the
 * upstream's time (negative: answered here, not timed). */
#define METRICS_ROUTE_NAME_MAX 48
void metrics_proxy_request(const char *route, int status, enum metrics_xcache x,
                           double upstream_seconds);
/* One observation: a few adds into this process's slot (no lock, no
 * syscall). label: the value's index (the X-Cache enum for
 * H_QUOTE_DURATION, 0 for an unlabelled family); out of range is dropped. */
void metrics_observe(enum metrics_hist h, unsigned label, double seconds);
/* Microseconds to seconds, for the call sites that keep mono_us stamps. */
static inline void metrics_observe_us(enum metrics_hist h, unsigned label, int64_t us)
{
    metrics_observe(h, label, (double)us / 1e6);
}
/* Adds a label value to family h (before forking: every process must see
 * the same table). Returns its index or -1 when the family is full. */
int metrics_hist_label(enum metrics_hist h, const char *value);
/* The instance's count of observations of h, label (tests). */
uint64_t metrics_hist_count(enum metrics_hist h, unsigned label);
/* Returns the X-Cache header value ("HIT", ...) or NULL for X_NONE. */
const char *metrics_xcache_name(enum metrics_xcache x);
/* A word of state each worker publishes in its slot (0: none yet), for
 * answers about the instance (/healthz) from any worker. */
void metrics_state_publish(uint32_t v);
/* The published words of the live slots, up to max; returns how many. */
size_t metrics_states(uint32_t *out, size_t max);
/* Renders the instance's sums; returns a new NUL-terminated buffer (caller
 * frees). Gauges are summed too: connections, flights and waiters of the
 * instance are the sums of its workers'. */
char *metrics_render(size_t *len);
/* Zeroes everything, every slot (tests). */
void metrics_reset(void);

#endif
