/* main: process life cycle. Parses the configuration (or checks it, for
 * --check-config), hands the process to the master (master.c), which forks
 * the workers; here each worker (a single-threaded libevent loop) wires its
 * modules together, starts listening, and shuts them down in order: drained
 * on SIGTERM/SIGINT, retired on SIGQUIT (a reload replaced it). */
#include <event2/event.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "quotecache/accesslog.h"
#include "quotecache/catalog.h"
#include "quotecache/config.h"
#include "quotecache/invalidate.h"
#include "quotecache/key.h"
#include "quotecache/listener.h"
#include "quotecache/log.h"
#include "quotecache/lookup.h"
#include "quotecache/master.h"
#include "quotecache/mem.h"
#include "quotecache/pgpool.h"
#include "quotecache/rcache.h"
#include "quotecache/server.h"
#include "quotecache/sql.h"
#include "quotecache/tax.h"
#include "quotecache/proxy.h"

/* Changes arrive by LISTEN; the periodic reload is only a backstop. */
#define CATALOG_REFRESH_MS 10000
#define PG_QUEUE_MAX 1024
#define TAX_MAX_CONNS 256
#define UPSTREAM_MAX_CONNS 512
/* Descriptors a worker needs besides client, admin, PostgreSQL and tax
 * connections: stdio, listeners, the event base, Redis, LISTEN, logs. */
#define FD_RESERVE 48
/* Below this many client connections, refuse to start rather than clamp. */
#define FD_MIN_CLIENTS 16

static int tax_max_conns = TAX_MAX_CONNS;
/* --upstream's connections, in use and idle (its pool is as deep as this). */
static int upstream_max_conns = UPSTREAM_MAX_CONNS;

typedef struct worker {
    qc_config *cfg;
    struct event_base *base;
    pgpool *pool;
    tax_client *tax;
    catalog *cat;
    rcache *rc;
    lookup *lk;
    invalidator *inv;
    proxy *px;
    server *srv;
    access_log *alog; /* NULL: --access-log off */
    struct event *sigterm, *sigint, *sigquit, *sigusr1, *drain, *warmup;
    struct timespec stop_at;
    struct timespec listen_by; /* a deferred start listens by then, catalog or not */
    int ready_fd;              /* tells the master we listen; -1 once told */
    bool stopping;
    bool retiring; /* SIGQUIT: finish every connection, not only requests */
    int status;    /* exit status of the worker */
} worker;

static void worker_redis_state(void *arg, bool up)
{
    worker *w = arg;
    if (w->px != NULL)
        proxy_redis_state(w->px, up);
    if (w->lk == NULL)
        return;
    if (!up) {
        lookup_redis_down(w->lk);
        return;
    }
    lookup_redis_up(w->lk);
    /* A reconnect bumps nothing by itself (rcache_guard_generations): the
     * shared cache survives restarts of any instance. When the connection's
     * check did move the global generation (Redis lost data, or we owed an
     * invalidation), loads in flight here recorded the old counters: they
     * reload, and the in-process copies go too. */
    if (rcache_connect_bumped(w->rc))
        lookup_invalidate_all(w->lk);
}

/* --redis-cluster: the seeds, and the hash of the dimension counters
 * (key.h). */
static rcache *worker_rcache_cluster(worker *w, const qc_config *cfg)
{
    const char *hosts[CONFIG_CLUSTER_SEEDS_MAX];
    int ports[CONFIG_CLUSTER_SEEDS_MAX];
    char dims[KEY_MAX];

    for (int i = 0; i < cfg->redis_cluster_n; i++) {
        hosts[i] = cfg->redis_cluster_seeds[i].host;
        ports[i] = cfg->redis_cluster_seeds[i].port;
    }
    key_dims(dims, cfg->key_version);
    return rcache_new_cluster(w->base, hosts, ports, cfg->redis_cluster_n, dims,
                              cfg->redis_timeout_ms, worker_redis_state, w);
}

