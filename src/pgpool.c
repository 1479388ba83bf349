/* pgpool: owns the PostgreSQL connections of one worker, their state
 * machines (connect, prepare, idle, busy, down), the queue of queries waiting
 * for a connection, and every query op until its callback has fired. */
#include "quotecache/pgpool.h"

#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/backoff.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"

#define PGPOOL_MAX_PARAMS 8
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
/* A listening connection is asked for a round trip this long after its last
 * answer, and dropped when the answer takes longer than HEARTBEAT_WAIT_MS:
 * a backend that stopped (SIGSTOP, a hung host behind a live TCP peer)
 * delivers no notifications and no error, only silence. */
#define HEARTBEAT_EVERY_MS 1000
#define HEARTBEAT_WAIT_MS 2000
/* The listening connection is one per worker and cheap to retry; until it
 * is back every cached answer is suspect, so it retries sooner. */
#define LISTEN_BACKOFF_MAX_MS 1000
/* Cancel requests being sent by helper threads, all pools of the process
 * together. PQcancel blocks until the server has the request; against a
 * host that does not answer that is a TCP connect timeout, so without a
 * bound a dead server would collect threads. Past it the connection is
 * only dropped, as before cancels existed. */
#define MAX_CANCELS 16
/* Statements one connection of a query pool carries at once, in libpq's
 * pipeline mode: each is followed by its own Sync, so each runs in its own
 * implicit transaction and an error aborts only that statement. Deep enough
 * that a miss-path burst does not wait in our queue for a round trip per
 * statement; shallow enough that a slow statement at the head delays few. */
#define PIPE_MAX 32
/* How often a cancel request is repeated while its statement runs on. */
#define CANCEL_RESEND_MS 100

/* C_BUSY: statements in flight (the ring of pg_conn), more may be added
 * while the ring has room on a pipelined connection.
 * C_BROKEN: a send failed inside a submit; the failure is handled from the
 * loop (conn_on_timer) so that no callback fires before the submit returns.
 * C_CANCELLING: the statement at the head of the ring passed its deadline
 * and was answered; a cancel request is on its way and the connection
 * waits (with a deadline of its own) for that statement's error before it
 * takes new work. Statements behind it stay in flight and keep their own
 * deadlines.
 * C_PING: a listening connection's heartbeat is waiting for its answer.
 * In C_IDLE the timer is a listening connection's next heartbeat. */
enum conn_state {
    C_DOWN,
    C_CONNECTING,
    C_PREPARING,
    C_IDLE,
    C_BUSY,
    C_BROKEN,
    C_CANCELLING,
    C_PING
};

typedef struct pg_conn pg_conn;

typedef struct pg_op {
    struct pg_op *next, *prev; /* queue links while waiting */
    pgpool *pool;
    int stmt;
    int nparams;
    char *params[PGPOOL_MAX_PARAMS];
    pgpool_cb *cb;
    void *arg;
    struct event *deadline;
    pg_conn *conn; /* the connection running it, NULL while queued */
} pg_op;

struct pg_conn {
    pgpool *pool;
    PGconn *pg;
    enum conn_state state;
    struct event *io;    /* socket readiness (one-shot while connecting) */
    struct event *wio;   /* write readiness while output is pending */
    struct event *timer; /* connect deadline, or reconnect backoff */
    int prep_next;
    backoff bo; /* reconnect delay */
    bool ever_up;
    bool pipelined; /* in libpq pipeline mode (query pools, once set up) */
    /* Statements in flight, in the order the server answers them; a NULL
     * slot is one whose op was already answered (deadline): its result is
     * read and dropped. */
    pg_op *ring[PIPE_MAX];
    int ring_head, ring_n;
    int cancel_left_ms; /* C_CANCELLING: until the connection gives up */
    PGresult *res;      /* first result of the statement at the head */
};

