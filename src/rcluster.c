/* rcluster: owns the slot map, the table of nodes (one rconn each), the map
 * refresh (its timer and the CLUSTER SLOTS in flight) and every command in
 * flight through it (a "creq": the formatted command, kept for a resend
 * after a redirection, and the caller's callback). See rcluster.h.
 *
 * hiredis 0.14.1 behaviour this file is built on (async.c):
 * - a context that dies answers every pending callback with NULL first;
 * - a command may be sent on another context from inside a reply callback
 *   (a redirection's resend is);
 * - a NULL callback discards its reply (the ASKING before an ASK resend). */
#include "quotecache/rcluster.h"

#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"
#include "quotecache/rconn.h"

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NO_NODE 0xff

/* ---- pure ---- */

uint16_t rcluster_crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

int rcluster_keyslot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open != NULL) {
        size_t from = (size_t)(open - key) + 1;
        const char *close = memchr(open + 1, '}', len - from);
        if (close != NULL && close > open + 1)
            return rcluster_crc16(open + 1, (size_t)(close - open - 1)) & (RCLUSTER_SLOTS - 1);
    }
    return rcluster_crc16(key, len) & (RCLUSTER_SLOTS - 1);
}

/* One master of a CLUSTER SLOTS entry: [host, port, id?, ...]. */
static int parse_node(const redisReply *n, rcluster_range *out)
{
    if (n->type != REDIS_REPLY_ARRAY || n->elements < 2 ||
        n->element[0]->type != REDIS_REPLY_STRING || n->element[1]->type != REDIS_REPLY_INTEGER ||
        n->element[0]->len >= RCLUSTER_HOST_MAX || n->element[1]->integer <= 0 ||
        n->element[1]->integer > 65535)
        return -1;
    memcpy(out->host, n->element[0]->str, n->element[0]->len);
    out->host[n->element[0]->len] = '\0';
    out->port = (int)n->element[1]->integer;
    out->id[0] = '\0';
    if (n->elements >= 3 && n->element[2]->type == REDIS_REPLY_STRING &&
        n->element[2]->len <= RCLUSTER_ID_MAX) {
        memcpy(out->id, n->element[2]->str, n->element[2]->len);
        out->id[n->element[2]->len] = '\0';
    }
    return 0;
}

int rcluster_parse_slots(const redisReply *r, rcluster_range *out, int max)
{
    int n = 0;
    if (r->type != REDIS_REPLY_ARRAY)
        return -1;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER)
            return -1;
        long long lo = e->element[0]->integer, hi = e->element[1]->integer;
        if (lo < 0 || hi < lo || hi >= RCLUSTER_SLOTS || n == max)
            return -1;
        out[n].lo = (int)lo;
        out[n].hi = (int)hi;
        if (parse_node(e->element[2], &out[n]) < 0)
            return -1;
        n++;
    }
    return n;
}

int rcluster_parse_redirect(const char *err, size_t len, rcluster_redirect *out)
{
    char buf[RCLUSTER_HOST_MAX + 32], host[RCLUSTER_HOST_MAX];
    const char *colon;
    int slot, port, used = 0;

    if (len >= sizeof(buf))
        return -1;
    memcpy(buf, err, len);
    buf[len] = '\0';
    if (strncmp(buf, "MOVED ", 6) == 0)
        out->ask = false;
    else if (strncmp(buf, "ASK ", 4) == 0)
        out->ask = true;
    else
        return -1;
    const char *p = buf + (out->ask ? 4 : 6);
    if (sscanf(p, "%d %n", &slot, &used) != 1 || slot < 0 || slot >= RCLUSTER_SLOTS)
        return -1;
    p += used;
    colon = strrchr(p, ':'); /* the last: IPv6 addresses hold colons too */
    if (colon == NULL || colon == p || (size_t)(colon - p) >= sizeof(host))
        return -1;
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = '\0';
    char *end;
    long lp = strtol(colon + 1, &end, 10);
    if (*end != '\0' || lp <= 0 || lp > 65535)
        return -1;
    port = (int)lp;
    out->slot = slot;
    memcpy(out->host, host, strlen(host) + 1);
    out->port = port;
    return 0;
}

