/* reqparse: reads a client's request, a state per part of the message
 * (request line, fields, body by its framing), one line at a time for the
 * head and the chunk framing, as upresp reads an answer. A line not yet
 * whole is left to the caller, who hands it back with what follows; how
 * far it was searched is kept, so a long line arriving a byte at a time is
 * searched once. */
#include "quotecache/reqparse.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "quotecache/hdrlist.h"
#include "quotecache/httphdr.h"
#include "quotecache/mem.h"
#include "quotecache/proxyhdr.h"

enum {
    S_START,      /* before the request line: blank lines are skipped */
    S_FIELDS,     /* field lines, up to the empty one */
    S_LENGTH,     /* left bytes of a Content-Length body */
    S_CHUNK_SIZE, /* a chunk-size line */
    S_CHUNK_DATA, /* left bytes of a chunk */
    S_CHUNK_END,  /* the empty line after a chunk */
    S_TRAILERS,   /* trailer lines, up to the empty one (discarded) */
    S_END,        /* result holds the outcome */
};

void reqparse_init(reqparse *p, const reqparse_limits *lim, struct evbuffer *body)
{
    memset(p, 0, sizeof(*p));
    TAILQ_INIT(&p->fields);
    p->lim = *lim;
    p->body = body;
    p->state = S_START;
    p->result = REQPARSE_MORE;
}

void reqparse_clear(reqparse *p)
{
    hdrlist_clear(&p->fields);
    free(p->target);
    p->target = NULL;
}

bool reqparse_started(const reqparse *p)
{
    return p->state != S_START || p->scanned > 0;
}

/* The head's hard bound: past it nothing of the request is read (evhttp's
 * server, before reqparse, had the same); under it the limits are checked once the head is whole,
 * so that an oversized request still gets its 414 or 431 on a connection
 * that carries on. */
static size_t head_bound(const reqparse *p)
{
    return 2 * p->lim.max_headers + p->lim.max_uri + 1024;
}

static reqparse_result end(reqparse *p, reqparse_result r)
{
    p->state = S_END;
    p->result = r;
    if (r == REQPARSE_BAD)
        p->keep_alive = false;
    return r;
}

/* A refusal: fatal (REQPARSE_BAD), or deferred to the request's end. */
static reqparse_result refuse(reqparse *p, int status, const char *code, const char *message)
{
    p->err_status = status;
    p->err_code = code;
    p->err_message = message;
    return end(p, REQPARSE_BAD);
}

static void defer(reqparse *p, int status, const char *code, const char *message)
{
    if (p->err_status != 0)
        return; /* the first one found is answered */
    p->err_status = status;
    p->err_code = code;
    p->err_message = message;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* ---- the head ---- */

static const struct {
    const char *name;
    int method;
} methods[] = {
    {"GET", EVHTTP_REQ_GET},     {"HEAD", EVHTTP_REQ_HEAD},       {"POST", EVHTTP_REQ_POST},
    {"PUT", EVHTTP_REQ_PUT},     {"DELETE", EVHTTP_REQ_DELETE},   {"OPTIONS", EVHTTP_REQ_OPTIONS},
    {"TRACE", EVHTTP_REQ_TRACE}, {"CONNECT", EVHTTP_REQ_CONNECT}, {"PATCH", EVHTTP_REQ_PATCH},
};

static int method_of(const char *m, size_t n)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strlen(methods[i].name) == n && memcmp(methods[i].name, m, n) == 0)
            return methods[i].method;
    }
    return REQPARSE_METHOD_UNKNOWN;
}

/* method SP target SP HTTP/1.x; the target runs from the first space to
 * the last (as evhttp's server read it), so that one holding spaces or control
 * bytes is named as such (400 bad_target) rather than as a broken line. */
static reqparse_result request_line(reqparse *p, const char *l, size_t n)
{
    const char *sp1 = memchr(l, ' ', n);
    const char *sp2 = l + n;
    while (sp2 > l && sp2[-1] != ' ')
        sp2--;
    if (sp1 == NULL || sp2 - 1 <= sp1)
        return refuse(p, 400, "bad_request", "a malformed request line");
    sp2--; /* the last space itself */
    size_t ml = (size_t)(sp1 - l);
    for (size_t i = 0; i < ml; i++) {
        if (!httphdr_is_tchar((unsigned char)l[i]))
            return refuse(p, 400, "bad_request", "a malformed request line");
    }
    const char *v = sp2 + 1;
    size_t vl = (size_t)(l + n - v);
    if (ml == 0 || vl != 8 || memcmp(v, "HTTP/1.", 7) != 0 || (v[7] != '0' && v[7] != '1'))
        return refuse(p, 400, "bad_request", "a malformed request line or an HTTP version not 1.x");
    size_t tl = (size_t)(sp2 - sp1 - 1);
    if (tl == 0)
        return refuse(p, 400, "bad_request", "a malformed request line");
    p->method = method_of(l, ml);
    p->minor = v[7] - '0';
    p->target = xstrndup(sp1 + 1, tl);
    /* Named once the head is whole, in the order server.c checked them:
     * 414, 431, then the target's bytes. */
    p->long_target = tl > p->lim.max_uri;
    p->bad_target = memchr(p->target, '\0', tl) != NULL || !proxyhdr_target_valid(p->target);
    p->state = S_FIELDS;
    return REQPARSE_MORE;
}

