/* config: every flag of api.md, each also readable from QUOTECACHE_<NAME>
 * (upper case, dashes as underscores) and from a --config file of
 * `name = value` lines. Precedence: flag > environment > file > default. */
#ifndef QUOTECACHE_CONFIG_H
#define QUOTECACHE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_HOST_MAX 256
#define CONFIG_CLUSTER_SEEDS_MAX 16

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
    /* --redis-cluster: the seed nodes of a Redis Cluster (then redis_enabled
     * is true and redis unused); NULL / 0 in single-node mode. */
    char *redis_cluster;
    int redis_cluster_n;
    hostport redis_cluster_seeds[CONFIG_CLUSTER_SEEDS_MAX];
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
    int max_body;   /* request bodies; with --upstream, answer bodies too */
    char *upstream; /* --upstream URL, NULL when unset (no pass-through) */
    int upstream_timeout_ms;
    char *routes_file;     /* --routes: the route policies (JSON), NULL: all bypass */
    int local_cache_bytes; /* bound of the cache of local routes, per worker */
    int header_timeout_s;
    int idle_timeout_s;
    int max_conns;
    int max_waiters_per_key;
    int max_waiters;
    int shutdown_timeout_ms;
    char *log_level;
    char *access_log;      /* a path, "-" (stdout) or "off" */
    bool install_triggers; /* install the change-notification SQL and exit */
    char *config_file;     /* --config, NULL when unset */
    bool check_config;     /* --check-config: check everything and exit */
    /* Not options: listening sockets opened by the master and inherited by
     * a worker; -1 means the server opens its own. */
    int listen_fd;
    int admin_fd;
} qc_config;

enum { CONFIG_OK = 0, CONFIG_EXIT = 1, CONFIG_ERROR = -1 };

#define CONFIG_PROBLEMS_MAX 32
#define CONFIG_PROBLEM_LEN 320

/* Every problem found by one load, one line each ("FILE:LINE: ..." for the
 * file, "--ttl: ..." for a flag, "QUOTECACHE_TTL: ..." for the environment).
 * Past CONFIG_PROBLEMS_MAX only `dropped` counts them. */
typedef struct config_problems {
    int n;
    int dropped;
    char line[CONFIG_PROBLEMS_MAX][CONFIG_PROBLEM_LEN];
} config_problems;

/* Fills *cfg from defaults, then the --config file, then environ, then
 * argv. Returns CONFIG_OK; CONFIG_EXIT after printing --help or --version
 * (exit 0); CONFIG_ERROR after writing the first problem to err (exit 2). */
int config_load(qc_config *cfg, int argc, char **argv, char *err, size_t errlen);
/* The same, collecting every problem instead of the first (--check-config). */
int config_load_all(qc_config *cfg, int argc, char **argv, config_problems *probs);
/* Adds one problem line (printf-style). */
void config_problem(config_problems *probs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Whether a running instance may switch from *old to *new on reload: the
 * listeners and the worker count are fixed for the life of the master.
 * Returns 0, or -1 with one line in err naming the setting. */
int config_reloadable(const qc_config *old, const qc_config *new, char *err, size_t errlen);
void config_free(qc_config *cfg);

/* Parses "HOST:PORT" or "[V6]:PORT". Returns 0 or -1. */
int config_parse_hostport(const char *s, hostport *out);

#endif
