/* hex: lowercase hex of bytes and of 64-bit values, by hand (a snprintf
 * per byte was a third of some hits' cost), and the value of a digit.
 * Header-only. */
#ifndef QUOTECACHE_HEX_H
#define QUOTECACHE_HEX_H

#include <stddef.h>
#include <stdint.h>

/* The 2n digits of in[0..n), then a NUL, into out. */
static inline void hex_bytes(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* The 16 digits of v, most significant first, into out (no NUL). */
static inline void hex_u64(uint64_t v, char out[16])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4)
        out[i] = digits[v & 15];
}

/* The value of the hex digit c (either case), or -1. */
static inline int hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

#endif
