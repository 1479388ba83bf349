/* conntrack: owns one tracker per accepted client connection of one
 * listener (and a reference on its bufferevent), the pointer map that finds a
 * tracker from a request, the sweep timer, and the listener's paused or
 * accepting state. See conntrack.h. */
#include "quotecache/conntrack.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"

#define SWEEP_MS 250
#define MAX_LISTENERS 8

enum conn_state {
    C_READING, /* a request is arriving: header_ms from its start */
    C_BUSY,    /* a complete request is being answered: busy_ms backstop */
    C_IDLE,    /* answered; evhttp's idle timeout governs */
};

enum listen_state {
    L_ACCEPTING,
    L_FULL,    /* max_conns reached: disabled until one closes */
    L_BACKOFF, /* accept() failed (EMFILE...): disabled until the next sweep */
    L_GONE,    /* the listener was freed */
};

typedef struct tracker {
    struct tracker *next, *prev;
    conntrack *ct;
    struct bufferevent *bev;
    struct evbuffer_cb_entry *on_input;
    enum conn_state state;
    int64_t deadline_ms; /* 0: none */
} tracker;

struct conntrack {
    struct event_base *base;
    struct evconnlistener *lev;
    enum listen_state lstate;
    size_t max_conns;
    int header_ms, busy_ms;
    tracker *all;
    size_t count;
    tracker **slots; /* open addressing by bev pointer, for lookups */
    size_t cap, used;
    struct event *sweep;
    bool warned_full, warned_error;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t slot_of(const conntrack *ct, const void *bev)
{
    uintptr_t v = (uintptr_t)bev;
    v ^= v >> 17;
    v *= (uintptr_t)0x9E3779B97F4A7C15ull;
    return (size_t)(v >> 7) & (ct->cap - 1);
}

static void map_put(conntrack *ct, tracker *t);

static void map_grow(conntrack *ct)
{
    tracker **old = ct->slots;
    size_t oldcap = ct->cap;
    ct->cap = oldcap ? oldcap * 2 : 256;
    ct->slots = xcalloc(ct->cap, sizeof(tracker *));
    ct->used = 0;
    for (size_t i = 0; i < oldcap; i++) {
        if (old[i])
            map_put(ct, old[i]);
    }
    free(old);
}

static void map_put(conntrack *ct, tracker *t)
{
    if ((ct->used + 1) * 2 > ct->cap)
        map_grow(ct);
    size_t i = slot_of(ct, t->bev);
    while (ct->slots[i] != NULL)
        i = (i + 1) & (ct->cap - 1);
    ct->slots[i] = t;
    ct->used++;
}

static tracker *map_get(const conntrack *ct, const struct bufferevent *bev)
{
    if (ct->cap == 0)
        return NULL;
    for (size_t i = slot_of(ct, bev); ct->slots[i] != NULL; i = (i + 1) & (ct->cap - 1)) {
        if (ct->slots[i]->bev == bev)
            return ct->slots[i];
    }
    return NULL;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void map_del(conntrack *ct, const tracker *t)
{
    size_t i = slot_of(ct, t->bev);
    while (ct->slots[i] != t)
        i = (i + 1) & (ct->cap - 1);
    ct->slots[i] = NULL;
    ct->used--;
    for (size_t j = (i + 1) & (ct->cap - 1); ct->slots[j] != NULL; j = (j + 1) & (ct->cap - 1)) {
        tracker *moved = ct->slots[j];
        ct->slots[j] = NULL;
        ct->used--;
        map_put(ct, moved);
    }
}

/* The one place a listener changes state. */
static void listen_set(conntrack *ct, enum listen_state to)
{
    if (ct->lstate == to || ct->lstate == L_GONE)
        return;
    if (to == L_ACCEPTING)
        evconnlistener_enable(ct->lev);
    else if (ct->lstate == L_ACCEPTING && to != L_GONE)
        evconnlistener_disable(ct->lev);
    log_debug("conntrack: listener %d -> %d (%zu connections)", (int)ct->lstate, (int)to,
              ct->count);
    ct->lstate = to;
}

/* The one place a connection changes state; each state has one deadline. */
static void tracker_enter(conntrack *ct, tracker *t, enum conn_state to)
{
    t->state = to;
    t->deadline_ms = to == C_READING ? now_ms() + ct->header_ms
                     : to == C_BUSY  ? now_ms() + ct->busy_ms
                                     : 0;
}

/* The first byte of a request after an answer starts its deadline. */
static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)buf;
    tracker *t = arg;
    if (info->n_added > 0 && t->state == C_IDLE)
        tracker_enter(t->ct, t, C_READING);
}

static void tracker_release(conntrack *ct, tracker *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        ct->all = t->next;
    if (t->next)
        t->next->prev = t->prev;
    map_del(ct, t);
    ct->count--;
    metrics_gauge_add(G_CONNECTIONS, -1);
    evbuffer_remove_cb_entry(bufferevent_get_input(t->bev), t->on_input);
    bufferevent_decref(t->bev);
    free(t);
}

/* bufferevent_free clears every callback and drops evhttp's reference; the
 * socket closes when ours goes too. evhttp never clears them otherwise. */
static bool bev_released(struct bufferevent *bev)
{
    bufferevent_data_cb readcb, writecb;
    bufferevent_event_cb eventcb;
    void *arg;
    bufferevent_getcb(bev, &readcb, &writecb, &eventcb, &arg);
    return readcb == NULL && writecb == NULL && eventcb == NULL;
}

/* Releases closed connections and cuts those past their deadline; then
 * accepting resumes if it was paused and there is room. */
