/* Unit tests for metrics: counter and gauge rendering, request counts by
 * (route, status, X-Cache) including the status-slot bound, the histogram's
 * cumulative buckets, and a format sanity pass over the whole output. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quotecache/metrics.h"

/* True when text contains line as a whole line. */
static int has_line(const char *text, const char *line)
{
    size_t n = strlen(line);

    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return 1;
    }
    return 0;
}

static char *render(void)
{
    size_t len = 0;
    char *s = metrics_render(&len);

    CHECK(s != NULL && strlen(s) == len);
    CHECK(len > 0 && s[len - 1] == '\n');
    return s;
}

static void test_counters_and_gauges(void)
{
    char *s;

    metrics_reset();
    metrics_inc(M_ORIGIN_LOADS);
    metrics_inc(M_ORIGIN_LOADS);
    metrics_add(M_COALESCED, 40);
    metrics_inc(M_CONNS_REJECTED);
    CHECK(metrics_get(M_ORIGIN_LOADS) == 2 && metrics_get(M_COALESCED) == 40);
    metrics_gauge_set(G_CONNECTIONS, 5);
    metrics_gauge_add(G_CONNECTIONS, -2);
    metrics_gauge_add(G_WAITERS, 7);

    s = render();
    CHECK(has_line(s, "# TYPE quotecache_origin_loads_total counter"));
    CHECK(strstr(s, "# HELP quotecache_origin_loads_total ") != NULL);
    CHECK(has_line(s, "quotecache_origin_loads_total 2"));
    CHECK(has_line(s, "quotecache_coalesced_total 40"));
    CHECK(has_line(s, "quotecache_connections_rejected_total 1"));
    static const char *const zero[] = {
        "quotecache_origin_errors_total 0",    "quotecache_lock_acquired_total 0",
        "quotecache_lock_waited_total 0",      "quotecache_lock_expired_total 0",
        "quotecache_store_fenced_total 0",     "quotecache_invalidations_total 0",
        "quotecache_redis_errors_total 0",     "quotecache_redis_reconnects_total 0",
        "quotecache_pg_errors_total 0",        "quotecache_pg_reconnects_total 0",
        "quotecache_tax_errors_total 0",       "quotecache_listen_reconnects_total 0",
        "quotecache_waiters_rejected_total 0", "quotecache_flights 0",
    };
    for (size_t i = 0; i < sizeof(zero) / sizeof(zero[0]); i++)
        CHECK(has_line(s, zero[i]));
    CHECK(has_line(s, "# TYPE quotecache_connections gauge"));
    CHECK(has_line(s, "quotecache_connections 3"));
    CHECK(has_line(s, "quotecache_waiters 7"));
    free(s);

    metrics_reset();
    CHECK(metrics_get(M_ORIGIN_LOADS) == 0);
    s = render();
    CHECK(has_line(s, "quotecache_origin_loads_total 0"));
    CHECK(has_line(s, "quotecache_connections 0"));
    CHECK(strstr(s, "quotecache_requests_total{") == NULL);
    CHECK(has_line(s, "# TYPE quotecache_requests_total counter"));
    free(s);
}

