/* rcache: owns the commands quotecache sends to Redis: every command in
 * flight (an "op", the privdata hiredis holds, with its own deadline),
 * the SHA1s of our Lua scripts as loaded on the current command connection,
 * the ready checks of both connections (the generation check on the command
 * one), the generation guard's memory (highest global generation seen,
 * bumps owed) and the table of subscriptions. The two connections
 * themselves (connect, backoff, hung detection) are rconn's. Nothing here
 * outlives rcache_free.
 *
 * In cluster mode (rcache_new_cluster) the commands go through rcluster
 * (one connection per master, redirections) instead of the one command
 * connection, and this file also owns the mirror of the dimensions hash
 * (its reads, its repair after a regression or a failover) and moves the
 * subscriber between nodes. What a command touches stays in one slot.
 *
 * hiredis 0.14.1 behaviour this file is built on (async.c at v0.14.1):
 * - when a context dies every pending reply callback runs with a NULL reply;
 * - rcache_free must not be called from any callback this module runs on
 *   hiredis' behalf (a reply, a message, state_cb): it aborts with a
 *   message if it is. From a deadline (RCACHE_ERR after a timeout) or any
 *   other libevent callback it is fine;
 * - no command timeouts: each op carries its own deadline, an event inside
 *   the op on libevent's common timeout of --redis-timeout (every op has
 *   the same timeout, so libevent keeps them in one FIFO queue, one timer
 *   for all, instead of a heap entry each). */
#include "quotecache/rcache.h"

#include "quotecache/gencount.h"
#include "quotecache/genmirror.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"
#include "quotecache/rcluster.h"
#include "quotecache/rconn.h"
#include "quotecache/resp.h"

#include <event2/event.h>
#include <event2/event_struct.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHA_HEX_LEN 40
#define RUN_ID_MAX 64
/* Ops held by hiredis, timed-out ones included. A Redis that hangs without
 * closing the socket never answers them: past this many, submits are refused
 * (callers fall back to the origin) instead of growing memory without end. */
#define MAX_INFLIGHT 10000
/* Cluster mode: the keys a read fetches from the entry's slot (the product
 * and product-in-region counters, the entry); the rest comes from the
 * mirror of the dimension counters, read every MIRROR_TICK_MS, and too old
 * to vouch for anything past MIRROR_MAX_AGE_MS (the invalidation bound). */
#define CL_READ_KEYS 3
#define MIRROR_TICK_MS 250
#define MIRROR_MAX_AGE_MS 1000
#define SUB_MOVE_TICKS 4 /* subscriber down this many ticks: try another node */

struct rc_sub {
    struct rc_sub *next;
    rcache *rc;
    char *channel;
    rcache_message_cb *cb;
    void *arg;
};

enum rc_script { SCRIPT_STORE, SCRIPT_UNLOCK, SCRIPT_GUARD, SCRIPT_COUNT };

struct rcache {
    struct event_base *base;
    char *host;
    int port;
    const struct timeval *cmd_timeout; /* libevent's common timeout */
    rcache_state_cb *state_cb;
    void *state_arg;
    rconn *cmd;
    rconn *sub;
    struct rc_sub *subs;
    /* "" until SCRIPT LOAD answers on the current command connection; EVAL is
     * used meanwhile, so no command ever depends on that answer. */
    char sha[SCRIPT_COUNT][SHA_HEX_LEN + 1];
    int hiredis_depth; /* > 0 while a callback run by hiredis is on the stack */
    int inflight;      /* ops hiredis holds */
    bool inflight_warned;
    bool closing;
    /* The generation guard (rcache_guard_generations); keys NULL: off. */
    char *marker_key, *global_key;
    uint64_t gen_seen;   /* highest global generation this process has seen */
    uint64_t owed, paid; /* bumps that failed, and how many a global bump covers */
    uint64_t paying;     /* owed as of the global bump in flight, if any */
    bool pay_inflight;
    bool connect_bumped;              /* the generation check of this connection bumped */
    char run_id[RUN_ID_MAX + 1];      /* of the Redis run last checked */
    char next_run_id[RUN_ID_MAX + 1]; /* of the one being checked */
    struct event *pay;                /* pays a debt while up, outside the failing call */
    time_t last_err_log;              /* error lines are rate-limited to one a second */
    unsigned errs_unlogged;

    /* Cluster mode (rcache_new_cluster); cl NULL: single node, cmd above. */
    rcluster *cl;
    int cmd_timeout_ms;
    char *dims_key; /* the hash of the counters without a hash tag */
    int dims_slot;
    genmirror *mirror; /* its fields, as last read (monotonic) */
    bool mirror_ok;    /* read within MIRROR_MAX_AGE_MS */
    int64_t mirror_at_ms;
    bool mirror_inflight, mirror_again;
    bool repair_inflight, repair_owed; /* the global bump after a regression */
    bool cl_up;                        /* last state told to state_cb */
    struct event *tick;                /* MIRROR_TICK_MS */
    struct event *sub_move;            /* the subscriber to another node */
    unsigned sub_node;
    int sub_down_ticks;
};

enum op_kind {
    OP_READ,  /* MGET gen_global <the scope counters> entry -> rcache_value */
    OP_INT,   /* integer reply -> result */
    OP_LOCK,  /* +OK -> 1, nil -> 0 */
    OP_CHECK, /* the check script's array -> rcache_lock_value (rcache_check) */
};

struct rc_op {
    rcache *rc;
    enum op_kind kind;
    const char *what; /* command, for logs */
    char key[64];     /* first key, truncated, for logs */
    rcache_read_cb *read_cb;
    rcache_done_cb *done_cb; /* may be NULL: nobody to tell */
    rcache_lock_cb *lock_cb; /* OP_CHECK */
    void *arg;
    struct event deadline; /* on rc->cmd_timeout, added when sent */
    bool done;             /* the caller has had its answer; only freeing is left */
    bool bump;             /* a generation bump: if Redis may not have applied it, owe one */
    bool is_gg;            /* the bump is of the global generation: its answer is seen */
    bool dim_bump;         /* cluster: a bump of a dimension: the mirror is read again */
    int64_t sent_us;       /* loop time when sent, for the command-latency histogram */
    int slot;              /* cluster: where it goes (its first key's) */
    uint64_t m_global;     /* cluster, reads: the mirror's global generation when sent */
    uint64_t m_dims;       /* and its sum of the quote's dimension counters */
};

