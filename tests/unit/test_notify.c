/* Unit tests for notify: every payload shape the triggers and the admin
 * purge send (with and without the txid), and the junk a hostile NOTIFY can
 * carry. */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "quotecache/notify.h"

static void test_valid(void)
{
    notify_msg m;

    CHECK(notify_parse("products:42", &m) == 0);
    CHECK(strcmp(m.table, "products") == 0 && m.product_id == 42 && !m.in_catalog);
    CHECK(notify_parse("regional_prices:7", &m) == 0 && m.product_id == 7 && !m.in_catalog);
    CHECK(notify_parse("tier_discounts:*", &m) == 0 && m.product_id == 0 && !m.in_catalog);
    CHECK(notify_parse("volume_breaks:1", &m) == 0 && m.product_id == 1);
    CHECK(notify_parse("promotions:9", &m) == 0 && m.product_id == 9 && m.in_catalog);
    CHECK(notify_parse("promotions:*", &m) == 0 && m.product_id == 0 && m.in_catalog);
    CHECK(notify_parse("tiers:*", &m) == 0 && m.in_catalog);
    CHECK(notify_parse("fx_rates:*", &m) == 0 && m.in_catalog);
    CHECK(notify_parse("admin:5", &m) == 0 && strcmp(m.table, "admin") == 0 && m.product_id == 5 &&
          !m.in_catalog);
    CHECK(notify_parse("admin:*", &m) == 0 && m.product_id == 0);
    CHECK(notify_parse("products:9223372036854775807", &m) == 0 && m.product_id == INT64_MAX);
    CHECK(notify_parse("products:007", &m) == 0 && m.product_id == 7);
    CHECK(notify_parse("new_table_2:3", &m) == 0 && strcmp(m.table, "new_table_2") == 0);
    CHECK(notify_parse("products:42", &m) == 0 && m.txid[0] == '\0');
}

static void test_txid(void)
{
    notify_msg m;

    CHECK(notify_parse("products:7781:42", &m) == 0);
    CHECK(strcmp(m.table, "products") == 0 && strcmp(m.txid, "7781") == 0 && m.product_id == 42);
    CHECK(notify_parse("volume_breaks:1:*", &m) == 0 && strcmp(m.txid, "1") == 0 &&
          m.product_id == 0);
    CHECK(notify_parse("tier_discounts:18446744073709551615:9", &m) == 0 &&
          strlen(m.txid) == NOTIFY_TXID_MAX && m.product_id == 9);
    CHECK(notify_parse("promotions:5:3", &m) == 0 && m.in_catalog && strcmp(m.txid, "5") == 0);
}

static void test_invalid(void)
{
    static const char *const bad[] = {
        "",
        ":",
        ":5",
        "products",
        "products:",
        "products:0",
        "products:000",
        "products:-1",
        "products:+1",
        "products: 1",
        "products:1 ",
        "products:1x",
        "products:9223372036854775808",
        "products:99999999999999999999999",
        "products:**",
        "products:*1",
        "a:b:1",
        "Products:1",
        "prod ucts:1",
        "products\n:1",
        "products::1",
        "products:1::2",
        "products:1:2:3",
        "products:x:1",
        "products:-5:1",
        "products: 5:1",
        "products:5 :1",
        "products:5:",
        "products:5:0",
        "products:*:1",
        "products:123456789012345678901:1", /* a 21-digit txid */
        /* 64 table characters: one more than PostgreSQL allows */
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:1",
    };
    notify_msg m;

    memset(&m, 0x5a, sizeof(m));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = notify_parse(bad[i], &m);
        if (rc != -1)
            fprintf(stderr, "accepted: '%s'\n", bad[i]);
        CHECK(rc == -1);
    }
    CHECK(notify_parse(NULL, &m) == -1);
    CHECK(m.product_id == 0x5a5a5a5a5a5a5a5a); /* untouched on error */
}

static void test_longest_table(void)
{
    char p[NOTIFY_TABLE_MAX + 8];
    notify_msg m;

    memset(p, 'a', NOTIFY_TABLE_MAX);
    memcpy(p + NOTIFY_TABLE_MAX, ":12", 4);
    CHECK(notify_parse(p, &m) == 0 && strlen(m.table) == NOTIFY_TABLE_MAX && m.product_id == 12);
}

int main(void)
{
    test_valid();
    test_txid();
    test_invalid();
    test_longest_table();
    return CHECK_DONE();
}
