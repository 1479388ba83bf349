/* request: turns the raw pieces of "GET /quote/{id}?query" into a canonical
 * quote_req, or into a 400 that names the offending parameter. Owns the
 * percent-decoding, the parameter rules of api.md and the canonical form the
 * cache key is built from. Pure code: no I/O, no allocation.
 *
 * Everything here sees hostile bytes. Inputs are bounded before any work is
 * done, decoding never writes past a fixed buffer, and an error message only
 * ever quotes a short, scrubbed snippet of what the client sent. */
#include "quotecache/request.h"
#include "quotecache/hex.h"
#include "quotecache/strbuf.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define QUERY_MAX 2048     /* longest raw query string accepted */
#define ID_SEGMENT_MAX 256 /* longest raw product id segment accepted */
#define NAME_BUF 32        /* decoded names longer than this are unknown anyway */
#define VALUE_BUF 64       /* decoded values longer than this are invalid anyway */
#define SNIPPET_MAX 24     /* bytes of client input quoted in a message */
#define INT64_DIGITS 19    /* digits of INT64_MAX */

#define CODE_BAD_REQUEST "bad_request"
#define CODE_BAD_PRODUCT "bad_product_id"
#define CODE_UNKNOWN "unknown_parameter"
#define CODE_DUPLICATE "duplicate_parameter"
#define CODE_MISSING "missing_parameter"

enum param { P_REGION, P_TIER, P_CURRENCY, P_COUNT };

static const char *const param_names[P_COUNT] = {"region", "tier", "currency"};

typedef enum { DEC_OK, DEC_BAD_ESCAPE, DEC_BAD_BYTE } dec_status;

/* What the query parser has collected so far. */
typedef struct parse_state {
    bool seen[P_COUNT];
    quote_req req;
} parse_state;

/* Percent-decodes src[0..n) into dst, writing at most cap bytes (no NUL).
 * *outlen gets the full decoded length, which may exceed cap: the whole input
 * is still checked, so a long value with a bad escape is reported as a bad
 * escape. "+" stays "+". Any decoded byte outside printable ASCII (NUL
 * included) is refused: no parameter of ours can contain one. */
static dec_status pct_decode(const char *src, size_t n, char *dst, size_t cap, size_t *outlen)
{
    size_t i = 0, out = 0;

    while (i < n) {
        unsigned char c = (unsigned char)src[i];
        if (c == '%') {
            if (n - i < 3) /* '%' too near the end for two hex digits */
                return DEC_BAD_ESCAPE;
            int hi = hex_digit((unsigned char)src[i + 1]);
            int lo = hex_digit((unsigned char)src[i + 2]);
            if (hi < 0 || lo < 0)
                return DEC_BAD_ESCAPE;
            c = (unsigned char)(hi << 4 | lo);
            i += 3;
        } else {
            i++;
        }
        if (c < 0x20 || c > 0x7e)
            return DEC_BAD_BYTE;
        if (out < cap)
            dst[out] = (char)c;
        out++;
    }
    *outlen = out;
    return DEC_OK;
}

/* Copies at most SNIPPET_MAX bytes of untrusted input into out for quoting in
 * a message, replacing anything but a conservative set of characters with '?'
 * so the text is safe in JSON, HTML and logs alike. out must hold
 * SNIPPET_MAX + 4 bytes ("..." marks truncation). */
static void snippet(char out[SNIPPET_MAX + 4], const char *s, size_t n)
{
    size_t k = n < SNIPPET_MAX ? n : SNIPPET_MAX;

    for (size_t i = 0; i < k; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ok = c != '\0' && c < 0x80 && (isalnum(c) || strchr("-_.~%+=:,", c) != NULL);
        out[i] = ok ? (char)c : '?';
    }
    if (n > k) {
        memcpy(out + k, "...", 4);
    } else {
        out[k] = '\0';
    }
}

static bool all_letters(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return false;
    }
    return true;
}

/* Copies n letters into dst (which holds n + 1), folding case. */
static void copy_folded(char *dst, const char *src, size_t n, bool upper)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[i] = (char)(upper ? toupper(c) : tolower(c));
    }
    dst[n] = '\0';
}

/* ---- product id ---- */

