/* Unit tests for sharedhot: stamps, the SHOT_MS bound, Vary, drops. */
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <string.h>
#include <sys/queue.h>

#include "check.h"
#include "quotecache/hdrlist.h"
#include "quotecache/sharedhot.h"

static struct evkeyvalq none;

static skey_entry entry(int64_t stored, int64_t fresh_until, const char *body)
{
    skey_entry e = {0};
    e.status = 200;
    e.stored_ms = stored;
    e.fresh_until_ms = fresh_until;
    e.body = body;
    e.len = strlen(body);
    return e;
}

static void test_kept_for_shot_ms_at_most(void)
{
    shot *t = shot_new(1 << 20);
    skey_entry e = entry(900, 60000, "hello");
    uint64_t s = shot_stamp(t, "catalog\n7");
    CHECK(shot_get(t, "canon", s, &none, 1000, 1000) == NULL);
    shot_put(t, "canon", s, &e, &none, &none, 1000, 1000);
    const lcache_entry *c = shot_get(t, "canon", s, &none, 1000 + SHOT_MS - 1, 1000 + SHOT_MS - 1);
    CHECK(c && c->len == 5 && memcmp(c->body, "hello", 5) == 0);
    CHECK(c && c->stored_ms == 900 && c->fresh_until_ms == 60000); /* what Age and ttl say */
    CHECK(shot_get(t, "canon2", s, &none, 1001, 1001) == NULL);
    CHECK(shot_get(t, "canon", s, &none, 1000 + SHOT_MS, 1000 + SHOT_MS) == NULL);
    /* Never past the entry's freshness, nor kept once it is past. */
    skey_entry soon = entry(900, 1100, "x");
    shot_put(t, "canon", s, &soon, &none, &none, 1000, 1000);
    CHECK(shot_get(t, "canon", s, &none, 1099, 1099) != NULL);
    CHECK(shot_get(t, "canon", s, &none, 1100, 1100) == NULL);
    shot_put(t, "canon", s, &soon, &none, &none, 1100, 1100);
    CHECK(shot_count(t) == 0);
    /* SHOT_MS is on the monotonic clock: a step back of the wall clock
     * does not stretch it; freshness stays on the wall clock. */
    shot_put(t, "canon", s, &e, &none, &none, 2000, 50);
    CHECK(shot_get(t, "canon", s, &none, 2000 - 3600000, 50 + SHOT_MS - 1) != NULL);
    CHECK(shot_get(t, "canon", s, &none, 2000 - 3600000, 50 + SHOT_MS) == NULL);
    shot_put(t, "canon", s, &e, &none, &none, 2000, 50);
    CHECK(shot_get(t, "canon", s, &none, 60000, 51) == NULL);
    shot_free(t);
}

static void test_drops_move_stamps(void)
{
    shot *t = shot_new(1 << 20);
    skey_entry e = entry(0, 60000, "v1");
    const char *r7 = "catalog\n7", *r8 = "catalog\n8";
    uint64_t s7 = shot_stamp(t, r7), s8 = shot_stamp(t, r8);
    shot_put(t, "c7", s7, &e, &none, &none, 0, 0);
    shot_put(t, "c8", s8, &e, &none, &none, 0, 0);
    shot_drop_resource(t, r7);
    CHECK(shot_stamp(t, r7) != s7 && shot_stamp(t, r8) == s8);
    CHECK(shot_get(t, "c7", shot_stamp(t, r7), &none, 1, 1) == NULL);
    CHECK(shot_get(t, "c8", shot_stamp(t, r8), &none, 1, 1) != NULL);
    /* A read that began before the drop files its copy under the old
     * stamp: nobody finds it. */
    shot_put(t, "c7", s7, &e, &none, &none, 1, 1);
    CHECK(shot_get(t, "c7", shot_stamp(t, r7), &none, 2, 2) == NULL);
    uint64_t before = shot_stamp(t, r8);
    shot_drop_all(t);
    CHECK(shot_count(t) == 0 && shot_stamp(t, r8) != before);
    CHECK(shot_get(t, "c8", shot_stamp(t, r8), &none, 3, 3) == NULL);
    shot_free(t);
}