/* The loop's cached time: no clock read per command. */
static int64_t loop_us(rcache *rc)
{
    struct timeval tv;
    event_base_gettimeofday_cached(rc->base, &tv);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

/* The global generation key, and the currency, tier and region promotion
 * counters, live in other hash slots than the entry and the product ones.
 * That is fine on the single-node Redis we support; Redis Cluster would
 * refuse the script (CROSSSLOT). A missing counter reads as 0, as in
 * rcache_read; the scope counters (KEYS[3..]) are compared by their sum
 * (scope.h), exact in a Lua number below 2^53. */
static const char store_lua[] = "local g = redis.call('GET', KEYS[2]) or '0'\n"
                                "local p = 0\n"
                                "for i = 3, #KEYS do\n"
                                "  p = p + tonumber(redis.call('GET', KEYS[i]) or '0')\n"
                                "end\n"
                                "if g ~= ARGV[2] or p ~= tonumber(ARGV[3]) then return 0 end\n"
                                "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])\n"
                                "redis.call('PUBLISH', ARGV[5], KEYS[1])\n"
                                "return 1\n";

/* Cluster mode's store: KEYS are the entry and its slot-local counters
 * (product, product in region); ARGV[2] what they must sum to, which the
 * caller derived from the load's sum and the mirror (rcache_store). A
 * stored entry's counters are made to exist (0 reads as absent does): a
 * slot being migrated answers a multi-key read with TRYAGAIN unless all its
 * keys are on one side, so an entry migrated with its counters keeps
 * hitting (through ASK) during a resharding. */
static const char store_cl_lua[] = "local p = 0\n"
                                   "for i = 2, #KEYS do\n"
                                   "  p = p + tonumber(redis.call('GET', KEYS[i]) or '0')\n"
                                   "end\n"
                                   "if p ~= tonumber(ARGV[2]) then return 0 end\n"
                                   "for i = 2, #KEYS do redis.call('SET', KEYS[i], '0', 'NX') end\n"
                                   "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])\n"
                                   "redis.call('PUBLISH', ARGV[4], KEYS[1])\n"
                                   "return 1\n";

static const char unlock_lua[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                 "  return redis.call('DEL', KEYS[1])\n"
                                 "else\n"
                                 "  return 0\n"
                                 "end\n";

/* The generation check, run once on every command connection before any
 * other command. Redis has lost data when it restarted (a new run_id: maybe
 * from a snapshot older than what we saw, or empty), or when the marker is
 * gone (FLUSHALL): then the first client of this Redis run bumps the global
 * generation past anything it has seen. Counters restored from an older
 * snapshot may be lower than values some process recorded for a load in
 * flight, so every client makes sure the global generation is above what
 * it has seen (ARGV[2]) before its first read or store, and a client that
 * owes a bump (ARGV[3]: a change it could not apply) bumps once. A client
 * that saw another Redis run before (ARGV[4]) cannot trust a counter equal
 * to what it saw either: it may be the first client's bump of a restored,
 * lower counter.
 * KEYS: marker, global generation. ARGV: run_id, seen, owes, restarted.
 * Returns {new global generation, 1 if it moved}. */
static const char guard_lua[] =
    "local g = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "if not g then return redis.error_reply('global generation is not a number') end\n"
    "local seen = tonumber(ARGV[2])\n"
    "local t = g\n"
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then\n"
    "  redis.call('SET', KEYS[1], ARGV[1])\n"
    "  t = math.max(g, seen) + 1\n"
    "elseif ARGV[3] == '1' then\n"
    "  t = math.max(g, seen) + 1\n"
    "elseif g < seen or (ARGV[4] == '1' and g == seen) then\n"
    "  t = seen + 1\n"
    "end\n"
    "if t ~= g then redis.call('SET', KEYS[2], string.format('%d', t)) end\n"
    "return {string.format('%d', t), t ~= g and 1 or 0}\n";

static const char *const script_src[SCRIPT_COUNT] = {
    [SCRIPT_STORE] = store_lua,
    [SCRIPT_UNLOCK] = unlock_lua,
    [SCRIPT_GUARD] = guard_lua,
};

/* The subscriber's ready check and heartbeat: hiredis 0.14 drops the answer
 * of a PING in pub/sub mode, but answers a SUBSCRIBE; nobody publishes on
 * this channel. */
static const char *const sub_probe[] = {"SUBSCRIBE", "quotecache:heartbeat"};
static const char *const cmd_probe[] = {"PING"};

static void owe(rcache *rc);
static void owed_pay(rcache *rc);
static void saw_generation(rcache *rc, uint64_t gen_global);
static void mirror_read(rcache *rc);

/* ---- small helpers ---- */

static struct timeval ms_to_tv(int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

static void arg_lens(const char *const *argv, size_t *lens, int argc)
{
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
}

/* A hung or flapping Redis fails every request: log one line a second, not
 * one per request, and count them all in metrics. */
static void log_redis_error(rcache *rc, const char *what, const char *key, const char *why)
{
    struct timeval now;
    event_base_gettimeofday_cached(rc->base, &now);
    if (now.tv_sec == rc->last_err_log) {
        rc->errs_unlogged++;
        log_debug("redis %s %s: %s", what, key, why);
        return;
    }
    log_warn("redis %s %s: %s (%u more errors not logged)", what, key, why, rc->errs_unlogged);
    rc->last_err_log = now.tv_sec;
    rc->errs_unlogged = 0;
}

/* Absent counters read as 0; anything but an unsigned decimal is an error,
 * so a corrupted counter can never fence-pass by accident. */
static int parse_gen(const redisReply *r, uint64_t *out)
{
    if (r->type == REDIS_REPLY_NIL) {
        *out = 0;
        return 0;
    }
    return r->type == REDIS_REPLY_STRING ? gencount_parse(r->str, r->len, out) : -1;
}

/* ---- scripts ---- */

static void script_on_load(redisAsyncContext *ac, void *reply, void *privdata)
{
    const redisReply *r = reply;
    char *sha = privdata; /* one of rc->sha[], alive as long as ac is */
    (void)ac;
    if (r && r->type == REDIS_REPLY_STRING && r->len == SHA_HEX_LEN)
        memcpy(sha, r->str, SHA_HEX_LEN + 1);
}

/* Loads both scripts on the command connection. Until the answers arrive
 * the callers use EVAL, which needs no state. */
static void scripts_load(rcache *rc)
{
    for (int i = 0; i < SCRIPT_COUNT; i++) {
        const char *argv[] = {"SCRIPT", "LOAD", script_src[i]};
        size_t lens[3];
        rc->sha[i][0] = '\0';
        arg_lens(argv, lens, 3);
        redisAsyncCommandArgv(rconn_context(rc->cmd), script_on_load, rc->sha[i], 3, argv, lens);
    }
}

/* Fills the first two words of a script call: EVALSHA sha, or EVAL source. */
static void script_head(const rcache *rc, enum rc_script s, const char **argv)
{
    if (rc->sha[s][0]) {
        argv[0] = "EVALSHA";
        argv[1] = rc->sha[s];
    } else {
        argv[0] = "EVAL";
        argv[1] = script_src[s];
    }
}

/* ---- ops: one command in flight ---- */

static void op_on_deadline(evutil_socket_t fd, short what, void *arg);

static struct rc_op *op_new(rcache *rc, enum op_kind kind, const char *what, const char *key)
{
    struct rc_op *op = xcalloc(1, sizeof(*op));
    op->rc = rc;
    op->kind = kind;
    op->what = what;
    size_t n = strnlen(key, sizeof(op->key) - 1);
    memcpy(op->key, key, n); /* truncated: for logs */
    op->slot = rc->cl ? rcluster_keyslot(key, strlen(key)) : 0;
    evtimer_assign(&op->deadline, rc->base, op_on_deadline, op);
    return op;
}

static void op_free(struct rc_op *op)
{
    event_del(&op->deadline);
    free(op);
}

/* Answers RCACHE_ERR. The op is marked done first: the caller may submit
 * more, or (from a deadline only) even rcache_free, which frees this op. */
static void op_fail(struct rc_op *op, const char *why)
{
    rcache *rc = op->rc;

    op->done = true;
    if (!rc->closing) {
        metrics_inc(M_REDIS_ERRORS);
        log_redis_error(rc, op->what, op->key, why);
    }
    if (op->kind == OP_READ)
        op->read_cb(op->arg, RCACHE_ERR, NULL);
    else if (op->kind == OP_CHECK)
        op->lock_cb(op->arg, RCACHE_ERR, NULL);
    else if (op->done_cb)
        op->done_cb(op->arg, RCACHE_ERR, 0);
}

static void op_succeed(struct rc_op *op, long long result)
{
    op->done = true;
    if (op->done_cb)
        op->done_cb(op->arg, RCACHE_OK, result);
}

/* el[0]: the global counter, el[1..SCOPE_KINDS]: the scope counters, whose
 * sum is what a hit compares (scope.h). */
static int parse_gens(redisReply *const *el, rcache_value *v)
{
    uint64_t g;
    if (parse_gen(el[0], &v->gen_global) < 0)
        return -1;
    v->gen_product = 0;
    for (int i = 1; i <= SCOPE_KINDS; i++) {
        if (parse_gen(el[i], &g) < 0)
            return -1;
        v->gen_product += g;
    }
    return 0;
}

/* The keys a read fetches: all of rcache_value's on one node; in cluster
 * mode the slot-local ones only (the rest is the mirror's). */
static size_t read_keys(const rcache *rc)
{
    return rc->cl ? CL_READ_KEYS : RCACHE_READ_KEYS;
}

/* The counters and the entry of a read's first read_keys() elements. In
 * cluster mode el holds the product and product-in-region counters and the
 * entry; the global generation and the dimensions are the mirror's, as the
 * op took them when sent. A sum of counters that only grow equals the sum
 * a load recorded only when none of them moved. Returns 0, or a reason. */
static const char *parse_read(const struct rc_op *op, redisReply *const *el, rcache_value *v)
{
    size_t n = read_keys(op->rc);
    const redisReply *entry = el[n - 1];

    if (op->rc->cl) {
        uint64_t p, pr;
        if (parse_gen(el[0], &p) < 0 || parse_gen(el[1], &pr) < 0)
            return "generation counter is not an unsigned integer";
        v->gen_global = op->m_global;
        v->gen_product = p + pr + op->m_dims;
    } else if (parse_gens(el, v) < 0) {
        return "generation counter is not an unsigned integer";
    }
    if (entry->type == REDIS_REPLY_STRING) {
        v->entry = entry->str;
        v->entry_len = entry->len;
    } else if (entry->type != REDIS_REPLY_NIL) {
        return "entry is not a string";
    }
    return NULL;
}

static void op_answer_read(struct rc_op *op, const redisReply *r)
{
    rcache_value v = {0};
    const char *why;

    if (r->type != REDIS_REPLY_ARRAY || r->elements != read_keys(op->rc)) {
        op_fail(op, "unexpected reply shape");
        return;
    }
    if ((why = parse_read(op, r->element, &v)) != NULL) {
        op_fail(op, why);
        return;
    }
    saw_generation(op->rc, v.gen_global);
    op->done = true;
    op->read_cb(op->arg, RCACHE_OK, &v);
}

static void op_answer_check(struct rc_op *op, const redisReply *r);

static void op_answer(struct rc_op *op, const redisReply *r)
{
    if (!r) {
        op_fail(op, "connection lost");
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        /* Only after SCRIPT FLUSH: reload, and EVAL until that answers. The
         * command itself is not retried: its caller sees an error. */
        if (strncmp(r->str, "NOSCRIPT", 8) == 0 && op->rc->cmd && rconn_is_up(op->rc->cmd))
            scripts_load(op->rc);
        op_fail(op, r->str);
        return;
    }
    switch (op->kind) {
    case OP_READ:
        op_answer_read(op, r);
        return;
    case OP_INT:
        if (r->type == REDIS_REPLY_INTEGER)
            op_succeed(op, r->integer);
        else
            op_fail(op, "expected an integer reply");
        return;
    case OP_CHECK:
        op_answer_check(op, r);
        return;
    case OP_LOCK:
        if (r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0)
            op_succeed(op, 1);
        else if (r->type == REDIS_REPLY_NIL)
            op_succeed(op, 0);
        else
            op_fail(op, "expected OK or nil");
        return;
    }
}

/* hiredis' reply callback: the reply, the late reply after a deadline, or
 * NULL when the context dies. The op is ours to free in every case. */
static void op_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct rc_op *op = privdata;
    rcache *rc = op->rc;
    const redisReply *r = reply;
    (void)ac;

    rc->inflight--;
    if (r && rc->cmd)
        rconn_replied(rc->cmd, !op->done);
    if (r)
        metrics_observe_us(H_REDIS_COMMAND, 0, loop_us(rc) - op->sent_us);
    if (r && op->is_gg && rc->cl && r->type == REDIS_REPLY_INTEGER)
        genmirror_raise(rc->mirror, rc->global_key, (uint64_t)r->integer);
    if (r && op->dim_bump && !rc->closing)
        mirror_read(rc); /* this worker sees its own invalidation at once */
    if (r && r->type == REDIS_REPLY_INTEGER && op->is_gg)
        saw_generation(rc, (uint64_t)r->integer);
    else if (op->bump && (!r || r->type != REDIS_REPLY_INTEGER))
        owe(rc); /* lost with the connection, or refused: maybe never applied */
    if (!op->done) {
        event_del(&op->deadline);
        rc->hiredis_depth++;
        op_answer(op, reply);
        rc->hiredis_depth--;
    }
    op_free(op);
}

/* hiredis still holds the op: the late reply, or the NULL reply when the
 * context dies, frees it. The op must not be touched after op_fail. */
static void op_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct rc_op *op = arg;
    (void)fd;
    (void)what;
    /* Before op_fail: from there the caller may even free rc. */
    if (op->rc->cmd)
        rconn_timed_out(op->rc->cmd);
    op_fail(op, "timed out");
}

/* Sends the command formatted by resp_format (hiredis copies it into its
 * output buffer): hiredis's own formatting cost ~8k instructions a command. */
static int send_formatted(redisAsyncContext *ac, struct rc_op *op, int argc, const char **argv,
                          const size_t *lens)
{
    char stack[2048];
    char *cmd = stack;
    size_t len = resp_format(stack, sizeof(stack), argc, argv, lens);
    if (len > sizeof(stack)) {
        cmd = xmalloc(len);
        resp_format(cmd, len, argc, argv, lens);
    }
    int r = redisAsyncFormattedCommand(ac, op_on_reply, op, cmd, len);
    if (cmd != stack)
        free(cmd);
    return r;
}

static void op_on_cluster_reply(void *arg, const redisReply *r)
{
    op_on_reply(NULL, (void *)r, arg);
}

/* Sends the command; the op then belongs to hiredis until op_on_reply. On
 * failure nothing was sent, the op is freed and the callback never runs. */
static int op_send(struct rc_op *op, int argc, const char **argv, const size_t *lens)
{
    rcache *rc = op->rc;
    redisAsyncContext *ac = rc->cl ? NULL : rconn_context(rc->cmd);
    bool sent =
        rc->cl ? rcluster_command(rc->cl, op->slot, argc, argv, lens, op_on_cluster_reply, op) == 0
               : ac && send_formatted(ac, op, argc, argv, lens) == REDIS_OK;

    if (!sent) {
        /* hiredis refuses while its context is dying, which is also when a
         * caller answered with a NULL reply may be submitting again. */
        op_free(op);
        return -1;
    }
    rc->inflight++;
    op->sent_us = loop_us(rc);
    event_add(&op->deadline, rc->cmd_timeout);
    return 0;
}

static int op_submit(struct rc_op *op, int argc, const char **argv, const size_t *lens)
{
    rcache *rc = op->rc;

    /* A debt goes first on the wire: Redis runs it before this command. */
    owed_pay(rc);
    if (rc->inflight >= MAX_INFLIGHT) {
        metrics_inc(M_REDIS_ERRORS);
        if (!rc->inflight_warned)
            log_warn("redis: %d commands in flight, refusing more", rc->inflight);
        rc->inflight_warned = true;
        op_free(op);
        return -1;
    }
    return op_send(op, argc, argv, lens);
}

/* ---- the generation guard ---- */

static void on_paid(void *arg, int status, long long result)
{
    rcache *rc = arg;
    (void)result; /* seen by op_on_reply */
    rc->pay_inflight = false;
    if (status == RCACHE_OK && rc->paying > rc->paid)
        rc->paid = rc->paying;
}

/* While up, one INCR of the global generation covers every bump that
 * failed so far. Not bound by MAX_INFLIGHT: a debt is one command, and
 * refusing it would leave an invalidation unapplied. */
static void owed_pay(rcache *rc)
{
    const char *argv[4];
    size_t lens[4];
    int argc = 2;
    struct rc_op *op;

    if (!rc->global_key || rc->owed == rc->paid || rc->pay_inflight)
        return;
    if (rc->cl ? !rcluster_slot_up(rc->cl, rc->dims_slot) : !rcache_is_up(rc))
        return;
    argv[0] = "INCR";
    argv[1] = rc->global_key;
    if (rc->cl) {
        argv[0] = "HINCRBY";
        argv[1] = rc->dims_key;
        argv[2] = rc->global_key;
        argv[3] = "1";
        argc = 4;
    }
    arg_lens(argv, lens, argc);
    op = op_new(rc, OP_INT, argv[0], rc->global_key);
    if (rc->cl)
        op->slot = rc->dims_slot;
    op->done_cb = on_paid;
    op->arg = rc;
    op->is_gg = true; /* not a bump: failing, it stays owed (no retry loop) */
    rc->paying = rc->owed;
    rc->pay_inflight = true;
    if (op_send(op, argc, argv, lens) < 0)
        rc->pay_inflight = false;
}

static void on_pay(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    owed_pay(arg);
}

/* A bump that Redis may not have applied: until a global bump covers it,
 * another instance could serve what it invalidated. Paid by the generation
 * check of the next connection, or at once if this one is up. */
static void owe(rcache *rc)
{
    if (rc->closing || !rc->global_key)
        return;
    rc->owed++;
    if (rcache_is_up(rc))
        event_active(rc->pay, EV_TIMEOUT, 1);
}

static void guard_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    const redisReply *r = reply;
    rcache *rc = privdata;
    uint64_t g;

    if (!r || ac != rconn_context(rc->cmd))
        return;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || parse_gen(r->element[0], &g) < 0 ||
        r->element[1]->type != REDIS_REPLY_INTEGER) {
        rconn_fail(rc->cmd, r->type == REDIS_REPLY_ERROR ? r->str : "bad generation check reply");
        return;
    }
    saw_generation(rc, g);
    memcpy(rc->run_id, rc->next_run_id, sizeof(rc->run_id));
    if (rc->paying > rc->paid)
        rc->paid = rc->paying;
    rc->connect_bumped = r->element[1]->integer == 1;
    if (rc->connect_bumped)
        log_info("redis: global generation moved to %" PRIu64 " (Redis lost data, or changes "
                 "were missed while it was away)",
                 g);
    rconn_ready(rc->cmd);
}

