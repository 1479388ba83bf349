/* graveyard: evhttp connections freed from the loop. evhttp must not free
 * a connection inside that connection's own callbacks, so the tax client
 * buries such connections here; they are freed at the next loop turn. */
#ifndef QUOTECACHE_GRAVEYARD_H
#define QUOTECACHE_GRAVEYARD_H

struct event_base;
struct evhttp_connection;

typedef struct graveyard graveyard;

graveyard *graveyard_new(struct event_base *base);
/* conn is freed at the next loop turn; safe inside conn's callbacks. */
void graveyard_bury(graveyard *g, struct evhttp_connection *conn);
/* Frees what is still buried, then g (NULL: nothing). */
void graveyard_free(graveyard *g);

#endif
