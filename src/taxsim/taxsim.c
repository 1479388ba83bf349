/*
 * quotecache-taxsim: the project's simulator of the legacy tax service
 * (shared/spec/legacy-backend.md), used by tests, benchmarks and the demo.
 *
 * It owns: the listener, the request counter behind /stats, the fault
 * injection settings (delay, jitter, fail and drop rates, changeable at run
 * time through /control) and one pending "op" per /v1/tax request.
 *
 * Every /v1/tax answer, even with no delay, is sent from an evtimer callback
 * owned by its op: evhttp never sees a reply (or a dropped connection) from
 * inside its own request callback, so freeing a connection is always done at
 * a safe point. Delays never block: hundreds of slow requests wait at once.
 *
 * Routes:
 *   GET  /v1/tax?region=R&product_id=P&amount_cents=N&currency=C
 *   GET  /stats                  {"requests": N}
 *   GET  /stats?reset=1, POST /stats/reset
 *                                {"requests": N} (the count before), then 0
 *   POST /control?delay_ms=N&jitter_ms=N&fail_rate=F&drop_rate=F (any subset)
 *                                the settings now in force, as JSON
 */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#define TS_MAX_DELAY_MS 600000L
#define TS_MAX_AMOUNT 1000000000000000LL /* 10^15 cents */
#define TS_MAX_PORT 65535L

struct ts_settings {
    long delay_ms;
    long jitter_ms;
    double fail_rate;
    double drop_rate;
};

enum ts_outcome { TS_ANSWER, TS_FAIL, TS_DROP };

/* One pending /v1/tax request. Owned by the pending list; freed by its timer
 * callback after it has replied (or dropped), or at shutdown. */
struct ts_op {
    struct evhttp_request *req;
    struct event *timer;
    enum ts_outcome outcome;
    int status;     /* 200 or 400 when outcome is TS_ANSWER */
    char body[160]; /* the JSON body to send with status */
    struct ts_op *prev, *next;
};

struct ts_state {
    struct event_base *base;
    struct evhttp *http;
    struct ts_settings set;
    uint64_t rng;
    uint64_t requests;
    struct ts_op *pending;
};

static struct ts_state ts;

/* ---- utilities ---- */

static void *ts_alloc(size_t n)
{
    void *p = calloc(1, n);
    if (p == NULL) {
        fprintf(stderr, "quotecache-taxsim: out of memory\n");
        abort();
    }
    return p;
}

/* splitmix64: deterministic for a given --seed, no libc RNG state. */
static uint64_t ts_rand_u64(void)
{
    uint64_t z = (ts.rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double ts_rand_unit(void)
{
    return (double)(ts_rand_u64() >> 11) / 9007199254740992.0; /* [0, 1) */
}

/* Parses a decimal integer made of digits only (no sign, no spaces) within
 * [0, max]. Returns 0 on success, -1 otherwise. */
static int ts_parse_uint(const char *s, long long max, long long *out)
{
    long long v = 0;
    if (s == NULL || *s == '\0')
        return -1;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        if (v > (max - (*s - '0')) / 10)
            return -1;
        v = v * 10 + (*s - '0');
    }
    *out = v;
    return 0;
}

/* Parses a fraction in [0, 1]. Returns 0 on success, -1 otherwise. */
static int ts_parse_rate(const char *s, double *out)
{
    char *end;
    double v;
    if (s == NULL || *s == '\0' || *s == ' ' || *s == '+' || *s == '-')
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v) || v < 0.0 || v > 1.0)
        return -1;
    *out = v;
    return 0;
}

static bool ts_all_letters(const char *s, size_t min, size_t max)
{
    size_t n = 0;
    for (; *s != '\0'; s++, n++) {
        char c = *s;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
            return false;
    }
    return n >= min && n <= max;
}

static void ts_send_json(struct evhttp_request *req, int status, const char *reason,
                         const char *fmt, ...)
{
    struct evbuffer *buf = evbuffer_new();
    va_list ap;
    if (buf == NULL) {
        fprintf(stderr, "quotecache-taxsim: out of memory\n");
        abort();
    }
    va_start(ap, fmt);
    evbuffer_add_vprintf(buf, fmt, ap);
    va_end(ap);
    evbuffer_add(buf, "\n", 1);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, status, reason, buf);
    evbuffer_free(buf);
}

