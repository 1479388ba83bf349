/* config: every flag of api.md, each also readable from QUOTECACHE_<NAME>
 * (upper case, dashes as underscores); a flag beats the variable. */
#ifndef QUOTECACHE_CONFIG_H
#define QUOTECACHE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_HOST_MAX 256

typedef struct hostport {
    char host[CONFIG_HOST_MAX];
    int port;
} hostport;

typedef struct qc_config {
    hostport listen;
    bool admin_enabled;
    hostport admin_listen;
    char *admin_token;  /* NULL when unset */
    bool redis_enabled; /* false for --redis none */
    hostport redis;
    char *postgres; /* libpq conninfo or URI */
    char *tax_url;
    int ttl_s;
    int stale_ttl_s;
    int neg_ttl_s; /* how long a 404 is cached */
    int lock_ttl_ms;
    char *key_version;
    int tax_timeout_ms;
    int pg_timeout_ms;
    int redis_timeout_ms;
    int pg_pool;
    int workers;
    int max_uri;
    int max_headers;
    int max_body;
    int header_timeout_s;
    int idle_timeout_s;
    int max_conns;
    int max_waiters_per_key;
    int max_waiters;
    int shutdown_timeout_ms;
    char *log_level;
    bool install_triggers; /* install the change-notification SQL and exit */
} qc_config;

enum { CONFIG_OK = 0, CONFIG_EXIT = 1, CONFIG_ERROR = -1 };

/* Fills *cfg from defaults, then environ, then argv. Returns CONFIG_OK;
 * CONFIG_EXIT after printing --help or --version (exit 0); CONFIG_ERROR
 * after writing one line to err (exit non-zero). */
int config_load(qc_config *cfg, int argc, char **argv, char *err, size_t errlen);
void config_free(qc_config *cfg);

/* Parses "HOST:PORT" or "[V6]:PORT". Returns 0 or -1. */
int config_parse_hostport(const char *s, hostport *out);

#endif
