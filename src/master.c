/* master: owns the worker processes, the listening sockets they inherit,
 * and the metrics slots they record into.
 *
 * Sockets: one SO_REUSEPORT listener per worker index (public, and admin
 * when enabled), opened here once. Whoever serves an index (a restarted
 * worker, or both the old and the new worker during a reload) accepts from
 * that same socket, so a worker that dies or retires never takes queued
 * connections with it: they wait in the kernel for the next worker. Listen
 * addresses and the worker count therefore cannot change on reload.
 *
 * Metrics: slot 0 is the master's (worker restarts). Index i owns
 * SLOTS_PER_INDEX slots, one per worker of that index alive at once (the
 * current one and older generations still draining); a new worker takes
 * the lowest free one, so a restarted worker continues its predecessor's
 * slot and counts.
 *
 * A worker's life: STARTING (forked, not yet listening) -> RUNNING (sent
 * its ready byte) -> RETIRING (sent SIGQUIT because a newer worker of its
 * index is running) -> reaped. A worker that exits while STARTING or
 * RUNNING died: it is restarted with backoff, unless another worker of its
 * index is still alive to serve it. */
#include "quotecache/master.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "quotecache/accesslog.h"
#include "quotecache/listener.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"

#define MAX_WORKERS 64
#define SLOTS_PER_INDEX 8
#define MAX_PROCS (MAX_WORKERS * SLOTS_PER_INDEX)

enum wstate { W_STARTING, W_RUNNING, W_RETIRING };

static const char *const wstate_name[] = {"starting", "running", "retiring"};

typedef struct wproc {
    pid_t pid; /* 0: entry free */
    int index;
    size_t slot;
    unsigned gen;
    enum wstate state;
    int ready_fd; /* read end while STARTING, else -1 */
    double started_ms;
} wproc;

typedef struct windex {
    int pub_fd, admin_fd;
    int failures;      /* deaths in a row, each soon after its start */
    double restart_at; /* ms on the monotonic clock; 0 when none is due */
} windex;

typedef struct master {
    qc_config *cfg;
    int argc;
    char **argv;
    master_worker_fn run;
    int nworkers;
    windex idx[MAX_WORKERS];
    wproc procs[MAX_PROCS];
    unsigned gen;
    bool started; /* every worker of the first generation became ready */
    bool stopping;
    int status;
    int sfd;
    sigset_t oldmask;
} master;

