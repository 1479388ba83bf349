/* rconn: owns one connection to Redis through its life: the hiredis context
 * (NULL while there is none), the one timer of the current state, the
 * deferred drop, the backoff, and the bookkeeping that tells a hung Redis
 * from a quiet one. See rconn.h for the states.
 *
 * hiredis 0.14.1 behaviour this file is built on (async.c, net.c):
 * - REDIS_CONNECTED is set as soon as the non-blocking connect is started,
 *   so freeing a context runs the disconnect callback even if the connect
 *   never completed, and a failed connect runs the connect callback with
 *   REDIS_ERR and then the disconnect callback while hiredis frees it.
 *   We tell our current context from a forgotten one by comparing pointers:
 *   c->ac is cleared before any context is freed or given up;
 * - freeing a context answers every pending callback with a NULL reply
 *   first; redisAsyncFree must never run inside a hiredis callback, so a
 *   drop asked for there (rconn_fail) runs from the kill event. */
#include "quotecache/rconn.h"

#include "quotecache/backoff.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define CONNECT_TIMEOUT_MIN_MS 1000
#define TICK_MS 250
#define IDLE_MS 1000 /* silence after which the probe goes out */
#define HUNG_MS 1000 /* a timeout with nothing received for this long: hung */
#define MAX_TIMEOUTS 3

enum rconn_state { RCONN_WAITING, RCONN_CONNECTING, RCONN_HANDSHAKE, RCONN_UP, RCONN_CLOSED };

static const char *const state_names[] = {"waiting", "connecting", "handshake", "up", "closed"};

struct rconn {
    struct event_base *base;
    const char *name;
    char *host;
    int port;
    int timeout_ms;
    const char *const *probe;
    int probe_argc;
    rconn_hooks hooks;
    void *arg;

    enum rconn_state state;
    redisAsyncContext *ac;
    struct event *timer; /* the current state's: backoff, deadline or tick */
    struct event *kill;  /* a drop asked for where freeing is not allowed */
    char why[160];       /* reason of the pending drop */
    bool kill_pending;
    backoff bo;
    bool ever_up;
    bool warned; /* this outage was logged at warn level already */

