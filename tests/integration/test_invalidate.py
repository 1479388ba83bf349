#!/usr/bin/env python3
"""Writes invalidate (api.md, "Behaviour that tests hold it to"): a change
committed with psql to any pricing table is served by every instance within
1 second, promotions start and stop at their boundaries without any write,
a write racing an in-flight load never leaves the pre-write quote cached,
the LISTEN connection comes back by itself (dropping everything), and a
--key-version bump is a clean namespace.

Two proxies share one Redis throughout; every "within 1 s" is polled on both
(about every 10 ms) and measured from the moment the writing psql returns.
Expected values come from an SQL reference of legacy-backend.md run after
the write, never from the proxy."""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

PRODUCTS = 2000
st = None
px1 = px2 = None
pool = []  # active products priced in US, with no per-product promotion; handed out once


def setup_module():
    global st, px1, px2, pool
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=PRODUCTS)
    pool = [int(x) for x in st.psql(
        "SELECT p.id FROM products p JOIN regional_prices rp ON rp.product_id = p.id "
        "AND rp.region = 'US' WHERE p.active AND NOT EXISTS (SELECT 1 FROM promotions pr "
        "WHERE pr.product_id = p.id) ORDER BY p.id LIMIT 80").split()]
    assert len(pool) >= 60, pool
    px1 = start_proxy()
    px2 = start_proxy()


def teardown_module():
    if st is not None:
        st.stop()


def start_proxy(**opts):
    return qcstack.Proxy(st, **opts).ready()


def take():
    return pool.pop(0)


def metrics(p):
    _, _, body = p.get("/metrics")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


# ------------------------------------------------------------------ reference

REF_SQL = """
WITH q AS (
  SELECT rp.list_price_cents AS lst,
    coalesce((SELECT discount_bp FROM tier_discounts
              WHERE product_id = {p} AND tier = '{t}'), 0) AS tbp,
    coalesce((SELECT max(discount_bp) FROM promotions
              WHERE (product_id = {p} OR product_id IS NULL)
                AND (region = '{r}' OR region IS NULL)
                AND starts_at <= now() AND now() < ends_at), 0) AS pbp,
    (SELECT usd_rate FROM fx_rates WHERE currency = '{c}') AS rate
  FROM regional_prices rp JOIN products pr ON pr.id = rp.product_id AND pr.active
  WHERE rp.product_id = {p} AND rp.region = '{r}'
), u AS (
  SELECT round(round(lst::numeric * (10000 - tbp) * (10000 - pbp) / 100000000) * rate) AS unit
  FROM q
)
SELECT json_build_object(
  'unit_price_cents', unit,
  'promo_ids', coalesce((SELECT json_agg(id ORDER BY id) FROM promotions
                         WHERE (product_id = {p} OR product_id IS NULL)
                           AND (region = '{r}' OR region IS NULL)
                           AND starts_at <= now() AND now() < ends_at), '[]'::json),
  'volume_pricing', (SELECT json_agg(json_build_object('min_qty', min_qty, 'max_qty', mx,
                             'unit_price_cents', round(unit * (10000 - discount_bp) / 10000))
                             ORDER BY min_qty)
                     FROM (SELECT min_qty, discount_bp,
                                  lead(min_qty) OVER (ORDER BY min_qty) - 1 AS mx
                           FROM volume_breaks WHERE product_id = {p}) vb))
FROM u;
"""


def reference(pid, region="US", tier="standard", currency="USD"):
    """The fields a quote must have right now, or None (404)."""
    out = st.psql(REF_SQL.format(p=int(pid), r=region, t=tier, c=currency)).strip()
    return json.loads(out) if out else None


def project(status, doc):
    """The part of an answer the reference describes (None for a 404)."""
    if status == 404:
        return None
    assert status == 200, (status, doc)
    return {k: doc[k] for k in ("unit_price_cents", "promo_ids", "volume_pricing")}