/* The run_id line of INFO server into out ("" when there is none). */
static void parse_run_id(const redisReply *r, char out[RUN_ID_MAX + 1])
{
    const char *p = r->type == REDIS_REPLY_STRING ? strstr(r->str, "run_id:") : NULL;
    size_t n = 0;

    out[0] = '\0';
    if (!p)
        return;
    p += strlen("run_id:");
    while (n < RUN_ID_MAX && p[n] && p[n] != '\r' && p[n] != '\n')
        n++;
    memcpy(out, p, n);
    out[n] = '\0';
}

/* INFO's run_id tells this Redis run from the one before a restart. It may
 * be renamed away: then only a lost marker tells a restart. Whether the
 * connection is usable at all (not NOAUTH, not LOADING) is the check's to
 * say: it fails as well then. */
static void guard_on_info(redisAsyncContext *ac, void *reply, void *privdata)
{
    const redisReply *r = reply;
    rcache *rc = privdata;
    char *run_id = rc->next_run_id, seen[24];
    const char *argv[9];
    size_t lens[9];

    if (!r || ac != rconn_context(rc->cmd))
        return;
    parse_run_id(r, run_id);
    if (!run_id[0])
        log_redis_error(rc, "INFO", "server",
                        r->type == REDIS_REPLY_ERROR
                            ? r->str
                            : "no run_id: restarts are told by the marker only");
    snprintf(seen, sizeof(seen), "%" PRIu64, rc->gen_seen);
    rc->paying = rc->owed;
    argv[0] = "EVAL";
    argv[1] = guard_lua;
    argv[2] = "2";
    argv[3] = rc->marker_key;
    argv[4] = rc->global_key;
    argv[5] = run_id;
    argv[6] = seen;
    argv[7] = rc->owed > rc->paid ? "1" : "0";
    argv[8] = rc->run_id[0] && strcmp(rc->run_id, run_id) != 0 ? "1" : "0";
    arg_lens(argv, lens, 9);
    if (redisAsyncCommandArgv(ac, guard_on_reply, rc, 9, argv, lens) != REDIS_OK)
        rconn_fail(rc->cmd, "generation check refused");
}

