/* config: flags, environment and the --config file, table-driven so that
 * every option has one line saying its name, type, bounds and default.
 *
 * A load applies, in order, the defaults, the file, the environment and
 * the flags (so flag > environment > file > default), records where each
 * value came from so that a later check names its source, and collects
 * every problem rather than stopping at the first (--check-config prints
 * them all). */
#include "quotecache/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/routes.h"
#include "quotecache/upstream.h"

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
    {"redis-cluster", T_STR, OFF(redis_cluster), 0, 0, NULL,
     "Redis Cluster seed nodes HOST:PORT[,HOST:PORT...] (instead of --redis)"},
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
    {"max-body", T_INT, OFF(max_body), 0, 1 << 26, "65536",
     "largest request body, bytes (413); with --upstream also the largest answer (502)"},
    {"upstream", T_STR, OFF(upstream), 0, 0, NULL,
     "http://HOST:PORT[/PREFIX] of the application that gets every route not ours"},
    {"upstream-timeout", T_INT, OFF(upstream_timeout_ms), 1, 600000, "10000",
     "upstream deadline per request, ms (504)"},
    {"routes", T_STR, OFF(routes_file), 0, 0, NULL,
     "JSON file of route policies for --upstream (local, bypass); unlisted: bypass"},
    {"local-cache-bytes", T_INT, OFF(local_cache_bytes), 4096, 1 << 30, "16777216",
     "bytes the in-process cache of local routes may hold, per worker"},
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
    {"access-log", T_STR, OFF(access_log), 0, 0, "off",
     "one JSON line per request to PATH, - (stdout) or off; SIGUSR1 reopens PATH"},
    {"install-triggers", T_FLAG, OFF(install_triggers), 0, 0, NULL,
     "install the change-notification triggers in --postgres and exit"},
    {"config", T_STR, OFF(config_file), 0, 0, NULL,
     "file of `name = value` lines (flag > environment > file > default); SIGHUP re-reads it"},
    {"check-config", T_FLAG, OFF(check_config), 0, 0, NULL,
     "check the configuration and the listeners, print each problem, exit 0 or 2"},
};

#define NOPTS QC_ARRAY_LEN(options)

/* One load in progress: the config being filled, where each value came
 * from (for the messages of checks made after everything is merged), and
 * the problems found so far. */
typedef struct loader {
    qc_config *cfg;
    config_problems *probs;
    char source[NOPTS][96];
    bool defaults_done;
    bool redis_set; /* --redis given (flag, environment or file) */
} loader;

void config_problem(config_problems *probs, const char *fmt, ...)
{
    if (probs->n == CONFIG_PROBLEMS_MAX) {
        probs->dropped++;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(probs->line[probs->n++], CONFIG_PROBLEM_LEN, fmt, ap);
    va_end(ap);
}

static const opt *find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTS; i++) {
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

static int set_value(qc_config *cfg, const opt *o, const char *value)
{
    char *field = (char *)cfg + o->offset;
    long v;
    switch (o->type) {
    case T_INT:
        if (parse_int(value, o->min, o->max, &v) < 0)
            return -1;
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
    if (config_parse_hostport(value, (hostport *)field) == 0)
        return 0;
    ((hostport *)field)->port = 0; /* not the default either: nothing to bind */
    return -1;
}

/* Applies one value to its option and records its source; a bad value is a
 * problem that names the source. Returns 0 or -1. */
static int apply(loader *ld, const opt *o, const char *value, const char *source)
{
    if (o->type == T_REDIS && ld->defaults_done)
        ld->redis_set = true;
    if (set_value(ld->cfg, o, value) < 0) {
        if (o->type == T_INT)
            config_problem(ld->probs, "%s: expected an integer from %ld to %ld, got '%.64s'",
                           source, o->min, o->max, value);
        else
            config_problem(ld->probs, "%s: expected HOST:PORT%s, got '%.64s'", source,
                           o->type == T_REDIS ? " or none" : "", value);
        return -1;
    }
    snprintf(ld->source[o - options], sizeof(ld->source[0]), "%s", source);
    return 0;
}

static const char *source_of(const loader *ld, const char *name)
{
    return ld->source[find_opt(name, strlen(name)) - options];
}

/* ---- the file ---- */

#define LINE_MAX_LEN 4096

static bool allowed_in_file(const opt *o)
{
    return o->type != T_FLAG && o->offset != OFF(config_file);
}

/* Reads a quoted value in place: "..." takes \" and \\ escapes, '...' is
 * literal (libpq conninfo strings quote with single quotes inside double
 * quotes, and the other way round). Returns 0 or -1 with *why. */
static int unquote(char *p, char **value, const char **why)
{
    char q = *p++;
    char *out = p;
    *value = p;
    for (; *p != q; p++) {
        if (*p == '\0') {
            *why = "unterminated quoted value";
            return -1;
        }
        if (q == '"' && *p == '\\' && (p[1] == '"' || p[1] == '\\'))
            p++;
        *out++ = *p;
    }
    p++;
    *out = '\0';
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p != '\0' && *p != '#') {
        *why = "unexpected text after the closing quote";
        return -1;
    }
    return 0;
}

/* Splits one line in place. Returns 1 for a blank or comment line, 0 with
 * *name and *value set, or -1 with *why set. An unquoted value ends at a
 * '#' that follows a blank (a comment), its trailing blanks dropped. */
static int split_line(char *line, char **name, char **value, const char **why)
{
    char *p = line;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0' || *p == '#')
        return 1;
    *name = p;
    while (isalnum((unsigned char)*p) || *p == '-' || *p == '_')
        p++;
    char *name_end = p;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p != '=' || name_end == *name) {
        *why = "expected `name = value`";
        return -1;
    }
    *name_end = '\0';
    p++;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '"' || *p == '\'')
        return unquote(p, value, why);
    *value = p;
    char *end = p;
    for (char *c = p; *c && !(*c == '#' && (c == p || c[-1] == ' ' || c[-1] == '\t')); c++) {
        if (*c != ' ' && *c != '\t')
            end = c + 1;
    }
    *end = '\0';
    if (**value == '\0') {
        *why = "missing value (write \"\" for an empty one)";
        return -1;
    }
    return 0;
}

