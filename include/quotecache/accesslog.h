/* accesslog: request ids and the access log, one JSON line per request
 * (time, request id, client, method, target, status, X-Cache, bytes,
 * duration). Lines go to an in-memory buffer that a timer writes out (every
 * ACCESS_LOG_FLUSH_MS, or at once past ACCESS_LOG_FLUSH_BYTES), one write()
 * per flush, so a slow disk costs the loop one write at most; when the
 * buffer is full (ACCESS_LOG_MAX_BYTES) lines are dropped and counted in
 * quotecache_access_log_dropped_total. Off (the default), a request costs
 * one branch here. One log per process (a worker's). */
#ifndef QUOTECACHE_ACCESSLOG_H
#define QUOTECACHE_ACCESSLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
typedef struct http_req http_req;

#define ACCESS_LOG_FLUSH_MS 100
#define ACCESS_LOG_FLUSH_BYTES (64 * 1024)
#define ACCESS_LOG_MAX_BYTES (1024 * 1024)
#define REQUEST_ID_MAX 64

typedef struct access_log access_log;

/* path: a file (appended to, created 0640), "-" for stdout, or NULL / "off"
 * for no log (returns NULL, err ""). NULL with err filled when the file
 * cannot be opened. */
access_log *access_log_open(struct event_base *base, const char *path, char *err, size_t errlen);
/* --check-config: whether the workers will be able to open path (opened
 * for appending, created if absent, then closed). 0, or -1 with err. */
int access_log_probe(const char *path, char *err, size_t errlen);
/* Writes out what is buffered (blocking if it must: the process is going)
 * and closes. NULL is fine. */
void access_log_free(access_log *al);
/* SIGUSR1 (logrotate): writes out what is buffered to the old file, then
 * opens the path again, a new file if the old one was moved. */
void access_log_reopen(access_log *al);

/* At a request's arrival, before any answer: gives it its request id (the
 * client's X-Request-Id when valid, else a generated one) as the answer's
 * X-Request-Id header and as the id of log.c's lines until
 * access_log_end; with a log, arranges for its line once it is answered.
 * Returns the id, valid until access_log_end (the header keeps a copy). */
const char *access_log_begin(access_log *al, http_req *req);
/* The synchronous part of the request's handling is over. */
void access_log_end(void);

/* ---- pure, for tests ---- */

/* 1..REQUEST_ID_MAX characters of [A-Za-z0-9._:-]. */
bool request_id_valid(const char *s);
/* A new id for this process: a random per-process prefix and a counter. */
void request_id_generate(char out[REQUEST_ID_MAX + 1]);
/* Writes the n bytes of s to out as the inside of a JSON string: quote,
 * backslash, control characters and bytes past 0x7e escaped (\u00XX, bytes
 * read as Latin-1), so a line is valid ASCII JSON whatever the client sent.
 * Returns the bytes written, at most 6 * n; out must have room for that. */
size_t json_escape(char *out, const char *s, size_t n);
/* One access line (with its newline) into out[cap]; returns its length, or
 * 0 when it does not fit. */
typedef struct access_entry {
    int64_t time_ms; /* wall clock */
    const char *request_id, *client, *method, *target, *cache;
    int status;
    uint64_t bytes;
    double seconds;
} access_entry;
size_t access_line_format(char *out, size_t cap, const access_entry *e);

#endif
