/* Fuzz target: the header matchers of httphdr, on a header value as evhttp
 * hands it over (a C string), and the X-Request-Id check of accesslog.
 * Oracles: a match needs the token or the quoted tag to occur in the value
 * at all; matching is unchanged by another list element appended after a
 * comma; a request id is taken exactly when it is 1 to 64 characters of
 * [A-Za-z0-9._:-] (what the access log and the answer may carry). */
#include "fuzz.h"

#include <stdbool.h>
#include <strings.h>

#include "quotecache/accesslog.h"
#include "quotecache/httphdr.h"

#define TAG "0123456789abcdef"

/* Quotes are balanced (an odd count leaves the last element open, and then
 * an appended element is inside it). */
static bool quotes_balanced(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        n += *s == '"';
    return n % 2 == 0;
}

/* The whole value is "*" (with optional whitespace). */
static bool is_star(const char *s)
{
    s += strspn(s, " \t");
    if (*s++ != '*')
        return false;
    s += strspn(s, " \t");
    return *s == '\0';
}

/* The rule of README's request ids, written out apart from accesslog.c. */
static bool id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!alnum && c != '.' && c != '_' && c != ':' && c != '-')
            return false;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *v = fuzz_cstr(data, size);
    FUZZ_CHECK(request_id_valid(v) == id_ok(v));
    bool nc = httphdr_has_token(v, "no-cache");
    bool tag = httphdr_etag_matches(v, TAG);

    if (nc)
        FUZZ_CHECK(strcasestr(v, "no-cache") != NULL);
    if (tag)
        FUZZ_CHECK(strstr(v, "\"" TAG "\"") != NULL || strchr(v, '*') != NULL);
    if (quotes_balanced(v) && strchr(v, '\\') == NULL && size < 4096) {
        char *longer = malloc(size + sizeof(", x"));
        if (longer == NULL)
            abort();
        memcpy(longer, v, strlen(v));
        memcpy(longer + strlen(v), ", x", sizeof(", x"));
        FUZZ_CHECK(httphdr_has_token(longer, "no-cache") == nc);
        if (!is_star(v))
            FUZZ_CHECK(httphdr_etag_matches(longer, TAG) == tag);
        free(longer);
    }
    free(v);
    return 0;
}
