#!/usr/bin/env python3
"""Quote correctness: every field of /quote answers checked against a
reference computed here, independently of the proxy, from the raw rows of
legacy-backend.md (simple SQL, Python Decimal arithmetic, half away from
zero). Also the response headers (Content-Type, ETag / If-None-Match,
X-Cache) and that a Redis HIT replays the MISS body byte for byte."""

import json
import os
import random
import sys
import urllib.parse
from decimal import ROUND_HALF_UP, Decimal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

PRODUCTS = 2000
REGIONS = ["US", "EU", "UK", "APAC", "LATAM"]
TAX_BP = {"US": 700, "EU": 2000, "UK": 2000, "APAC": 1000, "LATAM": 1500}
# Extra products added before any proxy starts, priced so that every
# rounding step lands exactly on .5 (half away from zero must round up).
HALF_PID = 900001
st = None
ref = None


# ------------------------------------------------------------------ reference


def rows(sql):
    out = st.psql(sql).strip()
    return [line.split("|") for line in out.splitlines()] if out else []


TIES = [0]  # how many exact .5 roundings the reference has done


def rnd(x):
    """PostgreSQL round(numeric): half away from zero (all values >= 0 here)."""
    x = Decimal(x)
    if x - int(x) == Decimal("0.5"):
        TIES[0] += 1
    return int(x.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def idiv(n, d):
    """n / d rounded half up, in integers only (n, d >= 0)."""
    return (2 * n + d) // (2 * d)


def int_quote(ref, pid, region, tier, currency):
    """A second, integer-only computation to hold the Decimal one to."""
    lst = ref.prices[(pid, region)]
    tbp = ref.tier_bp.get((pid, tier), 0)
    pbp = max((p["bp"] for p in ref.promos_for(pid, region)), default=0)
    unit_usd = idiv(lst * (10000 - tbp) * (10000 - pbp), 10 ** 8)
    rate = int(ref.fx[currency] * 10 ** 8)
    unit = idiv(unit_usd * rate, 10 ** 8)
    tax = idiv(unit * TAX_BP.get(region, 0), 10000)
    return unit, tax, [idiv(unit * (10000 - bp), 10000) for _, bp in ref.breaks[pid]]


class Reference:
    """The raw pricing rows, fetched in a few bulk queries."""

    def __init__(self):
        self.active = {int(i): a == "t" for i, a in rows("SELECT id, active FROM products")}
        self.prices = {(int(p), r): int(c) for p, r, c in
                       rows("SELECT product_id, region, list_price_cents FROM regional_prices")}
        self.regions = {r for (_, r) in self.prices}  # api.md: an unknown region is a 400
        self.tiers = {t for (t,) in rows("SELECT name FROM tiers")}
        self.tier_bp = {(int(p), t): int(bp) for p, t, bp in
                        rows("SELECT product_id, tier, discount_bp FROM tier_discounts")}
        self.fx = {c: Decimal(r) for c, r in rows("SELECT currency, usd_rate FROM fx_rates")}
        self.breaks = {}
        for p, q, bp in rows("SELECT product_id, min_qty, discount_bp FROM volume_breaks "
                             "ORDER BY product_id, min_qty"):
            self.breaks.setdefault(int(p), []).append((int(q), int(bp)))
        # Every promotion with its state at now(): active / expired / future.
        self.promos = []
        for i, p, r, bp, state in rows(
                "SELECT id, coalesce(product_id::text, ''), coalesce(region, ''), discount_bp,"
                " CASE WHEN starts_at <= now() AND now() < ends_at THEN 'active'"
                "      WHEN ends_at <= now() THEN 'expired' ELSE 'future' END"
                " FROM promotions ORDER BY id"):
            self.promos.append(dict(id=int(i), product=int(p) if p else None,
                                    region=r or None, bp=int(bp), state=state))

    def promos_for(self, pid, region, state="active"):
        return [p for p in self.promos if p["state"] == state
                and p["product"] in (None, pid) and p["region"] in (None, region)]

    def quote(self, pid, region, tier, currency):
        """(status, document) the proxy must answer for normalized inputs."""
        if region not in self.regions or tier not in self.tiers or currency not in self.fx:
            return 400, None
        if not self.active.get(pid) or (pid, region) not in self.prices:
            return 404, None
        lst = self.prices[(pid, region)]
        tbp = self.tier_bp.get((pid, tier), 0)
        promos = self.promos_for(pid, region)
        pbp = max((p["bp"] for p in promos), default=0)
        unit_usd = rnd(Decimal(lst) * (10000 - tbp) * (10000 - pbp) / Decimal(10 ** 8))
        unit = rnd(unit_usd * self.fx[currency])
        ladder = []
        br = self.breaks.get(pid, [])
        for i, (q, bp) in enumerate(br):
            ladder.append({"min_qty": q,
                           "max_qty": br[i + 1][0] - 1 if i + 1 < len(br) else None,
                           "unit_price_cents": rnd(Decimal(unit) * (10000 - bp) / 10000)})
        tax = rnd(Decimal(unit) * TAX_BP.get(region, 0) / 10000)
        return 200, {"product_id": pid, "region": region, "tier": tier, "currency": currency,
                     "promo_ids": sorted(p["id"] for p in promos),
                     "unit_price_cents": unit, "tax_cents": tax, "total_cents": unit + tax,
                     "volume_pricing": ladder}


def add_half_products():
    """Products whose every rounding step is an exact .5, plus one with two
    overlapping active promotions (the largest applies, both are listed)."""
    st.psql("""
BEGIN;
INSERT INTO products VALUES (900001, 'SKU-HALF-1', 'half up', true),
                            (900002, 'SKU-HALF-2', 'two promos', true),
                            (900003, 'SKU-HALF-3', 'off', false);
-- 5 * 0.9 = 4.5 -> 5 (gold); JPY 5 * 151.5 = 757.5 -> 758; 15 * 0.9 = 13.5 -> 14
INSERT INTO regional_prices VALUES (900001, 'US', 5), (900001, 'EU', 15),
                                   (900002, 'US', 100001), (900002, 'UK', 333),
                                   (900003, 'US', 1000);
INSERT INTO tier_discounts VALUES (900001, 'gold', 1000), (900002, 'platinum', 2500);
-- 5000 bp breaks on odd unit prices: x.5 -> up
INSERT INTO volume_breaks VALUES (900001, 1, 0), (900001, 3, 5000), (900001, 7, 9999),
                                 (900002, 1, 0), (900002, 2, 5000), (900003, 1, 0);
INSERT INTO promotions VALUES
  (900001, 900002, NULL, 1500, now() - interval '1 day', now() + interval '1 day'),
  (900002, 900002, 'US', 3000, now() - interval '2 days', now() + interval '2 days'),
  (900003, 900002, 'US', 9000, now() - interval '2 days', now() - interval '1 day'),
  (900004, 900002, NULL, 9000, now() + interval '1 day', now() + interval '2 days'),
  (900005, 900003, NULL, 100, now() - interval '1 day', now() + interval '1 day');
COMMIT;
""")


def setup_module():
    global st, ref
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=PRODUCTS, seed=1)
    add_half_products()
    ref = Reference()