int master_restart_delay_ms(int failures)
{
    if (failures <= 1)
        return 0;
    if (failures >= 9)
        return 10000;
    int ms = 100 << (failures - 2);
    return ms > 10000 ? 10000 : ms;
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void set_state(wproc *p, enum wstate to)
{
    log_debug("worker %d (index %d, gen %u): %s -> %s", (int)p->pid, p->index, p->gen,
              wstate_name[p->state], wstate_name[to]);
    p->state = to;
}

static size_t live_procs(const master *m)
{
    size_t n = 0;
    for (size_t i = 0; i < MAX_PROCS; i++)
        n += m->procs[i].pid != 0;
    return n;
}

/* The lowest slot of the index no live worker holds, or 0 when all are. */
static size_t free_slot(const master *m, int index)
{
    for (size_t s = 0; s < SLOTS_PER_INDEX; s++) {
        size_t slot = 1 + (size_t)index * SLOTS_PER_INDEX + s;
        bool held = false;
        for (size_t i = 0; i < MAX_PROCS && !held; i++)
            held = m->procs[i].pid != 0 && m->procs[i].slot == slot;
        if (!held)
            return slot;
    }
    return 0;
}

/* In the child: drop everything of the master's but this index's
 * sockets, then run the worker. Never returns. */
static void become_worker(master *m, int index, size_t slot, int ready_fd, bool defer, pid_t parent)
{
    /* A worker outliving its master would hold the port with no one to
     * stop it: go when the master goes, however it goes. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(1);
    signal(SIGHUP, SIG_IGN);  /* reloads are the master's business */
    signal(SIGUSR1, SIG_IGN); /* until the worker's handler: a reopen must not kill it */
    sigprocmask(SIG_SETMASK, &m->oldmask, NULL);
    close(m->sfd);
    for (size_t i = 0; i < MAX_PROCS; i++) {
        if (m->procs[i].pid != 0 && m->procs[i].ready_fd >= 0)
            close(m->procs[i].ready_fd);
    }
    for (int i = 0; i < m->nworkers; i++) {
        if (i == index)
            continue;
        close(m->idx[i].pub_fd);
        if (m->idx[i].admin_fd >= 0)
            close(m->idx[i].admin_fd);
    }
    metrics_use_slot(slot);
    m->cfg->listen_fd = m->idx[index].pub_fd;
    m->cfg->admin_fd = m->idx[index].admin_fd;
    int rc = m->run(m->cfg, ready_fd, defer);
    config_free(m->cfg);
    free(m->cfg);
    exit(rc); /* exit, not _exit: the sanitizer's leak check runs at exit */
}

static int spawn(master *m, int index, bool defer)
{
    size_t slot = free_slot(m, index);
    wproc *p = NULL;
    for (size_t i = 0; i < MAX_PROCS && p == NULL; i++)
        p = m->procs[i].pid == 0 ? &m->procs[i] : NULL;
    int fds[2];
    if (slot == 0 || p == NULL || pipe2(fds, O_CLOEXEC) < 0) {
        log_error("cannot start a worker for index %d: %s", index,
                  slot == 0 || p == NULL ? "too many workers still draining" : strerror(errno));
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        log_error("cannot start a worker: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        become_worker(m, index, slot, fds[1], defer, parent);
    }
    close(fds[1]);
    *p = (wproc){pid, index, slot, m->gen, W_STARTING, fds[0], now_ms()};
    log_debug("worker %d (index %d, gen %u, slot %zu): forked", (int)pid, index, m->gen, slot);
    return 0;
}

static void close_listeners(master *m)
{
    for (int i = 0; i < m->nworkers; i++) {
        if (m->idx[i].pub_fd >= 0)
            close(m->idx[i].pub_fd);
        if (m->idx[i].admin_fd >= 0)
            close(m->idx[i].admin_fd);
        m->idx[i].pub_fd = m->idx[i].admin_fd = -1;
    }
}

/* Stopping: the master's copies of the sockets go first, so the port
 * closes as soon as the workers stop accepting. */
static void stop_all(master *m, int sig)
{
    m->stopping = true;
    close_listeners(m);
    for (size_t i = 0; i < MAX_PROCS; i++) {
        if (m->procs[i].pid != 0)
            kill(m->procs[i].pid, sig);
    }
}

static bool gen_ready(const master *m, unsigned gen)
{
    int n = 0;
    for (size_t i = 0; i < MAX_PROCS; i++) {
        const wproc *p = &m->procs[i];
        n += p->pid != 0 && p->gen == gen && p->state == W_RUNNING;
    }
    return n == m->nworkers;
}

/* A worker is listening: older workers of its index retire. */
static void on_ready(master *m, wproc *p)
{
    close(p->ready_fd);
    p->ready_fd = -1;
    if (p->state == W_RETIRING)
        return; /* a newer worker of its index was ready first */
    set_state(p, W_RUNNING);
    for (size_t i = 0; i < MAX_PROCS; i++) {
        wproc *o = &m->procs[i];
        if (o->pid != 0 && o != p && o->index == p->index && o->gen < p->gen &&
            o->state != W_RETIRING) {
            set_state(o, W_RETIRING);
            kill(o->pid, SIGQUIT);
        }
    }
    if (!m->started) {
        /* The first generation starts one at a time, so a configuration a
         * worker refuses gives one line, not one per worker. Only the
         * first listens at once (so /healthz answers, "starting" or
         * "degraded"); the others take connections once their catalog is
         * loaded, so no quote they take is refused for want of it. */
        if (p->index + 1 < m->nworkers) {
            if (spawn(m, p->index + 1, true) < 0) {
                m->status = 1;
                stop_all(m, SIGTERM);
            }
            return;
        }
        m->started = true;
        log_info("listening on %s:%d with %d worker%s", m->cfg->listen.host, m->cfg->listen.port,
                 m->nworkers, m->nworkers > 1 ? "s" : "");
    } else if (gen_ready(m, p->gen) && p->gen == m->gen && p->gen > 0) {
        log_info("reload: generation %u serving", p->gen);
    }
}

static void describe_exit(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "was killed by signal %d", WTERMSIG(status));
    else
        snprintf(buf, len, "ended (status %d)", status);
}

/* Whether a worker of the current generation is alive for the index: if
 * not, one must be started (an older worker may serve it meanwhile). */
static bool index_current(const master *m, int index)
{
    for (size_t i = 0; i < MAX_PROCS; i++) {
        const wproc *p = &m->procs[i];
        if (p->pid != 0 && p->index == index && p->state != W_RETIRING && p->gen == m->gen)
            return true;
    }
    return false;
}

static void on_death(master *m, wproc *dead, int status)
{
    wproc p = *dead;
    dead->pid = 0;
    if (p.ready_fd >= 0)
        close(p.ready_fd);
    metrics_release_slot(p.slot);
    bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    char how[64];
    describe_exit(status, how, sizeof(how));
    if (m->stopping) {
        if (!clean)
            m->status = 1;
        return;
    }
    if (p.state == W_RETIRING) {
        log_info("worker %d (gen %u) retired", (int)p.pid, p.gen);
        return;
    }
    if (!m->started) {
        /* The worker said why on stderr when it could; a signal cannot. */
        if (!WIFEXITED(status))
            fprintf(stderr, "quotecache: worker %s while starting\n", how);
        m->status = 1;
        stop_all(m, SIGTERM);
        return;
    }
    windex *ix = &m->idx[p.index];
    ix->failures = now_ms() - p.started_ms < MASTER_STABLE_MS ? ix->failures + 1 : 1;
    if (index_current(m, p.index)) {
        log_error("worker %d (index %d, gen %u) %s; a newer worker serves its index", (int)p.pid,
                  p.index, p.gen, how);
        return;
    }
    int delay = master_restart_delay_ms(ix->failures);
    log_error("worker %d (index %d) %s; restarting in %d ms", (int)p.pid, p.index, how, delay);
    ix->restart_at = now_ms() + delay;
}

static void reap(master *m)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (size_t i = 0; i < MAX_PROCS; i++) {
            if (m->procs[i].pid == pid) {
                on_death(m, &m->procs[i], status);
                break;
            }
        }
    }
}