static double ms_until(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(t->tv_sec - now.tv_sec) * 1e3 + (double)(t->tv_nsec - now.tv_nsec) / 1e6;
}

static void deadline_in(struct timespec *t, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, t);
    t->tv_sec += ms / 1000;
    t->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

/* A stopping worker is done when every accepted request is answered (and,
 * when retiring, every connection closed: each answer now closes its
 * connection, so keep-alive clients move to the new workers without
 * losing a request), or when --shutdown-timeout passes. */
static bool drained(const worker *w)
{
    if (w->srv == NULL)
        return true;
    if (server_inflight(w->srv) > 0)
        return false;
    return !w->retiring || server_connections(w->srv) == 0;
}

static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker *w = arg;
    if (drained(w) || ms_until(&w->stop_at) <= 0) {
        event_base_loopbreak(w->base);
        return;
    }
    struct timeval tv = {0, 20 * 1000};
    evtimer_add(w->drain, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    worker *w = arg;
    if (w->stopping)
        return;
    w->stopping = true;
    w->retiring = sig == SIGQUIT;
    log_info("signal %d: %s (at most %d ms)", (int)sig,
             w->retiring ? "retiring: finishing open connections" : "draining",
             w->cfg->shutdown_timeout_ms);
    if (w->srv)
        server_stop_accepting(w->srv);
    deadline_in(&w->stop_at, w->cfg->shutdown_timeout_ms);
    on_drain(-1, 0, w);
}

/* SIGUSR1 (forwarded by the master): logrotate moved the access log. */
static void on_reopen(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    worker *w = arg;
    access_log_reopen(w->alog);
}

/* Opens the server on the inherited sockets and tells the master. */
static void worker_listen(worker *w)
{
    char err[512] = "";
    server_deps deps = {w->cfg, w->lk, w->cat, w->pool, w->tax, w->rc, w->inv, w->px, w->alog};
    w->srv = server_new(w->base, &deps, err, sizeof(err));
    if (w->srv == NULL) {
        fprintf(stderr, "quotecache: %s\n", err);
        w->status = 1;
        event_base_loopbreak(w->base);
        return;
    }
    log_debug("worker listening");
    if (w->ready_fd >= 0) {
        (void)!write(w->ready_fd, "R", 1);
        close(w->ready_fd);
        w->ready_fd = -1;
    }
}

/* A replacement worker takes connections only once its catalog is loaded,
 * so that the requests it takes over are answered as its predecessor would
 * have answered them; bounded, so that a PostgreSQL outage cannot keep it
 * from ever serving. */
static void on_warmup(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker *w = arg;
    if (w->stopping)
        return;
    if (catalog_ready(w->cat) || ms_until(&w->listen_by) <= 0) {
        worker_listen(w);
        return;
    }
    struct timeval tv = {0, 10 * 1000};
    evtimer_add(w->warmup, &tv);
}

/* The worker's loop. epoll with libevent's changelist: an event removed and
 * added again in one pass of the loop (the tax client's evhttp connections
 * disabling and enabling their reads, a tax or PostgreSQL socket armed for
 * writing and disarmed) costs no epoll_ctl, only the net
 * change is applied before epoll_wait: about half of a miss's 13 epoll_ctl
 * calls (docs/benchmarks.md). libevent's caveat for the flag is fds cloned
 * by dup() in the loop; the worker registers none (the access log's dup of
 * stdout is written, never watched). */
static struct event_base *worker_base_new(void)
{
    struct event_config *cfg = event_config_new();
    if (cfg == NULL)
        return NULL;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return base;
}