def quote(p, pid, region="US", tier="standard", currency="USD"):
    s, h, doc = p.quote(pid, region=region, tier=tier, currency=currency)
    return s, h.get("x-cache"), doc


def warm(key, proxies=None):
    """Load `key` on every proxy and check that each now answers HIT."""
    for p in proxies or (px1, px2):
        quote(p, *key)
        s, xc, doc = quote(p, *key)
        assert xc == "HIT", (key, s, xc, doc)


def wait_all(keys, want, t0, limit, proxies=None, what=""):
    """Poll every (proxy, key) about every 10 ms until project(answer) ==
    want(key); return the lags (s, from t0). Fails after `limit` seconds."""
    proxies = proxies or (px1, px2)
    todo = {(i, k) for i in range(len(proxies)) for k in keys}
    lags, last = [], {}
    while todo:
        for i, k in sorted(todo):
            s, xc, doc = quote(proxies[i], *k)
            got = project(s, doc)
            if got == want(k):
                lags.append(time.monotonic() - t0)
                todo.discard((i, k))
            else:
                last[(i, k)] = (s, xc, got)
        if todo and time.monotonic() - t0 > limit:
            raise AssertionError("%s: not reflected after %.2fs on %s; last %s, want %s"
                                 % (what, limit, sorted(todo),
                                    {x: last.get(x) for x in todo},
                                    {k: want(k) for _, k in todo}))
        if todo:
            time.sleep(0.01)
    return lags


def write_and_check(sql, keys, limit=1.0, what=""):
    """Warm keys on both proxies, commit `sql` with one psql call, then every
    key must match the reference within `limit` seconds on both. Returns the
    lags."""
    for k in keys:
        warm(k)
    before = {k: reference(*k) for k in keys}
    st.psql(sql)
    t0 = time.monotonic()
    after = {k: reference(*k) for k in keys}
    assert after != before, (what, "the write changed nothing", before)
    lags = wait_all(keys, lambda k: after[k], t0, limit, what=what)
    print("  %s: reflected in %.0f ms (max over %d answers)"
          % (what, max(lags) * 1000, len(lags)), flush=True)
    return lags


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100.0 * (len(xs) - 1))))]


def rnd_div(n, d):
    return (2 * n + d) // (2 * d)


# ------------------------------------------------------------------ tests


def test_price_updates_reach_both_instances_fast():
    pid = take()
    key = (pid, "US", "standard", "USD")
    ref = reference(*key)
    lst, tbp, pbp = (int(x) for x in st.psql(
        "SELECT rp.list_price_cents, coalesce((SELECT discount_bp FROM tier_discounts WHERE "
        "product_id = %d AND tier = 'standard'), 0), coalesce((SELECT max(discount_bp) FROM "
        "promotions WHERE (product_id = %d OR product_id IS NULL) AND (region = 'US' OR region "
        "IS NULL) AND starts_at <= now() AND now() < ends_at), 0) FROM regional_prices rp "
        "WHERE product_id = %d AND region = 'US'" % (pid, pid, pid)).strip().split("|"))
    assert ref["unit_price_cents"] == rnd_div(lst * (10000 - tbp) * (10000 - pbp), 10 ** 8)
    lags = []
    for i in range(50):
        warm(key)
        new = 100000 + 1000 * i + 17
        want = rnd_div(new * (10000 - tbp) * (10000 - pbp), 10 ** 8)
        st.psql("UPDATE regional_prices SET list_price_cents = %d WHERE product_id = %d "
                "AND region = 'US'" % (new, pid))
        t0 = time.monotonic()
        pending = {0: px1, 1: px2}
        while pending:
            for n, p in list(pending.items()):
                s, xc, doc = quote(p, *key)
                assert s == 200, (s, doc)
                if doc["unit_price_cents"] == want:
                    lags.append(time.monotonic() - t0)
                    del pending[n]
            if pending:
                assert time.monotonic() - t0 < 1.0, \
                    ("update %d not served after 1s" % i, doc, want)
                time.sleep(0.01)
    assert len(lags) == 100
    print("invalidation lag p50=%.1f ms p99=%.1f ms max=%.1f ms (%d answers, 2 instances)"
          % (pct(lags, 50) * 1000, pct(lags, 99) * 1000, max(lags) * 1000, len(lags)),
          flush=True)
    assert max(lags) < 1.0, lags