static int product_error(const char *raw, size_t n, const char *why, qc_error *err)
{
    char snip[SNIPPET_MAX + 4];

    snippet(snip, raw, n);
    qc_error_set(err, 400, CODE_BAD_PRODUCT, "product id '%s' %s", snip, why);
    return -1;
}

/* Digits only, leading zeros skipped; fails on overflow of int64 or on 0. */
static int digits_to_id(const char *d, size_t n, int64_t *out)
{
    int64_t v = 0;
    size_t i = 0;

    while (i < n && d[i] == '0')
        i++;
    if (n - i > INT64_DIGITS)
        return -1;
    for (; i < n; i++) {
        int digit = d[i] - '0';
        if (v > (INT64_MAX - digit) / 10)
            return -1;
        v = v * 10 + digit;
    }
    if (v <= 0)
        return -1;
    *out = v;
    return 0;
}

static int parse_product_id(const char *seg, int64_t *out, qc_error *err)
{
    char buf[ID_SEGMENT_MAX];
    size_t rawlen = seg ? strnlen(seg, ID_SEGMENT_MAX + 1) : 0;
    size_t len = 0;

    if (rawlen == 0) {
        qc_error_set(err, 400, CODE_BAD_PRODUCT, "product id is missing");
        return -1;
    }
    if (rawlen > ID_SEGMENT_MAX)
        return product_error(seg, rawlen, "is too long", err);
    if (pct_decode(seg, rawlen, buf, sizeof(buf), &len) != DEC_OK)
        return product_error(seg, rawlen, "is not validly encoded", err);
    for (size_t i = 0; i < len; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return product_error(seg, rawlen, "must contain decimal digits only", err);
    }
    if (len == 0 || digits_to_id(buf, len, out) < 0)
        return product_error(seg, rawlen, "must be a positive 64-bit integer", err);
    return 0;
}

/* ---- query parameters ---- */

static int find_param(const char *name, size_t n)
{
    for (int p = 0; p < P_COUNT; p++) {
        if (strlen(param_names[p]) == n && strncasecmp(param_names[p], name, n) == 0)
            return p;
    }
    return -1;
}

/* Decodes and identifies a parameter name. Returns its enum param, or -1
 * with *err filled. */
static int parse_name(const char *raw, size_t n, qc_error *err)
{
    char name[NAME_BUF];
    char snip[SNIPPET_MAX + 4];
    size_t len = 0;
    int p;

    if (n == 0) {
        qc_error_set(err, 400, CODE_BAD_REQUEST, "malformed query string: a parameter has no name");
        return -1;
    }
    if (pct_decode(raw, n, name, sizeof(name), &len) != DEC_OK) {
        snippet(snip, raw, n);
        qc_error_set(err, 400, CODE_BAD_REQUEST, "malformed query string: bad parameter name '%s'",
                     snip);
        return -1;
    }
    p = len <= sizeof(name) ? find_param(name, len) : -1;
    if (p < 0) {
        /* name holds at most NAME_BUF > SNIPPET_MAX bytes, so a longer
         * name still shows up truncated with "...". */
        snippet(snip, name, len < sizeof(name) ? len : sizeof(name));
        qc_error_set(err, 400, CODE_UNKNOWN, "unknown parameter '%s'", snip);
    }
    return p;
}

/* Checks a decoded value against the rules of parameter p and stores its
 * normalized form. */
static int store_value(parse_state *st, int p, const char *v, size_t len, qc_error *err)
{
    if (p == P_CURRENCY) {
        if (len != 3 || !all_letters(v, len)) {
            qc_error_set(err, 400, CODE_BAD_REQUEST, "parameter 'currency' must be 3 letters");
            return -1;
        }
        copy_folded(st->req.currency, v, len, true);
        return 0;
    }
    if (len < 1 || len > REQUEST_NAME_MAX || !all_letters(v, len)) {
        qc_error_set(err, 400, CODE_BAD_REQUEST, "parameter '%s' must be 1 to %d letters",
                     param_names[p], REQUEST_NAME_MAX);
        return -1;
    }
    if (p == P_REGION)
        copy_folded(st->req.region, v, len, true);
    else
        copy_folded(st->req.tier, v, len, false);
    return 0;
}

