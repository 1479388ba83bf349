#!/usr/bin/env python3
"""Redis down, restarted, absent at start, or switched off (api.md "Redis
down or restarted"): quotes stay correct and 200, marked BYPASS for the
request that loaded them, still coalesced in process; /healthz says so; the
proxy reconnects by itself."""

import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

st = None
products = []


def setup_module():
    global st, products
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=2000)
    products = [int(x) for x in st.psql(
        "SELECT p.id FROM products p JOIN regional_prices rp ON rp.product_id = p.id "
        "AND rp.region = 'US' WHERE p.active ORDER BY p.id LIMIT 400").split()]


def teardown_module():
    if st is not None:
        st.stop()


def take_product():
    return products.pop(0)


def qpath(pid, tier="gold"):
    return "/quote/%d?region=US&tier=%s" % (pid, tier)


def wait_catalog(p, timeout=15):
    """Ready to quote (the catalog is loaded), whatever Redis says: an
    unknown tier is a 400 only once the catalog is there, and costs nothing."""
    qcstack.wait_until(lambda: p.get("/quote/1?region=US&tier=nosuch")[0] == 400, timeout,
                       "catalog loaded", p.proc)


def xcache_counts(results):
    out = {}
    for _, h, _ in results:
        out[h.get("x-cache")] = out.get(h.get("x-cache"), 0) + 1
    return out


def coalesced_cold_burst(p, n=100):
    """n concurrent requests for one cold key while the tax service takes
    300 ms: exactly one tax call; returns the answers."""
    pid = take_product()
    st.tax_control(delay_ms=300)
    try:
        st.tax_reset()
        res = qcstack.concurrent_gets(p.port, [qpath(pid)] * n, timeout=10)
        assert [r[0] for r in res] == [200] * n, [r[0] for r in res]
        assert len({r[2] for r in res}) == 1
        assert st.tax_stats() == 1, st.tax_stats()
        return res
    finally:
        st.tax_control(delay_ms=0)


def test_redis_killed_then_restarted():
    p = qcstack.Proxy(st, redis_timeout=300)
    p.wait_health(status="ok", redis="up")
    warm = take_product()
    s, h, body = p.get(qpath(warm))
    assert s == 200 and h.get("x-cache") == "MISS"
    assert p.get(qpath(warm))[1].get("x-cache") == "HIT"

    st.stop_redis(kill=True)
    health = p.wait_health(redis="down", timeout=5)
    assert health["status"] == "degraded", health
    # Still the right answer, loaded from the origin.
    st.tax_reset()
    for _ in range(3):
        s, h, b = p.get(qpath(warm))
        assert s == 200 and h.get("x-cache") == "BYPASS" and b == body, (s, h, b)
    assert st.tax_stats() == 3
    # Still coalesced in process: the loader says BYPASS, the others waited
    # for its load and say COALESCED.
    # (asserted at the end, so the reconnect is checked either way)
    labels_down = xcache_counts(coalesced_cold_burst(p))

    st.start_redis()  # same port, empty
    t0 = time.monotonic()
    p.wait_health(redis="up", status="ok", timeout=5)

    def hit():
        return p.get(qpath(warm))[1].get("x-cache") == "HIT"
    qcstack.wait_until(hit, 5, "HITs after the Redis restart", p.proc)
    assert time.monotonic() - t0 < 5
    s, _, b = p.get(qpath(warm))
    assert s == 200 and b == body
    # And cross-request coalescing through Redis is back.
    res = coalesced_cold_burst(p)
    assert xcache_counts(res) == {"MISS": 1, "COALESCED": 99}, xcache_counts(res)
    _, _, m = p.get("/metrics")
    assert b"quotecache_redis_reconnects_total 0\n" not in m
    p.stop_clean()
    assert labels_down == {"BYPASS": 1, "COALESCED": 99}, labels_down


def test_redis_dies_mid_load():
    """Redis goes away while a load holds its lock and waiters wait: the
    load still answers everyone, from one tax call."""
    p = qcstack.Proxy(st, redis_timeout=300)
    p.wait_health(status="ok", redis="up")
    pid = take_product()
    st.tax_control(delay_ms=600)
    try:
        st.tax_reset()
        box = {}
        t = threading.Thread(target=lambda: box.setdefault(
            "r", qcstack.concurrent_gets(p.port, [qpath(pid)] * 50, timeout=10)))
        t.start()
        time.sleep(0.25)
        st.stop_redis(kill=True)
        t.join(12)
        res = box["r"]
        assert [r[0] for r in res] == [200] * 50, [r[0] for r in res]
        assert len({r[2] for r in res}) == 1
        assert st.tax_stats() == 1, st.tax_stats()
    finally:
        st.tax_control(delay_ms=0)
        if "redis" not in st.procs:
            st.start_redis()
    p.wait_health(redis="up", timeout=5)
    p.stop_clean()


