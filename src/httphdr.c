/* httphdr: token matching in Cache-Control / Pragma and entity-tag matching
 * in If-None-Match. Pure code; every byte of the values is the client's.
 *
 * Both walk the list element by element (RFC 9110 5.6.1: elements separated
 * by commas, optional whitespace around them, empty elements allowed) rather
 * than searching substrings, so a token or a tag only counts where the
 * grammar puts one. Neither allocates nor writes. */
#include "quotecache/httphdr.h"

#include <stddef.h>
#include <string.h>
#include <strings.h>

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static const char *skip_ows(const char *p)
{
    while (is_ows(*p))
        p++;
    return p;
}

/* The next element of a list: skips separators and whitespace; returns
 * NULL at the end of the value. */
static const char *next_element(const char *p)
{
    while (*p == ',' || is_ows(*p))
        p++;
    return *p ? p : NULL;
}

/* Skips to the comma that ends the element starting at p (or the end). A
 * quoted string may hold commas: they do not end it. Backslash escapes
 * exist in quoted strings (Cache-Control) but not in entity tags, where a
 * backslash is an ordinary character. */
static const char *element_end(const char *p, bool escapes)
{
    bool quoted = false;

    for (; *p; p++) {
        if (escapes && quoted && *p == '\\' && p[1] != '\0')
            p++;
        else if (*p == '"')
            quoted = !quoted;
        else if (*p == ',' && !quoted)
            break;
    }
    return p;
}

bool httphdr_has_token(const char *value, const char *token)
{
    size_t n;

    if (value == NULL || token == NULL)
        return false;
    n = strlen(token);
    for (const char *p = next_element(value); p != NULL; p = next_element(element_end(p, true))) {
        if (strncasecmp(p, token, n) != 0)
            continue;
        const char *after = skip_ows(p + n);
        if (*after == '\0' || *after == ',' || *after == '=' || *after == ';')
            return true;
    }
    return false;
}

/* Does the element at p, an entity tag, carry etag? The opaque part runs
 * from the opening quote to the next one (RFC 9110 8.8.3: no quotes or
 * escapes inside), and only whitespace may follow it. */
static bool element_has_tag(const char *p, const char *etag, size_t n)
{
    if (p[0] == 'W' && p[1] == '/')
        p += 2;
    if (*p != '"')
        return false;
    p++;
    const char *close = strchr(p, '"');
    if (close == NULL || (size_t)(close - p) != n || memcmp(p, etag, n) != 0)
        return false;
    const char *after = skip_ows(close + 1);
    return *after == '\0' || *after == ',';
}

bool httphdr_etag_matches(const char *inm, const char *etag)
{
    size_t n;

    if (inm == NULL || etag == NULL)
        return false;
    const char *star = skip_ows(inm);
    if (*star == '*' && *skip_ows(star + 1) == '\0')
        return true;
    n = strlen(etag);
    for (const char *p = next_element(inm); p != NULL; p = next_element(element_end(p, false))) {
        if (element_has_tag(p, etag, n))
            return true;
    }
    return false;
}

bool httphdr_is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

const char *httphdr_method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    default:
        return "OTHER";
    }
}

int httphdr_chunk_size(const char *l, size_t n, uint64_t *size)
{
    uint64_t v = 0;
    size_t i = 0;
    for (; i < n; i++) {
        char c = l[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            break;
        if (i >= 15)
            return HTTPHDR_CHUNK_HUGE;
        v = v * 16 + (uint64_t)d;
    }
    size_t j = i;
    while (j < n && (l[j] == ' ' || l[j] == '\t'))
        j++;
    if (i == 0 || (j < n && l[j] != ';'))
        return HTTPHDR_CHUNK_BAD;
    *size = v;
    return HTTPHDR_CHUNK_OK;
}
