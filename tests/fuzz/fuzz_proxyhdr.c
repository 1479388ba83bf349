/* Fuzz target: the header rules of the pass-through (proxyhdr), on the
 * fields of a client's request or of an upstream's answer.
 *
 * Input: byte 0 picks the skip list and whether the method is HEAD, then
 * "Name:value" lines.
 *
 * Oracles: after copy_end_to_end no field is hop-by-hop (the list written
 * out apart), in the skip list, or named in a Connection field (a token
 * list split apart here; a value with a quote is left to httphdr's own
 * target; an empty element names nothing), and every other field is kept, in order, with its value;
 * move_end_to_end selects the same fields and leaves in exactly the rest.
 * set_forwarded adds each forwarding field once, the client's lists whole
 * and ours last. The framing check, as the server runs it (framing, then
 * for HEAD / TRACE the bodyless check), accepts exactly: at most one
 * Content-Length of plain digits or one Transfer-Encoding "chunked", not
 * both; and on a HEAD no Transfer-Encoding and every Content-Length zero. */
#include "fuzz_headers.h"

#include <ctype.h>

#include "quotecache/hdrlist.h"
#include "quotecache/proxyhdr.h"

static const char *const hop[] = {"Connection", "Keep-Alive",        "TE",
                                  "Trailer",    "Transfer-Encoding", "Upgrade"};

static bool listed(const char *name, const char *const *list)
{
    for (size_t i = 0; list && list[i]; i++) {
        if (strcasecmp(name, list[i]) == 0)
            return true;
    }
    return false;
}

static bool hop_by_hop(const char *name)
{
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++) {
        if (strcasecmp(name, hop[i]) == 0)
            return true;
    }
    return strncasecmp(name, "Proxy-", 6) == 0;
}

/* A Connection field names name: its comma-separated tokens compared
 * without case, whitespace around them dropped. Values with a quote are
 * judged by the code's own reading (httphdr_has_token, its own target). */
static bool connection_names(const struct evkeyvalq *h, const char *name)
{
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, "Connection") != 0)
            continue;
        if (strchr(kv->value, '"') != NULL) {
            struct evkeyvalq one;
            TAILQ_INIT(&one);
            evhttp_add_header(&one, "Connection", kv->value);
            bool yes = proxyhdr_connection_lists(&one, name);
            hdrlist_clear(&one);
            if (yes)
                return true;
            continue;
        }
        for (const char *p = kv->value; *p;) {
            size_t n = strcspn(p, ",");
            size_t a = 0, b = n;
            while (a < b && (p[a] == ' ' || p[a] == '\t'))
                a++;
            while (b > a && (p[b - 1] == ' ' || p[b - 1] == '\t'))
                b--;
            if (b > a && b - a == strlen(name) && strncasecmp(p + a, name, b - a) == 0)
                return true;
            p += n + (p[n] == ',');
        }
    }
    return false;
}

/* A field crosses unless hop-by-hop, skipped or named in Connection; by
 * this file's reading or (only ever dropping more) the code's, which also
 * takes a token with a parameter (X-Secret=1) as naming X-Secret. */
static bool crosses(const struct evkeyvalq *in, const char *name, const char *const *skip)
{
    return !hop_by_hop(name) && !listed(name, skip) && !connection_names(in, name) &&
           !proxyhdr_connection_lists(in, name);
}

/* out holds exactly the fields of in that cross, in order; rest (when not
 * NULL) exactly those that do not. */
static void check_split(const struct evkeyvalq *in, const struct evkeyvalq *out,
                        const struct evkeyvalq *rest, const struct evkeyvalq *judge,
                        const char *const *skip)
{
    const struct evkeyval *o = out->tqh_first, *r = rest ? rest->tqh_first : NULL;
    for (const struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        if (crosses(judge, kv->key, skip)) {
            FUZZ_CHECK(o != NULL && strcmp(o->key, kv->key) == 0 &&
                       strcmp(o->value, kv->value) == 0);
            o = o->next.tqe_next;
        } else if (rest) {
            FUZZ_CHECK(r != NULL && strcmp(r->key, kv->key) == 0 &&
                       strcmp(r->value, kv->value) == 0);
            r = r->next.tqe_next;
        }
    }
    FUZZ_CHECK(o == NULL && r == NULL);
}

/* A copy of h. */
static void copy_all(const struct evkeyvalq *h, struct evkeyvalq *to)
{
    TAILQ_INIT(to);
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next)
        evhttp_add_header(to, kv->key, kv->value);
}

