/* Unit tests for adminbody: the POST /admin/invalidate body, accepted and
 * refused spellings (the trailing-text and control-byte ones passed before
 * the move out of server.c: cJSON stops at the end of the first value and
 * skips any byte up to 0x20 as whitespace). */
#include <string.h>

#include "check.h"
#include "quotecache/adminbody.h"

static long long parse(const char *s)
{
    return adminbody_parse_invalidate(s, strlen(s));
}

static void test_accepted(void)
{
    CHECK(parse("{\"product_id\": 42}") == 42);
    CHECK(parse("{\"product_id\":1}") == 1);
    CHECK(parse(" \r\n{ \"product_id\" : 7 }\n") == 7);
    CHECK(parse("{\"product_id\": 1.0}") == 1);
    CHECK(parse("{\"product_id\": 1e3}") == 1000);
    CHECK(parse("{\"product_id\": 9007199254740991}") == 9007199254740991LL);
    CHECK(parse("{\"all\": true}") == 0);
    CHECK(parse("{\"all\":true}\t") == 0);
}

static void test_refused(void)
{
    CHECK(parse("") == -1);
    CHECK(parse("{}") == -1);
    CHECK(parse("{\"product_id\": 0}") == -1);
    CHECK(parse("{\"product_id\": -3}") == -1);
    CHECK(parse("{\"product_id\": 1.5}") == -1);
    CHECK(parse("{\"product_id\": 9007199254740992}") == -1);
    CHECK(parse("{\"product_id\": 1e300}") == -1);
    CHECK(parse("{\"product_id\": \"42\"}") == -1);
    CHECK(parse("{\"Product_id\": 42}") == -1);
    CHECK(parse("{\"all\": false}") == -1);
    CHECK(parse("{\"all\": 1}") == -1);
    CHECK(parse("{\"all\": true, \"product_id\": 4}") == -1);
    CHECK(parse("[{\"all\": true}]") == -1);
    CHECK(parse("42") == -1);
    CHECK(parse("{\"product_id\": 42") == -1);
    /* Trailing text after the object: */
    CHECK(parse("{\"all\": true} x") == -1);
    CHECK(parse("{\"product_id\": 42}{\"all\": true}") == -1);
    CHECK(parse("{\"product_id\": 42},") == -1);
    CHECK(adminbody_parse_invalidate("{\"all\": true}\0x", 15) == -1);
    /* The length is the body: bytes past it are not read. */
    CHECK(adminbody_parse_invalidate("{\"product_id\": 42}", 10) == -1);
    CHECK(adminbody_parse_invalidate("{\"product_id\": 42}  junk", 20) == 42);
    CHECK(adminbody_parse_invalidate(NULL, 3) == -1);
    /* Control bytes cJSON would skip as whitespace (the first found by
     * fuzz_adminbody: "\x20\x10\0\0\0\0\0\0\0" before the object). */
    CHECK(adminbody_parse_invalidate(" \x10\0\0\0\0\0\0\0{\"product_id\":1e3}\n", 28) == -1);
    CHECK(parse("\x01{\"all\": true}") == -1);
    CHECK(parse("{\x7f\"all\": true}") == -1); /* DEL is not whitespace: cJSON refuses */
    CHECK(parse("{\x0b\"all\": true}") == -1);
    CHECK(parse("{\"product_id\":\x0c"
                "42}") == -1);
    CHECK(adminbody_parse_invalidate("{\"all\": true}\0", 14) == -1);
}

static void test_too_long(void)
{
    char big[ADMINBODY_MAX + 2];
    memset(big, ' ', sizeof(big));
    memcpy(big, "{\"all\": true}", 13);
    CHECK(adminbody_parse_invalidate(big, ADMINBODY_MAX) == 0);
    CHECK(adminbody_parse_invalidate(big, ADMINBODY_MAX + 1) == -1);
}

int main(void)
{
    test_accepted();
    test_refused();
    test_too_long();
    return CHECK_DONE();
}
