/* error: fills the qc_error that carries a failure to the client-facing JSON
 * ({"error": code, "message": message}). The message is always NUL-terminated,
 * truncated to fit, and scrubbed of control bytes, so a caller that
 * interpolates a piece of input can never break the response framing. */
#include "quotecache/error.h"

#include <stdarg.h>
#include <stdio.h>

/* Replaces bytes outside printable ASCII: the message ends up in JSON and in
 * logs, where a raw control byte or a stray UTF-8 fragment does harm. */
static void scrub(char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c > 0x7e)
            *s = '?';
    }
}

void qc_error_set(qc_error *e, int status, const char *code, const char *fmt, ...)
{
    va_list ap;

    if (!e)
        return;
    e->status = status;
    e->code = code ? code : "internal";
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    scrub(e->message);
}
