"""chaos_oracle: the pricing rules of shared/spec/legacy-backend.md, written
again in Python (independent of the project's SQL), evaluated against the
history of database states that scripts/chaos records as the only writer.

Pure: no I/O. The history is kept per item (one price row, one tier
discount, one product's volume breaks, one fx rate, one promotion) as the
list of (commit index, value) it took, so state k is "every item's last
value at an index <= k" and a run of 10 minutes costs memory per write, not
per write times the data set.

State k is current from commit k's clock_timestamp() (read inside its
transaction, so before it became visible) until commit k+1's COMMIT was
acknowledged (after it became visible): a deliberately wide interval, so the
oracle never blames the proxy for the harness's own timing uncertainty.
"""

import bisect
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal

INF = float("inf")
TAX_BP = {"US": 700, "EU": 2000, "UK": 2000, "APAC": 1000, "LATAM": 1500}


def div_round(n, d):
    """round(n / d) half away from zero, on integers (PostgreSQL's
    round(numeric))."""
    q, r = divmod(abs(n), d)
    if 2 * r >= d:
        q += 1
    return q if (n >= 0) == (d > 0) else -q


def round_dec(x):
    return int(Decimal(x).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def price(list_cents, tier_bp, promo_bp, usd_rate, breaks, region):
    """Steps 4 to 8 of "How a quote is computed": (unit, tax, total, volume
    list). usd_rate is a decimal string; breaks sorted (min_qty, bp)."""
    unit_usd = div_round(list_cents * (10000 - tier_bp) * (10000 - promo_bp), 10 ** 8)
    unit = round_dec(Decimal(unit_usd) * Decimal(usd_rate))
    vol = []
    for i, (mq, bp) in enumerate(breaks):
        nxt = breaks[i + 1][0] - 1 if i + 1 < len(breaks) else None
        vol.append((mq, nxt, div_round(unit * (10000 - bp), 10000)))
    # The tax service: round(N * rate_bp / 10000), rate by region.
    tax = div_round(unit * TAX_BP.get(region, 0), 10000)
    return unit, tax, unit + tax, vol


class History:
    def __init__(self):
        # commits[k] = (visible_from, acked, lsn); state 0 is the initial load.
        self.clock = [-INF]
        self.acked = [-INF]
        self.lsn = [None]
        self.items = {}              # item -> ([indices], [values])
        self.promos_of = defaultdict(set)  # product id or None -> promotion ids
        self.active = {}             # product -> bool (not written by the run)
        self.tiers = set()
        self.currencies = set()

    # -- recording

    def set(self, k, item, value):
        idx, vals = self.items.setdefault(item, ([], []))
        if idx and idx[-1] == k:
            vals[-1] = value
        else:
            idx.append(k)
            vals.append(value)
        if item[0] == "pr" and value is not None:
            self.promos_of[value[0]].add(item[1])

    def commit(self, visible_from, acked, lsn):
        """Closes the commit whose items were set with index len(clock);
        returns that index."""
        self.clock.append(visible_from)
        self.acked.append(acked)
        self.lsn.append(lsn)
        return len(self.clock) - 1

    def next_index(self):
        return len(self.clock)

    def get(self, item, k, default=None):
        e = self.items.get(item)
        if e is None:
            return default
        i = bisect.bisect_right(e[0], k) - 1
        return e[1][i] if i >= 0 else default

    # -- windows

    def interval(self, k):
        end = self.acked[k + 1] if k + 1 < len(self.acked) else INF
        return self.clock[k], end

    def states_current(self, lo, hi):
        """Indices k whose interval meets [lo, hi], ascending."""
        kmax = bisect.bisect_right(self.clock, hi) - 1
        # first k with end_k >= lo, end_k = acked[k+1]
        kmin = max(0, bisect.bisect_left(self.acked, lo) - 1)
        return range(kmin, kmax + 1)

    # -- the quote

    def _promos(self, k, p, r):
        out = []
        for pid in self.promos_of.get(p, set()) | self.promos_of.get(None, set()):
            v = self.get(("pr", pid), k)
            if v is not None and v[0] in (p, None) and v[1] in (r, None):
                out.append((pid, v))
        return out

    def boundaries(self, k, key, lo, hi):
        """Promotion start/end instants of (P, R) in state k inside (lo, hi]."""
        p, r = key[0], key[1]
        out = set()
        for _, v in self._promos(k, p, r):
            for t in (v[3], v[4]):
                if lo < t <= hi:
                    out.add(t)
        return out

    def quote(self, k, key, t):
        """The quote for key (P, R, T, C) in state k at instant t: a tuple
        comparable with answer_tuple(), or ("404",)."""
        p, r, tier, cur = key
        lp = self.get(("lp", p, r), k)
        if lp is None or not self.active.get(p, False):
            return ("404",)
        tier_bp = self.get(("td", p, tier), k) or 0
        active = sorted((pid, v[2]) for pid, v in self._promos(k, p, r)
                        if v[3] <= t < v[4])
        promo_bp = max((bp for _, bp in active), default=0)
        rate = self.get(("fx", cur), k)
        breaks = self.get(("vb", p), k) or ()
        unit, tax, total, vol = price(lp, tier_bp, promo_bp, rate, breaks, r)
        return (p, r, tier, cur, tuple(pid for pid, _ in active), unit, tax, total,
                tuple(vol))


def answer_tuple(body):
    """The fields of a 200 body the oracle checks, in quote()'s shape."""
    return (body["product_id"], body["region"], body["tier"], body["currency"],
            tuple(body["promo_ids"]), body["unit_price_cents"], body["tax_cents"],
            body["total_cents"],
            tuple((v["min_qty"], v["max_qty"], v["unit_price_cents"])
                  for v in body["volume_pricing"]))


def matches(h, key, want, lo, hi, t_lo, t_hi):
    """Does `want` (answer_tuple or ("404",)) equal the quote of some state
    current during [lo, hi] at some instant in [t_lo, t_hi]? Returns the
    matching state's index or None."""
    for k in reversed(h.states_current(lo, hi)):
        times = {t_lo} | h.boundaries(k, key, t_lo, t_hi)
        for t in times:
            if h.quote(k, key, t) == want:
                return k
    return None


def lag_of(h, k, received):
    """How far behind `received` state k's interval ended (0 if current)."""
    _, end = h.interval(k)
    return max(0.0, received - end)


def changed_between(h, key, k0, k1):
    """Kinds of the items of key whose value differs between states k0 and
    k1 ("lp", "td", "vb", "fx", "pr")."""
    p, r, tier, cur = key
    items = [("lp", p, r), ("td", p, tier), ("vb", p), ("fx", cur)]
    items += [("pr", pid) for pid in h.promos_of.get(p, set()) | h.promos_of.get(None, set())]
    return sorted({it[0] for it in items if h.get(it, k0) != h.get(it, k1)})