static void ts_send_error(struct evhttp_request *req, int status, const char *reason,
                          const char *code, const char *message)
{
    ts_send_json(req, status, reason, "{\"error\": \"%s\", \"message\": \"%s\"}", code, message);
}

/* ---- /v1/tax ---- */

static long ts_rate_bp(const char *region)
{
    static const struct {
        const char *region;
        long bp;
    } rates[] = {
        {"US", 700}, {"EU", 2000}, {"UK", 2000}, {"APAC", 1000}, {"LATAM", 1500},
    };
    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++)
        if (strcmp(region, rates[i].region) == 0)
            return rates[i].bp;
    return 0;
}

/* Finds the single value of `key` in `q`. Returns 0 and sets *out (NULL when
 * absent), or -1 when the key appears more than once. */
static int ts_query_one(const struct evkeyvalq *q, const char *key, const char **out)
{
    const struct evkeyval *kv;
    *out = NULL;
    TAILQ_FOREACH(kv, q, next)
    {
        if (strcmp(kv->key, key) != 0)
            continue;
        if (*out != NULL)
            return -1;
        *out = kv->value;
    }
    return 0;
}

/* Validates the query of a /v1/tax request and fills op->status/op->body
 * with the answer (200 or 400). */
static void ts_tax_compute(struct ts_op *op, const char *query)
{
    static const char *const names[] = {"region", "product_id", "amount_cents", "currency"};
    const char *val[4];
    struct evkeyvalq q;
    long long product_id, amount;
    long long bp;
    const char *bad = NULL;

    TAILQ_INIT(&q);
    if (evhttp_parse_query_str(query != NULL ? query : "", &q) != 0) {
        op->status = 400;
        snprintf(op->body, sizeof op->body,
                 "{\"error\": \"bad_request\", \"message\": \"malformed query string\"}");
        evhttp_clear_headers(&q);
        return;
    }
    for (size_t i = 0; i < 4 && bad == NULL; i++) {
        if (ts_query_one(&q, names[i], &val[i]) != 0 || val[i] == NULL)
            bad = names[i];
    }
    if (bad == NULL && !ts_all_letters(val[0], 1, 16))
        bad = "region";
    if (bad == NULL && (ts_parse_uint(val[1], INT64_MAX, &product_id) != 0 || product_id == 0))
        bad = "product_id";
    if (bad == NULL && ts_parse_uint(val[2], TS_MAX_AMOUNT, &amount) != 0)
        bad = "amount_cents";
    if (bad == NULL && !ts_all_letters(val[3], 3, 3))
        bad = "currency";

    if (bad != NULL) {
        op->status = 400;
        snprintf(op->body, sizeof op->body,
                 "{\"error\": \"bad_request\", \"message\": "
                 "\"missing, duplicated or malformed parameter %s\"}",
                 bad);
    } else {
        /* amount <= 10^15 and bp <= 2000: the product fits in 63 bits.
         * Non-negative, so adding half the divisor rounds half away from 0. */
        bp = ts_rate_bp(val[0]);
        op->status = 200;
        snprintf(op->body, sizeof op->body, "{\"tax_cents\": %lld, \"rate_bp\": %lld}",
                 (amount * bp + 5000) / 10000, bp);
    }
    evhttp_clear_headers(&q);
}

static void ts_op_unlink(struct ts_op *op)
{
    if (op->prev != NULL)
        op->prev->next = op->next;
    else
        ts.pending = op->next;
    if (op->next != NULL)
        op->next->prev = op->prev;
}

static void ts_op_free(struct ts_op *op)
{
    ts_op_unlink(op);
    event_free(op->timer);
    free(op);
}

