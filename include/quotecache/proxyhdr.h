/* proxyhdr: the header rules of forwarding, as pure functions over evhttp
 * header lists (no sockets): which fields are hop-by-hop (RFC 9110 7.6.1)
 * and never cross the proxy, the forwarding fields we add (X-Forwarded-*,
 * Via), and the framing checks that keep a request from being read one way
 * by us and another way by the upstream (request smuggling). */
#ifndef QUOTECACHE_PROXYHDR_H
#define QUOTECACHE_PROXYHDR_H

#include <stdbool.h>
#include <stddef.h>

struct evkeyvalq;

/* What this proxy calls itself in Via (RFC 9110 7.6.3). */
#define PROXYHDR_VIA "1.1 quotecache"

/* True when name is hop-by-hop by definition: Connection, Keep-Alive, TE,
 * Trailer, Transfer-Encoding, Upgrade, Proxy-* (case-insensitive). */
bool proxyhdr_is_hop_by_hop(const char *name);

/* True when one of the Connection fields of h lists name as a token. */
bool proxyhdr_connection_lists(const struct evkeyvalq *h, const char *name);

/* Where the field-producing functions below put a field: name and value
 * are NUL-terminated and valid for the call only. */
typedef void proxyhdr_put(void *arg, const char *name, const char *value);

/* Hands put every field of in that is end-to-end: not hop-by-hop, not
 * named by in's Connection fields, and not in skip (a NULL-terminated list
 * of names the caller sets itself; skip may be NULL). Order kept. */
void proxyhdr_emit_end_to_end(const struct evkeyvalq *in, const char *const *skip,
                              proxyhdr_put *put, void *arg);

/* The same fields appended to the header list out. */
void proxyhdr_copy_end_to_end(const struct evkeyvalq *in, struct evkeyvalq *out,
                              const char *const *skip);

/* The same selection as proxyhdr_copy_end_to_end, but the fields are
 * moved from in to out (no copy); what is not end-to-end stays in in. */
void proxyhdr_move_end_to_end(struct evkeyvalq *in, struct evkeyvalq *out, const char *const *skip);

/* Appends every field of from to to, leaving from empty (no copy). */
void proxyhdr_move_all(struct evkeyvalq *from, struct evkeyvalq *to);

/* Every value of the fields called name in h, joined by ", " into buf
 * (truncated to len-1). Returns the length, 0 when there is none. */
size_t proxyhdr_join(const struct evkeyvalq *h, const char *name, char *buf, size_t len);

/* Hands put the forwarding fields of a request toward the upstream, from
 * the client's request headers in: X-Forwarded-For (the client's list,
 * then client_ip), X-Forwarded-Proto (proto), X-Forwarded-Host (the
 * client's Host, when it sent one) and Via (the client's list, then ours).
 * The request must not hold those fields yet (copied with
 * proxyhdr_request_skip). */
void proxyhdr_emit_forwarded(const struct evkeyvalq *in, const char *client_ip, const char *proto,
                             proxyhdr_put *put, void *arg);

/* The same fields appended to the header list out. */
void proxyhdr_set_forwarded(const struct evkeyvalq *in, struct evkeyvalq *out,
                            const char *client_ip, const char *proto);

/* Names a request copy skips: the fields proxyhdr_set_forwarded sets, the
 * framing we redo (Content-Length) and Expect (httpconn already answered
 * 100-continue and we hold the whole body). NULL-terminated. */
extern const char *const proxyhdr_request_skip[];
/* Names a response copy skips: Content-Length (we frame the body we hold),
 * Via (we append to it) and X-Cache (ours replaces the upstream's, which
 * would be read as ours; Cache-Status is a list and keeps its entries
 * before ours). NULL-terminated. */
extern const char *const proxyhdr_response_skip[];

/* Checks the framing of a request's fields (reqparse frames a body by
 * them only when this passes). Anything another parser could read
 * differently is refused: Content-Length together with Transfer-Encoding,
 * more than one Content-Length or Transfer-Encoding field, a
 * Transfer-Encoding other than "chunked", a Content-Length that is not
 * plain digits. Returns 0, or -1 with *why (a static string). */
int proxyhdr_check_framing(const struct evkeyvalq *in, const char **why);
/* How many fields called name h has; *value the last one's (untouched
 * when none). */
int proxyhdr_count(const struct evkeyvalq *h, const char *name, const char **value);
/* For a HEAD, a TRACE or a method we do not know, which no upstream
 * expects a body on: a body the request announces might be parsed as the
 * next request on a connection (smuggled past whoever framed it by its
 * length). Returns 0 (no body, or Content-Length: 0), or -1 with *why. */
int proxyhdr_check_bodyless(const struct evkeyvalq *in, const char **why);
/* False when a request target holds a space or a control byte (CR, LF,
 * tab, DEL...; RFC 9112 3.2 has none, 2.2 lets no bare CR be forwarded):
 * reqparse takes the target from the request line's first space to its
 * last, and such a target would be read differently by an upstream (a
 * bare CR as a line's end: fields of the client's making). Bytes over
 * 0x7f pass, as they do elsewhere. */
bool proxyhdr_target_valid(const char *target);
/* True when the request asks past any stored copy (Cache-Control no-cache
 * or no-store, Pragma: no-cache): it is forwarded, and no copy answers it. */
bool proxyhdr_wants_origin(const struct evkeyvalq *in);

#endif
