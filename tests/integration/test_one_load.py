#!/usr/bin/env python3
"""Exactly one origin load per key across instances (issue 15), also when a
request arrives just as the other instance's load finishes: two instances,
300 cold keys, each key requested on both at the same moment (the two
requests written back to back on pre-opened connections, well within 1 ms),
20 rounds of 15 new keys: tax calls equal the number of keys, exactly
(three such sets of 300 keys). The
same right after an invalidation of all of them (one product-scoped write
per product, 50 products, separate transactions): one reload per key, in
each of three cycles. Each instance runs two workers (each its own Redis
client and LISTEN), so a key has four possible loaders and a write four
bumps.

Real redis-server, PostgreSQL and tax simulator (scripts/qcstack.py)."""

import os
import random
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402
from delayproxy import DelayProxy  # noqa: E402

N_PRODUCTS = 50
TIERS = ("standard", "silver", "gold")
CURRENCIES = ("USD", "EUR")  # of the keys invalidated and reloaded
ROUNDS = 20
WORKERS = 1
# The cold test runs over three sets of 300 keys (one per pair of
# currencies): the race is a matter of timing, three sets press it harder.
COLD_SETS = (("USD", "EUR"), ("GBP", "JPY"), ("CAD", "AUD"))
CYCLES = 3  # invalidate-and-reload cycles: the race is a matter of timing
st = None
a = b = None
keys = []  # 300 quotable paths: 50 products x 3 tiers x 2 currencies
pids = []
cold = {}  # path -> body of the cold load


def setup_module():
    global st, a, b, keys, pids
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=2000)
    pids = [int(x) for x in st.psql(
        "SELECT p.id FROM products p JOIN regional_prices rp ON rp.product_id = p.id "
        "AND rp.region = 'US' WHERE p.active AND NOT EXISTS (SELECT 1 FROM promotions pr "
        "WHERE pr.product_id = p.id) ORDER BY p.id LIMIT %d" % N_PRODUCTS).split()]
    assert len(pids) == N_PRODUCTS, pids
    keys = key_set(CURRENCIES)
    a = all_workers_ready(qcstack.Proxy(st, workers=WORKERS).ready())
    b = all_workers_ready(qcstack.Proxy(st, workers=WORKERS).ready())


def key_set(currencies):
    """300 quotable paths: 50 products x 3 tiers x 2 currencies, shuffled
    so that a round mixes products."""
    out = ["/quote/%d?region=US&tier=%s&currency=%s" % (p, t, c)
           for p in pids for t in TIERS for c in currencies]
    random.Random(15).shuffle(out)
    return out


def all_workers_ready(px):
    """/healthz is answered by one worker; until every worker has its
    catalog, quotes on the others are 503. A product that does not exist
    costs no tax call: 20 answers in a row that are not 503, each on a new
    connection (the kernel spreads them over the workers), say all are up."""
    path = "/quote/999999999?region=US&tier=standard"
    streak, deadline = 0, time.monotonic() + 15
    while streak < 20:
        assert time.monotonic() < deadline, "a worker never loaded its catalog"
        streak = streak + 1 if px.get(path)[0] != 503 else 0
        if streak == 0:
            time.sleep(0.05)
    return px


def teardown_module():
    if st is not None:
        st.stop()