int rcluster_parse_run_id(const char *info, size_t len, char *out)
{
    static const char tag[] = "run_id:";
    const size_t tlen = sizeof(tag) - 1;

    for (size_t i = 0; i + tlen + RCLUSTER_ID_MAX <= len; i++) {
        if ((i == 0 || info[i - 1] == '\n') && memcmp(info + i, tag, tlen) == 0) {
            memcpy(out, info + i + tlen, RCLUSTER_ID_MAX);
            out[RCLUSTER_ID_MAX] = '\0';
            return 0;
        }
    }
    return -1;
}

/* ---- the client ---- */

struct rc_node {
    rcluster *cl;
    char host[RCLUSTER_HOST_MAX];
    int port;
    char id[RCLUSTER_ID_MAX + 1];
    char run_id[RCLUSTER_ID_MAX + 1]; /* of the process last connected to ("": none yet) */
    int nslots;                       /* slots it serves in the current map */
    int complete_nslots;              /* and in the last map that had every slot */
    rconn *conn;
};

struct rcluster {
    struct event_base *base;
    int timeout_ms;
    rcluster_hooks hooks;
    void *arg;
    struct rc_node *node[RCLUSTER_NODES_MAX];
    int nnodes;
    uint8_t slot_node[RCLUSTER_SLOTS]; /* index into node[], NO_NODE: unmapped */
    bool mapped;                       /* a map has been read */
    int covered;                       /* slots with an owner */
    struct event *refresh;             /* sends the next CLUSTER SLOTS */
    struct event *refresh_deadline;
    redisAsyncContext *refresh_ac; /* where the one in flight went; NULL: none */
    unsigned next_ask;             /* round robin over the nodes asked */
    bool map_warned;               /* an unusable map was logged */
    bool closing;
};

/* A command in flight. */
struct creq {
    rcluster *cl;
    rcluster_reply_cb *cb;
    void *arg;
    char *cmd; /* the formatted command (redisFormatCommandArgv) */
    int len;
    int redirects;
    int node; /* where it went last */
};

static const char *const node_probe[] = {"PING"};

static void on_master_replaced(rcluster *cl);

