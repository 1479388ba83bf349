/* metrics: owns the counters, gauges, per-(route, status, X-Cache) request
 * counts and the request-duration histogram, and their rendering in the
 * Prometheus text exposition format. Pure: no I/O besides one mmap; the
 * server serves the rendered text on /metrics.
 *
 * Each process records into one fixed-size slot, so recording a request
 * never allocates. Without metrics_shared_init() that slot is a static one
 * (tests, tools). With it, the master maps one region of slots shared with
 * the workers it forks (MAP_SHARED|MAP_ANONYMOUS), each worker writes only
 * its own slot and a scrape on any worker sums every slot: /metrics
 * describes the instance. Slots are never cleared (only their gauges, by
 * the master when their worker is gone), so a worker that takes over a slot
 * counts on from where its predecessor stopped and the sums never go down.
 * One writer per slot: writes are relaxed atomic stores (no lock prefix),
 * reads from other processes relaxed atomic loads.
 *
 * Distinct HTTP statuses get up to STATUS_SLOTS rows per slot; statuses
 * beyond that (or outside 100..599) are counted under status="other" so a
 * bound is never silently exceeded. */
#include "quotecache/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#include "qc_build.h"
#include "quotecache/mem.h"

#define STATUS_SLOTS 32

typedef struct metric_desc {
    const char *name;
    const char *help;
    const char *label; /* NULL, or one label="value" of a family sharing name */
} metric_desc;

static const metric_desc counter_desc[M_COUNTER_COUNT] = {
    [M_ORIGIN_LOADS] = {"origin_loads",
                        "Quote loads started against PostgreSQL and the tax service."},
    [M_ORIGIN_ERRORS] = {"origin_errors", "Quote loads that ended in a 5xx."},
    [M_COALESCED] = {"coalesced", "Requests answered from another request's load."},
    [M_LOCK_ACQUIRED] = {"lock_acquired", "Cross-instance load locks won."},
    [M_LOCK_WAITED] = {"lock_waited", "Load locks found taken: waited for another instance."},
    [M_LOCK_EXPIRED] = {"lock_expired",
                        "Load locks that expired without a value and were taken over."},
    [M_STORE_FENCED] = {"store_fenced",
                        "Cache writes refused because a generation moved mid-load."},
    [M_INVALIDATIONS] = {"invalidations",
                         "Invalidations applied (database notification or admin)."},
    [M_REDIS_ERRORS] = {"redis_errors", "Redis command errors."},
    [M_REDIS_RECONNECTS] = {"redis_reconnects", "Redis reconnections."},
    [M_PG_ERRORS] = {"pg_errors", "PostgreSQL errors."},
    [M_PG_RECONNECTS] = {"pg_reconnects", "PostgreSQL reconnections."},
    [M_PG_STATEMENTS] = {"pg_statements",
                         "Statements PostgreSQL answered on query connections (quote and "
                         "catalog loads, notifies)."},
    [M_PG_ROUND_TRIPS] = {"pg_round_trips",
                          "Reads from PostgreSQL that ended at least one statement; in pipeline "
                          "mode one read can end several (statements per round trip)."},
    [M_TAX_ERRORS] = {"tax_errors", "Tax service errors."},
    [M_LISTEN_RECONNECTS] = {"listen_reconnects",
                             "PostgreSQL LISTEN connection re-establishments."},
    [M_WAITERS_REJECTED] = {"waiters_rejected",
                            "Requests refused with 503 because a waiter bound was hit."},
    [M_CONNS_REJECTED] = {"connections_rejected",
                          "Client connections refused because the connection bound was hit."},
    [M_WORKER_RESTARTS] = {"worker_restarts", "Workers the master restarted after they died."},
    [M_LOADS_AVOIDED] = {"loads_avoided",
                         "Load locks won after another instance stored the value: answered "
                         "from it, no origin load (check after the lock)."},
    [M_HOT_HITS] = {"hot_hits", "Quote answers served from the in-process tier."},
    [M_ACCESS_LOG_DROPPED] = {"access_log_dropped",
                              "Access-log lines dropped because the log buffer was full."},
    [M_CLUSTER_MOVED] = {"redis_cluster_redirections",
                         "Redis Cluster redirections followed, by kind.", "kind=\"moved\""},
    [M_CLUSTER_ASK] = {"redis_cluster_redirections",
                       "Redis Cluster redirections followed, by kind.", "kind=\"ask\""},
    [M_CLUSTER_REFRESHES] = {"redis_cluster_refreshes", "Redis Cluster slot maps read."},
};