static void test_vary(void)
{
    shot *t = shot_new(1 << 20);
    struct evkeyvalq a, b, twice;
    TAILQ_INIT(&a);
    TAILQ_INIT(&b);
    TAILQ_INIT(&twice);
    evhttp_add_header(&a, "Cookie", "user=a");
    evhttp_add_header(&b, "Cookie", "user=b");
    evhttp_add_header(&twice, "Cookie", "user=a");
    evhttp_add_header(&twice, "Cookie", "x=1");
    skey_entry e = entry(0, 60000, "page of a");
    e.nvary = 1;
    strcpy(e.vary[0], "cookie");
    uint64_t s = shot_stamp(t, "r");
    shot_put(t, "c", s, &e, &none, &a, 0, 0);
    CHECK(shot_get(t, "c", s, &a, 1, 1) != NULL);
    CHECK(shot_get(t, "c", s, &b, 1, 1) == NULL);
    CHECK(shot_get(t, "c", s, &none, 1, 1) == NULL);
    CHECK(shot_get(t, "c", s, &twice, 1, 1) == NULL);
    /* Stored for one field "user=a, x=1": two fields join to the same
     * text, but no Redis entry is their variant, so no copy is either. */
    struct evkeyvalq one;
    TAILQ_INIT(&one);
    evhttp_add_header(&one, "Cookie", "user=a, x=1");
    shot_put(t, "c", s, &e, &none, &one, 0, 0);
    CHECK(shot_get(t, "c", s, &one, 1, 1) != NULL);
    CHECK(shot_get(t, "c", s, &twice, 1, 1) == NULL);
    hdrlist_clear(&one);
    shot_drop_all(t);
    shot_put(t, "c", shot_stamp(t, "r"), &e, &none, &twice, 0, 0); /* no one value: not kept */
    CHECK(shot_count(t) == 0);
    hdrlist_clear(&a);
    hdrlist_clear(&b);
    hdrlist_clear(&twice);
    shot_free(t);
}

/* lcache compares joined values cut at LCACHE_VARY_VALUE_MAX - 1 bytes,
 * and an empty field as an absent one; a Redis hit compares whole values
 * and tells absent from empty, so neither request gets a copy. */
static void test_vary_past_the_cut_and_empty(void)
{
    shot *t = shot_new(1 << 20);
    char cookie[3][1200]; /* a's and b's differ at byte 1190 only; then "" */
    struct evkeyvalq req[3];
    for (int i = 0; i < 3; i++) {
        memset(cookie[i], 'x', sizeof(cookie[i]) - 1);
        cookie[i][sizeof(cookie[i]) - 1] = '\0';
        cookie[i][1190] = (char)('a' + i);
        TAILQ_INIT(&req[i]);
    }
    cookie[2][0] = '\0';
    skey_entry e = entry(0, 60000, "page of a");
    e.nvary = 1;
    strcpy(e.vary[0], "cookie");
    uint64_t s = shot_stamp(t, "r");
    for (int i = 0; i < 3; i++)
        evhttp_add_header(&req[i], "Cookie", cookie[i]);
    shot_put(t, "c", s, &e, &none, &req[0], 0, 0);
    CHECK(shot_get(t, "c", s, &req[1], 1, 1) == NULL); /* a's answer to b */
    CHECK(shot_count(t) == 0);
    shot_put(t, "c", s, &e, &none, &none, 0, 0); /* the variant without Cookie */
    CHECK(shot_get(t, "c", s, &none, 1, 1) != NULL);
    for (int i = 0; i < 3; i++) {
        CHECK(shot_get(t, "c", s, &req[i], 1, 1) == NULL);
        hdrlist_clear(&req[i]);
    }
    shot_free(t);
}

int main(void)
{
    TAILQ_INIT(&none);
    test_kept_for_shot_ms_at_most();
    test_drops_move_stamps();
    test_vary();
    test_vary_past_the_cut_and_empty();
    return CHECK_DONE();
}