struct pgpool {
    struct event_base *base;
    char *conninfo;
    /* conninfo parsed, plus our TCP keepalive defaults where it sets none,
     * for PQconnectStartParams; NULL when it does not parse (then the raw
     * string is used and the connect reports the error). */
    char **kw, **vals;
    int timeout_ms;
    int queue_max;
    int queued;
    const pgpool_stmt *stmts;
    size_t nstmts;
    int size;
    pg_conn *conns;
    pg_op *head, *tail; /* FIFO of queries waiting for a connection */
    char *listen;       /* LISTEN channel, or NULL */
    bool warned_full;
    pgpool_notify_cb *on_notify;
    pgpool_ready_cb *on_ready;
    void *listen_arg;
};

static void conn_start(pg_conn *c);
static void conn_fail(pg_conn *c, const char *why);
static void pool_dispatch(pgpool *p);

static struct timeval ms_to_tv(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* ---- the ring of statements in flight on one connection ---- */

static int ring_depth(const pg_conn *c)
{
    return c->pipelined ? PIPE_MAX : 1;
}

static void ring_push(pg_conn *c, pg_op *op)
{
    c->ring[(c->ring_head + c->ring_n++) % PIPE_MAX] = op;
    op->conn = c;
}

/* Takes the head statement's op out (NULL when it was answered already). */
static pg_op *ring_pop(pg_conn *c)
{
    pg_op *op = c->ring[c->ring_head];
    c->ring[c->ring_head] = NULL;
    c->ring_head = (c->ring_head + 1) % PIPE_MAX;
    c->ring_n--;
    if (op != NULL)
        op->conn = NULL;
    return op;
}

/* Detaches op, answered at its deadline, from its slot; its statement's
 * result will be dropped. Returns true when it is the head (running). */
static bool ring_abandon(pg_conn *c, pg_op *op)
{
    for (int i = 0; i < c->ring_n; i++) {
        int k = (c->ring_head + i) % PIPE_MAX;
        if (c->ring[k] == op) {
            c->ring[k] = NULL;
            op->conn = NULL;
            return i == 0;
        }
    }
    return false;
}

/* Empties the ring into ops (PIPE_MAX slots); returns how many were live. */
static int ring_take(pg_conn *c, pg_op **ops)
{
    int n = 0;
    while (c->ring_n > 0) {
        pg_op *op = ring_pop(c);
        if (op != NULL)
            ops[n++] = op;
    }
    c->ring_head = 0;
    return n;
}

/* ---- ops ---- */

static void queue_remove(pgpool *p, pg_op *op)
{
    if (op->prev)
        op->prev->next = op->next;
    else
        p->head = op->next;
    if (op->next)
        op->next->prev = op->prev;
    else
        p->tail = op->prev;
    op->next = op->prev = NULL;
    p->queued--;
}

/* Puts an op back at the head of the queue (its deadline runs on). */
static void queue_push_front(pgpool *p, pg_op *op)
{
    op->prev = NULL;
    op->next = p->head;
    if (p->head)
        p->head->prev = op;
    else
        p->tail = op;
    p->head = op;
    p->queued++;
}

/* Fires the op's callback once and frees the op. res may be NULL. */
static void op_finish(pg_op *op, const PGresult *res, const qc_error *err)
{
    event_free(op->deadline);
    op->cb(op->arg, res, err);
    for (int i = 0; i < op->nparams; i++)
        free(op->params[i]);
    free(op);
}

static void op_fail(pg_op *op, int status, const char *code, const char *msg)
{
    qc_error err;
    qc_error_set(&err, status, code, "%s", msg);
    op_finish(op, NULL, &err);
}

static atomic_int cancels_in_flight;

static void *cancel_thread(void *arg)
{
    PGcancel *cn = arg;
    char errbuf[256];
    /* A failure needs no report: the connection's own deadline in
     * C_CANCELLING then drops it. */
    (void)PQcancel(cn, errbuf, sizeof(errbuf));
    PQfreeCancel(cn);
    atomic_fetch_sub(&cancels_in_flight, 1);
    return NULL;
}

/* Sends a cancel request for c's running statement from a detached thread:
 * libpq 15 has no asynchronous cancel, and PQcancel (a fresh connection to
 * the server, one packet, wait for the close) must not stall the loop. The
 * thread owns only its PGcancel copy, never c. Returns -1 when no thread
 * could be started. */
static int conn_send_cancel(pg_conn *c)
{
    if (atomic_fetch_add(&cancels_in_flight, 1) >= MAX_CANCELS) {
        atomic_fetch_sub(&cancels_in_flight, 1);
        return -1;
    }
    PGcancel *cn = PQgetCancel(c->pg);
    pthread_attr_t attr;
    pthread_t tid;
    sigset_t all, old;
    int rc = -1;
    if (cn != NULL && pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        /* Signals stay with the loop thread (libevent's signal events). */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        rc = pthread_create(&tid, &attr, cancel_thread, cn) == 0 ? 0 : -1;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
    }
    if (rc < 0) {
        PQfreeCancel(cn);
        atomic_fetch_sub(&cancels_in_flight, 1);
    }
    return rc;
}

/* The head statement's op was answered at its deadline: stop the statement
 * on the server (it would otherwise go on, holding locks and a backend,
 * until it ends by itself), and keep the connection if the cancel works. */
static void conn_cancel(pg_conn *c)
{
    if (conn_send_cancel(c) < 0) {
        conn_fail(c, "query deadline passed");
        return;
    }
    c->state = C_CANCELLING;
    c->cancel_left_ms = c->pool->timeout_ms;
    struct timeval tv = ms_to_tv(CANCEL_RESEND_MS);
    evtimer_add(c->timer, &tv);
}

/* Still cancelling: the server ignores a cancel that reaches it between
 * two messages (in a pipeline, right as the statement before ends), so the
 * request is sent again until the statement ends or the connection's own
 * deadline passes. A resend refused by the thread bound waits a tick. */
static void conn_cancel_tick(pg_conn *c)
{
    c->cancel_left_ms -= CANCEL_RESEND_MS;
    if (c->cancel_left_ms <= 0) {
        conn_fail(c, "cancelled statement did not end in time");
        return;
    }
    (void)conn_send_cancel(c);
    struct timeval tv = ms_to_tv(CANCEL_RESEND_MS);
    evtimer_add(c->timer, &tv);
}

static void op_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pg_op *op = arg;
    pgpool *p = op->pool;
    pg_conn *c = op->conn;
    if (c != NULL) {
        /* Statements behind the head are not running yet: only dropped
         * (conn_cancel_stale_head cancels one that reaches the head). */
        if (ring_abandon(c, op) && c->state == C_BUSY)
            conn_cancel(c);
    } else {
        queue_remove(p, op);
    }
    op_fail(op, 504, "postgres_timeout", "PostgreSQL did not answer in time");
}