static const metric_desc gauge_desc[G_GAUGE_COUNT] = {
    [G_CONNECTIONS] = {"connections", "Open client connections, all workers."},
    [G_FLIGHTS] = {"flights", "Quote loads in flight, all workers."},
    [G_WAITERS] = {"waiters", "Requests waiting for an in-flight load, all workers."},
    [G_HOT_ENTRIES] = {"hot_entries", "Copies held in the in-process tier, all workers."},
    [G_HOT_BYTES] = {"hot_bytes",
                     "Bytes of keys and values held in the in-process tier, all workers."},
};

/* A histogram family: its name (without the quotecache_ prefix), help, and
 * its one label with the values known now; more values may be added by
 * metrics_hist_label before fork. */
typedef struct hist_desc {
    const char *name;
    const char *help;
    const char *label; /* NULL: unlabelled, one cell */
    const char *values[METRICS_HIST_LABELS];
    unsigned nvalues;
} hist_desc;

static hist_desc hist_desc_tab[H_HIST_COUNT] = {
    [H_QUOTE_DURATION] = {"quote_duration_seconds",
                          "Quote requests, received to answered, by X-Cache result.",
                          "cache",
                          {"NONE", "HIT", "MISS", "COALESCED", "STALE", "BYPASS"},
                          X_XCACHE_COUNT},
    [H_ORIGIN_PG] = {"origin_pg_duration_seconds",
                     "The PostgreSQL query of an origin load, sent to answered.",
                     NULL,
                     {NULL},
                     1},
    [H_ORIGIN_TAX] = {"origin_tax_duration_seconds",
                      "The tax-service call of an origin load, sent to answered.",
                      NULL,
                      {NULL},
                      1},
    [H_COALESCED_WAIT] = {"coalesced_wait_seconds",
                          "Requests answered from another request's load: arrival to answer.",
                          NULL,
                          {NULL},
                          1},
    [H_LOCK_HOLD] =
        {"lock_hold_seconds", "Cross-instance load locks, won to released.", NULL, {NULL}, 1},
    [H_REDIS_COMMAND] = {"redis_command_duration_seconds",
                         "Cache commands to Redis, sent to answered (loop time).",
                         NULL,
                         {NULL},
                         1},
    [H_INVALIDATION_LAG] = {"invalidation_lag_seconds",
                            "Change notifications, received to their Redis bump acknowledged "
                            "(one sample per bump: its oldest notification).",
                            NULL,
                            {NULL},
                            1},
};

static const char *const route_name[R_ROUTE_COUNT] = {
    [R_QUOTE] = "quote", [R_HEALTHZ] = "healthz", [R_METRICS] = "metrics",
    [R_ADMIN] = "admin", [R_OTHER] = "other",
};

static const char *const xcache_name[X_XCACHE_COUNT] = {
    [X_NONE] = NULL,     [X_HIT] = "HIT",       [X_MISS] = "MISS", [X_COALESCED] = "COALESCED",
    [X_STALE] = "STALE", [X_BYPASS] = "BYPASS",
};

/* Upper bounds in seconds with their label text spelled out, so the rendered
 * "le" values never depend on float formatting. */
