/* Unit tests for resp: commands in the wire format, byte for byte. */
#include <string.h>

#include "check.h"
#include "quotecache/resp.h"

static int same(const char *got, size_t len, const char *want, size_t wlen)
{
    return len == wlen && memcmp(got, want, wlen) == 0;
}

int main(void)
{
    char buf[256];

    const char *a1[] = {"GET", "k"};
    size_t l1[] = {3, 1};
    size_t n = resp_format(buf, sizeof(buf), 2, a1, l1);
    CHECK(same(buf, n, "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 20));

    /* Binary arguments: NUL and CRLF inside a bulk string are bytes. */
    const char *a2[] = {"SET", "a\0b", "x\r\ny", ""};
    size_t l2[] = {3, 3, 4, 0};
    n = resp_format(buf, sizeof(buf), 4, a2, l2);
    static const char w2[] = "*4\r\n$3\r\nSET\r\n$3\r\na\0b\r\n$4\r\nx\r\ny\r\n$0\r\n\r\n";
    CHECK(same(buf, n, w2, sizeof(w2) - 1));

    /* Lengths of several digits. */
    char big[1234];
    memset(big, 'v', sizeof(big));
    const char *a3[] = {"SET", big};
    size_t l3[] = {3, sizeof(big)};
    char out[1300];
    n = resp_format(out, sizeof(out), 2, a3, l3);
    CHECK(n == 4 + 9 + 7 + 1234 + 2);
    CHECK(memcmp(out, "*2\r\n$3\r\nSET\r\n$1234\r\n", 20) == 0);
    CHECK(out[20] == 'v' && out[20 + 1233] == 'v' && memcmp(out + 1254, "\r\n", 2) == 0);

    /* Too small: the full length comes back and nothing past cap is written. */
    char small[16];
    memset(small, '#', sizeof(small));
    n = resp_format(small, 10, 2, a1, l1);
    CHECK(n == 20);
    for (size_t i = 10; i < sizeof(small); i++)
        CHECK(small[i] == '#');
    CHECK(resp_format(NULL, 0, 2, a1, l1) == 20);
    CHECK(resp_format(small, 10, 0, NULL, NULL) == 4 && memcmp(small, "*0\r\n", 4) == 0);

    /* Exactly the size needed is enough. */
    n = resp_format(buf, 20, 2, a1, l1);
    CHECK(same(buf, n, "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 20));
    return CHECK_DONE();
}
