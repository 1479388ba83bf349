#!/usr/bin/env python3
"""Coalescing (api.md "Behaviour that tests hold it to"): any number of
concurrent requests for one uncached quote cause exactly one origin load
(one tax call), on one instance or on several sharing Redis; waiters are
woken when the value lands, not by polling; a loader killed mid-load holds
nobody up for longer than the lock TTL plus one fresh load and is never
run twice while its lock lives; a client that leaves does not cancel the
load it started."""

import json
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

TAX_DELAY_MS = 300
st = None
products = []  # active products priced in US, one per test


def setup_module():
    global st, products
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=2000, tax_delay_ms=TAX_DELAY_MS)
    out = st.psql("SELECT p.id FROM products p JOIN regional_prices rp ON rp.product_id = p.id "
                  "AND rp.region = 'US' WHERE p.active ORDER BY p.id LIMIT 50")
    products = [int(x) for x in out.split()]


def teardown_module():
    if st is not None:
        st.stop()


def take_product():
    return products.pop(0)


def qpath(pid, region="US", tier="gold"):
    return "/quote/%d?region=%s&tier=%s" % (pid, region, tier)


def start_proxy(**opts):
    return qcstack.Proxy(st, **opts).ready()


def xcache_counts(results):
    out = {}
    for _, h, _ in results:
        x = h.get("x-cache")
        out[x] = out.get(x, 0) + 1
    return out


def metric(px, name):
    _, _, body = px.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("metric %s missing" % name)


class Bg(threading.Thread):
    """Runs fn() in a thread, keeps its result or exception."""

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


# ------------------------------------------------------------------ one instance


def test_500_concurrent_one_instance():
    st.tax_control(delay_ms=TAX_DELAY_MS)
    px = start_proxy()
    pid = take_product()
    st.tax_reset()
    t0 = time.monotonic()
    res = qcstack.concurrent_gets(px.port, [qpath(pid)] * 500, timeout=10)
    took = time.monotonic() - t0
    statuses = [r[0] for r in res]
    assert statuses == [200] * 500, {s: statuses.count(s) for s in set(statuses)}
    assert st.tax_stats() == 1, st.tax_stats()
    bodies = {r[2] for r in res}
    assert len(bodies) == 1, "answers differ: %r" % list(bodies)[:3]
    etags = {r[1].get("etag") for r in res}
    assert len(etags) == 1 and None not in etags, etags
    assert xcache_counts(res) == {"MISS": 1, "COALESCED": 499}, xcache_counts(res)
    # Woken by the value, not by a timer: the whole batch ends shortly after
    # the one 300 ms load (connecting 500 sockets included).
    assert took < 1.0, took
    assert metric(px, "quotecache_origin_loads_total") == 1
    assert metric(px, "quotecache_coalesced_total") == 499
    # And now it is cached: no further tax call.
    st_, h, b = px.get(qpath(pid))
    assert st_ == 200 and h.get("x-cache") == "HIT" and b == bodies.pop()
    assert st.tax_stats() == 1
    px.stop_clean()


# ------------------------------------------------------------------ two instances


def test_two_instances_share_one_load():
    # A load long enough for b to take in its whole crowd first, even an
    # ASan build on a busy box (300 ms was not: 199 of b's 200 came after
    # a had stored, and were HITs).
    delay_ms = 1000
    st.tax_control(delay_ms=delay_ms)
    a, b = start_proxy(), start_proxy()
    pid = take_product()
    st.tax_reset()
    # a's first request takes the lock; then both instances get a crowd.
    lead = Bg(lambda: a.get(qpath(pid)))
    time.sleep(0.1)
    t0 = time.monotonic()
    on_a = Bg(lambda: qcstack.concurrent_gets(a.port, [qpath(pid)] * 100, timeout=10))
    on_b = qcstack.concurrent_gets(b.port, [qpath(pid)] * 200, timeout=10)
    ra, lead_r = on_a.get(), lead.get()
    took = time.monotonic() - t0
    everything = ra + on_b + [lead_r]
    assert [r[0] for r in everything] == [200] * 301, [r[0] for r in everything]
    assert st.tax_stats() == 1, st.tax_stats()
    assert len({r[2] for r in everything}) == 1
    assert lead_r[1].get("x-cache") == "MISS", lead_r[1]
    assert xcache_counts(ra) == {"COALESCED": 100}, xcache_counts(ra)
    # b never loaded: its answers came from a's load, woken by the announcement.
    assert xcache_counts(on_b) == {"COALESCED": 200}, xcache_counts(on_b)
    assert took < delay_ms / 1000.0 + 0.7, took  # woken by the announcement, not a timer
    assert metric(b, "quotecache_origin_loads_total") == 0
    assert metric(b, "quotecache_lock_waited_total") >= 1
    assert metric(a, "quotecache_lock_acquired_total") == 1
    st_, h, _ = b.get(qpath(pid))
    assert st_ == 200 and h.get("x-cache") == "HIT"
    assert st.tax_stats() == 1
    a.stop_clean()
    b.stop_clean()


