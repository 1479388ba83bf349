#!/usr/bin/env python3
"""quotecache on Redis Cluster: a master restarted in place (SIGKILL, then
started again on its port and dir before the cluster fails it over) comes
back as the same node id serving the same slots, with the data of its last
snapshot (dump.rdb, loaded at start whatever --save says). Its counters and
entries are then those of an older moment: an entry and the counters it
was stored under agree again, although a write acknowledged since moved
the counter on. Nothing in the slot map shows it (same address, same id,
same slots): quotecache must tell it from the node's new run_id, as the
single-node guard does, and never serve the superseded quote.

Shares test_cluster's stack helpers (its setup_module: the 3+3 cluster, two
instances, the SQL reference)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
import test_cluster as tc  # noqa: E402
from qctest import qcstack  # noqa: E402


def setup_module():
    tc.setup_module()


def teardown_module():
    tc.teardown_module()


def test_master_restarted_from_an_old_snapshot_serves_no_superseded_quote():
    cl, st = tc.cl, tc.st
    dims_port = cl.master_of_slot(cl.keyslot("{dims}"))["port"]
    by = tc.split_by_master(tc.take(30))
    port = next(p for p in by if p != dims_port)
    victim = cl.node(port)
    key = (by[port][0], "US", "standard", "USD")
    tc.warm([key])
    old = tc.refs([key])[key]
    # The snapshot holds the entry and its counters as they are now.
    assert cl.cmd(victim, "SAVE") == "OK"
    st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents + 333 "
            "WHERE region = 'US' AND product_id = %d" % key[0])
    new = tc.refs([key])[key]
    assert tc.project(new) != tc.project(old)
    tc.wait_all([key], {key: new}, time.monotonic(), 1.0, "price write")
    tc.warm([key])  # the new quote stored, at the bumped counter
    vid = cl.node_id(victim)
    cl.stop_node(victim, kill=True)
    cl._spawn(victim)  # at once: well inside --cluster-node-timeout
    qcstack.wait_until(lambda: cl.cmd(victim, "PING") == "PONG", 10, "restarted node")
    cl.wait_ok(30)
    assert cl.node_id(victim) == vid
    assert cl.master_of_slot(tc.slot_of(key[0]))["port"] == port, "it was failed over"
    assert cl.cmd(victim, "DBSIZE") > 0, "the snapshot was not loaded"
    # Past the in-process tier's 500 ms: each answer comes from Redis again.
    t0 = time.monotonic()
    seen = []
    while time.monotonic() - t0 < 3.0:
        for i, p in enumerate((tc.px1, tc.px2)):
            s, xc, doc = tc.get(p, key)
            seen.append((round(time.monotonic() - t0, 2), i + 1, s, xc))
            if s == 200:
                assert tc.project(doc) == tc.project(new), (
                    "px%d served the superseded quote %.2f s after the restart (%s)"
                    % (i + 1, time.monotonic() - t0, xc), seen[-8:])
        time.sleep(0.05)
    assert any(x[2] == 200 and x[3] == "HIT" for x in seen[-10:]), (
        "no Redis hit again after the restart", seen[-10:])


def test_proxies_exit_cleanly():
    tc.test_proxies_exit_cleanly()


if __name__ == "__main__":
    qctest.main(globals())
