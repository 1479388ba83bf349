/* Unit tests for key: equivalent spellings share one key, any real change
 * gives another, and the helper keys have the documented layout. */
#include <string.h>

#include "check.h"
#include "quotecache/key.h"

static const int64_t promos[] = {3, 17, 120};

/* Key of a request given as raw id segment and query; "" on parse failure. */
static void key_of(char out[KEY_MAX], const char *version, const char *id, const char *q,
                   const int64_t *ids, size_t n)
{
    quote_req r;
    qc_error e;

    out[0] = '\0';
    if (request_parse_quote(id, q, &r, &e) != 0) {
        fprintf(stderr, "  parse failed: %s\n", e.message);
        return;
    }
    if (key_entry(out, version, &r, ids, n) != 0)
        out[0] = '\0';
}

static void test_equivalent_spellings(void)
{
    static const char *const spellings[][2] = {
        {"42", "region=eu&tier=gold"},
        {"42", "region=EU&tier=GOLD&currency=USD"},
        {"042", "tier=gold&region=eu&currency=usd"},
        {"0000042", "Currency=uSd&TIER=Gold&REGION=Eu"},
        {"%34%32", "%72egion=eu&tier=%47old"},
    };
    char base[KEY_MAX], k[KEY_MAX];

    key_of(base, "v1", spellings[0][0], spellings[0][1], promos, 3);
    CHECK(base[0] != '\0');
    for (size_t i = 1; i < sizeof(spellings) / sizeof(spellings[0]); i++) {
        key_of(k, "v1", spellings[i][0], spellings[i][1], promos, 3);
        CHECK(strcmp(base, k) == 0);
    }
}

static void test_every_input_matters(void)
{
    static const int64_t fewer[] = {3, 17};
    static const int64_t more[] = {3, 17, 120, 121};
    static const int64_t other[] = {3, 17, 121};
    char base[KEY_MAX], k[KEY_MAX];

    key_of(base, "v1", "42", "region=eu&tier=gold", promos, 3);
    key_of(k, "v1", "43", "region=eu&tier=gold", promos, 3);
    CHECK(k[0] && strcmp(base, k) != 0);
    key_of(k, "v1", "42", "region=us&tier=gold", promos, 3);
    CHECK(k[0] && strcmp(base, k) != 0);
    key_of(k, "v1", "42", "region=eu&tier=silver", promos, 3);
    CHECK(k[0] && strcmp(base, k) != 0);
    key_of(k, "v1", "42", "region=eu&tier=gold&currency=eur", promos, 3);
    CHECK(k[0] && strcmp(base, k) != 0);
    key_of(k, "v1", "42", "region=eu&tier=gold", fewer, 2);
    CHECK(k[0] && strcmp(base, k) != 0);
    key_of(k, "v1", "42", "region=eu&tier=gold", more, 4);
    CHECK(k[0] && strcmp(base, k) != 0);
    key_of(k, "v1", "42", "region=eu&tier=gold", other, 3);
    CHECK(k[0] && strcmp(base, k) != 0);
    key_of(k, "v1", "42", "region=eu&tier=gold", NULL, 0);
    CHECK(k[0] && strcmp(base, k) != 0);
    key_of(k, "v2", "42", "region=eu&tier=gold", promos, 3);
    CHECK(k[0] && strcmp(base, k) != 0);
}

static void test_unsorted_promos_are_sorted(void)
{
    static const int64_t shuffled[] = {120, 3, 17};
    char a[KEY_MAX], b[KEY_MAX];

    key_of(a, "v1", "42", "region=eu&tier=gold", promos, 3);
    key_of(b, "v1", "42", "region=eu&tier=gold", shuffled, 3);
    CHECK(a[0] && strcmp(a, b) == 0);
}