static void arm(struct event *ev, int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

static void changed(rcluster *cl)
{
    if (!cl->closing && cl->hooks.on_change)
        cl->hooks.on_change(cl->arg);
}

/* The ready check's answer (INFO server). A master restarted in place
 * (before the cluster could fail it over) keeps its address, node id and
 * slots, and nothing in the map shows it; but it holds only what its last
 * snapshot had, or nothing: an entry and the counters it was stored under
 * may agree again at values a write acknowledged since had moved on. Its
 * new run_id tells, as the single-node guard's marker does; the hook runs
 * before the node counts as up, so nothing is read there first. */
static void node_on_info(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct rc_node *n = privdata;
    const redisReply *r = reply;
    char run_id[RCLUSTER_ID_MAX + 1];

    if (r == NULL || ac != rconn_context(n->conn) || n->cl->closing)
        return; /* the connection's on_down follows */
    if (r->type != REDIS_REPLY_STRING || rcluster_parse_run_id(r->str, r->len, run_id) < 0) {
        rconn_fail(n->conn, "INFO server: no run_id");
        return;
    }
    if (n->run_id[0] && strcmp(n->run_id, run_id) != 0 && n->nslots > 0) {
        log_debug("redis cluster: %s:%d restarted (run_id %s, was %s)", n->host, n->port, run_id,
                  n->run_id);
        on_master_replaced(n->cl);
    }
    memcpy(n->run_id, run_id, sizeof(n->run_id));
    rconn_probe(n->conn); /* ready when PING answers: INFO does while loading */
}

static void node_on_connected(void *arg, rconn *c)
{
    static const char *const argv[] = {"INFO", "server"};
    struct rc_node *n = arg;

    if (redisAsyncCommandArgv(rconn_context(c), node_on_info, n, 2, (const char **)argv, NULL) !=
        REDIS_OK)
        rconn_fail(c, "INFO server not sent");
}

static void node_on_up(void *arg, rconn *c)
{
    struct rc_node *n = arg;
    (void)c;
    if (!n->cl->mapped)
        rcluster_refresh(n->cl);
    changed(n->cl);
}

static void node_on_down(void *arg, rconn *c, bool was_up)
{
    struct rc_node *n = arg;
    (void)c;
    if (n->cl->closing)
        return;
    rcluster_refresh(n->cl); /* a failover shows up in the next maps */
    if (was_up)
        changed(n->cl);
}

static const rconn_hooks node_hooks = {node_on_connected, node_on_up, node_on_down};

/* The node at host:port, added (and connecting) when new; -1 when the table
 * is full. */
static int node_get(rcluster *cl, const char *host, int port)
{
    for (int i = 0; i < cl->nnodes; i++) {
        if (cl->node[i]->port == port && strcmp(cl->node[i]->host, host) == 0)
            return i;
    }
    if (cl->nnodes == RCLUSTER_NODES_MAX) {
        log_warn("redis cluster: more than %d nodes; %s:%d ignored", RCLUSTER_NODES_MAX, host,
                 port);
        return -1;
    }
    struct rc_node *n = xcalloc(1, sizeof(*n));
    n->cl = cl;
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = port;
    cl->node[cl->nnodes] = n;
    n->conn = rconn_new(cl->base, "cluster node", host, port, cl->timeout_ms, node_probe, 1,
                        &node_hooks, n);
    return cl->nnodes++;
}

/* ---- the map ---- */

static void on_master_replaced(rcluster *cl)
{
    log_warn("redis cluster: a master was replaced or restarted; its last writes may be lost");
    if (!cl->closing && cl->hooks.on_master_replaced)
        cl->hooks.on_master_replaced(cl->arg);
}

static void refresh_rearm(rcluster *cl)
{
    if (!cl->closing)
        arm(cl->refresh, rcluster_all_up(cl) ? RCLUSTER_REFRESH_MS : RCLUSTER_REFRESH_FAST_MS);
}

/* Installs a parsed map. A node that served slots in the last complete map
 * and serves none in this complete one, or that answers under another id,
 * had its writes maybe lost: on_master_replaced. */
static void map_apply(rcluster *cl, const rcluster_range *rg, int n, const char *asked_host)
{
    uint8_t next[RCLUSTER_SLOTS];
    int nslots[RCLUSTER_NODES_MAX] = {0};
    bool replaced = false;
    int covered = 0;

    memset(next, NO_NODE, sizeof(next));
    for (int i = 0; i < n; i++) {
        int idx = node_get(cl, rg[i].host[0] ? rg[i].host : asked_host, rg[i].port);
        if (idx < 0)
            continue;
        struct rc_node *nd = cl->node[idx];
        if (rg[i].id[0] && nd->id[0] && strcmp(nd->id, rg[i].id) != 0 && nd->nslots > 0) {
            log_debug("redis cluster: %s:%d is node %s now, was %s", nd->host, nd->port, rg[i].id,
                      nd->id);
            replaced = true; /* same address, another node (restarted empty, re-created) */
        }
        if (rg[i].id[0])
            memcpy(nd->id, rg[i].id, sizeof(nd->id));
        for (int s = rg[i].lo; s <= rg[i].hi; s++) {
            if (next[s] == NO_NODE)
                covered++;
            next[s] = (uint8_t)idx;
        }
        nslots[idx] += rg[i].hi - rg[i].lo + 1;
    }
    /* Only complete maps are compared: a node's view of a cluster being
     * created or healing may lack others' slots for a while. */
    for (int i = 0; i < cl->nnodes && covered == RCLUSTER_SLOTS; i++) {
        if (cl->node[i]->complete_nslots > 0 && nslots[i] == 0) {
            log_debug("redis cluster: %s:%d serves no slot now", cl->node[i]->host,
                      cl->node[i]->port);
            replaced = true;
        }
        cl->node[i]->complete_nslots = nslots[i];
    }
    for (int i = 0; i < cl->nnodes; i++)
        cl->node[i]->nslots = nslots[i];
    memcpy(cl->slot_node, next, sizeof(next));
    cl->covered = covered;
    cl->mapped = true;
    metrics_inc(M_CLUSTER_REFRESHES);
    if (replaced)
        on_master_replaced(cl);
    changed(cl);
}

static void slots_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    rcluster *cl = privdata;
    const redisReply *r = reply;

    if (ac != cl->refresh_ac || cl->closing)
        return; /* one given up on (deadline), or shutdown */
    cl->refresh_ac = NULL;
    evtimer_del(cl->refresh_deadline);
    if (r != NULL) {
        int max = r->type == REDIS_REPLY_ARRAY && r->elements > 0 ? (int)r->elements : 1;
        rcluster_range *rg = xcalloc((size_t)max, sizeof(*rg));
        int n = rcluster_parse_slots(r, rg, max);
        if (n > 0) {
            map_apply(cl, rg, n, ac->c.tcp.host ? ac->c.tcp.host : "");
            cl->map_warned = false;
        } else if (!cl->map_warned) {
            /* Once until a map is read: a cluster being created answers an
             * empty map for a while, every 200 ms. */
            log_warn("redis cluster: CLUSTER SLOTS: %s", r->type == REDIS_REPLY_ERROR ? r->str
                                                         : n == 0 ? "no slots assigned yet"
                                                                  : "unusable answer");
            cl->map_warned = true;
        }
        free(rg);
    }
    refresh_rearm(cl);
}