/* ---- connections ---- */

static void conn_close(pg_conn *c)
{
    if (c->io) {
        event_free(c->io);
        c->io = NULL;
    }
    if (c->wio) {
        event_free(c->wio);
        c->wio = NULL;
    }
    if (c->res) {
        PQclear(c->res);
        c->res = NULL;
    }
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    evtimer_del(c->timer);
    c->state = C_DOWN;
    c->pipelined = false;
}

static bool pool_any_up(const pgpool *p)
{
    for (int i = 0; i < p->size; i++) {
        enum conn_state st = p->conns[i].state;
        if (st == C_IDLE || st == C_BUSY || st == C_CANCELLING || st == C_PING)
            return true;
    }
    return false;
}

/* Nothing can serve the queue: answer it now rather than at each deadline,
 * so callers can fall back to stale copies at once. */
static void pool_fail_queue(pgpool *p)
{
    while (p->head != NULL) {
        pg_op *op = p->head;
        queue_remove(p, op);
        op_fail(op, 503, "postgres_unavailable", "PostgreSQL is unreachable");
    }
}

static void conn_fail(pg_conn *c, const char *why)
{
    pgpool *p = c->pool;
    if (c->state != C_CONNECTING || c->ever_up)
        log_warn("postgres: connection lost: %s", why);
    metrics_inc(M_PG_ERRORS);
    pg_op *ops[PIPE_MAX];
    int n = ring_take(c, ops);
    conn_close(c);
    /* Reconnect after a backoff that grows while PostgreSQL stays away. */
    struct timeval tv = ms_to_tv(backoff_next(&c->bo));
    evtimer_add(c->timer, &tv);
    for (int i = 0; i < n; i++)
        op_fail(ops[i], 503, "postgres_unavailable", "PostgreSQL connection lost");
    if (!pool_any_up(p))
        pool_fail_queue(p);
}