/* Timer callback: the op's only reply, or its dropped connection. */
static void ts_op_fire(evutil_socket_t fd, short what, void *arg)
{
    struct ts_op *op = arg;
    struct evhttp_request *req = op->req;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    (void)fd;
    (void)what;

    switch (op->outcome) {
    case TS_DROP:
        /* A client that already left detached the request from its
         * connection: then the request is ours to free. */
        if (evcon != NULL)
            evhttp_connection_free(evcon);
        else
            evhttp_request_free(req);
        break;
    case TS_FAIL:
        ts_send_error(req, 500, "Internal Server Error", "simulated_failure",
                      "the simulator failed this request on purpose");
        break;
    case TS_ANSWER:
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          "application/json");
        {
            struct evbuffer *buf = evbuffer_new();
            if (buf == NULL) {
                fprintf(stderr, "quotecache-taxsim: out of memory\n");
                abort();
            }
            evbuffer_add_printf(buf, "%s\n", op->body);
            evhttp_send_reply(req, op->status, op->status == 200 ? "OK" : "Bad Request", buf);
            evbuffer_free(buf);
        }
        break;
    }
    ts_op_free(op);
}

static void ts_handle_tax(struct evhttp_request *req, const struct evhttp_uri *uri)
{
    struct ts_op *op;
    struct timeval tv;
    long delay;
    double r;

    ts.requests++;
    op = ts_alloc(sizeof *op);
    op->req = req;
    op->timer = evtimer_new(ts.base, ts_op_fire, op);
    if (op->timer == NULL) {
        fprintf(stderr, "quotecache-taxsim: out of memory\n");
        abort();
    }

    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        op->status = 405;
        op->outcome = TS_ANSWER;
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
        snprintf(op->body, sizeof op->body,
                 "{\"error\": \"method_not_allowed\", \"message\": \"use GET\"}");
    } else {
        ts_tax_compute(op, evhttp_uri_get_query(uri));
    }

    /* Faults apply to every request, whatever its answer would be. */
    r = ts_rand_unit();
    if (r < ts.set.drop_rate)
        op->outcome = TS_DROP;
    else if (r < ts.set.drop_rate + ts.set.fail_rate)
        op->outcome = TS_FAIL;
    else
        op->outcome = TS_ANSWER;

    delay = ts.set.delay_ms;
    if (ts.set.jitter_ms > 0)
        delay += (long)(ts_rand_u64() % (uint64_t)(ts.set.jitter_ms + 1));
    tv.tv_sec = delay / 1000;
    tv.tv_usec = (delay % 1000) * 1000;

    op->next = ts.pending;
    if (ts.pending != NULL)
        ts.pending->prev = op;
    ts.pending = op;
    evtimer_add(op->timer, &tv);
}

/* ---- /stats and /control ---- */

static void ts_handle_stats(struct evhttp_request *req, const struct evhttp_uri *uri, bool reset)
{
    uint64_t n = ts.requests;
    const char *query = evhttp_uri_get_query(uri);

    if (!reset && query != NULL) {
        struct evkeyvalq q;
        const char *v = NULL;
        TAILQ_INIT(&q);
        if (evhttp_parse_query_str(query, &q) != 0 || ts_query_one(&q, "reset", &v) != 0 ||
            (v != NULL && strcmp(v, "0") != 0 && strcmp(v, "1") != 0)) {
            evhttp_clear_headers(&q);
            ts_send_error(req, 400, "Bad Request", "bad_request", "use /stats?reset=1");
            return;
        }
        reset = v != NULL && strcmp(v, "1") == 0;
        evhttp_clear_headers(&q);
    }
    if (reset)
        ts.requests = 0;
    ts_send_json(req, 200, "OK", "{\"requests\": %" PRIu64 "}", n);
}

static void ts_send_settings(struct evhttp_request *req)
{
    ts_send_json(req, 200, "OK",
                 "{\"delay_ms\": %ld, \"jitter_ms\": %ld, \"fail_rate\": %g, "
                 "\"drop_rate\": %g}",
                 ts.set.delay_ms, ts.set.jitter_ms, ts.set.fail_rate, ts.set.drop_rate);
}

/* Applies name=value to *set. Returns 0, or -1 when either is invalid. */
static int ts_apply_setting(struct ts_settings *set, const char *name, const char *value)
{
    long long n;
    if (strcmp(name, "delay_ms") == 0 || strcmp(name, "jitter_ms") == 0) {
        if (ts_parse_uint(value, TS_MAX_DELAY_MS, &n) != 0)
            return -1;
        if (name[0] == 'd')
            set->delay_ms = (long)n;
        else
            set->jitter_ms = (long)n;
        return 0;
    }
    if (strcmp(name, "fail_rate") == 0)
        return ts_parse_rate(value, &set->fail_rate);
    if (strcmp(name, "drop_rate") == 0)
        return ts_parse_rate(value, &set->drop_rate);
    return -1;
}

