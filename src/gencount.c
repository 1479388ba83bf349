/* gencount: see gencount.h. */
#include "quotecache/gencount.h"

int gencount_parse(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;

    if (s == NULL || len == 0 || len > 20)
        return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}