/* Defers conn_fail to the loop: see C_BROKEN. */
static void conn_break(pg_conn *c)
{
    log_warn("postgres: send failed: %s", PQerrorMessage(c->pg));
    c->state = C_BROKEN;
    struct timeval now = {0, 0};
    evtimer_add(c->timer, &now);
}

/* Pushes pending output; waits for writability when the socket is full. */
static void conn_flush(pg_conn *c)
{
    int r = PQflush(c->pg);
    if (r < 0) {
        conn_break(c);
    } else if (r == 1) {
        event_add(c->wio, NULL);
    }
}

static void conn_on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_flush(arg);
}

/* Ready for work; a listening connection also waits for its next
 * heartbeat (conn_on_timer). */
static void conn_set_idle(pg_conn *c)
{
    c->state = C_IDLE;
    if (c->pool->listen != NULL) {
        struct timeval tv = ms_to_tv(HEARTBEAT_EVERY_MS);
        evtimer_add(c->timer, &tv);
    } else {
        evtimer_del(c->timer);
    }
}

/* Sends "LISTEN <channel>" (the set-up step, and the heartbeat: it is
 * idempotent, one round trip, and keeps pg_stat_activity showing what the
 * connection is for). */
static void conn_send_listen(pg_conn *c)
{
    char sql[96];
    snprintf(sql, sizeof(sql), "LISTEN %s", c->pool->listen);
    if (!PQsendQuery(c->pg, sql))
        conn_break(c);
    else
        conn_flush(c);
}

static void conn_ping(pg_conn *c)
{
    c->state = C_PING;
    struct timeval tv = ms_to_tv(HEARTBEAT_WAIT_MS);
    evtimer_add(c->timer, &tv);
    conn_send_listen(c);
}

static void conn_ping_done(pg_conn *c)
{
    PGresult *r = c->res;
    c->res = NULL;
    bool ok = r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        conn_fail(c, "heartbeat failed");
        return;
    }
    conn_set_idle(c);
    pool_dispatch(c->pool);
}

/* Set-up is one step per statement to prepare, then LISTEN if asked. */
static size_t setup_steps(const pgpool *p)
{
    return p->nstmts + (p->listen ? 1 : 0);
}

static void conn_prepare_next(pg_conn *c)
{
    pgpool *p = c->pool;
    if ((size_t)c->prep_next == p->nstmts && p->listen) {
        conn_send_listen(c);
        return;
    }
    if ((size_t)c->prep_next == setup_steps(p)) {
        conn_set_idle(c); /* ends the connect deadline, which covered the set-up too */
        /* A query pool pipelines; a listening one keeps its LISTEN round
         * trips plain. Without pipeline mode a connection runs one at a time. */
        c->pipelined = p->listen == NULL && PQenterPipelineMode(c->pg) == 1;
        backoff_reset(&c->bo);
        if (c->ever_up)
            metrics_inc(M_PG_RECONNECTS);
        if (!c->ever_up || log_threshold <= LOG_DEBUG)
            log_info("postgres: connection ready");
        c->ever_up = true;
        if (p->on_ready)
            p->on_ready(p->listen_arg);
        if (c->state == C_IDLE)
            pool_dispatch(p);
        return;
    }
    const pgpool_stmt *s = &p->stmts[c->prep_next];
    if (!PQsendPrepare(c->pg, s->name, s->sql, s->nparams, NULL)) {
        conn_break(c);
        return;
    }
    conn_flush(c);
}

static bool ended_by_cancel(const PGresult *r)
{
    const char *code = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return code != NULL && strcmp(code, "57014") == 0; /* query_canceled */
}

/* The cancelled statement has ended, by the cancel or by itself first. The
 * connection is kept either way: a cancel request still on its way (or one
 * the server deferred past a message boundary, as it does in a pipeline)
 * can only end some later statement with query_canceled, and a live op
 * that meets one is run again (conn_statement_done), within its own
 * deadline. */
