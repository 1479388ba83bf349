#!/usr/bin/env python3
"""The lookup under real operations (issue 8, "Correct under real
operations", items 4 to 8 and 11): stale copies are bounded and never
superseded, cross-instance waits never sleep to the lock TTL by mistake,
the lock lives as long as its load, --redis none serves STALE, a no-cache
load refreshes the in-process copy, and clients that give up leave their
flight at once.

Real redis-server, PostgreSQL and tax simulator (scripts/qcstack.py). The
races of the cross-instance wait are made deterministic with delayproxy.py,
a TCP proxy between one instance and Redis that delays lock answers or
refuses reconnects. Each test names the item it covers."""

import json
import os
import socket
import sys
import threading
import time
import http.client

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402
from delayproxy import DelayProxy  # noqa: E402

st = None
pool = []  # active products priced in US without a per-product promotion; one per use


def setup_module():
    global st, pool
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=2000)
    pool = [int(x) for x in st.psql(
        "SELECT p.id FROM products p JOIN regional_prices rp ON rp.product_id = p.id "
        "AND rp.region = 'US' WHERE p.active AND NOT EXISTS (SELECT 1 FROM promotions pr "
        "WHERE pr.product_id = p.id) ORDER BY p.id LIMIT 60").split()]
    assert len(pool) >= 30, pool


def teardown_module():
    if st is not None:
        st.stop()


def take():
    return pool.pop(0)


def qpath(pid, tier="gold"):
    return "/quote/%d?region=US&tier=%s" % (pid, tier)


def start_proxy(**opts):
    return qcstack.Proxy(st, **opts).ready()


def tax_normal():
    st.tax_control(delay_ms=0, jitter_ms=0, fail_rate=0, drop_rate=0)


def raise_price(pid, cents=100):
    st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents + %d "
            "WHERE product_id = %d AND region = 'US'" % (cents, pid))


def metric(px, name):
    _, _, body = px.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("metric %s missing" % name)


def xcache_counts(results):
    out = {}
    for _, h, _ in results:
        x = h.get("x-cache")
        out[x] = out.get(x, 0) + 1
    return out


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.01)