/* ---- connections: the ready checks ---- */

static void cmd_on_connected(void *arg, rconn *c)
{
    rcache *rc = arg;
    const char *argv[] = {"INFO", "server"};

    scripts_load(rc);
    rc->connect_bumped = false;
    if (!rc->global_key) {
        rconn_probe(c);
        return;
    }
    if (redisAsyncCommandArgv(rconn_context(c), guard_on_info, rc, 2, argv, NULL) != REDIS_OK)
        rconn_fail(c, "INFO refused");
}

static void cmd_on_up(void *arg, rconn *c)
{
    rcache *rc = arg;
    (void)c;

    rc->inflight_warned = false;
    if (rc->state_cb) {
        rc->hiredis_depth++;
        rc->state_cb(rc->state_arg, true);
        rc->hiredis_depth--;
    }
    owed_pay(rc); /* a bump that failed during the check */
}

static void cmd_on_down(void *arg, rconn *c, bool was_up)
{
    rcache *rc = arg;
    (void)c;

    if (rc->closing || !was_up || !rc->state_cb)
        return;
    rc->hiredis_depth++;
    rc->state_cb(rc->state_arg, false);
    rc->hiredis_depth--;
}

/* ---- subscriptions ---- */

/* The NULL replies of a dying context carry no message and are dropped;
 * a subscribe confirmation is passed on as a NULL message. */
static void sub_on_message(redisAsyncContext *ac, void *reply, void *privdata)
{
    const redisReply *r = reply;
    struct rc_sub *s = privdata;
    const redisReply *kind, *payload;
    (void)ac;

    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3)
        return;
    kind = r->element[0];
    payload = r->element[2];
    if (kind->type != REDIS_REPLY_STRING)
        return;
    /* A (re)subscription: the subscriber tells its user that messages may
     * have been missed while it was down. */
    bool subscribed = strcmp(kind->str, "subscribe") == 0;
    if (!subscribed && (strcmp(kind->str, "message") != 0 || payload->type != REDIS_REPLY_STRING))
        return;
    s->rc->hiredis_depth++;
    s->cb(s->arg, subscribed ? NULL : payload->str, subscribed ? 0 : payload->len);
    s->rc->hiredis_depth--;
}

static void sub_send(struct rc_sub *s)
{
    const char *argv[] = {"SUBSCRIBE", s->channel};
    size_t lens[2];
    redisAsyncContext *ac = rconn_context(s->rc->sub);

    arg_lens(argv, lens, 2);
    /* Refused only while the context dies; the reconnect re-subscribes. */
    if (redisAsyncCommandArgv(ac, sub_on_message, s, 2, argv, lens) != REDIS_OK)
        log_warn("redis SUBSCRIBE %s refused; will retry on reconnect", s->channel);
}

/* Subscribes again on every connection; the probe after the SUBSCRIBEs
 * answers once they have been. */
static void sub_on_connected(void *arg, rconn *c)
{
    rcache *rc = arg;

    for (struct rc_sub *s = rc->subs; s; s = s->next)
        sub_send(s);
    rconn_probe(c);
}

static const rconn_hooks cmd_hooks = {cmd_on_connected, cmd_on_up, cmd_on_down};
static const rconn_hooks sub_hooks = {sub_on_connected, NULL, NULL};

/* ---- cluster mode: the mirror of the dimension counters ---- */

static int64_t now_ms(rcache *rc)
{
    return loop_us(rc) / 1000;
}

/* What rcache_is_up answers in cluster mode, told to state_cb when it
 * changes: every slot's master connected, a fresh mirror, no repair owed. */
static bool cluster_usable(const rcache *rc)
{
    return rcluster_all_up(rc->cl) && rc->mirror_ok && !rc->repair_inflight && !rc->repair_owed;
}

static void state_check(rcache *rc)
{
    bool up = !rc->closing && cluster_usable(rc);
    if (up == rc->cl_up)
        return;
    rc->cl_up = up;
    log_info("redis cluster: %s", up ? "usable" : "not usable (a master or the mirror is away)");
    if (up)
        rc->inflight_warned = false;
    if (rc->state_cb) {
        rc->hiredis_depth++;
        rc->state_cb(rc->state_arg, up);
        rc->hiredis_depth--;
    }
    if (up)
        owed_pay(rc);
}

static void repair(rcache *rc);

/* HGETALL of the dimensions hash: field, value, field, value... */
static void mirror_on_reply(void *arg, const redisReply *r)
{
    rcache *rc = arg;
    bool regressed = false;

    if (rc->closing)
        return;
    rc->mirror_inflight = false;
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements % 2 == 0) {
        genmirror_begin(rc->mirror);
        for (size_t i = 0; i < r->elements; i += 2) {
            const redisReply *f = r->element[i], *v = r->element[i + 1];
            uint64_t g;
            if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
                gencount_parse(v->str, v->len, &g) < 0) {
                log_redis_error(rc, "HGETALL", rc->dims_key, "a field is not a counter");
                continue;
            }
            regressed |= genmirror_observe(rc->mirror, f->str, f->len, g);
        }
        regressed |= genmirror_end(rc->mirror);
        rc->mirror_ok = true;
        rc->mirror_at_ms = now_ms(rc);
        if (rc->global_key)
            saw_generation(rc, genmirror_get(rc->mirror, rc->global_key));
        if (regressed) {
            log_warn("redis cluster: a dimension counter went backwards (lost writes)");
            repair(rc);
        }
    } else if (r != NULL) {
        log_redis_error(rc, "HGETALL", rc->dims_key,
                        r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply shape");
    }
    state_check(rc);
    if (rc->mirror_again) {
        rc->mirror_again = false;
        mirror_read(rc);
    }
}

/* Reads the mirror now, or right after the read in flight answers (which
 * may have been sent before what the caller waits for). */
static void mirror_read(rcache *rc)
{
    const char *argv[] = {"HGETALL", rc->dims_key};

    if (!rc->cl || rc->closing)
        return;
    if (rc->mirror_inflight) {
        rc->mirror_again = true;
        return;
    }
    if (rcluster_command(rc->cl, rc->dims_slot, 2, argv, NULL, mirror_on_reply, rc) == 0)
        rc->mirror_inflight = true;
}

/* After a regression or a replaced master: lifts every dimension counter to
 * the mirror's value at least (so later bumps show again) and the global
 * generation above everything seen: every cached quote is dropped once,
 * since a lost increment may have left a superseded entry looking fresh.
 * KEYS[1] the hash; ARGV[1] the global field, then field, value pairs.
 * Returns the new global generation. */
static const char repair_lua[] =
    "local h = KEYS[1]\n"
    "for i = 2, #ARGV, 2 do\n"
    "  local cur = tonumber(redis.call('HGET', h, ARGV[i]) or '0') or 0\n"
    "  if cur < tonumber(ARGV[i + 1]) then redis.call('HSET', h, ARGV[i], ARGV[i + 1]) end\n"
    "end\n"
    "return redis.call('HINCRBY', h, ARGV[1], 1)\n";

static void repair_on_reply(void *arg, const redisReply *r)
{
    rcache *rc = arg;

    if (rc->closing)
        return;
    rc->repair_inflight = false;
    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        rc->repair_owed = true; /* the next tick tries again */
        return;
    }
    genmirror_raise(rc->mirror, rc->global_key, (uint64_t)r->integer);
    saw_generation(rc, (uint64_t)r->integer);
    log_info("redis cluster: global generation moved to %lld (writes may have been lost)",
             r->integer);
    /* Copies and loads in flight here go too: what worker_redis_state does
     * for a connection whose check bumped. */
    rc->connect_bumped = true;
    if (rc->cl_up && rc->state_cb) {
        rc->hiredis_depth++;
        rc->state_cb(rc->state_arg, true);
        rc->hiredis_depth--;
    }
    mirror_read(rc);
    state_check(rc);
    rc->connect_bumped = false;
}

