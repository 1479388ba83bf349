/* Fuzz target: reqparse, the parser of a client's request (the client
 * chooses every byte, and how they are cut into reads).
 *
 * Input: byte 0 picks the limits (bits 0-1: max_body 0, 16, 1000 or
 * 65536; bit 2: max_uri and max_headers small, 32 and 64, or 4096 and
 * 8192); bytes 1-2 a split point; the rest is what the client sent.
 *
 * Oracles: the bytes read whole and read in two pieces cut at the split
 * point (the untaken start of a line handed back, as httpconn.c does) give
 * the same result, method, target, refusal, keep-alive, bytes taken, body
 * and fields. A request read unrefused has a target of 1 byte or more,
 * a body within the bound; every field name is a non-empty token and
 * every value holds no CR, LF or NUL and no outer whitespace; a refusal
 * has a status and a code and never keeps the connection; bytes taken
 * never exceed those given; a result other than MORE stays. */
#include "fuzz.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <stdbool.h>

#include "quotecache/reqparse.h"

static const size_t bounds[] = {0, 16, 1000, 65536};

typedef struct reading {
    reqparse p;
    struct evbuffer *body;
    reqparse_result r;
    size_t used;
} reading;

static void read_cut(reading *rd, const char *data, size_t n, const size_t *cuts, int ncuts,
                     const reqparse_limits *lim)
{
    rd->body = evbuffer_new();
    reqparse_init(&rd->p, lim, rd->body);
    size_t start = 0;
    rd->r = REQPARSE_MORE;
    for (int i = 0; i < ncuts && rd->r == REQPARSE_MORE; i++) {
        size_t used = 0;
        FUZZ_CHECK(cuts[i] >= start);
        rd->r = reqparse_feed(&rd->p, data + start, cuts[i] - start, &used);
        FUZZ_CHECK(used <= cuts[i] - start);
        start += used;
    }
    rd->used = start;
}

static void check_same(const reading *a, const reading *b)
{
    FUZZ_CHECK(a->r == b->r);
    FUZZ_CHECK(a->used == b->used);
    FUZZ_CHECK(a->p.err_status == b->p.err_status && a->p.keep_alive == b->p.keep_alive &&
               a->p.method == b->p.method && a->p.minor == b->p.minor &&
               a->p.expect_continue == b->p.expect_continue);
    FUZZ_CHECK((a->p.target == NULL) == (b->p.target == NULL));
    FUZZ_CHECK(a->p.target == NULL || strcmp(a->p.target, b->p.target) == 0);
    size_t la = evbuffer_get_length(a->body), lb = evbuffer_get_length(b->body);
    FUZZ_CHECK(la == lb);
    FUZZ_CHECK(la == 0 ||
               memcmp(evbuffer_pullup(a->body, -1), evbuffer_pullup(b->body, -1), la) == 0);
    const struct evkeyval *x = a->p.fields.tqh_first, *y = b->p.fields.tqh_first;
    for (; x && y; x = x->next.tqe_next, y = y->next.tqe_next)
        FUZZ_CHECK(strcmp(x->key, y->key) == 0 && strcmp(x->value, y->value) == 0);
    FUZZ_CHECK(x == NULL && y == NULL);
}

static bool tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static void check_request(const reading *rd, const reqparse_limits *lim)
{
    const reqparse *p = &rd->p;
    FUZZ_CHECK(evbuffer_get_length(rd->body) <= lim->max_body);
    if (rd->r == REQPARSE_BAD)
        FUZZ_CHECK(p->err_status >= 400 && p->err_code != NULL && !p->keep_alive);
    if (rd->r != REQPARSE_DONE)
        return;
    FUZZ_CHECK(p->target != NULL && p->head_done);
    FUZZ_CHECK(p->err_status != 0 || p->target[0] != '\0'); /* a NUL in it: bad_target */
    FUZZ_CHECK(p->minor == 0 || p->minor == 1);
    FUZZ_CHECK(p->err_status == 0 || p->err_code != NULL);
    for (const struct evkeyval *kv = p->fields.tqh_first; kv; kv = kv->next.tqe_next) {
        FUZZ_CHECK(kv->key[0] != '\0');
        for (const char *c = kv->key; *c; c++)
            FUZZ_CHECK(tchar((unsigned char)*c));
        size_t vl = strlen(kv->value);
        FUZZ_CHECK(strpbrk(kv->value, "\r\n") == NULL);
        FUZZ_CHECK(vl == 0 || (kv->value[0] != ' ' && kv->value[0] != '\t' &&
                               kv->value[vl - 1] != ' ' && kv->value[vl - 1] != '\t'));
    }
}

static void reading_free(reading *rd)
{
    reqparse_clear(&rd->p);
    evbuffer_free(rd->body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    bool small = data[0] & 4;
    reqparse_limits lim = {small ? 32 : 4096, small ? 64 : 8192, bounds[data[0] & 3]};
    const char *text = (const char *)data + 3;
    size_t n = size - 3;
    size_t split = ((size_t)data[1] << 8 | data[2]) % (n + 1);

    reading whole, cut;
    size_t all[] = {n}, two[] = {split, n};
    read_cut(&whole, text, n, all, 1, &lim);
    read_cut(&cut, text, n, two, 2, &lim);
    check_same(&whole, &cut);
    check_request(&whole, &lim);
    FUZZ_CHECK(whole.used <= n);
    if (whole.r != REQPARSE_MORE) {
        size_t used = 1;
        FUZZ_CHECK(reqparse_feed(&whole.p, text, n, &used) == whole.r && used == 0);
    }
    reading_free(&whole);
    reading_free(&cut);
    return 0;
}