    int64_t last_rx_ms;    /* last reply of any kind, in UP */
    int64_t probe_sent_ms; /* 0: no probe outstanding */
    int timeouts;          /* owner's command timeouts since an on-time reply */
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void arm(struct event *ev, int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

static int handshake_timeout_ms(const rconn *c)
{
    /* Two round trips at most (INFO, then the generation check). */
    return c->timeout_ms * 2 > 200 ? c->timeout_ms * 2 : 200;
}

static int probe_timeout_ms(const rconn *c)
{
    return c->timeout_ms > 100 ? c->timeout_ms : 100;
}

/* The transition function: every state change goes through here, and arms
 * the one timer of the state entered. */
static void enter(rconn *c, enum rconn_state s)
{
    log_debug("redis %s connection: %s -> %s", c->name, state_names[c->state], state_names[s]);
    c->state = s;
    evtimer_del(c->timer);
    switch (s) {
    case RCONN_WAITING:
        event_del(c->kill); /* a drop asked for the context just gone */
        c->kill_pending = false;
        c->probe_sent_ms = 0;
        c->timeouts = 0;
        arm(c->timer, backoff_next(&c->bo));
        return;
    case RCONN_CONNECTING:
        arm(c->timer,
            c->timeout_ms > CONNECT_TIMEOUT_MIN_MS ? c->timeout_ms : CONNECT_TIMEOUT_MIN_MS);
        return;
    case RCONN_HANDSHAKE:
        arm(c->timer, handshake_timeout_ms(c));
        return;
    case RCONN_UP:
        c->last_rx_ms = mono_ms();
        c->probe_sent_ms = 0;
        c->timeouts = 0;
        backoff_reset(&c->bo);
        arm(c->timer, TICK_MS);
        return;
    case RCONN_CLOSED:
        event_del(c->kill);
        return;
    }
}

static void log_down(rconn *c, const char *why)
{
    if (c->warned) {
        log_debug("redis %s connection to %s:%d: %s", c->name, c->host, c->port, why);
        return;
    }
    log_warn("redis %s connection to %s:%d: %s; retrying", c->name, c->host, c->port, why);
    c->warned = true;
}

/* The current context is gone or given up (c->ac already cleared): back
 * to WAITING, and tell the owner if it had been told of the connection. */
static void lost(rconn *c, enum rconn_state was, const char *why)
{
    log_down(c, why);
    if (was >= RCONN_HANDSHAKE)
        metrics_inc(M_REDIS_ERRORS);
    enter(c, RCONN_WAITING);
    if (was >= RCONN_HANDSHAKE && c->hooks.on_down)
        c->hooks.on_down(c->arg, c, was == RCONN_UP);
}

/* Frees the current context now: only outside hiredis callbacks (a timer
 * or the kill event). The owner's pending replies get NULL meanwhile, with
 * the state already WAITING, so nothing new is sent on the dying context. */
static void drop(rconn *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    enum rconn_state was = c->state;

    if (!ac)
        return;
    c->ac = NULL;
    c->state = RCONN_WAITING; /* lost() arms the timer; nothing is sent meanwhile */
    redisAsyncFree(ac);
    lost(c, was, why);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rconn *c = ac->data;

    if (ac != c->ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees ac as soon as we return. */
        c->ac = NULL;
        lost(c, c->state, ac->c.errstr[0] ? ac->c.errstr : "connect failed");
        return;
    }
    enter(c, RCONN_HANDSHAKE);
    c->hooks.on_connected(c->arg, c);
}

/* Runs right before hiredis frees a context, after its pending replies got
 * NULL; for one we gave up ourselves, c->ac no longer points to it. */
static void on_disconnect(const redisAsyncContext *ac, int status)
{
    rconn *c = ac->data;
    (void)status;

    if (ac != c->ac)
        return;
    c->ac = NULL;
    lost(c, c->state, ac->c.errstr[0] ? ac->c.errstr : "disconnected");
}

static void start_connect(rconn *c)
{
    redisAsyncContext *ac = redisAsyncConnect(c->host, c->port);

    if (!ac || ac->err || redisLibeventAttach(ac, c->base) != REDIS_OK) {
        /* Not attached to any event yet: no callback can be running. */
        log_down(c, ac ? ac->c.errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        enter(c, RCONN_WAITING);
        return;
    }
    ac->data = c;
    c->ac = ac;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    enter(c, RCONN_CONNECTING);
}

static void probe_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    const redisReply *r = reply;
    rconn *c = privdata;

    if (!r || ac != c->ac)
        return;
    c->last_rx_ms = mono_ms();
    c->probe_sent_ms = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        rconn_fail(c, r->str);
        return;
    }
    if (c->state == RCONN_HANDSHAKE)
        rconn_ready(c);
}

void rconn_probe(rconn *c)
{
    if (!c->ac)
        return;
    if (redisAsyncCommandArgv(c->ac, probe_on_reply, c, c->probe_argc, (const char **)c->probe,
                              NULL) == REDIS_OK)
        c->probe_sent_ms = mono_ms();
}

/* UP: a probe after a second of silence, and the drop when it goes
 * unanswered past the command timeout. */
static void tick(rconn *c)
{
    int64_t now = mono_ms();

    if (c->probe_sent_ms != 0 && now - c->probe_sent_ms >= probe_timeout_ms(c)) {
        char why[96];
        snprintf(why, sizeof(why), "no answer for %lld ms: hung", (long long)(now - c->last_rx_ms));
        drop(c, why);
        return;
    }
    if (c->probe_sent_ms == 0 && now - c->last_rx_ms >= IDLE_MS)
        rconn_probe(c);
    arm(c->timer, TICK_MS);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    rconn *c = arg;
    (void)fd;
    (void)what;

    switch (c->state) {
    case RCONN_WAITING:
        start_connect(c);
        return;
    case RCONN_CONNECTING:
        drop(c, "connect timed out");
        return;
    case RCONN_HANDSHAKE:
        drop(c, "no answer to the ready check");
        return;
    case RCONN_UP:
        tick(c);
        return;
    case RCONN_CLOSED:
        return;
    }
}

static void on_kill(evutil_socket_t fd, short what, void *arg)
{
    rconn *c = arg;
    (void)fd;
    (void)what;
    c->kill_pending = false;
    drop(c, c->why);
}

rconn *rconn_new(struct event_base *base, const char *name, const char *host, int port,
                 int timeout_ms, const char *const *probe, int probe_argc, const rconn_hooks *hooks,
                 void *arg)
{
    rconn *c = xcalloc(1, sizeof(*c));

    c->base = base;
    c->name = name;
    c->host = xstrdup(host);
    c->port = port;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    c->probe = probe;
    c->probe_argc = probe_argc;
    c->hooks = *hooks;
    c->arg = arg;
    c->timer = evtimer_new(base, on_timer, c);
    c->kill = event_new(base, -1, 0, on_kill, c);
    if (!c->timer || !c->kill) {
        log_error("rconn: out of memory creating a timer");
        abort();
    }
    backoff_init(&c->bo, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
    start_connect(c);
    return c;
}

void rconn_free(rconn *c)
{
    redisAsyncContext *ac;

    if (!c)
        return;
    ac = c->ac;
    c->ac = NULL;
    enter(c, RCONN_CLOSED);
    if (ac)
        redisAsyncFree(ac);
    event_free(c->timer);
    event_free(c->kill);
    free(c->host);
    free(c);
}

struct redisAsyncContext *rconn_context(const rconn *c)
{
    return c->ac;
}

bool rconn_is_up(const rconn *c)
{
    return c->state == RCONN_UP;
}

void rconn_ready(rconn *c)
{
    if (c->state != RCONN_HANDSHAKE)
        return;
    if (c->ever_up) {
        metrics_inc(M_REDIS_RECONNECTS);
        log_info("redis %s connection to %s:%d is back", c->name, c->host, c->port);
    }
    c->ever_up = true;
    c->warned = false;
    enter(c, RCONN_UP);
    if (c->hooks.on_up)
        c->hooks.on_up(c->arg, c);
}

void rconn_fail(rconn *c, const char *why)
{
    if (!c->ac || c->state == RCONN_CLOSED || c->kill_pending)
        return;
    snprintf(c->why, sizeof(c->why), "%s", why);
    c->kill_pending = true;
    event_active(c->kill, EV_TIMEOUT, 1);
}

void rconn_replied(rconn *c, bool on_time)
{
    c->last_rx_ms = mono_ms();
    if (on_time)
        c->timeouts = 0;
}

void rconn_timed_out(rconn *c)
{
    char why[96];

    if (c->state != RCONN_UP)
        return;
    c->timeouts++;
    if (c->timeouts < MAX_TIMEOUTS && mono_ms() - c->last_rx_ms < HUNG_MS)
        return;
    snprintf(why, sizeof(why), "%d commands timed out in a row: hung", c->timeouts);
    rconn_fail(c, why);
}