def test_redis_hung():
    """A Redis that accepts nothing (SIGSTOP): requests are answered from
    the origin once --redis-timeout passes, not held forever."""
    p = qcstack.Proxy(st, redis_timeout=300)
    p.wait_health(status="ok", redis="up")
    warm = take_product()
    s, _, body = p.get(qpath(warm))
    assert s == 200
    rpid = st.procs["redis"].pid
    os.kill(rpid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        res = qcstack.concurrent_gets(p.port, [qpath(warm)] * 20, timeout=10)
        took = time.monotonic() - t0
        assert [r[0] for r in res] == [200] * 20, [r[0] for r in res]
        assert all(r[2] == body for r in res)
        assert took < 2.0, took
        s, h, b = p.get(qpath(take_product()), timeout=5)
        assert s == 200, (s, b)
    finally:
        os.kill(rpid, signal.SIGCONT)
    p.wait_health(redis="up", status="ok", timeout=5)

    def hit():
        return p.get(qpath(warm))[1].get("x-cache") == "HIT"
    qcstack.wait_until(hit, 5, "HITs after Redis resumed", p.proc)
    p.stop_clean()


def test_hung_redis_is_down():
    """SIGSTOP: the connections are dropped as hung, /healthz says down
    within 3 s, and warm and cold quotes keep answering 200 within 2 s each
    (from the origin once Redis is known down, not paying --redis-timeout
    each); SIGCONT: up and HITs again within 5 s."""
    p = qcstack.Proxy(st)  # --redis-timeout 500 (the default)
    p.wait_health(status="ok", redis="up")
    warm = take_product()
    s, _, body = p.get(qpath(warm))
    assert s == 200
    rpid = st.procs["redis"].pid
    os.kill(rpid, signal.SIGSTOP)
    times = []
    try:
        t0 = time.monotonic()
        down_at = None
        while time.monotonic() - t0 < 4.5:
            for path in (qpath(warm), qpath(take_product())):
                t1 = time.monotonic()
                s, h, b = p.get(path, timeout=5)
                took = time.monotonic() - t1
                times.append(took)
                assert s == 200, (s, b)
                assert took < 2.0, ("answer took", took)
                if path == qpath(warm):
                    assert b == body
            if down_at is None and p.health()["redis"] == "down":
                down_at = time.monotonic() - t0
            time.sleep(0.1)
        assert down_at is not None and down_at < 3.0, ("redis down after", down_at)
        # Known down: requests no longer wait on Redis at all.
        late = times[-4:]
        assert max(late) < 0.4, late
        print("hung redis: down after %.2fs; answers max %.3fs, last four %s"
              % (down_at, max(times), ["%.3f" % x for x in late]), flush=True)
    finally:
        os.kill(rpid, signal.SIGCONT)
    t2 = time.monotonic()
    p.wait_health(redis="up", status="ok", timeout=5)

    def hit():
        return p.get(qpath(warm))[1].get("x-cache") == "HIT"
    qcstack.wait_until(hit, 5 - (time.monotonic() - t2), "HITs after Redis resumed", p.proc)
    print("hung redis: up and HIT %.2fs after SIGCONT" % (time.monotonic() - t2), flush=True)
    p.stop_clean()


def test_hung_redis_is_down_without_traffic():
    """No quote traffic at all: the heartbeat finds the hung Redis."""
    p = qcstack.Proxy(st).ready()
    p.wait_health(redis="up")
    time.sleep(1.5)  # quiet connections
    rpid = st.procs["redis"].pid
    os.kill(rpid, signal.SIGSTOP)
    def noticed(conn):
        return any("redis %s connection" % conn in ln and "hung" in ln
                   for ln in p.stderr_text().splitlines())
    try:
        t0 = time.monotonic()
        p.wait_health(redis="down", timeout=3)
        print("hung redis, no traffic: down after %.2fs" % (time.monotonic() - t0), flush=True)
        # Both heartbeats notice it, each on its own beat: the subscriber's
        # may come a beat after /healthz said down (a loaded ASan run saw
        # Redis resumed before it), so wait for it while Redis is hung.
        for conn in ("command", "subscriber"):
            qcstack.wait_until(lambda: noticed(conn), 4, "the %s heartbeat" % conn, p.proc)
    finally:
        os.kill(rpid, signal.SIGCONT)
    t0 = time.monotonic()
    p.wait_health(redis="up", timeout=5)
    print("hung redis, no traffic: up %.2fs after SIGCONT" % (time.monotonic() - t0), flush=True)
    p.stop_clean()


def test_redis_down_at_start():
    # A port where a redis will appear later: take one, keep it, stop it.
    late = qcstack.Stack(products=1, redis=True, postgres=False, tax=False)
    try:
        late.stop_redis()
        assert not qcstack.port_open(late.redis_port)
        p = qcstack.Proxy(st, redis=late.redis_addr)
        wait_catalog(p)
        health = p.health()
        assert health["redis"] == "down" and health["status"] == "degraded", health
        pid = take_product()
        st.tax_reset()
        for _ in range(2):
            s, h, _ = p.get(qpath(pid))
            assert s == 200 and h.get("x-cache") == "BYPASS", (s, h)
        assert st.tax_stats() == 2
        late.start_redis()
        p.wait_health(redis="up", status="ok", timeout=5)
        assert p.get(qpath(pid))[1].get("x-cache") == "MISS"
        assert p.get(qpath(pid))[1].get("x-cache") == "HIT"
        assert late.redis_cli("DBSIZE") != "0"
        p.stop_clean()
    finally:
        late.stop()


def test_redis_none():
    p = qcstack.Proxy(st, redis="none")
    wait_catalog(p)
    health = p.wait_health(status="ok")
    assert health["redis"] == "disabled", health
    pid = take_product()
    st.tax_reset()
    # api.md: "none = in-process only": the first answer is loaded (BYPASS:
    # no shared cache), the next comes from the in-process tier.
    s, h, body = p.get(qpath(pid))
    assert s == 200 and h.get("x-cache") == "BYPASS", (s, h)
    s, h, again = p.get(qpath(pid))
    assert s == 200 and h.get("x-cache") == "HIT" and again == body, (s, h)
    assert st.tax_stats() == 1
    # no-cache still goes to the origin.
    s, h, _ = p.get(qpath(pid), headers={"Cache-Control": "no-cache"})
    assert s == 200 and h.get("x-cache") == "BYPASS", (s, h)
    assert st.tax_stats() == 2
    res = coalesced_cold_burst(p)
    assert xcache_counts(res) == {"BYPASS": 1, "COALESCED": 99}, xcache_counts(res)
    p.stop_clean()



def test_write_while_redis_down_is_not_undone_by_a_snapshot():
    """A price changes while Redis is down (the invalidation cannot bump
    Redis); Redis comes back from a snapshot holding the old quote under the
    old generation. The proxy bumps the global generation on reconnect, so
    the old quote is never served again."""
    p = qcstack.Proxy(st).ready()
    try:
        pid = take_product()
        path = qpath(pid)
        s, _, old = p.get(path)
        assert s == 200 and p.get(path)[1].get("x-cache") == "HIT"
        st.redis_cli("SAVE")
        st.stop_redis(kill=True)
        p.wait_health(redis="down", timeout=5)
        st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents * 2 "
                "WHERE product_id = %d AND region = 'US'" % pid)
        time.sleep(0.3)  # the notification arrives while Redis is away
        s, _, new = p.get(path)
        assert s == 200 and new != old
        st.start_redis()
        p.wait_health(redis="up", timeout=10)
        assert st.redis_cli("EXISTS", "qc:v1:gen").strip() == "1"  # came back with data
        for _ in range(3):
            s, h, body = p.get(path)
            assert s == 200 and body == new, ("pre-write quote served again", h, body)
        p.stop_clean()
    finally:
        if p.running():
            p.kill()



