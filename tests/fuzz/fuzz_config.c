/* Fuzz target: the --config file parser (config_load_all with
 * `--config FILE`), on the bytes of the file. The file is a memfd, read
 * back through /proc/self/fd like any path. Oracles: success means no
 * problem was reported; every problem line is a terminated string; an
 * accepted configuration can reload into itself. LeakSanitizer checks that
 * config_free releases what the file set. */
#include "fuzz.h"

#include <sys/mman.h>

#include "quotecache/config.h"

extern char **environ;

static int fd = -1;
static char path[64];

/* QUOTECACHE_* variables would override the file: none in here. */
static void clear_env(void)
{
    for (char **e = environ; e && *e;) {
        if (strncmp(*e, "QUOTECACHE_", 11) == 0) {
            char name[128];
            size_t n = strcspn(*e, "=");
            snprintf(name, sizeof(name), "%.*s", (int)n, *e);
            unsetenv(name);
            e = environ;
        } else {
            e++;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fd < 0) {
        clear_env();
        fd = memfd_create("qcfuzz-config", 0);
        if (fd < 0)
            abort();
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
    char *argv[] = {"quotecache", "--config", path, NULL};
    qc_config cfg;
    config_problems probs;
    int rc = config_load_all(&cfg, 3, argv, &probs);

    FUZZ_CHECK(rc == CONFIG_OK || rc == CONFIG_ERROR);
    FUZZ_CHECK((rc == CONFIG_OK) == (probs.n == 0));
    FUZZ_CHECK(probs.n >= 0 && probs.n <= CONFIG_PROBLEMS_MAX && probs.dropped >= 0);
    for (int i = 0; i < probs.n; i++)
        FUZZ_CHECK(strnlen(probs.line[i], CONFIG_PROBLEM_LEN) < CONFIG_PROBLEM_LEN);
    if (rc == CONFIG_OK) {
        char err[256];
        FUZZ_CHECK(config_reloadable(&cfg, &cfg, err, sizeof(err)) == 0);
    }
    config_free(&cfg);
    return 0;
}