class Bg(threading.Thread):
    """Runs fn() in a thread, keeps its result or exception and when it ended."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result, self.error, self.done_at = fn, None, None, None
        self.start()

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: B902 - reported by get()
            self.error = e
        self.done_at = time.monotonic()

    def get(self, timeout=30):
        self.join(timeout)
        assert not self.is_alive(), "background request did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def assert_not_old(res, old, what):
    """Every answer is either a JSON 5xx error or a 200 that is not `old`;
    returns the 200 bodies."""
    fresh = []
    for s, h, b in res:
        assert b != old, "%s: served the superseded copy (%s, X-Cache %s)" % (
            what, s, h.get("x-cache"))
        if s == 200:
            assert h.get("x-cache") != "STALE", (what, h)
            fresh.append(b)
        else:
            assert s in (502, 503, 504), (what, s, b[:200])
            assert "error" in json.loads(b), (what, b[:200])
    return fresh


# ------------------------------------------------------------------ item 4


def test_failing_refresh_never_serves_a_copy_a_write_superseded():
    """Item 4 (stale never superseded): a stale key's refresh is in flight
    and will fail; a price change commits; requests that arrive after the
    write (and join that refresh) never get the pre-write copy, not even
    as STALE: a JSON 5xx, or the new price."""
    p = start_proxy(ttl=2, stale_ttl=30, tax_timeout=5000)
    pid = take()
    path = qpath(pid)
    try:
        tax_normal()
        s, h, old = p.get(path)
        assert s == 200 and h.get("x-cache") == "MISS", (s, h)
        time.sleep(2.2)  # stale now, well inside --stale-ttl
        st.tax_control(delay_ms=1500, fail_rate=1.0)
        st.tax_reset()
        s, h, b = p.get(path)
        assert s == 200 and h.get("x-cache") == "STALE" and b == old, (s, h)
        wait_for(lambda: st.tax_stats() == 1, 1.0, "the refresh's tax call")
        t_refresh = time.monotonic()
        raise_price(pid)
        time.sleep(0.2)  # the change notification has been applied
        assert time.monotonic() - t_refresh < 1.2, "too slow: the refresh already failed"
        res = qcstack.concurrent_gets(p.port, [path] * 10, timeout=10)
        assert st.tax_stats() >= 1
        fresh = assert_not_old(res, old, "joined a failing refresh after a write")
        tax_normal()
        s, h, new = p.get(path)
        assert s == 200 and new != old, (s, h)
        assert all(b == new for b in fresh), "a 200 that is not the new price"
        p.stop_clean()
    finally:
        tax_normal()
        p.kill()


def test_failing_refresh_never_serves_past_the_horizon():
    """Item 4 (stale bounded): --ttl 1 --stale-ttl 2; a refresh starts inside
    the horizon (answered STALE) and fails after it; requests that join it
    after ttl + stale_ttl never get the old copy."""
    p = start_proxy(ttl=1, stale_ttl=2, tax_timeout=5000)
    pid = take()
    path = qpath(pid)
    try:
        tax_normal()
        s, h, old = p.get(path)
        stored = time.monotonic()  # the entry was stored before this
        assert s == 200 and h.get("x-cache") == "MISS", (s, h)
        time.sleep(1.3)
        st.tax_control(delay_ms=2500, fail_rate=1.0)
        st.tax_reset()
        s, h, b = p.get(path)
        assert s == 200 and h.get("x-cache") == "STALE" and b == old, (s, h)
        wait_for(lambda: st.tax_stats() == 1, 1.0, "the refresh's tax call")
        t_refresh = time.monotonic()
        time.sleep(max(0.0, stored + 3.25 - time.monotonic()))  # past ttl + stale_ttl
        assert time.monotonic() - t_refresh < 2.2, "too slow: the refresh already failed"
        res = qcstack.concurrent_gets(p.port, [path] * 10, timeout=10)
        assert_not_old(res, old, "joined a failing refresh past the stale horizon")
        p.stop_clean()
    finally:
        tax_normal()
        p.kill()


# ------------------------------------------------------------------ item 5

LONG_LOCK_MS = 8000  # a wait that sleeps to the lock TTL shows as ~8 s
# The proxy's delayed lock answers (up to 1 s) must not count as a Redis
# timeout. Every later reply on that connection waits behind a delayed one
# (Redis answers in order), so requests queued behind it may find the value
# when their read is answered: their X-Cache may be HIT.
REDIS_TIMEOUT_MS = 3000


def lock_keys():
    out = st.redis_cli("KEYS", "qc:*:lock")
    return [k for k in out.split("\n") if k]


def test_no_value_and_no_lock_takes_over_at_once():
    """Item 5 (no value and no lock: take over at once): A holds the lock
    and is killed mid-load; B's lock attempt is answered "taken" (its answer
    delayed by the proxy) after the lock is gone. B's re-check finds no
    value and no lock: it must load at once, not sleep to --lock-ttl."""
    tax_normal()
    dp = DelayProxy(st.redis_port)
    a = start_proxy(lock_ttl=LONG_LOCK_MS)
    b = start_proxy(lock_ttl=LONG_LOCK_MS, redis=dp.addr, redis_timeout=REDIS_TIMEOUT_MS)
    pid = take()
    path = qpath(pid)
    try:
        st.tax_control(delay_ms=3000)
        st.tax_reset()
        Bg(lambda: a.get(path, timeout=10))  # dies with a
        wait_for(lambda: st.tax_stats() == 1, 2.0, "a's tax call")
        assert len(lock_keys()) == 1, lock_keys()
        dp.nx_delay = 1.0
        waiters = Bg(lambda: qcstack.concurrent_gets(b.port, [path] * 20, timeout=15))
        wait_for(lambda: dp.times("nx"), 2.0, "b's lock attempt")
        dp.nx_delay = 0  # only that one: b's takeover is answered at once
        a.kill()
        st.redis_cli("DEL", *lock_keys())  # the lock is gone (expired, say)
        st.tax_control(delay_ms=0)
        t_gone = time.monotonic()
        res = waiters.get()
        took = waiters.done_at - t_gone
        assert [r[0] for r in res] == [200] * 20, [r[0] for r in res]
        assert dp.times("nx-sent"), "the delayed lock answer was never sent"
        # One delayed lock answer (1 s) and one fresh load; not the lock TTL.
        assert took < 2.0, "b slept %.2fs (lock TTL %d ms)" % (took, LONG_LOCK_MS)
        after = waiters.done_at - dp.times("nx-sent")[0]
        assert after < 0.5, "b answered %.2fs after its lock answer" % after
        assert st.tax_stats() == 2, st.tax_stats()
        assert len({r[2] for r in res}) == 1
        b.stop_clean()
    finally:
        tax_normal()
        dp.nx_delay = 0
        a.kill()
        b.kill()
        dp.close()


def test_lock_taken_by_an_attempt_that_timed_out_is_released():
    """A lock attempt whose answer comes after --redis-timeout (or is lost
    with its connection) may have taken the lock all the same: B's lock
    script ran at once, its answer is delayed past B's deadline, B loads in
    process and stores nothing. B must release that lock (token-guarded)
    and announce it: A's request for the key must not wait --lock-ttl."""
    tax_normal()
    dp = DelayProxy(st.redis_port)
    a = start_proxy(lock_ttl=LONG_LOCK_MS)
    b = start_proxy(lock_ttl=LONG_LOCK_MS, redis=dp.addr, redis_timeout=300)
    pid = take()
    path = qpath(pid)
    try:
        dp.nx_delay = 1.0
        s, h, _ = b.get(path, timeout=10)
        assert s == 200 and h.get("x-cache") == "BYPASS", (s, h.get("x-cache"))
        assert dp.times("nx"), "b's lock attempt never reached Redis"
        dp.nx_delay = 0
        t0 = time.monotonic()
        s, h, _ = a.get(path, timeout=15)
        took = time.monotonic() - t0
        assert s == 200, s
        assert took < 2.0, "a waited %.2fs on b's lock (lock TTL %d ms)" % (took, LONG_LOCK_MS)
        wait_for(lambda: not lock_keys(), 2.0, "b's lock released")
        b.stop_clean()
        a.stop_clean()
    finally:
        dp.nx_delay = 0
        a.kill()
        b.kill()
        dp.close()


