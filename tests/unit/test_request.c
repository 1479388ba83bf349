/* Unit tests for request: parsing, normalization, every error path, and
 * hostile inputs (meant to run under ASan/UBSan). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quotecache/request.h"

static int ok(const char *id, const char *q, long long pid, const char *region, const char *tier,
              const char *cur)
{
    quote_req r;
    qc_error e = {0};

    memset(&r, 0x5a, sizeof(r));
    if (request_parse_quote(id, q, &r, &e) != 0) {
        fprintf(stderr, "  unexpected error for '%s' '%s': %s %s\n", id, q ? q : "(null)", e.code,
                e.message);
        return 0;
    }
    return r.product_id == pid && strcmp(r.region, region) == 0 && strcmp(r.tier, tier) == 0 &&
           strcmp(r.currency, cur) == 0;
}

/* Message must be printable ASCII without quotes or backslashes beyond those
 * we put there ourselves, and within its buffer. */
static int message_safe(const qc_error *e)
{
    size_t n = strnlen(e->message, sizeof(e->message));
    if (n == 0 || n >= sizeof(e->message))
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)e->message[i];
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
            return 0;
    }
    return 1;
}

/* Fails with status 400, the given code, and a message containing needle. */
static int bad(const char *id, const char *q, const char *code, const char *needle)
{
    quote_req r;
    qc_error e = {0};

    memset(&r, 0x5a, sizeof(r));
    if (request_parse_quote(id, q, &r, &e) != -1) {
        fprintf(stderr, "  accepted '%s' '%s'\n", id, q ? q : "(null)");
        return 0;
    }
    if (e.status != 400 || !e.code || strcmp(e.code, code) != 0 || !message_safe(&e) ||
        (needle && !strstr(e.message, needle))) {
        fprintf(stderr, "  '%s' '%s': got %d %s '%s'\n", id, q ? q : "(null)", e.status,
                e.code ? e.code : "(null)", e.message);
        return 0;
    }
    return 1;
}

static void test_normalization(void)
{
    CHECK(ok("42", "region=eu&tier=gold&currency=eur", 42, "EU", "gold", "EUR"));
    CHECK(ok("42", "region=EU&tier=GOLD", 42, "EU", "gold", "USD"));
    CHECK(ok("42", "tier=Gold&currency=usd&region=eU", 42, "EU", "gold", "USD"));
    CHECK(ok("007", "Region=eu&TIER=gold&CurRency=gbp", 7, "EU", "gold", "GBP"));
    CHECK(ok("%34%32", "%72egion=%65u&tier=gold", 42, "EU", "gold", "USD"));
    CHECK(ok("9223372036854775807", "region=a&tier=b", INT64_MAX, "A", "b", "USD"));
    CHECK(ok("0009223372036854775807", "region=a&tier=b", INT64_MAX, "A", "b", "USD"));
    CHECK(ok("1", "region=abcdefghijklmnop&tier=ABCDEFGHIJKLMNOP", 1, "ABCDEFGHIJKLMNOP",
             "abcdefghijklmnop", "USD"));
}