static void ts_handle_control(struct evhttp_request *req, const struct evhttp_uri *uri)
{
    struct ts_settings next = ts.set;
    const char *query = evhttp_uri_get_query(uri);
    const struct evkeyval *kv;
    struct evkeyvalq q;

    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        if (evhttp_request_get_command(req) == EVHTTP_REQ_GET && query == NULL) {
            ts_send_settings(req);
            return;
        }
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        ts_send_error(req, 405, "Method Not Allowed", "method_not_allowed", "use POST");
        return;
    }
    TAILQ_INIT(&q);
    if (query != NULL && evhttp_parse_query_str(query, &q) != 0) {
        ts_send_error(req, 400, "Bad Request", "bad_request", "malformed query string");
        evhttp_clear_headers(&q);
        return;
    }
    TAILQ_FOREACH(kv, &q, next)
    {
        if (ts_apply_setting(&next, kv->key, kv->value) != 0) {
            evhttp_clear_headers(&q);
            ts_send_error(req, 400, "Bad Request", "bad_request",
                          "known settings: delay_ms, jitter_ms (0..600000), "
                          "fail_rate, drop_rate (0..1)");
            return;
        }
    }
    evhttp_clear_headers(&q);
    ts.set = next;
    ts_send_settings(req);
}

static void ts_route(struct evhttp_request *req, void *arg)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    (void)arg;

    if (path == NULL) {
        ts_send_error(req, 400, "Bad Request", "bad_request", "bad request line");
    } else if (strcmp(path, "/v1/tax") == 0) {
        ts_handle_tax(req, uri);
    } else if (strcmp(path, "/stats") == 0 && cmd == EVHTTP_REQ_GET) {
        ts_handle_stats(req, uri, false);
    } else if (strcmp(path, "/stats/reset") == 0 && cmd == EVHTTP_REQ_POST) {
        ts_handle_stats(req, uri, true);
    } else if (strcmp(path, "/control") == 0) {
        ts_handle_control(req, uri);
    } else if (strcmp(path, "/stats") == 0 || strcmp(path, "/stats/reset") == 0) {
        ts_send_error(req, 405, "Method Not Allowed", "method_not_allowed",
                      "GET /stats or POST /stats/reset");
    } else {
        ts_send_error(req, 404, "Not Found", "not_found", "no such route");
    }
}

/* ---- startup and shutdown ---- */

static void ts_on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    event_base_loopbreak(ts.base);
}

static void ts_usage(FILE *f)
{
    fprintf(f, "usage: quotecache-taxsim [--listen HOST:PORT] [--delay-ms N] [--jitter-ms N]\n"
               "                         [--fail-rate F] [--drop-rate F] [--seed S]\n");
}

static int ts_bad_flag(const char *fmt, const char *arg)
{
    fprintf(stderr, "quotecache-taxsim: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    return 2;
}

/* Splits "HOST:PORT" (HOST may be [v6]). Returns 0, or -1 when malformed. */
static int ts_parse_listen(const char *s, char *host, size_t hostlen, unsigned short *port)
{
    const char *colon = strrchr(s, ':');
    const char *h = s;
    size_t n;
    long long p;
    if (colon == NULL || ts_parse_uint(colon + 1, TS_MAX_PORT, &p) != 0)
        return -1;
    n = (size_t)(colon - s);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n == 0 || n >= hostlen)
        return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    *port = (unsigned short)p;
    return 0;
}

