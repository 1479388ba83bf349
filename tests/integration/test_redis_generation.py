#!/usr/bin/env python3
"""The shared cache survives starts and reconnects (issue 8, item 2): the
global generation moves only when invalidations may really have been
missed: this process could not apply a change notification to Redis, or
Redis lost data (restarted empty, or from a snapshot older than what we saw).
And the opposite: whatever Redis comes back with, no superseded quote is
served, and the counters never go back below what a process has seen."""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

GEN = "qc:v1:gen"
st = None
products = []


def setup_module():
    global st, products
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=2000)
    products = [int(x) for x in st.psql(
        "SELECT p.id FROM products p JOIN regional_prices rp ON rp.product_id = p.id "
        "AND rp.region = 'US' WHERE p.active AND NOT EXISTS (SELECT 1 FROM promotions pr "
        "WHERE pr.product_id = p.id) ORDER BY p.id LIMIT 60").split()]


def teardown_module():
    if st is not None:
        st.stop()


def take(n=1):
    out = products[:n]
    del products[:n]
    return out


def qpath(pid):
    return "/quote/%d?region=US&tier=gold" % pid


def gen():
    v = st.redis_cli("GET", GEN).strip()
    return int(v) if v else 0


def warm(p, pids):
    """Each key loaded once and then a HIT (from Redis or the hot tier)."""
    bodies = {}
    for pid in pids:
        s, _, b = p.get(qpath(pid))
        assert s == 200, (s, b)
        bodies[pid] = b
        qcstack.wait_until(lambda: p.get(qpath(pid))[1].get("x-cache") == "HIT", 5,
                           "HIT for %d" % pid, p.proc)
    return bodies


def assert_all_hits(p, bodies, what):
    st.tax_reset()
    # Past the 500 ms of the in-process tier: these HITs are Redis reads.
    time.sleep(0.6)
    for pid, body in bodies.items():
        s, h, b = p.get(qpath(pid))
        assert s == 200 and b == body, (what, pid, s, b)
        assert h.get("x-cache") == "HIT", (what, pid, h.get("x-cache"))
    assert st.tax_stats() == 0, (what, "tax calls", st.tax_stats())


def redis_clients(kind):
    out = st.redis_cli("CLIENT", "LIST", "TYPE", kind)
    return [ln for ln in out.splitlines() if ln.strip()]


def kill_clients(kind):
    """Drops every connection of a type (normal: command connections; pubsub:
    subscribers); returns how many Redis dropped."""
    n = int(st.redis_cli("CLIENT", "KILL", "TYPE", kind).strip() or 0)
    return n


def wait_reconnected(p, n_normal):
    qcstack.wait_until(lambda: len(redis_clients("normal")) >= n_normal, 5,
                       "command connections back")
    p.wait_health(redis="up", timeout=5)


def test_start_restart_and_reconnect_keep_hits():
    a = b = None
    try:
        a = qcstack.Proxy(st, workers=2).ready()
        a.wait_health(redis="up")
        bodies = warm(a, take(8))
        g0 = gen()
        assert_all_hits(a, bodies, "warm")

        b = qcstack.Proxy(st, workers=2).ready()
        b.wait_health(redis="up")
        assert_all_hits(a, bodies, "after B started")
        assert_all_hits(b, bodies, "B reads A's keys")
        b.stop_clean()
        b.start()
        b.ready()
        b.wait_health(redis="up")
        assert_all_hits(a, bodies, "after B restarted")

        # Every command and subscriber connection of both instances reconnects.
        assert kill_clients("normal") >= 4
        kill_clients("pubsub")
        wait_reconnected(a, 4)
        time.sleep(0.3)
        assert_all_hits(a, bodies, "after A's connections were killed")
        assert_all_hits(b, bodies, "after B's connections were killed")
        assert gen() == g0, ("global generation moved", g0, gen())
        b.stop_clean()
        a.stop_clean()
    finally:
        for p in (a, b):
            if p is not None and p.running():
                p.kill()