static const struct {
    double le;
    const char *label;
} buckets[] = {
    {0.0005, "0.0005"}, {0.001, "0.001"}, {0.0025, "0.0025"}, {0.005, "0.005"}, {0.01, "0.01"},
    {0.025, "0.025"},   {0.05, "0.05"},   {0.1, "0.1"},       {0.25, "0.25"},   {0.5, "0.5"},
    {1, "1"},           {2.5, "2.5"},     {5, "5"},           {10, "10"},
};
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))

typedef uint64_t request_counts[R_ROUTE_COUNT][X_XCACHE_COUNT];

typedef struct hist_cell {
    uint64_t b[NBUCKETS + 1]; /* per bucket, not cumulative; last is +Inf */
    double sum;
} hist_cell;

typedef struct status_row {
    int status;
    request_counts counts;
} status_row;

/* Requests of the pass-through by route name (the --routes table, plus
 * "unlisted"; past PROXY_ROUTES names, "other"), status class and X-Cache,
 * and the upstream latency of those that reached it. */
#define PROXY_ROUTES 72
typedef struct proxy_row {
    char name[METRICS_ROUTE_NAME_MAX];
    uint64_t requests[6][X_XCACHE_COUNT]; /* [1..5]: 1xx..5xx, [0]: other statuses */
    uint64_t hist[NBUCKETS + 1];
    double hist_sum;
} proxy_row;

typedef struct metrics_slot {
    proxy_row proxy[PROXY_ROUTES];
    size_t nproxy; /* published with release after the row's name is set */
    uint64_t counters[M_COUNTER_COUNT];
    int64_t gauges[G_GAUGE_COUNT];
    status_row rows[STATUS_SLOTS];
    size_t nrows;                /* published with release after the row's status is set */
    request_counts other_status; /* statuses with no row */
    uint64_t hist[NBUCKETS + 1]; /* per bucket, not cumulative; last is +Inf */
    double hist_sum;
    hist_cell hists[H_HIST_COUNT][METRICS_HIST_LABELS];
    pid_t pid;      /* its live process, for process_open_fds; 0 when none */
    uint32_t state; /* published by its worker (metrics_state_publish) */
    int used;       /* set by the master when it hands the slot out */
} metrics_slot;

static metrics_slot local_slot;
static metrics_slot *shared;
static size_t nshared;
static metrics_slot *m = &local_slot;

/* The one writer of a slot adds without a locked instruction; readers in
 * other processes see each value whole. */
#define BUMP(var, n) __atomic_store_n(&(var), (var) + (n), __ATOMIC_RELAXED)
#define READ(var) __atomic_load_n(&(var), __ATOMIC_RELAXED)

/* ---- slots ---- */

