/* mem: allocation that never returns NULL. Out of memory is decided once,
 * here: log one line and abort, as Redis and hiredis do. */
#ifndef QUOTECACHE_MEM_H
#define QUOTECACHE_MEM_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

#define QC_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