def test_leader_killed_mid_load():
    lock_ttl = 1.5
    st.tax_control(delay_ms=2000)
    a = start_proxy(lock_ttl=int(lock_ttl * 1000))
    b = start_proxy(lock_ttl=int(lock_ttl * 1000))
    pid = take_product()
    try:
        st.tax_reset()
        t_lead = time.monotonic()
        Bg(lambda: a.get(qpath(pid), timeout=10))  # dies with a
        time.sleep(0.2)  # a holds the lock now and its tax call is pending
        assert st.tax_stats() == 1
        waiters = Bg(lambda: qcstack.concurrent_gets(b.port, [qpath(pid)] * 50, timeout=15))
        time.sleep(0.2)  # b's requests found the lock taken and wait
        assert metric(b, "quotecache_lock_waited_total") == 1
        a.kill()
        t_kill = time.monotonic()
        st.tax_control(delay_ms=0)  # the fresh load is quick: only the lock TTL counts
        samples = []  # (seconds since the leader's request, tax count)
        while waiters.is_alive() and time.monotonic() - t_kill < 10:
            samples.append((time.monotonic() - t_lead, st.tax_stats()))
            time.sleep(0.02)
        res = waiters.get()
        samples.append((waiters.done_at - t_lead, st.tax_stats()))
        answered = waiters.done_at - t_kill
        assert [r[0] for r in res] == [200] * 50, [r[0] for r in res]
        assert answered < lock_ttl + 1.0, (answered, samples[-5:])
        # No second load while the lock lived (it was taken after t_lead).
        early = [s for s in samples if s[0] < lock_ttl - 0.05]
        assert early and all(n == 1 for _, n in early), early
        second = [t for t, n in samples if n >= 2]
        assert second and second[0] >= lock_ttl - 0.05, samples
        assert st.tax_stats() == 2
        assert len({r[2] for r in res}) == 1
        assert xcache_counts(res) == {"MISS": 1, "COALESCED": 49}, xcache_counts(res)
        assert metric(b, "quotecache_lock_expired_total") == 1
        st_, h, _ = b.get(qpath(pid))
        assert st_ == 200 and h.get("x-cache") == "HIT"
        assert st.tax_stats() == 2
        b.stop_clean()
    finally:
        st.tax_control(delay_ms=TAX_DELAY_MS)


def test_sigterm_while_waiting_on_other_instance():
    """SIGTERM on an instance whose requests wait for another instance's
    load: they are finished (api.md: finish in-flight requests, bounded),
    here with the value, since it lands well inside --shutdown-timeout; the
    proxy exits 0 with nothing leaked."""
    st.tax_control(delay_ms=1000)
    a, b = start_proxy(), start_proxy(shutdown_timeout=5000)
    pid = take_product()
    try:
        st.tax_reset()
        lead = Bg(lambda: a.get(qpath(pid), timeout=10))
        time.sleep(0.2)
        waiters = Bg(lambda: qcstack.concurrent_gets(b.port, [qpath(pid)] * 20, timeout=10))
        time.sleep(0.2)
        b.signal(signal.SIGTERM)
        res = waiters.get()
        assert lead.get()[0] == 200
        assert [r[0] for r in res] == [200] * 20, [(r[0], r[2][:80]) for r in res]
        assert xcache_counts(res) == {"COALESCED": 20}, xcache_counts(res)
        assert st.tax_stats() == 1
        b.stop_clean()
        a.stop_clean()
    finally:
        st.tax_control(delay_ms=TAX_DELAY_MS)


# ------------------------------------------------------------------ clients leaving


def send_and_close(port, path):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
    s.close()


def test_client_gone_load_completes():
    st.tax_control(delay_ms=TAX_DELAY_MS)
    px = start_proxy()
    pid, pid2 = take_product(), take_product()
    st.tax_reset()
    send_and_close(px.port, qpath(pid))
    time.sleep(0.1)
    assert st.tax_stats() == 1, "the load did not start"
    time.sleep(TAX_DELAY_MS / 1000 + 0.4)
    s, h, _ = px.get(qpath(pid))
    assert s == 200 and h.get("x-cache") == "HIT", (s, h)
    assert st.tax_stats() == 1

    # The first client leaves while others wait on its load: they are still
    # answered, from that one load.
    st.tax_reset()
    send_and_close(px.port, qpath(pid2))
    time.sleep(0.05)
    res = qcstack.concurrent_gets(px.port, [qpath(pid2)] * 20, timeout=5)
    assert [r[0] for r in res] == [200] * 20, [r[0] for r in res]
    assert xcache_counts(res) == {"COALESCED": 20}, xcache_counts(res)
    assert st.tax_stats() == 1

    # Many leave at once, some mid-load: no crash, no leak at exit.
    # (products of their own: their loads fill the shared cache, which a
    # later proxy's start no longer empties)
    for _ in range(30):
        send_and_close(px.port, qpath(products.pop()))
    time.sleep(0.05)
    assert px.running()
    px.stop_clean()



def test_waiters_are_bounded():
    """--max-waiters-per-key: requests past the bound get a prompt 503 JSON
    error with Retry-After instead of queueing without end; the others are
    answered by the one load."""
    p = start_proxy(max_waiters_per_key=10)
    try:
        pid = take_product()
        st.tax_reset()
        res = qcstack.concurrent_gets(p.port, [qpath(pid)] * 30, timeout=10)
        ok = [r for r in res if r[0] == 200]
        busy = [r for r in res if r[0] == 503]
        assert len(ok) == 10 and len(busy) == 20, sorted(r[0] for r in res)
        for r in busy:
            assert r[1].get("retry-after") == "1", r[1]
            assert json.loads(r[2])["error"] == "too_many_waiters", r[2]
        assert st.tax_stats() == 1
        assert 'quotecache_waiters_rejected_total 20' in p.get("/metrics")[2].decode()
        p.stop_clean()
    finally:
        if p.running():
            p.kill()


if __name__ == "__main__":
    qctest.main(globals())
