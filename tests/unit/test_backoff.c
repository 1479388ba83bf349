/* Unit tests of the reconnect backoff: doubling, the cap, the reset. */
#include "check.h"
#include "quotecache/backoff.h"

static void test_doubles_to_the_cap(void)
{
    backoff b;
    backoff_init(&b, 100, 2000);
    CHECK(backoff_next(&b) == 100);
    CHECK(backoff_next(&b) == 200);
    CHECK(backoff_next(&b) == 400);
    CHECK(backoff_next(&b) == 800);
    CHECK(backoff_next(&b) == 1600);
    CHECK(backoff_next(&b) == 2000);
    CHECK(backoff_next(&b) == 2000);
}

static void test_reset(void)
{
    backoff b;
    backoff_init(&b, 100, 2000);
    backoff_next(&b);
    backoff_next(&b);
    backoff_reset(&b);
    CHECK(backoff_next(&b) == 100);
}

static void test_cap_not_a_power_of_two_and_no_overflow(void)
{
    backoff b;
    backoff_init(&b, 300, 1000);
    CHECK(backoff_next(&b) == 300);
    CHECK(backoff_next(&b) == 600);
    CHECK(backoff_next(&b) == 1000);
    backoff_init(&b, 1, 2147483647);
    for (int i = 0; i < 40; i++)
        CHECK(backoff_next(&b) > 0);
}

int main(void)
{
    test_doubles_to_the_cap();
    test_reset();
    test_cap_not_a_power_of_two_and_no_overflow();
    return CHECK_DONE();
}