static reqparse_result field_line(reqparse *p, const char *l, size_t n)
{
    if (memchr(l, '\r', n) != NULL || memchr(l, '\0', n) != NULL)
        return refuse(p, 400, "bad_field", "a CR or NUL inside a field line");
    if (is_ows(l[0]))
        return refuse(p, 400, "bad_field", "an obs-fold line (RFC 9112 5.2)");
    const char *colon = memchr(l, ':', n);
    size_t nl = colon ? (size_t)(colon - l) : 0;
    if (colon == NULL || nl == 0)
        return refuse(p, 400, "bad_field", "a field line without a name and a colon");
    for (size_t i = 0; i < nl; i++) {
        if (!httphdr_is_tchar((unsigned char)l[i]))
            return refuse(p, 400, "bad_field", "a field name that is not a token");
    }
    const char *v = colon + 1, *ve = l + n;
    while (v < ve && is_ows(*v))
        v++;
    while (ve > v && is_ows(ve[-1]))
        ve--;
    hdrlist_add_n(&p->fields, l, nl, v, (size_t)(ve - v));
    p->fields_size += nl + (size_t)(ve - v) + 4;
    return REQPARSE_MORE;
}

/* The empty line that ends the head: the limits, the framing, and what
 * the connection does next. */
static reqparse_result head_done(reqparse *p)
{
    p->head_done = true;
    if (p->long_target)
        defer(p, 414, "uri_too_long", "the request URI is too long");
    else if (p->fields_size > p->lim.max_headers)
        defer(p, 431, "headers_too_large", "the request headers are too large");
    else if (p->bad_target)
        defer(p, 400, "bad_target", "a request target with a space or a control character");
    bool close = false, keep_alive = false, expect = false;
    const char *cl = NULL;
    bool chunked = false;
    for (const struct evkeyval *kv = p->fields.tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, "Connection") == 0) {
            close = close || httphdr_has_token(kv->value, "close");
            keep_alive = keep_alive || httphdr_has_token(kv->value, "keep-alive");
        } else if (strcasecmp(kv->key, "Content-Length") == 0) {
            cl = kv->value;
        } else if (strcasecmp(kv->key, "Transfer-Encoding") == 0) {
            chunked = true; /* exactly "chunked": checked below */
        } else if (strcasecmp(kv->key, "Expect") == 0) {
            expect = strcasecmp(kv->value, "100-continue") == 0;
        }
    }
    p->keep_alive = !close && (p->minor == 1 || keep_alive);
    const char *why;
    if (proxyhdr_check_framing(&p->fields, &why) < 0) {
        /* The next request's first byte is unknown: what was found first
         * (414, 431) is still the answer, but the connection closes. */
        if (p->err_status == 414 || p->err_status == 431)
            return end(p, REQPARSE_BAD);
        return refuse(p, 400, "bad_framing", why);
    }
    if (chunked && p->minor == 0) {
        /* RFC 9112 6.1: faulty framing. An HTTP/1.0 hop before us may
         * not have read it as chunked: the chunks would be its next
         * request. */
        if (p->err_status == 414 || p->err_status == 431)
            return end(p, REQPARSE_BAD);
        return refuse(p, 400, "bad_framing", "a Transfer-Encoding on an HTTP/1.0 request");
    }
    uint64_t length = 0;
    if (cl != NULL) {
        if (strlen(cl) > 18)
            return refuse(p, 413, "body_too_large", "the request body is over --max-body");
        for (const char *c = cl; *c; c++)
            length = length * 10 + (uint64_t)(*c - '0');
    }
    if (length > p->lim.max_body)
        return refuse(p, 413, "body_too_large", "the request body is over --max-body");
    p->expect_continue = expect && p->minor == 1 && (chunked || length > 0);
    if (chunked) {
        p->state = S_CHUNK_SIZE;
        return REQPARSE_MORE;
    }
    if (length == 0)
        return end(p, REQPARSE_DONE);
    p->left = length;
    p->state = S_LENGTH;
    return REQPARSE_MORE;
}

