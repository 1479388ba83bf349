/* adminbody: see adminbody.h. */
#include "quotecache/adminbody.h"

#include <cjson/cJSON.h>
#include <stdbool.h>

#define MAX_ID 9007199254740991.0 /* 2^53 - 1: every integer below is exact in a double */

/* cJSON stops at the end of the first value and leaves the rest to us:
 * `{"all": true} x` is not the body we document. */
static bool only_space(const char *p, const char *end)
{
    for (; p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
            return false;
    return true;
}

long long adminbody_parse_invalidate(const char *text, size_t len)
{
    if (text == NULL || len == 0 || len > ADMINBODY_MAX)
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
