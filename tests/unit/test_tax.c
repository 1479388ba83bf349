/* Unit tests for tax_parse_answer: the tax service's 200 body. Every parse
 * reads from a copy that ends exactly at a PROT_NONE page, so a read one
 * byte past the answer crashes here even inside cJSON, which ASan does not
 * instrument. */
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"
#include "quotecache/tax.h"

static char *page_end; /* first byte of the guard page */
static size_t page_size;

static void guard_init(void)
{
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    char *p = mmap(NULL, 2 * page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect(p + page_size, page_size, PROT_NONE) != 0) {
        perror("mmap");
        _exit(2);
    }
    page_end = p + page_size;
}

static int parse(const char *s, size_t len, int64_t *out)
{
    if (len > page_size)
        return tax_parse_answer(s, len, out);
    memcpy(page_end - len, s, len);
    return tax_parse_answer(page_end - len, len, out);
}

static int parse_str(const char *s, int64_t *out)
{
    return parse(s, strlen(s), out);
}

static void test_good(void)
{
    int64_t v = -1;

    CHECK(parse_str("{\"tax_cents\":0}", &v) == 0 && v == 0);
    CHECK(parse_str("{\"tax_cents\": 1234, \"region\": \"EU\"}", &v) == 0 && v == 1234);
    CHECK(parse_str(" {\"tax_cents\":9007199254740992}\n", &v) == 0 && v == 9007199254740992);
    CHECK(parse_str("{\"tax_cents\":12.0}", &v) == 0 && v == 12);
}

static void test_bad(void)
{
    static const char *const bad[] = {
        "",
        "{",
        "}",
        "[]",
        "null",
        "12",
        "{}",
        "{\"tax_cents\":-1}",
        "{\"tax_cents\":1.5}",
        "{\"tax_cents\":\"12\"}",
        "{\"tax_cents\":null}",
        "{\"tax_cents\":9007199254740994}",
        "{\"tax_cents\":1e400}",
        "{\"Tax_Cents\":1}",
        "{\"tax_cents\":1",
        "{\"tax_cents\":",
        "{\"tax_cents",
        "{\"",
        "\"",
        "{\"tax_cents\":1,",
        "{\"tax_cents\":1,\"",
        "{\"tax_cents\":1} x",
        "{\"tax_cents\":1}{\"tax_cents\":2}",
        "{\"tax_cents\":1,\"tax_cents\":2}",
    };
    int64_t v = 77;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = parse_str(bad[i], &v);
        if (rc != -1)
            fprintf(stderr, "accepted: '%s'\n", bad[i]);
        CHECK(rc == -1);
    }
    CHECK(v == 77);
    CHECK(tax_parse_answer(NULL, 4, &v) == -1);
}

static void test_bounds(void)
{
    static char big[4097];
    int64_t v = 0;

    /* 4096 bytes are allowed, one more is refused before any parsing. */
    memset(big, ' ', sizeof(big));
    memcpy(big, "{\"tax_cents\":5}", 15);
    CHECK(parse(big, 4096, &v) == 0 && v == 5);
    CHECK(parse(big, 4097, &v) == -1);
}

int main(void)
{
    guard_init();
    test_good();
    test_bad();
    test_bounds();
    return CHECK_DONE();
}
