/* upresp: reads an upstream's answer, a state per part of the message
 * (status line, fields, body by its framing), one line at a time for the
 * head and the chunk framing. A line not yet whole is left to the caller,
 * who hands it back with what follows; how far it was searched is kept, so
 * a long line arriving a byte at a time is searched once. */
#include "quotecache/upresp.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "quotecache/hdrlist.h"
#include "quotecache/httphdr.h"
#include "quotecache/mem.h"

enum {
    S_STATUS,     /* the status line */
    S_FIELDS,     /* field lines, up to the empty one */
    S_LENGTH,     /* left bytes of a Content-Length body */
    S_CHUNK_SIZE, /* a chunk-size line */
    S_CHUNK_DATA, /* left bytes of a chunk */
    S_CHUNK_END,  /* the empty line after a chunk */
    S_TRAILERS,   /* trailer lines, up to the empty one (discarded) */
    S_TO_CLOSE,   /* every byte up to the close */
    S_END,        /* result holds the outcome */
};

void upresp_init(upresp *p, bool head, size_t max_body, struct evbuffer *body)
{
    memset(p, 0, sizeof(*p));
    TAILQ_INIT(&p->fields);
    p->head = head;
    p->max_body = max_body;
    p->body = body;
    p->state = S_STATUS;
    p->result = UPRESP_MORE;
}

void upresp_clear(upresp *p)
{
    hdrlist_clear(&p->fields);
}

static upresp_result end(upresp *p, upresp_result r, const char *why)
{
    p->state = S_END;
    p->result = r;
    p->why = why;
    if (r != UPRESP_DONE)
        p->reusable = false;
    return r;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* ---- list elements (RFC 9110 5.6.1) ---- */

/* The next element of the comma-separated list at *s (NULL once the list
 * is read), OWS trimmed and possibly empty; false at the end. "" is one
 * empty element, "a," two. */
static bool next_element(const char **s, const char **e, size_t *n)
{
    const char *c = *s;
    if (c == NULL)
        return false;
    const char *comma = strchr(c, ',');
    const char *stop = comma ? comma : c + strlen(c);
    while (c < stop && is_ows(*c))
        c++;
    const char *t = stop;
    while (t > c && is_ows(t[-1]))
        t--;
    *e = c;
    *n = (size_t)(t - c);
    *s = comma ? comma + 1 : NULL;
    return true;
}

/* What the framing fields of the answer say. */
typedef struct framing {
    int ncodings;       /* non-empty Transfer-Encoding elements */
    bool final_chunked; /* the last of them is chunked */
    int ncl;            /* Content-Length elements */
    uint64_t cl;
    const char *bad; /* why the fields cannot frame a body */
} framing;

static void read_codings(framing *f, const char *v)
{
    const char *e;
    size_t n;
    while (next_element(&v, &e, &n)) {
        if (n == 0)
            continue;
        size_t name = 0; /* the coding without its parameters */
        while (name < n && e[name] != ';' && !is_ows(e[name]))
            name++;
        f->ncodings++;
        f->final_chunked = name == 7 && strncasecmp(e, "chunked", 7) == 0;
    }
}

static void read_lengths(framing *f, const char *v)
{
    const char *e;
    size_t n;
    while (next_element(&v, &e, &n)) {
        uint64_t x = 0;
        if (n == 0 || n > 18 || strspn(e, "0123456789") < n) {
            f->bad = "a Content-Length that is not a number";
            return;
        }
        for (size_t i = 0; i < n; i++)
            x = x * 10 + (uint64_t)(e[i] - '0');
        if (f->ncl > 0 && x != f->cl) {
            f->bad = "Content-Length values that differ";
            return;
        }
        f->cl = x;
        f->ncl++;
    }
}

/* ---- the head ---- */

static upresp_result status_line(upresp *p, const char *l, size_t n)
{
    if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0 || (l[7] != '0' && l[7] != '1') || l[8] != ' ' ||
        !is_digit(l[9]) || !is_digit(l[10]) || !is_digit(l[11]) || (n > 12 && l[12] != ' '))
        return end(p, UPRESP_BROKEN, "a malformed status line");
    p->minor = l[7] - '0';
    p->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
    if (p->status < 100 || p->status > 599)
        return end(p, UPRESP_BROKEN, "a status outside 100..599");
    p->state = S_FIELDS;
    return UPRESP_MORE;
}