def test_promotion_boundaries_without_writes():
    ending, starting = take(), take()
    ke = (ending, "US", "standard", "USD")
    ks = (starting, "US", "standard", "USD")
    base_e, base_s = reference(*ke), reference(*ks)
    t_boundary = time.time() + 2.5
    pe, ps = 880001, 880002
    st.psql("INSERT INTO promotions VALUES "
            "(%d, %d, 'US', 7500, now() - interval '1 hour', to_timestamp(%.6f)), "
            "(%d, %d, 'US', 7500, to_timestamp(%.6f), now() + interval '1 day')"
            % (pe, ending, t_boundary, ps, starting, t_boundary))
    t0 = time.monotonic()
    mono_boundary = t0 + (t_boundary - time.time())
    with_e = reference(*ke)
    assert pe in with_e["promo_ids"] and with_e["unit_price_cents"] < base_e["unit_price_cents"]
    assert reference(*ks) == base_s
    # The insert is a write: reflected within 1 s (the start is still ahead).
    wait_all([ke], lambda k: with_e, t0, 1.0, what="promotion insert")
    for k, want in ((ke, with_e), (ks, base_s)):
        warm(k)
        for p in (px1, px2):
            assert project(*quote(p, *k)[::2]) == want
    # Right up to the boundary nothing changes.
    while time.monotonic() < mono_boundary - 0.25:
        for p in (px1, px2):
            s, _, doc = quote(p, *ke)
            assert pe in doc["promo_ids"], doc
            s, _, doc = quote(p, *ks)
            assert ps not in doc["promo_ids"], doc
        time.sleep(0.05)
    while time.monotonic() < mono_boundary + 0.02:
        time.sleep(0.005)
    # After it, with no write: ended one gone, started one applies.
    with_s = reference(*ks)
    assert ps in with_s["promo_ids"] and with_s["unit_price_cents"] < base_s["unit_price_cents"]
    assert reference(*ke) == base_e
    wants = {ke: base_e, ks: with_s}
    lags = wait_all([ke, ks], lambda k: wants[k], mono_boundary, 1.0, what="promo boundary")
    print("  promotion boundary: applied %.0f ms after starts_at/ends_at" % (max(lags) * 1000))
    # And it stays that way.
    for p in (px1, px2):
        for k in (ke, ks):
            assert project(*quote(p, *k)[::2]) == wants[k]


def test_write_racing_an_inflight_load_never_sticks():
    st.tax_control(delay_ms=1000)
    try:
        firsts = {"old": 0, "new": 0}
        for i in range(20):
            pid = take()
            region = st.psql("SELECT region FROM regional_prices WHERE product_id = %d "
                             "ORDER BY region LIMIT 1 OFFSET %d" % (pid, i % 3)).strip() \
                or "US"
            key = (pid, region, "standard", "USD")
            first = {}

            def load():
                first["t"] = time.monotonic()
                first["r"] = quote(px1 if i % 2 == 0 else px2, *key)
            st.tax_reset()
            t = threading.Thread(target=load)
            t.start()
            other = {}
            t2 = threading.Thread(target=lambda: other.setdefault(
                "r", quote(px2 if i % 2 == 0 else px1, *key)))
            time.sleep(0.03)
            t2.start()
            # The load has read PostgreSQL once its tax call arrives.
            deadline = time.monotonic() + 0.9
            while st.tax_stats() < 1:
                assert time.monotonic() < deadline, "no tax call for the cold load"
                time.sleep(0.01)
            time.sleep(max(0.0, first["t"] + 0.3 - time.monotonic()))
            old = reference(*key)
            st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents + 101 "
                    "WHERE product_id = %d AND region = '%s'" % (pid, region))
            new = reference(*key)
            assert new != old
            t.join(10)
            t2.join(10)
            assert not t.is_alive() and not t2.is_alive()
            assert project(*other["r"][::2]) in (old, new), (i, other["r"], old, new)
            s, xc, doc = first["r"]
            assert s == 200, (s, doc)
            assert project(s, doc) in (old, new), (i, doc, old, new)
            firsts["old" if project(s, doc) == old else "new"] += 1
            # Every request from now on, on either instance, is the new quote.
            for p in (px1, px2, px1, px2):
                s, xc, doc = quote(p, *key)
                assert project(s, doc) == new, \
                    ("iteration %d: stale quote after the racing write" % i, xc, doc, old, new)
        print("  racing loads answered the pre-write quote %(old)d times, the new one %(new)d"
              % firsts, flush=True)
    finally:
        st.tax_control(delay_ms=0)


