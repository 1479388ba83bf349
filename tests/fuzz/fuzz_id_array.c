/* Fuzz target: quote_parse_id_array, on the text of a PostgreSQL bigint[]
 * ("{1,5,9}"). The output array is a heap block of exactly the bound, so a
 * write past it is an ASan report. Oracle: what is accepted is exactly
 * '{' [integer *(',' integer)] '}' and the numbers read are its numbers. */
#include "fuzz.h"

#include <errno.h>
#include <stdbool.h>

#include "quotecache/quote.h"

/* An independent reading of the grammar: optional '-', 1..19 digits. */
static int reference(const char *s, int64_t *out, size_t max)
{
    size_t n = 0;

    if (*s++ != '{')
        return -1;
    if (*s == '}')
        return s[1] == '\0' ? 0 : -1;
    for (;;) {
        const char *start = s;
        if (*s == '-')
            s++;
        const char *digits = s;
        while (*s >= '0' && *s <= '9')
            s++;
        if (s == digits || n == max)
            return -1;
        errno = 0;
        out[n++] = strtoll(start, NULL, 10);
        if (errno != 0)
            return -1;
        if (*s == '}')
            return s[1] == '\0' ? (int)n : -1;
        if (*s++ != ',')
            return -1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t max = size > 0 ? data[0] % 8 : 0; /* small bounds reach the limit */
    char *in = fuzz_cstr(size > 0 ? data + 1 : data, size > 0 ? size - 1 : 0);
    int64_t *got = malloc((max ? max : 1) * sizeof(*got));
    int64_t *want = malloc((max ? max : 1) * sizeof(*want));

    int rc = quote_parse_id_array(in, got, max);
    int ref = reference(in, want, max);
    FUZZ_CHECK(rc >= -1 && rc <= (int)max);
    FUZZ_CHECK(rc == ref);
    for (int i = 0; i < rc; i++)
        FUZZ_CHECK(got[i] == want[i]);
    free(got);
    free(want);
    free(in);
    return 0;
}