int metrics_shared_init(size_t nslots)
{
    void *p = mmap(NULL, nslots * sizeof(metrics_slot), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    shared = p;
    nshared = nslots;
    m = &shared[0];
    m->used = 1;
    m->pid = getpid();
    return 0;
}

void metrics_use_slot(size_t slot)
{
    if (slot >= nshared)
        return;
    m = &shared[slot];
    __atomic_store_n(&m->used, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&m->pid, getpid(), __ATOMIC_RELAXED);
    __atomic_store_n(&m->state, 0, __ATOMIC_RELAXED);
    for (int g = 0; g < G_GAUGE_COUNT; g++)
        __atomic_store_n(&m->gauges[g], 0, __ATOMIC_RELAXED);
}

void metrics_release_slot(size_t slot)
{
    if (slot >= nshared)
        return;
    for (int g = 0; g < G_GAUGE_COUNT; g++)
        __atomic_store_n(&shared[slot].gauges[g], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&shared[slot].pid, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&shared[slot].state, 0, __ATOMIC_RELAXED);
}

/* The slots a scrape sums: every used shared slot, or the local one. */
static metrics_slot *slot_at(size_t i, size_t *n)
{
    *n = shared ? nshared : 1;
    if (shared == NULL)
        return &local_slot;
    return __atomic_load_n(&shared[i].used, __ATOMIC_RELAXED) ? &shared[i] : NULL;
}

void metrics_state_publish(uint32_t v)
{
    __atomic_store_n(&m->state, v, __ATOMIC_RELAXED);
}

size_t metrics_states(uint32_t *out, size_t max)
{
    size_t got = 0;
    size_t n = 1;
    for (size_t i = 0; i < n && got < max; i++) {
        metrics_slot *s = slot_at(i, &n);
        if (s == NULL || (shared != NULL && __atomic_load_n(&s->pid, __ATOMIC_RELAXED) == 0))
            continue;
        uint32_t v = __atomic_load_n(&s->state, __ATOMIC_RELAXED);
        if (v != 0)
            out[got++] = v;
    }
    return got;
}

/* ---- recording ---- */

void metrics_inc(enum metrics_counter c)
{
    metrics_add(c, 1);
}

void metrics_add(enum metrics_counter c, uint64_t n)
{
    if ((unsigned)c < M_COUNTER_COUNT)
        BUMP(m->counters[c], n);
}

uint64_t metrics_get(enum metrics_counter c)
{
    if ((unsigned)c >= M_COUNTER_COUNT)
        return 0;
    uint64_t sum = 0;
    size_t n = 1;
    for (size_t i = 0; i < n; i++) {
        metrics_slot *s = slot_at(i, &n);
        if (s)
            sum += READ(s->counters[c]);
    }
    return sum;
}

void metrics_gauge_set(enum metrics_gauge g, int64_t v)
{
    if ((unsigned)g < G_GAUGE_COUNT)
        __atomic_store_n(&m->gauges[g], v, __ATOMIC_RELAXED);
}

void metrics_gauge_add(enum metrics_gauge g, int64_t delta)
{
    if ((unsigned)g < G_GAUGE_COUNT)
        BUMP(m->gauges[g], delta);
}

/* The counts of one status in slot s: its row, a new row, or the overflow
 * row. Only the slot's writer (or a private total) calls this. */
static request_counts *counts_for(metrics_slot *s, int status)
{
    if (status < 100 || status > 599)
        return &s->other_status;
    size_t n = s->nrows;
    for (size_t i = 0; i < n; i++) {
        if (s->rows[i].status == status)
            return &s->rows[i].counts;
    }
    if (n == STATUS_SLOTS)
        return &s->other_status;
    s->rows[n].status = status;
    __atomic_store_n(&s->nrows, n + 1, __ATOMIC_RELEASE);
    return &s->rows[n].counts;
}

/* The bucket of one observation, and the value to add to the sum: NaN,
 * negative or absurd clock readings must not poison the sum. */
static size_t bucket_of(double *seconds)
{
    size_t i = 0;
    if (!(*seconds >= 0) || isinf(*seconds))
        *seconds = 0;
    while (i<NBUCKETS && * seconds> buckets[i].le)
        i++;
    return i;
}

static void observe_into(uint64_t *b, double *sump, double seconds)
{
    size_t i = bucket_of(&seconds);
    BUMP(b[i], 1);
    double sum = *sump + seconds;
    __atomic_store(sump, &sum, __ATOMIC_RELAXED);
}

static void observe(double seconds)
{
    observe_into(m->hist, &m->hist_sum, seconds);
}

void metrics_observe(enum metrics_hist h, unsigned label, double seconds)
{
    if ((unsigned)h >= H_HIST_COUNT || label >= hist_desc_tab[h].nvalues)
        return;
    hist_cell *c = &m->hists[h][label];
    observe_into(c->b, &c->sum, seconds);
}

int metrics_hist_label(enum metrics_hist h, const char *value)
{
    if ((unsigned)h >= H_HIST_COUNT || hist_desc_tab[h].label == NULL ||
        hist_desc_tab[h].nvalues == METRICS_HIST_LABELS)
        return -1;
    hist_desc *d = &hist_desc_tab[h];
    for (unsigned i = 0; i < d->nvalues; i++) {
        if (strcmp(d->values[i], value) == 0)
            return (int)i;
    }
    d->values[d->nvalues] = xstrdup(value); /* kept for the process's life */
    return (int)d->nvalues++;
}

void metrics_request(enum metrics_route r, int status, enum metrics_xcache x, double seconds)
{
    if ((unsigned)r >= R_ROUTE_COUNT)
        r = R_OTHER;
    if ((unsigned)x >= X_XCACHE_COUNT)
        x = X_NONE;
    BUMP((*counts_for(m, status))[r][x], 1);
    observe(seconds);
    if (r == R_QUOTE)
        metrics_observe(H_QUOTE_DURATION, x, seconds);
}

/* This slot's row for route, made on first use (the name is written
 * before the count that publishes it). */
static proxy_row *proxy_row_for(const char *route)
{
    for (size_t i = 0; i < m->nproxy; i++) {
        if (strcmp(m->proxy[i].name, route) == 0)
            return &m->proxy[i];
    }
    if (m->nproxy == PROXY_ROUTES)
        return &m->proxy[PROXY_ROUTES - 1];
    proxy_row *r = &m->proxy[m->nproxy];
    snprintf(r->name, sizeof(r->name), "%s", m->nproxy == PROXY_ROUTES - 1 ? "other" : route);
    __atomic_store_n(&m->nproxy, m->nproxy + 1, __ATOMIC_RELEASE);
    return r;
}

void metrics_proxy_request(const char *route, int status, enum metrics_xcache x,
                           double upstream_seconds)
{
    proxy_row *r = proxy_row_for(route);
    int cls = status >= 100 && status < 600 ? status / 100 : 0;
    if ((unsigned)x >= X_XCACHE_COUNT)
        x = X_NONE;
    BUMP(r->requests[cls][x], 1);
    if (upstream_seconds < 0)
        return; /* answered here: no upstream call to time */
    size_t i = 0;
    while (i < NBUCKETS && upstream_seconds > buckets[i].le)
        i++;
    BUMP(r->hist[i], 1);
    double sum = r->hist_sum + upstream_seconds;
    __atomic_store(&r->hist_sum, &sum, __ATOMIC_RELAXED);
}

const char *metrics_xcache_name(enum metrics_xcache x)
{
    return (unsigned)x < X_XCACHE_COUNT ? xcache_name[x] : NULL;
}

void metrics_reset(void)
{
    memset(&local_slot, 0, sizeof(local_slot));
    if (shared)
        memset(shared, 0, nshared * sizeof(*shared));
}

/* ---- summing ---- */

static void add_counts(request_counts *to, request_counts *from)
{
    for (int r = 0; r < R_ROUTE_COUNT; r++) {
        for (int x = 0; x < X_XCACHE_COUNT; x++)
            (*to)[r][x] += READ((*from)[r][x]);
    }
}

/* Adds slot s into the private total t. */
static void add_slot(metrics_slot *t, metrics_slot *s)
{
    for (int c = 0; c < M_COUNTER_COUNT; c++)
        t->counters[c] += READ(s->counters[c]);
    for (int g = 0; g < G_GAUGE_COUNT; g++)
        t->gauges[g] += READ(s->gauges[g]);
    size_t n = __atomic_load_n(&s->nrows, __ATOMIC_ACQUIRE);
    for (size_t i = 0; i < n; i++)
        add_counts(counts_for(t, s->rows[i].status), &s->rows[i].counts);
    add_counts(&t->other_status, &s->other_status);
    for (size_t i = 0; i <= NBUCKETS; i++)
        t->hist[i] += READ(s->hist[i]);
    double sum;
    __atomic_load(&s->hist_sum, &sum, __ATOMIC_RELAXED);
    t->hist_sum += sum;
    for (int h = 0; h < H_HIST_COUNT; h++) {
        for (unsigned l = 0; l < hist_desc_tab[h].nvalues; l++) {
            for (size_t i = 0; i <= NBUCKETS; i++)
                t->hists[h][l].b[i] += READ(s->hists[h][l].b[i]);
            __atomic_load(&s->hists[h][l].sum, &sum, __ATOMIC_RELAXED);
            t->hists[h][l].sum += sum;
        }
    }
}

static metrics_slot *instance_total(void)
{
    metrics_slot *t = xcalloc(1, sizeof(*t));
    size_t n = 1;
    for (size_t i = 0; i < n; i++) {
        metrics_slot *s = slot_at(i, &n);
        if (s)
            add_slot(t, s);
    }
    return t;
}

uint64_t metrics_hist_count(enum metrics_hist h, unsigned label)
{
    if ((unsigned)h >= H_HIST_COUNT || label >= hist_desc_tab[h].nvalues)
        return 0;
    metrics_slot *t = instance_total();
    uint64_t n = 0;
    for (size_t i = 0; i <= NBUCKETS; i++)
        n += t->hists[h][label].b[i];
    free(t);
    return n;
}

/* Open descriptors of one process, read from /proc at scrape time (never
 * on a request's path); -1 if it cannot be read. */
static long count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld/fd", (long)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    long n = -1; /* the descriptor opendir holds, when it is ours */
    if (pid != getpid())
        n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.')
            n++;
    }
    closedir(d);
    return n;
}