def announcement_before_lock_answer(fail_first):
    """A loads (tax 500 ms); B's lock attempt is sent while A holds the lock
    and its answer ("taken") is delayed 0.8 s, so A's store (or its release
    without a value, when A's tax call fails) and the announcement reach B
    first. Returns (B's answers, seconds B took, seconds after the lock
    answer was released)."""
    tax_normal()
    dp = DelayProxy(st.redis_port)
    a = start_proxy(lock_ttl=LONG_LOCK_MS)
    b = start_proxy(lock_ttl=LONG_LOCK_MS, redis=dp.addr, redis_timeout=REDIS_TIMEOUT_MS)
    pid = take()
    path = qpath(pid)
    try:
        st.tax_control(delay_ms=500, fail_rate=1.0 if fail_first else 0.0)
        st.tax_reset()
        lead = Bg(lambda: a.get(path, timeout=10))
        wait_for(lambda: st.tax_stats() == 1, 2.0, "a's tax call")
        t_a = time.monotonic()
        st.tax_control(delay_ms=0, fail_rate=0.0)  # b's own load, if any, succeeds
        dp.nx_delay = 0.8
        t0 = time.monotonic()
        waiters = Bg(lambda: qcstack.concurrent_gets(b.port, [path] * 20, timeout=15))
        wait_for(lambda: dp.times("nx"), 1.0, "b's lock attempt")
        dp.nx_delay = 0  # only that one: a takeover by b is answered at once
        assert dp.times("nx")[0] - t_a < 0.4, "too slow: b's lock attempt came after a's load"
        res = waiters.get()
        s_lead = lead.get()[0]
        assert s_lead == (502 if fail_first else 200), s_lead
        assert lead.done_at < dp.times("nx-sent")[0], "a finished after b's lock answer"
        took = waiters.done_at - t0
        after = waiters.done_at - dp.times("nx-sent")[0]
        assert [r[0] for r in res] == [200] * 20, [(r[0], r[2][:80]) for r in res]
        assert len({r[2] for r in res}) == 1
        assert st.tax_stats() == (2 if fail_first else 1), st.tax_stats()
        b.stop_clean()
        a.stop_clean()
        return res, took, after
    finally:
        tax_normal()
        dp.nx_delay = 0
        a.kill()
        b.kill()
        dp.close()


