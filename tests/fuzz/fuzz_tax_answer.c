/* Fuzz target: tax_parse_answer, on the body of a 200 from the tax
 * service. The body sits right before an unreadable page, so a read past
 * its end faults even inside cJSON (not instrumented by ASan). Oracle: an
 * accepted answer is an integer in 0 .. 2^53. */
#include "fuzz.h"

#include "quotecache/tax.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = fuzz_guarded(data, size);
    int64_t v = -1;

    if (tax_parse_answer(body, size, &v) == 0)
        FUZZ_CHECK(v >= 0 && v <= 9007199254740992LL);
    fuzz_guarded_free(body, size);
    return 0;
}
