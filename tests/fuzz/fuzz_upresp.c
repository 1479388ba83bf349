/* Fuzz target: upresp, the parser of an upstream's answer (the upstream
 * chooses every byte, and how they are cut into reads).
 *
 * Input: byte 0 picks whether the request was a HEAD (bit 0), the body
 * bound (bits 1-2: 0, 16, 1000 or 65536 bytes) and whether the connection
 * closes after the bytes (bit 3); bytes 1-2 a split point; the rest is
 * what the upstream sent.
 *
 * Oracles: the bytes read whole and read in two pieces cut at the split
 * point (the untaken start of a line handed back, as upstream.c does) give
 * the same result, status, reuse, coding, bytes taken, body and fields.
 * An answer read is a final one (200..599), its body within the bound and
 * empty for a HEAD, 204 or 304; every field name is a non-empty token and
 * every value holds no CR, LF or NUL and no outer whitespace; bytes taken
 * never exceed those given; a refusal says why; a result other than MORE
 * stays. */
#include "fuzz.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <stdbool.h>
#include <strings.h>

#include "quotecache/upresp.h"

static const size_t bounds[] = {0, 16, 1000, 65536};

typedef struct reading {
    upresp p;
    struct evbuffer *body;
    upresp_result r;
    size_t used;
} reading;

/* Feeds data[0..n) cut at the given points (ascending, the last n). */
static void read_cut(reading *rd, const char *data, size_t n, const size_t *cuts, int ncuts,
                     bool head, size_t bound, bool eof)
{
    rd->body = evbuffer_new();
    upresp_init(&rd->p, head, bound, rd->body);
    size_t start = 0;
    rd->r = UPRESP_MORE;
    for (int i = 0; i < ncuts && rd->r == UPRESP_MORE; i++) {
        size_t used = 0;
        FUZZ_CHECK(cuts[i] >= start);
        rd->r = upresp_feed(&rd->p, data + start, cuts[i] - start, &used);
        FUZZ_CHECK(used <= cuts[i] - start);
        start += used;
    }
    if (rd->r == UPRESP_MORE && eof)
        rd->r = upresp_eof(&rd->p);
    rd->used = start;
}

static void check_same(const reading *a, const reading *b)
{
    FUZZ_CHECK(a->r == b->r);
    FUZZ_CHECK(a->used == b->used);
    FUZZ_CHECK(a->p.status == b->p.status && a->p.reusable == b->p.reusable &&
               a->p.coded == b->p.coded);
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

static void check_answer(const reading *rd, bool head, size_t bound)
{
    const upresp *p = &rd->p;
    size_t len = evbuffer_get_length(rd->body);
    if (rd->r == UPRESP_BROKEN || rd->r == UPRESP_TOO_LARGE)
        FUZZ_CHECK(p->why != NULL && p->why[0] != '\0' && !p->reusable);
    FUZZ_CHECK(len <= bound);
    if (rd->r != UPRESP_DONE)
        return;
    FUZZ_CHECK(p->status >= 200 && p->status <= 599);
    FUZZ_CHECK(p->minor == 0 || p->minor == 1);
    if (head || p->status == 204 || p->status == 304)
        FUZZ_CHECK(len == 0);
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
    upresp_clear(&rd->p);
    evbuffer_free(rd->body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    bool head = data[0] & 1;
    size_t bound = bounds[(data[0] >> 1) & 3];
    bool eof = data[0] & 8;
    const char *text = (const char *)data + 3;
    size_t n = size - 3;
    size_t split = ((size_t)data[1] << 8 | data[2]) % (n + 1);

    reading whole, cut;
    size_t all[] = {n}, two[] = {split, n};
    read_cut(&whole, text, n, all, 1, head, bound, eof);
    read_cut(&cut, text, n, two, 2, head, bound, eof);
    check_same(&whole, &cut);
    check_answer(&whole, head, bound);
    FUZZ_CHECK(whole.used <= n);
    if (whole.r != UPRESP_MORE) { /* it stays, and takes nothing more */
        size_t used = 1;
        FUZZ_CHECK(upresp_feed(&whole.p, text, n, &used) == whole.r && used == 0);
        FUZZ_CHECK(upresp_eof(&whole.p) == whole.r);
    }
    reading_free(&whole);
    reading_free(&cut);
    return 0;
}
