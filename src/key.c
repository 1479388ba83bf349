/* key: owns the names of everything quotecache keeps in Redis (entries,
 * their locks, generation counters, the announcement channel) and the digest
 * that makes equivalent requests share one entry. Pure code.
 *
 * The digest input is "<version>\n<canonical request>\n<id>,<id>,..." with
 * promotion ids ascending in decimal; the entry key keeps the product id in a
 * hash tag so every key of one product lands in one cluster slot and can be
 * recognized (key_product_of) without a lookup. */
#include "quotecache/key.h"

#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/mem.h"

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

/* Feeds "<id>,<id>,..." to the digest. */
static int digest_ids(EVP_MD_CTX *ctx, const int64_t *ids, size_t n)
{
    char num[32];

    for (size_t i = 0; i < n; i++) {
        int len = snprintf(num, sizeof(num), "%s%lld", i ? "," : "", (long long)ids[i]);
        if (EVP_DigestUpdate(ctx, num, (size_t)len) != 1)
            return -1;
    }
    return 0;
}

/* SHA-256 of the digest input; out gets DIGEST_HEX lowercase hex chars + NUL. */
static int digest_hex(char out[DIGEST_HEX + 1], const char *version, const char *canon,
                      const int64_t *ids, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = -1;

    if (!ctx)
        return -1;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, version, strlen(version)) != 1 ||
        EVP_DigestUpdate(ctx, "\n", 1) != 1 || EVP_DigestUpdate(ctx, canon, strlen(canon)) != 1 ||
        EVP_DigestUpdate(ctx, "\n", 1) != 1 || digest_ids(ctx, ids, n) < 0 ||
        EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen * 2 < DIGEST_HEX)
        goto done;
    for (int i = 0; i < DIGEST_HEX / 2; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 0xf];
    }
    out[DIGEST_HEX] = '\0';
    rc = 0;
done:
    EVP_MD_CTX_free(ctx);
    return rc;
}

int key_entry(char out[KEY_MAX], const char *version, const quote_req *r, const int64_t *promo_ids,
              size_t npromo)
{
    char canon[CANON_MAX];
    char hex[DIGEST_HEX + 1];
    int64_t *sorted = NULL;
    int n, rc;

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
    rc = digest_hex(hex, version, canon, promo_ids, npromo);
    free(sorted);
    if (rc < 0)
        return -1;
    n = snprintf(out, KEY_MAX, "qc:%s:{%lld}:%s", version, (long long)r->product_id, hex);
    return n > 0 && n < KEY_MAX ? 0 : -1;
}

void key_lock(char out[KEY_MAX], const char *entry_key)
{
    snprintf(out, KEY_MAX, "%s:lock", entry_key);
}

void key_product_gen(char out[KEY_MAX], const char *version, int64_t product_id)
{
    snprintf(out, KEY_MAX, "qc:%s:{%lld}:gen", version, (long long)product_id);
}

void key_global_gen(char out[KEY_MAX], const char *version)
{
    snprintf(out, KEY_MAX, "qc:%s:gen", version);
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
