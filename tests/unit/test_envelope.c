/* Unit tests for envelope: round trips (binary bodies), every truncation and
 * extension, garbage and out-of-range numbers. Each decode reads from a
 * buffer of exactly the length given, so ASan reports any over-read. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quotecache/envelope.h"

/* Decodes a private exact-size copy of buf[0..len). */
static int decode_copy(const char *buf, size_t len, envelope *e, size_t *bodylen, char **bodycopy)
{
    char *copy = malloc(len ? len : 1);
    const char *body = NULL;
    int rc;

    memcpy(copy, buf, len);
    rc = envelope_decode(copy, len, e, &body, bodylen);
    if (rc == 0 && bodycopy) {
        *bodycopy = malloc(*bodylen + 1);
        memcpy(*bodycopy, body, *bodylen);
        CHECK(body >= copy && body + *bodylen == copy + len);
    }
    free(copy);
    return rc;
}

static envelope sample(void)
{
    envelope e = {.status = 200,
                  .stored_at_ms = 1700000000123,
                  .load_ms = 42,
                  .product_id = 7,
                  .gen_global = 3,
                  .gen_product = 9};
    memcpy(e.etag, "0123456789abcdef", ENVELOPE_ETAG_LEN + 1);
    return e;
}

static void test_round_trip(void)
{
    static const char body[] = "{\"a\":1}\nline2\0after-nul\0\n";
    envelope in = sample(), out;
    size_t len = 0, blen = 0;
    char *enc = envelope_encode(&in, body, sizeof(body), &len);
    char *got = NULL;

    CHECK(enc != NULL && len > sizeof(body));
    CHECK(strncmp(enc, "QC2 200 1700000000123 42 7 3 9 0123456789abcdef ", 48) == 0);
    CHECK(decode_copy(enc, len, &out, &blen, &got) == 0);
    CHECK(blen == sizeof(body) && got && memcmp(got, body, blen) == 0);
    CHECK(out.status == 200 && out.stored_at_ms == in.stored_at_ms && out.load_ms == 42 &&
          out.product_id == 7 && out.gen_global == 3 && out.gen_product == 9 &&
          strcmp(out.etag, in.etag) == 0);
    free(got);
    free(enc);
}

static void test_extremes(void)
{
    envelope in = sample(), out;
    size_t len = 0, blen = 99;
    char *enc, *got = NULL;

    in.status = 404;
    in.stored_at_ms = INT64_MAX;
    in.load_ms = 0;
    in.product_id = INT64_MAX;
    in.gen_global = UINT64_MAX;
    in.gen_product = 0;
    enc = envelope_encode(&in, NULL, 0, &len);
    CHECK(decode_copy(enc, len, &out, &blen, &got) == 0);
    CHECK(blen == 0 && out.status == 404 && out.stored_at_ms == INT64_MAX &&
          out.product_id == INT64_MAX && out.gen_global == UINT64_MAX && out.gen_product == 0);
    free(got);
    free(enc);
}

static void test_truncations_and_extensions(void)
{
    static const char body[] = "body\n\0with\0nuls";
    envelope in = sample(), out;
    size_t len = 0, blen, rejected = 0;
    char *enc = envelope_encode(&in, body, sizeof(body), &len);
    char *longer = malloc(len + 1);

    for (size_t i = 0; i < len; i++)
        rejected += decode_copy(enc, i, &out, &blen, NULL) == -1;
    CHECK(rejected == len);
    memcpy(longer, enc, len);
    longer[len] = 'x';
    CHECK(decode_copy(longer, len + 1, &out, &blen, NULL) == -1);
    free(longer);
    free(enc);
}

/* A decode of text: the header as a string, then the body "xy". */
static int decode_text(const char *s)
{
    envelope e;
    size_t blen;
    return decode_copy(s, strlen(s), &e, &blen, NULL);
}