def teardown_module():
    if st is not None:
        st.stop()


# ------------------------------------------------------------------ helpers


def path_for(pid, region, tier, currency):
    q = [("region", region), ("tier", tier)]
    if currency is not None:
        q.append(("currency", currency))
    return "/quote/%s?%s" % (pid, urllib.parse.urlencode(q))


def norm(pid, region, tier, currency):
    return (int(pid), region.upper(), tier.lower(), (currency or "USD").upper())


def check_answer(case, res, xcache_ok):
    """Asserts one answer against the reference; returns the 200 body."""
    status, headers, body = res
    pid, region, tier, cur = norm(*case)
    want_status, want = ref.quote(pid, region, tier, cur)
    assert status == want_status, (case, status, body)
    assert headers.get("content-type") == "application/json", (case, headers)
    doc = json.loads(body)
    if status != 200:
        assert isinstance(doc.get("error"), str) and doc["error"], (case, doc)
        assert isinstance(doc.get("message"), str), (case, doc)
        assert "etag" not in headers, (case, headers)
        return None
    assert headers.get("x-cache") in xcache_ok, (case, headers)
    assert headers.get("etag", "").startswith('"'), (case, headers)
    for field in want:
        assert field in doc, (case, field, doc)
        assert doc[field] == want[field], (case, field, doc[field], want[field])
        assert type(doc[field]) is type(want[field]), (case, field, doc[field])
    return body


