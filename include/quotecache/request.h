/* request: parse and normalize a quote request. Pure code, no I/O.
 *
 * Everything that can change the answer ends up here in canonical form, so
 * that equivalent spellings share one cache entry and junk never reaches the
 * origin or the cache. */
#ifndef QUOTECACHE_REQUEST_H
#define QUOTECACHE_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "quotecache/error.h"

#define REQUEST_NAME_MAX 16 /* region and tier: letters only, 1..16 */

typedef struct quote_req {
    int64_t product_id;                /* > 0 */
    char region[REQUEST_NAME_MAX + 1]; /* upper case */
    char tier[REQUEST_NAME_MAX + 1];   /* lower case */
    char currency[4];                  /* upper case, "USD" when absent */
} quote_req;

/* Parses the product id segment (still percent-encoded, as it appears in the
 * path after "/quote/") and the raw query string (NULL or "" when absent).
 * Rules: product_id decimal digits only, leading zeros allowed, fits int64,
 * > 0; region and tier letters only, 1..16, required; currency 3 letters,
 * optional. Percent-decoding is applied to names and values; "+" is not a
 * space. An empty value, a repeated or unknown parameter, a bad escape or an
 * embedded NUL is an error that names the parameter.
 * Returns 0 and fills *out, or -1 and fills *err (status 400; code
 * "bad_product_id", "missing_parameter", "unknown_parameter",
 * "duplicate_parameter", or "bad_request" for everything else). */
int request_parse_quote(const char *id_segment, const char *query, quote_req *out, qc_error *err);

/* Writes the canonical form "P|REGION|tier|CUR" into buf (NUL-terminated).
 * Returns the length, or -1 if it does not fit. */
int request_canonical(const quote_req *r, char *buf, size_t len);

#endif