static void repair(rcache *rc)
{
    size_t n = genmirror_count(rc->mirror);
    size_t argc = 5 + 2 * n;
    const char **argv;
    char(*vals)[24];

    rc->repair_owed = true;
    if (rc->repair_inflight || !rc->global_key || !rcluster_slot_up(rc->cl, rc->dims_slot)) {
        state_check(rc);
        return;
    }
    argv = xcalloc(argc, sizeof(*argv));
    vals = xcalloc(n + 1, sizeof(*vals));
    argv[0] = "EVAL";
    argv[1] = repair_lua;
    argv[2] = "1";
    argv[3] = rc->dims_key;
    argv[4] = rc->global_key;
    for (size_t i = 0; i < n; i++) {
        uint64_t v;
        genmirror_at(rc->mirror, i, &argv[5 + 2 * i], &v);
        snprintf(vals[i], sizeof(vals[i]), "%" PRIu64, v);
        argv[6 + 2 * i] = vals[i];
    }
    if (rcluster_command(rc->cl, rc->dims_slot, (int)argc, argv, NULL, repair_on_reply, rc) == 0) {
        rc->repair_inflight = true;
        rc->repair_owed = false;
    }
    free(argv);
    free(vals);
    state_check(rc);
}

/* The subscriber follows the cluster: classic PUBLISH reaches every node,
 * so any one will do; when it stays down, the next known node. */
static void on_sub_move(evutil_socket_t fd, short what, void *arg);

static void cl_on_tick(evutil_socket_t fd, short what, void *arg)
{
    rcache *rc = arg;
    (void)fd;
    (void)what;

    if (rc->mirror_ok && now_ms(rc) - rc->mirror_at_ms > MIRROR_MAX_AGE_MS) {
        log_warn("redis cluster: the mirror of the dimension counters is %lld ms old",
                 (long long)(now_ms(rc) - rc->mirror_at_ms));
        rc->mirror_ok = false;
    }
    if (rc->repair_owed)
        repair(rc);
    mirror_read(rc);
    state_check(rc);
    rc->sub_down_ticks = rconn_is_up(rc->sub) ? 0 : rc->sub_down_ticks + 1;
    if (rc->sub_down_ticks >= SUB_MOVE_TICKS) {
        rc->sub_down_ticks = 0;
        event_active(rc->sub_move, EV_TIMEOUT, 1);
    }
    struct timeval tv = ms_to_tv(MIRROR_TICK_MS);
    evtimer_add(rc->tick, &tv);
}

static rconn *sub_connect(rcache *rc)
{
    const char *host = "";
    int port = 0;
    rcluster_node_addr(rc->cl, rc->sub_node, &host, &port);
    /* Not from rc->cmd_timeout: a common timeout's tv_usec holds libevent's
     * own bits. */
    return rconn_new(rc->base, "subscriber", host, port, rc->cmd_timeout_ms, sub_probe, 2,
                     &sub_hooks, rc);
}

static void on_sub_move(evutil_socket_t fd, short what, void *arg)
{
    rcache *rc = arg;
    (void)fd;
    (void)what;
    if (rc->closing || rconn_is_up(rc->sub))
        return;
    rconn_free(rc->sub); /* from an event: outside every hiredis callback */
    rc->sub_node++;
    rc->sub = sub_connect(rc);
}

static void cl_on_change(void *arg)
{
    rcache *rc = arg;
    if (!rc->mirror_ok)
        mirror_read(rc);
    state_check(rc);
}

static void cl_on_master_replaced(void *arg)
{
    repair(arg);
}

static const rcluster_hooks cl_hooks = {cl_on_change, cl_on_master_replaced};

/* ---- public API ---- */

rcache *rcache_new(struct event_base *base, const char *host, int port, int cmd_timeout_ms,
                   rcache_state_cb *state_cb, void *state_arg)
{
    rcache *rc = xcalloc(1, sizeof(*rc));

    rc->base = base;
    rc->host = xstrdup(host);
    rc->port = port;
    struct timeval tv = ms_to_tv(cmd_timeout_ms > 0 ? cmd_timeout_ms : 1);
    rc->cmd_timeout = event_base_init_common_timeout(base, &tv);
    if (rc->cmd_timeout == NULL) {
        log_error("rcache: out of memory creating the command timeout");
        abort();
    }
    rc->state_cb = state_cb;
    rc->state_arg = state_arg;
    rc->pay = event_new(base, -1, 0, on_pay, rc);
    if (!rc->pay) {
        log_error("rcache: out of memory creating an event");
        abort();
    }
    /* Both connects are asynchronous: no callback runs before we return. */
    rc->cmd = rconn_new(base, "command", host, port, cmd_timeout_ms, cmd_probe, 1, &cmd_hooks, rc);
    rc->sub =
        rconn_new(base, "subscriber", host, port, cmd_timeout_ms, sub_probe, 2, &sub_hooks, rc);
    return rc;
}

rcache *rcache_new_cluster(struct event_base *base, const char *const *hosts, const int *ports,
                           int n, const char *dims_key, int cmd_timeout_ms,
                           rcache_state_cb *state_cb, void *state_arg)
{
    rcache *rc = xcalloc(1, sizeof(*rc));

    rc->base = base;
    rc->host = xstrdup(hosts[0]);
    rc->port = ports[0];
    struct timeval tv = ms_to_tv(cmd_timeout_ms > 0 ? cmd_timeout_ms : 1);
    rc->cmd_timeout = event_base_init_common_timeout(base, &tv);
    rc->pay = event_new(base, -1, 0, on_pay, rc);
    rc->tick = evtimer_new(base, cl_on_tick, rc);
    rc->sub_move = event_new(base, -1, 0, on_sub_move, rc);
    if (!rc->cmd_timeout || !rc->pay || !rc->tick || !rc->sub_move) {
        log_error("rcache: out of memory creating an event");
        abort();
    }
    rc->state_cb = state_cb;
    rc->state_arg = state_arg;
    rc->cmd_timeout_ms = cmd_timeout_ms > 0 ? cmd_timeout_ms : 1;
    rc->dims_key = xstrdup(dims_key);
    rc->dims_slot = rcluster_keyslot(dims_key, strlen(dims_key));
    rc->mirror = genmirror_new();
    /* Every connect is asynchronous: no callback runs before we return. */
    rc->cl = rcluster_new(base, hosts, ports, n, cmd_timeout_ms, &cl_hooks, rc);
    rc->sub = sub_connect(rc);
    tv = ms_to_tv(MIRROR_TICK_MS);
    evtimer_add(rc->tick, &tv);
    return rc;
}

void rcache_free(rcache *rc)
{
    if (!rc || rc->closing)
        return;
    if (rc->hiredis_depth > 0) {
        /* hiredis would go on using the context we are about to free. */
        log_error("rcache_free called from inside a Redis callback");
        abort();
    }
    rc->closing = true;
    rconn_free(rc->cmd);
    rcluster_free(rc->cl);
    rconn_free(rc->sub);
    event_free(rc->pay);
    if (rc->cl) {
        event_free(rc->tick);
        event_free(rc->sub_move);
    }
    genmirror_free(rc->mirror);
    free(rc->dims_key);
    free(rc->marker_key);
    free(rc->global_key);
    while (rc->subs) {
        struct rc_sub *s = rc->subs;
        rc->subs = s->next;
        free(s->channel);
        free(s);
    }
    free(rc->host);
    free(rc);
}

bool rcache_is_up(const rcache *rc)
{
    if (rc->cl)
        return !rc->closing && rc->cl_up;
    return !rc->closing && rconn_is_up(rc->cmd);
}

bool rcache_is_cluster(const rcache *rc)
{
    return rc->cl != NULL;
}

bool rcache_subscribed(const rcache *rc)
{
    return !rc->closing && rc->sub != NULL && rconn_is_up(rc->sub);
}

void rcache_guard_generations(rcache *rc, const char *marker_key, const char *gen_global_key)
{
    free(rc->marker_key);
    free(rc->global_key);
    rc->marker_key = xstrdup(marker_key);
    rc->global_key = xstrdup(gen_global_key);
}

bool rcache_connect_bumped(const rcache *rc)
{
    return rc->connect_bumped;
}

/* Every global generation read or bumped: the floor the next generation
 * check lifts the counter above, should Redis come back with lower ones. */
static void saw_generation(rcache *rc, uint64_t gen_global)
{
    if (gen_global > rc->gen_seen)
        rc->gen_seen = gen_global;
}