def test_store_announced_before_the_lock_answer():
    """Item 5 (an announcement before the lock answer is not lost), the
    value case: A stores and announces before B learns it lost the lock;
    B's waiters are answered at once from A's value, well under the lock
    TTL."""
    res, took, after = announcement_before_lock_answer(fail_first=False)
    assert set(xcache_counts(res)) <= {"COALESCED", "HIT"}, xcache_counts(res)
    assert took < 1.5, "b took %.2fs (lock TTL %d ms)" % (took, LONG_LOCK_MS)
    assert after < 0.3, after


def test_release_announced_before_the_lock_answer():
    """Item 5 (an announcement before the lock answer is not lost), the
    no-value case: A's load fails, A releases its lock and announces before
    B learns it lost the lock; B must take over at once (one fresh load),
    not sleep to the lock TTL."""
    res, took, after = announcement_before_lock_answer(fail_first=True)
    assert took < 1.5, "b took %.2fs (lock TTL %d ms)" % (took, LONG_LOCK_MS)
    assert after < 0.5, after


def test_remote_wait_rechecks_when_the_subscriber_comes_back():
    """Item 5 (every remote wait re-checks when the subscriber connection
    comes back): B waits on A's lock; its subscriber connection is killed
    (CLIENT KILL TYPE pubsub) and kept down (the proxy refuses reconnects)
    while A stores and announces, so B misses the announcement. B must
    answer within a second of A's store (its re-check when the subscriber
    is back, or its periodic re-check of the lock, whichever comes first),
    not at the lock TTL."""
    tax_normal()
    dp = DelayProxy(st.redis_port)
    a = start_proxy(lock_ttl=LONG_LOCK_MS)
    b = start_proxy(lock_ttl=LONG_LOCK_MS, redis=dp.addr, redis_timeout=REDIS_TIMEOUT_MS)
    pid = take()
    path = qpath(pid)
    try:
        st.tax_control(delay_ms=1000)
        st.tax_reset()
        lead = Bg(lambda: a.get(path, timeout=10))
        wait_for(lambda: st.tax_stats() == 1, 2.0, "a's tax call")
        t_a = time.monotonic()
        waiters = Bg(lambda: qcstack.concurrent_gets(b.port, [path] * 20, timeout=15))
        wait_for(lambda: metric(b, "quotecache_lock_waited_total") >= 1, 1.0, "b waiting")
        subs_before = len(dp.times("subscribe"))
        dp.blackout(t_a + 1.4 - time.monotonic())  # past a's store at ~t_a + 1.0
        killed = int(st.redis_cli("CLIENT", "KILL", "TYPE", "pubsub"))
        t_kill = time.monotonic()
        assert killed >= 2, killed  # a's and b's subscribers
        res = waiters.get()
        assert lead.get()[0] == 200
        assert t_kill < lead.done_at, "too slow: a stored before b's subscriber was killed"
        back = [t for t in dp.times("subscribe")[subs_before:] if t > t_a + 1.4]
        assert not back or lead.done_at < back[0], "a stored after b's subscriber was back"
        assert [r[0] for r in res] == [200] * 20, [r[0] for r in res]
        assert xcache_counts(res) == {"COALESCED": 20}, xcache_counts(res)
        late = waiters.done_at - lead.done_at
        assert late < 1.3, "b answered %.2fs after a stored (lock TTL %d ms)" % (
            late, LONG_LOCK_MS)
        assert st.tax_stats() == 1, st.tax_stats()
        b.stop_clean()
        a.stop_clean()
    finally:
        tax_normal()
        a.kill()
        b.kill()
        dp.close()


