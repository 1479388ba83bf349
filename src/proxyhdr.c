/* proxyhdr: hop-by-hop removal, forwarding fields and framing checks for
 * the pass-through to the upstream. Pure: header lists in, header lists
 * out. */
#include "quotecache/proxyhdr.h"

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "quotecache/hdrlist.h"
#include "quotecache/httphdr.h"
#include "quotecache/mem.h"

const char *const proxyhdr_request_skip[] = {"Content-Length",
                                             "X-Forwarded-For",
                                             "X-Forwarded-Proto",
                                             "X-Forwarded-Host",
                                             "Via",
                                             "Expect",
                                             "X-Request-Id",
                                             NULL};
const char *const proxyhdr_response_skip[] = {"Content-Length", "Via", "X-Cache", "X-Request-Id",
                                              NULL};

/* By the first letter, then the names it can start: asked of every field
 * both ways, most of which start with none of these letters. */
bool proxyhdr_is_hop_by_hop(const char *name)
{
    switch (name[0]) {
    case 'C':
    case 'c':
        return strcasecmp(name, "Connection") == 0;
    case 'K':
    case 'k':
        return strcasecmp(name, "Keep-Alive") == 0;
    case 'T':
    case 't':
        return strcasecmp(name, "TE") == 0 || strcasecmp(name, "Trailer") == 0 ||
               strcasecmp(name, "Transfer-Encoding") == 0;
    case 'U':
    case 'u':
        return strcasecmp(name, "Upgrade") == 0;
    case 'P':
    case 'p':
        return strncasecmp(name, "Proxy-", 6) == 0;
    default:
        return false;
    }
}

static bool in_list(const char *name, const char *const *list)
{
    /* The first letters compared first, without case (the names listed
     * are letters): most fields are in no list. */
    for (size_t i = 0; list && list[i]; i++) {
        if (((name[0] ^ list[i][0]) & ~0x20) == 0 && strcasecmp(name, list[i]) == 0)
            return true;
    }
    return false;
}

/* The names a message's Connection fields list, sorted without case, so
 * that asking it of every field is a binary search: walking the whole
 * list for Connection fields per field (or a long list's tokens) was
 * quadratic, and a 64 KiB answer head of 21k fields beside one Connection
 * field held the loop 1.8 s. A name runs up to a comma, ';', '=' or
 * whitespace ("x; q=1" lists x): at worst more is dropped, never kept. */
typedef struct listed {
    const char *p;
    size_t n;
} listed;

static int listed_cmp(const char *a, size_t an, const char *b, size_t bn)
{
    int c = strncasecmp(a, b, an < bn ? an : bn);
    return c != 0 ? c : (an > bn) - (an < bn);
}

static int listed_sort(const void *x, const void *y)
{
    const listed *a = x, *b = y;
    return listed_cmp(a->p, a->n, b->p, b->n);
}

/* NULL (*n 0) when in has no Connection field; else owned by the caller. */
static listed *connection_names(const struct evkeyvalq *in, size_t *n)
{
    listed *t = NULL;
    size_t k = 0, cap = 0;
    for (const struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        if (!httphdr_name_is(kv->key, "Connection"))
            continue;
        for (const char *p = kv->value; *p;) {
            p += strspn(p, ", \t");
            size_t len = strcspn(p, ",;= \t");
            if (len > 0) {
                if (k == cap) {
                    cap = cap ? 2 * cap : 8;
                    t = xrealloc(t, cap * sizeof(*t));
                }
                t[k++] = (listed){p, len};
            }
            p += len;
            p += strcspn(p, ","); /* its parameters, if any */
        }
    }
    if (k > 1)
        qsort(t, k, sizeof(*t), listed_sort);
    *n = k;
    return t;
}

static bool is_listed(const listed *t, size_t n, const char *name)
{
    size_t lo = 0, hi = n, len = strlen(name);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = listed_cmp(name, len, t[mid].p, t[mid].n);
        if (c == 0)
            return true;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return false;
}

/* By the same reading as the selection above (one reading of Connection
 * for every question asked of it). */
bool proxyhdr_connection_lists(const struct evkeyvalq *h, const char *name)
{
    size_t n;
    listed *t = connection_names(h, &n);
    bool yes = n > 0 && is_listed(t, n, name);
    free(t);
    return yes;
}

/* Whether a field crosses the proxy, given the names in's Connection
 * fields list. */
static bool end_to_end(const char *name, const char *const *skip, const listed *t, size_t n)
{
    return !proxyhdr_is_hop_by_hop(name) && !in_list(name, skip) &&
           !(n > 0 && is_listed(t, n, name));
}

void proxyhdr_emit_end_to_end(const struct evkeyvalq *in, const char *const *skip,
                              proxyhdr_put *put, void *arg)
{
    size_t n;
    listed *t = connection_names(in, &n);
    for (const struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        if (end_to_end(kv->key, skip, t, n))
            put(arg, kv->key, kv->value);
    }
    free(t);
}

static void put_in_list(void *arg, const char *name, const char *value)
{
    hdrlist_add(arg, name, value);
}

void proxyhdr_copy_end_to_end(const struct evkeyvalq *in, struct evkeyvalq *out,
                              const char *const *skip)
{
    proxyhdr_emit_end_to_end(in, skip, put_in_list, out);
}