static void test_bad_headers(void)
{
    CHECK(decode_text("QC2 200 1 2 3 4 5 0123456789abcdef 2\nxy") == 0);
    CHECK(decode_text("QC2 404 0 0 1 0 0 0123456789abcdef 0\n") == 0);

    CHECK(decode_text("") == -1);
    CHECK(decode_text("QC2") == -1);
    /* An older quotecache's entry (its gen_product is not a scope sum). */
    CHECK(decode_text("QC1 200 1 2 3 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC3 200 1 2 3 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("qc1 200 1 2 3 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 500 1 2 3 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 2000 1 2 3 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 0200 1 2 3 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 200 -1 2 3 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 200 +1 2 3 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 200 01 2 3 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 200  1 2 3 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 0 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 200 9223372036854775808 2 3 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 200 1 9223372036854775808 3 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 9223372036854775808 4 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 18446744073709551616 5 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 99999999999999999999 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 5 0123456789abcdef 99999999999999999999999\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 5 0123456789abcdef 18446744073709551615\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 5 0123456789ABCDEF 2\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 5 0123456789abcde 2\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 5 0123456789abcdef0 2\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 5 0123456789abcdeg 2\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 5 0123456789abcdef 3\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 5 0123456789abcdef 1\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 5 0123456789abcdef 2 \nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 5 0123456789abcdef 2\r\nxy") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 5 0123456789abcdef 2") == -1);
    CHECK(decode_text("QC2 200 1 2 3 4 0123456789abcdef 2\nxy") == -1);
    CHECK(decode_text("{\"product_id\":7}") == -1);
    CHECK(envelope_decode(NULL, 0, &(envelope){0}, &(const char *){0}, &(size_t){0}) == -1);
}

/* Deterministic pseudo-random bytes: the decoder must survive anything. */
static uint32_t rng_state = 12345;
static uint32_t rng(void)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return rng_state >> 8;
}

static void test_garbage_and_mutations(void)
{
    static const char body[] = "{\"x\":1}";
    envelope in = sample(), out;
    size_t len = 0, blen, survived = 0, accepted = 0;
    char *enc = envelope_encode(&in, body, sizeof(body) - 1, &len);
    char buf[256];

    for (int i = 0; i < 20000; i++) {
        size_t n = rng() % sizeof(buf);
        for (size_t j = 0; j < n; j++)
            buf[j] = (char)rng();
        if (i % 2) /* half of them start plausibly */
            memcpy(buf, "QC2 200 ", n < 8 ? n : 8);
        accepted += decode_copy(buf, n, &out, &blen, NULL) == 0;
        survived++;
    }
    CHECK(survived == 20000 && accepted == 0);

    /* Every byte of a valid envelope replaced by every value: no crash, and
     * any accepted mutation still decodes to an in-range record. */
    memcpy(buf, enc, len);
    for (size_t i = 0; i < len; i++) {
        for (int v = 0; v < 256; v++) {
            char saved = buf[i];
            char *got = NULL;
            buf[i] = (char)v;
            if (decode_copy(buf, len, &out, &blen, &got) == 0) {
                CHECK(out.status == 200 || out.status == 404);
                CHECK(out.product_id > 0 && out.stored_at_ms >= 0 && out.load_ms >= 0);
                CHECK(blen == sizeof(body) - 1);
                free(got);
            }
            buf[i] = saved;
        }
    }
    free(enc);
}

static void test_etag(void)
{
    char tag[ENVELOPE_ETAG_LEN + 1];
    char tag2[ENVELOPE_ETAG_LEN + 1];

    envelope_etag("", 0, tag);
    CHECK(strcmp(tag, "e3b0c44298fc1c14") == 0);
    envelope_etag("abc", 3, tag);
    CHECK(strcmp(tag, "ba7816bf8f01cfea") == 0);
    envelope_etag("a\0b", 3, tag);
    envelope_etag("a\0c", 3, tag2);
    CHECK(strlen(tag) == ENVELOPE_ETAG_LEN && strcmp(tag, tag2) != 0);
}

int main(void)
{
    test_round_trip();
    test_extremes();
    test_truncations_and_extensions();
    test_bad_headers();
    test_garbage_and_mutations();
    test_etag();
    return CHECK_DONE();
}
