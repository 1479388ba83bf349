/* backoff: the reconnect delay of a connection that keeps failing, doubling
 * from min_ms to max_ms and back to min_ms once it works again. Pure code,
 * shared by every client that reconnects by itself. */
#ifndef QUOTECACHE_BACKOFF_H
#define QUOTECACHE_BACKOFF_H

typedef struct backoff {
    int min_ms, max_ms;
    int next_ms; /* the delay backoff_next returns */
} backoff;

static inline void backoff_init(backoff *b, int min_ms, int max_ms)
{
    b->min_ms = min_ms;
    b->max_ms = max_ms;
    b->next_ms = min_ms;
}

/* The delay before the next attempt; each call doubles the following one. */
static inline int backoff_next(backoff *b)
{
    int ms = b->next_ms;
    b->next_ms = ms > b->max_ms / 2 ? b->max_ms : ms * 2;
    return ms;
}

/* The connection works: the next failure retries after min_ms. */
static inline void backoff_reset(backoff *b)
{
    b->next_ms = b->min_ms;
}

#endif
