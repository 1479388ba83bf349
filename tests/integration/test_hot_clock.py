#!/usr/bin/env python3
"""The in-process tier follows the wall clock, not libevent's cached copy of
it: after a step of the wall clock (NTP, an operator), a promotion that the
new time has started applies within 1 second (api.md), also to a key the
in-process tier holds. libevent derives its cached wall time from the
monotonic clock plus a difference it resyncs only every 5 seconds, so a
lookup on that time kept serving the pre-step copy for up to ~6 s.

The wall clock of the proxy alone is stepped with libfaketime (Debian
package faketime; skipped without it); its monotonic clock stays real."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
TRIALS = 3  # the lag before the fix depended on the phase of libevent's 5 s resync


def test_promotion_applies_within_1s_of_a_clock_step_on_a_hot_key():
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    qctest.require_file(FAKETIME, "libfaketime")
    with qcstack.Stack(products=200) as st:
        pids = [int(x) for x in st.psql(
            "SELECT p.id FROM products p JOIN regional_prices rp ON rp.product_id = p.id "
            "AND rp.region = 'US' WHERE p.active AND NOT EXISTS (SELECT 1 FROM promotions "
            "WHERE product_id = p.id) ORDER BY p.id LIMIT %d" % TRIALS).split()]
        assert len(pids) == TRIALS
        offset_file = os.path.join(st.dir, "faketime")
        with open(offset_file, "w") as f:
            f.write("+0\n")
        env = {"LD_PRELOAD": FAKETIME, "FAKETIME_TIMESTAMP_FILE": offset_file,
               "FAKETIME_NO_CACHE": "1", "DONT_FAKE_MONOTONIC": "1",
               # an ASan build refuses a preload ahead of its runtime otherwise
               "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
        px = qcstack.Proxy(st, workers=1, redis="none", env=env).ready()
        offset = 0
        for i, pid in enumerate(pids):
            promo = 9100 + i
            # Starts 60 s after the proxy's present time; the step goes 120 s.
            st.psql("INSERT INTO promotions VALUES (%d, %d, NULL, 1500, now() + "
                    "interval '%d seconds', now() + interval '1 day')" % (promo, pid, offset + 60))
            time.sleep(1.5)  # the notification and the catalog reload
            st.tax_reset()
            px.quote(pid, tier="gold")
            s, h, q = px.quote(pid, tier="gold")
            assert s == 200 and promo not in q["promo_ids"], (s, q)
            offset += 120
            with open(offset_file, "w") as f:
                f.write("+%d\n" % offset)
            t0 = time.time()
            while True:
                s, h, q = px.quote(pid, tier="gold")
                assert s == 200, (s, q)
                waited = time.time() - t0
                if promo in q["promo_ids"]:
                    break
                assert waited < 1.0, "trial %d: promotion %d not applied %.2f s after the " \
                    "clock step (still %s)" % (i, promo, waited, q["promo_ids"])
                time.sleep(0.05)
        px.stop_clean()


def test_date_header_follows_a_clock_step():
    """Date (formatted once per second) is of the time read now: before, it
    came from the loop's cached time, a step behind for up to ~6 s."""
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    qctest.require_file(FAKETIME, "libfaketime")
    import email.utils
    with qcstack.Stack(products=50) as st:
        offset_file = os.path.join(st.dir, "faketime")
        with open(offset_file, "w") as f:
            f.write("+0\n")
        env = {"LD_PRELOAD": FAKETIME, "FAKETIME_TIMESTAMP_FILE": offset_file,
               "FAKETIME_NO_CACHE": "1", "DONT_FAKE_MONOTONIC": "1",
               # an ASan build refuses a preload ahead of its runtime otherwise
               "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
        px = qcstack.Proxy(st, workers=1, redis="none", env=env).ready()
        for i in range(1, TRIALS + 1):
            offset = 3600 * i
            with open(offset_file, "w") as f:
                f.write("+%d\n" % offset)
            s, h, _ = px.get("/healthz")
            date = dict((k.lower(), v) for k, v in h.items())["date"]
            got = email.utils.parsedate_to_datetime(date).timestamp()
            want = time.time() + offset
            assert abs(got - want) <= 2, "trial %d: Date %s is %.0f s off the clock" % (
                i, date, got - want)
            time.sleep(0.7)
        px.stop_clean()


def test_age_follows_a_clock_step():
    """Age and the Cache-Status ttl of a hit are differences with the copy's
    wall-clock store time, so they take the wall clock read now: before,
    the loop's cached time, a step behind for up to ~6 s (Age 0 a minute
    after a copy was stored)."""
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    qctest.require_file(FAKETIME, "libfaketime")
    with qcstack.Stack(products=50) as st:
        offset_file = os.path.join(st.dir, "faketime")
        with open(offset_file, "w") as f:
            f.write("+0\n")
        env = {"LD_PRELOAD": FAKETIME, "FAKETIME_TIMESTAMP_FILE": offset_file,
               "FAKETIME_NO_CACHE": "1", "DONT_FAKE_MONOTONIC": "1",
               # an ASan build refuses a preload ahead of its runtime otherwise
               "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
        px = qcstack.Proxy(st, workers=1, redis="none", ttl=3600, env=env).ready()
        s, h, _ = px.quote(1)
        assert s == 200, s
        for i in range(1, TRIALS + 1):
            offset = 60 * i
            with open(offset_file, "w") as f:
                f.write("+%d\n" % offset)
            s, h, _ = px.quote(1)
            hd = dict((k.lower(), v) for k, v in h.items())
            assert s == 200 and hd.get("x-cache") == "HIT", (s, hd)
            age = int(hd["age"])
            assert offset - 3 <= age <= offset + 3, "trial %d: Age %d, %d s after the store" % (
                i, age, offset)
            ttl = int(hd["cache-status"].split("ttl=")[1])
            assert abs(ttl - (3600 - age)) <= 1, (ttl, age)
        px.stop_clean()


if __name__ == "__main__":
    qctest.main(globals())
