/* listener: opening the listening sockets, done once by the master (and
 * tried without listening by --check-config). */
#ifndef QUOTECACHE_LISTENER_H
#define QUOTECACHE_LISTENER_H

#include <stddef.h>

#include "quotecache/config.h"

/* Resolves, binds (SO_REUSEADDR, SO_REUSEPORT) and listens; the socket is
 * non-blocking. Returns the descriptor, or -1 with one line in err. */
int listener_open(const hostport *hp, char *err, size_t errlen);
/* Resolves and binds as listener_open would, without listening, then
 * closes: whether the address can be served (a running quotecache on it
 * does not count against it). Returns 0, or -1 with one line in err. */
int listener_probe(const hostport *hp, char *err, size_t errlen);

#endif
