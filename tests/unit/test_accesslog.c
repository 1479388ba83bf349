/* Unit tests for accesslog's pure parts: request-id validation and
 * generation, JSON escaping of hostile bytes, and the line format (every
 * field, null for absent ones, cut targets, refusal when it cannot fit). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quotecache/accesslog.h"

static void test_request_id_valid(void)
{
    char max[REQUEST_ID_MAX + 2];
    memset(max, 'a', REQUEST_ID_MAX);
    max[REQUEST_ID_MAX] = '\0';
    CHECK(request_id_valid("abc"));
    CHECK(request_id_valid("A-z_0.9:x"));
    CHECK(request_id_valid(max));
    max[REQUEST_ID_MAX] = 'a';
    max[REQUEST_ID_MAX + 1] = '\0';
    CHECK(!request_id_valid(max)); /* 65 characters */
    CHECK(!request_id_valid(""));
    CHECK(!request_id_valid("a b"));
    CHECK(!request_id_valid("a\"b"));
    CHECK(!request_id_valid("a\\b"));
    CHECK(!request_id_valid("a\nb"));
    CHECK(!request_id_valid("caf\xc3\xa9"));
    CHECK(!request_id_valid("a/b"));
}

static void test_request_id_generate(void)
{
    char a[REQUEST_ID_MAX + 1], b[REQUEST_ID_MAX + 1];
    request_id_generate(a);
    request_id_generate(b);
    CHECK(request_id_valid(a) && request_id_valid(b));
    CHECK(strcmp(a, b) != 0);
    /* Same process: same prefix, the counter moves. */
    CHECK(strchr(a, '-') != NULL && strncmp(a, b, (size_t)(strchr(a, '-') - a)) == 0);
}

static void test_json_escape(void)
{
    char out[128];
    size_t n = json_escape(out, "a\"b\\c", 5);
    CHECK(n == 7 && memcmp(out, "a\\\"b\\\\c", 7) == 0);
    n = json_escape(out, "\n\t\x01\x7f\xff", 5);
    out[n] = '\0';
    CHECK(strcmp(out, "\\u000a\\u0009\\u0001\\u007f\\u00ff") == 0);
    n = json_escape(out, "x\0y", 3); /* n bytes, not to the NUL */
    out[n] = '\0';
    CHECK(strcmp(out, "x\\u0000y") == 0);
    CHECK(json_escape(out, "", 0) == 0);
}

static void test_line_format(void)
{
    char out[32768];
    access_entry e = {.time_ms = 1764638625678LL, /* 2025-12-02T01:23:45.678Z */
                      .request_id = "rid-1",
                      .client = "127.0.0.1",
                      .method = "GET",
                      .target = "/quote/1?region=\"US\"\n",
                      .cache = "HIT",
                      .status = 200,
                      .bytes = 310,
                      .seconds = 0.0012345};
    size_t n = access_line_format(out, sizeof(out), &e);
    CHECK(n > 0 && n == strlen(out) && out[n - 1] == '\n');
    CHECK(strcmp(out, "{\"time\":\"2025-12-02T01:23:45.678Z\",\"request_id\":\"rid-1\","
                      "\"client\":\"127.0.0.1\",\"method\":\"GET\","
                      "\"target\":\"/quote/1?region=\\\"US\\\"\\u000a\",\"status\":200,"
                      "\"cache\":\"HIT\",\"bytes\":310,\"duration\":0.001234}\n") == 0 ||
          strcmp(out, "{\"time\":\"2025-12-02T01:23:45.678Z\",\"request_id\":\"rid-1\","
                      "\"client\":\"127.0.0.1\",\"method\":\"GET\","
                      "\"target\":\"/quote/1?region=\\\"US\\\"\\u000a\",\"status\":200,"
                      "\"cache\":\"HIT\",\"bytes\":310,\"duration\":0.001235}\n") == 0);
    e.cache = NULL;
    e.client = NULL;
    e.seconds = -1;
    n = access_line_format(out, sizeof(out), &e);
    CHECK(strstr(out, "\"cache\":null,") != NULL && strstr(out, "\"client\":null,") != NULL);
    CHECK(strstr(out, "\"duration\":0.000000}") != NULL);
    /* A huge target is cut, so the line always fits a bounded buffer. */
    char *big = malloc(100000);
    memset(big, '"', 99999);
    big[99999] = '\0';
    e.target = big;
    n = access_line_format(out, sizeof(out), &e);
    CHECK(n > 0 && n < 4096 * 2 + 400);
    free(big);
    e.target = "/";
    CHECK(access_line_format(out, 100, &e) == 0); /* no room: nothing written */
}

int main(void)
{
    test_request_id_valid();
    test_request_id_generate();
    test_json_escape();
    test_line_format();
    return CHECK_DONE();
}