def test_snapshot_from_before_an_invalidation_is_not_served():
    """Redis saves, a price changes (the bump reaches Redis), Redis dies and
    comes back from the snapshot: counters and entries from before the
    write. The quote served is the new one, on the instance that saw the
    write and on one started afterwards."""
    a = qcstack.Proxy(st).ready()
    try:
        (pid,) = take()
        old = warm(a, [pid])[pid]
        st.redis_cli("SAVE")
        st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents + 101 "
                "WHERE product_id = %d AND region = 'US'" % pid)
        qcstack.wait_until(lambda: a.get(qpath(pid))[2] != old, 2, "write served")
        new = a.get(qpath(pid))[2]
        st.stop_redis(kill=True)
        a.wait_health(redis="down", timeout=5)
        st.start_redis()  # loads dump.rdb: the pre-write entry, the pre-write counters
        a.wait_health(redis="up", timeout=10)
        for _ in range(3):
            s, h, body = a.get(qpath(pid))
            assert s == 200 and body == new, ("pre-write quote served", h, body)
        c = qcstack.Proxy(st).ready()
        c.wait_health(redis="up")
        s, h, body = c.get(qpath(pid))
        assert s == 200 and body == new, ("pre-write quote served to a new instance", h, body)
        c.stop_clean()
        a.stop_clean()
    finally:
        if a.running():
            a.kill()
        dump = os.path.join(st.dir, "redis", "dump.rdb")
        if os.path.exists(dump):
            os.unlink(dump)


def test_empty_restart_never_takes_counters_back():
    """Redis comes back empty: the global generation starts above anything
    the proxy has seen, so no load begun under the old counters can pass
    the fence, and the answers are correct."""
    a = qcstack.Proxy(st, workers=2).ready()
    try:
        (pid,) = take()
        warm(a, [pid])
        for _ in range(5):
            st.redis_cli("INCR", GEN)  # as five global invalidations would
        seen = gen()
        # The proxy sees the new counter on its next read.
        qcstack.wait_until(lambda: a.get(qpath(pid))[1].get("x-cache") == "HIT", 5,
                           "reloaded under the new generation", a.proc)
        time.sleep(0.6)
        a.get(qpath(pid))
        a.get(qpath(pid))
        st.stop_redis(kill=True)
        a.wait_health(redis="down", timeout=5)
        dump = os.path.join(st.dir, "redis", "dump.rdb")
        if os.path.exists(dump):
            os.unlink(dump)
        st.start_redis()
        a.wait_health(redis="up", timeout=10)
        qcstack.wait_until(lambda: len(redis_clients("normal")) >= 2, 5, "both workers back")
        time.sleep(0.2)
        assert gen() > seen, ("global generation went back", seen, gen())
        s, h, body = a.get(qpath(pid))
        assert s == 200, (s, body)
        a.stop_clean()
    finally:
        if a.running():
            a.kill()


def redis_cli_auth(password, *args):
    r = subprocess.run(["redis-cli", "--no-auth-warning", "-a", password, "-h", "127.0.0.1",
                        "-p", str(st.redis_port)] + [str(x) for x in args],
                       capture_output=True, timeout=30)
    return r.stdout.decode(errors="replace").strip()


def test_invalidation_missed_while_away_is_paid_on_reconnect():
    """Redis stays up with its data, but this instance cannot use it (its
    connections were dropped and new ones are refused): a price changes
    meanwhile, the bump cannot be applied. Once it reconnects to the same
    Redis (no restart), the old quote is not served."""
    a = qcstack.Proxy(st).ready()
    try:
        (pid,) = take()
        old = warm(a, [pid])[pid]
        st.redis_cli("CONFIG", "SET", "requirepass", "qc-test-secret")
        try:
            redis_cli_auth("qc-test-secret", "CLIENT", "KILL", "TYPE", "normal")
            redis_cli_auth("qc-test-secret", "CLIENT", "KILL", "TYPE", "pubsub")
            a.wait_health(redis="down", timeout=5)
            st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents + 77 "
                    "WHERE product_id = %d AND region = 'US'" % pid)
            time.sleep(0.5)  # the notification arrives while Redis refuses us
            assert a.health()["redis"] == "down", a.health()
        finally:
            redis_cli_auth("qc-test-secret", "CONFIG", "SET", "requirepass", "")
        a.wait_health(redis="up", timeout=10)
        time.sleep(0.6)  # past the in-process tier
        for _ in range(3):
            s, h, body = a.get(qpath(pid))
            assert s == 200 and body != old, ("pre-write quote served", h, body)
        a.stop_clean()
    finally:
        if a.running():
            a.kill()


def product_gen(pid):
    v = st.redis_cli("GET", "qc:v1:{%d}:gen" % pid).strip()
    return int(v) if v else 0


