/* health: combines the workers' published health words. */
#include "quotecache/health.h"

#include <stdbool.h>
#include <stdio.h>

void health_combine(const uint32_t *words, size_t n, health_view *out)
{
    uint32_t any = 0, all = n ? ~0u : 0;
    for (size_t i = 0; i < n; i++) {
        any |= words[i];
        all &= words[i];
    }
    bool ready = any & HEALTH_READY;
    bool ok = !(any & HEALTH_REDIS_DOWN) && (all & HEALTH_PG_UP) && !(any & HEALTH_TAX_DOWN) &&
              (all & HEALTH_INV_UP) && (all & HEALTH_READY);
    out->code = ready ? 200 : 503;
    out->status = !ready ? "starting" : ok ? "ok" : "degraded";
    out->redis = any & HEALTH_REDIS_DOWN ? "down" : any & HEALTH_REDIS_UP ? "up" : "disabled";
    out->postgres = all & HEALTH_PG_UP ? "up" : "down";
    out->tax = any & HEALTH_TAX_DOWN ? "down" : any & HEALTH_TAX_UP ? "up" : "unknown";
    out->invalidation = all & HEALTH_INV_UP ? "up" : "down";
    out->workers = n;
}

size_t health_render(char *buf, size_t len, const health_view *v)
{
    int n = snprintf(buf, len,
                     "{\"status\":\"%s\",\"redis\":\"%s\",\"postgres\":\"%s\",\"tax\":\"%s\","
                     "\"invalidation\":\"%s\",\"workers\":%zu}",
                     v->status, v->redis, v->postgres, v->tax, v->invalidation, v->workers);
    if (n < 0)
        return 0;
    return (size_t)n < len ? (size_t)n : len - 1;
}