def random_cases(n, rng):
    inactive = [p for p, a in ref.active.items() if not a and p <= PRODUCTS]
    promo_products = sorted({p["product"] for p in ref.promos if p["product"]})
    currencies = sorted(ref.fx)
    tiers = sorted(ref.tiers)
    cases = []
    for _ in range(n):
        r = rng.random()
        if r < 0.06:
            pid = rng.choice(inactive)
        elif r < 0.16:
            pid = rng.choice(promo_products)
        elif r < 0.19:
            pid = rng.choice([PRODUCTS + 1, 99999, 9223372036854775807, HALF_PID + 2])
        elif r < 0.22:
            pid = rng.choice([HALF_PID, HALF_PID + 1])
        else:
            pid = rng.randint(1, PRODUCTS)
        sold = [reg for reg in REGIONS if (pid, reg) in ref.prices]
        unsold = [reg for reg in REGIONS if (pid, reg) not in ref.prices]
        r = rng.random()
        if r < 0.12 and unsold:
            region = rng.choice(unsold)
        elif r < 0.15:
            region = rng.choice(["XX", "Mars"])
        else:
            region = rng.choice(sold or REGIONS)
        tier = rng.choice(tiers)
        cur = None if rng.random() < 0.1 else rng.choice(currencies)
        if rng.random() < 0.1:  # case does not matter
            region, tier = region.lower(), tier.upper()
            cur = cur.lower() if cur else cur
        if rng.random() < 0.05:
            pid = "00%d" % pid  # leading zeros are canonicalized
        cases.append((pid, region, tier, cur))
    return cases


def run_cases(port, cases, headers=None, batch=100):
    out = []
    for i in range(0, len(cases), batch):
        res = qcstack.concurrent_gets(port, [path_for(*c) for c in cases[i:i + batch]],
                                      headers=headers, timeout=30)
        out.extend(res)
    return out


# With --redis none the proxy still caches in process; tests that want every
# answer from the origin say so.
ORIGIN = {"Cache-Control": "no-cache"}


def ready_proxy(**kw):
    px = qcstack.Proxy(st, **kw)
    px.wait_health(status="ok", timeout=10)  # catalog loaded
    return px


# ------------------------------------------------------------------ tests


def test_reference_self_check():
    """The Decimal reference agrees with an integer-only one on 20,000
    random inputs, and with hand-computed numbers (so a wrong reference
    cannot silently agree with a wrong proxy)."""
    rng = random.Random(3)
    keys = sorted(k for k in ref.prices if ref.active[k[0]])
    for _ in range(20000):
        pid, reg = rng.choice(keys)
        tier, cur = rng.choice(sorted(ref.tiers)), rng.choice(sorted(ref.fx))
        s, q = ref.quote(pid, reg, tier, cur)
        assert s == 200
        unit, tax, ladder = int_quote(ref, pid, reg, tier, cur)
        assert (q["unit_price_cents"], q["tax_cents"]) == (unit, tax), (pid, reg, tier, cur)
        assert [b["unit_price_cents"] for b in q["volume_pricing"]] == ladder
    assert TIES[0] > 100, TIES  # ties do occur: half-up vs half-even matters
    assert rnd(Decimal("2.5")) == 3 and rnd(Decimal("3.5")) == 4 and rnd("0.49999") == 0
    assert idiv(5, 2) == 3 and idiv(7, 2) == 4 and idiv(4, 10) == 0
    s, q = ref.quote(HALF_PID, "US", "gold", "JPY")
    assert [b["max_qty"] for b in q["volume_pricing"]] == [2, 6, None], q
    assert q["total_cents"] == q["unit_price_cents"] + q["tax_cents"]
    s, q = ref.quote(HALF_PID + 1, "US", "platinum", "USD")
    assert {900001, 900002} <= set(q["promo_ids"]), q
    assert 900003 not in q["promo_ids"] and 900004 not in q["promo_ids"]
    assert ref.quote(HALF_PID + 2, "US", "gold", "USD")[0] == 404
    assert ref.quote(1, "US", "bronze", "USD")[0] == 400
    assert ref.quote(1, "US", "gold", "XYZ")[0] == 400


def test_random_quotes_from_origin():
    """1,000 random quotes, every one loaded from the origin (no Redis)."""
    rng = random.Random(20240611)
    cases = random_cases(1000, rng)
    statuses = {}
    ties = TIES[0]
    with ready_proxy(redis="none") as px:
        for case, res in zip(cases, run_cases(px.port, cases, headers=ORIGIN)):
            check_answer(case, res, {"BYPASS", "COALESCED"})
            statuses[res[0]] = statuses.get(res[0], 0) + 1
        ties = TIES[0] - ties
        assert px.stop() == 0
    # The mix really covers what it claims to.
    assert statuses.get(200, 0) > 600 and statuses.get(404, 0) > 100, statuses
    norm_cases = [norm(*c) for c in cases]
    assert {c[3] for c in norm_cases} == set(ref.fx)
    assert {c[2] for c in norm_cases} == ref.tiers
    with_promo = [c for c in norm_cases
                  if ref.quote(*c)[0] == 200 and ref.quote(*c)[1]["promo_ids"]]
    assert len(with_promo) > 50, len(with_promo)
    assert ties > 20, ties  # answers where half-up rounding decided a cent


