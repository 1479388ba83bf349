/* origin: loads one quote from the legacy backend — the price data from
 * PostgreSQL in one round trip, then the tax from the tax service — and
 * renders the answer. Knows nothing of caching.
 *
 * The callback fires exactly once, never before origin_load returns. */
#ifndef QUOTECACHE_ORIGIN_H
#define QUOTECACHE_ORIGIN_H

#include <stddef.h>
#include <stdint.h>

#include "quotecache/error.h"
#include "quotecache/pgpool.h"
#include "quotecache/request.h"
#include "quotecache/tax.h"

typedef struct origin_result {
    int status; /* 200, 404 (not quotable), 400 (currency gone), 5xx */
    char *body; /* the JSON to answer with; the callback owns it */
    size_t len;
    int64_t load_ms;
} origin_result;

typedef void origin_cb(void *arg, origin_result *res);

/* Loads the quote for r with the given active promotions (ascending). Returns
 * 0 (callback later) or -1 with err filled when nothing could be started. */
int origin_load(pgpool *pool, tax_client *tax, const quote_req *r, const int64_t *promo_ids,
                size_t npromos, origin_cb *cb, void *arg, qc_error *err);

#endif