static void conn_cancelled(pg_conn *c, PGresult *r)
{
    bool by_cancel = ended_by_cancel(r);
    PQclear(r);
    if (c->ring_n == 0) {
        conn_set_idle(c);
    } else {
        c->state = C_BUSY; /* the statements behind it run on */
        evtimer_del(c->timer);
    }
    log_debug("postgres: statement after its deadline ended %s; connection kept",
              by_cancel ? "by the cancel" : "by itself");
    pool_dispatch(c->pool);
}

/* The statement at the head of the ring has ended (its Sync came back, or
 * without pipeline mode its last result): its op, if not yet answered at
 * its deadline, gets the result. */
static void conn_statement_done(pg_conn *c)
{
    PGresult *r = c->res;
    c->res = NULL;
    pg_op *op = ring_pop(c);
    metrics_inc(M_PG_STATEMENTS);
    if (c->state == C_CANCELLING) { /* op is NULL: the cancelled head */
        conn_cancelled(c, r);
        return;
    }
    if (c->ring_n == 0)
        conn_set_idle(c);
    if (op == NULL) {
        PQclear(r);
        pool_dispatch(c->pool);
        return;
    }
    if (ended_by_cancel(r)) {
        /* A cancel meant for a statement before it: not this op's failure. */
        log_debug("postgres: %s met a cancel meant for another statement; run again",
                  c->pool->stmts[op->stmt].name);
        PQclear(r);
        queue_push_front(c->pool, op);
        pool_dispatch(c->pool);
        return;
    }
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        op_finish(op, r, NULL);
    } else {
        metrics_inc(M_PG_ERRORS);
        log_error("postgres: %s: %s", c->pool->stmts[op->stmt].name,
                  r ? PQresultErrorMessage(r) : "no result");
        op_fail(op, 500, "postgres_error", "PostgreSQL query failed");
    }
    PQclear(r);
    pool_dispatch(c->pool);
}

/* An op answered at its deadline while behind the head has reached the
 * head, and the server is still on it (every result that had arrived was
 * read): cancel it as conn_cancel does for a running op. */
static void conn_cancel_stale_head(pg_conn *c)
{
    if (c->pg != NULL && c->state == C_BUSY && c->ring_n > 0 && c->ring[c->ring_head] == NULL)
        conn_cancel(c);
}

/* One command finished (PQgetResult gave NULL). */
static void conn_command_done(pg_conn *c)
{
    if (c->state == C_PREPARING) {
        PGresult *r = c->res;
        c->res = NULL;
        bool ok = r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            log_error("postgres: set-up step %d failed: %s", c->prep_next,
                      r ? PQresultErrorMessage(r) : "no result");
        PQclear(r);
        if (!ok) {
            conn_fail(c, "prepare failed");
            return;
        }
        c->prep_next++;
        conn_prepare_next(c);
        return;
    }
    if (c->state == C_PING) {
        conn_ping_done(c);
        return;
    }
    if (c->state == C_BUSY || c->state == C_CANCELLING)
        conn_statement_done(c);
}

static bool conn_awaits_results(const pg_conn *c)
{
    return c->state == C_PREPARING || c->state == C_BUSY || c->state == C_CANCELLING ||
           c->state == C_PING;
}

/* Pipeline mode: each statement's results end with NULL, then its Sync
 * (PGRES_PIPELINE_SYNC) ends the statement. Returns the statements ended. */
static int conn_read_pipeline(pg_conn *c)
{
    int done = 0;
    bool after_null = false;
    while (c->pg != NULL && c->pipelined && (c->state == C_BUSY || c->state == C_CANCELLING) &&
           !PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (r == NULL) {
            /* Between a statement and its Sync; two in a row or an empty
             * ring mean nothing more is here yet. */
            if (after_null || c->ring_n == 0)
                break;
            after_null = true;
            continue;
        }
        after_null = false;
        if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            done++;
            conn_statement_done(c);
        } else if (c->res == NULL) {
            c->res = r;
        } else {
            PQclear(r);
        }
    }
    return done;
}