def test_promotion_racing_an_inflight_load_never_sticks():
    """A promotion inserted while a load for its product is in flight: the
    key itself changes (it names the promotion set), so besides the fence the
    load must not store its result under the key of the old set."""
    st.tax_control(delay_ms=1000)
    try:
        for i in range(3):
            pid = take()
            key = (pid, "US", "standard", "USD")
            res = {}
            st.tax_reset()
            threads = [threading.Thread(target=lambda n=n, p=p: res.setdefault(n, quote(p, *key)))
                       for n, p in enumerate((px1, px2, px1, px2))]
            for t in threads:
                t.start()
                time.sleep(0.02)
            deadline = time.monotonic() + 0.9
            while st.tax_stats() < 1:
                assert time.monotonic() < deadline, "no tax call for the cold load"
                time.sleep(0.01)
            time.sleep(0.3)
            old = reference(*key)
            st.psql("INSERT INTO promotions VALUES (%d, %d, 'US', 4321, now() - interval '1 second',"
                    " now() + interval '1 hour')" % (900000 + pid, pid))
            new = reference(*key)
            assert new != old
            for t in threads:
                t.join(10)
            for n in range(4):
                assert project(*res[n][::2]) in (old, new), (i, n, res[n], old, new)
            for p in (px1, px2, px1, px2, px1, px2):
                s, xc, doc = quote(p, *key)
                assert project(s, doc) == new, \
                    ("iteration %d: stale quote after the racing promotion" % i, xc, doc, new)
    finally:
        st.tax_control(delay_ms=0)


def no_cache_after_write(loader, asker):
    """A cold load runs on `loader` (its query done, the tax call pending);
    a price UPDATE commits; a no-cache request on `asker` must see it. The
    trigger is dropped meanwhile, so only the no-cache rule can pass this."""
    st.psql("DROP TRIGGER quotecache_notify ON regional_prices")
    st.tax_control(delay_ms=800)
    try:
        pid = take()
        key = (pid, "US", "standard", "USD")
        first = {}
        st.tax_reset()
        t = threading.Thread(target=lambda: first.setdefault("r", quote(loader, *key)))
        t.start()
        deadline = time.monotonic() + 0.9
        while st.tax_stats() < 1:  # the load's query has run
            assert time.monotonic() < deadline, "no tax call for the cold load"
            time.sleep(0.01)
        old = reference(*key)
        st.psql("UPDATE regional_prices SET list_price_cents = list_price_cents + 77 "
                "WHERE product_id = %d AND region = 'US'" % pid)
        new = reference(*key)
        assert new != old
        s, xc, doc = quote_headers(asker, key, {"Cache-Control": "no-cache"})
        assert project(s, doc) == new, ("no-cache did not read its own write", xc, doc, new)
        t.join(10)
        assert project(*first["r"][::2]) == old, first["r"]
    finally:
        st.tax_control(delay_ms=0)
        st.psql_file(os.path.join(qcstack.SRC, "scripts", "sql", "triggers.sql"))


def test_no_cache_reads_its_own_write():
    """Not answered by this instance's load whose query ran before the
    write, even before the change notification arrives."""
    no_cache_after_write(px1, px1)