def test_promotion_states():
    """Active promotions apply (largest discount, all ids listed); expired
    and future ones of the same product do not."""
    by_state = {}
    for p in ref.promos:
        if p["product"] and p["product"] <= PRODUCTS and ref.active.get(p["product"]):
            regions = [p["region"]] if p["region"] else REGIONS
            for reg in regions:
                if (p["product"], reg) in ref.prices:
                    by_state.setdefault(p["state"], []).append((p["product"], reg, p["id"]))
    for state in ("active", "expired", "future"):
        assert by_state.get(state), (state, by_state)
    cases = []
    for state, items in by_state.items():
        for pid, reg, _ in items[:15]:
            cases.append((pid, reg, "standard", "USD"))
    cases += [(HALF_PID + 1, "US", "platinum", "EUR"), (HALF_PID + 1, "UK", "gold", None)]
    with ready_proxy(redis="none") as px:
        for case, res in zip(cases, run_cases(px.port, cases, headers=ORIGIN)):
            body = check_answer(case, res, {"BYPASS", "COALESCED"})
            doc = json.loads(body)
            pid, reg = case[0], case[1]
            for p in ref.promos_for(pid, reg, "expired") + ref.promos_for(pid, reg, "future"):
                assert p["id"] not in doc["promo_ids"], (case, p, doc)
            for p in ref.promos_for(pid, reg, "active"):
                assert p["id"] in doc["promo_ids"], (case, p, doc)
        # Two overlapping promotions: 30% (US only) beats 15%, both listed.
        s, _, doc = px.quote(HALF_PID + 1, "US", "platinum")
        assert s == 200 and 900001 in doc["promo_ids"] and 900002 in doc["promo_ids"], doc
        globals_ = [p for p in ref.promos_for(HALF_PID + 1, "US") if p["product"] is None]
        top = max([3000] + [p["bp"] for p in globals_])
        want = rnd(Decimal(100001) * 7500 * (10000 - top) / Decimal(10 ** 8))
        assert doc["unit_price_cents"] == want, (doc, want)
        assert px.stop() == 0


def test_many_active_promotions():
    """A quote keys every active promotion (up to 256): 65 are all listed
    and the best applies; past the bound the answer is a 500 error, never a
    quote that silently drops them, and nothing is cached."""
    pids = [int(x) for x in st.psql(
        "SELECT p.id FROM products p JOIN regional_prices rp ON rp.product_id = p.id "
        "AND rp.region = 'US' WHERE p.active AND NOT EXISTS (SELECT 1 FROM promotions pr "
        "WHERE pr.product_id = p.id) ORDER BY p.id DESC LIMIT 2").split()]
    for pid, n, base in ((pids[0], 65, 800000), (pids[1], 300, 810000)):
        st.psql("INSERT INTO promotions SELECT %d + g, %d, NULL, 100 + g, now() - interval "
                "'1 day', now() + interval '1 day' FROM generate_series(1, %d) g"
                % (base, pid, n))
    try:
        with ready_proxy() as px:
            qcstack.wait_until(lambda: px.get(path_for(pids[0], "US", "gold", None))[0] == 200
                               and len(json.loads(px.get(path_for(pids[0], "US", "gold",
                                                                  None))[2])["promo_ids"]) > 64,
                               5, "the catalog to hold the new promotions")
            s, _, body = px.get(path_for(pids[0], "US", "gold", None))
            doc = json.loads(body)
            assert s == 200 and set(range(800001, 800066)) <= set(doc["promo_ids"]), doc
            s, h, body = px.get(path_for(pids[1], "US", "gold", None))
            assert s == 500 and json.loads(body)["error"] == "too_many_promotions", (s, body)
            assert px.get(path_for(pids[1], "US", "gold", None))[0] == 500
            assert px.stop() == 0
    finally:
        st.psql("DELETE FROM promotions WHERE id > 800000 AND id <= 810300")


