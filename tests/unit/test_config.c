/* Unit tests for config: the --config file syntax (comments, quotes,
 * escapes, blanks), precedence flag > environment > file > default, every
 * problem reported with its line, the reload rule, and the master's
 * restart backoff. Files are written to a temporary directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "quotecache/config.h"
#include "quotecache/master.h"

static char dir[] = "/tmp/qc-unit-config-XXXXXX";

static const char *write_file(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs(text, f);
    fclose(f);
    return path;
}

/* Loads with argv = {"quotecache", args...}. */
static int load(qc_config *cfg, config_problems *p, int n, const char **args)
{
    const char *argv[16] = {"quotecache"};
    for (int i = 0; i < n; i++)
        argv[i + 1] = args[i];
    return config_load_all(cfg, n + 1, (char **)argv, p);
}

static bool has_problem(const config_problems *p, const char *text)
{
    for (int i = 0; i < p->n; i++) {
        if (strstr(p->line[i], text) != NULL)
            return true;
    }
    return false;
}

static void test_syntax(void)
{
    qc_config cfg;
    config_problems p;
    const char *path =
        write_file("syntax.conf", "# comment\n"
                                  "\n"
                                  "   ttl=42   \n"
                                  "postgres = \"host=a dbname='x y' # kept\"  # gone\n"
                                  "tax-url = http://h:1/p#frag # comment\n"
                                  "admin-token = \"a\\\"b\\\\cdefgh\"\n"
                                  "key-version = 'v\"2'\r\n"
                                  "log-level = debug\n");
    const char *args[] = {"--config", path, "--key-version", "v3"};
    CHECK(load(&cfg, &p, 4, args) == CONFIG_OK);
    CHECK(p.n == 0);
    CHECK(cfg.ttl_s == 42);
    CHECK(strcmp(cfg.postgres, "host=a dbname='x y' # kept") == 0);
    CHECK(strcmp(cfg.tax_url, "http://h:1/p#frag") == 0);
    CHECK(strcmp(cfg.admin_token, "a\"b\\cdefgh") == 0);
    CHECK(strcmp(cfg.key_version, "v3") == 0); /* the flag wins */
    CHECK(strcmp(cfg.log_level, "debug") == 0);
    CHECK(strcmp(cfg.config_file, path) == 0);
    CHECK(cfg.listen_fd == -1 && cfg.admin_fd == -1);
    config_free(&cfg);
}

static void test_byte_order_mark(void)
{
    qc_config cfg;
    config_problems p;
    /* On the first line only: elsewhere it is not whitespace. */
    const char *path = write_file("bom.conf", "\xEF\xBB\xBFttl = 7\n");
    const char *args[] = {"--config", path};
    CHECK(load(&cfg, &p, 2, args) == CONFIG_OK && p.n == 0 && cfg.ttl_s == 7);
    config_free(&cfg);
    path = write_file("bom2.conf", "ttl = 7\n\xEF\xBB\xBFneg-ttl = 3\n");
    CHECK(load(&cfg, &p, 2, args) != CONFIG_OK && has_problem(&p, "bom2.conf:2:"));
    config_free(&cfg);
}

static void test_precedence(void)
{
    qc_config cfg;
    config_problems p;
    const char *path = write_file("prec.conf", "ttl = 10\nstale-ttl = 11\nneg-ttl = 12\n");
    setenv("QUOTECACHE_STALE_TTL", "21", 1);
    setenv("QUOTECACHE_NEG_TTL", "22", 1);
    const char *args[] = {"--config", path, "--neg-ttl=32"};
    CHECK(load(&cfg, &p, 3, args) == CONFIG_OK);
    CHECK(cfg.ttl_s == 10);       /* file over default */
    CHECK(cfg.stale_ttl_s == 21); /* environment over file */
    CHECK(cfg.neg_ttl_s == 32);   /* flag over environment */
    CHECK(cfg.lock_ttl_ms == 10000);
    config_free(&cfg);
    /* QUOTECACHE_CONFIG names the file when no flag does. */
    setenv("QUOTECACHE_CONFIG", path, 1);
    CHECK(load(&cfg, &p, 0, NULL) == CONFIG_OK && cfg.ttl_s == 10);
    config_free(&cfg);
    unsetenv("QUOTECACHE_CONFIG");
    unsetenv("QUOTECACHE_STALE_TTL");
    unsetenv("QUOTECACHE_NEG_TTL");
}

