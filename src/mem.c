/* mem: the project's single out-of-memory policy. Every allocation goes
 * through these wrappers; on failure they print one line to stderr and abort,
 * so callers never carry half-handled NULL paths (the Redis/hiredis choice). */
#include "quotecache/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(const char *what, size_t n)
{
    fprintf(stderr, "quotecache: out of memory (%s of %zu bytes)\n", what, n);
    abort();
}

void *xmalloc(size_t n)
{
    /* malloc(0) may legally return NULL; ask for one byte so NULL always
     * means out of memory. */
    void *p = malloc(n ? n : 1);
    if (!p)
        oom("malloc", n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    /* As in xmalloc, a zero-sized request must not come back as NULL. */
    void *p = (n && size) ? calloc(n, size) : calloc(1, 1);
    if (!p)
        oom("calloc", n);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom("realloc", n);
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = xmalloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}