/* "MGET", the global counter, the scope counters, the entry; in cluster
 * mode "MGET", the product and product-in-region counters, the entry (one
 * slot), with the mirror's share taken into op. Returns the argc. */
static int mget_argv(struct rc_op *op, const char *argv[RCACHE_READ_KEYS + 1],
                     const char *entry_key, const char *gen_global_key, const scope_keys *scopes)
{
    rcache *rc = op->rc;

    argv[0] = "MGET";
    if (rc->cl) {
        argv[1] = scopes->key[SCOPE_PRODUCT];
        argv[2] = scopes->key[SCOPE_PRODUCT_REGION];
        argv[3] = entry_key;
        op->m_global = genmirror_get(rc->mirror, gen_global_key);
        op->m_dims = 0;
        for (int i = SCOPE_CURRENCY; i < SCOPE_KINDS; i++)
            op->m_dims += genmirror_get(rc->mirror, scopes->key[i]);
        return CL_READ_KEYS + 1;
    }
    argv[1] = gen_global_key;
    for (int i = 0; i < SCOPE_KINDS; i++)
        argv[2 + i] = scopes->key[i];
    argv[RCACHE_READ_KEYS] = entry_key;
    return RCACHE_READ_KEYS + 1;
}

int rcache_read(rcache *rc, const char *entry_key, const char *gen_global_key,
                const scope_keys *scopes, rcache_read_cb *cb, void *arg)
{
    const char *argv[RCACHE_READ_KEYS + 1];
    size_t lens[RCACHE_READ_KEYS + 1];
    struct rc_op *op;

    if (!rcache_is_up(rc))
        return -1;
    op = op_new(rc, OP_READ, "MGET", entry_key);
    op->read_cb = cb;
    op->arg = arg;
    int argc = mget_argv(op, argv, entry_key, gen_global_key, scopes);
    arg_lens(argv, lens, argc);
    return op_submit(op, argc, argv, lens);
}

/* The fence in two halves: in process, the mirror must still show the
 * global generation and the dimension counters the load recorded (their
 * share of gen_product); in Redis, the slot-local counters must still sum
 * to the rest. When the mirror moved, the expected sum is one no counter
 * can have ("-1"): refused, with the callback as usual. */
static int store_cluster(rcache *rc, const char *entry_key, const char *gen_global_key,
                         const scope_keys *scopes, uint64_t gen_global, uint64_t gen_product,
                         const char *value, size_t len, int64_t ttl_ms, const char *channel,
                         rcache_done_cb *cb, void *arg)
{
    char local[24] = "-1", ttl[24];
    const char *argv[] = {"EVAL",
                          store_cl_lua,
                          "3",
                          entry_key,
                          scopes->key[SCOPE_PRODUCT],
                          scopes->key[SCOPE_PRODUCT_REGION],
                          value ? value : "",
                          local,
                          ttl,
                          channel};
    size_t lens[10];
    uint64_t dims = 0;
    struct rc_op *op;

    for (int i = SCOPE_CURRENCY; i < SCOPE_KINDS; i++)
        dims += genmirror_get(rc->mirror, scopes->key[i]);
    if (genmirror_get(rc->mirror, gen_global_key) == gen_global && gen_product >= dims)
        snprintf(local, sizeof(local), "%" PRIu64, gen_product - dims);
    snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_ms);
    arg_lens(argv, lens, 10);
    lens[6] = len; /* binary */
    op = op_new(rc, OP_INT, "store", entry_key);
    op->done_cb = cb;
    op->arg = arg;
    return op_submit(op, 10, argv, lens);
}

int rcache_store(rcache *rc, const char *entry_key, const char *gen_global_key,
                 const scope_keys *scopes, uint64_t gen_global, uint64_t gen_product,
                 const char *value, size_t len, int64_t ttl_ms, const char *channel,
                 rcache_done_cb *cb, void *arg)
{
    enum { NKEYS = 2 + SCOPE_KINDS, ARGC = 3 + NKEYS + 5 };
    char nkeys[8], gg[24], gp[24], ttl[24];
    const char *argv[ARGC] = {NULL, NULL, nkeys, entry_key, gen_global_key};
    size_t lens[ARGC];
    struct rc_op *op;

    /* PX 0 or less is a Redis error: refuse it here, nothing sent. */
    if (!rcache_is_up(rc) || ttl_ms <= 0)
        return -1;
    if (rc->cl)
        return store_cluster(rc, entry_key, gen_global_key, scopes, gen_global, gen_product, value,
                             len, ttl_ms, channel, cb, arg);
    snprintf(nkeys, sizeof(nkeys), "%d", NKEYS);
    snprintf(gg, sizeof(gg), "%" PRIu64, gen_global);
    snprintf(gp, sizeof(gp), "%" PRIu64, gen_product);
    snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_ms);
    for (int i = 0; i < SCOPE_KINDS; i++)
        argv[5 + i] = scopes->key[i];
    const char **av = argv + 3 + NKEYS;
    av[0] = value ? value : "";
    av[1] = gg;
    av[2] = gp;
    av[3] = ttl;
    av[4] = channel;
    script_head(rc, SCRIPT_STORE, argv);
    arg_lens(argv, lens, ARGC);
    lens[3 + NKEYS] = len; /* the value is binary: never strlen it */
    op = op_new(rc, OP_INT, "store", entry_key);
    op->done_cb = cb;
    op->arg = arg;
    return op_submit(op, ARGC, argv, lens);
}

int rcache_lock(rcache *rc, const char *lock_key, const char *token, int64_t ttl_ms,
                rcache_done_cb *cb, void *arg)
{
    char ttl[24];
    const char *argv[] = {"SET", lock_key, token, "NX", "PX", ttl};
    size_t lens[6];
    struct rc_op *op;

    if (!rcache_is_up(rc) || ttl_ms <= 0)
        return -1;
    snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_ms);
    arg_lens(argv, lens, 6);
    op = op_new(rc, OP_LOCK, "lock", lock_key);
    op->done_cb = cb;
    op->arg = arg;
    return op_submit(op, 6, argv, lens);
}

int rcache_unlock(rcache *rc, const char *lock_key, const char *token, rcache_done_cb *cb,
                  void *arg)
{
    const char *argv[] = {NULL, NULL, "1", lock_key, token};
    size_t lens[5];
    struct rc_op *op;

    if (!rcache_is_up(rc))
        return -1;
    script_head(rc, SCRIPT_UNLOCK, argv);
    arg_lens(argv, lens, 5);
    op = op_new(rc, OP_INT, "unlock", lock_key);
    op->done_cb = cb;
    op->arg = arg;
    return op_submit(op, 5, argv, lens);
}

/* A command whose answer is an integer, with no script behind it. */
static int submit_int(rcache *rc, const char *what, const char *key, int argc, const char **argv,
                      rcache_done_cb *cb, void *arg)
{
    size_t lens[3];
    struct rc_op *op;

    if (!rcache_is_up(rc))
        return -1;
    arg_lens(argv, lens, argc);
    op = op_new(rc, OP_INT, what, key);
    op->done_cb = cb;
    op->arg = arg;
    return op_submit(op, argc, argv, lens);
}

/* A counter INCR creates (it was never there, or was evicted or lost in
 * a failover) starts at Redis's clock in ms, not 1: copies fenced on the
 * lost counter's values must never match it again. */
static const char incr_lua[] = "redis.replicate_commands()\n"
                               "local v = redis.call('INCR', KEYS[1])\n"
                               "if v == 1 then\n"
                               "  local t = redis.call('TIME')\n"
                               "  v = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
                               "  redis.call('SET', KEYS[1], string.format('%d', v))\n"
                               "end\n"
                               "return v\n";

int rcache_incr(rcache *rc, const char *key, rcache_done_cb *cb, void *arg)
{
    const char *argv[] = {"INCR", key};
    return submit_int(rc, "INCR", key, 2, argv, cb, arg);
}

/* Cluster mode: a counter without a hash tag (the global generation, a
 * currency, tier or region promotions) is a field of the dimensions hash. */
static bool is_dim(const rcache *rc, const char *key)
{
    return rc->cl != NULL && strchr(key, '{') == NULL;
}

int rcache_incr_unique(rcache *rc, const char *key, rcache_done_cb *cb, void *arg)
{
    const char *argv[] = {"EVAL", incr_lua, "1", key};
    size_t lens[4];
    struct rc_op *op;

    if (!rcache_is_up(rc)) {
        owe(rc); /* the debt rule of rcache_bump */
        return -1;
    }
    arg_lens(argv, lens, 4);
    op = op_new(rc, OP_INT, "INCR", key);
    op->done_cb = cb;
    op->arg = arg;
    op->bump = true;
    if (op_submit(op, 4, argv, lens) < 0) {
        owe(rc);
        return -1;
    }
    return 0;
}