static void load_file_line(loader *ld, const char *path, int lineno, char *line, int seen[])
{
    char *name, *value;
    const char *why = NULL;
    int rc = split_line(line, &name, &value, &why);
    if (rc == 1)
        return;
    if (rc < 0) {
        config_problem(ld->probs, "%s:%d: %s", path, lineno, why);
        return;
    }
    const opt *o = find_opt(name, strlen(name));
    if (o == NULL || !allowed_in_file(o)) {
        config_problem(ld->probs, "%s:%d: %s '%.64s'", path, lineno,
                       o ? "not allowed in a config file:" : "unknown option", name);
        return;
    }
    size_t i = (size_t)(o - options);
    if (seen[i]) {
        config_problem(ld->probs, "%s:%d: '%s' already set on line %d", path, lineno, o->name,
                       seen[i]);
        return;
    }
    seen[i] = lineno;
    char source[96];
    snprintf(source, sizeof(source), "%.60s:%d: %s", path, lineno, o->name);
    apply(ld, o, value, source);
}

/* A UTF-8 byte order mark, which some editors write first: not part of
 * the first line's name (it read as `expected name = value`). */
static char *skip_bom(char *line)
{
    return strncmp(line, "\xEF\xBB\xBF", 3) == 0 ? line + 3 : line;
}

static void load_file(loader *ld, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        config_problem(ld->probs, "--config: cannot read '%.200s': %s", path, strerror(errno));
        return;
    }
    int seen[NOPTS] = {0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    for (int lineno = 1; (n = getline(&line, &cap, f)) >= 0; lineno++) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n > LINE_MAX_LEN)
            config_problem(ld->probs, "%s:%d: line longer than %d bytes", path, lineno,
                           LINE_MAX_LEN);
        else if (strlen(line) != (size_t)n)
            config_problem(ld->probs, "%s:%d: NUL byte in line", path, lineno);
        else
            load_file_line(ld, path, lineno, lineno == 1 ? skip_bom(line) : line, seen);
    }
    /* getline() ends on a read error as on EOF (a directory opens, then
     * reads EISDIR): without this an unreadable file was an empty one. */
    if (ferror(f))
        config_problem(ld->probs, "--config: cannot read '%.200s': %s", path, strerror(errno));
    free(line);
    fclose(f);
}

/* ---- environment and flags ---- */

static void env_name(const opt *o, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "QUOTECACHE_");
    for (const char *p = o->name; *p && n + 1 < len; p++)
        buf[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    buf[n] = '\0';
}

static void load_env(loader *ld)
{
    for (size_t i = 0; i < NOPTS; i++) {
        const opt *o = &options[i];
        char name[64];
        env_name(o, name, sizeof(name));
        const char *v = getenv(name);
        if (v == NULL || o->offset == OFF(config_file))
            continue;
        if (o->type == T_FLAG && strcmp(v, "1") != 0 && strcmp(v, "true") != 0)
            continue;
        apply(ld, o, v, name);
    }
}

