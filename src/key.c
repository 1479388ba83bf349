/* key: owns the names of everything quotecache keeps in Redis (entries,
 * their locks, generation counters, the announcement channel) and the digest
 * that makes equivalent requests share one entry. Pure code.
 *
 * The digest input is "<version>\n<canonical request>\n<id>,<id>,..." with
 * promotion ids ascending in decimal; the entry key keeps the product id in a
 * hash tag so every key of one product lands in one cluster slot and can be
 * recognized (key_product_of) without a lookup. */
#include "quotecache/key.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/mem.h"
#include "quotecache/scope.h"
#include "quotecache/sha256.h"
#include "quotecache/strbuf.h"

#define DIGEST_HEX 32 /* hex chars of SHA-256 kept in an entry key */
#define CANON_MAX 96  /* "P|REGION|tier|CUR" is at most 19+1+16+1+16+1+3 */
#define ID_DIGITS_MAX 19

static bool version_valid(const char *v)
{
    size_t n = v ? strnlen(v, KEY_VERSION_MAX + 1) : 0;

    if (n == 0 || n > KEY_VERSION_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

static int cmp_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static bool ids_sorted(const int64_t *ids, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        if (ids[i - 1] > ids[i])
            return false;
    }
    return true;
}

int key_entry(char out[KEY_MAX], const char *version, const quote_req *r, const int64_t *promo_ids,
              size_t npromo)
{
    char canon[CANON_MAX];
    char hex[DIGEST_HEX + 1];
    int64_t *sorted = NULL;
    int rc;

    if (!version_valid(version) || request_canonical(r, canon, sizeof(canon)) < 0)
        return -1;
    /* Sorting is the caller's job, but a mis-sorted list would silently split
     * one entry into several: sort a copy rather than trust it. */
    if (npromo > 1 && !ids_sorted(promo_ids, npromo)) {
        sorted = xmalloc(npromo * sizeof(*sorted));
        memcpy(sorted, promo_ids, npromo * sizeof(*sorted));
        qsort(sorted, npromo, sizeof(*sorted), cmp_int64);
        promo_ids = sorted;
    }
    char input[KEY_VERSION_MAX + CANON_MAX + KEY_MAX_PROMOS * 21 + 4];
    strbuf in = strbuf_on(input, sizeof(input));
    strbuf_str(&in, version);
    strbuf_mem(&in, "\n", 1);
    strbuf_str(&in, canon);
    strbuf_mem(&in, "\n", 1);
    for (size_t i = 0; i < npromo; i++) {
        if (i > 0)
            strbuf_mem(&in, ",", 1);
        strbuf_i64(&in, promo_ids[i]);
    }
    rc = strbuf_ok(&in) ? sha256_hex(input, in.len, DIGEST_HEX / 2, hex) : -1;
    free(sorted);
    if (rc < 0)
        return -1;
    strbuf key = strbuf_on(out, KEY_MAX);
    strbuf_mem(&key, "qc:", 3);
    strbuf_str(&key, version);
    strbuf_mem(&key, ":{", 2);
    strbuf_i64(&key, r->product_id);
    strbuf_mem(&key, "}:", 2);
    strbuf_mem(&key, hex, DIGEST_HEX);
    return strbuf_ok(&key) ? 0 : -1;
}

void key_lock(char out[KEY_MAX], const char *entry_key)
{
    strbuf key = strbuf_on(out, KEY_MAX);
    strbuf_str(&key, entry_key);
    strbuf_mem(&key, ":lock", 5);
}

/* The product scope's counter: scope.c names every counter, this one too. */
void key_product_gen(char out[KEY_MAX], const char *version, int64_t product_id)
{
    scope s = {.kind = SCOPE_PRODUCT, .product_id = product_id};
    scope_key(out, version, &s);
}

void key_global_gen(char out[KEY_MAX], const char *version)
{
    snprintf(out, KEY_MAX, "qc:%s:gen", version);
}

void key_dims(char out[KEY_MAX], const char *version)
{
    snprintf(out, KEY_MAX, "qc:%s:{dims}", version);
}

void key_channel(char out[KEY_MAX], const char *version)
{
    snprintf(out, KEY_MAX, "qc:%s:loaded", version);
}

/* Parses 1..19 decimal digits without a leading zero (as key_entry writes
 * them) into a positive int64; *end gets the first byte after them. */
static int64_t parse_pid(const char *s, const char **end)
{
    int64_t v = 0;
    size_t i = 0;

    if (s[0] < '1' || s[0] > '9')
        return -1;
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        int digit = s[i] - '0';
        if (i >= ID_DIGITS_MAX || v > (INT64_MAX - digit) / 10)
            return -1;
        v = v * 10 + digit;
    }
    *end = s + i;
    return v;
}

static bool lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

int64_t key_product_of(const char *entry_key)
{
    char version[KEY_VERSION_MAX + 1];
    const char *p, *colon, *end = NULL;
    int64_t pid;

    if (!entry_key || strncmp(entry_key, "qc:", 3) != 0)
        return -1;
    p = entry_key + 3;
    colon = strchr(p, ':');
    if (!colon || colon - p > KEY_VERSION_MAX)
        return -1;
    memcpy(version, p, (size_t)(colon - p));
    version[colon - p] = '\0';
    if (!version_valid(version) || colon[1] != '{')
        return -1;
    pid = parse_pid(colon + 2, &end);
    if (pid < 0 || strncmp(end, "}:", 2) != 0)
        return -1;
    end += 2;
    if (strlen(end) != DIGEST_HEX || !lower_hex(end, DIGEST_HEX))
        return -1;
    return pid;
}
