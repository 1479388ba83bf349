#!/usr/bin/env python3
"""A write reloads only the quotes it changes (issue 14; README,
"Invalidation").

Two proxies share one Redis. Each test warms a set of quotes on both, makes
one write with psql, and then counts, over every warm quote on both
instances: the reloads the write caused (tax calls: one per load, the
fleet-wide lock makes it one per key) and the quotes whose answer really
changed, by the SQL reference of legacy-backend.md (the one
test_invalidate.py uses) run before and after the write, never by the
proxy. The changed ones must be served within 1 s on both instances; the
others must stay HITs. `measure` prints one line per change, the table of
the README.

The race tests hold a cold load in flight (its query done, its tax call
delayed) while a write of each scope commits: the pre-write quote must
never stay in the cache."""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402
from test_invalidate import REF_SQL  # noqa: E402  (the reference, not its stack)

PRODUCTS = 2000
CURRENCIES = ("USD", "EUR", "GBP", "JPY", "BRL")
st = None
px = []
pool = []  # active products priced in US and EU, handed out once
table = []  # (change, reloads, changed, warm quotes)
FIELDS = ("unit_price_cents", "promo_ids", "volume_pricing")


def setup_module():
    global st, px, pool
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=PRODUCTS)
    pool = [int(x) for x in st.psql(
        "SELECT p.id FROM products p WHERE p.active AND (SELECT count(*) FROM regional_prices rp"
        " WHERE rp.product_id = p.id AND rp.region IN ('US', 'EU')) = 2 ORDER BY p.id").split()]
    assert len(pool) >= 400, len(pool)
    px = [qcstack.Proxy(st, ttl=600).ready() for _ in range(2)]


def teardown_module():
    if table:
        print("\n  %-58s %8s %8s %6s" % ("change", "reloads", "changed", "warm"))
        for row in table:
            print("  %-58s %8d %8d %6d" % row)
    if st is not None:
        st.stop()


def take(n):
    out = pool[:n]
    del pool[:n]
    return out


# REF_SQL's rules, set-based: one query answers every key (400 keys through
# REF_SQL one by one take longer than the 1 s they are checked within).
# test_set_reference_matches_ref_sql holds the two equal.
SET_REF_SQL = """
WITH k(i, p, r, t, c) AS (VALUES %s),
q AS (
  SELECT k.i, k.p, rp.list_price_cents AS lst, coalesce(td.discount_bp, 0) AS tbp,
    coalesce((SELECT max(discount_bp) FROM promotions
              WHERE (product_id = k.p OR product_id IS NULL) AND (region = k.r OR region IS NULL)
                AND starts_at <= now() AND now() < ends_at), 0) AS pbp,
    (SELECT json_agg(id ORDER BY id) FROM promotions
     WHERE (product_id = k.p OR product_id IS NULL) AND (region = k.r OR region IS NULL)
       AND starts_at <= now() AND now() < ends_at) AS ids,
    fx.usd_rate AS rate
  FROM k JOIN products pd ON pd.id = k.p AND pd.active
  JOIN regional_prices rp ON rp.product_id = k.p AND rp.region = k.r
  LEFT JOIN tier_discounts td ON td.product_id = k.p AND td.tier = k.t
  LEFT JOIN fx_rates fx ON fx.currency = k.c
), u AS (
  SELECT i, p, ids,
    round(round(lst::numeric * (10000 - tbp) * (10000 - pbp) / 100000000) * rate) AS unit
  FROM q
)
SELECT k.i, CASE
  WHEN NOT EXISTS (SELECT 1 FROM tiers WHERE name = k.t)
    OR NOT EXISTS (SELECT 1 FROM fx_rates WHERE currency = k.c) THEN '400'
  WHEN u.i IS NULL THEN '404'
  ELSE json_build_object(
    'unit_price_cents', u.unit,
    'promo_ids', coalesce(u.ids, '[]'::json),
    'volume_pricing', (SELECT json_agg(json_build_object('min_qty', min_qty, 'max_qty', mx,
                               'unit_price_cents', round(u.unit * (10000 - discount_bp) / 10000))
                               ORDER BY min_qty)
                       FROM (SELECT min_qty, discount_bp,
                                    lead(min_qty) OVER (ORDER BY min_qty) - 1 AS mx
                             FROM volume_breaks WHERE product_id = k.p) vb))::text END
FROM k LEFT JOIN u ON u.i = k.i ORDER BY k.i
"""