int rcache_bump(rcache *rc, const char *key, rcache_done_cb *cb, void *arg)
{
    const char *incr[] = {"INCR", key};
    const char *hincr[] = {"HINCRBY", rc->dims_key, key, "1"};
    bool dim = is_dim(rc, key);
    const char **argv = dim ? hincr : incr;
    int argc = dim ? 4 : 2;
    size_t lens[4];
    struct rc_op *op;

    if (!rcache_is_up(rc)) {
        owe(rc);
        return -1;
    }
    arg_lens(argv, lens, argc);
    op = op_new(rc, OP_INT, argv[0], key);
    op->done_cb = cb;
    op->arg = arg;
    op->bump = true;
    op->is_gg = rc->global_key && strcmp(key, rc->global_key) == 0;
    if (dim) {
        op->slot = rc->dims_slot;
        op->dim_bump = true;
    }
    if (op_submit(op, argc, argv, lens) < 0) {
        owe(rc);
        return -1;
    }
    return 0;
}

int rcache_publish(rcache *rc, const char *channel, const char *msg, rcache_done_cb *cb, void *arg)
{
    const char *argv[] = {"PUBLISH", channel, msg};
    return submit_int(rc, "PUBLISH", channel, 3, argv, cb, arg);
}

void rcache_subscribe(rcache *rc, const char *channel, rcache_message_cb *cb, void *arg)
{
    struct rc_sub *s;

    for (s = rc->subs; s; s = s->next) {
        if (strcmp(s->channel, channel) == 0) {
            /* Already subscribed: hiredis holds s, so swapping is enough. */
            s->cb = cb;
            s->arg = arg;
            return;
        }
    }
    s = xcalloc(1, sizeof(*s));
    s->rc = rc;
    s->channel = xstrdup(channel);
    s->cb = cb;
    s->arg = arg;
    s->next = rc->subs;
    rc->subs = s;
    if (rconn_is_up(rc->sub))
        sub_send(s);
}

/* ---- many counters in one command ---- */

/* The batch of product bumps of one loop turn (invalidate.c): KEYS are the
 * generation counters, ARGV[1] the once-key TTL, ARGV[1 + i] KEYS[i]'s
 * once-key ("" for none). */
static const char bump_many_lua[] =
    "for i = 1, #KEYS do\n"
    "  local o = ARGV[i + 1]\n"
    "  if o == '' or redis.call('SET', o, '1', 'NX', 'PX', ARGV[1]) then\n"
    "    redis.call('INCR', KEYS[i])\n"
    "  end\n"
    "end\n"
    "return #KEYS\n";

/* Cluster mode: one script per slot, never CROSSSLOT. The product
 * counters of one slot: KEYS each counter then its once-key when it has
 * one; ARGV[1] the once-key TTL, ARGV[1 + i] "1" when counter i has. */
static const char bump_slot_lua[] =
    "local k = 1\n"
    "for i = 2, #ARGV do\n"
    "  local c = KEYS[k]\n"
    "  k = k + 1\n"
    "  local go = true\n"
    "  if ARGV[i] == '1' then\n"
    "    go = redis.call('SET', KEYS[k], '1', 'NX', 'PX', ARGV[1])\n"
    "    k = k + 1\n"
    "  end\n"
    "  if go then redis.call('INCR', c) end\n"
    "end\n"
    "return #ARGV - 1\n";

/* The dimension counters: KEYS[1] the hash, then the once-keys there are
 * (tagged {dims} too: rcache_bump_many); ARGV[1] the TTL, then per counter
 * its field and "1" when it has a once-key. */
static const char bump_dims_lua[] =
    "local k = 2\n"
    "for i = 2, #ARGV, 2 do\n"
    "  local go = true\n"
    "  if ARGV[i + 1] == '1' then\n"
    "    go = redis.call('SET', KEYS[k], '1', 'NX', 'PX', ARGV[1])\n"
    "    k = k + 1\n"
    "  end\n"
    "  if go then redis.call('HINCRBY', KEYS[1], ARGV[i], 1) end\n"
    "end\n"
    "return (#ARGV - 1) / 2\n";

/* The parts of one rcache_bump_many in cluster mode: the caller hears once,
 * when all have answered. */
struct bump_joint {
    rcache_done_cb *cb;
    void *arg;
    size_t n;
    int pending;
    bool failed;
};

static void bump_joint_done(void *arg, int status, long long result)
{
    struct bump_joint *j = arg;
    (void)result;
    if (status != RCACHE_OK)
        j->failed = true;
    if (--j->pending > 0)
        return;
    if (j->cb)
        j->cb(j->arg, j->failed ? RCACHE_ERR : RCACHE_OK, (long long)j->n);
    free(j);
}

/* One counter of a batch and its group: its slot, or -1 for the
 * dimensions hash. Sorted by group, then by position (a stable order). */
struct bump_item {
    int group;
    size_t i;
};

static int by_group(const void *a, const void *b)
{
    const struct bump_item *x = a, *y = b;
    if (x->group != y->group)
        return (x->group > y->group) - (x->group < y->group);
    return (x->i > y->i) - (x->i < y->i);
}

/* Sends the counters idx[0..m) (one group) as one script. */
static int bump_part_send(rcache *rc, const char *const *keys, const char *const *once_keys,
                          const size_t *idx, size_t m, const char *ttl, struct bump_joint *j)
{
    bool dims = is_dim(rc, keys[idx[0]]);
    size_t cap = 4 + 3 * m + 1, argc = 3, nk = 0;
    const char **argv = xcalloc(cap, sizeof(*argv));
    const char **av = xcalloc(cap, sizeof(*av)); /* ARGV, copied after KEYS */
    char **owned = xcalloc(m + 1, sizeof(*owned));
    size_t *lens = xcalloc(cap, sizeof(*lens));
    size_t nav = 0, nowned = 0;
    char nkeys[24];
    int r;

    argv[0] = "EVAL";
    argv[1] = dims ? bump_dims_lua : bump_slot_lua;
    av[nav++] = ttl;
    if (dims)
        argv[argc++] = rc->dims_key, nk++;
    for (size_t i = 0; i < m; i++) {
        const char *once = once_keys[idx[i]];
        bool has = once[0] != '\0';
        if (!dims)
            argv[argc++] = keys[idx[i]], nk++;
        else
            av[nav++] = keys[idx[i]];
        if (has && dims) {
            size_t len = strlen(rc->dims_key) + strlen(once) + 2;
            owned[nowned] = xmalloc(len);
            snprintf(owned[nowned], len, "%s:%s", rc->dims_key, once);
            argv[argc++] = owned[nowned++], nk++;
        } else if (has) {
            argv[argc++] = once, nk++;
        }
        av[nav++] = has ? "1" : "0";
    }
    snprintf(nkeys, sizeof(nkeys), "%zu", nk);
    argv[2] = nkeys;
    memcpy(argv + argc, av, nav * sizeof(*av));
    argc += nav;
    arg_lens(argv, lens, (int)argc);
    struct rc_op *op = op_new(rc, OP_INT, "bump_many", argv[3]);
    op->done_cb = bump_joint_done;
    op->arg = j;
    op->bump = true;
    op->dim_bump = dims;
    r = op_submit(op, (int)argc, argv, lens);
    for (size_t i = 0; i < nowned; i++)
        free(owned[i]);
    free(owned);
    free(argv);
    free(av);
    free(lens);
    return r;
}

static int bump_many_cluster(rcache *rc, const char *const *keys, const char *const *once_keys,
                             size_t n, int64_t once_ttl_ms, rcache_done_cb *cb, void *arg)
{
    struct bump_item *it = xcalloc(n, sizeof(*it));
    size_t *idx = xcalloc(n, sizeof(*idx));
    char ttl[24];
    int nparts = 0, r = 0;

    for (size_t i = 0; i < n; i++) {
        it[i].i = i;
        it[i].group = is_dim(rc, keys[i]) ? -1 : rcluster_keyslot(keys[i], strlen(keys[i]));
    }
    qsort(it, n, sizeof(*it), by_group);
    for (size_t i = 0; i < n; i++) {
        idx[i] = it[i].i;
        nparts += i == 0 || it[i].group != it[i - 1].group;
    }
    struct bump_joint *j = xcalloc(1, sizeof(*j));
    j->cb = cb;
    j->arg = arg;
    j->n = n;
    j->pending = nparts;
    snprintf(ttl, sizeof(ttl), "%" PRId64, once_ttl_ms);
    for (size_t from = 0, part = 0; from < n; part++) {
        size_t to = from + 1;
        while (to < n && it[to].group == it[from].group)
            to++;
        if (bump_part_send(rc, keys, once_keys, idx + from, to - from, ttl, j) < 0) {
            owe(rc);
            if (part == 0) { /* nothing sent: refused as a whole */
                free(j);
                r = -1;
                break;
            }
            j->failed = true;
            j->pending--; /* the first part is still in flight: no callback yet */
        }
        from = to;
    }
    free(it);
    free(idx);
    return r;
}