static upresp_result field_line(upresp *p, const char *l, size_t n)
{
    if (is_ows(l[0]))
        return end(p, UPRESP_BROKEN, "an obs-fold line (RFC 9112 5.2)");
    const char *colon = memchr(l, ':', n);
    if (colon == NULL)
        return end(p, UPRESP_BROKEN, "a field line without a colon");
    size_t nl = (size_t)(colon - l);
    p->bad_name = true;
    if (nl == 0)
        return end(p, UPRESP_BROKEN, "a field without a name");
    for (size_t i = 0; i < nl; i++) {
        if (is_ows(l[i]))
            return end(p, UPRESP_BROKEN, "whitespace in a field name or before its colon");
        if (!httphdr_is_tchar((unsigned char)l[i]))
            return end(p, UPRESP_BROKEN, "a field name that is not a token");
    }
    p->bad_name = false;
    const char *v = colon + 1, *ve = l + n;
    while (v < ve && is_ows(*v))
        v++;
    while (ve > v && is_ows(ve[-1]))
        ve--;
    hdrlist_add_n(&p->fields, l, nl, v, (size_t)(ve - v)); /* CR and NUL refused (take_line) */
    return UPRESP_MORE;
}

/* The empty line that ends the head: an interim answer starts over, a
 * final one says how its body is framed. */
static upresp_result head_done(upresp *p)
{
    if (p->status == 101)
        return end(p, UPRESP_BROKEN, "101 Switching Protocols, never asked for");
    if (p->status < 200) { /* 100 Continue, 103 Early Hints: the answer follows */
        hdrlist_clear(&p->fields);
        p->state = S_STATUS;
        p->used = 0;
        return UPRESP_MORE;
    }
    framing f = {0};
    bool close = false, keep_alive = false;
    for (const struct evkeyval *kv = p->fields.tqh_first; kv && !f.bad; kv = kv->next.tqe_next) {
        if (httphdr_name_is(kv->key, "Transfer-Encoding")) {
            read_codings(&f, kv->value);
        } else if (httphdr_name_is(kv->key, "Content-Length")) {
            read_lengths(&f, kv->value);
        } else if (httphdr_name_is(kv->key, "Connection")) {
            close = close || httphdr_has_token(kv->value, "close");
            keep_alive = keep_alive || httphdr_has_token(kv->value, "keep-alive");
        }
    }
    /* Checked on bodiless answers too: a HEAD's or 304's Content-Length
     * is passed on, and must mean one thing. */
    if (f.bad)
        return end(p, UPRESP_BROKEN, f.bad);
    p->reusable = !close && (p->minor == 1 || keep_alive);
    if (p->head || p->status == 204 || p->status == 304)
        return end(p, UPRESP_DONE, NULL);
    if (f.ncodings > 0) {
        /* RFC 9112 6.1: framing an HTTP/1.0 peer cannot have meant. */
        if (p->minor == 0)
            return end(p, UPRESP_BROKEN, "Transfer-Encoding in an HTTP/1.0 answer");
        /* 6.3: it overrides Content-Length, but both hint at smuggling:
         * the connection carries nothing after this answer. */
        p->reusable = p->reusable && f.ncl == 0;
        p->coded = !(f.ncodings == 1 && f.final_chunked);
        if (f.final_chunked) {
            p->state = S_CHUNK_SIZE;
            p->used = 0;
            return UPRESP_MORE;
        }
    } else if (f.ncl > 0) {
        if (f.cl > p->max_body)
            return end(p, UPRESP_TOO_LARGE, "a body larger than the bound");
        if (f.cl == 0)
            return end(p, UPRESP_DONE, NULL);
        p->left = f.cl;
        p->state = S_LENGTH;
        return UPRESP_MORE;
    }
    p->reusable = false;
    p->state = S_TO_CLOSE;
    return UPRESP_MORE;
}