static void run_due_restarts(master *m)
{
    double now = now_ms();
    for (int i = 0; i < m->nworkers; i++) {
        windex *ix = &m->idx[i];
        if (ix->restart_at == 0 || ix->restart_at > now || m->stopping)
            continue;
        ix->restart_at = 0;
        metrics_inc(M_WORKER_RESTARTS);
        if (spawn(m, i, true) < 0)
            ix->restart_at = now + master_restart_delay_ms(++ix->failures);
    }
}

/* SIGHUP: the configuration is loaded again from the same flags, the same
 * environment and the (re-read) file; a new generation of workers starts
 * with it and each old worker retires once its successor listens. Any
 * problem keeps the old configuration and workers. */
static void reload(master *m)
{
    if (m->stopping || !m->started) {
        log_warn("reload ignored: %s", m->stopping ? "stopping" : "still starting");
        return;
    }
    qc_config *n = xcalloc(1, sizeof(*n));
    config_problems *probs = xcalloc(1, sizeof(*probs));
    char err[256];
    const char *refused = NULL;
    if (config_load_all(n, m->argc, m->argv, probs) != CONFIG_OK) {
        for (int i = 0; i < probs->n; i++)
            log_error("reload refused: %s", probs->line[i]);
        refused = "";
    } else if (config_reloadable(m->cfg, n, err, sizeof(err)) < 0 ||
               access_log_probe(n->access_log, err, sizeof(err)) < 0) {
        refused = err; /* a log the new workers cannot open: they would die at start */
    } else {
        for (int i = 0; i < m->nworkers && refused == NULL; i++) {
            if (free_slot(m, i) == 0)
                refused = "older workers are still draining; try again later";
        }
    }
    free(probs);
    if (refused != NULL) {
        if (refused[0])
            log_error("reload refused: %s", refused);
        config_free(n);
        free(n);
        return;
    }
    enum log_level level;
    log_level_parse(n->log_level, &level);
    log_set_level(level);
    config_free(m->cfg);
    free(m->cfg);
    m->cfg = n;
    m->gen++;
    log_info("reload: starting generation %u", m->gen);
    for (int i = 0; i < m->nworkers; i++) {
        m->idx[i].restart_at = 0; /* the new worker replaces any pending restart */
        spawn(m, i, true);
    }
}

