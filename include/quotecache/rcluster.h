/* rcluster: the client side of the Redis Cluster protocol, over hiredis'
 * async API (hiredis 0.14 has none): the slot map (CLUSTER SLOTS), one
 * connection per master (an rconn each), routing of a command by the slot
 * of its first key, MOVED (the slot's owner updated, the map re-read in the
 * background, the command sent again) and ASK (ASKING then the command on
 * the target, once), at most RCLUSTER_REDIRECTS_MAX redirections per
 * command. It knows nothing of quotecache's keys or scripts (rcache's).
 *
 * The map is re-read on a redirection, on a lost connection, every
 * RCLUSTER_REFRESH_MS, and every RCLUSTER_REFRESH_FAST_MS while a slot's
 * owner is unreachable (a failover: the replica promoted shows up there).
 * A node is never forgotten before rcluster_free (at most
 * RCLUSTER_NODES_MAX): one that lost its slots only idles. A node is up
 * once INFO server has answered; a master whose run_id changed (restarted
 * in place, with an old snapshot or none) counts as replaced.
 *
 * Callbacks: rcluster_command returns 0 and cb then fires exactly once,
 * later, with the final reply (an error reply included, after the
 * redirections it allowed), or NULL when a connection died under it; or it
 * returns -1 (no map yet, the slot's owner is not up) and cb never fires. */
#ifndef QUOTECACHE_RCLUSTER_H
#define QUOTECACHE_RCLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct redisReply;

#define RCLUSTER_SLOTS 16384
#define RCLUSTER_NODES_MAX 64
#define RCLUSTER_REDIRECTS_MAX 3
#define RCLUSTER_REFRESH_MS 1000
#define RCLUSTER_REFRESH_FAST_MS 200
#define RCLUSTER_HOST_MAX 256
#define RCLUSTER_ID_MAX 40

/* ---- pure: slots, redirections, the map's wire format ---- */

/* CRC16-CCITT (XMODEM: poly 0x1021, init 0), the cluster spec's. */
uint16_t rcluster_crc16(const char *buf, size_t len);
/* The slot of a key: the CRC16 of its hash tag (what lies between the first
 * '{' and the first '}' after it, when that is not empty), else of the
 * whole key, modulo 16384. */
int rcluster_keyslot(const char *key, size_t len);

/* One range of CLUSTER SLOTS: slots lo..hi served by master host:port. */
typedef struct rcluster_range {
    int lo, hi;
    char host[RCLUSTER_HOST_MAX];
    int port;
    char id[RCLUSTER_ID_MAX + 1]; /* "" when the server sends none (Redis < 4) */
} rcluster_range;

/* Parses a CLUSTER SLOTS reply into out (at most max ranges). An empty
 * host (Redis sends "" for "the address you reached me on") is left "".
 * Returns the number of ranges, or -1 when the reply is not that shape. */
int rcluster_parse_slots(const struct redisReply *r, rcluster_range *out, int max);

/* A redirection error ("MOVED 3999 127.0.0.1:6381", "ASK ..."). Returns 0
 * with its fields, or -1 when err is no redirection. */
typedef struct rcluster_redirect {
    bool ask;
    int slot;
    char host[RCLUSTER_HOST_MAX];
    int port;
} rcluster_redirect;
int rcluster_parse_redirect(const char *err, size_t len, rcluster_redirect *out);

/* The run_id of an INFO reply (its "run_id:" line, 40 characters) into out
 * (RCLUSTER_ID_MAX + 1 bytes). Returns 0, or -1 when there is none. */
int rcluster_parse_run_id(const char *info, size_t len, char *out);

/* ---- the client ---- */

typedef struct rcluster rcluster;

typedef void rcluster_reply_cb(void *arg, const struct redisReply *r);

typedef struct rcluster_hooks {
    /* Something that rcluster_slot_up or rcluster_all_up answer may have
     * changed: a node came up or went down, or a new map was read. */
    void (*on_change)(void *arg);
    /* A new map in which a node that served slots in the previous one serves
     * none (failed over, or emptied), or a master reconnected to under a new
     * run_id (restarted in place): writes acknowledged by it may be lost
     * (replication is asynchronous; a snapshot is older). Runs before
     * on_change for that map, and before that node counts as up. */
    void (*on_master_replaced)(void *arg);
} rcluster_hooks;

/* Connects to the seeds (asynchronously: no hook runs before it returns)
 * and reads the map from the first that answers. timeout_ms: the deadline
 * of connects and of CLUSTER SLOTS (commands' deadlines are the caller's). */
rcluster *rcluster_new(struct event_base *base, const char *const *hosts, const int *ports, int n,
                       int timeout_ms, const rcluster_hooks *hooks, void *arg);
/* Pending commands get cb(NULL) before it returns. Not from inside a
 * callback of this rcluster. */
void rcluster_free(rcluster *cl);

/* Sends argv (its first key's slot: slot) to the slot's master. */
int rcluster_command(rcluster *cl, int slot, int argc, const char **argv, const size_t *lens,
                     rcluster_reply_cb *cb, void *arg);
/* A map is known and the slot's master is connected. */
bool rcluster_slot_up(const rcluster *cl, int slot);
/* A map is known and every slot's master is connected. */
bool rcluster_all_up(const rcluster *cl);
/* Re-reads the map soon (coalesced with one in flight). */
void rcluster_refresh(rcluster *cl);
/* A connected node, for what any node serves (PUBLISH, a subscriber):
 * host and port of the n-th known node (n modulo their count). Returns -1
 * when none is known. */
int rcluster_node_addr(const rcluster *cl, unsigned n, const char **host, int *port);

#endif
