/* sha256: SHA-256 of a buffer with OpenSSL's digest fetched once and one
 * context reused: EVP_Digest with EVP_sha256() fetches the algorithm on
 * every call, ~5k of the ~6k instructions a short input costs. Not
 * thread-safe (workers are single-threaded; a forked worker has its own
 * copy of the context). */
#ifndef QUOTECACHE_SHA256_H
#define QUOTECACHE_SHA256_H

#include <stddef.h>

#define SHA256_LEN 32

/* The digest of buf[0..len) into out. Returns 0, or -1 when OpenSSL
 * fails (out is then all zero). */
int sha256(const void *buf, size_t len, unsigned char out[SHA256_LEN]);
/* The first nbytes (at most SHA256_LEN) of it in hex: 2 nbytes digits and
 * a NUL. Returns what sha256 does. */
int sha256_hex(const void *buf, size_t len, size_t nbytes, char *out);

#endif
