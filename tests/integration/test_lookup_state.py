#!/usr/bin/env python3
"""The load state machine is visible and counted (issue 8 "Design: make the
state visible", issue 15 item 3): with --log-level debug every transition of
a load is logged with its key; /metrics counts the loads started and the
loads avoided by the check after the lock (an instance that wins the lock
for a key another instance has just stored answers from the stored value).

Real redis-server, PostgreSQL and tax simulator (scripts/qcstack.py); b's
lock attempts reach Redis 400 ms late through delayproxy.py, after a has
loaded, stored and released, so b wins locks for stored keys."""

import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402
from delayproxy import DelayProxy  # noqa: E402

st = None
pids = []


def setup_module():
    global st, pids
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=500)
    pids = [int(x) for x in st.psql(
        "SELECT p.id FROM products p JOIN regional_prices rp ON rp.product_id = p.id "
        "AND rp.region = 'US' WHERE p.active ORDER BY p.id LIMIT 4").split()]
    assert len(pids) == 4, pids


def teardown_module():
    if st is not None:
        st.stop()


def metric(px, name):
    _, _, body = px.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("metric %s missing" % name)


def test_transitions_logged_and_loads_avoided_counted():
    dp = DelayProxy(st.redis_port)
    a = qcstack.Proxy(st, log_level="debug").ready()
    b = qcstack.Proxy(st, redis=dp.addr, redis_timeout=3000).ready()
    try:
        paths = ["/quote/%d?region=US&tier=gold" % p for p in pids]
        st.tax_reset()
        dp.nx_send_delay = 0.4
        for path in paths:
            got = []
            t = threading.Thread(target=lambda p=path: got.append(b.get(p, timeout=10)))
            t.start()  # b misses; its lock attempt is held back 400 ms
            time.sleep(0.05)
            s, h, _ = a.get(path)  # a loads, stores and releases meanwhile
            assert s == 200 and h.get("x-cache") == "MISS", (path, s, h)
            t.join(10)
            s, h, _ = got[0]
            assert s == 200 and h.get("x-cache") == "COALESCED", (path, s, h)
        assert dp.times("nx-forwarded"), "b never tried the lock"
        assert st.tax_stats() == len(paths), st.tax_stats()
        assert metric(a, "quotecache_origin_loads_total") == len(paths)
        assert metric(b, "quotecache_origin_loads_total") == 0
        assert metric(b, "quotecache_loads_avoided_total") == len(paths)
        dp.nx_send_delay = 0
        a.stop_clean()
        log = a.stderr_text()
        for path, pid in zip(paths, pids):
            key = r"qc:v1:\{%d\}:[0-9a-f]{32}" % pid
            for step in (r"NEW -> LOCKING", r"LOCKING -> LOADING \(locked\)",
                         r"LOADING -> STORING \(locked\)", r"STORING -> DONE \(locked\)"):
                assert re.search(r"debug: lookup %s: %s" % (key, step), log), (pid, step)
        b.stop_clean()
    finally:
        a.kill()
        b.kill()
        dp.close()


def test_no_cache_reaches_every_worker():
    """Issue 8 item 8 (read your own write) with --workers 2: both workers
    hold the key in process; a price change commits (its trigger dropped,
    so only the no-cache rule can pass this); after a no-cache GET shows
    the new price, plain GETs on new connections (either worker) never get
    the older in-process copy: the store's announcement drops the copies of
    every worker."""
    p = qcstack.Proxy(st, workers=2).ready()
    pid = pids[-1]
    path = "/quote/%d?region=US&tier=silver" % pid
    st.psql("DROP TRIGGER quotecache_notify ON regional_prices")
    try:
        s, h, old = p.get(path)
        assert s == 200, (s, h)
        for _ in range(40):  # new connections: both workers copy it in process
            s, h, b = p.get(path)
            assert s == 200 and b == old and h.get("x-cache") == "HIT", (s, h)
        st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents + 100 "
                "WHERE product_id = %d AND region = 'US'" % pid)
        s, h, new = p.get(path, headers={"Cache-Control": "no-cache"})
        assert s == 200 and new != old, ("no-cache did not read its own write", s, h)
        t_new = time.monotonic()
        seen = [p.get(path)[2] for _ in range(20)]
        assert time.monotonic() - t_new < 0.45, "too slow: in-process copies expire by themselves"
        assert all(b == new for b in seen), "%d of 20 plain GETs got the older copy" % (
            sum(b == old for b in seen))
        p.stop_clean()
    finally:
        st.psql_file(os.path.join(qcstack.SRC, "scripts", "sql", "triggers.sql"))
        p.kill()


if __name__ == "__main__":
    qctest.main(globals())
