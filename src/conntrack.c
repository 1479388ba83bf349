/* conntrack: owns one tracker per accepted client connection (and a
 * reference on its bufferevent), the pointer map that finds a tracker from
 * a request, and the sweep timer. See conntrack.h. */
#include "quotecache/conntrack.h"

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"

#define SWEEP_MS 250

typedef struct tracker {
    struct tracker *next, *prev;
    struct bufferevent *bev;
    int64_t deadline_ms;
    bool over; /* accepted past the bound: refused at its first request */
} tracker;

struct conntrack {
    struct event_base *base;
    size_t max_conns;
    int request_ms, next_ms;
    tracker *all;
    size_t count;
    tracker **slots; /* open addressing by bev pointer, for lookups */
    size_t cap, used;
    struct event *sweep;
    bool warned;
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

static void tracker_release(conntrack *ct, tracker *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        ct->all = t->next;
    if (t->next)
        t->next->prev = t->prev;
    map_del(ct, t);
    if (!t->over)
        ct->count--;
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

/* Releases closed connections; with enforce, also cuts those past their
 * deadline. */
static void sweep(conntrack *ct, bool enforce)
{
    int64_t now = now_ms();
    tracker *next;
    for (tracker *t = ct->all; t != NULL; t = next) {
        next = t->next;
        if (bev_released(t->bev)) {
            tracker_release(ct, t);
        } else if (enforce && t->deadline_ms && now >= t->deadline_ms) {
            evutil_socket_t s = bufferevent_getfd(t->bev);
            t->deadline_ms = 0;
            if (s >= 0)
                shutdown(s, SHUT_RDWR);
        }
    }
    metrics_gauge_set(G_CONNECTIONS, (int64_t)ct->count);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sweep(arg, true);
}

struct bufferevent *conntrack_on_accept(struct event_base *base, void *arg)
{
    conntrack *ct = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL)
        return NULL;
    tracker *t = xcalloc(1, sizeof(*t));
    t->bev = bev;
    bufferevent_incref(bev);
    t->deadline_ms = now_ms() + ct->request_ms;
    if (ct->count >= ct->max_conns)
        sweep(ct, false); /* closed since the last sweep do not count */
    if (ct->count >= ct->max_conns) {
        t->over = true;
        metrics_inc(M_CONNS_REJECTED);
        if (!ct->warned)
            log_warn("conntrack: %zu connections open: refusing more", ct->count);
        ct->warned = true;
    } else {
        ct->count++;
    }
    t->next = ct->all;
    if (ct->all)
        ct->all->prev = t;
    ct->all = t;
    map_put(ct, t);
    metrics_gauge_set(G_CONNECTIONS, (int64_t)ct->count);
    return bev;
}

bool conntrack_on_request(conntrack *ct, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    tracker *t = evcon ? map_get(ct, evhttp_connection_get_bufferevent(evcon)) : NULL;
    if (t == NULL)
        return true;
    t->deadline_ms = now_ms() + ct->next_ms;
    return !t->over;
}

size_t conntrack_count(const conntrack *ct)
{
    return ct->count;
}

conntrack *conntrack_new(struct event_base *base, size_t max_conns, int request_ms, int next_ms)
{
    conntrack *ct = xcalloc(1, sizeof(*ct));
    ct->base = base;
    ct->max_conns = max_conns;
    ct->request_ms = request_ms;
    ct->next_ms = next_ms;
    ct->sweep = event_new(base, -1, EV_PERSIST, on_sweep, ct);
    struct timeval tv = {0, SWEEP_MS * 1000};
    event_add(ct->sweep, &tv);
    return ct;
}

/* Call after the evhttp instances are freed: their connections are closed
 * then, and only our references remain. */
void conntrack_free(conntrack *ct)
{
    if (ct == NULL)
        return;
    event_free(ct->sweep);
    while (ct->all != NULL)
        tracker_release(ct, ct->all);
    free(ct->slots);
    free(ct);
}