/* ---- chunks (RFC 9112 7.1) ---- */

static reqparse_result chunk_size(reqparse *p, const char *l, size_t n)
{
    uint64_t size = 0;
    int rc = httphdr_chunk_size(l, n, &size);
    if (rc == HTTPHDR_CHUNK_HUGE)
        return refuse(p, 413, "body_too_large", "the request body is over --max-body");
    if (rc != HTTPHDR_CHUNK_OK)
        return refuse(p, 400, "bad_framing", "a malformed chunk-size line");
    if (size > p->lim.max_body - p->body_len)
        return refuse(p, 413, "body_too_large", "the request body is over --max-body");
    p->line_used = 0;
    if (size == 0) {
        p->state = S_TRAILERS;
        return REQPARSE_MORE;
    }
    p->left = size;
    p->state = S_CHUNK_DATA;
    return REQPARSE_MORE;
}

/* ---- lines ---- */

static reqparse_result take_line(reqparse *p, const char *l, size_t n)
{
    if (n > 0 && l[n - 1] == '\r')
        n--;
    switch (p->state) {
    case S_START:
        return n == 0 ? REQPARSE_MORE : request_line(p, l, n);
    case S_FIELDS:
        return n == 0 ? head_done(p) : field_line(p, l, n);
    case S_CHUNK_SIZE:
        if (memchr(l, '\r', n) != NULL || memchr(l, '\0', n) != NULL)
            return refuse(p, 400, "bad_framing", "a CR or NUL inside a chunk-size line");
        return chunk_size(p, l, n);
    case S_CHUNK_END:
        if (n != 0)
            return refuse(p, 400, "bad_framing", "a chunk longer than its size");
        p->state = S_CHUNK_SIZE;
        p->line_used = 0;
        return REQPARSE_MORE;
    default: /* S_TRAILERS: discarded, their end ends the request */
        if (memchr(l, '\r', n) != NULL || memchr(l, '\0', n) != NULL)
            return refuse(p, 400, "bad_framing", "a CR or NUL inside a trailer line");
        return n == 0 ? end(p, REQPARSE_DONE) : REQPARSE_MORE;
    }
}

/* Whether one more line of taken bytes fits its section's bound. */
static bool line_fits(reqparse *p, size_t taken)
{
    if (p->state == S_START || p->state == S_FIELDS)
        return p->head_used + taken <= head_bound(p);
    size_t bound = p->state == S_TRAILERS ? head_bound(p) : REQPARSE_CHUNK_LINE_MAX;
    return p->line_used + taken <= bound;
}

static reqparse_result too_long(reqparse *p)
{
    if (p->state == S_START)
        return refuse(p, 414, "uri_too_long", "the request URI is too long");
    if (p->state == S_FIELDS && p->long_target)
        return refuse(p, 414, "uri_too_long", "the request URI is too long");
    if (p->state == S_FIELDS)
        return refuse(p, 431, "headers_too_large", "the request headers are too large");
    return refuse(p, 400, "bad_framing", "a chunk-size line or trailer section too long");
}

/* Body bytes: up to want of d[0..n); returns how many were taken. */
static size_t take_body(reqparse *p, const char *d, size_t n, uint64_t want)
{
    size_t k = n < want ? n : (size_t)want;
    if (k > 0)
        evbuffer_add(p->body, d, k);
    p->body_len += k;
    return k;
}

reqparse_result reqparse_feed(reqparse *p, const char *data, size_t len, size_t *used)
{
    size_t pos = 0;
    if (p->scanned > len)
        p->scanned = 0; /* not what was handed back: search it all */
    while (p->state != S_END && pos < len) {
        const char *d = data + pos;
        size_t n = len - pos;
        if (p->state == S_LENGTH || p->state == S_CHUNK_DATA) {
            size_t k = take_body(p, d, n, p->left);
            pos += k;
            p->left -= k;
            if (p->left == 0 && p->state == S_LENGTH)
                end(p, REQPARSE_DONE);
            else if (p->left == 0)
                p->state = S_CHUNK_END;
            continue;
        }
        const char *lf = memchr(d + p->scanned, '\n', n - p->scanned);
        size_t taken = lf ? (size_t)(lf - d) + 1 : n;
        if (!line_fits(p, taken)) {
            too_long(p);
            break;
        }
        if (lf == NULL) {
            p->scanned = n; /* handed back whole next time */
            break;
        }
        p->scanned = 0;
        if (p->state == S_START || p->state == S_FIELDS)
            p->head_used += taken;
        else
            p->line_used += taken;
        pos += taken;
        (void)take_line(p, d, taken - 1);
    }
    *used = pos;
    return p->state == S_END ? p->result : REQPARSE_MORE;
}