static void test_product_id(void)
{
    CHECK(bad("", "region=eu&tier=gold", "bad_product_id", "product id"));
    CHECK(bad(NULL, "region=eu&tier=gold", "bad_product_id", "product id"));
    CHECK(bad("0", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("000", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("-1", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("+1", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad(" 1", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("1 ", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("%201", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("1e3", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("0x10", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("9223372036854775808", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("99999999999999999999", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("18446744073709551617", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("1%", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("1%3", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("%zz", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("1%00", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("\"><script>", "region=eu&tier=gold", "bad_product_id", NULL));
    CHECK(bad("\xff\xfe", "region=eu&tier=gold", "bad_product_id", NULL));
}

static void test_params(void)
{
    CHECK(bad("1", "region=eu", "missing_parameter", "'tier'"));
    CHECK(bad("1", "tier=gold", "missing_parameter", "'region'"));
    CHECK(bad("1", "", "missing_parameter", "'region'"));
    CHECK(bad("1", NULL, "missing_parameter", "'region'"));
    CHECK(bad("1", "region=eu&tier=gold&currency=", "bad_request", "'currency' must not be empty"));
    CHECK(bad("1", "region=&tier=gold", "bad_request", "'region'"));
    CHECK(bad("1", "region&tier=gold", "bad_request", "'region' has no value"));
    CHECK(bad("1", "region=eu&tier=gold&color=red", "unknown_parameter", "'color'"));
    CHECK(bad("1", "region=eu&tier=gold&colour", "unknown_parameter", "'colour'"));
    CHECK(bad("1", "region=eu&tier=gold&region=us", "duplicate_parameter", "'region'"));
    CHECK(bad("1", "region=eu&tier=gold&REGION=eu", "duplicate_parameter", "'region'"));
    CHECK(bad("1", "region=eu&tier=gold&currency=usd&Currency=usd", "duplicate_parameter",
              "'currency'"));
    CHECK(bad("1", "region=eu&&tier=gold", "bad_request", "malformed"));
    CHECK(bad("1", "region=eu&tier=gold&", "bad_request", "malformed"));
    CHECK(bad("1", "&region=eu&tier=gold", "bad_request", "malformed"));
    CHECK(bad("1", "&", "bad_request", "malformed"));
    CHECK(bad("1", "=eu&tier=gold", "bad_request", "no name"));
    CHECK(bad("1", "region=eu;tier=gold", "bad_request", "'region'"));
    CHECK(bad("1", "region=eu&tier=gold#frag", "bad_request", "'tier'"));
    CHECK(bad("1", "region=e+u&tier=gold", "bad_request", "'region'"));
    CHECK(bad("1", "region=e%20u&tier=gold", "bad_request", "'region'"));
    CHECK(bad("1", "region=eu1&tier=gold", "bad_request", "'region'"));
    CHECK(bad("1", "region=abcdefghijklmnopq&tier=gold", "bad_request", "'region'"));
    CHECK(bad("1", "region=eu&tier=abcdefghijklmnopq", "bad_request", "'tier'"));
    CHECK(bad("1", "region=eu&tier=gold&currency=us", "bad_request", "'currency'"));
    CHECK(bad("1", "region=eu&tier=gold&currency=usdd", "bad_request", "'currency'"));
    CHECK(bad("1", "region=eu&tier=gold&currency=u5d", "bad_request", "'currency'"));
    CHECK(bad("1", "region=eu=x&tier=gold", "bad_request", "'region'"));
}

static void test_escapes(void)
{
    CHECK(bad("1", "region=%zz&tier=gold", "bad_request", "'region'"));
    CHECK(bad("1", "region=%4&tier=gold", "bad_request", "'region'"));
    CHECK(bad("1", "region=eu&tier=gold%", "bad_request", "'tier'"));
    CHECK(bad("1", "region=eu&tier=gold%4", "bad_request", "'tier'"));
    CHECK(bad("1", "region=e%00u&tier=gold", "bad_request", "'region'"));
    CHECK(bad("1", "region=e%0au&tier=gold", "bad_request", "'region'"));
    CHECK(bad("1", "region=e%ffu&tier=gold", "bad_request", "'region'"));
    CHECK(bad("1", "region=e\x01u&tier=gold", "bad_request", "'region'"));
    CHECK(bad("1", "region=eu&tier=gold&%zz=1", "bad_request", "malformed"));
    CHECK(bad("1", "region=eu&tier=gold&cur%00rency=usd", "bad_request", "malformed"));
    CHECK(bad("1", "region=eu&tier=gold&%", "bad_request", "malformed"));
    CHECK(bad("1", "region=eu&tier=gold&\"x\"=1", "unknown_parameter", "'?x?'"));
    CHECK(bad("1", "region=eu&tier=gold&a\\b=1", "unknown_parameter", "'a?b'"));
}

static void test_hostile_sizes(void)
{
    static char q[200000];
    size_t n;

    /* A long value: rejected on its length, message stays short. */
    n = (size_t)sprintf(q, "region=eu&tier=");
    memset(q + n, 'a', 1500);
    q[n + 1500] = '\0';
    CHECK(bad("1", q, "bad_request", "'tier'"));

    /* A long unknown name: quoted truncated. */
    memset(q, 'x', 1000);
    strcpy(q + 1000, "=1&region=eu&tier=gold");
    CHECK(bad("1", q, "unknown_parameter", "xxx..."));

    /* Over the query cap. */
    memset(q, 'a', 3000);
    q[3000] = '\0';
    CHECK(bad("1", q, "bad_request", "longer than"));

    /* 10,000 parameters: refused by the cap before any per-part work. */
    n = 0;
    for (int i = 0; i < 10000; i++)
        n += (size_t)sprintf(q + n, "%sregion=eu", i ? "&" : "");
    CHECK(bad("1", q, "bad_request", "longer than"));

    /* Exactly the cap is accepted as far as the cap goes. */
    n = (size_t)sprintf(q, "region=eu&tier=gold&x=");
    memset(q + n, 'a', 2048 - n);
    q[2048] = '\0';
    CHECK(bad("1", q, "unknown_parameter", "'x'"));

    /* A long product id segment. */
    memset(q, '0', 5000);
    strcpy(q + 5000, "1");
    CHECK(bad(q, "region=eu&tier=gold", "bad_product_id", "too long"));
}

static void test_output_untouched_on_error(void)
{
    quote_req r;
    qc_error e = {0};

    memset(&r, 0x5a, sizeof(r));
    CHECK(request_parse_quote("1", "region=eu&tier=gold&currency=x", &r, &e) == -1);
    CHECK(((unsigned char *)&r)[0] == 0x5a);
    /* NULL err is allowed. */
    CHECK(request_parse_quote("x", "", &r, NULL) == -1);
}

static void test_canonical(void)
{
    quote_req r;
    qc_error e;
    char buf[64];

    CHECK(request_parse_quote("0042", "tier=Gold&region=eu&currency=eur", &r, &e) == 0);
    CHECK(request_canonical(&r, buf, sizeof(buf)) == (int)strlen("42|EU|gold|EUR"));
    CHECK(strcmp(buf, "42|EU|gold|EUR") == 0);
    CHECK(request_canonical(&r, buf, 14) == -1);
    CHECK(request_canonical(&r, buf, 15) == 14);
}

int main(void)
{
    test_normalization();
    test_product_id();
    test_params();
    test_escapes();
    test_hostile_sizes();
    test_output_untouched_on_error();
    test_canonical();
    return CHECK_DONE();
}