static int worker_start(worker *w, bool defer, char *err, size_t errlen)
{
    const qc_config *cfg = w->cfg;
    w->base = worker_base_new();
    if (w->base == NULL) {
        snprintf(err, errlen, "cannot create the event loop");
        return -1;
    }
    w->alog = access_log_open(w->base, cfg->access_log, err, errlen);
    if (w->alog == NULL && err[0] != '\0')
        return -1;
    char twhy[200];
    w->tax = tax_client_new(w->base, cfg->tax_url, cfg->tax_timeout_ms, tax_max_conns, twhy,
                            sizeof(twhy));
    if (w->tax == NULL) {
        snprintf(err, errlen, "--tax-url: %s", twhy);
        return -1;
    }
    if (cfg->upstream != NULL) {
        char uwhy[200];
        upstream *up = upstream_new(w->base, "upstream", cfg->upstream, cfg->upstream_timeout_ms,
                                    (size_t)cfg->max_body, upstream_max_conns, uwhy, sizeof(uwhy));
        if (up == NULL) {
            snprintf(err, errlen, "--upstream: %s", uwhy);
            return -1;
        }
        routes *rt = NULL;
        if (cfg->routes_file != NULL) {
            char why[400];
            rt = routes_load(cfg->routes_file, why, sizeof(why));
            if (rt == NULL) {
                snprintf(err, errlen, "--routes: %s", why);
                upstream_free(up);
                return -1;
            }
        }
        w->px = proxy_new(up, rt, (size_t)cfg->local_cache_bytes);
    }
    w->pool = pgpool_new(w->base, cfg->postgres, cfg->pg_pool, cfg->pg_timeout_ms, PG_QUEUE_MAX,
                         sql_statements, SQL_COUNT);
    w->cat = catalog_new(w->base, w->pool, CATALOG_REFRESH_MS);
    if (cfg->redis_enabled) {
        char marker[KEY_MAX + 16], global[KEY_MAX];
        if (cfg->redis_cluster_n > 0)
            w->rc = worker_rcache_cluster(w, cfg);
        else
            w->rc = rcache_new(w->base, cfg->redis.host, cfg->redis.port, cfg->redis_timeout_ms,
                               worker_redis_state, w);
        /* key.h's layout: qc:<version>:gen, and its marker next to it. */
        key_global_gen(global, cfg->key_version);
        snprintf(marker, sizeof(marker), "%s:checked", global);
        rcache_guard_generations(w->rc, marker, global);
    }
    if (w->px != NULL)
        proxy_attach(w->px, w->base, w->rc, cfg->key_version, cfg->lock_ttl_ms,
                     cfg->upstream_timeout_ms);
    w->lk = lookup_new(w->base, cfg, w->pool, w->tax, w->cat, w->rc);
    w->inv = invalidate_new(w->base, cfg, w->lk, w->cat, w->rc, w->pool);
    w->sigterm = evsignal_new(w->base, SIGTERM, on_signal, w);
    w->sigint = evsignal_new(w->base, SIGINT, on_signal, w);
    w->sigquit = evsignal_new(w->base, SIGQUIT, on_signal, w);
    w->sigusr1 = evsignal_new(w->base, SIGUSR1, on_reopen, w);
    w->drain = evtimer_new(w->base, on_drain, w);
    w->warmup = evtimer_new(w->base, on_warmup, w);
    evsignal_add(w->sigterm, NULL);
    evsignal_add(w->sigint, NULL);
    evsignal_add(w->sigquit, NULL);
    evsignal_add(w->sigusr1, NULL);
    if (defer) {
        deadline_in(&w->listen_by, cfg->pg_timeout_ms + 1000);
        on_warmup(-1, 0, w);
    } else {
        worker_listen(w);
    }
    return 0;
}

/* Teardown order matters: see lookup.h. */
/* Runs what is ready on the loop a few times without waiting: deferred
 * answers get written out before their connections are closed. */
static void worker_flush(worker *w)
{
    for (int i = 0; w->base && i < 4; i++)
        event_base_loop(w->base, EVLOOP_NONBLOCK);
}