static int parse_value(parse_state *st, int p, const char *raw, size_t n, qc_error *err)
{
    char value[VALUE_BUF];
    size_t len = 0;

    switch (pct_decode(raw, n, value, sizeof(value), &len)) {
    case DEC_BAD_ESCAPE:
        qc_error_set(err, 400, CODE_BAD_REQUEST, "parameter '%s' has a bad percent escape",
                     param_names[p]);
        return -1;
    case DEC_BAD_BYTE:
        qc_error_set(err, 400, CODE_BAD_REQUEST,
                     "parameter '%s' contains a byte that is not printable ASCII", param_names[p]);
        return -1;
    case DEC_OK:
        break;
    }
    if (len > sizeof(value))
        len = sizeof(value); /* too long for any parameter: fails the length rule */
    return store_value(st, p, value, len, err);
}

/* One "name=value" piece of the query, between '&'s. */
static int parse_part(parse_state *st, const char *part, size_t n, qc_error *err)
{
    const char *eq;
    size_t namelen;
    int p;

    if (n == 0) {
        qc_error_set(err, 400, CODE_BAD_REQUEST,
                     "malformed query string: empty parameter (stray '&')");
        return -1;
    }
    eq = memchr(part, '=', n);
    namelen = eq ? (size_t)(eq - part) : n;
    p = parse_name(part, namelen, err);
    if (p < 0)
        return -1;
    if (st->seen[p]) {
        qc_error_set(err, 400, CODE_DUPLICATE, "parameter '%s' is repeated", param_names[p]);
        return -1;
    }
    st->seen[p] = true;
    if (!eq) {
        qc_error_set(err, 400, CODE_BAD_REQUEST, "parameter '%s' has no value", param_names[p]);
        return -1;
    }
    if (namelen + 1 == n) {
        qc_error_set(err, 400, CODE_BAD_REQUEST, "parameter '%s' must not be empty",
                     param_names[p]);
        return -1;
    }
    return parse_value(st, p, eq + 1, n - namelen - 1, err);
}

static int parse_query(parse_state *st, const char *q, qc_error *err)
{
    size_t len = q ? strnlen(q, QUERY_MAX + 1) : 0;
    size_t start = 0;

    if (len > QUERY_MAX) {
        qc_error_set(err, 400, CODE_BAD_REQUEST, "query string longer than %d bytes", QUERY_MAX);
        return -1;
    }
    if (len == 0)
        return 0;
    /* Splitting on '&' only: ';' is not a separator here, so "a=b;c=d"
     * is one value and fails validation. */
    for (size_t i = 0; i <= len; i++) {
        if (i < len && q[i] != '&')
            continue;
        if (parse_part(st, q + start, i - start, err) < 0)
            return -1;
        start = i + 1;
    }
    return 0;
}

static int check_required(const parse_state *st, qc_error *err)
{
    static const int required[] = {P_REGION, P_TIER};

    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        if (!st->seen[required[i]]) {
            qc_error_set(err, 400, CODE_MISSING, "parameter '%s' is required",
                         param_names[required[i]]);
            return -1;
        }
    }
    return 0;
}

int request_parse_quote(const char *id_segment, const char *query, quote_req *out, qc_error *err)
{
    parse_state st;

    memset(&st, 0, sizeof(st));
    if (parse_product_id(id_segment, &st.req.product_id, err) < 0)
        return -1;
    if (parse_query(&st, query, err) < 0)
        return -1;
    if (check_required(&st, err) < 0)
        return -1;
    if (!st.seen[P_CURRENCY])
        memcpy(st.req.currency, "USD", 4);
    *out = st.req;
    return 0;
}

int request_canonical(const quote_req *r, char *buf, size_t len)
{
    strbuf sb = strbuf_on(buf, len);
    strbuf_i64(&sb, r->product_id);
    strbuf_mem(&sb, "|", 1);
    strbuf_str(&sb, r->region);
    strbuf_mem(&sb, "|", 1);
    strbuf_str(&sb, r->tier);
    strbuf_mem(&sb, "|", 1);
    strbuf_str(&sb, r->currency);
    return strbuf_ok(&sb) ? (int)sb.len : -1;
}
