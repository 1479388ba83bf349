/* adminbody: see adminbody.h. */
#include "quotecache/adminbody.h"

#include <cjson/cJSON.h>
#include <stdbool.h>

#define MAX_ID 9007199254740991.0 /* 2^53 - 1: every integer below is exact in a double */

static bool json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* cJSON stops at the end of the first value and leaves the rest to us:
 * `{"all": true} x` is not the body we document. */
static bool only_space(const char *p, const char *end)
{
    for (; p < end; p++)
        if (!json_space(*p))
            return false;
    return true;
}

/* cJSON skips every byte up to 0x20 (NUL included) as whitespace; JSON
 * allows only four, and no control byte at all inside strings. */
static bool has_control(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)p[i] < 0x20 && !json_space(p[i]))
            return true;
    return false;
}

long long adminbody_parse_invalidate(const char *text, size_t len)
{
    if (text == NULL || len == 0 || len > ADMINBODY_MAX || has_control(text, len))
        return -1;
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    long long out = -1;
    if (doc != NULL && end != NULL && only_space(end, text + len) && cJSON_IsObject(doc) &&
        cJSON_GetArraySize(doc) == 1) {
        const cJSON *pid = cJSON_GetObjectItemCaseSensitive(doc, "product_id");
        const cJSON *all = cJSON_GetObjectItemCaseSensitive(doc, "all");
        if (cJSON_IsTrue(all))
            out = 0;
        else if (cJSON_IsNumber(pid) && pid->valuedouble >= 1 && pid->valuedouble <= MAX_ID &&
                 pid->valuedouble == (double)(long long)pid->valuedouble)
            out = (long long)pid->valuedouble;
    }
    cJSON_Delete(doc);
    return out;
}