void proxyhdr_move_end_to_end(struct evkeyvalq *in, struct evkeyvalq *out, const char *const *skip)
{
    /* The names are read first: the Connection fields are hop-by-hop and
     * stay in in, holding the strings the names point into. */
    size_t n;
    listed *t = connection_names(in, &n);
    struct evkeyval *following;
    for (struct evkeyval *kv = in->tqh_first; kv; kv = following) {
        following = kv->next.tqe_next;
        if (end_to_end(kv->key, skip, t, n)) {
            TAILQ_REMOVE(in, kv, next);
            TAILQ_INSERT_TAIL(out, kv, next);
        }
    }
    free(t);
}

void proxyhdr_move_all(struct evkeyvalq *from, struct evkeyvalq *to)
{
    TAILQ_CONCAT(to, from, next);
}

size_t proxyhdr_join(const struct evkeyvalq *h, const char *name, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        if (!httphdr_name_is(kv->key, name) || kv->value[0] == '\0')
            continue;
        int w = snprintf(buf + n, len - n, "%s%s", n ? ", " : "", kv->value);
        if (w < 0 || (size_t)w >= len - n)
            return strlen(buf);
        n += (size_t)w;
    }
    return n;
}

/* put gets name: "<in's list>, value" (or value alone), in's list whole
 * (--max-headers bounds it). Cut at 4 KiB, as it was, a list lost its last
 * entries, the ones the proxies in front of us appended, and kept the
 * client's own: an upstream that trusts the address its load balancer
 * appended read one the client wrote (found writing the proxyhdr fuzz
 * target's oracle, whose 4 KiB inputs cannot reach it; test_proxyhdr.c).
 * Joined on the stack when it fits: once per forwarded request. */
static void put_list(const struct evkeyvalq *in, const char *name, const char *value,
                     proxyhdr_put *put, void *arg)
{
    size_t n = strlen(value) + 1;
    for (const struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, name) == 0 && kv->value[0] != '\0')
            n += strlen(kv->value) + 2;
    }
    char stack[512];
    char *full = n <= sizeof(stack) ? stack : xmalloc(n), *o = full;
    for (const struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, name) != 0 || kv->value[0] == '\0')
            continue;
        size_t vl = strlen(kv->value);
        memcpy(o, kv->value, vl);
        memcpy(o + vl, ", ", 2);
        o += vl + 2;
    }
    memcpy(o, value, strlen(value) + 1);
    put(arg, name, full);
    if (full != stack)
        free(full);
}

void proxyhdr_emit_forwarded(const struct evkeyvalq *in, const char *client_ip, const char *proto,
                             proxyhdr_put *put, void *arg)
{
    put_list(in, "X-Forwarded-For", client_ip, put, arg);
    put(arg, "X-Forwarded-Proto", proto);
    const char *host = evhttp_find_header(in, "Host");
    if (host != NULL)
        put(arg, "X-Forwarded-Host", host);
    put_list(in, "Via", PROXYHDR_VIA, put, arg);
}

void proxyhdr_set_forwarded(const struct evkeyvalq *in, struct evkeyvalq *out,
                            const char *client_ip, const char *proto)
{
    proxyhdr_emit_forwarded(in, client_ip, proto, put_in_list, out);
}

int proxyhdr_count(const struct evkeyvalq *h, const char *name, const char **value)
{
    int n = 0;
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        if (httphdr_name_is(kv->key, name)) {
            *value = kv->value;
            n++;
        }
    }
    return n;
}

bool proxyhdr_target_valid(const char *target)
{
    for (const unsigned char *c = (const unsigned char *)target; *c; c++) {
        if (*c <= ' ' || *c == 0x7f)
            return false;
    }
    return true;
}

bool proxyhdr_wants_origin(const struct evkeyvalq *in)
{
    const char *cc = evhttp_find_header(in, "Cache-Control");
    const char *pragma = evhttp_find_header(in, "Pragma");
    return httphdr_has_token(cc, "no-cache") || httphdr_has_token(cc, "no-store") ||
           httphdr_has_token(pragma, "no-cache");
}

int proxyhdr_check_bodyless(const struct evkeyvalq *in, const char **why)
{
    const char *v = NULL;
    if (proxyhdr_count(in, "Transfer-Encoding", &v) > 0 ||
        (proxyhdr_count(in, "Content-Length", &v) > 0 && strspn(v, "0") != strlen(v))) {
        *why = "a body on a HEAD or TRACE request";
        return -1;
    }
    return 0;
}

int proxyhdr_check_framing(const struct evkeyvalq *in, const char **why)
{
    const char *cl = NULL, *te = NULL;
    int ncl = proxyhdr_count(in, "Content-Length", &cl);
    int nte = proxyhdr_count(in, "Transfer-Encoding", &te);
    if (ncl > 0 && nte > 0)
        *why = "both Content-Length and Transfer-Encoding";
    else if (ncl > 1)
        *why = "more than one Content-Length";
    else if (nte > 1)
        *why = "more than one Transfer-Encoding";
    else if (nte == 1 && strcasecmp(te, "chunked") != 0)
        *why = "a Transfer-Encoding other than chunked";
    else if (ncl == 1 && (cl[0] == '\0' || strspn(cl, "0123456789") != strlen(cl)))
        *why = "a Content-Length that is not a number";
    else
        return 0;
    return -1;
}