/* The one field name of h, which must be there exactly once. */
static const char *once(const struct evkeyvalq *h, const char *name)
{
    FUZZ_CHECK(fuzz_count(h, name) == 1);
    return evhttp_find_header(h, name);
}

/* The field name of out is the non-empty values of in's, joined by ", ",
 * then ours; or ours alone. */
static void check_list(const struct evkeyvalq *in, const struct evkeyvalq *out, const char *name,
                       const char *ours)
{
    const char *got = once(out, name);
    size_t at = 0, gl = strlen(got);
    for (const struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, name) != 0 || kv->value[0] == '\0')
            continue;
        size_t n = strlen(kv->value);
        FUZZ_CHECK(at + n + 2 <= gl && memcmp(got + at, kv->value, n) == 0 &&
                   memcmp(got + at + n, ", ", 2) == 0);
        at += n + 2;
    }
    FUZZ_CHECK(strcmp(got + at, ours) == 0);
}

static void check_forwarded(const struct evkeyvalq *in)
{
    struct evkeyvalq out;
    TAILQ_INIT(&out);
    proxyhdr_copy_end_to_end(in, &out, proxyhdr_request_skip);
    proxyhdr_set_forwarded(in, &out, "192.0.2.1", "https");
    check_list(in, &out, "X-Forwarded-For", "192.0.2.1");
    check_list(in, &out, "Via", PROXYHDR_VIA);
    FUZZ_CHECK(strcmp(once(&out, "X-Forwarded-Proto"), "https") == 0);
    const char *host = evhttp_find_header(in, "Host");
    if (host)
        FUZZ_CHECK(strcmp(once(&out, "X-Forwarded-Host"), host) == 0);
    else
        FUZZ_CHECK(fuzz_count(&out, "X-Forwarded-Host") == 0);
    hdrlist_clear(&out);
}

static bool digits(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s))
            return false;
    }
    return true;
}

/* What the server's check must decide, from every Content-Length and
 * Transfer-Encoding field (not only the last). */
static bool framing_ok(const struct evkeyvalq *in, bool bodyless)
{
    int ncl = 0, nte = 0;
    bool cl_ok = true, te_ok = true, zero = true;
    for (const struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, "Content-Length") == 0) {
            ncl++;
            cl_ok = cl_ok && digits(kv->value);
            zero = zero && strspn(kv->value, "0") == strlen(kv->value);
        } else if (strcasecmp(kv->key, "Transfer-Encoding") == 0) {
            nte++;
            te_ok = te_ok && strcasecmp(kv->value, "chunked") == 0;
        }
    }
    if (ncl > 1 || nte > 1 || (ncl && nte) || !cl_ok || !te_ok)
        return false;
    return !bodyless || (nte == 0 && zero);
}

static void check_framing(const struct evkeyvalq *in, bool bodyless)
{
    const char *why = NULL;
    bool ok = proxyhdr_check_framing(in, &why) == 0 &&
              (!bodyless || proxyhdr_check_bodyless(in, &why) == 0);
    FUZZ_CHECK(ok == framing_ok(in, bodyless));
    if (!ok)
        FUZZ_CHECK(why != NULL && why[0] != '\0');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const mine[] = {"Host", "Cookie", NULL};
    static const char *const *const skips[] = {NULL, proxyhdr_request_skip, proxyhdr_response_skip,
                                               mine};
    if (size < 1)
        return 0;
    const char *const *skip = skips[data[0] & 3];
    bool bodyless = data[0] & 4;
    struct evkeyvalq in, out, moved, rest;
    fuzz_header_block((const char *)data + 1, size - 1, &in);

    TAILQ_INIT(&out);
    proxyhdr_copy_end_to_end(&in, &out, skip);
    check_split(&in, &out, NULL, &in, skip);
    for (const struct evkeyval *kv = out.tqh_first; kv; kv = kv->next.tqe_next)
        FUZZ_CHECK(!hop_by_hop(kv->key) && !listed(kv->key, skip) &&
                   !connection_names(&in, kv->key));

    copy_all(&in, &rest);
    TAILQ_INIT(&moved);
    proxyhdr_move_end_to_end(&rest, &moved, skip);
    check_split(&in, &moved, &rest, &in, skip);

    check_forwarded(&in);
    check_framing(&in, bodyless);

    hdrlist_clear(&in);
    hdrlist_clear(&out);
    hdrlist_clear(&moved);
    hdrlist_clear(&rest);
    return 0;
}
