/* httphdr: the request headers whose value changes the answer, matched as
 * pure functions over the raw header value (as reqparse hands it over:
 * NUL-terminated, outer whitespace trimmed, any other byte possible); and
 * the name a request's method is spelled with. */
#ifndef QUOTECACHE_HTTPHDR_H
#define QUOTECACHE_HTTPHDR_H

#include <event2/http.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <strings.h>

/* True when the comma-separated list in value (Cache-Control, Pragma)
 * contains token, compared case-insensitively, as a whole list element or
 * the name of a "name=..." / "name;..." one. Optional whitespace (space,
 * tab) around elements is ignored. NULL value: false. */
bool httphdr_has_token(const char *value, const char *token);

/* True when the If-None-Match value inm is "*" or lists the entity tag
 * etag (given without quotes), strong or weak ("W/"): the weak comparison
 * of RFC 9110 13.1.2, which is the one If-None-Match uses. A malformed
 * element never matches. NULL inm or etag: false. */
bool httphdr_etag_matches(const char *inm, const char *etag);

/* True when c may stand in a token (RFC 9110 5.6.2: letters, digits and
 * !#$%&'*+-.^_`|~), as a field name must: one rule for the names we read
 * from clients (reqparse.c) and from the upstream (upresp.c). */
bool httphdr_is_tchar(unsigned char c);

/* Reads a chunk-size line l[0..n) without its CRLF (RFC 9112 7.1: hex
 * digits, optional whitespace, extensions after ';', which are ignored):
 * one rule for the request bodies we read (reqparse.c) and the upstream's
 * answers (upresp.c). Returns HTTPHDR_CHUNK_OK with *size set,
 * HTTPHDR_CHUNK_HUGE past 15 hex digits, or HTTPHDR_CHUNK_BAD. */
enum { HTTPHDR_CHUNK_OK, HTTPHDR_CHUNK_HUGE, HTTPHDR_CHUNK_BAD };
int httphdr_chunk_size(const char *l, size_t n, uint64_t *size);

/* Whether field name a is b, without case: the first letters first,
 * where most names asked about differ, then strcasecmp; asked of every
 * field of every message more than once. */
static inline bool httphdr_name_is(const char *a, const char *b)
{
    return ((a[0] ^ b[0]) & ~0x20) == 0 && strcasecmp(a, b) == 0;
}

/* The method's name: GET, HEAD, POST, PUT, DELETE, OPTIONS or PATCH (the
 * methods quotecache serves or forwards), "OTHER" for any other. */
const char *httphdr_method_name(enum evhttp_cmd_type m);

#endif
