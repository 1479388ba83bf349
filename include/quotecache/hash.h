/* hash: the string hash of the in-process tables (flight, hot). FNV-1a:
 * short keys, no allocation, good enough spread for power-of-two tables.
 * Header-only. */
#ifndef QUOTECACHE_HASH_H
#define QUOTECACHE_HASH_H

#include <stdint.h>

static inline uint64_t hash_str(const char *s)
{
    uint64_t h = 14695981039346656037ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

#endif