static void on_signal(master *m)
{
    struct signalfd_siginfo si;
    while (read(m->sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        switch (si.ssi_signo) {
        case SIGCHLD:
            reap(m);
            break;
        case SIGHUP:
            reload(m);
            break;
        case SIGUSR1: /* logrotate: each worker reopens its access log */
            for (size_t i = 0; i < MAX_PROCS; i++) {
                if (m->procs[i].pid != 0)
                    kill(m->procs[i].pid, SIGUSR1);
            }
            break;
        default:
            if (!m->stopping)
                log_info("signal %u: stopping the workers", si.ssi_signo);
            stop_all(m, SIGTERM);
            break;
        }
    }
}

/* Poll timeout: until the next restart is due, or forever. */
static int next_timeout_ms(const master *m)
{
    double next = 0;
    for (int i = 0; i < m->nworkers; i++) {
        double at = m->idx[i].restart_at;
        if (at != 0 && (next == 0 || at < next))
            next = at;
    }
    if (next == 0)
        return -1;
    double wait = next - now_ms();
    return wait <= 0 ? 0 : (int)wait + 1;
}

static void loop(master *m)
{
    struct pollfd pfd[1 + MAX_PROCS];
    wproc *owner[1 + MAX_PROCS];
    while (!m->stopping || live_procs(m) > 0) {
        size_t n = 0;
        pfd[n++] = (struct pollfd){.fd = m->sfd, .events = POLLIN};
        for (size_t i = 0; i < MAX_PROCS; i++) {
            wproc *p = &m->procs[i];
            if (p->pid != 0 && p->ready_fd >= 0) {
                owner[n] = p;
                pfd[n++] = (struct pollfd){.fd = p->ready_fd, .events = POLLIN};
            }
        }
        if (poll(pfd, n, next_timeout_ms(m)) < 0 && errno != EINTR)
            break;
        for (size_t i = 1; i < n; i++) {
            if (pfd[i].revents == 0 || owner[i]->ready_fd != pfd[i].fd)
                continue;
            char c;
            if (read(pfd[i].fd, &c, 1) == 1) {
                on_ready(m, owner[i]);
            } else { /* it died before listening; SIGCHLD tells how */
                close(owner[i]->ready_fd);
                owner[i]->ready_fd = -1;
            }
        }
        if (pfd[0].revents)
            on_signal(m);
        run_due_restarts(m);
    }
}

static int open_listeners(master *m, char *err, size_t errlen)
{
    for (int i = 0; i < m->nworkers; i++)
        m->idx[i].pub_fd = m->idx[i].admin_fd = -1;
    for (int i = 0; i < m->nworkers; i++) {
        m->idx[i].pub_fd = listener_open(&m->cfg->listen, err, errlen);
        if (m->idx[i].pub_fd < 0)
            return -1;
        if (m->cfg->admin_enabled) {
            m->idx[i].admin_fd = listener_open(&m->cfg->admin_listen, err, errlen);
            if (m->idx[i].admin_fd < 0)
                return -1;
        }
    }
    return 0;
}

int master_run(qc_config *cfg, int argc, char **argv, master_worker_fn run)
{
    master *m = xcalloc(1, sizeof(*m));
    m->cfg = cfg;
    m->argc = argc;
    m->argv = argv;
    m->run = run;
    m->nworkers = cfg->workers > MAX_WORKERS ? MAX_WORKERS : cfg->workers;
    char err[512];
    if (metrics_shared_init(1 + (size_t)m->nworkers * SLOTS_PER_INDEX) < 0) {
        fprintf(stderr, "quotecache: cannot map the metrics region: %s\n", strerror(errno));
        m->status = 1;
        goto done;
    }
    if (open_listeners(m, err, sizeof(err)) < 0) {
        fprintf(stderr, "quotecache: %s\n", err);
        m->status = 1;
        goto done;
    }
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, &m->oldmask);
    m->sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (m->sfd < 0 || spawn(m, 0, false) < 0) {
        fprintf(stderr, "quotecache: cannot start the workers: %s\n", strerror(errno));
        m->status = 1;
    } else {
        loop(m);
    }
    if (m->sfd >= 0)
        close(m->sfd);
    /* The workers are gone and we are about to exit: a stop signal still
     * pending (sent again while we stopped) must not kill us with the
     * default action once unblocked. Ignoring discards it. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    sigprocmask(SIG_SETMASK, &m->oldmask, NULL);
done:
    close_listeners(m);
    int status = m->status;
    config_free(m->cfg);
    free(m->cfg);
    free(m);
    return status;
}