def test_not_found_answers():
    """Not sold in the region, inactive, nonexistent: 404 JSON error, no tax call."""
    inactive = [p for p, a in ref.active.items() if not a]
    unsold = [(p, r) for p in range(11, PRODUCTS) for r in REGIONS
              if ref.active[p] and (p, r) not in ref.prices][:10]
    cases = [(p, "US", "gold", None) for p in inactive[:10]]
    cases += [(p, r, "silver", "EUR") for p, r in unsold]
    cases += [(PRODUCTS + 1, "US", "gold", None), (9223372036854775807, "EU", "gold", None),
              (HALF_PID + 2, "US", "standard", None)]
    with ready_proxy(redis="none") as px:
        st.tax_reset()
        for case in cases:
            s, h, body = px.get(path_for(*case))
            assert s == 404, (case, s, body)
            assert h["content-type"] == "application/json"
            doc = json.loads(body)
            assert isinstance(doc.get("error"), str) and doc.get("message"), doc
        assert st.tax_stats() == 0
        assert px.stop() == 0


def test_headers_etag_and_304():
    with ready_proxy(redis="none") as px:
        p = path_for(HALF_PID, "US", "gold", "JPY")
        s, h, body = px.get(p)
        assert s == 200 and h["x-cache"] == "BYPASS", (s, h)
        etag = h["etag"]
        assert len(etag) > 2 and etag[0] == etag[-1] == '"', etag
        # Same inputs, other spelling: same body, same tag.
        s2, h2, b2 = px.get("/quote/0000900001?currency=jpy&TIER=Gold&region=us")
        assert s2 == 200 and b2 == body and h2["etag"] == etag, (s2, h2, b2)
        for inm in (etag, "W/" + etag, '"nope", ' + etag, "*"):
            s, h, b = px.get(p, headers={"If-None-Match": inm})
            assert s == 304 and b == b"", (inm, s, b)
            assert h.get("etag") == etag, h
        for inm in ('"nope"', etag[:-2] + '"', etag + "x"):
            s, h, b = px.get(p, headers={"If-None-Match": inm})
            assert s == 200 and b == body, (inm, s)
        # A different quote has a different tag.
        s, h, _ = px.get(path_for(HALF_PID, "US", "gold", "USD"))
        assert s == 200 and h["etag"] != etag
        # Errors carry JSON but no ETag, and If-None-Match cannot turn them into 304.
        s, h, _ = px.get(path_for(HALF_PID + 2, "US", "gold", None),
                         headers={"If-None-Match": "*"})
        assert s == 404 and "etag" not in h, (s, h)
        assert px.stop() == 0


def test_redis_hit_is_byte_identical():
    """Through Redis: MISS then HIT with the very same bytes (and the same
    bytes as the origin gave without a cache); no-cache reloads."""
    rng = random.Random(7)
    seen, cases = set(), []
    for c in random_cases(600, rng):
        # distinct entries so the first is a MISS; a 400 never reaches the cache
        if norm(*c) not in seen and ref.quote(*norm(*c))[0] != 400:
            seen.add(norm(*c))
            cases.append(c)
    cases = cases[:300]
    with ready_proxy(redis="none") as px:
        origin = run_cases(px.port, cases, headers=ORIGIN)
        assert px.stop() == 0
    with ready_proxy() as px:
        first = run_cases(px.port, cases)
        st.tax_reset()
        second = run_cases(px.port, cases)
        assert st.tax_stats() == 0  # hits cost no tax call
        n200 = 0
        for case, o, a, b in zip(cases, origin, first, second):
            check_answer(case, a, {"MISS"})
            assert a[0] == b[0] and a[2] == b[2], (case, a, b)
            assert b[1].get("x-cache") == "HIT", (case, a[1], b[1])
            assert a[2] == o[2], (case, a[2], o[2])
            if a[0] == 200:
                n200 += 1
                assert a[1]["etag"] == b[1]["etag"] == o[1]["etag"], case
                s, h, body = px.get(path_for(*case), headers={"If-None-Match": b[1]["etag"]})
                assert s == 304 and body == b"" and h.get("x-cache") == "HIT", (case, s, h)
        assert n200 > 150, n200
        # Cache-Control: no-cache reads through to the origin and stores.
        case = next(c for c, a in zip(cases, first) if a[0] == 200)
        st.tax_reset()
        s, h, body = px.get(path_for(*case), headers={"Cache-Control": "no-cache"})
        assert s == 200 and h["x-cache"] == "MISS" and st.tax_stats() == 1, (s, h)
        s, h, body2 = px.get(path_for(*case))
        assert s == 200 and h["x-cache"] == "HIT" and body2 == body
        assert px.stop() == 0


if __name__ == "__main__":
    qctest.main(globals())