static void test_requests(void)
{
    char *s;

    metrics_reset();
    metrics_request(R_QUOTE, 200, X_HIT, 0.001);
    metrics_request(R_QUOTE, 200, X_HIT, 0.001);
    metrics_request(R_QUOTE, 200, X_MISS, 0.2);
    metrics_request(R_QUOTE, 400, X_NONE, 0.0001);
    metrics_request(R_HEALTHZ, 200, X_NONE, 0.0001);
    metrics_request(R_ADMIN, 401, X_NONE, 0.0001);
    metrics_request(R_QUOTE, 200, X_COALESCED, 0.3);
    metrics_request(R_QUOTE, 200, X_STALE, 0.3);
    metrics_request(R_QUOTE, 200, X_BYPASS, 0.3);
    metrics_request(R_QUOTE, 0, X_NONE, 0.3);
    metrics_request(R_QUOTE, 1000, X_NONE, 0.3);

    s = render();
    CHECK(has_line(s, "quotecache_requests_total{route=\"quote\",status=\"200\",cache=\"HIT\"} 2"));
    CHECK(
        has_line(s, "quotecache_requests_total{route=\"quote\",status=\"200\",cache=\"MISS\"} 1"));
    CHECK(has_line(
        s, "quotecache_requests_total{route=\"quote\",status=\"200\",cache=\"COALESCED\"} 1"));
    CHECK(
        has_line(s, "quotecache_requests_total{route=\"quote\",status=\"200\",cache=\"STALE\"} 1"));
    CHECK(has_line(s,
                   "quotecache_requests_total{route=\"quote\",status=\"200\",cache=\"BYPASS\"} 1"));
    CHECK(
        has_line(s, "quotecache_requests_total{route=\"quote\",status=\"400\",cache=\"NONE\"} 1"));
    CHECK(has_line(s,
                   "quotecache_requests_total{route=\"healthz\",status=\"200\",cache=\"NONE\"} 1"));
    CHECK(
        has_line(s, "quotecache_requests_total{route=\"admin\",status=\"401\",cache=\"NONE\"} 1"));
    CHECK(has_line(s,
                   "quotecache_requests_total{route=\"quote\",status=\"other\",cache=\"NONE\"} 2"));
    CHECK(strstr(s, "requests_total{route=\"quote\",status=\"200\",cache=\"MISS\"} 0") == NULL);
    /* Statuses come out in ascending order. */
    CHECK(strstr(s, "status=\"200\"") < strstr(s, "status=\"400\""));
    CHECK(strstr(s, "status=\"400\"") < strstr(s, "status=\"401\""));
    free(s);

    CHECK(strcmp(metrics_xcache_name(X_HIT), "HIT") == 0);
    CHECK(strcmp(metrics_xcache_name(X_COALESCED), "COALESCED") == 0);
    CHECK(metrics_xcache_name(X_NONE) == NULL);
}

static void test_status_slot_bound(void)
{
    char *s;
    char line[160];

    metrics_reset();
    /* 40 distinct statuses: 32 get a slot, the rest are "other". */
    for (int st = 500; st < 540; st++)
        metrics_request(R_OTHER, st, X_NONE, 0);
    s = render();
    snprintf(line, sizeof(line),
             "quotecache_requests_total{route=\"other\",status=\"%d\",cache=\"NONE\"} 1", 531);
    CHECK(has_line(s, line));
    snprintf(line, sizeof(line),
             "quotecache_requests_total{route=\"other\",status=\"%d\",cache=\"NONE\"} 1", 532);
    CHECK(!has_line(s, line));
    CHECK(has_line(s,
                   "quotecache_requests_total{route=\"other\",status=\"other\",cache=\"NONE\"} 8"));
    free(s);
}

