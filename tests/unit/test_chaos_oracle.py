"""Unit test of scripts/chaos_oracle.py (pure): the pricing arithmetic of
legacy-backend.md and the freshness windows the chaos run judges by. A
checker that accepts everything would pass every chaos run; this shows it
refuses what it must."""

import os
import sys

sys.path.insert(0, os.path.join(os.environ.get("QC_SRC") or
                                os.path.join(os.path.dirname(__file__), "..", ".."), "scripts"))
import chaos_oracle as o  # noqa: E402


def test_rounding():
    assert o.div_round(5, 10) == 1 and o.div_round(15, 10) == 2
    assert o.div_round(-5, 10) == -1 and o.div_round(4, 10) == 0
    assert o.round_dec("2.5") == 3 and o.round_dec("-2.5") == -3 and o.round_dec("2.49") == 2


def test_price_worked_example():
    # list 10000, tier 10 %, promo 5 %: 8550 USD cents; EUR 0.92: 7866;
    # break 5 % from 10: 7472.7 -> 7473; EU tax 20 %: 1573.2 -> 1573.
    unit, tax, total, vol = o.price(10000, 1000, 500, "0.92000000", ((1, 0), (10, 500)), "EU")
    assert (unit, tax, total) == (7866, 1573, 9439)
    assert vol == [(1, 9, 7866), (10, None, 7473)]
    # half away from zero at every step: 1 cent * 0.5 = 0.5 -> 1
    assert o.price(1, 0, 0, "0.50000000", ((1, 0),), "XX")[:3] == (1, 0, 1)


def history():
    h = o.History()
    p = 7
    h.active[p] = True
    h.set(0, ("lp", p, "US"), 10000)
    h.set(0, ("fx", "USD"), "1.00000000")
    h.set(0, ("vb", p), ((1, 0),))
    # a promotion of 10 % for product 7 in every region, [100, 200)
    h.set(0, ("pr", 1), (p, None, 1000, 100.0, 200.0))
    k = h.next_index()
    h.set(k, ("lp", p, "US"), 20000)
    h.commit(50.0, 50.01, "0/1")        # state 1 visible from 50.0
    return h, (p, "US", "standard", "USD")


def body(h, k, key, t):
    return h.quote(k, key, t)


def test_write_bound():
    h, key = history()
    old, new = body(h, 0, key, 10.0), body(h, 1, key, 10.0)
    assert old != new and old[5] == 10000 and new[5] == 20000
    # the old price until the commit was acknowledged (50.01) plus 1 s
    assert o.matches(h, key, old, 51.0 - 1, 51.0, 51.0, 51.0) == 0
    assert o.matches(h, key, old, 51.02 - 1, 51.02, 51.02, 51.02) is None
    assert o.matches(h, key, new, 51.02 - 1, 51.02, 51.02, 51.02) == 1
    # before the commit's clock, the new price is not yet possible
    assert o.matches(h, key, new, 49.0 - 1, 49.0, 49.0, 49.0) is None


def test_promotion_boundary_exact():
    h, key = history()
    with_promo, without = body(h, 1, key, 150.0), body(h, 1, key, 250.0)
    assert with_promo[4] == (1,) and with_promo[5] == 18000 and without[4] == ()
    # an answer whose request spans the end may carry either
    assert o.matches(h, key, with_promo, 199.0, 200.1, 199.9, 200.1) == 1
    assert o.matches(h, key, without, 199.0, 200.1, 199.9, 200.1) == 1
    # sent after the end: the promotion must be gone, whatever the write bound
    assert o.matches(h, key, with_promo, 199.0, 200.2, 200.1, 200.2) is None
    # and it must not apply before it starts
    assert o.matches(h, key, with_promo, 98.0, 99.5, 99.4, 99.5) is None


def test_missing_is_404():
    h, key = history()
    assert h.quote(1, (7, "EU", "standard", "USD"), 10.0) == ("404",)
    h.active[7] = False
    assert h.quote(1, key, 10.0) == ("404",)


if __name__ == "__main__":
    n = 0
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            fn()
            n += 1
    print("%d tests passed" % n)