def parse_ref(v):
    if v in ("400", "404"):
        return (int(v), None)
    doc = json.loads(v)
    return (200, {f: doc[f] for f in FIELDS})


def references_sql(keys):
    rows = ",".join("(%d, %d::bigint, '%s', '%s', '%s')" % (i, pid, r, t, c)
                    for i, (pid, r, t, c) in enumerate(keys))
    return SET_REF_SQL % rows


def parse_references(keys, out):
    got = {}
    for line in out.splitlines():
        i, sep, v = line.partition("|")
        if sep and i.isdigit():
            got[keys[int(i)]] = parse_ref(v)
    assert len(got) == len(keys), (len(got), len(keys))
    return got


def references(keys):
    """What each key must answer now (one psql call): (status, the fields
    the reference describes); 404 for no price, 400 for a tier or currency
    that is gone."""
    keys = list(keys)
    return parse_references(keys, st.psql(references_sql(keys)))


def write_then_reference(sql, keys):
    """Commits sql and returns the references of keys after it, computed in
    the writing transaction itself, so the 1 s of a test starts when the
    write commits (psql returns) and is not spent on the reference."""
    keys = list(keys)
    return parse_references(keys, st.psql("BEGIN; %s; %s; COMMIT;"
                                          % (sql.strip().rstrip(";"), references_sql(keys))))


def reference(*key):
    return references([key])[key]


def ref_sql(key):
    """REF_SQL itself (test_invalidate.py's reference), for one key."""
    pid, r, t, c = key
    out = st.psql(REF_SQL.format(p=int(pid), r=r, t=t, c=c)).strip()
    return parse_ref(out if out else "404")


def qpath(key):
    pid, r, t, c = key
    return "/quote/%d?region=%s&tier=%s&currency=%s" % (pid, r, t, c)


def answers(p, keys):
    """{key: ((status, fields), X-Cache)}, every key asked at once, as the
    clients of a fleet would."""
    keys = list(keys)
    out = {}
    for k, (s, h, b) in zip(keys, qcstack.concurrent_gets(p.port, [qpath(k) for k in keys],
                                                          timeout=20)):
        got = {f: json.loads(b)[f] for f in FIELDS} if s == 200 else None
        out[k] = ((s, got), (h or {}).get("x-cache"))
    return out


def answer(p, key):
    return answers(p, [key])[key]


def warm(keys):
    for p in px:
        for _ in range(20):
            if all(xc == "HIT" for _, xc in answers(p, keys).values()):
                break
        else:
            raise AssertionError("keys do not warm up")


def wait_reflected(keys, want, t0, limit=1.0, what=""):
    """Every key answers want[key] on both proxies within `limit` s of t0:
    the moment an answer counts is when its round of requests is over.
    Returns the largest lag."""
    todo = {i: set(keys) for i in range(len(px))}
    last, worst = {}, 0.0
    while any(todo.values()):
        for i in todo:
            got = answers(px[i], todo[i])
            lag = time.monotonic() - t0
            for k, (ans, xc) in got.items():
                if ans == want[k]:
                    todo[i].discard(k)
                    worst = max(worst, lag)
                else:
                    last[(i, k)] = (ans, xc)
        left = [(i, k) for i in todo for k in todo[i]]
        assert worst <= limit and (not left or time.monotonic() - t0 <= limit), \
            ("%s: not reflected within %.1f s (%.2f s)" % (what, limit, worst),
             [(x, last.get(x), want[x[1]]) for x in left[:5]], len(left))
        if left:
            time.sleep(0.01)
    return worst