def test_no_cache_reads_its_own_write_across_instances():
    """Nor by another instance's: the value it stores began before the
    no-cache request arrived, so the request waits for a later load."""
    no_cache_after_write(px1, px2)


def quote_headers(p, key, headers):
    pid, region, tier, currency = key
    st_, h, b = p.get("/quote/%d?region=%s&tier=%s&currency=%s" % (pid, region, tier, currency),
                      headers=headers)
    return st_, h.get("x-cache"), json.loads(b)


def test_fx_rate_change():
    keys = [(take(), "US", "standard", "EUR"), (take(), "US", "gold", "EUR")]
    write_and_check("UPDATE fx_rates SET usd_rate = usd_rate * 1.25 WHERE currency = 'EUR'",
                    keys, what="fx_rates EUR")


def test_tier_discount_change():
    pid = take()
    write_and_check("INSERT INTO tier_discounts VALUES (%d, 'gold', 3300) ON CONFLICT "
                    "(product_id, tier) DO UPDATE SET discount_bp = 3300" % pid,
                    [(pid, "US", "gold", "USD")], what="tier_discounts upsert")
    write_and_check("UPDATE tier_discounts SET discount_bp = 1200 WHERE product_id = %d "
                    "AND tier = 'gold'" % pid,
                    [(pid, "US", "gold", "USD")], what="tier_discounts update")


def test_volume_break_insert_and_delete():
    pid = take()
    key = (pid, "US", "standard", "USD")
    write_and_check("INSERT INTO volume_breaks VALUES (%d, 777, 4321)" % pid, [key],
                    what="volume_breaks insert")
    assert any(v["min_qty"] == 777 for v in reference(*key)["volume_pricing"])
    write_and_check("DELETE FROM volume_breaks WHERE product_id = %d AND min_qty = 777" % pid,
                    [key], what="volume_breaks delete")


def test_global_promotion_for_a_region():
    keys = [(take(), "US", "standard", "USD"), (take(), "US", "gold", "EUR")]
    write_and_check("INSERT INTO promotions VALUES (880101, NULL, 'US', 9100, "
                    "now() - interval '1 minute', now() + interval '1 day')",
                    keys, what="global promotion insert")
    for k in keys:
        assert 880101 in reference(*k)["promo_ids"]
    write_and_check("DELETE FROM promotions WHERE id = 880101", keys,
                    what="global promotion delete")


def test_product_deactivation():
    pid = take()
    key = (pid, "US", "standard", "USD")
    write_and_check("UPDATE products SET active = false WHERE id = %d" % pid, [key],
                    what="product deactivation")
    for p in (px1, px2):
        s, _, doc = quote(p, *key)
        assert s == 404 and doc.get("error"), (s, doc)


def test_not_found_answers_are_fenced_too():
    """A cached 404 (--neg-ttl) must not outlive the write that makes the
    quote exist: reactivation, a new regional price, a brand-new product."""
    pid = take()
    key = (pid, "US", "standard", "USD")
    write_and_check("UPDATE products SET active = false WHERE id = %d" % pid, [key],
                    what="deactivate")
    for p in (px1, px2):
        assert quote(p, *key)[:2] == (404, "HIT")
    write_and_check("UPDATE products SET active = true WHERE id = %d" % pid, [key],
                    what="reactivate after a cached 404")
    pid2, region = st.psql(
        "SELECT p.id, r.r FROM products p CROSS JOIN (VALUES ('US'), ('EU'), ('UK'), "
        "('APAC'), ('LATAM')) r(r) WHERE p.active AND p.id > 1000 AND NOT EXISTS (SELECT 1 "
        "FROM regional_prices WHERE product_id = p.id AND region = r.r) ORDER BY p.id "
        "LIMIT 1").strip().split("|")
    key2 = (int(pid2), region, "gold", "USD")
    key3 = (990001, "US", "standard", "USD")
    for k in (key2, key3):
        for p in (px1, px2):
            quote(p, *k)
            assert quote(p, *k)[:2] == (404, "HIT"), k
    write_and_check("INSERT INTO regional_prices VALUES (%s, '%s', 12345)" % (pid2, region),
                    [key2], what="new regional price after a cached 404")
    write_and_check("BEGIN; INSERT INTO products VALUES (990001, 'SKU-X990001', 'new'); "
                    "INSERT INTO regional_prices VALUES (990001, 'US', 5000); "
                    "INSERT INTO volume_breaks VALUES (990001, 1, 0); COMMIT;",
                    [key3], what="new product after a cached 404")