static void sweep(conntrack *ct)
{
    int64_t now = now_ms();
    tracker *next;
    for (tracker *t = ct->all; t != NULL; t = next) {
        next = t->next;
        if (bev_released(t->bev)) {
            tracker_release(ct, t);
        } else if (t->deadline_ms && now >= t->deadline_ms) {
            evutil_socket_t s = bufferevent_getfd(t->bev);
            t->deadline_ms = 0;
            if (s >= 0)
                shutdown(s, SHUT_RDWR);
        }
    }
    if ((ct->lstate == L_FULL || ct->lstate == L_BACKOFF) && ct->count < ct->max_conns)
        listen_set(ct, L_ACCEPTING);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sweep(arg);
}

/* libevent hands the error callback the evhttp's argument, not ours: a
 * worker has a listener or two, so a small table maps them back. */
static struct {
    struct evconnlistener *lev;
    conntrack *ct;
} registry[MAX_LISTENERS];

static void registry_set(struct evconnlistener *lev, conntrack *ct)
{
    for (size_t i = 0; i < MAX_LISTENERS; i++) {
        if (registry[i].lev == (ct ? NULL : lev)) {
            registry[i].lev = ct ? lev : NULL;
            registry[i].ct = ct;
            return;
        }
    }
}

static conntrack *registry_get(const struct evconnlistener *lev)
{
    for (size_t i = 0; i < MAX_LISTENERS; i++) {
        if (registry[i].lev == lev)
            return registry[i].ct;
    }
    return NULL;
}

/* accept() failed with something other than EAGAIN/EINTR/ECONNABORTED:
 * the socket stays readable, so pause instead of spinning on it. */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    (void)arg;
    int err = errno;
    conntrack *ct = registry_get(lev);
    if (ct == NULL) {
        evconnlistener_disable(lev); /* never ours: still never spin */
        return;
    }
    if (!ct->warned_error)
        log_warn("conntrack: accept: %s (%zu connections open); pausing accepts", strerror(err),
                 ct->count);
    ct->warned_error = true;
    metrics_inc(M_CONNS_REJECTED);
    listen_set(ct, L_BACKOFF);
}

struct bufferevent *conntrack_on_accept(struct event_base *base, void *arg)
{
    conntrack *ct = arg;
    /* Those closed since the last sweep do not count. Sweep before the new
     * tracker exists: evhttp sets its callbacks only after this returns,
     * so the sweep would take the new connection for a released one. */
    if (ct->count + 1 >= ct->max_conns)
        sweep(ct);
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL)
        return NULL;
    tracker *t = xcalloc(1, sizeof(*t));
    t->ct = ct;
    t->bev = bev;
    bufferevent_incref(bev);
    t->on_input = evbuffer_add_cb(bufferevent_get_input(bev), on_input, t);
    tracker_enter(ct, t, C_READING);
    t->next = ct->all;
    if (ct->all)
        ct->all->prev = t;
    ct->all = t;
    map_put(ct, t);
    ct->count++;
    metrics_gauge_add(G_CONNECTIONS, 1);
    if (ct->count >= ct->max_conns && ct->lstate == L_ACCEPTING) {
        if (!ct->warned_full)
            log_warn("conntrack: %zu connections open: accepting no more until one closes",
                     ct->count);
        ct->warned_full = true;
        metrics_inc(M_CONNS_REJECTED);
        listen_set(ct, L_FULL);
    }
    return bev;
}

static tracker *tracker_of(conntrack *ct, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    return evcon ? map_get(ct, evhttp_connection_get_bufferevent(evcon)) : NULL;
}

void conntrack_on_request(conntrack *ct, struct evhttp_request *req)
{
    tracker *t = tracker_of(ct, req);
    if (t != NULL)
        tracker_enter(ct, t, C_BUSY);
}

void conntrack_on_reply(conntrack *ct, struct evhttp_request *req)
{
    tracker *t = tracker_of(ct, req);
    if (t == NULL)
        return;
    /* Bytes already buffered are a pipelined request that has begun. */
    bool started = evbuffer_get_length(bufferevent_get_input(t->bev)) > 0;
    tracker_enter(ct, t, started ? C_READING : C_IDLE);
}

void conntrack_forget(conntrack *ct)
{
    if (ct->lev == NULL)
        return;
    registry_set(ct->lev, NULL);
    listen_set(ct, L_GONE);
    ct->lev = NULL;
}

conntrack *conntrack_new(struct event_base *base, struct evconnlistener *lev, size_t max_conns,
                         int header_ms, int busy_ms)
{
    conntrack *ct = xcalloc(1, sizeof(*ct));
    ct->base = base;
    ct->lev = lev;
    ct->lstate = L_ACCEPTING;
    ct->max_conns = max_conns;
    ct->header_ms = header_ms;
    ct->busy_ms = busy_ms;
    registry_set(lev, ct);
    evconnlistener_set_error_cb(lev, on_accept_error);
    ct->sweep = event_new(base, -1, EV_PERSIST, on_sweep, ct);
    struct timeval tv = {0, SWEEP_MS * 1000};
    event_add(ct->sweep, &tv);
    return ct;
}

size_t conntrack_count(const conntrack *ct)
{
    return ct->count;
}

void conntrack_free(conntrack *ct)
{
    if (ct == NULL)
        return;
    conntrack_forget(ct);
    event_free(ct->sweep);
    while (ct->all != NULL)
        tracker_release(ct, ct->all);
    free(ct->slots);
    free(ct);
}