static void conn_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pg_conn *c = arg;
    if (!PQconsumeInput(c->pg)) {
        conn_fail(c, PQerrorMessage(c->pg));
        return;
    }
    PGnotify *n;
    while (c->pg != NULL && (n = PQnotifies(c->pg)) != NULL) {
        if (c->pool->on_notify)
            c->pool->on_notify(c->pool->listen_arg, n->extra);
        PQfreemem(n);
    }
    if (c->pg != NULL && PQstatus(c->pg) == CONNECTION_BAD) {
        conn_fail(c, PQerrorMessage(c->pg));
        return;
    }
    if (c->pg != NULL && c->pipelined) {
        /* One read, however many statements it ended: the round trips
         * pipelining saves show as statements per round trip. */
        if (conn_read_pipeline(c) > 0)
            metrics_inc(M_PG_ROUND_TRIPS);
        conn_cancel_stale_head(c);
        return;
    }
    while (c->pg != NULL && conn_awaits_results(c) && !PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (r == NULL) {
            if (c->state == C_BUSY || c->state == C_CANCELLING)
                metrics_inc(M_PG_ROUND_TRIPS);
            conn_command_done(c);
            return; /* the next command, if any, starts from its own event */
        }
        if (c->res == NULL)
            c->res = r;
        else
            PQclear(r);
    }
}

static void conn_connected(pg_conn *c)
{
    pgpool *p = c->pool;
    PQsetnonblocking(c->pg, 1);
    int fd = PQsocket(c->pg);
    c->io = event_new(p->base, fd, EV_READ | EV_PERSIST, conn_on_read, c);
    c->wio = event_new(p->base, fd, EV_WRITE, conn_on_write, c);
    event_add(c->io, NULL);
    c->state = C_PREPARING;
    c->prep_next = 0;
    conn_prepare_next(c);
}

static void conn_on_connect_io(evutil_socket_t fd, short what, void *arg);

static void conn_poll(pg_conn *c, PostgresPollingStatusType st)
{
    if (c->io) {
        event_free(c->io);
        c->io = NULL;
    }
    switch (st) {
    case PGRES_POLLING_OK:
        conn_connected(c);
        return;
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        /* The socket may change between polls (e.g. a second address). */
        c->io = event_new(c->pool->base, PQsocket(c->pg),
                          st == PGRES_POLLING_READING ? EV_READ : EV_WRITE, conn_on_connect_io, c);
        event_add(c->io, NULL);
        return;
    default:
        conn_fail(c, PQerrorMessage(c->pg));
    }
}

static void conn_on_connect_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pg_conn *c = arg;
    conn_poll(c, PQconnectPoll(c->pg));
}

/* The timer means "connect now" when down, "gave up" when connecting or
 * cancelling or waiting for a heartbeat, "send a heartbeat" when idle. */
static void conn_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pg_conn *c = arg;
    if (c->state == C_DOWN)
        conn_start(c);
    else if (c->state == C_CONNECTING || c->state == C_PREPARING)
        conn_fail(c, "connect deadline passed");
    else if (c->state == C_BROKEN)
        conn_fail(c, "send failed");
    else if (c->state == C_CANCELLING)
        conn_cancel_tick(c);
    else if (c->state == C_IDLE && c->pool->listen != NULL)
        conn_ping(c);
    else if (c->state == C_PING)
        conn_fail(c, "heartbeat not answered within 2 s; reconnecting");
}

/* libpq prints notices (and a server's FATAL on an idle connection) to
 * stderr by default; route them into our log format instead. */
static void on_notice(void *arg, const char *message)
{
    (void)arg;
    log_warn("postgres: %s", message);
}

static void conn_start(pg_conn *c)
{
    pgpool *p = c->pool;
    if (p->kw != NULL)
        c->pg = PQconnectStartParams((const char *const *)p->kw, (const char *const *)p->vals, 0);
    else
        c->pg = PQconnectStart(p->conninfo);
    if (c->pg != NULL)
        PQsetNoticeProcessor(c->pg, on_notice, NULL);
    c->state = C_CONNECTING;
    struct timeval tv = ms_to_tv(p->timeout_ms);
    evtimer_add(c->timer, &tv);
    if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD) {
        conn_fail(c, c->pg ? PQerrorMessage(c->pg) : "out of memory");
        return;
    }
    conn_poll(c, PGRES_POLLING_WRITING);
}