def test_listen_reconnects_and_drops_everything():
    pid = take()
    key = (pid, "US", "standard", "USD")
    listening = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"
    assert st.psql(listening).strip() == "2"
    before = [metrics(p).get("quotecache_listen_reconnects_total", 0) for p in (px1, px2)]
    warm(key)
    old = reference(*key)
    # Kill both LISTEN connections (waiting until they are gone), then write
    # at once: nobody is listening when this commits.
    out = st.psql("SELECT pg_terminate_backend(pid, 2000) FROM pg_stat_activity "
                  "WHERE query LIKE 'LISTEN%';"
                  "UPDATE regional_prices SET list_price_cents = list_price_cents + 5003 "
                  "WHERE product_id = " + str(pid) + " AND region = 'US';")
    t0 = time.monotonic()
    assert out.split() == ["t", "t"], out
    new = reference(*key)
    assert new != old
    lags = wait_all([key], lambda k: new, t0, 2.0, what="write while LISTEN was down")
    print("  write made while LISTEN was down: reflected in %.0f ms" % (max(lags) * 1000))
    deadline = t0 + 2.0
    while st.psql(listening).strip() != "2":
        assert time.monotonic() < deadline, "LISTEN connections not back within 2s"
        time.sleep(0.05)
    print("  LISTEN back after %.0f ms" % ((time.monotonic() - t0) * 1000))
    for p, b in zip((px1, px2), before):
        assert metrics(p).get("quotecache_listen_reconnects_total", 0) == b + 1, \
            metrics(p).get("quotecache_listen_reconnects_total")
    # Still listening for real: a later write propagates as usual.
    write_and_check("UPDATE regional_prices SET list_price_cents = list_price_cents + 7 "
                    "WHERE product_id = %d AND region = 'US'" % pid, [key],
                    what="write after reconnect")


def test_truncate_promotions():
    pid = st.psql("SELECT product_id FROM promotions WHERE product_id IS NOT NULL AND "
                  "region = 'US' AND starts_at <= now() AND now() < ends_at AND product_id IN "
                  "(SELECT product_id FROM regional_prices WHERE region = 'US') AND product_id "
                  "IN (SELECT id FROM products WHERE active) ORDER BY product_id LIMIT 1").strip()
    keys = [(int(pid), "US", "standard", "USD"), (take(), "EU", "gold", "EUR")]
    keys = [k for k in keys if reference(*k) is not None]
    assert any(reference(*k)["promo_ids"] for k in keys)
    write_and_check("TRUNCATE promotions", keys, what="TRUNCATE promotions")
    for k in keys:
        assert reference(*k)["promo_ids"] == []


def test_key_version_bump_is_a_new_namespace():
    pid = take()
    key = (pid, "US", "standard", "USD")
    warm(key)
    p3 = start_proxy(key_version="v2")
    try:
        st.tax_reset()
        s, xc, doc = quote(p3, *key)
        assert s == 200 and xc == "MISS", (s, xc, doc)
        assert st.tax_stats() == 1
        assert quote(p3, *key)[1] == "HIT"
        assert quote(px1, *key)[1] == "HIT" and quote(px2, *key)[1] == "HIT"
        assert project(s, doc) == reference(*key)
    finally:
        p3.stop_clean()


def test_proxies_exit_cleanly():
    px1.stop_clean()
    px2.stop_clean()


if __name__ == "__main__":
    qctest.main(globals())
