#include "quotecache/graveyard.h"

#include <event2/event.h>
#include <event2/http.h>
#include <stdlib.h>

#include "quotecache/mem.h"

typedef struct grave {
    struct grave *next;
    struct evhttp_connection *conn;
} grave;

struct graveyard {
    grave *buried;
    struct event *reap;
};

static void free_all(grave *n)
{
    while (n) {
        grave *next = n->next;
        evhttp_connection_free(n->conn);
        free(n);
        n = next;
    }
}

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    graveyard *g = arg;
    grave *n = g->buried;
    g->buried = NULL; /* a free may bury more: they wait for the next turn */
    free_all(n);
}

graveyard *graveyard_new(struct event_base *base)
{
    graveyard *g = xcalloc(1, sizeof(*g));
    g->reap = event_new(base, -1, 0, on_reap, g);
    return g;
}

void graveyard_bury(graveyard *g, struct evhttp_connection *conn)
{
    grave *n = xmalloc(sizeof(*n));
    n->conn = conn;
    n->next = g->buried;
    g->buried = n;
    event_active(g->reap, EV_TIMEOUT, 1);
}

void graveyard_free(graveyard *g)
{
    if (g == NULL)
        return;
    free_all(g->buried);
    event_free(g->reap);
    free(g);
}
