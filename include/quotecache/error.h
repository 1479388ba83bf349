/* error: the one way an error travels from where it is found to the JSON the
 * client reads: {"error": code, "message": message}.
 *
 * Status convention for the whole project: functions return 0 on success and
 * a negative value on failure; when a failure must reach a client they fill a
 * qc_error as well. */
#ifndef QUOTECACHE_ERROR_H
#define QUOTECACHE_ERROR_H

typedef struct qc_error {
    int status;        /* HTTP status to answer with (400, 404, 502, ...) */
    const char *code;  /* stable machine-readable code; a static string */
    char message[256]; /* human text, NUL-terminated */
} qc_error;

/* Fills *e (status, static code, printf-style message). NULL e is allowed. */
void qc_error_set(qc_error *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