/* Asks the next connected node for the map. */
static void refresh_send(rcluster *cl)
{
    static const char *const argv[] = {"CLUSTER", "SLOTS"};

    if (cl->refresh_ac != NULL || cl->closing)
        return;
    for (int k = 0; k < cl->nnodes; k++) {
        struct rc_node *n = cl->node[(cl->next_ask + (unsigned)k) % (unsigned)cl->nnodes];
        redisAsyncContext *ac = rconn_context(n->conn);
        if (!rconn_is_up(n->conn) || ac == NULL)
            continue;
        cl->next_ask += (unsigned)k + 1;
        if (redisAsyncCommandArgv(ac, slots_on_reply, cl, 2, (const char **)argv, NULL) != REDIS_OK)
            continue;
        cl->refresh_ac = ac;
        arm(cl->refresh_deadline, cl->timeout_ms > 100 ? cl->timeout_ms : 100);
        return;
    }
    refresh_rearm(cl); /* nobody up: their on_up asks again */
}

static void on_refresh(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    refresh_send(arg);
}

static void on_refresh_deadline(evutil_socket_t fd, short what, void *arg)
{
    rcluster *cl = arg;
    (void)fd;
    (void)what;
    cl->refresh_ac = NULL; /* its late answer is ignored */
    refresh_rearm(cl);
}

void rcluster_refresh(rcluster *cl)
{
    if (cl->closing || cl->refresh_ac != NULL)
        return;
    event_active(cl->refresh, EV_TIMEOUT, 1);
}

/* ---- commands ---- */

static void creq_on_reply(redisAsyncContext *ac, void *reply, void *privdata);

static int creq_send(struct creq *q, int idx, bool asking)
{
    struct rc_node *n = q->cl->node[idx];
    redisAsyncContext *ac = rconn_context(n->conn);

    if (!rconn_is_up(n->conn) || ac == NULL)
        return -1;
    if (asking && redisAsyncCommand(ac, NULL, NULL, "ASKING") != REDIS_OK)
        return -1;
    if (redisAsyncFormattedCommand(ac, creq_on_reply, q, q->cmd, (size_t)q->len) != REDIS_OK)
        return -1;
    q->node = idx;
    return 0;
}

/* A MOVED or ASK answer: sent again to the node named, unless the bound is
 * reached, that node serves no slot in the current map, or it is not
 * connected (then the error is the answer, and the map is re-read).
 * Returns 0 when sent again. */
static int creq_redirect(struct creq *q, const redisReply *r)
{
    rcluster *cl = q->cl;
    rcluster_redirect rd;

    if (cl->closing || q->redirects >= RCLUSTER_REDIRECTS_MAX ||
        rcluster_parse_redirect(r->str, r->len, &rd) < 0)
        return -1;
    q->redirects++;
    int idx = node_get(cl, rd.host, rd.port);
    if (idx < 0 || cl->node[idx]->nslots == 0) {
        /* Not a master in our map: maybe a replica promoted by a failover
         * we have not seen yet, whose data may lack acknowledged writes.
         * The owner learns of it from the next map (on_master_replaced). */
        rcluster_refresh(cl);
        return -1;
    }
    if (rd.ask) {
        metrics_inc(M_CLUSTER_ASK);
    } else {
        metrics_inc(M_CLUSTER_MOVED);
        cl->slot_node[rd.slot] = (uint8_t)idx; /* now, not after the refresh */
        rcluster_refresh(cl);
    }
    return creq_send(q, idx, rd.ask);
}

