/* resp: a Redis command in the wire format (RESP: an array of bulk
 * strings), written with memcpy. hiredis's own formatter
 * (redisFormatSdsCommandArgv) grows an sds with sdscatfmt per argument,
 * ~8k instructions per command on the miss path. Pure. */
#ifndef QUOTECACHE_RESP_H
#define QUOTECACHE_RESP_H

#include <stddef.h>

/* Writes "*argc\r\n" and "$len\r\n<bytes>\r\n" per argument into out (at
 * most cap bytes, nothing past them) and returns the command's full
 * length; when that exceeds cap, out holds no usable command and the
 * caller retries with a buffer that large (as snprintf). */
size_t resp_format(char *out, size_t cap, int argc, const char *const *argv, const size_t *lens);

#endif
