/* fuzz_headers: header lists and list elements for the targets that read
 * HTTP fields (httpcache, proxyhdr, sharedkey). Header-only.
 *
 * A block of lines "Name:value" becomes an evhttp header list as the
 * network would give it: the name ends at the first ':' (so it never holds
 * one), leading whitespace of the value is dropped, and whatever
 * evhttp_add_header refuses (a CR or LF without continuation) is left out,
 * as evhttp's parser never produces it. */
#ifndef QUOTECACHE_FUZZ_HEADERS_H
#define QUOTECACHE_FUZZ_HEADERS_H

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdbool.h>
#include <strings.h>
#include <sys/queue.h>

#include "fuzz.h"

/* Reads lines of s[0..n) into h (initialised here) up to an empty line or
 * the end; returns how many bytes it used (the empty line included). */
static inline size_t fuzz_header_block(const char *s, size_t n, struct evkeyvalq *h)
{
    size_t i = 0;
    TAILQ_INIT(h);
    while (i < n) {
        const char *line = s + i;
        const char *nl = memchr(line, '\n', n - i);
        size_t len = nl ? (size_t)(nl - line) : n - i;
        i += len + (nl != NULL);
        if (len == 0)
            break;
        const char *colon = memchr(line, ':', len);
        if (colon == NULL)
            continue;
        char *name = fuzz_cstr((const uint8_t *)line, (size_t)(colon - line));
        const char *v = colon + 1;
        while (v < line + len && (*v == ' ' || *v == '\t'))
            v++;
        char *value = fuzz_cstr((const uint8_t *)v, (size_t)(line + len - v));
        if (strlen(name) == (size_t)(colon - line))
            evhttp_add_header(h, name, value);
        free(name);
        free(value);
    }
    return i;
}

/* How many fields called name h has. */
static inline int fuzz_count(const struct evkeyvalq *h, const char *name)
{
    int n = 0;
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next)
        n += strcasecmp(kv->key, name) == 0;
    return n;
}

/* The elements of a list field (RFC 9110 5.6.1), as RFC 9110 reads them,
 * written apart from the code under test: commas inside a quoted string
 * (5.6.4, with its backslash quoted-pairs) do not separate; whitespace
 * around an element is not part of it; empty elements are skipped. fn gets
 * each element (not terminated) and returns false to stop. */
typedef bool fuzz_elem_fn(const char *e, size_t n, void *arg);

static inline void fuzz_each_element(const struct evkeyvalq *h, const char *name, fuzz_elem_fn *fn,
                                     void *arg)
{
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, name) != 0)
            continue;
        const char *v = kv->value;
        size_t start = 0;
        bool quoted = false;
        for (size_t i = 0;; i++) {
            if (quoted && v[i] == '\\' && v[i + 1] != '\0') {
                i++;
                continue;
            }
            if (v[i] == '"')
                quoted = !quoted;
            if (v[i] != '\0' && (v[i] != ',' || quoted))
                continue;
            size_t a = start, b = i;
            while (a < b && (v[a] == ' ' || v[a] == '\t'))
                a++;
            while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
                b--;
            if (b > a && !fn(v + a, b - a, arg))
                return;
            if (v[i] == '\0')
                break;
            start = i + 1;
        }
    }
}

#endif
