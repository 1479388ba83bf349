/* config: flag and environment parsing, table-driven so that every option has
 * one line saying its name, type, bounds and default. */
#include "quotecache/config.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/mem.h"

enum opt_type { T_INT, T_STR, T_HOSTPORT, T_REDIS, T_ADMIN, T_FLAG };

typedef struct opt {
    const char *name; /* without the leading dashes */
    enum opt_type type;
    size_t offset;
    long min, max;
    const char *def; /* default, as it would be written on the command line */
    const char *help;
} opt;

#define OFF(f) offsetof(qc_config, f)

static const opt options[] = {
    {"listen", T_HOSTPORT, OFF(listen), 0, 0, "127.0.0.1:8080", "public listener HOST:PORT"},
    {"admin-listen", T_ADMIN, OFF(admin_listen), 0, 0, NULL,
     "admin listener HOST:PORT (off by default; loopback only unless a token is set)"},
    {"admin-token", T_STR, OFF(admin_token), 0, 0, NULL, "bearer token for admin routes"},
    {"redis", T_REDIS, OFF(redis), 0, 0, "127.0.0.1:6379", "Redis HOST:PORT, or none"},
    {"postgres", T_STR, OFF(postgres), 0, 0, "host=127.0.0.1 dbname=pricing",
     "libpq conninfo or URI"},
    {"tax-url", T_STR, OFF(tax_url), 0, 0, "http://127.0.0.1:9090", "legacy tax service URL"},
    {"ttl", T_INT, OFF(ttl_s), 1, 86400 * 30, "300", "seconds a quote is fresh"},
    {"stale-ttl", T_INT, OFF(stale_ttl_s), 0, 86400 * 30, "60",
     "seconds past the TTL a stale copy may be served"},
    {"neg-ttl", T_INT, OFF(neg_ttl_s), 0, 86400, "5", "seconds a not-found answer is cached"},
    {"lock-ttl", T_INT, OFF(lock_ttl_ms), 100, 600000, "10000",
     "milliseconds the cross-instance load lock lives"},
    {"key-version", T_STR, OFF(key_version), 0, 0, "v1", "cache key namespace"},
    {"tax-timeout", T_INT, OFF(tax_timeout_ms), 1, 600000, "2000", "tax service deadline, ms"},
    {"pg-timeout", T_INT, OFF(pg_timeout_ms), 1, 600000, "2000", "PostgreSQL deadline, ms"},
    {"redis-timeout", T_INT, OFF(redis_timeout_ms), 1, 60000, "500", "Redis command deadline, ms"},
    {"pg-pool", T_INT, OFF(pg_pool), 1, 64, "4", "PostgreSQL connections per worker"},
    {"workers", T_INT, OFF(workers), 1, 64, "1", "worker processes sharing the port"},
    {"max-uri", T_INT, OFF(max_uri), 64, 1 << 20, "4096", "longest request URI, bytes (414)"},
    {"max-headers", T_INT, OFF(max_headers), 256, 1 << 22, "16384",
     "largest request headers, bytes (431)"},
    {"max-body", T_INT, OFF(max_body), 0, 1 << 22, "65536", "largest request body, bytes"},
    {"header-timeout", T_INT, OFF(header_timeout_s), 1, 3600, "10",
     "seconds a client may take to send its request"},
    {"idle-timeout", T_INT, OFF(idle_timeout_s), 1, 86400, "60",
     "seconds an idle keep-alive connection is kept"},
    {"max-conns", T_INT, OFF(max_conns), 1, 1000000, "10000", "concurrent client connections"},
    {"max-waiters-per-key", T_INT, OFF(max_waiters_per_key), 1, 1000000, "10000",
     "requests that may wait on one load"},
    {"max-waiters", T_INT, OFF(max_waiters), 1, 1000000, "50000",
     "requests that may wait on loads in total"},
    {"shutdown-timeout", T_INT, OFF(shutdown_timeout_ms), 0, 600000, "5000",
     "ms in-flight requests get to finish on SIGTERM"},
    {"log-level", T_STR, OFF(log_level), 0, 0, "info", "debug, info, warn or error"},
    {"install-triggers", T_FLAG, OFF(install_triggers), 0, 0, NULL,
     "install the change-notification triggers in --postgres and exit"},
};

static const opt *find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < QC_ARRAY_LEN(options); i++) {
        if (strlen(options[i].name) == len && strncmp(options[i].name, name, len) == 0)
            return &options[i];
    }
    return NULL;
}

int config_parse_hostport(const char *s, hostport *out)
{
    const char *colon;
    const char *host = s;
    size_t hostlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        host = s + 1;
        hostlen = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return -1;
        hostlen = (size_t)(colon - s);
    }
    if (hostlen == 0 || hostlen >= sizeof(out->host))
        return -1;
    const char *p = colon + 1;
    if (*p == '\0' || strlen(p) > 5)
        return -1;
    for (const char *q = p; *q; q++) {
        if (!isdigit((unsigned char)*q))
            return -1;
    }
    long port = strtol(p, NULL, 10);
    if (port < 1 || port > 65535)
        return -1;
    memcpy(out->host, host, hostlen);
    out->host[hostlen] = '\0';
    out->port = (int)port;
    return 0;
}

