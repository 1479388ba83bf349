/* tax: client of the legacy tax service (over upstream.c's keep-alive
 * HTTP/1.1 client), with a deadline per call and strict checking of what
 * the service answers.
 *
 * Ownership: each call is an op owned by this module. The user's callback
 * fires exactly once and never before tax_request returns: with the tax on
 * success; 502 when the service answered badly (an answer that cannot be
 * read included); 503 when it could not be reached or dropped the
 * connection (an answer cut short included); 504 when the deadline
 * passed (the late answer is then swallowed). */
#ifndef QUOTECACHE_TAX_H
#define QUOTECACHE_TAX_H

#include <stddef.h>
#include <stdint.h>

#include "quotecache/error.h"

struct event_base;

typedef struct tax_client tax_client;

/* err is NULL on success. */
typedef void tax_cb(void *arg, int64_t tax_cents, const qc_error *err);

/* url: http://HOST[:PORT][/PREFIX], its host resolved here. Returns NULL
 * with one line in err (the caller says it, once) when url is unusable.
 * max_conns bounds concurrent calls. */
tax_client *tax_client_new(struct event_base *base, const char *url, int timeout_ms, int max_conns,
                           char *err, size_t errlen);
/* Pending callbacks fire with an error (503) before it returns. */
void tax_client_free(tax_client *t);

/* Returns 0 (callback later) or -1 with err filled (too many calls). */
int tax_request(tax_client *t, const char *region, int64_t product_id, int64_t amount_cents,
                const char *currency, tax_cb *cb, void *arg, qc_error *err);

/* Parses the body of a 200 answer, text[0..len) (need not be NUL-terminated):
 * a JSON object with "tax_cents", an integer 0 .. 2^53. Returns 0 and sets
 * *out, or -1 when malformed or longer than 4096 bytes. Pure. */
int tax_parse_answer(const char *text, size_t len, int64_t *out);

/* "up" after a good answer, "down" after a failed call, "unknown" before
 * the first call. */
const char *tax_client_state(const tax_client *t);

#endif
