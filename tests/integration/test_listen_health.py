#!/usr/bin/env python3
"""A LISTEN path that goes silent is found and handled (README, "While the
LISTEN path is down").

The silence is real: the PostgreSQL backend that holds the proxy's LISTEN is
stopped with SIGSTOP, so the TCP connection stays up and nothing comes on
it. The heartbeat on that connection must find it within about 3 s, drop
the connection and listen on a new one; a write committed meanwhile must not
be served stale past that. When no new connection can be made (the database
refuses connections), nothing read before may be trusted for more than about
a second, and the path must be back within 2 s of connections being allowed
again.

One proxy with one worker, so it alone is responsible for its cache (a
second instance would bump the shared generations for it)."""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

st = None
px = None
pool = []
LISTENING = ("SELECT pid FROM pg_stat_activity WHERE datname = 'pricing' "
             "AND query LIKE 'LISTEN%'")
DETECT_S = 3.5      # heartbeat every 1 s, answer expected within 2 s (+ load margin)
STALL_BOUND_S = 4.5  # a write during the silence: detection, then drop everything
DOWN_BOUND_S = 1.6   # a write while down: nothing is trusted past ~1 s


def setup_module():
    global st, px, pool
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=500, seed=1)
    # Without store-wide promotions a plain product's unit price is its list
    # price, so expected values need no reference query (psql may be unable
    # to connect while the test runs).
    st.psql("DELETE FROM promotions WHERE product_id IS NULL")
    pool = [int(x) for x in st.psql(
        "SELECT p.id FROM products p JOIN regional_prices rp ON rp.product_id = p.id "
        "AND rp.region = 'US' WHERE p.active AND NOT EXISTS (SELECT 1 FROM promotions pr "
        "WHERE pr.product_id = p.id OR pr.product_id IS NULL) AND NOT EXISTS (SELECT 1 "
        "FROM tier_discounts td WHERE td.product_id = p.id AND td.tier = 'standard') "
        "ORDER BY p.id LIMIT 20").split()]
    assert len(pool) >= 6, pool
    px = qcstack.Proxy(st, workers=1, ttl=300).ready()


def teardown_module():
    if st is not None:
        st.stop()


def unit(pid):
    s, h, doc = px.quote(pid)
    assert s == 200, (s, doc)
    return doc["unit_price_cents"], h.get("x-cache")


def warm(pid):
    unit(pid)
    u, xc = unit(pid)
    assert xc == "HIT", xc
    return u


def raise_price(session, pid, by):
    session.run("UPDATE regional_prices SET list_price_cents = list_price_cents + %d "
                "WHERE product_id = %d AND region = 'US';" % (by, pid))


def wait_price(pid, want, t0, limit, what):
    """Poll about every 10 ms until the proxy answers `want`; the lag."""
    while True:
        got, xc = unit(pid)
        if got == want:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < limit, \
            "%s: still %s (%s) after %.1fs, want %s" % (what, got, xc, limit, want)
        time.sleep(0.01)


def listen_backend():
    pids = [int(x) for x in st.psql(LISTENING).split()]
    assert len(pids) == 1, pids
    return pids[0]


def invalidation_state():
    """'up' / 'down' from /healthz, or None if this build does not say."""
    return px.health().get("invalidation")


def log_has(text, since):
    return text in px.stderr_text()[since:]


def wait_for(pred, limit, what):
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < limit, "%s not within %.1fs" % (what, limit)
        time.sleep(0.02)
    return time.monotonic() - t0


def resume(bpid):
    """SIGCONT, then make sure the stopped backend is gone."""
    try:
        os.kill(bpid, signal.SIGCONT)
    except ProcessLookupError:
        return
    try:
        st.psql("SELECT pg_terminate_backend(%d, 2000)" % bpid, db="postgres")
    except RuntimeError:
        pass