static void print_help(void)
{
    printf("usage: quotecache [options]\n\n"
           "A caching proxy for price quotes. Every option can also be set with the\n"
           "environment variable QUOTECACHE_<NAME> (upper case, dashes as underscores)\n"
           "or as a `name = value` line of the --config file; a flag beats the\n"
           "variable, which beats the file.\n\n");
    for (size_t i = 0; i < NOPTS; i++) {
        const opt *o = &options[i];
        printf("  --%-20s %s%s%s%s\n", o->name, o->help, o->def ? " (default " : "",
               o->def ? o->def : "", o->def ? ")" : "");
    }
    printf("  --%-20s %s\n  --%-20s %s\n", "help", "this text", "version", "print the version");
    printf("\nSignals: SIGTERM/SIGINT drain and exit; SIGHUP re-reads --config and\n"
           "replaces the workers without dropping a request.\n");
}

typedef struct flag_value {
    const opt *o;
    const char *value;
} flag_value;

/* Parses argv into (option, value) pairs without applying them: --config
 * must be known before the file, and the file applies before the flags.
 * Returns CONFIG_OK, CONFIG_EXIT after --help or --version, or
 * CONFIG_ERROR when argv itself is malformed. */
static int scan_argv(int argc, char **argv, flag_value *out, int *nout, config_problems *probs)
{
    *nout = 0;
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
            config_problem(probs, "unexpected argument '%.64s' (see --help)", a);
            return CONFIG_ERROR;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const opt *o = find_opt(name, nlen);
        if (o == NULL) {
            config_problem(probs, "unknown option '--%.*s' (see --help)", (int)nlen, name);
            return CONFIG_ERROR;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (o->type == T_FLAG) {
            if (value != NULL) {
                config_problem(probs, "--%s takes no value", o->name);
                return CONFIG_ERROR;
            }
            value = "1";
        } else if (value == NULL) {
            if (i + 1 >= argc) {
                config_problem(probs, "--%s needs a value", o->name);
                return CONFIG_ERROR;
            }
            value = argv[++i];
        }
        out[(*nout)++] = (flag_value){o, value};
    }
    return CONFIG_OK;
}

/* ---- checks over the merged result ---- */

static bool is_loopback(const char *host)
{
    return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
           strcmp(host, "::1") == 0;
}

/* --redis-cluster's list into the seeds; Redis is then enabled. */
static void parse_cluster_seeds(loader *ld)
{
    qc_config *cfg = ld->cfg;
    const char *src = source_of(ld, "redis-cluster");
    const char *p = cfg->redis_cluster;

    if (ld->redis_set) {
        config_problem(ld->probs, "%s: not with --redis (one or the other)", src);
        return;
    }
    cfg->redis_cluster_n = 0;
    while (*p != '\0') {
        char one[CONFIG_HOST_MAX + 16];
        size_t n = strcspn(p, ",");
        if (n == 0 || n >= sizeof(one) || cfg->redis_cluster_n == CONFIG_CLUSTER_SEEDS_MAX) {
            config_problem(ld->probs, "%s: expected 1 to %d HOST:PORT separated by commas", src,
                           CONFIG_CLUSTER_SEEDS_MAX);
            return;
        }
        memcpy(one, p, n);
        one[n] = '\0';
        if (config_parse_hostport(one, &cfg->redis_cluster_seeds[cfg->redis_cluster_n]) < 0) {
            config_problem(ld->probs, "%s: expected HOST:PORT, got '%.64s'", src, one);
            return;
        }
        cfg->redis_cluster_n++;
        p += n;
        if (*p == ',' && *++p == '\0') {
            config_problem(ld->probs, "%s: trailing comma", src);
            return;
        }
    }
    if (cfg->redis_cluster_n == 0) {
        config_problem(ld->probs, "%s: expected HOST:PORT[,HOST:PORT...]", src);
        return;
    }
    cfg->redis_enabled = true;
}

