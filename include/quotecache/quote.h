/* quote: the quote document of legacy-backend.md, shaped as JSON. Pure. */
#ifndef QUOTECACHE_QUOTE_H
#define QUOTECACHE_QUOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quotecache/request.h"

#define QUOTE_MAX_BREAKS 64
#define QUOTE_MAX_PROMOS 256 /* as KEY_MAX_PROMOS */

typedef struct quote_break {
    int64_t min_qty;
    int64_t max_qty; /* meaningless when open */
    bool open;       /* last break: max_qty is null */
    int64_t unit_price_cents;
} quote_break;

typedef struct quote {
    quote_req req;
    int64_t promo_ids[QUOTE_MAX_PROMOS]; /* ascending */
    size_t npromos;
    int64_t unit_price_cents;
    int64_t tax_cents;
    quote_break breaks[QUOTE_MAX_BREAKS];
    size_t nbreaks;
} quote;

/* Renders q as compact JSON (keys in the documented order; integers exact to
 * 64 bits). Returns a new NUL-terminated buffer (caller frees); *len its
 * length. Returns NULL when unit_price_cents + tax_cents does not fit in an
 * int64 (no document is better than a wrapped total). */
char *quote_render(const quote *q, size_t *len);

/* Renders {"error": code, "message": message} the same way. */
char *quote_render_error(const char *code, const char *message, size_t *len);

/* Parses a PostgreSQL int array literal such as "{1,5,9}" into out (at most
 * max). Returns the count, or -1 when malformed or too long. */
int quote_parse_id_array(const char *text, int64_t *out, size_t max);

#endif
