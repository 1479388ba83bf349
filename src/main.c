/* main: process life cycle. Parses the configuration, forks the workers
 * (each a single-threaded libevent loop sharing the port via SO_REUSEPORT),
 * wires one worker's modules together, and shuts them down in order. */
#include <event2/event.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "quotecache/catalog.h"
#include "quotecache/config.h"
#include "quotecache/invalidate.h"
#include "quotecache/key.h"
#include "quotecache/log.h"
#include "quotecache/lookup.h"
#include "quotecache/mem.h"
#include "quotecache/pgpool.h"
#include "quotecache/rcache.h"
#include "quotecache/server.h"
#include "quotecache/sql.h"
#include "quotecache/tax.h"

/* Changes arrive by LISTEN; the periodic reload is only a backstop. */
#define CATALOG_REFRESH_MS 10000
#define PG_QUEUE_MAX 1024
#define TAX_MAX_CONNS 256
/* Descriptors a worker needs besides client, admin, PostgreSQL and tax
 * connections: stdio, listeners, the event base, Redis, LISTEN, logs. */
#define FD_RESERVE 48
/* Below this many client connections, refuse to start rather than clamp. */
#define FD_MIN_CLIENTS 16

static int tax_max_conns = TAX_MAX_CONNS;

typedef struct worker {
    qc_config *cfg;
    struct event_base *base;
    pgpool *pool;
    tax_client *tax;
    catalog *cat;
    rcache *rc;
    lookup *lk;
    invalidator *inv;
    server *srv;
    struct event *sigterm, *sigint, *drain;
    struct timespec stop_at;
    bool stopping;
} worker;

static void worker_redis_state(void *arg, bool up)
{
    worker *w = arg;
    if (w->lk == NULL)
        return;
    if (!up) {
        lookup_redis_down(w->lk);
        return;
    }
    /* A reconnect bumps nothing by itself (rcache_guard_generations): the
     * shared cache survives restarts of any instance. When the connection's
     * check did move the global generation (Redis lost data, or we owed an
     * invalidation), loads in flight here recorded the old counters: they
     * reload, and the in-process copies go too. */
    if (rcache_connect_bumped(w->rc))
        lookup_invalidate_all(w->lk);
}

static double ms_until(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(t->tv_sec - now.tv_sec) * 1e3 + (double)(t->tv_nsec - now.tv_nsec) / 1e6;
}

/* Polls until every accepted request is answered or the bound passes. */
static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker *w = arg;
    if (server_inflight(w->srv) == 0 || ms_until(&w->stop_at) <= 0) {
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
    log_info("signal %d: draining (at most %d ms)", (int)sig, w->cfg->shutdown_timeout_ms);
    server_stop_accepting(w->srv);
    clock_gettime(CLOCK_MONOTONIC, &w->stop_at);
    w->stop_at.tv_sec += w->cfg->shutdown_timeout_ms / 1000;
    w->stop_at.tv_nsec += (long)(w->cfg->shutdown_timeout_ms % 1000) * 1000000L;
    if (w->stop_at.tv_nsec >= 1000000000L) {
        w->stop_at.tv_sec++;
        w->stop_at.tv_nsec -= 1000000000L;
    }
    on_drain(-1, 0, w);
}

static int worker_start(worker *w, char *err, size_t errlen)
{
    const qc_config *cfg = w->cfg;
    w->base = event_base_new();
    w->tax = tax_client_new(w->base, cfg->tax_url, cfg->tax_timeout_ms, tax_max_conns);
    if (w->tax == NULL) {
        snprintf(err, errlen, "--tax-url: cannot use '%.100s'", cfg->tax_url);
        return -1;
    }
    w->pool = pgpool_new(w->base, cfg->postgres, cfg->pg_pool, cfg->pg_timeout_ms, PG_QUEUE_MAX,
                         sql_statements, SQL_COUNT);
    w->cat = catalog_new(w->base, w->pool, CATALOG_REFRESH_MS);
    if (cfg->redis_enabled) {
        char marker[KEY_MAX + 16], global[KEY_MAX];
        w->rc = rcache_new(w->base, cfg->redis.host, cfg->redis.port, cfg->redis_timeout_ms,
                           worker_redis_state, w);
        /* key.h's layout: qc:<version>:gen, and its marker next to it. */
        key_global_gen(global, cfg->key_version);
        snprintf(marker, sizeof(marker), "%s:checked", global);
        rcache_guard_generations(w->rc, marker, global);
    }
    w->lk = lookup_new(w->base, cfg, w->pool, w->tax, w->cat, w->rc);
    w->inv = invalidate_new(w->base, cfg, w->lk, w->cat, w->rc, w->pool);
    server_deps deps = {cfg, w->lk, w->cat, w->pool, w->tax, w->rc, w->inv};
    w->srv = server_new(w->base, &deps, err, errlen);
    if (w->srv == NULL)
        return -1;
    w->sigterm = evsignal_new(w->base, SIGTERM, on_signal, w);
    w->sigint = evsignal_new(w->base, SIGINT, on_signal, w);
    w->drain = evtimer_new(w->base, on_drain, w);
    evsignal_add(w->sigterm, NULL);
    evsignal_add(w->sigint, NULL);
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
    rcache_free(w->rc);
    pgpool_free(w->pool);
    tax_client_free(w->tax);
    lookup_free(w->lk);
    catalog_free(w->cat);
    worker_flush(w); /* the 503s just given reach their clients */
    server_free(w->srv);
    if (w->sigterm)
        event_free(w->sigterm);
    if (w->sigint)
        event_free(w->sigint);
    if (w->drain)
        event_free(w->drain);
    if (w->base)
        event_base_free(w->base);
}