static void test_layout(void)
{
    quote_req r = {.product_id = 42, .region = "EU", .tier = "gold", .currency = "USD"};
    char k[KEY_MAX], x[KEY_MAX];

    CHECK(key_entry(k, "v1", &r, NULL, 0) == 0);
    CHECK(strncmp(k, "qc:v1:{42}:", 11) == 0);
    CHECK(strlen(k) == 11 + 32);
    CHECK(strspn(k + 11, "0123456789abcdef") == 32);
    /* Deterministic: same inputs, same key. */
    CHECK(key_entry(x, "v1", &r, NULL, 0) == 0 && strcmp(k, x) == 0);

    key_lock(x, k);
    CHECK(strlen(x) == strlen(k) + 5 && strcmp(x + strlen(k), ":lock") == 0);
    key_product_gen(x, "v1", 42);
    CHECK(strcmp(x, "qc:v1:{42}:gen") == 0);
    key_global_gen(x, "v1");
    CHECK(strcmp(x, "qc:v1:gen") == 0);
    key_channel(x, "v1");
    CHECK(strcmp(x, "qc:v1:loaded") == 0);
    key_dims(x, "v1"); /* cluster mode: one hash tag, one slot for all dimensions */
    CHECK(strcmp(x, "qc:v1:{dims}") == 0);
}

static void test_versions(void)
{
    quote_req r = {.product_id = INT64_MAX,
                   .region = "ABCDEFGHIJKLMNOP",
                   .tier = "abcdefghijklmnop",
                   .currency = "USD"};
    char k[KEY_MAX];
    const char *v32 = "abcdefghijklmnopqrstuvwxyz012345";

    CHECK(key_entry(k, "v1.2_rc-3", &r, NULL, 0) == 0);
    CHECK(key_entry(k, v32, &r, promos, 3) == 0);
    CHECK(key_product_of(k) == INT64_MAX);
    CHECK(key_entry(k, "abcdefghijklmnopqrstuvwxyz0123456", &r, NULL, 0) == -1);
    CHECK(key_entry(k, "", &r, NULL, 0) == -1);
    CHECK(key_entry(k, NULL, &r, NULL, 0) == -1);
    CHECK(key_entry(k, "v 1", &r, NULL, 0) == -1);
    CHECK(key_entry(k, "v:1", &r, NULL, 0) == -1);
    CHECK(key_entry(k, "v{1}", &r, NULL, 0) == -1);
}

static void test_product_of(void)
{
    quote_req r = {.product_id = 7, .region = "EU", .tier = "gold", .currency = "USD"};
    char k[KEY_MAX], x[KEY_MAX];

    CHECK(key_entry(k, "v1", &r, promos, 3) == 0);
    CHECK(key_product_of(k) == 7);
    r.product_id = 1234567890123LL;
    CHECK(key_entry(k, "v9", &r, NULL, 0) == 0);
    CHECK(key_product_of(k) == 1234567890123LL);

    key_lock(x, k);
    CHECK(key_product_of(x) == -1);
    key_product_gen(x, "v1", 7);
    CHECK(key_product_of(x) == -1);
    CHECK(key_product_of(NULL) == -1);
    CHECK(key_product_of("") == -1);
    CHECK(key_product_of("qc:v1:{7}:") == -1);
    CHECK(key_product_of("qc:v1:{0}:0123456789abcdef0123456789abcdef") == -1);
    CHECK(key_product_of("qc:v1:{07}:0123456789abcdef0123456789abcdef") == -1);
    CHECK(key_product_of("qc:v1:{-7}:0123456789abcdef0123456789abcdef") == -1);
    CHECK(key_product_of("qc:v1:{9223372036854775808}:0123456789abcdef0123456789abcdef") == -1);
    CHECK(key_product_of("qc:v1:{7}:0123456789ABCDEF0123456789abcdef") == -1);
    CHECK(key_product_of("qc:v1:{7}:0123456789abcdef0123456789abcdef0") == -1);
    CHECK(key_product_of("qc:v1:{7:0123456789abcdef0123456789abcdef") == -1);
    CHECK(key_product_of("xx:v1:{7}:0123456789abcdef0123456789abcdef") == -1);
    CHECK(key_product_of("qc::{7}:0123456789abcdef0123456789abcdef") == -1);
    CHECK(key_product_of("qc:v1:{7}:0123456789abcdef0123456789abcdef") == 7);
}

int main(void)
{
    test_equivalent_spellings();
    test_every_input_matters();
    test_unsorted_promos_are_sorted();
    test_layout();
    test_versions();
    test_product_of();
    return CHECK_DONE();
}