static void conn_run(pg_conn *c, pg_op *op)
{
    const pgpool_stmt *s = &c->pool->stmts[op->stmt];
    if (c->state == C_IDLE)
        evtimer_del(c->timer); /* a listening connection's heartbeat waits */
    c->state = C_BUSY;
    ring_push(c, op);
    if (!PQsendQueryPrepared(c->pg, s->name, op->nparams, (const char *const *)op->params, NULL,
                             NULL, 0) ||
        (c->pipelined && !PQpipelineSync(c->pg))) {
        conn_break(c);
        return;
    }
    conn_flush(c);
}

/* The connection with the fewest statements in flight that takes one more:
 * idle ones first, so the server's backends work in parallel before any
 * connection queues statements behind another. */
static pg_conn *pool_pick(pgpool *p)
{
    pg_conn *best = NULL;
    for (int i = 0; i < p->size; i++) {
        pg_conn *c = &p->conns[i];
        bool open = c->state == C_IDLE || (c->state == C_BUSY && c->pipelined);
        if (open && c->ring_n < ring_depth(c) && (best == NULL || c->ring_n < best->ring_n))
            best = c;
    }
    return best;
}

static void pool_dispatch(pgpool *p)
{
    pg_conn *c;
    while (p->head != NULL && (c = pool_pick(p)) != NULL) {
        pg_op *op = p->head;
        queue_remove(p, op);
        conn_run(c, op);
    }
}

/* TCP keepalives find a peer that vanished (host down, a dropped route)
 * on an idle connection in seconds instead of the kernel's two hours; the
 * user timeout does the same for data sent and never acknowledged. Set only
 * where the operator's conninfo says nothing. */
static const char *const keepalive_defaults[][2] = {
    {"keepalives", "1"},       {"keepalives_idle", "5"},      {"keepalives_interval", "1"},
    {"keepalives_count", "3"}, {"tcp_user_timeout", "10000"},
};
#define NKEEPALIVE (sizeof(keepalive_defaults) / sizeof(keepalive_defaults[0]))

static void pool_parse_conninfo(pgpool *p)
{
    PQconninfoOption *opts = PQconninfoParse(p->conninfo, NULL);
    if (opts == NULL)
        return;
    size_t n = 0;
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
        n++;
    p->kw = xcalloc(n + NKEEPALIVE + 1, sizeof(char *));
    p->vals = xcalloc(n + NKEEPALIVE + 1, sizeof(char *));
    size_t k = 0;
    for (size_t i = 0; i < NKEEPALIVE; i++) {
        bool set = false;
        for (PQconninfoOption *o = opts; o->keyword != NULL && !set; o++)
            set = o->val != NULL && strcmp(o->keyword, keepalive_defaults[i][0]) == 0;
        if (!set) {
            p->kw[k] = xstrdup(keepalive_defaults[i][0]);
            p->vals[k++] = xstrdup(keepalive_defaults[i][1]);
        }
    }
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val != NULL) {
            p->kw[k] = xstrdup(o->keyword);
            p->vals[k++] = xstrdup(o->val);
        }
    }
    PQconninfoFree(opts);
}

/* ---- public ---- */

