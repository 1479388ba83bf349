/* Unit tests for health: combining the workers' words (down anywhere is
 * down, starting until one is ready, a loading worker degrades) and the
 * rendered document. */
#include <string.h>

#include "check.h"
#include "quotecache/health.h"

#define OK_REDIS                                                                                   \
    (HEALTH_SET | HEALTH_READY | HEALTH_REDIS_UP | HEALTH_PG_UP | HEALTH_TAX_UP | HEALTH_INV_UP)

static void test_combine(void)
{
    health_view v;
    uint32_t w[3] = {OK_REDIS, OK_REDIS, OK_REDIS};
    health_combine(w, 3, &v);
    CHECK(v.code == 200 && strcmp(v.status, "ok") == 0 && v.workers == 3);
    CHECK(strcmp(v.redis, "up") == 0 && strcmp(v.postgres, "up") == 0);
    CHECK(strcmp(v.tax, "up") == 0 && strcmp(v.invalidation, "up") == 0);

    w[1] = (OK_REDIS & ~HEALTH_REDIS_UP) | HEALTH_REDIS_DOWN; /* one worker lost Redis */
    health_combine(w, 3, &v);
    CHECK(v.code == 200 && strcmp(v.status, "degraded") == 0 && strcmp(v.redis, "down") == 0);

    w[1] = OK_REDIS & ~HEALTH_PG_UP;
    health_combine(w, 3, &v);
    CHECK(strcmp(v.postgres, "down") == 0 && strcmp(v.status, "degraded") == 0);

    w[1] = OK_REDIS & ~HEALTH_READY; /* a worker still loading its catalog */
    health_combine(w, 3, &v);
    CHECK(v.code == 200 && strcmp(v.status, "degraded") == 0);

    uint32_t starting[2] = {HEALTH_SET | HEALTH_PG_UP, HEALTH_SET};
    health_combine(starting, 2, &v);
    CHECK(v.code == 503 && strcmp(v.status, "starting") == 0);
    CHECK(strcmp(v.redis, "disabled") == 0 && strcmp(v.tax, "unknown") == 0);
    CHECK(strcmp(v.postgres, "down") == 0);

    uint32_t tax[2] = {OK_REDIS, (OK_REDIS & ~HEALTH_TAX_UP) | HEALTH_TAX_DOWN};
    health_combine(tax, 2, &v);
    CHECK(strcmp(v.tax, "down") == 0 && strcmp(v.status, "degraded") == 0);

    health_combine(NULL, 0, &v); /* nobody accepting (all draining) */
    CHECK(v.code == 503 && v.workers == 0);
}

static void test_render(void)
{
    health_view v;
    uint32_t w[1] = {OK_REDIS};
    health_combine(w, 1, &v);
    char buf[256];
    size_t n = health_render(buf, sizeof(buf), &v);
    CHECK(n == strlen(buf));
    CHECK(strcmp(buf, "{\"status\":\"ok\",\"redis\":\"up\",\"postgres\":\"up\",\"tax\":\"up\","
                      "\"invalidation\":\"up\",\"workers\":1}") == 0);
    CHECK(health_render(buf, 10, &v) == 9 && strlen(buf) == 9);
}

int main(void)
{
    test_combine();
    test_render();
    return CHECK_DONE();
}