int main(int argc, char **argv)
{
    char host[256] = "127.0.0.1";
    unsigned short port = 9090;
    long long seed = 1, n;
    struct evhttp_bound_socket *bound;
    struct event *sigterm, *sigint;

    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i], *val;
        char name[32];
        const char *eq = strchr(flag, '=');
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            ts_usage(stdout);
            return 0;
        }
        if (strncmp(flag, "--", 2) != 0 ||
            (size_t)(eq != NULL ? eq - flag : (ptrdiff_t)strlen(flag)) >= sizeof name)
            return ts_bad_flag("unknown argument %s (see --help)", flag);
        if (eq != NULL) {
            memcpy(name, flag, (size_t)(eq - flag));
            name[eq - flag] = '\0';
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", flag);
            if (i + 1 >= argc)
                return ts_bad_flag("%s needs a value", flag);
            val = argv[++i];
        }
        if (strcmp(name, "--listen") == 0) {
            if (ts_parse_listen(val, host, sizeof host, &port) != 0)
                return ts_bad_flag("--listen wants HOST:PORT, got '%s'", val);
        } else if (strcmp(name, "--delay-ms") == 0) {
            if (ts_apply_setting(&ts.set, "delay_ms", val) != 0)
                return ts_bad_flag("--delay-ms wants an integer 0..600000, got '%s'", val);
        } else if (strcmp(name, "--jitter-ms") == 0) {
            if (ts_apply_setting(&ts.set, "jitter_ms", val) != 0)
                return ts_bad_flag("--jitter-ms wants an integer 0..600000, got '%s'", val);
        } else if (strcmp(name, "--fail-rate") == 0) {
            if (ts_apply_setting(&ts.set, "fail_rate", val) != 0)
                return ts_bad_flag("--fail-rate wants a fraction 0..1, got '%s'", val);
        } else if (strcmp(name, "--drop-rate") == 0) {
            if (ts_apply_setting(&ts.set, "drop_rate", val) != 0)
                return ts_bad_flag("--drop-rate wants a fraction 0..1, got '%s'", val);
        } else if (strcmp(name, "--seed") == 0) {
            if (ts_parse_uint(val, INT64_MAX, &n) != 0)
                return ts_bad_flag("--seed wants a non-negative integer, got '%s'", val);
            seed = n;
        } else {
            return ts_bad_flag("unknown flag %s (see --help)", name);
        }
    }
    if (ts.set.fail_rate + ts.set.drop_rate > 1.0)
        return ts_bad_flag("%s: --fail-rate plus --drop-rate must not exceed 1", "flags");
    ts.rng = (uint64_t)seed;

    signal(SIGPIPE, SIG_IGN);
    ts.base = event_base_new();
    ts.http = ts.base != NULL ? evhttp_new(ts.base) : NULL;
    if (ts.http == NULL) {
        fprintf(stderr, "quotecache-taxsim: cannot create the event loop\n");
        return 1;
    }
    evhttp_set_gencb(ts.http, ts_route, NULL);
    evhttp_set_allowed_methods(ts.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
    bound = evhttp_bind_socket_with_handle(ts.http, host, port);
    if (bound == NULL) {
        fprintf(stderr, "quotecache-taxsim: cannot listen on %s:%u: %s\n", host, port,
                strerror(errno));
        evhttp_free(ts.http);
        event_base_free(ts.base);
        return 1;
    }
    {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        evutil_socket_t fd = evhttp_bound_socket_get_fd(bound);
        if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
            if (ss.ss_family == AF_INET)
                port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            else if (ss.ss_family == AF_INET6)
                port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
        fprintf(stderr, "quotecache-taxsim: listening on %s:%u\n", host, port);
    }

    sigterm = evsignal_new(ts.base, SIGTERM, ts_on_signal, NULL);
    sigint = evsignal_new(ts.base, SIGINT, ts_on_signal, NULL);
    if (sigterm == NULL || sigint == NULL) {
        fprintf(stderr, "quotecache-taxsim: cannot install signal handlers\n");
        return 1;
    }
    evsignal_add(sigterm, NULL);
    evsignal_add(sigint, NULL);

    event_base_dispatch(ts.base);

    /* Requests whose client left are detached from any connection and would
     * not be freed by evhttp_free: free them here. */
    while (ts.pending != NULL) {
        struct ts_op *op = ts.pending;
        if (evhttp_request_get_connection(op->req) == NULL)
            evhttp_request_free(op->req);
        ts_op_free(op);
    }
    evhttp_free(ts.http);
    event_free(sigterm);
    event_free(sigint);
    event_base_free(ts.base);
    return 0;
}