static void test_problems_carry_lines(void)
{
    qc_config cfg;
    config_problems p;
    const char *path = write_file("bad.conf", "ttl = 0\n"
                                              "nope = 1\n"
                                              "ttl = 5\n"
                                              "postgres = \"open\n"
                                              "postgres = \"x\" y\n"
                                              "= 3\n"
                                              "redis =\n"
                                              "install-triggers = 1\n"
                                              "key-version = a/b\n");
    const char *args[] = {"--config", path};
    CHECK(load(&cfg, &p, 2, args) == CONFIG_ERROR);
    char want[512];
    snprintf(want, sizeof(want), "%s:1: ttl: expected an integer from 1", path);
    CHECK(has_problem(&p, want));
    snprintf(want, sizeof(want), "%s:2: unknown option 'nope'", path);
    CHECK(has_problem(&p, want));
    snprintf(want, sizeof(want), "%s:3: 'ttl' already set on line 1", path);
    CHECK(has_problem(&p, want));
    snprintf(want, sizeof(want), "%s:4: unterminated quoted value", path);
    CHECK(has_problem(&p, want));
    snprintf(want, sizeof(want), "%s:5: unexpected text after the closing quote", path);
    CHECK(has_problem(&p, want));
    snprintf(want, sizeof(want), "%s:6: expected `name = value`", path);
    CHECK(has_problem(&p, want));
    snprintf(want, sizeof(want), "%s:7: missing value", path);
    CHECK(has_problem(&p, want));
    snprintf(want, sizeof(want), "%s:8: not allowed in a config file", path);
    CHECK(has_problem(&p, want));
    /* Checked after merging, still named by where the value came from. */
    snprintf(want, sizeof(want), "%s:9: key-version: 1 to 32 characters", path);
    CHECK(has_problem(&p, want));
    CHECK(p.n == 9);
    config_free(&cfg);

    char err[CONFIG_PROBLEM_LEN];
    CHECK(config_load(&cfg, 3, (char *[]){"quotecache", "--ttl", "x"}, err, sizeof(err)) ==
          CONFIG_ERROR);
    CHECK(strncmp(err, "--ttl: expected an integer", 26) == 0);
    config_free(&cfg);
}

static void test_reloadable(void)
{
    qc_config a, b;
    config_problems p;
    char err[256];
    const char *one[] = {"--ttl", "5"};
    const char *two[] = {"--ttl", "6", "--log-level", "debug"};
    const char *moved[] = {"--listen", "127.0.0.1:9999"};
    const char *more[] = {"--workers", "2"};
    CHECK(load(&a, &p, 2, one) == CONFIG_OK);
    CHECK(load(&b, &p, 4, two) == CONFIG_OK);
    CHECK(config_reloadable(&a, &b, err, sizeof(err)) == 0);
    config_free(&b);
    CHECK(load(&b, &p, 2, moved) == CONFIG_OK);
    CHECK(config_reloadable(&a, &b, err, sizeof(err)) < 0 && strstr(err, "--listen") == err);
    config_free(&b);
    CHECK(load(&b, &p, 2, more) == CONFIG_OK);
    CHECK(config_reloadable(&a, &b, err, sizeof(err)) < 0 && strstr(err, "--workers") == err);
    config_free(&b);
    config_free(&a);
}

static void test_restart_backoff(void)
{
    CHECK(master_restart_delay_ms(1) == 0);
    CHECK(master_restart_delay_ms(2) == 100);
    CHECK(master_restart_delay_ms(3) == 200);
    CHECK(master_restart_delay_ms(8) == 6400);
    CHECK(master_restart_delay_ms(9) == 10000);
    CHECK(master_restart_delay_ms(1000) == 10000);
}

