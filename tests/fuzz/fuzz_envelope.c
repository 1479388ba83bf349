/* Fuzz target: envelope_decode, on a value read back from Redis (anyone
 * with access to Redis can write one). Oracle: the format is canonical, so
 * whatever decodes must encode back to exactly the same bytes. */
#include "fuzz.h"

#include "quotecache/envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    const char *body = NULL;
    size_t bodylen = 0, enclen = 0;
    envelope e;

    if (envelope_decode(buf, size, &e, &body, &bodylen) != 0)
        return 0;
    FUZZ_CHECK(e.status == 200 || e.status == 404);
    FUZZ_CHECK(e.product_id > 0 && e.stored_at_ms >= 0 && e.load_ms >= 0);
    FUZZ_CHECK(strlen(e.etag) == ENVELOPE_ETAG_LEN);
    FUZZ_CHECK(body >= buf && body + bodylen == buf + size);
    char *enc = envelope_encode(&e, body, bodylen, &enclen);
    FUZZ_CHECK(enclen == size && memcmp(enc, buf, size) == 0);
    free(enc);
    return 0;
}
