/* Unit tests for notify: every payload shape the triggers and the admin
 * purge send (with and without the txid), heads that older triggers or a
 * stray NOTIFY may send (still invalidating the product they name), and
 * payloads that name no product. */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "quotecache/notify.h"

static void test_valid(void)
{
    notify_msg m;

    CHECK(notify_parse("products:42", &m) == 0);
    CHECK(strcmp(m.table, "products") == 0 && m.table_len == 8 && m.product_id == 42 &&
          !m.in_catalog && m.txid[0] == '\0');
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

/* A head that is not "table:txid" is all table: the product still counts. */
static void test_odd_heads(void)
{
    notify_msg m;

    CHECK(notify_parse("volume_breaks:x1:18", &m) == 0 && m.product_id == 18 &&
          strcmp(m.table, "volume_breaks:x1") == 0 && m.txid[0] == '\0');
    CHECK(notify_parse(":5", &m) == 0 && m.product_id == 5 && m.table_len == 0);
    CHECK(notify_parse("products::1", &m) == 0 && m.product_id == 1 && m.txid[0] == '\0' &&
          strcmp(m.table, "products:") == 0);
    CHECK(notify_parse("products:123456789012345678901:1", &m) == 0 && m.txid[0] == '\0' &&
          m.product_id == 1); /* 21 digits: not a txid */
    CHECK(notify_parse("a:1:2:3", &m) == 0 && m.product_id == 3 && m.txid[0] == '\0' &&
          strcmp(m.table, "a:1:2") == 0);
    CHECK(notify_parse("Promotions:4", &m) == 0 && !m.in_catalog); /* table names are exact */
    CHECK(notify_parse("promotions:x:4", &m) == 0 && !m.in_catalog);
}

static void test_long_head(void)
{
    char p[200];
    notify_msg m;

    memset(p, 'a', 150);
    memcpy(p + 150, ":12", 4);
    CHECK(notify_parse(p, &m) == 0 && m.product_id == 12 && m.table_len == 150 &&
          strlen(m.table) == NOTIFY_TABLE_MAX);
    memcpy(p, "promotions", 10); /* a longer head that starts like a catalog table */
    CHECK(notify_parse(p, &m) == 0 && !m.in_catalog);
}

static void test_invalid(void)
{
    static const char *const bad[] = {
        "",
        ":",
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
        "products:5:",
        "products:5:0",
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

/* The scoped payloads of issue 14's triggers, and what each reaches. */
static void test_scoped(void)
{
    notify_msg m;

    CHECK(notify_parse("fx:77:BRL:*", &m) == 0 && m.reach == NOTIFY_REACH_SCOPE &&
          m.scope.kind == SCOPE_CURRENCY && strcmp(m.scope.name, "BRL") == 0 &&
          strcmp(m.txid, "77") == 0 && strcmp(m.table, "fx") == 0 && !m.in_catalog &&
          m.reload_catalog);
    CHECK(notify_parse("tier:8:gold:*", &m) == 0 && m.reach == NOTIFY_REACH_SCOPE &&
          m.scope.kind == SCOPE_TIER && strcmp(m.scope.name, "gold") == 0 && !m.in_catalog);
    CHECK(notify_parse("promo:9:31:EU:*", &m) == 0 && m.reach == NOTIFY_REACH_SCOPE &&
          m.scope.kind == SCOPE_REGION_PROMOS && strcmp(m.scope.name, "EU") == 0 &&
          m.product_id == 0 && !m.in_catalog && m.reload_catalog);
    CHECK(notify_parse("promo:9:31:EU:42", &m) == 0 && m.reach == NOTIFY_REACH_SCOPE &&
          m.scope.kind == SCOPE_PRODUCT_REGION && m.scope.product_id == 42 &&
          strcmp(m.scope.name, "EU") == 0);
    /* Every region of one product: the product's counter. */
    CHECK(notify_parse("promo:9:31:*:42", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT &&
          m.product_id == 42 && !m.in_catalog && strcmp(m.txid, "9") == 0);
    /* Every product in every region: everything (documented approximation). */
    CHECK(notify_parse("promo:9:31:*:*", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT &&
          m.product_id == 0);
    /* A new row: no cached quote carries it; only the catalog reloads. */
    CHECK(notify_parse("catalog:5:tiers:*", &m) == 0 && m.reach == NOTIFY_REACH_NONE &&
          m.reload_catalog && !m.in_catalog);
    /* Names are folded as requests are; one no request can have reaches
     * everything (never less than enough). */
    CHECK(notify_parse("fx:1:brl:*", &m) == 0 && strcmp(m.scope.name, "BRL") == 0);
    CHECK(notify_parse("fx:1:*:*", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT &&
          m.product_id == 0);
    CHECK(notify_parse("tier:1:g0ld:*", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT &&
          m.product_id == 0);
    CHECK(notify_parse("promo:1:2:E-U:*", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT &&
          m.product_id == 0);
}

/* Shapes that are not scoped payloads read as older ones: their last field
 * still counts, and the older triggers' payloads keep today's behaviour. */
static void test_not_scoped(void)
{
    notify_msg m;

    CHECK(notify_parse("fx:x:BRL:*", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT &&
          m.product_id == 0 && !m.reload_catalog); /* no txid */
    CHECK(notify_parse("fx:1:BRL:7", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT &&
          m.product_id == 7);
    CHECK(notify_parse("fx:1:*", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT && m.product_id == 0 &&
          !m.reload_catalog);
    CHECK(notify_parse("promo:1:2:EU", &m) == -1); /* "EU" is no product */
    CHECK(notify_parse("promo:1:EU:*", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT &&
          m.product_id == 0);
    CHECK(notify_parse("sales:1:EU:*", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT &&
          m.product_id == 0 && !m.reload_catalog);
    CHECK(notify_parse("promotions:*", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT &&
          m.in_catalog && !m.reload_catalog);
    CHECK(notify_parse("fx_rates:*", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT && m.in_catalog &&
          m.product_id == 0);
    CHECK(notify_parse("products:12:5", &m) == 0 && m.reach == NOTIFY_REACH_PRODUCT &&
          m.product_id == 5 && !m.reload_catalog);
}

int main(void)
{
    test_scoped();
    test_not_scoped();
    test_valid();
    test_txid();
    test_odd_heads();
    test_long_head();
    test_invalid();
    return CHECK_DONE();
}