/* The pass-through's settings from the file, and their checks. */
static void test_upstream_settings(void)
{
    qc_config cfg;
    config_problems p;
    char routes[256];
    snprintf(routes, sizeof(routes), "%s",
             write_file("routes.json", "{\"routes\": [{\"name\": \"cart\", \"path\": "
                                       "\"/cart/{id}\", \"policy\": \"bypass\"}]}"));
    char text[512];
    snprintf(text, sizeof(text),
             "upstream = http://127.0.0.1:9000/app\nupstream-timeout = 1500\nmax-body = 1000000\n"
             "routes = %s\nlocal-cache-bytes = 65536\n",
             routes);
    const char *path = write_file("up.conf", text);
    const char *args[] = {"--config", path};
    CHECK(load(&cfg, &p, 2, args) == CONFIG_OK && p.n == 0);
    CHECK(strcmp(cfg.upstream, "http://127.0.0.1:9000/app") == 0);
    CHECK(cfg.upstream_timeout_ms == 1500 && cfg.max_body == 1000000);
    CHECK(strcmp(cfg.routes_file, routes) == 0 && cfg.local_cache_bytes == 65536);
    config_free(&cfg);

    const char *none[] = {"--ttl", "5"};
    CHECK(load(&cfg, &p, 2, none) == CONFIG_OK);
    CHECK(cfg.upstream == NULL && cfg.routes_file == NULL && cfg.upstream_timeout_ms == 10000);
    config_free(&cfg);

    write_file("bad-routes.json", "{\"routes\": [{\"name\": \"x\", \"path\": \"/x\", "
                                  "\"policy\": \"cached\"}]}");
    snprintf(text, sizeof(text), "upstream = https://x\nroutes = %s/bad-routes.json\n", dir);
    path = write_file("bad-up.conf", text);
    CHECK(load(&cfg, &p, 2, args) == CONFIG_ERROR);
    snprintf(text, sizeof(text), "%s:1: upstream: expected http://HOST[:PORT][/PREFIX]", path);
    CHECK(has_problem(&p, text));
    snprintf(text, sizeof(text), "%s:2: routes: '%s/bad-routes.json': route 1: \"policy\"", path,
             dir);
    CHECK(has_problem(&p, text));
    config_free(&cfg);
}

static void test_redis_cluster(void)
{
    qc_config cfg;
    config_problems p;

    const char *ok[] = {"--redis-cluster", "127.0.0.1:7000,[::1]:7001,h:7002"};
    CHECK(load(&cfg, &p, 2, ok) == CONFIG_OK);
    CHECK(cfg.redis_enabled && cfg.redis_cluster_n == 3);
    CHECK(strcmp(cfg.redis_cluster_seeds[0].host, "127.0.0.1") == 0);
    CHECK(cfg.redis_cluster_seeds[0].port == 7000);
    CHECK(strcmp(cfg.redis_cluster_seeds[1].host, "::1") == 0);
    CHECK(cfg.redis_cluster_seeds[2].port == 7002);
    config_free(&cfg);

    const char *single[] = {"--redis", "127.0.0.1:6380"}; /* unchanged */
    CHECK(load(&cfg, &p, 2, single) == CONFIG_OK);
    CHECK(cfg.redis_enabled && cfg.redis_cluster_n == 0 && cfg.redis.port == 6380);
    config_free(&cfg);

    const char *both[] = {"--redis", "127.0.0.1:6380", "--redis-cluster", "127.0.0.1:7000"};
    CHECK(load(&cfg, &p, 4, both) == CONFIG_ERROR);
    CHECK(has_problem(&p, "--redis-cluster: not with --redis"));
    config_free(&cfg);

    const char *bad[][2] = {{"--redis-cluster", "127.0.0.1:7000,"},
                            {"--redis-cluster", "127.0.0.1"},
                            {"--redis-cluster", ",h:1"},
                            {"--redis-cluster", ""}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(load(&cfg, &p, 2, bad[i]) == CONFIG_ERROR);
        CHECK(has_problem(&p, "--redis-cluster: "));
        config_free(&cfg);
    }

    const char *path = write_file("cluster.conf", "redis-cluster = h1:7000,h2:7001\n");
    const char *file[] = {"--config", path};
    CHECK(load(&cfg, &p, 2, file) == CONFIG_OK);
    CHECK(cfg.redis_cluster_n == 2 && strcmp(cfg.redis_cluster_seeds[1].host, "h2") == 0);
    config_free(&cfg);
}

int main(void)
{
    CHECK(mkdtemp(dir) != NULL);
    test_syntax();
    test_byte_order_mark();
    test_precedence();
    test_problems_carry_lines();
    test_reloadable();
    test_restart_backoff();
    test_upstream_settings();
    test_redis_cluster();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return CHECK_DONE();
}
