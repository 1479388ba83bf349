/* conntrack: client connections of one worker, counted from the moment they
 * are accepted, with a deadline each. evhttp's own timeout is a read-idle
 * timeout, which a client sending one byte at a time never trips; the
 * deadline here bounds the time to send a whole request, whatever the pace.
 *
 * evhttp gives no hook when a connection goes away, so each tracker holds a
 * reference on the connection's bufferevent: evhttp's bufferevent_free
 * (after its shutdown of the socket) clears the callbacks but leaves the
 * memory and the descriptor to our reference. A sweep every 250 ms releases
 * the trackers of such connections (closing the descriptor) and shuts down
 * the sockets of those past their deadline (evhttp then sees EOF and cleans
 * up in its own way). */
#ifndef QUOTECACHE_CONNTRACK_H
#define QUOTECACHE_CONNTRACK_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct bufferevent;
struct evhttp_request;

typedef struct conntrack conntrack;

/* request_ms: the first request must be complete within this of accept.
 * next_ms: each later request on a keep-alive connection within this of
 * the previous one's arrival (it covers processing, idling, and sending). */
conntrack *conntrack_new(struct event_base *base, size_t max_conns, int request_ms, int next_ms);
void conntrack_free(conntrack *ct);

/* For evhttp_set_bevcb(http, conntrack_on_accept, ct). */
struct bufferevent *conntrack_on_accept(struct event_base *base, void *ct);

/* A request arrived complete. Returns false when its connection is one
 * over the bound: answer 503 with "Connection: close". */
bool conntrack_on_request(conntrack *ct, struct evhttp_request *req);

/* Connections currently open. */
size_t conntrack_count(const conntrack *ct);

#endif