def test_lock_of_a_load_that_ended_while_redis_hung_is_released():
    """Instance a holds the lock of a slow load when Redis hangs (SIGSTOP,
    as a master does while a failover promotes its replica); a's load ends
    in process and cannot release it. Once Redis answers again, a releases
    it: b's request for the key does not wait for the lock's expiry
    (--lock-ttl 15000)."""
    a = qcstack.Proxy(st, lock_ttl=15000, tax_timeout=8000)
    b = qcstack.Proxy(st, lock_ttl=15000, tax_timeout=8000)
    for p in (a, b):
        p.wait_health(status="ok", redis="up")
    pid = take_product()
    # Longer than a needs to see Redis hung (< 3 s): its load ends once
    # Redis is known down (a store, unlock or announcement sent before
    # would wait in the socket and apply on SIGCONT).
    st.tax_control(delay_ms=4000)
    rpid = st.procs["redis"].pid
    first = []
    t = threading.Thread(target=lambda: first.append(a.get(qpath(pid), timeout=10)))
    try:
        t.start()
        time.sleep(0.3)  # a holds the lock; its tax call runs
        os.kill(rpid, signal.SIGSTOP)
        qcstack.wait_until(lambda: a.health()["redis"] == "down", 5, "a knows Redis down")
        t.join(15)
        assert first and first[0][0] == 200, first
        assert a.health()["redis"] == "down"
    finally:
        os.kill(rpid, signal.SIGCONT)
        st.tax_control(delay_ms=0)
    for p in (a, b):
        p.wait_health(redis="up", timeout=5)
    t0 = time.monotonic()
    s, h, _ = b.get(qpath(pid), timeout=10)
    took = time.monotonic() - t0
    assert s == 200, (s, h)
    assert took < 2.0, ("b waited for a's abandoned lock", took)
    print("abandoned lock: b answered in %.3f s after Redis resumed" % took, flush=True)
    a.stop_clean()
    b.stop_clean()


if __name__ == "__main__":
    qctest.main(globals())