/* The instance's open descriptors: the master's and every live worker's. */
static long instance_fds(void)
{
    if (shared == NULL)
        return count_fds(getpid());
    long sum = 0;
    for (size_t i = 0; i < nshared; i++) {
        pid_t pid = __atomic_load_n(&shared[i].pid, __ATOMIC_RELAXED);
        long n = pid > 0 ? count_fds(pid) : -1;
        if (n > 0)
            sum += n;
    }
    return sum;
}

/* ---- rendering ---- */

typedef struct sbuf {
    char *p;
    size_t len;
    size_t cap;
} sbuf;

static void sbuf_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sbuf_printf(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return; /* only on an invalid format: nothing to add */
        if ((size_t)n < b->cap - b->len)
            break;
        b->cap = (b->cap + (size_t)n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    b->len += (size_t)n;
}

static void render_header(sbuf *b, const char *name, const char *help, const char *type)
{
    sbuf_printf(b, "# HELP quotecache_%s %s\n# TYPE quotecache_%s %s\n", name, help, name, type);
}

static void render_counters(sbuf *b, const metrics_slot *t)
{
    for (int c = 0; c < M_COUNTER_COUNT; c++) {
        char name[64];
        const metric_desc *d = &counter_desc[c];
        snprintf(name, sizeof(name), "%s_total", d->name);
        /* A labelled family's members are adjacent: one header for all. */
        if (c == 0 || strcmp(counter_desc[c - 1].name, d->name) != 0)
            render_header(b, name, d->help, "counter");
        if (d->label)
            sbuf_printf(b, "quotecache_%s{%s} %llu\n", name, d->label,
                        (unsigned long long)t->counters[c]);
        else
            sbuf_printf(b, "quotecache_%s %llu\n", name, (unsigned long long)t->counters[c]);
    }
}

static void render_gauges(sbuf *b, const metrics_slot *t)
{
    for (int g = 0; g < G_GAUGE_COUNT; g++) {
        render_header(b, gauge_desc[g].name, gauge_desc[g].help, "gauge");
        sbuf_printf(b, "quotecache_%s %lld\n", gauge_desc[g].name, (long long)t->gauges[g]);
    }
}

static void render_status_row(sbuf *b, const char *status, request_counts *counts)
{
    for (int r = 0; r < R_ROUTE_COUNT; r++) {
        for (int x = 0; x < X_XCACHE_COUNT; x++) {
            uint64_t n = (*counts)[r][x];
            if (n == 0)
                continue;
            sbuf_printf(b,
                        "quotecache_requests_total{route=\"%s\",status=\"%s\",cache=\"%s\"} %llu\n",
                        route_name[r], status, x == X_NONE ? "NONE" : xcache_name[x],
                        (unsigned long long)n);
        }
    }
}

/* Slot indices ordered by status, so the output is stable between scrapes. */
static void sorted_rows(const metrics_slot *t, size_t order[STATUS_SLOTS])
{
    for (size_t i = 0; i < t->nrows; i++) {
        size_t j = i;
        while (j > 0 && t->rows[order[j - 1]].status > t->rows[i].status) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
}

static void render_requests(sbuf *b, metrics_slot *t)
{
    size_t order[STATUS_SLOTS];
    char status[8];

    render_header(b, "requests_total",
                  "Finished requests by route, HTTP status and X-Cache result.", "counter");
    sorted_rows(t, order);
    for (size_t i = 0; i < t->nrows; i++) {
        status_row *s = &t->rows[order[i]];
        snprintf(status, sizeof(status), "%d", s->status);
        render_status_row(b, status, &s->counts);
    }
    render_status_row(b, "other", &t->other_status);
}

/* One histogram's lines; labels: "" or `name="value",` ahead of le. */
static void render_hist_lines(sbuf *b, const char *name, const char *labels, const uint64_t *h,
                              double sum)
{
    uint64_t cumulative = 0;
    for (size_t i = 0; i < NBUCKETS; i++) {
        cumulative += h[i];
        sbuf_printf(b, "quotecache_%s_bucket{%sle=\"%s\"} %llu\n", name, labels, buckets[i].label,
                    (unsigned long long)cumulative);
    }
    cumulative += h[NBUCKETS];
    sbuf_printf(b, "quotecache_%s_bucket{%sle=\"+Inf\"} %llu\n", name, labels,
                (unsigned long long)cumulative);
    size_t n = strlen(labels);
    const char *brace = n ? "{" : "";
    const char *close = n ? "}" : "";
    int ln = n ? (int)n - 1 : 0; /* without the trailing comma */
    sbuf_printf(b, "quotecache_%s_sum%s%.*s%s %.9g\n", name, brace, ln, labels, close, sum);
    sbuf_printf(b, "quotecache_%s_count%s%.*s%s %llu\n", name, brace, ln, labels, close,
                (unsigned long long)cumulative);
}

static void render_families(sbuf *b, const metrics_slot *t)
{
    for (int h = 0; h < H_HIST_COUNT; h++) {
        const hist_desc *d = &hist_desc_tab[h];
        render_header(b, d->name, d->help, "histogram");
        for (unsigned l = 0; l < d->nvalues; l++) {
            char labels[128] = "";
            if (d->label != NULL)
                snprintf(labels, sizeof(labels), "%s=\"%s\",", d->label, d->values[l]);
            render_hist_lines(b, d->name, labels, t->hists[h][l].b, t->hists[h][l].sum);
        }
    }
}

/* Gauges that are read, not recorded: descriptors, and what was built. */
static void render_process(sbuf *b)
{
    sbuf_printf(b,
                "# HELP process_open_fds Open file descriptors, summed over the master and "
                "every worker of this instance.\n# TYPE process_open_fds gauge\n"
                "process_open_fds %ld\n",
                instance_fds());
    render_header(b, "build_info", "The version and source commit this binary was built from.",
                  "gauge");
    sbuf_printf(b, "quotecache_build_info{version=\"%s\",commit=\"%s\"} 1\n", QC_VERSION,
                QC_COMMIT);
}

static void render_histogram(sbuf *b, const metrics_slot *t)
{
    const char *name = "quotecache_request_duration_seconds";
    uint64_t cumulative = 0;

    render_header(b, "request_duration_seconds", "Time from request received to response sent.",
                  "histogram");
    for (size_t i = 0; i < NBUCKETS; i++) {
        cumulative += t->hist[i];
        sbuf_printf(b, "%s_bucket{le=\"%s\"} %llu\n", name, buckets[i].label,
                    (unsigned long long)cumulative);
    }
    /* +Inf and _count come from the same reads as the buckets, so the
     * three agree even while workers record. */
    cumulative += t->hist[NBUCKETS];
    sbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cumulative);
    sbuf_printf(b, "%s_sum %.9g\n", name, t->hist_sum);
    sbuf_printf(b, "%s_count %llu\n", name, (unsigned long long)cumulative);
}

/* The rows of every slot, summed by route name into out (cap rows).
 * Returns how many. */
static size_t proxy_totals(proxy_row *out, size_t cap)
{
    size_t nout = 0, n = 1;
    for (size_t si = 0; si < n; si++) {
        metrics_slot *s = slot_at(si, &n);
        size_t rows = s ? __atomic_load_n(&s->nproxy, __ATOMIC_ACQUIRE) : 0;
        for (size_t i = 0; i < rows; i++) {
            const proxy_row *r = &s->proxy[i];
            size_t j = 0;
            while (j < nout && strcmp(out[j].name, r->name) != 0)
                j++;
            if (j == nout && nout == cap)
                continue;
            if (j == nout)
                snprintf(out[nout++].name, sizeof(out[0].name), "%s", r->name);
            for (int c = 0; c < 6; c++) {
                for (int x = 0; x < X_XCACHE_COUNT; x++)
                    out[j].requests[c][x] += READ(r->requests[c][x]);
            }
            for (size_t k = 0; k <= NBUCKETS; k++)
                out[j].hist[k] += READ(r->hist[k]);
            double sum;
            __atomic_load(&r->hist_sum, &sum, __ATOMIC_RELAXED);
            out[j].hist_sum += sum;
        }
    }
    return nout;
}

static void render_proxy(sbuf *b)
{
    static const char *const cls[6] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
    size_t cap = PROXY_ROUTES * 4;
    proxy_row *t = xcalloc(cap, sizeof(*t));
    size_t n = proxy_totals(t, cap);
    render_header(b, "proxy_requests_total",
                  "Pass-through requests by route, status class and X-Cache result.", "counter");
    for (size_t i = 0; i < n; i++) {
        for (int c = 0; c < 6; c++) {
            for (int x = 0; x < X_XCACHE_COUNT; x++) {
                if (t[i].requests[c][x] == 0)
                    continue;
                sbuf_printf(b,
                            "quotecache_proxy_requests_total{route=\"%s\",status=\"%s\","
                            "cache=\"%s\"} %llu\n",
                            t[i].name, cls[c], x == X_NONE ? "NONE" : xcache_name[x],
                            (unsigned long long)t[i].requests[c][x]);
            }
        }
    }
    const char *name = "quotecache_upstream_duration_seconds";
    render_header(b, "upstream_duration_seconds",
                  "Time from sending a request to the upstream to its whole answer, by route.",
                  "histogram");
    for (size_t i = 0; i < n; i++) {
        uint64_t cumulative = 0;
        for (size_t k = 0; k < NBUCKETS; k++) {
            cumulative += t[i].hist[k];
            sbuf_printf(b, "%s_bucket{route=\"%s\",le=\"%s\"} %llu\n", name, t[i].name,
                        buckets[k].label, (unsigned long long)cumulative);
        }
        cumulative += t[i].hist[NBUCKETS];
        sbuf_printf(b, "%s_bucket{route=\"%s\",le=\"+Inf\"} %llu\n", name, t[i].name,
                    (unsigned long long)cumulative);
        sbuf_printf(b, "%s_sum{route=\"%s\"} %.9g\n", name, t[i].name, t[i].hist_sum);
        sbuf_printf(b, "%s_count{route=\"%s\"} %llu\n", name, t[i].name,
                    (unsigned long long)cumulative);
    }
    free(t);
}

char *metrics_render(size_t *len)
{
    sbuf b = {xmalloc(8192), 0, 8192};

    metrics_slot *t = instance_total();
    b.p[0] = '\0';
    render_counters(&b, t);
    render_gauges(&b, t);
    render_requests(&b, t);
    render_histogram(&b, t);
    render_proxy(&b);
    render_families(&b, t);
    render_process(&b);
    free(t);
    if (len)
        *len = b.len;
    return b.p;
}