def paired(paths, timeout=10, a=None, b=None):
    """Requests every path on both instances at the same moment: all
    connections are opened first, then for each path the two requests are
    written back to back (alternating which instance goes first). Returns
    ([(answer on a, answer on b)], [gap between the two writes of each
    path, in seconds])."""
    a, b = a or globals()["a"], b or globals()["b"]
    conns = []
    for _ in paths:
        conns.append((socket.create_connection(("127.0.0.1", a.port)),
                      socket.create_connection(("127.0.0.1", b.port))))
    reqs = [("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % p).encode()
            for p in paths]
    gaps = []
    for i, (sa, sb) in enumerate(conns):
        first, second = (sa, sb) if i % 2 == 0 else (sb, sa)
        t0 = time.perf_counter()
        first.sendall(reqs[i])
        second.sendall(reqs[i])
        gaps.append(time.perf_counter() - t0)
    sel = selectors.DefaultSelector()
    bufs = {}
    for sa, sb in conns:
        for s in (sa, sb):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            bufs[s] = bytearray()
    pending = len(bufs)
    deadline = time.monotonic() + timeout
    try:
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                try:
                    chunk = key.fileobj.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    bufs[key.fileobj] += chunk
                else:
                    sel.unregister(key.fileobj)
                    pending -= 1
    finally:
        sel.close()
        for sa, sb in conns:
            sa.close()
            sb.close()
    out = [(qcstack.parse_response(bytes(bufs[sa])), qcstack.parse_response(bytes(bufs[sb])))
           for sa, sb in conns]
    return out, gaps


def run_rounds(paths, agree=True):
    """ROUNDS rounds of paired requests over `paths`; checks every answer is
    a 200 and (agree) that both instances gave the same body. Returns
    {path: body on a}."""
    per = len(paths) // ROUNDS
    bodies, gaps = {}, []
    for r in range(ROUNDS):
        chunk = paths[r * per:(r + 1) * per]
        res, g = paired(chunk)
        gaps += g
        for path, (ra, rb) in zip(chunk, res):
            assert ra[0] == 200 and rb[0] == 200, (path, ra[0], rb[0], ra[2][:80], rb[2][:80])
            assert not agree or ra[2] == rb[2], (path, ra[2], rb[2])
            bodies[path] = ra[2]
    # The answers must be right however far apart the two requests are; the
    # gap only says how hard the race was pressed. On a busy machine the
    # test process can be preempted between two writes now and then.
    late = [g for g in gaps if g >= 0.001]
    print("pairs: %d, median gap %.3f ms, %d at 1 ms or more (max %.2f ms)"
          % (len(gaps), sorted(gaps)[len(gaps) // 2] * 1000, len(late), max(gaps) * 1000))
    assert len(late) <= len(gaps) // 4, "too many pairs 1 ms apart or more: %d" % len(late)
    return bodies


def test_cold_keys_on_two_instances_load_once():
    """Issue 15, test 1 (check after the lock): 300 cold keys, each requested
    on both instances at once, 20 rounds of 15: one tax call per key. Three
    such sets of 300 keys, each checked."""
    per_set = []
    for currencies in COLD_SETS:
        paths = keys if currencies == CURRENCIES else key_set(currencies)
        assert len(paths) == 300 and len(set(paths)) == 300
        st.tax_reset()
        bodies = run_rounds(paths)
        if paths is keys:
            cold.update(bodies)
        per_set.append(st.tax_stats())
    assert per_set == [300] * len(COLD_SETS), (
        "tax calls per set of 300 cold keys: %s (%d keys loaded twice)"
        % (per_set, sum(per_set) - 300 * len(COLD_SETS)))


def test_invalidated_keys_reload_once():
    """Issue 15, test 2 (one reload per changed key after an invalidation):
    a product-scoped write for each of the 50 products (separate
    transactions), then the 300 keys requested right away on both instances
    at once: one reload per key, and every answer after it is the new
    price. Three cycles, each checked."""
    if not cold:
        qctest.skip("needs the cold keys of the previous test")
    before = dict(cold)
    per_cycle, repeats = [], []
    for _ in range(CYCLES):
        st.tax_reset()
        retried = qctest.load_retries((a, b))
        st.psql("".join("UPDATE regional_prices SET list_price_cents = list_price_cents + 100 "
                        "WHERE product_id = %d AND region = 'US';\n" % p for p in pids))
        # Within 1 s of a write an instance may still answer the old price.
        run_rounds(keys, agree=False)
        # Keys asked before their invalidation had arrived got the old copy
        # and load now; the rest must be cached: one load per key in all.
        time.sleep(1.1)
        after = run_rounds(keys)
        stale = [p for p in keys if after[p] == before[p]]
        assert not stale, "%d keys still answer the pre-write price: %s" % (
            len(stale), stale[:3])
        before = after
        repeats.append(qctest.load_retries((a, b)) - retried)
        per_cycle.append(st.tax_stats() - repeats[-1])
    # A load that a write overtook (its worker heard of a product's bump
    # while loading it, or its store was fenced) loads the same key again:
    # the window README and issue 15's note describe. Those repeats are
    # counted by the proxy and reported apart; every other key loads once.
    print("reloads per cycle %s, repeated loads %s" % (per_cycle, repeats))
    assert per_cycle == [len(keys)] * CYCLES, (
        "tax calls per cycle, less repeats, %s to reload %d keys each (extra reloads: %d)"
        % (per_cycle, len(keys), sum(per_cycle) - CYCLES * len(keys)))
    assert all(r <= len(keys) // 100 for r in repeats), repeats


def test_lock_won_after_the_value_landed():
    """Issue 15, item 1 (check after the lock), made deterministic: b's lock
    attempts reach Redis 100 ms late (delayproxy), after a has loaded,
    stored and released the lock, so b wins a lock for a key whose value is
    already there. Winning must not mean loading: one tax call per key."""
    dp = DelayProxy(st.redis_port)
    a2 = qcstack.Proxy(st).ready()
    b2 = qcstack.Proxy(st, redis=dp.addr, redis_timeout=3000).ready()
    try:
        paths = ["/quote/%d?region=US&tier=platinum&currency=%s" % (p, c)
                 for p in pids[:5] for c in CURRENCIES]
        dp.nx_send_delay = 0.1
        st.tax_reset()
        res, _ = paired(paths, a=a2, b=b2)
        for path, (ra, rb) in zip(paths, res):
            assert ra[0] == 200 and rb[0] == 200, (path, ra[0], rb[0], ra[2][:80], rb[2][:80])
            assert ra[2] == rb[2], path
        assert dp.times("nx-forwarded"), "b never tried the lock"
        calls = st.tax_stats()
        assert calls == len(paths), "%d tax calls for %d keys (b loaded again after winning " \
            "the lock for a stored key)" % (calls, len(paths))
        dp.nx_send_delay = 0
        a2.stop_clean()
        b2.stop_clean()
    finally:
        a2.kill()
        b2.kill()
        dp.close()


def test_proxies_exit_cleanly():
    a.stop_clean()
    b.stop_clean()


if __name__ == "__main__":
    qctest.main(globals())
