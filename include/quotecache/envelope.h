/* envelope: the compact record stored in Redis around a quote body. Pure.
 *
 * It carries what later decisions need without parsing the JSON: the status
 * (200, or 404 for negative caching), when it was stored, how long the load
 * took, the product and the generations it was loaded under, and the ETag.
 * The body follows the header byte for byte, so a hit returns exactly the
 * bytes the miss produced. */
#ifndef QUOTECACHE_ENVELOPE_H
#define QUOTECACHE_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#define ENVELOPE_ETAG_LEN 16 /* hex chars, without quotes */

typedef struct envelope {
    int status;           /* 200 or 404 */
    int64_t stored_at_ms; /* wall clock, ms since the epoch */
    int64_t load_ms;      /* how long the origin load took */
    int64_t product_id;
    uint64_t gen_global;  /* generations the load started under */
    uint64_t gen_product; /* the sum of the quote's scope counters (scope.h) */
    char etag[ENVELOPE_ETAG_LEN + 1];
} envelope;

/* Returns a new buffer (caller frees) holding header + body; *outlen its
 * length. */
char *envelope_encode(const envelope *e, const char *body, size_t len, size_t *outlen);
/* Parses buf. Returns 0 and points *body into buf, or -1 when buf is not a
 * well-formed envelope (treat as a miss). */
int envelope_decode(const char *buf, size_t len, envelope *e, const char **body, size_t *bodylen);
/* ETag of a body: first 16 hex chars of its SHA-256. */
void envelope_etag(const char *body, size_t len, char out[ENVELOPE_ETAG_LEN + 1]);

#endif
