/* metrics: owns this worker's counters, gauges, per-(route, status, X-Cache)
 * request counts and the request-duration histogram, and their rendering in
 * the Prometheus text exposition format. Pure: no I/O; the server serves the
 * rendered text on /metrics.
 *
 * All state is one static struct of fixed size: recording a request never
 * allocates. Distinct HTTP statuses get up to STATUS_SLOTS slots; statuses
 * beyond that (or outside 100..599) are counted under status="other" so a
 * bound is never silently exceeded. */
#include "quotecache/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/mem.h"

#define STATUS_SLOTS 32

typedef struct metric_desc {
    const char *name;
    const char *help;
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
    [M_TAX_ERRORS] = {"tax_errors", "Tax service errors."},
    [M_LISTEN_RECONNECTS] = {"listen_reconnects",
                             "PostgreSQL LISTEN connection re-establishments."},
    [M_WAITERS_REJECTED] = {"waiters_rejected",
                            "Requests refused with 503 because a waiter bound was hit."},
    [M_CONNS_REJECTED] = {"connections_rejected",
                          "Client connections refused because the connection bound was hit."},
    [M_LOADS_AVOIDED] = {"loads_avoided",
                         "Load locks won after another instance stored the value: answered "
                         "from it, no origin load (check after the lock)."},
};

static const metric_desc gauge_desc[G_GAUGE_COUNT] = {
    [G_CONNECTIONS] = {"connections", "Open client connections."},
    [G_FLIGHTS] = {"flights", "Quote loads in flight in this process."},
    [G_WAITERS] = {"waiters", "Requests waiting for an in-flight load."},
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

typedef struct status_slot {
    int status;
    request_counts counts;
} status_slot;

static struct {
    uint64_t counters[M_COUNTER_COUNT];
    int64_t gauges[G_GAUGE_COUNT];
    status_slot slots[STATUS_SLOTS];
    size_t nslots;
    request_counts other_status; /* statuses with no slot */
    uint64_t hist[NBUCKETS + 1]; /* per bucket, not cumulative; last is +Inf */
    double hist_sum;
    uint64_t hist_count;
} m;

/* ---- recording ---- */

void metrics_inc(enum metrics_counter c)
{
    metrics_add(c, 1);
}

void metrics_add(enum metrics_counter c, uint64_t n)
{
    if ((unsigned)c < M_COUNTER_COUNT)
        m.counters[c] += n;
}

uint64_t metrics_get(enum metrics_counter c)
{
    return (unsigned)c < M_COUNTER_COUNT ? m.counters[c] : 0;
}

void metrics_gauge_set(enum metrics_gauge g, int64_t v)
{
    if ((unsigned)g < G_GAUGE_COUNT)
        m.gauges[g] = v;
}

void metrics_gauge_add(enum metrics_gauge g, int64_t delta)
{
    if ((unsigned)g < G_GAUGE_COUNT)
        m.gauges[g] += delta;
}

/* The counts of one status: its slot, a new slot, or the overflow row. */
static request_counts *counts_for(int status)
{
    if (status < 100 || status > 599)
        return &m.other_status;
    for (size_t i = 0; i < m.nslots; i++) {
        if (m.slots[i].status == status)
            return &m.slots[i].counts;
    }
    if (m.nslots == STATUS_SLOTS)
        return &m.other_status;
    m.slots[m.nslots].status = status;
    return &m.slots[m.nslots++].counts;
}

static void observe(double seconds)
{
    size_t i = 0;

    /* NaN, negative or absurd clock readings must not poison the sum. */
    if (!(seconds >= 0) || isinf(seconds))
        seconds = 0;
    while (i < NBUCKETS && seconds > buckets[i].le)
        i++;
    m.hist[i]++;
    m.hist_sum += seconds;
    m.hist_count++;
}

void metrics_request(enum metrics_route r, int status, enum metrics_xcache x, double seconds)
{
    if ((unsigned)r >= R_ROUTE_COUNT)
        r = R_OTHER;
    if ((unsigned)x >= X_XCACHE_COUNT)
        x = X_NONE;
    (*counts_for(status))[r][x]++;
    observe(seconds);
}

const char *metrics_xcache_name(enum metrics_xcache x)
{
    return (unsigned)x < X_XCACHE_COUNT ? xcache_name[x] : NULL;
}

void metrics_reset(void)
{
    memset(&m, 0, sizeof(m));
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

static void render_counters(sbuf *b)
{
    for (int c = 0; c < M_COUNTER_COUNT; c++) {
        char name[64];
        snprintf(name, sizeof(name), "%s_total", counter_desc[c].name);
        render_header(b, name, counter_desc[c].help, "counter");
        sbuf_printf(b, "quotecache_%s %llu\n", name, (unsigned long long)m.counters[c]);
    }
}

static void render_gauges(sbuf *b)
{
    for (int g = 0; g < G_GAUGE_COUNT; g++) {
        render_header(b, gauge_desc[g].name, gauge_desc[g].help, "gauge");
        sbuf_printf(b, "quotecache_%s %lld\n", gauge_desc[g].name, (long long)m.gauges[g]);
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
static void sorted_slots(size_t order[STATUS_SLOTS])
{
    for (size_t i = 0; i < m.nslots; i++) {
        size_t j = i;
        while (j > 0 && m.slots[order[j - 1]].status > m.slots[i].status) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
}

static void render_requests(sbuf *b)
{
    size_t order[STATUS_SLOTS];
    char status[8];

    render_header(b, "requests_total",
                  "Finished requests by route, HTTP status and X-Cache result.", "counter");
    sorted_slots(order);
    for (size_t i = 0; i < m.nslots; i++) {
        status_slot *s = &m.slots[order[i]];
        snprintf(status, sizeof(status), "%d", s->status);
        render_status_row(b, status, &s->counts);
    }
    render_status_row(b, "other", &m.other_status);
}

static void render_histogram(sbuf *b)
{
    const char *name = "quotecache_request_duration_seconds";
    uint64_t cumulative = 0;

    render_header(b, "request_duration_seconds", "Time from request received to response sent.",
                  "histogram");
    for (size_t i = 0; i < NBUCKETS; i++) {
        cumulative += m.hist[i];
        sbuf_printf(b, "%s_bucket{le=\"%s\"} %llu\n", name, buckets[i].label,
                    (unsigned long long)cumulative);
    }
    sbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)m.hist_count);
    sbuf_printf(b, "%s_sum %.9g\n", name, m.hist_sum);
    sbuf_printf(b, "%s_count %llu\n", name, (unsigned long long)m.hist_count);
}

char *metrics_render(size_t *len)
{
    sbuf b = {xmalloc(8192), 0, 8192};

    b.p[0] = '\0';
    render_counters(&b);
    render_gauges(&b);
    render_requests(&b);
    render_histogram(&b);
    if (len)
        *len = b.len;
    return b.p;
}
