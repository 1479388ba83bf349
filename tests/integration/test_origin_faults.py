#!/usr/bin/env python3
"""The origin misbehaving: a slow tax service does not serialize requests;
PostgreSQL restarted under load, a tax deadline, dropped / failed / absent
tax calls all give prompt JSON 5xx answers and recover by themselves; 5xx
answers are never cached; expired copies are served STALE while the origin
fails; SIGTERM lets in-flight requests finish and exits 0."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

CURRENCIES = ["USD", "EUR", "GBP", "JPY", "BRL", "CAD", "AUD", "CHF", "INR", "MXN"]
st = None


def setup_module():
    global st
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=2000, seed=1)


def teardown_module():
    if st is not None:
        st.stop()


def tax_normal():
    st.tax_control(delay_ms=0, jitter_ms=0, fail_rate=0, drop_rate=0)


def quote_path(pid, region="US", tier="standard", currency="USD"):
    return "/quote/%d?region=%s&tier=%s&currency=%s" % (pid, region, tier, currency)


def distinct_paths(n, tier="standard"):
    """n distinct quotes that exist: products 1..10 are sold everywhere."""
    regions = ["US", "EU", "UK", "APAC", "LATAM"]
    out = []
    for r in regions:
        for c in CURRENCIES:
            for pid in range(1, 11):
                out.append(quote_path(pid, r, tier, c))
    return out[:n]


def timed_get(px, path, headers=None, timeout=10):
    """GET; on a proxy with --redis none (which still caches in process)
    with no-cache, since those tests mean to reach the origin every time."""
    t0 = time.monotonic()
    h = {"Cache-Control": "no-cache"} if px.opts.get("redis") == "none" else {}
    h.update(headers or {})
    s, h, b = px.get(path, headers=h, timeout=timeout)
    return s, h, b, time.monotonic() - t0


def assert_json_error(status, h, body, statuses, code=None):
    assert status in statuses, (status, body)
    assert h.get("content-type") == "application/json", h
    doc = json.loads(body)
    assert isinstance(doc.get("error"), str) and doc.get("message"), doc
    if code is not None:
        assert doc["error"] == code, doc
    assert "etag" not in h, h


def ready(px):
    px.wait_health(status="ok", timeout=10)
    return px


# ------------------------------------------------------------------ tests


def test_slow_tax_is_concurrent():
    """100 different quotes with a 200 ms tax service: ~200 ms, not 20 s."""
    tax_normal()
    with ready(qcstack.Proxy(st, redis="none")) as px:
        st.tax_control(delay_ms=200)
        st.tax_reset()
        paths = distinct_paths(100)
        assert len(set(paths)) == 100
        t0 = time.monotonic()
        res = qcstack.concurrent_gets(px.port, paths, timeout=10)
        took = time.monotonic() - t0
        assert [r[0] for r in res] == [200] * 100, [r[0] for r in res]
        assert st.tax_stats() == 100
        assert 0.19 <= took < 1.0, took
        tax_normal()
        assert px.stop() == 0


def test_postgres_restart_under_load():
    tax_normal()
    with ready(qcstack.Proxy(st, redis="none", pg_timeout=1000)) as px:
        results, stop = [], threading.Event()

        def load():
            i = 0
            while not stop.is_set():
                i += 1
                t_sent = time.monotonic()
                try:
                    s, h, b, took = timed_get(px, quote_path(1 + i % 10), timeout=5)
                except OSError:
                    s, h, b, took = None, {}, b"", 5
                results.append((time.monotonic(), s, h, b, took, t_sent))
                time.sleep(0.01)

        t = threading.Thread(target=load)
        t.start()
        try:
            time.sleep(0.3)
            t_stopping = time.monotonic()
            st.stop_pg()
            t_down = time.monotonic()
            h = px.wait_health(postgres="down", timeout=5)
            assert h["status"] == "degraded", h
            time.sleep(1.0)
            st.start_pg()
            t_up = time.monotonic()
            px.wait_health(postgres="up", status="ok", timeout=10)
            qcstack.wait_until(lambda: results and results[-1][1] == 200, 10, "quotes again")
            t_ok = time.monotonic()
            time.sleep(0.2)
        finally:
            stop.set()
            t.join()
        before = [r for r in results if r[0] < t_stopping]
        # Sent once PostgreSQL was down: one sent before may have had its
        # rows already and be answered 200 later (its tax call, a busy box).
        during = [r for r in results if t_down + 0.1 < r[5] and r[0] < t_up]
        assert before and all(r[1] == 200 for r in before), [r[1] for r in before]
        assert len(during) >= 10, len(during)
        for _, s, h, b, took, _ in during:
            assert_json_error(s, h, b, (503, 504))
        assert max(r[4] for r in results) < 1.5, max(r[4] for r in results)  # never hangs
        assert t_ok - t_up < 5, t_ok - t_up  # recovers without a restart
        assert all(r[1] == 200 for r in results if r[0] > t_ok), \
            [r[1] for r in results if r[0] > t_ok]
        assert px.stop() == 0


def test_tax_deadline():
    tax_normal()
    with ready(qcstack.Proxy(st, redis="none", tax_timeout=300)) as px:
        st.tax_control(delay_ms=1500)
        s, h, b, took = timed_get(px, quote_path(3))
        assert_json_error(s, h, b, (504,), "tax_timeout")
        assert 0.25 <= took < 0.6, took
        # Several at once time out together, not one after the other.
        t0 = time.monotonic()
        res = qcstack.concurrent_gets(px.port, distinct_paths(20), timeout=5)
        assert [r[0] for r in res] == [504] * 20, [r[0] for r in res]
        assert time.monotonic() - t0 < 0.8
        tax_normal()
        s, h, b, took = timed_get(px, quote_path(3))
        assert s == 200, (s, b)
        # Late answers to the timed-out calls arrive while we exit.
        assert px.stop() == 0


def test_tax_failures_and_recovery():
    """drop-rate 1 -> 503/502, fail-rate 1 -> 502, service gone -> 503; all
    prompt; recovery without a restart; no error is ever cached."""
    tax_normal()
    with ready(qcstack.Proxy(st)) as px:
        cases = [(dict(drop_rate=1.0), (502, 503), quote_path(4)),
                 (dict(fail_rate=1.0), (502,), quote_path(5))]
        for ctl, statuses, path in cases:
            st.tax_control(**ctl)
            for _ in range(2):  # the second is not an error HIT
                s, h, b, took = timed_get(px, path)
                assert_json_error(s, h, b, statuses)
                assert h.get("x-cache") != "HIT", h
                assert took < 1.0, (ctl, took)
            tax_normal()
            s, h, b, _ = timed_get(px, path)
            assert s == 200 and h["x-cache"] == "MISS", (ctl, s, h, b)
            s, h, b2, _ = timed_get(px, path)
            assert s == 200 and h["x-cache"] == "HIT" and b2 == b
        st.stop_tax()
        try:
            s, h, b, took = timed_get(px, quote_path(6))
            assert_json_error(s, h, b, (503,))
            assert took < 1.0, took
            assert px.wait_health(tax="down")["status"] == "degraded"
        finally:
            st.start_tax()
        s, h, b, _ = timed_get(px, quote_path(6))
        assert s == 200 and h["x-cache"] == "MISS", (s, h, b)
        assert px.wait_health(tax="up")["status"] == "ok"
        assert px.stop() == 0


def test_stale_served_while_origin_fails():
    tax_normal()
    with ready(qcstack.Proxy(st, ttl=1, stale_ttl=30)) as px:
        pa, pb = quote_path(7, "EU", "gold", "GBP"), quote_path(8, "UK", "gold", "EUR")
        sa, ha, body_a, _ = timed_get(px, pa)
        sb, hb, body_b, _ = timed_get(px, pb)
        assert (sa, ha["x-cache"], sb, hb["x-cache"]) == (200, "MISS", 200, "MISS")
        time.sleep(1.3)
        # Tax failing: the expired copy is served STALE, twice (a failed
        # refresh must not throw the stale copy away).
        st.tax_control(fail_rate=1.0)
        for _ in range(2):
            s, h, b, took = timed_get(px, pa)
            assert (s, h.get("x-cache"), b) == (200, "STALE", body_a), (s, h, b)
            assert h.get("etag") == ha["etag"] and took < 1.0
            time.sleep(0.2)
        # PostgreSQL down: the same.
        tax_normal()
        st.stop_pg()
        try:
            for _ in range(2):
                s, h, b, took = timed_get(px, pb)
                assert (s, h.get("x-cache"), b) == (200, "STALE", body_b), (s, h, b)
                time.sleep(0.2)
            # No stale copy of this one: a prompt JSON 503/504.
            s, h, b, took = timed_get(px, quote_path(9))
            assert_json_error(s, h, b, (503, 504))
            assert took < 2.5, took
        finally:
            st.start_pg()
        px.wait_health(postgres="up", timeout=10)

        def fresh():
            s, h, b = px.get(pb)
            return s == 200 and h.get("x-cache") in ("MISS", "HIT")
        qcstack.wait_until(fresh, 10, "fresh quotes after PostgreSQL came back")
        assert px.stop() == 0


def test_sigterm_finishes_inflight():
    tax_normal()
    px = ready(qcstack.Proxy(st, redis="none"))
    try:
        st.tax_control(delay_ms=500)
        out = []
        t = threading.Thread(target=lambda: out.extend(
            qcstack.concurrent_gets(px.port, distinct_paths(20, tier="gold"), timeout=10)))
        t0 = time.monotonic()
        t.start()
        time.sleep(0.2)
        px.signal(signal.SIGTERM)
        time.sleep(0.1)
        # It stops accepting at once, while the 20 are still in flight.
        assert not qcstack.port_open(px.port)
        assert t.is_alive()
        t.join(15)
        took = time.monotonic() - t0
        assert [r[0] for r in out] == [200] * 20, [(r[0], r[2][:80]) for r in out]
        for s, h, b in out:
            assert json.loads(b)["tier"] == "gold"
        assert 0.45 < took < 3, took
        rc = px.proc.wait(10)
        assert rc == 0, (rc, px.stderr_text()[-3000:])
    finally:
        tax_normal()
        px.stop()


def tax_sockets(state):
    """Local ports of the proxy's TCP sockets to the tax simulator in state
    ('ESTAB' or 'TIME-WAIT'; TIME-WAIT stays on the side that closed)."""
    out = subprocess.run(["ss", "-tan"], capture_output=True, text=True, check=True).stdout
    port = ":%d" % st.tax_port
    return {f[3] for f in (line.split() for line in out.splitlines())
            if len(f) > 4 and f[0] == state and f[4].endswith(port)}


def test_tax_connections_are_kept_for_the_load():
    """A burst of 100 concurrent misses leaves its tax connections open,
    and the same burst again reuses them: no connection per call past a
    fixed idle bound (before: 64 kept, the rest closed into TIME_WAIT)."""
    tax_normal()
    px = ready(qcstack.Proxy(st, redis="none", workers=1))
    # Slow enough that all 100 calls of a burst are in flight at once.
    st.tax_control(delay_ms=300)
    try:
        paths = distinct_paths(100, tier="gold")
        h = {"Cache-Control": "no-cache"}
        res = qcstack.concurrent_gets(px.port, paths, headers=h, timeout=20)
        assert all(r[0] == 200 for r in res), [r[0] for r in res]
        open1 = tax_sockets("ESTAB")
        closed1 = tax_sockets("TIME-WAIT")
        calls0 = st.tax_stats()
        res = qcstack.concurrent_gets(px.port, paths, headers=h, timeout=20)
        assert all(r[0] == 200 for r in res), [r[0] for r in res]
        assert st.tax_stats() - calls0 == len(paths)
        open2 = tax_sockets("ESTAB")
        closed2 = tax_sockets("TIME-WAIT") - closed1
        print("  %d tax connections open after the first burst, %d after the second, %d "
              "closed by the proxy in between" % (len(open1), len(open2), len(closed2)),
              flush=True)
        assert len(open1) > 64, len(open1)
        # A couple of closes happen either way (both builds show 2 more
        # than the idle bound explains); the bound itself closed 36.
        assert len(closed2) <= 5, sorted(closed2)[:5]
        assert len(open2 - open1) <= 5, sorted(open2 - open1)[:5]
    finally:
        tax_normal()
        px.stop_clean()


if __name__ == "__main__":
    qctest.main(globals())