static int worker_run(qc_config *cfg)
{
    worker w = {0};
    w.cfg = cfg;
    char err[512] = "";
    int rc = 0;
    if (worker_start(&w, err, sizeof(err)) < 0) {
        fprintf(stderr, "quotecache: %s\n", err);
        rc = 1;
    } else {
        log_info("listening on %s:%d", cfg->listen.host, cfg->listen.port);
        event_base_dispatch(w.base);
    }
    worker_stop(&w);
    return rc;
}

/* Raises RLIMIT_NOFILE to what --max-conns and the pools need (each worker
 * inherits it). When the hard limit is lower, clamps the client and tax
 * connection bounds to it and says so in one line, so that accept() at the
 * bound is never an EMFILE; refuses (-1, err) when even a small bound does
 * not fit. */
static int fit_fd_limit(qc_config *cfg, char *err, size_t errlen)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0;
    rlim_t fixed = FD_RESERVE + SERVER_ADMIN_MAX_CONNS + (rlim_t)cfg->pg_pool + 1;
    rlim_t need = fixed + (rlim_t)cfg->max_conns + TAX_MAX_CONNS;
    if (rl.rlim_cur < need) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur >= need)
        return 0;
    rlim_t room = rl.rlim_cur > fixed ? rl.rlim_cur - fixed : 0;
    rlim_t tax = room / 4 < TAX_MAX_CONNS ? room / 4 : TAX_MAX_CONNS;
    rlim_t clients = room - tax;
    if (clients < FD_MIN_CLIENTS || tax < 4) {
        snprintf(err, errlen, "RLIMIT_NOFILE is %llu (hard %llu): at least %llu descriptors needed",
                 (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
                 (unsigned long long)(fixed + FD_MIN_CLIENTS + 4));
        return -1;
    }
    log_warn("RLIMIT_NOFILE is %llu (hard limit), below the %llu that --max-conns %d needs: "
             "serving at most %llu client and %llu tax connections",
             (unsigned long long)rl.rlim_cur, (unsigned long long)need, cfg->max_conns,
             (unsigned long long)clients, (unsigned long long)tax);
    cfg->max_conns = (int)clients;
    tax_max_conns = (int)tax;
    return 0;
}

/* ---- several workers ---- */

static volatile sig_atomic_t master_signal;

static void master_on_signal(int sig)
{
    master_signal = sig;
}

static int run_workers(qc_config *cfg)
{
    pid_t pids[64];
    pid_t master = getpid();
    int n = 0;
    for (; n < cfg->workers; n++) {
        pids[n] = fork();
        if (pids[n] < 0) {
            fprintf(stderr, "quotecache: cannot start worker %d: %s\n", n + 1, strerror(errno));
            master_signal = SIGTERM; /* stop the ones already running */
            break;
        }
        if (pids[n] == 0) {
            /* A worker outliving its master would hold the port with no one
             * to stop it: go when the master goes, however it goes. */
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != master)
                _exit(1);
            int rc = worker_run(cfg);
            config_free(cfg);
            _exit(rc);
        }
    }
    struct sigaction sa = {0};
    sa.sa_handler = master_on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int failed = n < cfg->workers, alive = n;
    bool forwarded = false;
    while (alive > 0) {
        int status;
        pid_t p = waitpid(-1, &status, 0);
        if (p < 0 && errno == ECHILD)
            break;
        if (p > 0) {
            alive--;
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                failed = 1;
            if (!master_signal && !forwarded) {
                /* A worker died on its own: stop the rest rather than
                 * serve with fewer workers than configured silently. */
                log_error("worker %d exited unexpectedly; stopping", (int)p);
                master_signal = SIGTERM;
            }
        }
        if (master_signal && !forwarded) {
            forwarded = true;
            for (int i = 0; i < n; i++)
                kill(pids[i], SIGTERM);
        }
    }
    return failed;
}

int main(int argc, char **argv)
{
    qc_config cfg;
    char err[512] = "";
    int rc = config_load(&cfg, argc, argv, err, sizeof(err));
    if (rc != CONFIG_OK) {
        if (rc == CONFIG_ERROR)
            fprintf(stderr, "quotecache: %s\n", err);
        config_free(&cfg);
        return rc == CONFIG_EXIT ? 0 : 2;
    }
    enum log_level level;
    if (log_level_parse(cfg.log_level, &level) < 0) {
        fprintf(stderr, "quotecache: --log-level: expected debug, info, warn or error\n");
        config_free(&cfg);
        return 2;
    }
    log_set_level(level);
    if (cfg.install_triggers) {
        rc = pgpool_exec_blocking(cfg.postgres, sql_install_triggers, err, sizeof(err));
        if (rc < 0)
            fprintf(stderr, "quotecache: --install-triggers: %s\n", err);
        else
            printf("quotecache: change-notification triggers installed\n");
        config_free(&cfg);
        return rc < 0 ? 1 : 0;
    }
    if (fit_fd_limit(&cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "quotecache: %s\n", err);
        config_free(&cfg);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    rc = cfg.workers > 1 ? run_workers(&cfg) : worker_run(&cfg);
    config_free(&cfg);
    return rc;
}
