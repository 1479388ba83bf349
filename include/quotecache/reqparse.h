/* reqparse: the parser of a client's request (RFC 9112), pure: bytes in,
 * method, target, fields and body out, no sockets. Incremental, like
 * upresp: the request may arrive in pieces of any size, and the result is
 * the same however it was cut.
 *
 * Framing is decided here, so that nothing behind us can read the request
 * differently: a body is framed by one Content-Length of plain digits or by
 * a Transfer-Encoding that is exactly "chunked" (chunk extensions ignored,
 * trailers discarded); both together, two of either, or any other coding is
 * refused (proxyhdr_check_framing), and so is any Transfer-Encoding on an
 * HTTP/1.0 request (RFC 9112 6.1). No body otherwise.
 *
 * Refusals are of two kinds. Fatal ones (REQPARSE_BAD): the bytes are no
 * request we can frame (a broken line, a field name that is not a token,
 * obs-fold, a bare CR or a NUL, bad framing, a body past max_body, a head
 * past twice the bounds): the connection must close after the answer.
 * Deferred ones (at REQPARSE_DONE, err_status set): a target longer than
 * max_uri (414), fields past max_headers (431), a target with a space or a
 * control byte (400 bad_target); the body was read by its framing, so the
 * connection may carry on. Either way err_code and err_message say what to
 * answer, and a request whose line was read (target non-NULL) is answered
 * as one (routes, metrics and the access log see it). */
#ifndef QUOTECACHE_REQPARSE_H
#define QUOTECACHE_REQPARSE_H

#include <event2/keyvalq_struct.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;

/* A method evhttp's enum has no name for (libevent 2.1.12's internal
 * EVHTTP_REQ_UNKNOWN_): such a request is answered, never forwarded. */
#define REQPARSE_METHOD_UNKNOWN (1 << 15)
/* A chunk-size line (with its extensions). */
#define REQPARSE_CHUNK_LINE_MAX 1024

typedef struct reqparse_limits {
    size_t max_uri;     /* the target's bytes: 414 past it */
    size_t max_headers; /* the fields' bytes (name + value + 4 each): 431 past it */
    size_t max_body;    /* the body's bytes: 413 past it */
} reqparse_limits;

typedef enum reqparse_result {
    REQPARSE_MORE, /* every byte it could take is taken: more */
    REQPARSE_DONE, /* the request is whole (err_status may still be set) */
    REQPARSE_BAD,  /* refused, fatal: answer err_status and close */
} reqparse_result;

typedef struct reqparse {
    /* Out, once the request line is read (target non-NULL). */
    int method;              /* an enum evhttp_cmd_type, or REQPARSE_METHOD_UNKNOWN */
    char *target;            /* as sent, NUL-terminated; owned */
    int minor;               /* HTTP/1.<minor>: 0 or 1 */
    struct evkeyvalq fields; /* as sent, in order; owned */
    /* Out, once the head is read (head_done). */
    bool head_done;
    bool keep_alive;      /* by version and Connection: the connection may carry another */
    bool expect_continue; /* Expect: 100-continue on HTTP/1.1 with a body to come */
    /* Out, at REQPARSE_BAD or (deferred) at REQPARSE_DONE: 0 when none. */
    int err_status;
    const char *err_code, *err_message; /* static */
    /* In, from reqparse_init. */
    reqparse_limits lim;
    struct evbuffer *body; /* the body's bytes are appended here (not owned) */
    /* Internal. */
    int state;
    reqparse_result result;
    size_t scanned;     /* bytes of the pending line already searched for LF */
    size_t head_used;   /* bytes of the head (request line and fields) taken */
    size_t line_used;   /* bytes of the current chunk line or trailer section */
    size_t fields_size; /* the fields' bytes as --max-headers counts them */
    uint64_t left;      /* of the body (Content-Length) or of the chunk */
    size_t body_len;    /* body bytes appended so far */
    bool long_target;   /* past max_uri: 414 once the head is whole */
    bool bad_target;    /* a space or control byte in it: 400 bad_target */
} reqparse;

/* A parser for one request, whose body is appended to body. */
void reqparse_init(reqparse *p, const reqparse_limits *lim, struct evbuffer *body);

/* Takes the next bytes: data[0..len). *used says how many it took; the
 * bytes it did not take (the start of a line not yet whole) must come
 * first in the next call, followed by what arrived since. At
 * REQPARSE_DONE, *used ends at the request's last byte: what follows is
 * the next request. Once the result is not REQPARSE_MORE, every later call
 * returns it again and takes nothing. */
reqparse_result reqparse_feed(reqparse *p, const char *data, size_t len, size_t *used);

/* True once the parser has taken a byte of the request (blank lines
 * before a request line do not count). */
bool reqparse_started(const reqparse *p);

/* Frees the target and the fields still held (after moving them out, what
 * is left). */
void reqparse_clear(reqparse *p);

#endif
