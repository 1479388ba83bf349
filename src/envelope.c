/* envelope: owns the byte format of a cached quote in Redis and the ETag of
 * a body. Pure code.
 *
 * Format, one text header line then the body byte for byte:
 *   "QC2 <status> <stored_at_ms> <load_ms> <product_id> <gen_global>
 *    <gen_product> <etag> <body_len>\n<body>"
 * (one line, single spaces). Numbers are plain decimal without sign or
 * leading zeros; the etag is 16 lowercase hex chars. The explicit body length
 * makes a truncated value detectable instead of served short.
 *
 * "QC2": gen_product is the sum of the quote's scope counters (scope.h).
 * "QC1" entries (an older quotecache's, whose gen_product is the product
 * counter alone) are refused, and QC2 ones are refused by it: read across
 * versions sharing a Redis, a sum can equal a product counter that grew
 * since (two price changes after a store with fx counter 2), and the stale
 * entry would be a HIT.
 *
 * Decoding treats the bytes as hostile (anyone with Redis access can write
 * them): it walks a bounded cursor, never relies on a NUL terminator, and
 * rejects anything not exactly in the format. */
#include "quotecache/envelope.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/mem.h"
#include "quotecache/sha256.h"

#define MAGIC "QC2 "
#define HEADER_MAX 192 /* "QC2 " + 3 + 19*3 + 20*2 + 16 + 20 + separators */
#define U64_DIGITS 20

/* ---- encode ---- */

char *envelope_encode(const envelope *e, const char *body, size_t len, size_t *outlen)
{
    char head[HEADER_MAX];
    int n = snprintf(head, sizeof(head), MAGIC "%d %lld %lld %lld %llu %llu %.*s %zu\n", e->status,
                     (long long)e->stored_at_ms, (long long)e->load_ms, (long long)e->product_id,
                     (unsigned long long)e->gen_global, (unsigned long long)e->gen_product,
                     ENVELOPE_ETAG_LEN, e->etag, len);
    char *out;

    /* Cannot happen with the field widths above; abort rather than store a
     * header that was cut. */
    if (n < 0 || (size_t)n >= sizeof(head)) {
        fprintf(stderr, "quotecache: envelope header overflow\n");
        abort();
    }
    out = xmalloc((size_t)n + len + 1);
    memcpy(out, head, (size_t)n);
    if (len)
        memcpy(out + n, body, len);
    out[(size_t)n + len] = '\0'; /* convenience only: not counted in *outlen */
    if (outlen)
        *outlen = (size_t)n + len;
    return out;
}

/* ---- decode ---- */

typedef struct cursor {
    const char *p;
    const char *end;
} cursor;

static bool take_char(cursor *c, char ch)
{
    if (c->p >= c->end || *c->p != ch)
        return false;
    c->p++;
    return true;
}

static bool take_magic(cursor *c)
{
    size_t n = sizeof(MAGIC) - 1;

    if ((size_t)(c->end - c->p) < n || memcmp(c->p, MAGIC, n) != 0)
        return false;
    c->p += n;
    return true;
}

/* An unsigned decimal <= max without sign or leading zeros, then sep. */
static bool take_u64(cursor *c, uint64_t max, char sep, uint64_t *out)
{
    uint64_t v = 0;
    size_t digits = 0;
    const char *start = c->p;

    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        unsigned d = (unsigned)(*c->p - '0');
        if (++digits > U64_DIGITS || v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
        c->p++;
    }
    if (digits == 0 || (digits > 1 && *start == '0') || v > max)
        return false;
    *out = v;
    return take_char(c, sep);
}

static bool take_i64(cursor *c, char sep, int64_t *out)
{
    uint64_t v;

    if (!take_u64(c, INT64_MAX, sep, &v))
        return false;
    *out = (int64_t)v;
    return true;
}

static bool take_etag(cursor *c, char out[ENVELOPE_ETAG_LEN + 1])
{
    if (c->end - c->p < ENVELOPE_ETAG_LEN)
        return false;
    for (int i = 0; i < ENVELOPE_ETAG_LEN; i++) {
        char ch = c->p[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return false;
        out[i] = ch;
    }
    out[ENVELOPE_ETAG_LEN] = '\0';
    c->p += ENVELOPE_ETAG_LEN;
    return take_char(c, ' ');
}

/* Only the statuses we cache: anything else was not written by us. */
static bool take_status(cursor *c, int *status)
{
    uint64_t v;

    if (!take_u64(c, 999, ' ', &v) || (v != 200 && v != 404))
        return false;
    *status = (int)v;
    return true;
}

static bool take_header(cursor *c, envelope *e, uint64_t *bodylen)
{
    return take_magic(c) && take_status(c, &e->status) && take_i64(c, ' ', &e->stored_at_ms) &&
           take_i64(c, ' ', &e->load_ms) && take_i64(c, ' ', &e->product_id) && e->product_id > 0 &&
           take_u64(c, UINT64_MAX, ' ', &e->gen_global) &&
           take_u64(c, UINT64_MAX, ' ', &e->gen_product) && take_etag(c, e->etag) &&
           take_u64(c, SIZE_MAX, '\n', bodylen);
}

int envelope_decode(const char *buf, size_t len, envelope *e, const char **body, size_t *bodylen)
{
    cursor c = {buf, buf + len};
    envelope tmp;
    uint64_t n = 0;

    if (!buf)
        return -1;
    memset(&tmp, 0, sizeof(tmp));
    if (!take_header(&c, &tmp, &n) || n != (uint64_t)(c.end - c.p))
        return -1;
    *e = tmp;
    *body = c.p;
    *bodylen = (size_t)n;
    return 0;
}

/* ---- etag ---- */

void envelope_etag(const char *body, size_t len, char out[ENVELOPE_ETAG_LEN + 1])
{
    /* sha256 fails only when OpenSSL itself is broken; its all-zero digest
     * keeps the envelope format valid rather than crashing a request. */
    sha256_hex(body, len, ENVELOPE_ETAG_LEN / 2, out);
}
