/* accesslog: owns the process's access log (its descriptor, buffer and
 * flush timer) and the request ids. See accesslog.h for the contract. */
#include "quotecache/accesslog.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "quotecache/hdrlist.h"
#include "quotecache/httpconn.h"
#include "quotecache/httphdr.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"

#define TARGET_MAX 4096 /* bytes of a target logged; longer ones are cut */

struct access_log {
    struct event_base *base;
    char *path; /* NULL: stdout */
    int fd;
    char *buf; /* ACCESS_LOG_MAX_BYTES */
    size_t len;
    struct event *timer; /* armed while the buffer holds lines */
    bool warned;         /* a write error was logged (once per open) */
};

/* The one log of this process, for httpconn's on_sent callback (whose
 * argument carries the request's arrival time). */
static access_log *active;

/* ---- formatting without printf (it was most of a line's cost) ---- */

static char *put_lit(char *o, const char *lit)
{
    size_t n = strlen(lit); /* of a literal: folded by the compiler */
    memcpy(o, lit, n);
    return o + n;
}

static char *put_u64(char *o, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *o++ = tmp[--n];
    return o;
}

static char *put_hex(char *o, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    size_t n = 0;
    do {
        tmp[n++] = hex[v & 15];
        v >>= 4;
    } while (v != 0);
    while (n > 0)
        *o++ = tmp[--n];
    return o;
}

/* ---- request ids ---- */

bool request_id_valid(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++) {
        char c = s[n];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok || n == REQUEST_ID_MAX)
            return false;
    }
    return n > 0;
}

/* A random prefix per process (made on first use: in a worker, after the
 * fork) and a counter: unique across workers and instances in practice. */
void request_id_generate(char out[REQUEST_ID_MAX + 1])
{
    static char prefix[13];
    static uint64_t counter;
    if (prefix[0] == '\0') {
        unsigned char r[6] = {0};
        if (getrandom(r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts); /* a weak fallback still differs per worker */
            uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 20);
            memcpy(r, &x, sizeof(r));
        }
        snprintf(prefix, sizeof(prefix), "%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4],
                 r[5]);
    }
    memcpy(out, prefix, 12);
    out[12] = '-';
    *put_hex(out + 13, ++counter) = '\0'; /* 13 + 16 hex digits at most */
}

/* ---- lines ---- */

size_t json_escape(char *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20 || c > 0x7e) {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        } else {
            *o++ = (char)c;
        }
    }
    return (size_t)(o - out);
}

/* out gets "s" (escaped, quoted), or null for NULL. */
static char *put_str(char *o, const char *s, size_t max)
{
    if (s == NULL) {
        memcpy(o, "null", 4);
        return o + 4;
    }
    size_t n = strlen(s);
    *o++ = '"';
    o += json_escape(o, s, n < max ? n : max);
    *o++ = '"';
    return o;
}

static size_t str_room(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    return 6 * (n < max ? n : max) + 2;
}

/* "2026-12-02T01:23:45.678Z", the second's part formatted once a second. */
static char *put_time(char *o, int64_t ms)
{
    static time_t last = -1;
    static char sec[24];
    time_t t = (time_t)(ms / 1000);
    if (t != last) {
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(sec, sizeof(sec), "%Y-%m-%dT%H:%M:%S", &tm);
        last = t;
    }
    size_t n = strlen(sec);
    memcpy(o, sec, n);
    o += n;
    int frac = (int)(ms % 1000);
    o[0] = '.';
    o[1] = (char)('0' + frac / 100);
    o[2] = (char)('0' + frac / 10 % 10);
    o[3] = (char)('0' + frac % 10);
    o[4] = 'Z';
    return o + 5;
}

/* Seconds with six decimals, from whole microseconds. */
static char *put_seconds(char *o, double seconds)
{
    uint64_t us = seconds > 0 && seconds < 1e12 ? (uint64_t)(seconds * 1e6 + 0.5) : 0;
    o = put_u64(o, us / 1000000);
    *o++ = '.';
    uint64_t frac = us % 1000000;
    for (uint64_t d = 100000; d > 0; d /= 10)
        *o++ = (char)('0' + frac / d % 10);
    return o;
}

size_t access_line_format(char *out, size_t cap, const access_entry *e)
{
    size_t need = 256 + str_room(e->request_id, REQUEST_ID_MAX) + str_room(e->client, 64) +
                  str_room(e->method, 16) + str_room(e->target, TARGET_MAX) +
                  str_room(e->cache, 16);
    if (cap < need)
        return 0;
    char *o = put_lit(out, "{\"time\":\"");
    o = put_time(o, e->time_ms);
    o = put_str(put_lit(o, "\",\"request_id\":"), e->request_id, REQUEST_ID_MAX);
    o = put_str(put_lit(o, ",\"client\":"), e->client, 64);
    o = put_str(put_lit(o, ",\"method\":"), e->method, 16);
    o = put_str(put_lit(o, ",\"target\":"), e->target, TARGET_MAX);
    o = put_u64(put_lit(o, ",\"status\":"), e->status > 0 ? (uint64_t)e->status : 0);
    o = put_str(put_lit(o, ",\"cache\":"), e->cache, 16);
    o = put_u64(put_lit(o, ",\"bytes\":"), e->bytes);
    o = put_seconds(put_lit(o, ",\"duration\":"), e->seconds);
    o = put_lit(o, "}\n");
    *o = '\0';
    return (size_t)(o - out);
}

