/* health: the instance's /healthz answer from the words each accepting
 * worker publishes (metrics_state_publish). Pure. */
#ifndef QUOTECACHE_HEALTH_H
#define QUOTECACHE_HEALTH_H

#include <stddef.h>
#include <stdint.h>

/* One worker's word. */
enum {
    HEALTH_SET = 1,        /* published (a word of 0 is no worker) */
    HEALTH_READY = 2,      /* catalog loaded */
    HEALTH_REDIS_UP = 4,   /* neither Redis bit: --redis none */
    HEALTH_REDIS_DOWN = 8, /* */
    HEALTH_PG_UP = 16,     /* */
    HEALTH_TAX_UP = 32,    /* neither tax bit: not known yet */
    HEALTH_TAX_DOWN = 64,  /* */
    HEALTH_INV_UP = 128,   /* listening for change notifications */
};

typedef struct health_view {
    int code; /* 503 until some worker has its catalog, then 200 */
    const char *status, *redis, *postgres, *tax, *invalidation;
    size_t workers;
} health_view;

/* A component is down when it is down for any worker; "starting" until
 * some worker is ready, then "ok", or "degraded" while a component is down
 * or a worker still waits for its catalog. */
void health_combine(const uint32_t *words, size_t n, health_view *out);
/* The JSON document; returns its length (truncated to len - 1). */
size_t health_render(char *buf, size_t len, const health_view *v);

#endif
