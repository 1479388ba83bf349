/* hdrlist: header lists (libevent's struct evkeyvalq) with one allocation
 * a field, the node, its name and its value in one block, where
 * evhttp_add_header makes three: a proxied request and its answer carry a
 * dozen fields, and their allocations were a third of a pass-through's
 * instructions. hdrlist_clear and hdrlist_remove free fields of either
 * kind (libevent's, from evhttp_add_header or evhttp_parse_query_str, and
 * ours); libevent's own would free ours wrongly, so they are poisoned for
 * every file that includes this header. */
#ifndef QUOTECACHE_HDRLIST_H
#define QUOTECACHE_HDRLIST_H

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stddef.h>

/* Appends name: value. Refuses (-1, nothing added) a name or value with a
 * CR or LF, as evhttp_add_header does: what is rendered from the list
 * stays one field line. 0 when added. */
int hdrlist_add(struct evkeyvalq *h, const char *name, const char *value);

/* Appends name[0..nl): value[0..vl), unchecked: for the parsers, which
 * have refused CR, LF and NUL already. */
void hdrlist_add_n(struct evkeyvalq *h, const char *name, size_t nl, const char *value, size_t vl);

/* Appends a copy of every field of from to to (by hdrlist_add). */
void hdrlist_copy(struct evkeyvalq *to, const struct evkeyvalq *from);

/* Removes the first field named name (without case): 0, or -1 if none. */
int hdrlist_remove(struct evkeyvalq *h, const char *name);

/* Removes and frees every field. */
void hdrlist_clear(struct evkeyvalq *h);

#pragma GCC poison evhttp_clear_headers evhttp_remove_header

#endif
