#!/usr/bin/env python3
"""The metrics an operator needs (issue 9, item 2), read from a real
/metrics of a running instance: each histogram and counter moves when it
should and only then (a miss moves the PostgreSQL and tax histograms, a hit
does not), build info and open descriptors are there, and every metric the
shipped Grafana dashboard queries exists in a scrape of an instance that
served hits, misses and an invalidation."""

import json
import os
import re
import threading
import time

import qctest
from qctest import qcstack

SRC = qctest.SRC
st = None
px = None  # one worker, Redis: shared by the tests below, in order


def setup_module():
    global st, px
    st = qcstack.Stack(products=200)
    px = qcstack.Proxy(st).ready()


def teardown_module():
    if px is not None and px.running():
        px.stop_clean()
    st.stop()


def scrape(p=None):
    status, _, body = (p or px).get("/metrics")
    assert status == 200, status
    return body.decode()


def value(text, name, labels=""):
    """The sample `name{labels}` (labels as rendered, without braces)."""
    series = name + ("{%s}" % labels if labels else "")
    m = re.search(r"^%s (\S+)$" % re.escape(series), text, re.M)
    assert m, "no sample %s in /metrics" % series
    return float(m.group(1))


def count(text, family, labels=""):
    return value(text, family + "_count", labels)


PG = "quotecache_origin_pg_duration_seconds"
TAX = "quotecache_origin_tax_duration_seconds"
QD = "quotecache_quote_duration_seconds"
LOCK = "quotecache_lock_hold_seconds"
REDIS = "quotecache_redis_command_duration_seconds"
WAIT = "quotecache_coalesced_wait_seconds"
LAG = "quotecache_invalidation_lag_seconds"


def test_miss_moves_origin_histograms_and_hit_does_not():
    a = scrape()
    s, h, _ = px.quote(11, region="US", tier="gold")
    assert s == 200 and h.get("x-cache") == "MISS", (s, h)
    b = scrape()
    assert count(b, PG) == count(a, PG) + 1
    assert count(b, TAX) == count(a, TAX) + 1
    assert value(b, PG + "_sum") > value(a, PG + "_sum")
    assert count(b, QD, 'cache="MISS"') == count(a, QD, 'cache="MISS"') + 1
    assert count(b, QD, 'cache="HIT"') == count(a, QD, 'cache="HIT"')
    assert count(b, LOCK) == count(a, LOCK) + 1, "the load's lock was won and released"
    assert count(b, REDIS) > count(a, REDIS), "the miss read, locked and stored in Redis"
    # Wait out the in-process copy (500 ms with Redis): this hit is Redis's.
    time.sleep(0.6)
    s, h, _ = px.quote(11, region="US", tier="gold")
    assert s == 200 and h.get("x-cache") == "HIT", (s, h)
    c = scrape()
    assert count(c, PG) == count(b, PG) and count(c, TAX) == count(b, TAX)
    assert count(c, LOCK) == count(b, LOCK)
    assert count(c, QD, 'cache="HIT"') == count(b, QD, 'cache="HIT"') + 1
    assert count(c, QD, 'cache="MISS"') == count(b, QD, 'cache="MISS"')
    assert count(c, REDIS) > count(b, REDIS), "a Redis hit is a Redis read"


def test_in_process_tier_hits_entries_and_bytes():
    a = scrape()
    s, h, _ = px.quote(12, region="US", tier="gold")
    assert s == 200 and h.get("x-cache") == "MISS"
    hits = 0
    for _ in range(5):  # well inside the copy's 500 ms
        s, h, _ = px.quote(12, region="US", tier="gold")
        hits += h.get("x-cache") == "HIT"
    b = scrape()
    assert hits == 5
    moved = value(b, "quotecache_hot_hits_total") - value(a, "quotecache_hot_hits_total")
    assert 1 <= moved <= 5, moved
    assert value(b, "quotecache_hot_entries") >= 1
    assert value(b, "quotecache_hot_bytes") > 100  # key and a quote document
    # A miss elsewhere is not a tier hit.
    s, h, _ = px.quote(13, region="US", tier="gold")
    assert h.get("x-cache") == "MISS"
    c = scrape()
    assert value(c, "quotecache_hot_hits_total") == value(b, "quotecache_hot_hits_total")