# ------------------------------------------------------------------ item 6


def test_lock_lives_as_long_as_a_slow_load():
    """Item 6 (the lock lives as long as its load): tax delay 2.5 s,
    --lock-ttl 1000 (and --tax-timeout 5000, so the load may run), 100
    concurrent requests over two instances: exactly one tax call, all 200."""
    tax_normal()
    a = start_proxy(lock_ttl=1000, tax_timeout=5000)
    b = start_proxy(lock_ttl=1000, tax_timeout=5000)
    pid = take()
    path = qpath(pid)
    try:
        st.tax_control(delay_ms=2500)
        st.tax_reset()
        lead = Bg(lambda: a.get(path, timeout=15))
        wait_for(lambda: st.tax_stats() == 1, 2.0, "a's tax call")
        on_a = Bg(lambda: qcstack.concurrent_gets(a.port, [path] * 49, timeout=15))
        on_b = qcstack.concurrent_gets(b.port, [path] * 50, timeout=15)
        everything = on_a.get() + on_b + [lead.get()]
        assert [r[0] for r in everything] == [200] * 100, sorted(r[0] for r in everything)
        assert st.tax_stats() == 1, "the load ran %d times" % st.tax_stats()
        assert len({r[2] for r in everything}) == 1
        s, h, _ = b.get(path)
        assert s == 200 and h.get("x-cache") == "HIT", (s, h)
        assert st.tax_stats() == 1
        a.stop_clean()
        b.stop_clean()
    finally:
        tax_normal()
        a.kill()
        b.kill()


def test_fenced_retry_keeps_the_lock():
    """Item 6 (a load that retries, fenced by a write, keeps its lock): the
    first attempt (0.7 s) fits in --lock-ttl 1000, the reload forced by a
    write during it does not; the other instance's waiters must not take
    the lock over: two tax calls (load and reload), everyone gets the new
    price."""
    tax_normal()
    a = start_proxy(lock_ttl=1000, tax_timeout=5000)
    b = start_proxy(lock_ttl=1000, tax_timeout=5000)
    pid = take()
    path = qpath(pid)
    try:
        st.tax_control(delay_ms=700)
        st.tax_reset()
        lead = Bg(lambda: a.get(path, timeout=15))
        wait_for(lambda: st.tax_stats() == 1, 2.0, "a's tax call")
        on_b = Bg(lambda: qcstack.concurrent_gets(b.port, [path] * 20, timeout=15))
        wait_for(lambda: metric(b, "quotecache_lock_waited_total") >= 1, 1.0, "b waiting")
        raise_price(pid)  # commits during a's first attempt: it must reload
        res = on_b.get() + [lead.get()]
        assert [r[0] for r in res] == [200] * 21, [r[0] for r in res]
        assert len({r[2] for r in res}) == 1
        assert st.tax_stats() == 2, "tax calls: %d (load, reload, and a takeover?)" % (
            st.tax_stats())
        tax_normal()
        s, h, fresh = a.get(path, headers={"Cache-Control": "no-cache"})
        assert s == 200 and fresh == res[0][2], "not the post-write price"
        a.stop_clean()
        b.stop_clean()
    finally:
        tax_normal()
        a.kill()
        b.kill()


# ------------------------------------------------------------------ item 7