/* ---- chunks (RFC 9112 7.1) ---- */

static upresp_result chunk_size(upresp *p, const char *l, size_t n)
{
    uint64_t size = 0;
    int rc = httphdr_chunk_size(l, n, &size);
    if (rc == HTTPHDR_CHUNK_HUGE)
        return end(p, UPRESP_BROKEN, "a chunk size of more than 15 hex digits");
    if (rc != HTTPHDR_CHUNK_OK)
        return end(p, UPRESP_BROKEN, "a malformed chunk-size line");
    if (size > p->max_body - p->body_len)
        return end(p, UPRESP_TOO_LARGE, "a body larger than the bound");
    p->used = 0;
    if (size == 0) {
        p->state = S_TRAILERS;
        return UPRESP_MORE;
    }
    p->left = size;
    p->state = S_CHUNK_DATA;
    return UPRESP_MORE;
}

/* ---- lines ---- */

/* The byte bound of the line being read in the current state. */
static size_t line_bound(const upresp *p)
{
    if (p->state == S_CHUNK_SIZE || p->state == S_CHUNK_END)
        return UPRESP_CHUNK_LINE_MAX;
    return UPRESP_HEAD_MAX;
}

static upresp_result take_line(upresp *p, const char *l, size_t n)
{
    if (n > 0 && l[n - 1] == '\r')
        n--;
    if (memchr(l, '\r', n) != NULL || memchr(l, '\0', n) != NULL)
        return end(p, UPRESP_BROKEN, "a CR or NUL inside a line");
    switch (p->state) {
    case S_STATUS:
        return status_line(p, l, n);
    case S_FIELDS:
        return n == 0 ? head_done(p) : field_line(p, l, n);
    case S_CHUNK_SIZE:
        return chunk_size(p, l, n);
    case S_CHUNK_END:
        if (n != 0)
            return end(p, UPRESP_BROKEN, "a chunk longer than its size");
        p->state = S_CHUNK_SIZE;
        p->used = 0;
        return UPRESP_MORE;
    default: /* S_TRAILERS: discarded, their end ends the answer */
        return n == 0 ? end(p, UPRESP_DONE, NULL) : UPRESP_MORE;
    }
}

/* Body bytes: up to want of d[0..n); returns how many were taken. */
static size_t take_body(upresp *p, const char *d, size_t n, uint64_t want)
{
    size_t k = n < want ? n : (size_t)want;
    if (k > 0)
        evbuffer_add(p->body, d, k);
    p->body_len += k;
    return k;
}

upresp_result upresp_feed(upresp *p, const char *data, size_t len, size_t *used)
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
                end(p, UPRESP_DONE, NULL);
            else if (p->left == 0)
                p->state = S_CHUNK_END;
            continue;
        }
        if (p->state == S_TO_CLOSE) {
            /* Up to the bound, then refused: the same bytes taken however
             * the answer was cut. */
            size_t room = p->max_body - p->body_len;
            pos += take_body(p, d, n, room);
            if (n > room)
                end(p, UPRESP_TOO_LARGE, "a body larger than the bound");
            continue;
        }
        const char *lf = memchr(d + p->scanned, '\n', n - p->scanned);
        size_t bound = line_bound(p);
        size_t taken = lf ? (size_t)(lf - d) + 1 : n;
        if (p->used + taken > bound) {
            end(p, UPRESP_BROKEN,
                bound == UPRESP_HEAD_MAX ? "a head or trailer section over 64 KiB"
                                         : "a chunk-size line over 1 KiB");
            break;
        }
        if (lf == NULL) {
            p->scanned = n; /* handed back whole next time */
            break;
        }
        p->scanned = 0;
        p->used += taken;
        pos += taken;
        (void)take_line(p, d, taken - 1);
    }
    *used = pos;
    return p->state == S_END ? p->result : UPRESP_MORE;
}

upresp_result upresp_eof(upresp *p)
{
    if (p->state == S_TO_CLOSE)
        return end(p, UPRESP_DONE, NULL);
    if (p->state != S_END)
        return end(p, UPRESP_BROKEN, "the connection closed before the answer was whole");
    return p->result;
}