static void validate(loader *ld)
{
    const qc_config *cfg = ld->cfg;
    config_problems *p = ld->probs;
    size_t vlen = strlen(cfg->key_version);
    if (vlen == 0 || vlen > 32 ||
        strspn(cfg->key_version, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                 "0123456789._-") != vlen)
        config_problem(p, "%s: 1 to 32 characters of [A-Za-z0-9._-]", source_of(ld, "key-version"));
    if (strncmp(cfg->tax_url, "http://", 7) != 0)
        config_problem(p, "%s: expected http://HOST[:PORT][/PATH]", source_of(ld, "tax-url"));
    char host[256], prefix[512];
    int port;
    if (cfg->upstream != NULL &&
        upstream_parse_url(cfg->upstream, host, sizeof(host), &port, prefix, sizeof(prefix)) < 0)
        config_problem(p, "%s: expected http://HOST[:PORT][/PREFIX]", source_of(ld, "upstream"));
    if (cfg->routes_file != NULL) {
        char why[400];
        routes *rt = routes_load(cfg->routes_file, why, sizeof(why));
        if (rt == NULL)
            config_problem(p, "%s: %s", source_of(ld, "routes"), why);
        routes_free(rt);
    }
    if (cfg->admin_token != NULL && strlen(cfg->admin_token) < 8)
        config_problem(p, "%s: at least 8 characters", source_of(ld, "admin-token"));
    if (cfg->admin_enabled && cfg->admin_token == NULL && !is_loopback(cfg->admin_listen.host))
        config_problem(p, "%s: a non-loopback address needs --admin-token",
                       source_of(ld, "admin-listen"));
    if (cfg->redis_cluster != NULL)
        parse_cluster_seeds(ld);
    enum log_level level;
    if (log_level_parse(cfg->log_level, &level) < 0)
        config_problem(p, "%s: expected debug, info, warn or error", source_of(ld, "log-level"));
}

int config_load_all(qc_config *cfg, int argc, char **argv, config_problems *probs)
{
    memset(cfg, 0, sizeof(*cfg));
    memset(probs, 0, sizeof(*probs));
    cfg->listen_fd = cfg->admin_fd = -1;
    loader *ld = xcalloc(1, sizeof(*ld));
    ld->cfg = cfg;
    ld->probs = probs;
    flag_value *flags = xcalloc((size_t)argc + 1, sizeof(*flags));
    int nflags = 0;
    int rc = scan_argv(argc, argv, flags, &nflags, probs);
    if (rc != CONFIG_OK)
        goto done;
    for (size_t i = 0; i < NOPTS; i++) {
        if (options[i].def != NULL) {
            char source[64];
            snprintf(source, sizeof(source), "--%s", options[i].name);
            apply(ld, &options[i], options[i].def, source);
        }
    }
    cfg->admin_enabled = false;
    ld->defaults_done = true;
    const char *file = getenv("QUOTECACHE_CONFIG");
    for (int i = 0; i < nflags; i++) {
        if (flags[i].o->offset == OFF(config_file))
            file = flags[i].value;
    }
    if (file != NULL) {
        cfg->config_file = xstrdup(file);
        load_file(ld, file);
    }
    load_env(ld);
    for (int i = 0; i < nflags; i++) {
        char source[64];
        snprintf(source, sizeof(source), "--%s", flags[i].o->name);
        if (flags[i].o->offset != OFF(config_file))
            apply(ld, flags[i].o, flags[i].value, source);
    }
    validate(ld);
    rc = probs->n > 0 ? CONFIG_ERROR : CONFIG_OK;
done:
    free(flags);
    free(ld);
    return rc;
}

int config_load(qc_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    config_problems *probs = xmalloc(sizeof(*probs));
    int rc = config_load_all(cfg, argc, argv, probs);
    if (rc == CONFIG_ERROR)
        snprintf(err, errlen, "%s", probs->line[0]);
    free(probs);
    return rc;
}

static bool same_hostport(const hostport *a, const hostport *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

int config_reloadable(const qc_config *old, const qc_config *new, char *err, size_t errlen)
{
    const char *what = NULL;
    if (!same_hostport(&old->listen, &new->listen))
        what = "--listen";
    else if (old->admin_enabled != new->admin_enabled ||
             (old->admin_enabled && !same_hostport(&old->admin_listen, &new->admin_listen)))
        what = "--admin-listen";
    else if (old->workers != new->workers)
        what = "--workers";
    if (what == NULL)
        return 0;
    snprintf(err, errlen, "%s cannot change on reload (restart instead)", what);
    return -1;
}

void config_free(qc_config *cfg)
{
    free(cfg->admin_token);
    free(cfg->postgres);
    free(cfg->tax_url);
    free(cfg->key_version);
    free(cfg->log_level);
    free(cfg->access_log);
    free(cfg->config_file);
    free(cfg->upstream);
    free(cfg->routes_file);
    free(cfg->redis_cluster);
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen_fd = cfg->admin_fd = -1;
}