def test_redis_none_serves_stale():
    """Item 7 (--redis none serves STALE like the Redis mode): past the TTL
    and inside --stale-ttl a copy is answered STALE at once while one
    refresh runs, then the fresh value; with the tax service failing,
    STALE inside the horizon and a JSON 5xx after it."""
    p = start_proxy(redis="none", ttl=1, stale_ttl=2, tax_timeout=5000)
    pid = take()
    path = qpath(pid)
    try:
        st.tax_control(delay_ms=300)
        st.tax_reset()
        s, h, body = p.get(path)
        t_w = time.monotonic()
        assert s == 200 and h.get("x-cache") == "BYPASS", (s, h)
        assert p.get(path)[1].get("x-cache") == "HIT"
        time.sleep(max(0.0, t_w + 1.2 - time.monotonic()))
        t0 = time.monotonic()
        s, h, b = p.get(path)
        took = time.monotonic() - t0
        assert s == 200 and h.get("x-cache") == "STALE" and b == body, (s, h.get("x-cache"))
        assert took < 0.2, "a stale copy must be served at once, took %.3fs" % took
        time.sleep(0.6)  # the refresh (300 ms) has landed
        s, h, b = p.get(path)
        assert s == 200 and h.get("x-cache") == "HIT" and b == body, (s, h.get("x-cache"))
        assert st.tax_stats() == 2, st.tax_stats()
        # The refreshed copy was stored in [t0, t0 + 0.6]: stale from t0 + 1.6,
        # past the horizon from t0 + 3.6 at the latest.
        time.sleep(max(0.0, t0 + 1.7 - time.monotonic()))
        st.tax_control(delay_ms=300, fail_rate=1.0)
        for _ in range(2):
            s, h, b = p.get(path)
            assert s == 200 and h.get("x-cache") == "STALE" and b == body, (
                s, h.get("x-cache"), b[:120])
            time.sleep(0.5)
        assert time.monotonic() < t0 + 3.0, "too slow: the STALE checks ran past the horizon"
        time.sleep(max(0.0, t0 + 3.8 - time.monotonic()))
        s, h, b = p.get(path)
        assert s in (502, 503, 504) and h.get("x-cache") != "STALE", (s, h.get("x-cache"))
        assert "error" in json.loads(b), b[:200]
        p.stop_clean()
    finally:
        tax_normal()
        p.kill()


# ------------------------------------------------------------------ item 8


def test_no_cache_refreshes_the_in_process_copy():
    """Item 8 (read your own write): a key is warm in the in-process tier; a
    price change commits (with the change trigger dropped, so only the
    no-cache rule can pass this), a no-cache GET shows the new price, and a
    plain GET right after it, on the same connection and on new ones, never
    gets the older in-process copy."""
    p = start_proxy()
    pid = take()
    path = qpath(pid)
    st.psql("DROP TRIGGER quotecache_notify ON regional_prices")
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)

    def get(headers=None):
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.getheader("X-Cache"), r.read()
    try:
        tax_normal()
        s, xc, old = get()
        assert s == 200 and xc == "MISS", (s, xc)
        for _ in range(3):  # from Redis into the in-process tier, then from there
            s, xc, b = get()
            assert s == 200 and xc == "HIT" and b == old, (s, xc)
        t_warm = time.monotonic()
        raise_price(pid)
        s, xc, new = get({"Cache-Control": "no-cache"})
        assert s == 200 and new != old, ("no-cache did not read its own write", s, xc)
        s, xc, b = get()
        assert b == new, "plain GET after a no-cache load got the older copy (X-Cache %s)" % xc
        if time.monotonic() - t_warm > 0.45:
            print("note: slow run (%.2fs); the in-process copy may have expired by itself"
                  % (time.monotonic() - t_warm))
        for _ in range(5):
            s, h, b = p.get(path)
            assert s == 200 and b == new, ("older copy on a new connection", h.get("x-cache"))
        p.stop_clean()
    finally:
        conn.close()
        st.psql_file(os.path.join(qcstack.SRC, "scripts", "sql", "triggers.sql"))
        if p.running():
            p.kill()