pgpool *pgpool_new(struct event_base *base, const char *conninfo, int size, int timeout_ms,
                   int queue_max, const pgpool_stmt *stmts, size_t nstmts)
{
    pgpool *p = xcalloc(1, sizeof(*p));
    p->base = base;
    p->conninfo = xstrdup(conninfo);
    pool_parse_conninfo(p);
    p->timeout_ms = timeout_ms;
    p->queue_max = queue_max;
    p->stmts = stmts;
    p->nstmts = nstmts;
    p->size = size;
    p->conns = xcalloc((size_t)size, sizeof(pg_conn));
    for (int i = 0; i < size; i++) {
        pg_conn *c = &p->conns[i];
        c->pool = p;
        backoff_init(&c->bo, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
        c->timer = evtimer_new(base, conn_on_timer, c);
        conn_start(c);
    }
    return p;
}

void pgpool_free(pgpool *p)
{
    if (p == NULL)
        return;
    for (int i = 0; i < p->size; i++) {
        pg_conn *c = &p->conns[i];
        pg_op *ops[PIPE_MAX];
        int n = ring_take(c, ops);
        conn_close(c);
        event_free(c->timer);
        for (int k = 0; k < n; k++)
            op_fail(ops[k], 503, "shutting_down", "the proxy is shutting down");
    }
    while (p->head != NULL) {
        pg_op *op = p->head;
        queue_remove(p, op);
        op_fail(op, 503, "shutting_down", "the proxy is shutting down");
    }
    free(p->conns);
    for (size_t i = 0; p->kw != NULL && p->kw[i] != NULL; i++) {
        free(p->kw[i]);
        free(p->vals[i]);
    }
    free(p->kw);
    free(p->vals);
    free(p->conninfo);
    free(p->listen);
    free(p);
}

void pgpool_listen(pgpool *p, const char *channel, pgpool_notify_cb *on_notify,
                   pgpool_ready_cb *on_ready, void *arg)
{
    if (strlen(channel) > 63 || strspn(channel, "abcdefghijklmnopqrstuvwxyz_") != strlen(channel)) {
        log_error("pgpool_listen: bad channel name");
        abort();
    }
    free(p->listen);
    p->listen = xstrdup(channel);
    p->on_notify = on_notify;
    p->on_ready = on_ready;
    for (int i = 0; i < p->size; i++) /* a LISTEN connection comes back sooner */
        backoff_init(&p->conns[i].bo, BACKOFF_MIN_MS, LISTEN_BACKOFF_MAX_MS);
    p->listen_arg = arg;
}

bool pgpool_is_up(const pgpool *p)
{
    return pool_any_up(p);
}

int pgpool_query(pgpool *p, int stmt, const char *const *params, pgpool_cb *cb, void *arg,
                 qc_error *err)
{
    if (!pool_any_up(p)) {
        qc_error_set(err, 503, "postgres_unavailable", "PostgreSQL is unreachable");
        return -1;
    }
    if (p->queued >= p->queue_max) {
        metrics_inc(M_PG_ERRORS);
        if (!p->warned_full)
            log_warn("postgres: query queue full (%d); refusing with 503 (logged once)",
                     p->queue_max);
        p->warned_full = true;
        qc_error_set(err, 503, "postgres_busy", "too many queries waiting for PostgreSQL");
        return -1;
    }
    pg_op *op = xcalloc(1, sizeof(*op));
    op->pool = p;
    op->stmt = stmt;
    op->nparams = p->stmts[stmt].nparams;
    for (int i = 0; i < op->nparams && i < PGPOOL_MAX_PARAMS; i++)
        op->params[i] = params[i] ? xstrdup(params[i]) : NULL;
    op->cb = cb;
    op->arg = arg;
    op->deadline = evtimer_new(p->base, op_on_deadline, op);
    struct timeval tv = ms_to_tv(p->timeout_ms);
    evtimer_add(op->deadline, &tv);
    op->prev = p->tail;
    if (p->tail)
        p->tail->next = op;
    else
        p->head = op;
    p->tail = op;
    p->queued++;
    pool_dispatch(p);
    return 0;
}

int pgpool_exec_blocking(const char *conninfo, const char *sql, char *err, size_t errlen)
{
    PGconn *pg = PQconnectdb(conninfo);
    int rc = 0;
    if (PQstatus(pg) != CONNECTION_OK) {
        snprintf(err, errlen, "cannot connect to PostgreSQL: %s", PQerrorMessage(pg));
        rc = -1;
    } else {
        PGresult *r = PQexec(pg, sql);
        ExecStatusType st = PQresultStatus(r);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            snprintf(err, errlen, "%s", PQresultErrorMessage(r));
            rc = -1;
        }
        PQclear(r);
    }
    PQfinish(pg);
    /* libpq messages span lines; the caller prints one. */
    size_t n = strlen(err);
    while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == '\r'))
        err[--n] = '\0';
    for (char *p = err; *p; p++) {
        if (*p == '\n' || *p == '\t')
            *p = ' ';
    }
    return rc;
}