def measure(what, sql, keys, settle=0.3):
    """Warms keys on both proxies, commits sql, waits for the changed
    quotes on both (1 s), then asks every key on both once more. Returns
    (reloads, changed keys, {key: X-Cache of the unchanged ones on each
    proxy}) and records the row of the README's table."""
    warm(keys)
    before = references(keys)
    st.tax_reset()
    retried = qctest.load_retries(px)
    after = write_then_reference(sql, keys)
    t0 = time.monotonic()
    changed = [k for k in keys if after[k] != before[k]]
    lag = wait_reflected(changed, after, t0, what=what) if changed else 0.0
    time.sleep(settle)  # every worker has heard the notification by now
    unchanged = {}
    for i, p in enumerate(px):
        for k, (got, xc) in answers(p, keys).items():
            assert got == after[k], (what, i, k, got, after[k])
            if k not in changed:
                unchanged.setdefault(k, []).append(xc)
    # A load that a write overtook (its store fenced, or its worker heard of
    # the write while it ran) loads the same quote again: one more tax call,
    # not one more quote reloaded. Counted by the proxies, told apart here.
    retried = qctest.load_retries(px) - retried
    reloads = st.tax_stats() - retried
    table.append((what, reloads, len(changed), len(keys)))
    print("  %s: %d reloads (+%d repeated), %d of %d quotes changed, reflected in %.0f ms"
          % (what, reloads, retried, len(changed), len(keys), lag * 1000), flush=True)
    return reloads, changed, unchanged


def all_hits(unchanged, except_keys=()):
    bad = {k: v for k, v in unchanged.items() if k not in except_keys and v != ["HIT", "HIT"]}
    assert not bad, ("quotes the write did not change were reloaded", len(bad),
                     list(bad.items())[:5])


# ------------------------------------------------------------------ tests


def test_set_reference_matches_ref_sql():
    keys = [(pid, r, t, c) for pid in pool[-6:] for r, t, c in
            (("US", "standard", "USD"), ("EU", "gold", "BRL"), ("UK", "silver", "JPY"))]
    got = references(keys)
    assert all(got[k] == ref_sql(k) for k in keys), \
        [(k, got[k], ref_sql(k)) for k in keys if got[k] != ref_sql(k)]
    assert sum(1 for v in got.values() if v[0] == 200) >= 6, got


def test_fx_rate_change_reloads_only_that_currency():
    """400 warm quotes over five currencies; one UPDATE of BRL's rate:
    exactly the 80 BRL quotes reload, every other one stays a HIT."""
    keys = [(pid, "US", "standard", c) for pid in take(80) for c in CURRENCIES]
    reloads, changed, unchanged = measure(
        "fx_rates: UPDATE the BRL rate (x 1.01)",
        "UPDATE fx_rates SET usd_rate = usd_rate * 1.01 WHERE currency = 'BRL'", keys)
    brl = [k for k in keys if k[3] == "BRL"]
    assert set(changed) <= set(brl), changed
    assert len(changed) >= len(brl) - 2, (len(changed), len(brl))  # rounding may hide a few
    assert reloads == len(brl), (reloads, len(brl))
    all_hits(unchanged, except_keys=brl)


def test_region_promotion_insert_and_discount_change():
    """A promotion of every product in EU, starting now: the EU quotes show
    it within 1 s, the US ones stay HITs. Its discount changed: the quotes
    carrying it reload, the others stay."""
    pids = take(40)
    keys = [(pid, r, "standard", "USD") for pid in pids for r in ("US", "EU")]
    eu = [k for k in keys if k[1] == "EU"]
    reloads, changed, unchanged = measure(
        "promotions: INSERT one for region EU, starting now",
        "INSERT INTO promotions VALUES (990001, NULL, 'EU', 2900, now() - interval '1 second',"
        " now() + interval '1 hour')", keys)
    assert sorted(changed) == sorted(eu), changed  # its id joins every EU quote's promo_ids
    assert reloads == len(eu), (reloads, len(eu))
    all_hits(unchanged)
    reloads, changed, unchanged = measure(
        "promotions: UPDATE that EU promotion's discount_bp",
        "UPDATE promotions SET discount_bp = 3100 WHERE id = 990001", keys)
    assert changed and set(changed) <= set(eu), changed
    assert reloads == len(eu), (reloads, len(eu))  # the quotes carrying it
    all_hits(unchanged, except_keys=eu)
    reloads, changed, unchanged = measure(
        "promotions: UPDATE that EU promotion's window (ends in 1 h 30)",
        "UPDATE promotions SET ends_at = now() + interval '90 minutes' WHERE id = 990001", keys)
    assert not changed, changed
    assert reloads == len(eu), (reloads, len(eu))
    all_hits(unchanged, except_keys=eu)