static int parse_int(const char *s, long min, long max, long *out)
{
    if (*s == '\0')
        return -1;
    for (const char *p = s; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return -1;
    }
    errno = 0;
    long v = strtol(s, NULL, 10);
    if (errno != 0 || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* Applies one value to its option. Returns 0, or -1 with err filled. */
static int apply(qc_config *cfg, const opt *o, const char *value, const char *source, char *err,
                 size_t errlen)
{
    char *field = (char *)cfg + o->offset;
    long v;
    switch (o->type) {
    case T_INT:
        if (parse_int(value, o->min, o->max, &v) < 0) {
            snprintf(err, errlen, "%s: expected an integer from %ld to %ld, got '%.64s'", source,
                     o->min, o->max, value);
            return -1;
        }
        *(int *)field = (int)v;
        return 0;
    case T_STR:
        free(*(char **)field);
        *(char **)field = xstrdup(value);
        return 0;
    case T_FLAG:
        *(bool *)field = true;
        return 0;
    case T_REDIS:
        if (strcmp(value, "none") == 0) {
            cfg->redis_enabled = false;
            return 0;
        }
        cfg->redis_enabled = true;
        break;
    case T_ADMIN:
        cfg->admin_enabled = true;
        break;
    case T_HOSTPORT:
        break;
    }
    if (config_parse_hostport(value, (hostport *)field) < 0) {
        snprintf(err, errlen, "%s: expected HOST:PORT, got '%.64s'", source, value);
        return -1;
    }
    return 0;
}

static void env_name(const opt *o, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "QUOTECACHE_");
    for (const char *p = o->name; *p && n + 1 < len; p++)
        buf[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    buf[n] = '\0';
}

static int load_defaults_and_env(qc_config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < QC_ARRAY_LEN(options); i++) {
        const opt *o = &options[i];
        if (o->def != NULL && apply(cfg, o, o->def, o->name, err, errlen) < 0)
            return -1;
    }
    cfg->admin_enabled = false;
    for (size_t i = 0; i < QC_ARRAY_LEN(options); i++) {
        const opt *o = &options[i];
        char name[64];
        env_name(o, name, sizeof(name));
        const char *v = getenv(name);
        if (v == NULL)
            continue;
        if (o->type == T_FLAG && strcmp(v, "1") != 0 && strcmp(v, "true") != 0)
            continue;
        if (apply(cfg, o, v, name, err, errlen) < 0)
            return -1;
    }
    return 0;
}

static void print_help(void)
{
    printf("usage: quotecache [options]\n\n"
           "A caching proxy for price quotes. Every option can also be set with the\n"
           "environment variable QUOTECACHE_<NAME> (upper case, dashes as underscores).\n\n");
    for (size_t i = 0; i < QC_ARRAY_LEN(options); i++) {
        const opt *o = &options[i];
        printf("  --%-20s %s%s%s%s\n", o->name, o->help, o->def ? " (default " : "",
               o->def ? o->def : "", o->def ? ")" : "");
    }
    printf("  --%-20s %s\n  --%-20s %s\n", "help", "this text", "version", "print the version");
}

static int load_argv(qc_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            print_help();
            return CONFIG_EXIT;
        }
        if (strcmp(a, "--version") == 0) {
            printf("quotecache %s\n", QC_VERSION);
            return CONFIG_EXIT;
        }
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%.64s' (see --help)", a);
            return CONFIG_ERROR;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const opt *o = find_opt(name, nlen);
        if (o == NULL) {
            snprintf(err, errlen, "unknown option '--%.*s' (see --help)", (int)nlen, name);
            return CONFIG_ERROR;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (o->type == T_FLAG) {
            if (value != NULL) {
                snprintf(err, errlen, "--%s takes no value", o->name);
                return CONFIG_ERROR;
            }
            value = "1";
        } else if (value == NULL) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "--%s needs a value", o->name);
                return CONFIG_ERROR;
            }
            value = argv[++i];
        }
        char source[64];
        snprintf(source, sizeof(source), "--%s", o->name);
        if (apply(cfg, o, value, source, err, errlen) < 0)
            return CONFIG_ERROR;
    }
    return CONFIG_OK;
}

static int validate(const qc_config *cfg, char *err, size_t errlen)
{
    size_t vlen = strlen(cfg->key_version);
    if (vlen == 0 || vlen > 32 ||
        strspn(cfg->key_version, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                 "0123456789._-") != vlen) {
        snprintf(err, errlen, "--key-version: 1 to 32 characters of [A-Za-z0-9._-]");
        return -1;
    }
    if (strncmp(cfg->tax_url, "http://", 7) != 0) {
        snprintf(err, errlen, "--tax-url: expected http://HOST[:PORT][/PATH]");
        return -1;
    }
    if (cfg->admin_token != NULL && strlen(cfg->admin_token) < 8) {
        snprintf(err, errlen, "--admin-token: at least 8 characters");
        return -1;
    }
    return 0;
}

int config_load(qc_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    if (load_defaults_and_env(cfg, err, errlen) < 0)
        return CONFIG_ERROR;
    int rc = load_argv(cfg, argc, argv, err, errlen);
    if (rc != CONFIG_OK)
        return rc;
    if (validate(cfg, err, errlen) < 0)
        return CONFIG_ERROR;
    return CONFIG_OK;
}

void config_free(qc_config *cfg)
{
    free(cfg->admin_token);
    free(cfg->postgres);
    free(cfg->tax_url);
    free(cfg->key_version);
    free(cfg->log_level);
    memset(cfg, 0, sizeof(*cfg));
}