def test_stopped_listen_backend_is_replaced():
    pid = pool.pop(0)
    before = warm(pid)
    bpid = listen_backend()
    mark = len(px.stderr_text())
    os.kill(bpid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents + 1000 "
                "WHERE product_id = %d AND region = 'US'" % pid)
        wait_for(lambda: log_has("heartbeat", mark), DETECT_S, "heartbeat failure")
        found = time.monotonic() - t0
        lag = wait_price(pid, before + 1000, t0, STALL_BOUND_S,
                         "write made while the LISTEN backend was stopped")
        # A new LISTEN connection (a new backend) is in place.
        wait_for(lambda: st.psql(LISTENING).split() not in ([], [str(bpid)]),
                 2.0, "a new LISTEN backend")
        if invalidation_state() is not None:
            wait_for(lambda: invalidation_state() == "up", 2.0, "invalidation up again")
        print("  heartbeat failure logged %.2fs after SIGSTOP; write served after %.2fs"
              % (found, lag), flush=True)
    finally:
        resume(bpid)
    # Still listening for real: a later write arrives at notification speed.
    before = warm(pid)
    raise_price_t0 = time.monotonic()
    st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents + 7 "
            "WHERE product_id = %d AND region = 'US'" % pid)
    lag = wait_price(pid, before + 7, raise_price_t0, 1.0, "write after the replacement")
    print("  write after the replacement served after %.0f ms" % (lag * 1000))


def test_listen_down_caps_trust_and_comes_back():
    a, b = pool.pop(0), pool.pop(0)
    price_a, price_b = warm(a), warm(b)
    session = qcstack.HeldSession(st)
    bpid = listen_backend()
    mark = len(px.stderr_text())
    refused = False
    try:
        st.psql("ALTER DATABASE pricing ALLOW_CONNECTIONS false", db="postgres")
        refused = True
        os.kill(bpid, signal.SIGSTOP)
        t0 = time.monotonic()
        raise_price(session, a, 1000)
        wait_for(lambda: log_has("heartbeat", mark), DETECT_S, "heartbeat failure")
        found = time.monotonic() - t0
        if invalidation_state() is not None:
            wait_for(lambda: invalidation_state() == "down", 0.5, "invalidation down")
        lag_a = wait_price(a, price_a + 1000, t0, STALL_BOUND_S,
                           "write made while the LISTEN backend was stopped")
        # Down for good now (no connection can be made): writes are still
        # served within about a second, on warm copies too.
        time.sleep(1.0)
        assert invalidation_state() in (None, "down"), px.health()
        assert unit(b)[0] == price_b
        t1 = time.monotonic()
        raise_price(session, b, 2000)
        lag_b = wait_price(b, price_b + 2000, t1, DOWN_BOUND_S, "write while LISTEN is down")
        price_b += 2000
        # Warm again while down: at most ~1 s of trust, so hits are rare but
        # answers are right.
        assert unit(b)[0] == price_b
        print("  down detected %.2fs after SIGSTOP; writes served after %.2fs (during the "
              "silence) and %.2fs (while down)" % (found, lag_a, lag_b), flush=True)
        st.psql("ALTER DATABASE pricing ALLOW_CONNECTIONS true", db="postgres")
        refused = False
        t2 = time.monotonic()
        wait_for(lambda: st.psql(LISTENING).split() not in ([], [str(bpid)]),
                 2.0, "LISTEN back within 2 s of connections being allowed")
        back = time.monotonic() - t2
        if invalidation_state() is not None:
            wait_for(lambda: invalidation_state() == "up", 2.0 - back, "invalidation up")
        print("  LISTEN back %.2fs after connections were allowed again" % back)
    finally:
        if refused:
            st.psql("ALTER DATABASE pricing ALLOW_CONNECTIONS true", db="postgres")
        resume(bpid)
        session.close()
    # Trusted again: a warm copy stays a HIT, and writes arrive by notification.
    price_b = warm(b)
    time.sleep(1.5)
    assert unit(b) == (price_b, "HIT")
    t3 = time.monotonic()
    st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents + 3 "
            "WHERE product_id = %d AND region = 'US'" % b)
    wait_price(b, price_b + 3, t3, 1.0, "write after LISTEN came back")


def test_proxy_exits_cleanly():
    px.stop_clean()


qctest.main(globals())