def incr_calls():
    """INCRs Redis has run so far, inside scripts or not."""
    out = st.redis_cli("INFO", "commandstats")
    for line in out.splitlines():
        if line.startswith("cmdstat_incr:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def test_one_write_costs_one_bump():
    """2 instances x 2 workers all LISTEN; one committed write to one
    product bumps its generation once in Redis, not once per worker (the
    payload names the transaction, and a bump is made once per transaction
    and product for the whole fleet). A transaction over three products:
    three bumps. Every worker still drops its own in-process copies."""
    a = qcstack.Proxy(st, workers=2).ready()
    b = qcstack.Proxy(st, workers=2).ready()
    try:
        pids = take(4)
        old = warm(a, pids)
        warm(b, pids)
        time.sleep(0.5)  # every worker LISTENing (each loaded the catalog)
        g0, c0 = [product_gen(x) for x in pids], incr_calls()
        st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents + 3 "
                "WHERE product_id = %d AND region = 'US'" % pids[0])
        time.sleep(1.0)
        one = product_gen(pids[0]) - g0[0]
        one_incrs = incr_calls() - c0
        st.psql("BEGIN; UPDATE regional_prices SET list_price_cents = list_price_cents + 5 "
                "WHERE product_id IN (%d, %d, %d) AND region = 'US'; "
                "UPDATE tier_discounts SET discount_bp = discount_bp WHERE product_id = %d; "
                "COMMIT;" % (pids[1], pids[2], pids[3], pids[1]))
        time.sleep(1.0)
        three = [product_gen(x) - g for x, g in zip(pids[1:], g0[1:])]
        incrs = incr_calls() - c0 - one_incrs
        print("bumps per write with 2 instances x 2 workers: %d (INCRs run: %d); "
              "3-product transaction: %s (INCRs run: %d)" % (one, one_incrs, three, incrs),
              flush=True)
        assert one == 1, ("bumps for one write", one)
        assert three == [1, 1, 1], ("bumps for a 3-product transaction", three)
        for p in (a, b):
            for x in pids:
                s, h, body = p.get(qpath(x))
                assert s == 200 and body != old[x], ("pre-write quote served", x, h)
        a.stop_clean()
        b.stop_clean()
    finally:
        for p in (a, b):
            if p.running():
                p.kill()


def test_old_payloads_still_invalidate():
    """Triggers installed by an older quotecache send "<table>:<product>"
    without the transaction: still one invalidation per notification."""
    a = qcstack.Proxy(st).ready()
    try:
        pids = take(2)
        warm(a, pids)
        for pid, payload in ((pids[0], "regional_prices:%d" % pids[0]),
                             (pids[1], "volume_breaks:x1:%d" % pids[1])):
            g = product_gen(pid)
            st.psql("SELECT pg_notify('quotecache', '%s')" % payload)
            qcstack.wait_until(lambda: product_gen(pid) == g + 1, 2, "bump for " + payload)
            s, h, _ = a.get(qpath(pid))
            assert s == 200 and h.get("x-cache") == "MISS", (payload, h.get("x-cache"))
        a.stop_clean()
    finally:
        if a.running():
            a.kill()


def notified_payloads(pid):
    """The payloads one UPDATE of pid's US price sends, seen by psql."""
    sql = ("LISTEN quotecache;\nUPDATE regional_prices SET list_price_cents = list_price_cents "
           "WHERE product_id = %d AND region = 'US';\nSELECT 1;\n" % pid)
    r = subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(st.pg_port), "-U", "postgres",
                        "-d", "pricing"], input=sql.encode(), capture_output=True, timeout=30)
    return [ln.split('payload "')[1].split('"')[0] for ln in r.stdout.decode().splitlines()
            if 'payload "' in ln]


def test_install_triggers_upgrades_old_ones():
    """A database with the older trigger (two-field payload) gets the
    transaction in its payloads after --install-triggers."""
    (pid,) = take()
    st.psql("DROP TRIGGER quotecache_notify ON regional_prices; CREATE TRIGGER "
            "quotecache_notify AFTER INSERT OR UPDATE OR DELETE ON regional_prices FOR EACH ROW "
            "EXECUTE FUNCTION quotecache_notify_row('product_id');")
    assert notified_payloads(pid) == ["regional_prices:%d" % pid], notified_payloads(pid)
    r = subprocess.run([os.path.join(qcstack.build_dir(), "quotecache"), "--postgres",
                        st.conninfo, "--install-triggers"], capture_output=True, timeout=30)
    assert r.returncode == 0, r
    got = notified_payloads(pid)
    assert len(got) == 1 and got[0].startswith("regional_prices:"), got
    table, txid, product = got[0].split(":")
    assert txid.isdigit() and product == str(pid), got


if __name__ == "__main__":
    qctest.main(globals())
