/* strbuf: appending strings and integers to a fixed buffer without printf,
 * for the per-request hot path (keys, canonical forms), where snprintf's
 * format parsing showed up in profiles. Header-only. Overflow is sticky:
 * once something did not fit, strbuf_ok() is false and the text is cut. */
#ifndef QUOTECACHE_STRBUF_H
#define QUOTECACHE_STRBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct strbuf {
    char *buf;
    size_t cap; /* bytes, including the terminating NUL */
    size_t len;
    bool overflow;
} strbuf;

static inline strbuf strbuf_on(char *buf, size_t cap)
{
    strbuf sb = {buf, cap, 0, cap == 0};
    if (cap > 0)
        buf[0] = '\0';
    return sb;
}

static inline void strbuf_mem(strbuf *sb, const char *s, size_t n)
{
    if (sb->overflow || sb->len + n >= sb->cap) {
        sb->overflow = true;
        return;
    }
    memcpy(sb->buf + sb->len, s, n);
    sb->len += n;
    sb->buf[sb->len] = '\0';
}

static inline void strbuf_str(strbuf *sb, const char *s)
{
    strbuf_mem(sb, s, strlen(s));
}

static inline void strbuf_i64(strbuf *sb, int64_t v)
{
    char tmp[21];
    size_t i = sizeof(tmp);
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        tmp[--i] = '-';
    strbuf_mem(sb, tmp + i, sizeof(tmp) - i);
}

static inline bool strbuf_ok(const strbuf *sb)
{
    return !sb->overflow;
}

#endif