static void creq_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct creq *q = privdata;
    const redisReply *r = reply;
    (void)ac;

    if (r != NULL) {
        rconn_replied(q->cl->node[q->node]->conn, true);
        if (r->type == REDIS_REPLY_ERROR && creq_redirect(q, r) == 0)
            return;
        if (r->type == REDIS_REPLY_ERROR &&
            (strncmp(r->str, "CLUSTERDOWN", 11) == 0 || strncmp(r->str, "MOVED", 5) == 0))
            rcluster_refresh(q->cl);
    } else {
        rcluster_refresh(q->cl);
    }
    q->cb(q->arg, r);
    redisFreeCommand(q->cmd);
    free(q);
}

int rcluster_command(rcluster *cl, int slot, int argc, const char **argv, const size_t *lens,
                     rcluster_reply_cb *cb, void *arg)
{
    if (!rcluster_slot_up(cl, slot))
        return -1;
    struct creq *q = xcalloc(1, sizeof(*q));
    q->cl = cl;
    q->cb = cb;
    q->arg = arg;
    q->len = redisFormatCommandArgv(&q->cmd, argc, argv, lens);
    if (q->len < 0 || creq_send(q, cl->slot_node[slot], false) < 0) {
        if (q->len >= 0)
            redisFreeCommand(q->cmd);
        free(q);
        return -1;
    }
    return 0;
}

bool rcluster_slot_up(const rcluster *cl, int slot)
{
    if (cl->closing || !cl->mapped || slot < 0 || slot >= RCLUSTER_SLOTS ||
        cl->slot_node[slot] == NO_NODE)
        return false;
    return rconn_is_up(cl->node[cl->slot_node[slot]]->conn);
}

bool rcluster_all_up(const rcluster *cl)
{
    if (cl->closing || !cl->mapped || cl->covered != RCLUSTER_SLOTS)
        return false;
    for (int i = 0; i < cl->nnodes; i++) {
        if (cl->node[i]->nslots > 0 && !rconn_is_up(cl->node[i]->conn))
            return false;
    }
    return true;
}

int rcluster_node_addr(const rcluster *cl, unsigned n, const char **host, int *port)
{
    if (cl->nnodes == 0)
        return -1;
    const struct rc_node *nd = cl->node[n % (unsigned)cl->nnodes];
    *host = nd->host;
    *port = nd->port;
    return 0;
}

rcluster *rcluster_new(struct event_base *base, const char *const *hosts, const int *ports, int n,
                       int timeout_ms, const rcluster_hooks *hooks, void *arg)
{
    rcluster *cl = xcalloc(1, sizeof(*cl));
    cl->base = base;
    cl->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    cl->hooks = *hooks;
    cl->arg = arg;
    memset(cl->slot_node, NO_NODE, sizeof(cl->slot_node));
    cl->refresh = evtimer_new(base, on_refresh, cl);
    cl->refresh_deadline = evtimer_new(base, on_refresh_deadline, cl);
    if (!cl->refresh || !cl->refresh_deadline) {
        log_error("rcluster: out of memory creating a timer");
        abort();
    }
    for (int i = 0; i < n; i++)
        node_get(cl, hosts[i], ports[i]);
    return cl;
}

void rcluster_free(rcluster *cl)
{
    if (!cl)
        return;
    cl->closing = true;
    /* Each rconn_free answers its pending commands (cb(NULL)), which only
     * free their creq now that closing is set. */
    for (int i = 0; i < cl->nnodes; i++)
        rconn_free(cl->node[i]->conn);
    for (int i = 0; i < cl->nnodes; i++)
        free(cl->node[i]);
    event_free(cl->refresh);
    event_free(cl->refresh_deadline);
    free(cl);
}
