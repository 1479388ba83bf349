/* Unit tests for gencount: generation counters as Redis returns them. */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "quotecache/gencount.h"

static int parse(const char *s, uint64_t *v)
{
    return gencount_parse(s, strlen(s), v);
}

int main(void)
{
    uint64_t v = 99;

    CHECK(parse("0", &v) == 0 && v == 0);
    CHECK(parse("17", &v) == 0 && v == 17);
    CHECK(parse("007", &v) == 0 && v == 7);
    CHECK(parse("18446744073709551615", &v) == 0 && v == UINT64_MAX);
    CHECK(parse("00000000000000000001", &v) == 0 && v == 1); /* 20 digits */
    v = 5;
    CHECK(parse("", &v) == -1 && v == 5);
    CHECK(parse("18446744073709551616", &v) == -1 && v == 5); /* UINT64_MAX + 1 */
    CHECK(parse("99999999999999999999", &v) == -1);
    CHECK(parse("000000000000000000001", &v) == -1); /* 21 digits */
    CHECK(parse("-1", &v) == -1);
    CHECK(parse("+1", &v) == -1);
    CHECK(parse(" 1", &v) == -1);
    CHECK(parse("1 ", &v) == -1);
    CHECK(parse("1a", &v) == -1);
    CHECK(parse("0x10", &v) == -1);
    CHECK(gencount_parse("12\0003", 4, &v) == -1); /* an embedded NUL is not a digit */
    CHECK(gencount_parse("123", 2, &v) == 0 && v == 12);
    CHECK(gencount_parse(NULL, 1, &v) == -1);
    CHECK(v == 12);
    return CHECK_DONE();
}
