/* httpconn: quotecache's own HTTP/1.1 server side, on raw non-blocking
 * sockets: a listener (accepting from a listening descriptor, bounded in
 * connections), its client connections, and the request type every route
 * handles (http_req). Requests are read by reqparse; answers are rendered
 * into one buffer (status line, fields, body) and sent at once.
 *
 * A connection carries one request at a time: keep-alive and pipelining
 * (answers in request order; while a request is handled, the bytes after
 * it wait in the buffer), HEAD (no body, the same framing fields),
 * Expect: 100-continue, HTTP/1.0 (closed after the answer unless it asked
 * for keep-alive; close wins). Each state has one deadline: READING a
 * request (from accept, or from the first byte of a later one: the whole
 * request within header_ms, whatever its pace: slowloris), BUSY (handled:
 * a backstop of busy_ms), WRITING (answered, the answer not all sent:
 * idle_ms from the last bytes the client took; meanwhile what it sends
 * is read only up to a bound, so a client that never reads holds no more
 * of our memory), IDLE (answered, nothing more yet: idle_ms, again while
 * the client still takes what the kernel holds of the answer),
 * LINGER (answered and closing: the client's last bytes are read and
 * dropped for a moment, so that its unread bytes do not reset the
 * connection before it reads the answer).
 *
 * Bound: at max_conns the listener is disabled (connections wait in the
 * kernel's queue, unanswered) and enabled again once one closes; an
 * accept() that fails (EMFILE...) disables it for a moment, so the loop
 * never spins on a listening socket that stays readable.
 *
 * Ownership: a request handed to the handler is the handler's until it
 * calls http_send, exactly once. A client that leaves meanwhile (its EOF
 * or an error read, or the BUSY backstop) is reported to the callback set
 * with http_req_on_gone, after which the request is gone and must not be
 * touched; without one the request stays valid, and the answer given
 * later is dropped. */
#ifndef QUOTECACHE_HTTPCONN_H
#define QUOTECACHE_HTTPCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quotecache/reqparse.h"

struct event_base;
struct evbuffer;
struct evkeyvalq;

typedef struct http_listener http_listener;
typedef struct http_conn http_conn;
typedef struct http_req http_req;

typedef void http_handler(void *arg, http_req *req);
typedef void http_gone_cb(void *arg);
/* The answer is rendered: status and bytes are set, the fields still
 * there (the access log's line). */
typedef void http_sent_cb(http_req *req, void *arg);

struct http_req {
    /* The request, as read (valid until it is answered or gone). */
    int method;         /* an enum evhttp_cmd_type, or REQPARSE_METHOD_UNKNOWN */
    int minor;          /* HTTP/1.<minor> */
    const char *target; /* as sent */
    struct evkeyvalq *in;
    struct evbuffer *body; /* the handler may drain it */
    const char *peer;      /* the client's address */
    /* A refusal found while reading it (reqparse.h): 0, or the status to
     * answer with err_code and err_message; err_close: the connection
     * closes after it. */
    int err_status;
    const char *err_code, *err_message;
    bool err_close;
    /* The answer's fields: Content-Length and Date are added when absent,
     * Connection: close when the connection closes after the answer. */
    struct evkeyvalq *out;
    /* Set by http_send. */
    int status;
    uint64_t bytes; /* body bytes sent (none for HEAD) */
    /* Called once the answer is rendered (NULL: none). */
    http_sent_cb *on_sent;
    void *sent_arg;
    /* Internal. */
    http_conn *conn;
};

typedef struct http_listen_opts {
    reqparse_limits lim;
    size_t max_conns;
    int header_ms, busy_ms, idle_ms;
} http_listen_opts;

/* Serves the listening socket fd (made non-blocking; closed by
 * http_listener_stop or _free): every request read goes to handler(arg,
 * req). */
http_listener *http_listener_new(struct event_base *base, int fd, const http_listen_opts *o,
                                 http_handler *handler, void *arg);
/* Graceful shutdown, step one: the listening socket is closed, and every
 * later answer closes its connection (idle ones stay open for the request
 * their client may be sending now: see http_listener_stop). */
void http_listener_stop(http_listener *l);
/* Client connections open (idle keep-alive ones included). */
size_t http_listener_connections(const http_listener *l);
/* Answers given but not all sent yet (WRITING): a drain waits for them. */
size_t http_listener_unsent(const http_listener *l);
/* Closes every connection: requests still handled are reported gone
 * (those without a callback are dropped: their owners are freed first). */
void http_listener_free(http_listener *l);

/* cb(arg) when the client leaves before the answer; NULL cb: no longer. */
void http_req_on_gone(http_req *req, http_gone_cb *cb, void *arg);

/* The answer, exactly once per request: status, req->out, and the body
 * (NULL: none; its bytes are moved out). A HEAD's answer has no body but
 * the Content-Length of the one it would have had (the body's, unless
 * req->out names one); 1xx, 204 and 304 have neither. The request is gone
 * when it returns. */
void http_send(http_req *req, int status, struct evbuffer *body);
/* The same with the body's bytes given (copied). */
void http_send_mem(http_req *req, int status, const char *body, size_t len);

#endif