static void worker_stop(worker *w)
{
    if (w->lk)
        lookup_close(w->lk);
    worker_flush(w); /* deferred work sees the closing flag and answers */
    invalidate_free(w->inv);
    proxy_close(w->px); /* before the rcache goes: see proxy.h */
    rcache_free(w->rc);
    pgpool_free(w->pool);
    tax_client_free(w->tax);
    proxy_free(w->px); /* its 503s go out with the flush below */
    lookup_free(w->lk);
    catalog_free(w->cat);
    worker_flush(w); /* the 503s just given reach their clients */
    server_free(w->srv);
    /* Freeing the signal events restores the default actions: a second
     * SIGTERM (an impatient operator, a supervisor) would then kill a
     * worker that is already stopping. Block, free, ignore, unblock: one
     * that arrives meanwhile is discarded. */
    sigset_t stops, old;
    sigemptyset(&stops);
    sigaddset(&stops, SIGTERM);
    sigaddset(&stops, SIGINT);
    sigaddset(&stops, SIGQUIT);
    sigaddset(&stops, SIGUSR1);
    sigprocmask(SIG_BLOCK, &stops, &old);
    struct event *evs[] = {w->sigterm, w->sigint, w->sigquit, w->sigusr1, w->drain, w->warmup};
    for (size_t i = 0; i < QC_ARRAY_LEN(evs); i++) {
        if (evs[i])
            event_free(evs[i]);
    }
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    sigprocmask(SIG_SETMASK, &old, NULL);
    access_log_free(w->alog); /* the last lines, written out */
    if (w->base)
        event_base_free(w->base);
}

static int fit_fd_limit(qc_config *cfg, char *err, size_t errlen);

/* master_worker_fn: one worker, in the process the master forked. Its
 * descriptor limit is fitted again to its configuration, which a reload
 * may have changed (--max-conns, --pg-pool) since the master fitted it. */
static int worker_run(qc_config *cfg, int ready_fd, bool defer)
{
    worker w = {0};
    w.cfg = cfg;
    w.ready_fd = ready_fd;
    char err[512] = "";
    if (fit_fd_limit(cfg, err, sizeof(err)) < 0 || worker_start(&w, defer, err, sizeof(err)) < 0) {
        fprintf(stderr, "quotecache: %s\n", err);
        w.status = 1;
    } else if (w.status == 0) {
        event_base_dispatch(w.base);
    }
    if (w.ready_fd >= 0)
        close(w.ready_fd);
    worker_stop(&w);
    return w.status;
}

/* Raises RLIMIT_NOFILE to what --max-conns and the pools need (each worker
 * inherits it). When the hard limit is lower, clamps the client, tax and
 * --upstream connection bounds to it and says so in one line, so that
 * accept() at the bound is never an EMFILE and neither pool ever lacks a
 * descriptor for a connection within its bound; refuses (-1, err) when
 * even a small bound does not fit. */
static int fit_fd_limit(qc_config *cfg, char *err, size_t errlen)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0;
    bool up = cfg->upstream != NULL;
    rlim_t fixed = FD_RESERVE + SERVER_ADMIN_MAX_CONNS + (rlim_t)cfg->pg_pool + 1;
    /* The pools' bounds: a worker refitting after a reload keeps the
     * master's clamp. */
    rlim_t need = fixed + (rlim_t)cfg->max_conns + (rlim_t)tax_max_conns +
                  (up ? (rlim_t)upstream_max_conns : 0);
    if (rl.rlim_cur < need) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur >= need)
        return 0;
    /* A quarter of what is left for each pool, the rest for clients. */
    rlim_t room = rl.rlim_cur > fixed ? rl.rlim_cur - fixed : 0;
    rlim_t tax = room / 4 < (rlim_t)tax_max_conns ? room / 4 : (rlim_t)tax_max_conns;
    rlim_t upc = 0;
    if (up)
        upc = room / 4 < (rlim_t)upstream_max_conns ? room / 4 : (rlim_t)upstream_max_conns;
    rlim_t clients = room - tax - upc;
    if (room < tax + upc + FD_MIN_CLIENTS || tax < 4 || (up && upc < 4)) {
        snprintf(err, errlen, "RLIMIT_NOFILE is %llu (hard %llu): at least %llu descriptors needed",
                 (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
                 (unsigned long long)(fixed + FD_MIN_CLIENTS + 4 + (up ? 4 : 0)));
        return -1;
    }
    char upstream_part[64] = "";
    if (up)
        snprintf(upstream_part, sizeof(upstream_part), ", %llu upstream", (unsigned long long)upc);
    log_warn("RLIMIT_NOFILE is %llu (hard limit), below the %llu that --max-conns %d needs: "
             "serving at most %llu client and %llu tax connections%s",
             (unsigned long long)rl.rlim_cur, (unsigned long long)need, cfg->max_conns,
             (unsigned long long)clients, (unsigned long long)tax, upstream_part);
    cfg->max_conns = (int)clients;
    tax_max_conns = (int)tax;
    if (up)
        upstream_max_conns = (int)upc;
    return 0;
}

