/* conntrack: the client connections of one listener, counted from the
 * moment they are accepted, each with a deadline, and the listener itself
 * paused while the bound is reached or accept() fails.
 *
 * Deadlines: evhttp's own timeout is a read-idle timeout, which a client
 * sending one byte at a time never trips. Here each connection is in one of
 * three states: READING a request (from accept, or from the first byte of a
 * later request: the whole request must arrive within header_ms), BUSY (a
 * complete request is being answered: a backstop of busy_ms), or IDLE (its
 * answer is given, no byte of the next one yet: evhttp's idle timeout
 * applies). Past a deadline the socket is shut down.
 *
 * Bound: at max_conns the listener is disabled (connections wait in the
 * kernel's queue, unanswered, rather than being accepted and refused) and
 * enabled again once one closes. An accept() that fails (EMFILE and the
 * like) also disables it until the next sweep, so the loop never spins on a
 * listening socket that stays readable.
 *
 * evhttp gives no hook when a connection goes away, so each tracker holds a
 * reference on the connection's bufferevent: evhttp's bufferevent_free
 * (after its shutdown of the socket) clears the callbacks but leaves the
 * memory and the descriptor to our reference. A sweep every 250 ms releases
 * the trackers of such connections (closing the descriptor), cuts those
 * past their deadline, and resumes accepting. */
#ifndef QUOTECACHE_CONNTRACK_H
#define QUOTECACHE_CONNTRACK_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct bufferevent;
struct evconnlistener;
struct evhttp_request;

typedef struct conntrack conntrack;

/* lev: the listener whose connections these are (paused and resumed here);
 * it must outlive the tracker or be forgotten first (conntrack_forget). */
conntrack *conntrack_new(struct event_base *base, struct evconnlistener *lev, size_t max_conns,
                         int header_ms, int busy_ms);
/* Call after the evhttp instance is freed: its connections are closed
 * then, and only our references remain. */
void conntrack_free(conntrack *ct);

/* For evhttp_set_bevcb(http, conntrack_on_accept, ct). */
struct bufferevent *conntrack_on_accept(struct event_base *base, void *ct);

/* A request arrived complete: its connection is BUSY. */
void conntrack_on_request(conntrack *ct, struct evhttp_request *req);
/* Its answer is about to be sent (call before evhttp_send_reply, which may
 * free req): the connection is IDLE, or READING when the next request has
 * already begun to arrive. */
void conntrack_on_reply(conntrack *ct, struct evhttp_request *req);

/* The listener is about to be freed: never touch it again. */
void conntrack_forget(conntrack *ct);
/* Client connections open now. */
size_t conntrack_count(const conntrack *ct);

#endif