/* ---- the buffer ---- */

/* One write() of what is buffered; what it did not take stays. */
static void flush_once(access_log *al)
{
    if (al->len == 0)
        return;
    ssize_t n = write(al->fd, al->buf, al->len);
    if (n > 0) {
        memmove(al->buf, al->buf + n, al->len - (size_t)n);
        al->len -= (size_t)n;
    } else if (n < 0 && errno != EAGAIN && errno != EINTR && !al->warned) {
        log_warn("access log %s: %s (lines are kept until the buffer is full, then dropped)",
                 al->path ? al->path : "stdout", strerror(errno));
        al->warned = true;
    }
}

static void arm(access_log *al)
{
    struct timeval tv = {0, ACCESS_LOG_FLUSH_MS * 1000};
    evtimer_add(al->timer, &tv);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    access_log *al = arg;
    flush_once(al);
    if (al->len > 0)
        arm(al);
}

static void append(access_log *al, const access_entry *e)
{
    bool was_empty = al->len == 0;
    size_t n = access_line_format(al->buf + al->len, ACCESS_LOG_MAX_BYTES - al->len, e);
    if (n == 0) {
        metrics_inc(M_ACCESS_LOG_DROPPED);
        return;
    }
    al->len += n;
    if (al->len >= ACCESS_LOG_FLUSH_BYTES)
        flush_once(al);
    if (was_empty && al->len > 0)
        arm(al);
}

/* ---- the request's line ---- */

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* httpconn's callback: the answer is rendered; req is still whole. */
static void on_complete(http_req *req, void *arg)
{
    access_log *al = active;
    if (al == NULL)
        return;
    struct evkeyvalq *out = req->out;
    int m = req->method;
    int status = req->status;
    struct timeval now;
    event_base_gettimeofday_cached(al->base, &now);
    access_entry e = {
        .time_ms = (int64_t)now.tv_sec * 1000 + now.tv_usec / 1000,
        .request_id = evhttp_find_header(out, "X-Request-Id"),
        .client = req->peer,
        .method = httphdr_method_name(m),
        .target = req->target,
        .cache = evhttp_find_header(out, "X-Cache"),
        .status = status,
        .bytes = req->bytes,
        .seconds = (double)(mono_us() - (int64_t)(uintptr_t)arg) / 1e6,
    };
    append(al, &e);
}

const char *access_log_begin(access_log *al, http_req *req)
{
    /* A made id lives here until the next request's: log_request_id is
     * cleared before then (access_log_end); the answer's header has a copy. */
    static char made[REQUEST_ID_MAX + 1];
    const char *id = evhttp_find_header(req->in, "X-Request-Id");
    if (id == NULL || !request_id_valid(id)) {
        request_id_generate(made);
        id = made;
    }
    hdrlist_add(req->out, "X-Request-Id", id);
    log_request_id = id;
    if (al != NULL) {
        req->on_sent = on_complete;
        req->sent_arg = (void *)(uintptr_t)mono_us();
    }
    return id;
}

void access_log_end(void)
{
    log_request_id = NULL;
}

/* ---- life cycle ---- */

static int open_fd(const char *path)
{
    if (path == NULL)
        return dup(STDOUT_FILENO); /* blocking: stdout is shared with the master */
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0640);
}

access_log *access_log_open(struct event_base *base, const char *path, char *err, size_t errlen)
{
    err[0] = '\0';
    if (path == NULL || strcmp(path, "off") == 0)
        return NULL;
    bool out = strcmp(path, "-") == 0;
    int fd = open_fd(out ? NULL : path);
    if (fd < 0) {
        snprintf(err, errlen, "--access-log %s: %s", path, strerror(errno));
        return NULL;
    }
    access_log *al = xcalloc(1, sizeof(*al));
    al->base = base;
    al->path = out ? NULL : xstrdup(path);
    al->fd = fd;
    al->buf = xmalloc(ACCESS_LOG_MAX_BYTES);
    al->timer = evtimer_new(base, on_timer, al);
    active = al;
    return al;
}

int access_log_probe(const char *path, char *err, size_t errlen)
{
    if (path == NULL || strcmp(path, "off") == 0 || strcmp(path, "-") == 0)
        return 0;
    int fd = open_fd(path);
    if (fd < 0) {
        snprintf(err, errlen, "--access-log %s: %s", path, strerror(errno));
        return -1;
    }
    close(fd);
    return 0;
}

/* Everything buffered, before a close: a few writes at most. */
static void drain(access_log *al)
{
    for (int i = 0; i < 64 && al->len > 0; i++) {
        size_t before = al->len;
        flush_once(al);
        if (al->len == before) {
            struct timespec ts = {0, 1000000}; /* a full pipe: let the reader catch up */
            nanosleep(&ts, NULL);
        }
    }
}

void access_log_reopen(access_log *al)
{
    if (al == NULL || al->path == NULL)
        return;
    drain(al);
    int fd = open_fd(al->path);
    if (fd < 0) {
        log_warn("access log %s: cannot reopen: %s; still writing the old file", al->path,
                 strerror(errno));
        return;
    }
    close(al->fd);
    al->fd = fd;
    al->warned = false;
    log_info("access log %s reopened", al->path);
}

void access_log_free(access_log *al)
{
    if (al == NULL)
        return;
    drain(al);
    if (active == al)
        active = NULL;
    event_free(al->timer);
    close(al->fd);
    free(al->buf);
    free(al->path);
    free(al);
}
