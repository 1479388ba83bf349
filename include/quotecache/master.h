/* master: the main process. It opens the listening sockets, forks the
 * workers and supervises them: a worker that dies is restarted (with
 * backoff when it keeps dying), SIGHUP re-reads the configuration and
 * replaces every worker without a gap, SIGTERM/SIGINT stop them all. It
 * never serves a request itself.
 *
 * Signals to a worker: SIGTERM/SIGINT drain in-flight requests and exit;
 * SIGQUIT retires it (stop accepting, finish every open connection, each
 * answer closing its connection, bounded by --shutdown-timeout). */
#ifndef QUOTECACHE_MASTER_H
#define QUOTECACHE_MASTER_H

#include <stdbool.h>

#include "quotecache/config.h"

/* Runs one worker in a forked child; returns its exit status. cfg carries
 * the inherited listening sockets (listen_fd, admin_fd). Once listening the
 * worker writes one byte to ready_fd and closes it. defer: its index is
 * already being served (a restart or a reload), so it first waits for its
 * catalog (bounded) and only then takes connections. */
typedef int (*master_worker_fn)(qc_config *cfg, int ready_fd, bool defer);

/* Takes ownership of *cfg (a reload replaces it); argc/argv are read again
 * on SIGHUP. Returns the process exit status: 0 after a clean stop, 1 when
 * the listeners cannot be opened or the first workers cannot start. */
int master_run(qc_config *cfg, int argc, char **argv, master_worker_fn run);

/* Milliseconds before restarting a worker that died `failures` times in a
 * row (each within MASTER_STABLE_MS of its start): at once the first time,
 * then doubling from 100 ms up to 10 s. */
int master_restart_delay_ms(int failures);

#define MASTER_STABLE_MS 10000

#endif