def test_product_promotion_reloads_that_product_in_its_region():
    """A promotion of one product in EU: its discount changed reloads that
    product's EU quotes only."""
    pids = take(20)
    target = pids[0]
    st.psql("INSERT INTO promotions VALUES (990002, %d, 'EU', 1000, now() - interval '1 second',"
            " now() + interval '1 hour')" % target)
    keys = [(pid, r, t, "USD") for pid in pids for r in ("US", "EU") for t in ("standard", "gold")]
    mine = [k for k in keys if k[0] == target and k[1] == "EU"]
    time.sleep(1.0)  # the catalog lists it everywhere
    reloads, changed, unchanged = measure(
        "promotions: UPDATE discount_bp of a one-product EU promotion",
        "UPDATE promotions SET discount_bp = 9000 WHERE id = 990002", keys)
    assert sorted(changed) == sorted(mine), changed
    assert reloads == len(mine), (reloads, mine)
    all_hits(unchanged)


def test_price_change_reloads_that_product():
    pids = take(20)
    keys = [(pid, "US", t, c) for pid in pids for t in ("standard", "gold") for c in ("USD", "EUR")]
    reloads, changed, unchanged = measure(
        "regional_prices: UPDATE one product's US price",
        "UPDATE regional_prices SET list_price_cents = list_price_cents + 1000"
        " WHERE product_id = %d AND region = 'US'" % pids[0], keys)
    assert sorted(changed) == sorted(k for k in keys if k[0] == pids[0]), changed
    assert reloads == len(changed), reloads
    all_hits(unchanged)


def test_tier_insert_then_delete():
    """A tier added changes no cached quote (everything stays a HIT) and is
    quotable within 1 s. A tier removed with its tier_discounts rows, in one
    transaction: its quotes answer 400 within 1 s; the other tiers stay
    HITs except the products whose tier_discounts rows went."""
    pids = take(40)
    keys = [(pid, "US", t, "USD") for pid in pids for t in ("standard", "gold", "silver")]
    reloads, changed, unchanged = measure(
        "tiers: INSERT a new tier", "INSERT INTO tiers VALUES ('diamond')", keys)
    assert not changed and reloads == 0, (changed, reloads)
    all_hits(unchanged)
    for p in px:  # quotable at once (measure waited 0.3 s after the write)
        got, _ = answer(p, (pids[0], "US", "diamond", "USD"))
        assert got[0] == 200, got
    had = {int(x) for x in st.psql(
        "SELECT product_id FROM tier_discounts WHERE tier = 'silver' AND product_id IN (%s)"
        % ",".join(map(str, pids))).split()}
    assert had, "no silver discounts among the products: pick others"
    reloads, changed, unchanged = measure(
        "tiers: DELETE a tier with its tier_discounts rows",
        "DELETE FROM tier_discounts WHERE tier = 'silver';"
        " DELETE FROM tiers WHERE name = 'silver'", keys)  # one transaction
    silver = [k for k in keys if k[2] == "silver"]
    assert sorted(changed) == sorted(silver), changed  # 400 now
    bumped = [k for k in keys if k[0] in had and k[2] != "silver"]
    assert reloads == len(bumped), (reloads, len(bumped))
    all_hits(unchanged, except_keys=bumped)


def test_older_trigger_payloads_keep_their_meaning():
    """An fx_rates trigger of the older file ("fx_rates:*"): the change is
    still served within 1 s, by the older rule (everything reloads)."""
    st.psql("DROP TRIGGER quotecache_notify ON fx_rates; CREATE TRIGGER quotecache_notify"
            " AFTER INSERT OR UPDATE OR DELETE ON fx_rates FOR EACH ROW"
            " EXECUTE FUNCTION quotecache_notify_row()")
    try:
        keys = [(pid, "US", "standard", c) for pid in take(20) for c in ("USD", "JPY")]
        reloads, changed, _ = measure(
            "fx_rates, older trigger installed: UPDATE the JPY rate",
            "UPDATE fx_rates SET usd_rate = usd_rate * 1.01 WHERE currency = 'JPY'", keys)
        # The older rule bumps after each worker's own catalog reload, one
        # bump per worker (a bump shared by the fleet would let a worker
        # that had not reloaded yet store under the new generation): every
        # quote reloads, once per worker whose bump came after its reload.
        assert changed, changed
        assert len(keys) <= reloads <= len(px) * len(keys), (len(changed), reloads)
    finally:
        st.psql_file(os.path.join(qcstack.SRC, "scripts", "sql", "triggers.sql"))