/* --check-config: every problem of the configuration, then whether the
 * listeners can be bound, one line each (like nginx -t). Exit 0 or 2. */
static int check_config(const qc_config *cfg, const config_problems *probs)
{
    for (int i = 0; i < probs->n; i++)
        fprintf(stderr, "quotecache: %s\n", probs->line[i]);
    if (probs->dropped > 0)
        fprintf(stderr, "quotecache: ... and %d more problems\n", probs->dropped);
    int bad = probs->n + probs->dropped;
    char err[512];
    /* Port 0: the address itself was bad, already said above. */
    if (cfg->listen.port != 0 && listener_probe(&cfg->listen, err, sizeof(err)) < 0) {
        fprintf(stderr, "quotecache: --listen: %s\n", err);
        bad++;
    }
    if (cfg->admin_enabled && cfg->admin_listen.port != 0 &&
        listener_probe(&cfg->admin_listen, err, sizeof(err)) < 0) {
        fprintf(stderr, "quotecache: --admin-listen: %s\n", err);
        bad++;
    }
    if (access_log_probe(cfg->access_log, err, sizeof(err)) < 0) {
        fprintf(stderr, "quotecache: %s\n", err);
        bad++;
    }
    if (bad > 0)
        return 2;
    printf("quotecache: configuration ok%s%s\n", cfg->config_file ? ": " : "",
           cfg->config_file ? cfg->config_file : "");
    return 0;
}

int main(int argc, char **argv)
{
    qc_config *cfg = xcalloc(1, sizeof(*cfg));
    config_problems *probs = xcalloc(1, sizeof(*probs));
    int rc = config_load_all(cfg, argc, argv, probs);
    if (rc == CONFIG_EXIT || (rc == CONFIG_ERROR && !cfg->check_config)) {
        if (rc == CONFIG_ERROR)
            fprintf(stderr, "quotecache: %s\n", probs->line[0]);
        rc = rc == CONFIG_EXIT ? 0 : 2;
        goto done;
    }
    if (cfg->check_config) {
        rc = check_config(cfg, probs);
        goto done;
    }
    free(probs);
    probs = NULL;
    enum log_level level;
    log_level_parse(cfg->log_level, &level); /* checked by config_load_all */
    log_set_level(level);
    if (cfg->install_triggers) {
        char err[512] = "";
        rc = pgpool_exec_blocking(cfg->postgres, sql_install_triggers, err, sizeof(err));
        if (rc < 0)
            fprintf(stderr, "quotecache: --install-triggers: %s\n", err);
        else
            printf("quotecache: change-notification triggers installed\n");
        rc = rc < 0 ? 1 : 0;
        goto done;
    }
    char err[512] = "";
    if (fit_fd_limit(cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "quotecache: %s\n", err);
        rc = 1;
        goto done;
    }
    signal(SIGPIPE, SIG_IGN);
    return master_run(cfg, argc, argv, worker_run); /* owns cfg from here */
done:
    free(probs);
    config_free(cfg);
    free(cfg);
    return rc;
}