static void test_histogram(void)
{
    char *s;

    metrics_reset();
    metrics_request(R_QUOTE, 200, X_HIT, 0.0005); /* on a bound: counts in it */
    metrics_request(R_QUOTE, 200, X_HIT, 0.0006);
    metrics_request(R_QUOTE, 200, X_HIT, 0.2);
    metrics_request(R_QUOTE, 200, X_HIT, 10);
    metrics_request(R_QUOTE, 200, X_HIT, 11);
    metrics_request(R_QUOTE, 200, X_HIT, -1);      /* clamped to 0 */
    metrics_request(R_QUOTE, 200, X_HIT, nan("")); /* clamped to 0 */

    s = render();
    CHECK(has_line(s, "# TYPE quotecache_request_duration_seconds histogram"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_bucket{le=\"0.0005\"} 3"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_bucket{le=\"0.001\"} 4"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_bucket{le=\"0.1\"} 4"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_bucket{le=\"0.25\"} 5"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_bucket{le=\"5\"} 5"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_bucket{le=\"10\"} 6"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_bucket{le=\"+Inf\"} 7"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_count 7"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_sum 21.2011"));
    static const char *const les[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01",
                                      "0.025",  "0.05",  "0.1",    "0.25",  "0.5",
                                      "1",      "2.5",   "5",      "10",    "+Inf"};
    const char *prev = s;
    for (size_t i = 0; i < sizeof(les) / sizeof(les[0]); i++) {
        char want[96];
        snprintf(want, sizeof(want), "quotecache_request_duration_seconds_bucket{le=\"%s\"}",
                 les[i]);
        const char *at = strstr(s, want);
        CHECK(at != NULL && at >= prev);
        prev = at ? at : prev;
    }
    free(s);
}

/* Every line is a comment or "name[{labels}] value"; every sample's family
 * has a TYPE line before it. */
static void test_format(void)
{
    char *s, *save = NULL;
    int lines = 0, bad = 0;

    metrics_reset();
    metrics_request(R_QUOTE, 200, X_MISS, 0.01);
    metrics_inc(M_INVALIDATIONS);
    s = render();
    for (char *line = strtok_r(s, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lines++;
        if (line[0] == '#') {
            bad += strncmp(line, "# HELP quotecache_", 18) != 0 &&
                   strncmp(line, "# TYPE quotecache_", 18) != 0 &&
                   strncmp(line, "# HELP process_open_fds ", 24) != 0 &&
                   strncmp(line, "# TYPE process_open_fds ", 24) != 0;
            continue;
        }
        const char *sp = strrchr(line, ' ');
        bad += (strncmp(line, "quotecache_", 11) != 0 &&
                strncmp(line, "process_open_fds ", 17) != 0) ||
               !sp || sp[1] == '\0' || strspn(sp + 1, "0123456789.e+-") != strlen(sp + 1);
    }
    CHECK(lines > 40 && bad == 0);
    free(s);
}

/* The histogram families: a quote's duration goes under its X-Cache label
 * (other routes do not), observations land in their family and label only,
 * an added label renders, bad indices are dropped; build info and open
 * descriptors are rendered. */
static void test_families(void)
{
    char *s;

    metrics_reset();
    metrics_request(R_QUOTE, 200, X_HIT, 0.0002);
    metrics_request(R_QUOTE, 200, X_MISS, 0.02);
    metrics_request(R_HEALTHZ, 200, X_NONE, 0.0002);
    metrics_observe(H_ORIGIN_PG, 0, 0.003);
    metrics_observe_us(H_ORIGIN_TAX, 0, 40000);
    metrics_observe(H_ORIGIN_TAX, 1, 1); /* unlabelled: only index 0 */
    metrics_observe(H_HIST_COUNT, 0, 1);
    CHECK(metrics_hist_count(H_QUOTE_DURATION, X_HIT) == 1);
    CHECK(metrics_hist_count(H_QUOTE_DURATION, X_NONE) == 0);
    CHECK(metrics_hist_count(H_ORIGIN_TAX, 0) == 1);
    CHECK(metrics_hist_count(H_LOCK_HOLD, 0) == 0);
    CHECK(metrics_hist_label(H_ORIGIN_PG, "x") == -1); /* unlabelled */
    int route = metrics_hist_label(H_QUOTE_DURATION, "TEST");
    CHECK(route == X_XCACHE_COUNT && metrics_hist_label(H_QUOTE_DURATION, "TEST") == route);
    metrics_observe(H_QUOTE_DURATION, (unsigned)route, 0.5);
    s = render();
    CHECK(has_line(s, "# TYPE quotecache_quote_duration_seconds histogram"));
    CHECK(has_line(s, "quotecache_quote_duration_seconds_bucket{cache=\"HIT\",le=\"0.0005\"} 1"));
    CHECK(has_line(s, "quotecache_quote_duration_seconds_count{cache=\"HIT\"} 1"));
    CHECK(has_line(s, "quotecache_quote_duration_seconds_count{cache=\"MISS\"} 1"));
    CHECK(has_line(s, "quotecache_quote_duration_seconds_sum{cache=\"MISS\"} 0.02"));
    CHECK(has_line(s, "quotecache_quote_duration_seconds_count{cache=\"NONE\"} 0"));
    CHECK(has_line(s, "quotecache_quote_duration_seconds_count{cache=\"TEST\"} 1"));
    CHECK(has_line(s, "quotecache_origin_pg_duration_seconds_count 1"));
    CHECK(has_line(s, "quotecache_origin_pg_duration_seconds_bucket{le=\"0.0025\"} 0"));
    CHECK(has_line(s, "quotecache_origin_pg_duration_seconds_bucket{le=\"0.005\"} 1"));
    CHECK(has_line(s, "quotecache_origin_tax_duration_seconds_sum 0.04"));
    CHECK(has_line(s, "quotecache_origin_tax_duration_seconds_count 1"));
    CHECK(has_line(s, "quotecache_lock_hold_seconds_count 0"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_count 3"));
    CHECK(strstr(s, "quotecache_build_info{version=\"") != NULL);
    CHECK(strstr(s, "\",commit=\"") != NULL);
    const char *fds = strstr(s, "\nprocess_open_fds ");
    CHECK(fds != NULL && atol(fds + 18) >= 3); /* stdin, stdout, stderr at least */
    free(s);
}

/* Shared slots (what the master maps before forking): each writer records
 * into its own slot, reads and renders sum them all, statuses merge across
 * slots, and releasing a slot zeroes its gauges but never its counts. Runs
 * last: from here on the process records into shared slots. */
static void test_shared_slots(void)
{
    char *s;

    CHECK(metrics_shared_init(4) == 0);
    metrics_inc(M_WORKER_RESTARTS); /* slot 0: the master's */
    metrics_use_slot(1);
    metrics_add(M_ORIGIN_LOADS, 5);
    metrics_gauge_set(G_CONNECTIONS, 3);
    metrics_request(R_QUOTE, 200, X_HIT, 0.001);
    metrics_request(R_QUOTE, 404, X_MISS, 0.001);
    metrics_use_slot(2);
    metrics_add(M_ORIGIN_LOADS, 7);
    metrics_gauge_set(G_CONNECTIONS, 4);
    metrics_request(R_QUOTE, 200, X_HIT, 0.2);
    CHECK(metrics_get(M_ORIGIN_LOADS) == 12);
    CHECK(metrics_get(M_WORKER_RESTARTS) == 1);
    s = render();
    CHECK(has_line(s, "quotecache_origin_loads_total 12"));
    CHECK(has_line(s, "quotecache_worker_restarts_total 1"));
    CHECK(has_line(s, "quotecache_connections 7"));
    CHECK(has_line(s, "quotecache_requests_total{route=\"quote\",status=\"200\",cache=\"HIT\"} 2"));
    CHECK(
        has_line(s, "quotecache_requests_total{route=\"quote\",status=\"404\",cache=\"MISS\"} 1"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_count 3"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_bucket{le=\"+Inf\"} 3"));
    free(s);

    /* Slot 1's worker died: its gauges go, its counts stay; a successor in
     * the same slot counts on from there. */
    metrics_release_slot(1);
    metrics_use_slot(1);
    metrics_inc(M_ORIGIN_LOADS);
    s = render();
    CHECK(has_line(s, "quotecache_origin_loads_total 13"));
    CHECK(has_line(s, "quotecache_connections 4"));
    CHECK(has_line(s, "quotecache_request_duration_seconds_count 3"));
    free(s);
    metrics_reset();
}

/* Pass-through rows: by route name, status class and X-Cache, and the
 * upstream histogram only for requests that reached the upstream. */
static void test_proxy_routes(void)
{
    metrics_reset();
    metrics_proxy_request("cart", 200, X_HIT, -1);
    metrics_proxy_request("cart", 200, X_MISS, 0.003);
    metrics_proxy_request("cart", 204, X_MISS, 0.02);
    metrics_proxy_request("unlisted", 502, X_BYPASS, 0.7);
    size_t len;
    char *text = metrics_render(&len);
    CHECK(strstr(text, "quotecache_proxy_requests_total{route=\"cart\",status=\"2xx\","
                       "cache=\"HIT\"} 1\n") != NULL);
    CHECK(strstr(text, "quotecache_proxy_requests_total{route=\"cart\",status=\"2xx\","
                       "cache=\"MISS\"} 2\n") != NULL);
    CHECK(strstr(text, "quotecache_proxy_requests_total{route=\"unlisted\",status=\"5xx\","
                       "cache=\"BYPASS\"} 1\n") != NULL);
    CHECK(strstr(text, "quotecache_upstream_duration_seconds_count{route=\"cart\"} 2\n") != NULL);
    CHECK(strstr(text, "quotecache_upstream_duration_seconds_bucket{route=\"cart\",le=\"0.005\"} "
                       "1\n") != NULL);
    CHECK(strstr(text, "quotecache_upstream_duration_seconds_bucket{route=\"unlisted\","
                       "le=\"0.5\"} 0\n") != NULL);
    free(text);
    metrics_reset();
}

int main(void)
{
    test_proxy_routes();
    test_counters_and_gauges();
    test_requests();
    test_status_slot_bound();
    test_families();
    test_histogram();
    test_format();
    test_shared_slots();
    return CHECK_DONE();
}
