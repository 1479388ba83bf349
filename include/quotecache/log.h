/* log: one line per event on stderr, with a level, a timestamp and the
 * worker's pid. Debug lines cost one integer compare when off. */
#ifndef QUOTECACHE_LOG_H
#define QUOTECACHE_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

extern enum log_level log_threshold;
/* The id of the request being handled (set by accesslog around a request's
 * synchronous handling), added to every line meanwhile; NULL: none. */
extern const char *log_request_id;

void log_set_level(enum log_level level);
/* Parses "debug", "info", "warn" or "error". Returns 0, or -1. */
int log_level_parse(const char *name, enum log_level *out);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_threshold <= LOG_DEBUG)                                                            \
            log_msg(LOG_DEBUG, __VA_ARGS__);                                                       \
    } while (0)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
