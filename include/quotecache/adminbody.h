/* adminbody: the body of POST /admin/invalidate, read as a pure function
 * over the bytes the client sent (not NUL-terminated, any byte possible). */
#ifndef QUOTECACHE_ADMINBODY_H
#define QUOTECACHE_ADMINBODY_H

#include <stddef.h>

#define ADMINBODY_MAX 4096 /* longer bodies are refused unread */

/* Parses {"product_id": N} (N an integer 1 .. 2^53 - 1) or {"all": true},
 * the object's only member, with nothing but JSON whitespace around it
 * and no control byte (below 0x20) but tab, CR and LF anywhere. Returns N,
 * 0 for all, -1 for anything else (empty, too long, not that shape). */
long long adminbody_parse_invalidate(const char *text, size_t len);

#endif
