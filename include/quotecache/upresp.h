/* upresp: the parser of an upstream's answer (RFC 9112), pure: bytes in,
 * status, fields and body out, no sockets. Incremental: the answer may
 * arrive in pieces of any size, and the result is the same however it was
 * cut.
 *
 * Framing (RFC 9112 6.3): no body for an answer to HEAD or with status
 * 1xx, 204 or 304; a Transfer-Encoding whose final coding is chunked is
 * decoded (chunk extensions ignored, trailers discarded); any other
 * Transfer-Encoding, or neither it nor Content-Length, reads to the close;
 * Content-Length is one value or a list of identical ones. Interim answers
 * (1xx but 101) are skipped; 101 is broken (we never ask to upgrade). */
#ifndef QUOTECACHE_UPRESP_H
#define QUOTECACHE_UPRESP_H

#include <event2/keyvalq_struct.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;

/* Bounds: the whole head (status line and fields, each interim answer's
 * counted apart), a chunk-size line, and the trailer section. */
#define UPRESP_HEAD_MAX (64 * 1024)
#define UPRESP_CHUNK_LINE_MAX 1024

typedef enum upresp_result {
    UPRESP_MORE,      /* every byte it could take is taken: more, or upresp_eof */
    UPRESP_DONE,      /* the answer is whole */
    UPRESP_BROKEN,    /* not an answer we can read (why says how): 502 */
    UPRESP_TOO_LARGE, /* its body is larger than max_body: 502 */
} upresp_result;

typedef struct upresp {
    /* Out, once the head is read (UPRESP_DONE, or body states). */
    int status;
    int minor;               /* HTTP/1.<minor>: 0 or 1 */
    struct evkeyvalq fields; /* the final answer's fields as sent, in order; owned */
    bool reusable;           /* at DONE: the connection may carry another request */
    bool coded;              /* a transfer coding other than chunked was applied: the body is not
                              * the representation */
    const char *why;         /* at BROKEN: a static reason */
    bool bad_name;           /* at BROKEN: because a field name is not a token (RFC 9110 5.6.2) */
    /* In, from upresp_init. */
    bool head;
    size_t max_body;
    struct evbuffer *body; /* the body's bytes are appended here (not owned) */
    /* Internal. */
    int state;
    upresp_result result;
    size_t scanned;  /* bytes of the pending line already searched for LF */
    size_t used;     /* bytes of the current section (head, trailers) taken */
    uint64_t left;   /* of the body (Content-Length) or of the chunk */
    size_t body_len; /* body bytes appended so far */
} upresp;

/* A parser for one answer to a request (head: it was a HEAD), whose body
 * is appended to body. */
void upresp_init(upresp *p, bool head, size_t max_body, struct evbuffer *body);

/* Takes the next bytes of the answer: data[0..len). *used says how many
 * it took; the bytes it did not take (the start of a line not yet whole)
 * must come first in the next call, followed by what arrived since. At
 * UPRESP_DONE, *used ends at the answer's last byte: what follows is not
 * part of it. Once the result is not UPRESP_MORE, every later call returns
 * it again and takes nothing. */
upresp_result upresp_feed(upresp *p, const char *data, size_t len, size_t *used);

/* The connection closed after everything fed: DONE when the answer reads
 * to the close (or was already whole), else BROKEN. */
upresp_result upresp_eof(upresp *p);

/* Frees the fields still held (after moving them out, what is left). */
void upresp_clear(upresp *p);

#endif
