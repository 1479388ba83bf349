/* resp: a Redis command in the wire format (see resp.h). */
#include "quotecache/resp.h"

#include <string.h>

/* Decimal digits of n, written at p when p is not NULL; returns how many. */
static size_t put_count(char *p, size_t n)
{
    char tmp[24];
    size_t k = 0;
    do {
        tmp[k++] = (char)('0' + n % 10);
        n /= 10;
    } while (n != 0);
    if (p != NULL) {
        for (size_t i = 0; i < k; i++)
            p[i] = tmp[k - 1 - i];
    }
    return k;
}

/* Appends a header line ("*N\r\n" or "$N\r\n") at out + at, within cap. */
static size_t put_header(char *out, size_t cap, size_t at, char type, size_t n)
{
    size_t need = 1 + put_count(NULL, n) + 2;
    if (at + need <= cap) {
        out[at] = type;
        size_t k = put_count(out + at + 1, n);
        out[at + 1 + k] = '\r';
        out[at + 2 + k] = '\n';
    }
    return at + need;
}

size_t resp_format(char *out, size_t cap, int argc, const char *const *argv, const size_t *lens)
{
    size_t at = put_header(out, cap, 0, '*', (size_t)(argc < 0 ? 0 : argc));
    for (int i = 0; i < argc; i++) {
        at = put_header(out, cap, at, '$', lens[i]);
        if (at + lens[i] + 2 <= cap) {
            memcpy(out + at, argv[i], lens[i]);
            out[at + lens[i]] = '\r';
            out[at + lens[i] + 1] = '\n';
        }
        at += lens[i] + 2;
    }
    return at;
}
