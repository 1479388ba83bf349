/* Fuzz target: gencount_parse, on a generation counter's bytes as Redis
 * returns them (anyone with access to Redis can SET them). Oracles: a
 * counter is accepted exactly when it is 1..20 ASCII digits worth at most
 * UINT64_MAX (an independent check, on the text); an accepted one prints
 * back as its digits without leading zeros. The bytes end at a PROT_NONE
 * page, so a read past them faults. */
#include "fuzz.h"

#include <inttypes.h>
#include <stdbool.h>

#include "quotecache/gencount.h"

#define MAX_TEXT "18446744073709551615"

static bool is_counter(const char *s, size_t n)
{
    if (n == 0 || n > 20)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    while (n > 1 && *s == '0')
        s++, n--;
    return n < 20 || memcmp(s, MAX_TEXT, 20) <= 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_guarded(data, size);
    uint64_t v = 0;
    int rc = gencount_parse(s, size, &v);

    FUZZ_CHECK(rc == 0 || rc == -1);
    FUZZ_CHECK((rc == 0) == is_counter(s, size));
    if (rc == 0) {
        char back[24];
        const char *digits = s;
        size_t n = size;
        while (n > 1 && *digits == '0')
            digits++, n--;
        snprintf(back, sizeof(back), "%" PRIu64, v);
        FUZZ_CHECK(strlen(back) == n && memcmp(back, digits, n) == 0);
    }
    fuzz_guarded_free(s, size);
    return 0;
}
