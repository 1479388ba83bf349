/* Unit tests for httphdr: no-cache token matching (Cache-Control, Pragma)
 * and If-None-Match entity-tag matching, including the spellings the old
 * substring search in server.c got wrong. */
#include <string.h>

#include "check.h"
#include "quotecache/httphdr.h"

#define TAG "0123456789abcdef"

static bool nc(const char *v)
{
    return httphdr_has_token(v, "no-cache");
}

static void test_token_found(void)
{
    CHECK(nc("no-cache"));
    CHECK(nc("No-Cache"));
    CHECK(nc("NO-CACHE"));
    CHECK(nc("max-age=0, no-cache"));
    CHECK(nc("max-age=0,no-cache"));
    CHECK(nc("no-cache, max-age=0"));
    CHECK(nc("max-age=0,\tno-cache")); /* tab is optional whitespace too */
    CHECK(nc("no-cache ,max-age=0"));
    CHECK(nc(",, no-cache,,"));
    CHECK(nc("no-cache;x=1"));
    CHECK(nc("no-cache=\"set-cookie\""));
    CHECK(nc("a=\"x\\\"y\", no-cache")); /* escaped quote inside a quoted string */
}

static void test_token_not_found(void)
{
    CHECK(!nc(NULL));
    CHECK(!nc(""));
    CHECK(!nc(" , "));
    CHECK(!nc("no-store"));
    CHECK(!nc("no-cachex"));
    CHECK(!nc("xno-cache"));
    CHECK(!nc("no-cach"));
    CHECK(!nc("private no-cache"));        /* not a list element of its own */
    CHECK(!nc("foo=\"a, no-cache\""));     /* inside a quoted string */
    CHECK(!nc("foo=\"a\\\", no-cache\"")); /* still inside: the quote was escaped */
    CHECK(!nc("\"no-cache\""));            /* a quoted string is not a token */
    CHECK(!httphdr_has_token("no-cache", NULL));
}

static bool inm(const char *v)
{
    return httphdr_etag_matches(v, TAG);
}

static void test_etag_match(void)
{
    CHECK(inm("\"" TAG "\""));
    CHECK(inm("W/\"" TAG "\""));
    CHECK(inm("*"));
    CHECK(inm(" * "));
    CHECK(inm("\"x\", \"" TAG "\""));
    CHECK(inm("\"x\",\"" TAG "\""));
    CHECK(inm("\"" TAG "\" , \"x\""));
    CHECK(inm("\"" TAG "\"\t,\"x\""));
    CHECK(inm("\"x,y\", W/\"" TAG "\"")); /* a comma is legal inside a tag */
    CHECK(inm("\"a\\\", \"" TAG "\""));   /* and a backslash is not an escape */
    CHECK(inm(", ,\"" TAG "\""));
}

static void test_etag_no_match(void)
{
    CHECK(!inm(NULL));
    CHECK(!inm(""));
    CHECK(!inm("\"\""));
    CHECK(!inm(TAG)); /* unquoted */
    CHECK(!inm("\"" TAG));
    CHECK(!inm("\"" TAG "0\""));
    CHECK(!inm("\"0" TAG "\""));
    CHECK(!inm("\"123456789abcdef\""));
    CHECK(!inm("\"" TAG "\"x"));
    CHECK(!inm("W/ \"" TAG "\""));
    CHECK(!inm("w/\"" TAG "\"")); /* the weak prefix is case-sensitive */
    CHECK(!inm("x/\"" TAG "\""));
    CHECK(!inm("\"x" TAG "\""));
    CHECK(!inm("\"x, " TAG "\"")); /* inside another tag */
    CHECK(!inm("*, \"x\""));
    CHECK(!inm("\"0123456789ABCDEF\""));
    CHECK(!httphdr_etag_matches("\"" TAG "\"", NULL));
}

static void test_name_is(void)
{
    CHECK(httphdr_name_is("Connection", "Connection"));
    CHECK(httphdr_name_is("connection", "Connection"));
    CHECK(httphdr_name_is("CONNECTION", "connection"));
    CHECK(httphdr_name_is("x-a", "X-A"));
    CHECK(httphdr_name_is("", ""));
    CHECK(!httphdr_name_is("Connections", "Connection"));
    CHECK(!httphdr_name_is("Connectio", "Connection"));
    CHECK(!httphdr_name_is("Content-Length", "Connection"));
    CHECK(!httphdr_name_is("", "Age"));
    CHECK(!httphdr_name_is("Age", ""));
    /* First bytes 0x20 apart that are no letters: strcasecmp decides. */
    CHECK(!httphdr_name_is("\r-A", "--A"));
    CHECK(!httphdr_name_is("@", "`"));
}

int main(void)
{
    test_name_is();
    test_token_found();
    test_token_not_found();
    test_etag_match();
    test_etag_no_match();
    return CHECK_DONE();
}
