/* log: formats and writes log lines to stderr. */
#include "quotecache/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum log_level log_threshold = LOG_INFO;
const char *log_request_id;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level level)
{
    log_threshold = level;
}

int log_level_parse(const char *name, enum log_level *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level < log_threshold)
        return;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char line[1024];
    int n = snprintf(line, sizeof(line),
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ [%d] %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)(tv.tv_usec / 1000), (int)getpid(), level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t used = strlen(line);
    if (log_request_id != NULL && used < sizeof(line) - 1)
        snprintf(line + used, sizeof(line) - used - 1, " request_id=%s", log_request_id);
    /* One line per event: libpq and others hand us multi-line messages. */
    size_t len = strlen(line);
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == ' '))
        line[--len] = '\0';
    for (size_t i = 0; i < len; i++) {
        if (line[i] == '\n' || line[i] == '\t' || line[i] == '\r')
            line[i] = ' ';
    }
    /* One write per line so lines of concurrent workers do not interleave. */
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