def test_in_process_tier_drops_by_scope():
    """--redis none: the in-process tier is the cache, and a currency change
    drops only that currency's copies there (its local scope counters)."""
    solo = qcstack.Proxy(st, redis="none", ttl=600).ready()
    try:
        keys = [(pid, "US", "standard", c) for pid in take(20) for c in CURRENCIES]
        for _ in range(20):
            if all(xc == "HIT" for _, xc in answers(solo, keys).values()):
                break
        else:
            raise AssertionError("keys do not warm up without Redis")
        st.tax_reset()
        st.psql("UPDATE fx_rates SET usd_rate = usd_rate * 1.01 WHERE currency = 'EUR'")
        t0 = time.monotonic()
        after = references(keys)
        eur = [k for k in keys if k[3] == "EUR"]
        while True:
            got = answers(solo, eur)
            if all(got[k][0] == after[k] for k in eur):
                break
            assert time.monotonic() - t0 < 1.0, "EUR not reflected without Redis within 1 s"
            time.sleep(0.01)
        time.sleep(0.3)
        got = answers(solo, keys)
        assert all(got[k][0] == after[k] for k in keys)
        assert all(got[k][1] == "HIT" for k in keys if k not in eur), \
            [(k, got[k][1]) for k in keys if k not in eur and got[k][1] != "HIT"][:5]
        assert st.tax_stats() == len(eur), (st.tax_stats(), len(eur))
    finally:
        solo.stop_clean()


# ------------------------------------------------------------------ races


def race(key, write_sql, what, limit=1.0):
    """A cold load of key is in flight on px[0] (query done, tax call held
    1 s) when write_sql commits; afterwards both instances must serve the
    post-write quote, and keep serving it (nothing stale was stored)."""
    st.tax_control(delay_ms=1000)
    try:
        res = {}
        st.tax_reset()
        t = threading.Thread(target=lambda: res.setdefault("r", answer(px[0], key)))
        t.start()
        deadline = time.monotonic() + 0.9
        while st.tax_stats() < 1:
            assert time.monotonic() < deadline, "no tax call for the cold load"
            time.sleep(0.01)
        old = reference(*key)
        st.psql(write_sql)
        t0 = time.monotonic()
        new = reference(*key)
        assert new != old, (what, "the write changed nothing")
        t.join(10)
        assert res["r"][0] in (old, new), res
    finally:
        st.tax_control(delay_ms=0)
    wait_reflected([key], {key: new}, t0, limit=limit + 1.0, what=what)
    time.sleep(0.6)  # past the in-process tier's life: what Redis holds
    for p in px + px:
        got, xc = answer(p, key)
        assert got == new, ("%s: the pre-write quote stayed cached" % what, xc, got, new)


def test_fx_write_racing_a_load():
    pid = take(1)[0]
    race((pid, "US", "standard", "GBP"),
         "UPDATE fx_rates SET usd_rate = usd_rate * 1.2 WHERE currency = 'GBP'", "fx GBP")


def test_region_promotion_write_racing_a_load():
    pid = take(1)[0]
    st.psql("INSERT INTO promotions VALUES (990003, NULL, 'UK', 1500, now() - interval '1 second',"
            " now() + interval '1 hour')")
    time.sleep(1.0)
    race((pid, "UK", "standard", "USD"),
         "UPDATE promotions SET discount_bp = 5500 WHERE id = 990003", "UK promotion")


def test_product_promotion_write_racing_a_load():
    pid = take(1)[0]
    st.psql("INSERT INTO promotions VALUES (990004, %d, 'US', 1500, now() - interval '1 second',"
            " now() + interval '1 hour')" % pid)
    time.sleep(1.0)
    race((pid, "US", "standard", "USD"),
         "UPDATE promotions SET discount_bp = 6600 WHERE id = 990004", "product promotion")


def test_tier_write_racing_a_load():
    pid = take(1)[0]
    st.psql("INSERT INTO tiers VALUES ('bronze')")
    time.sleep(1.0)
    race((pid, "US", "bronze", "USD"), "DELETE FROM tiers WHERE name = 'bronze'", "tier bronze")


def test_proxies_exit_cleanly():
    for p in px:
        p.stop_clean()


if __name__ == "__main__":
    qctest.main(globals())
