/* gencount: a generation counter as Redis returns it (the text of an INCR'd
 * string: anyone with access to Redis can set it to anything). Pure. */
#ifndef QUOTECACHE_GENCOUNT_H
#define QUOTECACHE_GENCOUNT_H

#include <stddef.h>
#include <stdint.h>

/* Reads s[0..len) as an unsigned decimal (ASCII digits only, 1 to 20 of
 * them, at most UINT64_MAX). Returns 0 with *out set, or -1 (nothing else
 * is a counter: a corrupted one must never fence-pass by accident). */
int gencount_parse(const char *s, size_t len, uint64_t *out);

#endif