# ------------------------------------------------------------------ item 11


def test_abandoned_requests_leave_at_once():
    """Item 11 (abandoned requests leave at once): --max-waiters 500; 1,500
    send-and-close requests on one cold key while its load takes 3 s, then
    10 normal requests: all 200, from the one load (one tax call)."""
    p = start_proxy(max_waiters=500, tax_timeout=5000)
    pid = take()
    path = qpath(pid)
    try:
        st.tax_control(delay_ms=3000)
        st.tax_reset()
        t0 = time.monotonic()
        sent = qcstack.send_and_close(p.port, path, n=1500, timeout=2.2)
        assert sent == 1500, "only %d send-and-close requests in 2.2 s" % sent
        time.sleep(0.2)  # the proxy has read them all (and the closes)
        assert st.tax_stats() == 1, st.tax_stats()
        assert time.monotonic() - t0 < 2.6, "too slow: the load is about to finish"
        res = qcstack.concurrent_gets(p.port, [path] * 10, timeout=10)
        assert [r[0] for r in res] == [200] * 10, "answers: %s, first: %r" % (
            sorted(r[0] for r in res), res[0][2][:80])
        assert xcache_counts(res) == {"COALESCED": 10}, xcache_counts(res)
        assert st.tax_stats() == 1, st.tax_stats()
        s, h, _ = p.get(path)
        assert s == 200 and h.get("x-cache") == "HIT", (s, h)
        assert p.running()
        p.stop_clean()
    finally:
        tax_normal()
        if p.running():
            p.kill()


def test_pipelined_request_sent_while_waiting_is_answered():
    """The other side of the watch: a client that pipelines its next
    request while the first waits for a slow load (the bytes reach the
    watch, not evhttp) gets both answers, in order, on that connection."""
    p = start_proxy(tax_timeout=5000)
    a, b = qpath(take()), qpath(take())
    try:
        st.tax_control(delay_ms=600)
        c = socket.create_connection(("127.0.0.1", p.port))
        c.settimeout(5)
        c.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % a).encode())
        time.sleep(0.2)
        c.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % b).encode())
        f = c.makefile("rb")
        for path in (a, b):
            status = f.readline()
            assert status.startswith(b"HTTP/1.1 200"), (path, status)
            length = None
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            doc = json.loads(f.read(length))
            assert doc["product_id"] == int(path.split("/")[2].split("?")[0]), (path, doc)
        c.close()
        p.stop_clean()
    finally:
        tax_normal()
        if p.running():
            p.kill()


def test_abandoned_after_a_pipelined_byte_leave_too():
    """Item 11, the review's variant: each client sends its request, then
    one byte of a pipelined next request, then closes. The EOF behind that
    byte must still be seen (the watch reads the byte into evhttp's input
    and goes on), so 300 of them cannot fill --max-waiters 100."""
    p = start_proxy(max_waiters=100, tax_timeout=5000)
    path = qpath(take())
    req = ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode()
    socks = []
    try:
        st.tax_control(delay_ms=3000)
        st.tax_reset()
        for _ in range(300):
            c = socket.create_connection(("127.0.0.1", p.port))
            c.sendall(req)
            socks.append(c)
        time.sleep(0.3)
        for c in socks:
            c.sendall(b"G")
            c.close()
        time.sleep(0.3)
        res = qcstack.concurrent_gets(p.port, [path] * 10, timeout=10)
        assert [r[0] for r in res] == [200] * 10, "answers: %s, first: %r" % (
            sorted(r[0] for r in res), res[0][2][:80])
        assert st.tax_stats() == 1, st.tax_stats()
        p.stop_clean()
    finally:
        for c in socks:
            c.close()
        tax_normal()
        if p.running():
            p.kill()


if __name__ == "__main__":
    qctest.main(globals())
