/* origin: owns one load op per call, from the PostgreSQL query through the
 * tax call to the rendered body. */
#include "quotecache/origin.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"
#include "quotecache/quote.h"
#include "quotecache/sql.h"

typedef struct origin_op {
    tax_client *tax;
    quote q;
    origin_cb *cb;
    void *arg;
    int64_t started_ms;
    int64_t phase_us; /* when the current part (query, tax call) was sent */
} origin_op;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void finish(origin_op *op, int status, char *body, size_t len)
{
    origin_result res = {status, body, len, mono_ms() - op->started_ms};
    if (status >= 500)
        metrics_inc(M_ORIGIN_ERRORS);
    op->cb(op->arg, &res);
    free(op);
}

static void finish_error(origin_op *op, const qc_error *err)
{
    size_t len;
    char *body = quote_render_error(err->code, err->message, &len);
    finish(op, err->status, body, len);
}

static void on_tax(void *arg, int64_t tax_cents, const qc_error *err)
{
    origin_op *op = arg;
    metrics_observe_us(H_ORIGIN_TAX, 0, mono_us() - op->phase_us);
    if (err != NULL) {
        finish_error(op, err);
        return;
    }
    op->q.tax_cents = tax_cents;
    size_t len;
    char *body = quote_render(&op->q, &len);
    if (body == NULL) {
        qc_error e;
        log_error("origin: product %" PRId64 ": unit %" PRId64 " + tax %" PRId64
                  " does not fit in 64 bits",
                  op->q.req.product_id, op->q.unit_price_cents, tax_cents);
        qc_error_set(&e, 500, "price_overflow", "the quote's total does not fit in 64 bits");
        finish_error(op, &e);
        return;
    }
    finish(op, 200, body, len);
}

static int64_t get_i64(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* Fills op->q from the rows of SQL_QUOTE. Returns 0, or -1 with err. */
static int quote_from_rows(origin_op *op, const PGresult *r, qc_error *err)
{
    quote *q = &op->q;
    int rows = PQntuples(r);
    if (rows == 0) {
        qc_error_set(err, 404, "not_found", "product %" PRId64 " is not quotable in region %s",
                     q->req.product_id, q->req.region);
        return -1;
    }
    if (PQnfields(r) < 6 || strcmp(PQgetvalue(r, 0, 5), "t") != 0) {
        qc_error_set(err, 400, "unknown_tier", "parameter 'tier': no such tier");
        return -1;
    }
    if (PQgetisnull(r, 0, 0)) {
        qc_error_set(err, 400, "unknown_currency", "currency %s does not exist", q->req.currency);
        return -1;
    }
    q->unit_price_cents = get_i64(r, 0, 0);
    int n = quote_parse_id_array(PQgetvalue(r, 0, 1), q->promo_ids, QUOTE_MAX_PROMOS);
    if (n < 0 || rows > QUOTE_MAX_BREAKS) {
        qc_error_set(err, 500, "bad_origin_data", "unexpected data in the pricing database");
        return -1;
    }
    q->npromos = (size_t)n;
    q->nbreaks = 0;
    for (int i = 0; i < rows; i++) {
        if (PQgetisnull(r, i, 2))
            continue; /* a product without volume breaks */
        quote_break *b = &q->breaks[q->nbreaks++];
        b->min_qty = get_i64(r, i, 2);
        b->open = PQgetisnull(r, i, 3);
        b->max_qty = b->open ? 0 : get_i64(r, i, 3);
        b->unit_price_cents = get_i64(r, i, 4);
    }
    return 0;
}

static void on_pg(void *arg, const PGresult *res, const qc_error *pgerr)
{
    origin_op *op = arg;
    qc_error err;
    int64_t now = mono_us();
    metrics_observe_us(H_ORIGIN_PG, 0, now - op->phase_us);
    op->phase_us = now;
    if (res == NULL) {
        finish_error(op, pgerr);
        return;
    }
    if (quote_from_rows(op, res, &err) < 0) {
        finish_error(op, &err);
        return;
    }
    const quote_req *r = &op->q.req;
    if (tax_request(op->tax, r->region, r->product_id, op->q.unit_price_cents, r->currency, on_tax,
                    op, &err) < 0)
        finish_error(op, &err);
}

static void format_ids(char *buf, size_t len, const int64_t *ids, size_t n)
{
    size_t used = (size_t)snprintf(buf, len, "{");
    for (size_t i = 0; i < n && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%" PRId64, i ? "," : "", ids[i]);
    if (used < len)
        snprintf(buf + used, len - used, "}");
}

int origin_load(pgpool *pool, tax_client *tax, const quote_req *r, const int64_t *promo_ids,
                size_t npromos, origin_cb *cb, void *arg, qc_error *err)
{
    char pid[24], ids[QUOTE_MAX_PROMOS * 21 + 4];
    snprintf(pid, sizeof(pid), "%" PRId64, r->product_id);
    format_ids(ids, sizeof(ids), promo_ids, npromos);
    const char *params[5] = {pid, r->region, r->tier, r->currency, ids};
    origin_op *op = xcalloc(1, sizeof(*op));
    op->tax = tax;
    op->q.req = *r;
    op->cb = cb;
    op->arg = arg;
    op->started_ms = mono_ms();
    op->phase_us = mono_us();
    if (pgpool_query(pool, SQL_QUOTE, params, on_pg, op, err) < 0) {
        free(op);
        return -1;
    }
    metrics_inc(M_ORIGIN_LOADS);
    return 0;
}