int rcache_bump_many(rcache *rc, const char *const *keys, const char *const *once_keys, size_t n,
                     int64_t once_ttl_ms, rcache_done_cb *cb, void *arg)
{
    char nkeys[24], ttl[24];
    struct rc_op *op;
    int r;

    if (!rcache_is_up(rc) || n == 0 || n > RCACHE_BUMP_MANY_MAX || once_ttl_ms <= 0) {
        owe(rc);
        return -1;
    }
    if (rc->cl)
        return bump_many_cluster(rc, keys, once_keys, n, once_ttl_ms, cb, arg);
    size_t argc = 2 * n + 4;
    const char **argv = xcalloc(argc, sizeof(*argv));
    size_t *lens = xcalloc(argc, sizeof(*lens));
    snprintf(nkeys, sizeof(nkeys), "%zu", n);
    snprintf(ttl, sizeof(ttl), "%" PRId64, once_ttl_ms);
    argv[0] = "EVAL";
    argv[1] = bump_many_lua;
    argv[2] = nkeys;
    memcpy(argv + 3, keys, n * sizeof(*keys));
    argv[3 + n] = ttl;
    memcpy(argv + 4 + n, once_keys, n * sizeof(*once_keys));
    arg_lens(argv, lens, (int)argc);
    op = op_new(rc, OP_INT, "bump_many", keys[0]);
    op->done_cb = cb;
    op->arg = arg;
    op->bump = true;
    r = op_submit(op, (int)argc, argv, lens); /* hiredis copied the arguments */
    free(argv);
    free(lens);
    if (r < 0)
        owe(rc);
    return r;
}

/* ---- the lock with its check, the re-check, the lease (lookup.c) ---- */

/* The lock attempt pipelines SET NX and the read on the command
 * connection rather than run a script: Redis executes a connection's
 * commands in order, so the read sent right after SET NX sees everything
 * stored before the lock was won (a holder stores, then releases), in the
 * same round trip. A joint collects the two answers and calls the caller
 * once, when both are in. */
struct rc_joint {
    rcache_lock_cb *cb;
    void *arg;
    int pending; /* ops not answered yet */
    bool failed; /* one of them failed or could not be sent */
    rcache_lock_value lv;
    char *entry; /* copy of the entry: the MGET reply is gone by the end */
};

static void joint_answer(struct rc_joint *j, int status)
{
    if (status != RCACHE_OK)
        j->failed = true;
    if (--j->pending > 0)
        return;
    if (j->failed) {
        /* A lock won whose read failed is still ours to release. */
        j->lv.v = (rcache_value){0};
        j->cb(j->arg, RCACHE_ERR, j->lv.acquired ? &j->lv : NULL);
    } else {
        j->lv.v.entry = j->entry;
        j->cb(j->arg, RCACHE_OK, &j->lv);
    }
    free(j->entry);
    free(j);
}

static void joint_on_lock(void *arg, int status, long long acquired)
{
    struct rc_joint *j = arg;
    j->lv.acquired = status == RCACHE_OK && acquired == 1;
    joint_answer(j, status);
}

static void joint_on_read(void *arg, int status, const rcache_value *v)
{
    struct rc_joint *j = arg;
    if (status == RCACHE_OK) {
        j->lv.v = *v;
        j->lv.v.entry = NULL;
        if (v->entry != NULL) {
            j->entry = xmalloc(v->entry_len + 1);
            memcpy(j->entry, v->entry, v->entry_len);
        }
    }
    joint_answer(j, status);
}

int rcache_lock_read(rcache *rc, const char *lock_key, const char *token, int64_t ttl_ms,
                     const char *entry_key, const char *gen_global_key, const scope_keys *scopes,
                     rcache_lock_cb *cb, void *arg)
{
    char ttl[24];
    const char *set[] = {"SET", lock_key, token, "NX", "PX", ttl};
    const char *mget[RCACHE_READ_KEYS + 1];
    size_t lens[RCACHE_READ_KEYS + 1];
    struct rc_op *op;
    struct rc_joint *j;

    /* Room for both, so a lock is never sent without its read. */
    if (!rcache_is_up(rc) || ttl_ms <= 0 || rc->inflight + 2 > MAX_INFLIGHT)
        return -1;
    j = xcalloc(1, sizeof(*j));
    j->cb = cb;
    j->arg = arg;
    j->pending = 2;
    j->lv.lock_pttl = -2;
    snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_ms);
    arg_lens(set, lens, 6);
    op = op_new(rc, OP_LOCK, "lock", lock_key);
    op->done_cb = joint_on_lock;
    op->arg = j;
    if (op_submit(op, 6, set, lens) < 0) {
        free(j);
        return -1;
    }
    op = op_new(rc, OP_READ, "MGET", entry_key);
    op->read_cb = joint_on_read;
    op->arg = j;
    int argc = mget_argv(op, mget, entry_key, gen_global_key, scopes);
    arg_lens(mget, lens, argc);
    if (op_submit(op, argc, mget, lens) < 0)
        joint_answer(j, RCACHE_ERR); /* the caller hears once the lock answers */
    return 0;
}

/* The re-check of a load waiting on another instance: one script, so that
 * "no lock" and taking it are one step (a take-over never races a second
 * round trip). A missing counter reads as false, as in MGET. */
static const char check_lua[] =
    "local lock = KEYS[#KEYS]\n"
    "local r = redis.call('MGET', unpack(KEYS, 1, #KEYS - 1))\n"
    "local got = 0\n"
    "if ARGV[1] ~= '' and redis.call('SET', lock, ARGV[1], 'NX', 'PX', ARGV[2]) then\n"
    "  got = 1\n"
    "end\n"
    "r[#KEYS] = got\n"
    "r[#KEYS + 1] = redis.call('PTTL', lock)\n"
    "return r\n";

static void op_answer_check(struct rc_op *op, const redisReply *r)
{
    rcache_lock_value lv = {0};
    size_t got = read_keys(op->rc), pttl = got + 1;
    const char *why;

    if (r->type != REDIS_REPLY_ARRAY || r->elements != got + 2 ||
        r->element[got]->type != REDIS_REPLY_INTEGER ||
        r->element[pttl]->type != REDIS_REPLY_INTEGER) {
        op_fail(op, "unexpected reply shape");
        return;
    }
    if ((why = parse_read(op, r->element, &lv.v)) != NULL) {
        op_fail(op, why);
        return;
    }
    lv.acquired = r->element[got]->integer == 1;
    lv.lock_pttl = r->element[pttl]->integer;
    op->done = true;
    op->lock_cb(op->arg, RCACHE_OK, &lv);
}

int rcache_check(rcache *rc, const char *lock_key, const char *token, int64_t ttl_ms,
                 const char *entry_key, const char *gen_global_key, const scope_keys *scopes,
                 rcache_lock_cb *cb, void *arg)
{
    enum { ARGC_MAX = 3 + RCACHE_READ_KEYS + 1 + 2 };
    char nkeys[8], ttl[24];
    const char *argv[ARGC_MAX] = {"EVAL", check_lua, nkeys};
    size_t lens[ARGC_MAX];
    struct rc_op *op;

    if (!rcache_is_up(rc) || (token != NULL && ttl_ms <= 0))
        return -1;
    op = op_new(rc, OP_CHECK, "check", lock_key);
    op->lock_cb = cb;
    op->arg = arg;
    /* The read's keys then the lock: KEYS; its "MGET" overwrites argv[2]. */
    int nkeys_n = mget_argv(op, argv + 2, entry_key, gen_global_key, scopes);
    int argc = 3 + nkeys_n + 2;
    snprintf(nkeys, sizeof(nkeys), "%d", nkeys_n);
    snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_ms > 0 ? ttl_ms : 1);
    argv[2] = nkeys;
    argv[3 + nkeys_n - 1] = lock_key;
    argv[3 + nkeys_n] = token ? token : "";
    argv[3 + nkeys_n + 1] = ttl;
    arg_lens(argv, lens, argc);
    return op_submit(op, argc, argv, lens);
}

static const char extend_lua[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                 "  return redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
                                 "else\n"
                                 "  return 0\n"
                                 "end\n";

int rcache_extend(rcache *rc, const char *lock_key, const char *token, int64_t ttl_ms,
                  rcache_done_cb *cb, void *arg)
{
    char ttl[24];
    const char *argv[] = {"EVAL", extend_lua, "1", lock_key, token, ttl};
    size_t lens[6];
    struct rc_op *op;

    if (!rcache_is_up(rc) || ttl_ms <= 0)
        return -1;
    snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_ms);
    arg_lens(argv, lens, 6);
    op = op_new(rc, OP_INT, "extend", lock_key);
    op->done_cb = cb;
    op->arg = arg;
    return op_submit(op, 6, argv, lens);
}
