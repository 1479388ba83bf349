/* Unit tests for scope: the counter each scope names (the product's is the
 * one key.h always had), the five a quote reads, name folding, and the
 * local buckets. */
#include <string.h>

#include "check.h"
#include "quotecache/scope.h"

static quote_req req(void)
{
    quote_req r;
    memset(&r, 0, sizeof(r));
    r.product_id = 42;
    strcpy(r.region, "EU");
    strcpy(r.tier, "gold");
    strcpy(r.currency, "BRL");
    return r;
}

static void test_keys_of_a_quote(void)
{
    quote_req r = req();
    scope_keys k;
    char pg[KEY_MAX];

    scope_keys_of(&k, "v1", &r);
    key_product_gen(pg, "v1", 42);
    CHECK(strcmp(k.key[SCOPE_PRODUCT], pg) == 0); /* unchanged: old entries stay valid */
    CHECK(strcmp(k.key[SCOPE_PRODUCT], "qc:v1:{42}:gen") == 0);
    CHECK(strcmp(k.key[SCOPE_PRODUCT_REGION], "qc:v1:{42}:r:EU:gen") == 0);
    CHECK(strcmp(k.key[SCOPE_CURRENCY], "qc:v1:fx:BRL:gen") == 0);
    CHECK(strcmp(k.key[SCOPE_TIER], "qc:v1:tier:gold:gen") == 0);
    CHECK(strcmp(k.key[SCOPE_REGION_PROMOS], "qc:v1:promo:EU:gen") == 0);
    /* None of them is an entry key, nor the global counter or its marker. */
    for (int i = 0; i < SCOPE_KINDS; i++)
        CHECK(key_product_of(k.key[i]) == -1 && strcmp(k.key[i], "qc:v1:gen") != 0);
}

/* What a change bumps is what a quote in its scope reads. */
static void test_change_names_the_quotes_counter(void)
{
    quote_req r = req();
    scope_keys k;
    scope s;
    char key[KEY_MAX];

    scope_keys_of(&k, "v1", &r);
    CHECK(scope_named(&s, SCOPE_CURRENCY, 0, "brl", 3) == 0);
    scope_key(key, "v1", &s);
    CHECK(strcmp(key, k.key[SCOPE_CURRENCY]) == 0);
    CHECK(scope_named(&s, SCOPE_TIER, 0, "Gold", 4) == 0 && strcmp(s.name, "gold") == 0);
    scope_key(key, "v1", &s);
    CHECK(strcmp(key, k.key[SCOPE_TIER]) == 0);
    CHECK(scope_named(&s, SCOPE_REGION_PROMOS, 0, "eu", 2) == 0);
    scope_key(key, "v1", &s);
    CHECK(strcmp(key, k.key[SCOPE_REGION_PROMOS]) == 0);
    CHECK(scope_named(&s, SCOPE_PRODUCT_REGION, 42, "EU", 2) == 0);
    scope_key(key, "v1", &s);
    CHECK(strcmp(key, k.key[SCOPE_PRODUCT_REGION]) == 0);
}

static void test_names_no_quote_can_have(void)
{
    scope s;

    CHECK(scope_named(&s, SCOPE_CURRENCY, 0, "BR", 2) == -1);
    CHECK(scope_named(&s, SCOPE_CURRENCY, 0, "BRLX", 4) == -1);
    CHECK(scope_named(&s, SCOPE_TIER, 0, "", 0) == -1);
    CHECK(scope_named(&s, SCOPE_TIER, 0, "gold1", 5) == -1);
    CHECK(scope_named(&s, SCOPE_TIER, 0, "go:ld", 5) == -1);
    CHECK(scope_named(&s, SCOPE_REGION_PROMOS, 0, "ABCDEFGHIJKLMNOPQ", 17) == -1);
    CHECK(scope_named(&s, SCOPE_REGION_PROMOS, 0, "ABCDEFGHIJKLMNOP", 16) == 0);
}

static void test_buckets(void)
{
    quote_req r = req();
    scope a[SCOPE_KINDS], b[SCOPE_KINDS];

    scope_of_quote(&r, a);
    scope_of_quote(&r, b);
    for (int i = 0; i < SCOPE_KINDS; i++)
        CHECK(scope_bucket(&a[i], 1024) == scope_bucket(&b[i], 1024) &&
              scope_bucket(&a[i], 1024) < 1024);
    /* The same name in two kinds is two scopes (they should rarely share). */
    CHECK(scope_bucket(&a[SCOPE_PRODUCT_REGION], 1u << 30) !=
          scope_bucket(&a[SCOPE_REGION_PROMOS], 1u << 30));
    strcpy(r.currency, "USD");
    scope_of_quote(&r, b);
    CHECK(scope_bucket(&a[SCOPE_CURRENCY], 1u << 30) != scope_bucket(&b[SCOPE_CURRENCY], 1u << 30));
}

int main(void)
{
    test_keys_of_a_quote();
    test_change_names_the_quotes_counter();
    test_names_no_quote_can_have();
    test_buckets();
    return CHECK_DONE();
}