def test_coalesced_wait():
    """Tax answers slowly: concurrent requests for one new key wait on one
    load, and each waiter's wait is observed (about the tax delay)."""
    st.tax_control(delay_ms=300)
    try:
        a = scrape()
        res = []

        def one():
            res.append(px.quote(14, region="US", tier="gold")[1].get("x-cache"))
        ts = [threading.Thread(target=one) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        b = scrape()
    finally:
        st.tax_control(delay_ms=0)
    waiters = res.count("COALESCED")
    assert res.count("MISS") == 1 and waiters == 5, res
    assert count(b, WAIT) == count(a, WAIT) + waiters
    mean = (value(b, WAIT + "_sum") - value(a, WAIT + "_sum")) / waiters
    assert 0.1 < mean < 2.0, mean
    assert count(b, TAX) == count(a, TAX) + 1
    assert value(b, TAX + "_sum") - value(a, TAX + "_sum") >= 0.28


def test_invalidation_lag():
    a = scrape()
    st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents + 1 "
            "WHERE product_id = 15 AND region = 'US'")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        b = scrape()
        if count(b, LAG) > count(a, LAG):
            break
        time.sleep(0.05)
    assert count(b, LAG) > count(a, LAG), "no bump acknowledged within 3 s"
    assert value(b, "quotecache_invalidations_total") > value(a, "quotecache_invalidations_total")
    lag = (value(b, LAG + "_sum") - value(a, LAG + "_sum")) / (count(b, LAG) - count(a, LAG))
    assert 0 <= lag < 1.0, lag


def test_build_info_and_open_fds():
    text = scrape()
    m = re.search(r'^quotecache_build_info\{version="([^"]+)",commit="([^"]+)"\} 1$', text, re.M)
    assert m, "no build info"
    meson = open(os.path.join(SRC, "meson.build")).read()
    assert m.group(1) == re.search(r"version : '([^']+)'", meson).group(1)
    assert re.match(r"^([0-9a-f]{7,}|v?[0-9][^ ]*)(-dirty)?$|^unknown$", m.group(2)), m.group(2)
    # Two workers: the master's and both workers' descriptors, counted from
    # /proc here too (a few move with the scrape's own connection).
    p2 = qcstack.Proxy(st, workers=2).ready()
    try:
        pids = [p2.pid] + p2.worker_pids()
        assert len(pids) == 3
        theirs = value(scrape(p2), "process_open_fds")
        ours = sum(len(os.listdir("/proc/%d/fd" % p)) for p in pids)
        assert abs(theirs - ours) <= 4, (theirs, ours)
        single = value(scrape(), "process_open_fds")
        assert theirs > single, (theirs, single)
    finally:
        p2.stop_clean()


def dashboard_metrics():
    with open(os.path.join(SRC, "docs", "grafana-dashboard.json")) as f:
        d = json.load(f)
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in d["templating"]["list"] if v.get("type") == "query"]
    names = set()
    for e in exprs:
        names |= set(re.findall(r"\b(?:quotecache|process)_[a-z_]+\b", e))
    return names


def test_dashboard_queries_name_only_metrics_that_exist():
    """After the hits, misses and the invalidation above: every metric the
    dashboard queries is a sample name in a real scrape."""
    names = dashboard_metrics()
    assert len(names) >= 15, names
    text = scrape()
    samples = set(re.findall(r"^([a-z_]+)[{ ]", text, re.M))
    missing = sorted(n for n in names if n not in samples)
    assert not missing, missing
    with open(os.path.join(SRC, "docs", "prometheus.yml")) as f:
        conf = f.read()
    assert "metrics_path: /metrics" in conf and "job_name: quotecache" in conf


def test_every_histogram_is_exposed_with_help_and_type():
    text = scrape()
    for fam in (PG, TAX, QD, LOCK, REDIS, WAIT, LAG):
        short = fam
        assert "# TYPE %s histogram" % short in text, fam
        assert re.search(r"^%s_bucket\{.*le=\"\+Inf\"\} \d+$" % re.escape(fam), text, re.M), fam
    for cache in ("HIT", "MISS", "COALESCED", "STALE", "BYPASS", "NONE"):
        count(text, QD, 'cache="%s"' % cache)


def test_healthz_describes_the_instance():
    """Two workers: every /healthz, whichever worker answers, counts both;
    a killed worker leaves the count until its replacement listens; Redis
    down is seen by every answer."""
    p2 = qcstack.Proxy(st, workers=2).ready()
    try:
        for _ in range(20):  # new connections: both workers answer some
            h = p2.health()
            assert h["workers"] == 2 and h["status"] == "ok", h
        victim = p2.worker_pids()[0]
        os.kill(victim, 9)
        qcstack.wait_until(lambda: victim not in p2.worker_pids() and
                           len(p2.worker_pids()) == 2, 5, "a replacement")
        qcstack.wait_until(lambda: all(p2.health()["workers"] == 2 for _ in range(10)), 10,
                           "the replacement counted")
        st.stop_redis()
        try:
            qcstack.wait_until(lambda: all(p2.health()["redis"] == "down" for _ in range(10)),
                               10, "redis down on every answer")
            h = p2.health()
            assert h["status"] == "degraded" and h["workers"] == 2, h
        finally:
            st.start_redis()
        p2.wait_health(status="ok", redis="up", timeout=15)
    finally:
        p2.stop_clean()


qctest.main(globals())
