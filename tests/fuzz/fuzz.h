/* fuzz: helpers shared by the libFuzzer targets. Header-only.
 *
 * FUZZ_CHECK is an oracle, not a test count: a broken invariant aborts, and
 * libFuzzer saves the input as a crash. */
#ifndef QUOTECACHE_FUZZ_H
#define QUOTECACHE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A NUL-terminated heap copy of data[0..size) (caller frees), sized exactly
 * so that ASan sees a read past the terminator. Real callers hand over
 * C strings, so an embedded NUL simply ends the string early. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        abort();
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* Copies data to the very end of a readable page followed by a PROT_NONE
 * one, and returns the copy: any read past data[size), even inside a
 * library ASan does not instrument (cJSON), faults. Larger inputs than a
 * page get a plain heap copy (caller passes it to fuzz_guarded_free). */
static inline char *fuzz_guarded(const uint8_t *data, size_t size)
{
    static char *guard;
    static size_t page;

    if (guard == NULL) {
        page = (size_t)sysconf(_SC_PAGESIZE);
        char *p = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED || mprotect(p + page, page, PROT_NONE) != 0)
            abort();
        guard = p + page;
    }
    if (size > page) {
        char *s = malloc(size);
        if (s == NULL)
            abort();
        memcpy(s, data, size);
        return s;
    }
    if (size)
        memcpy(guard - size, data, size);
    return guard - size;
}

static inline void fuzz_guarded_free(char *s, size_t size)
{
    if (size > (size_t)sysconf(_SC_PAGESIZE))
        free(s);
}

#endif
