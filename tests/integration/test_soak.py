#!/usr/bin/env python3
"""The short soak (issue 11, item 5): scripts/soak for 60 s of mixed load
(after a 30 s warm-up: RSS still settles in the first half minute)
on one instance (two workers), then 2,000 idle keep-alive and 200 slowloris
connections held for 20 s while hits are timed. Asserts on the figures it
writes: RSS growth after warm-up under 5 % (not under ASan, where
LeakSanitizer at exit judges instead), descriptors back at baseline, only
200/304 answers, p99 of hits under 10 ms with the connections held (on a
box where the same timing without them already misses 10 ms: that they
add under 10 ms, and the test says the box was too busy), every
idle connection kept and still answering, every slowloris connection cut by
the header deadline (10 s from accept) and none answered. The long run is
`scripts/soak` (10 minutes, 10,000 idle, 1,000 slowloris; docs/soak.md).

Real redis-server, PostgreSQL and tax simulator (scripts/qcstack.py)."""

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

IDLE, SLOW, HEADER_TIMEOUT = 2000, 200, 10


def setup_module():
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")


def test_short_soak():
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "soak.json")
        r = subprocess.run([sys.executable, os.path.join(qctest.SRC, "scripts", "soak"),
                            "--seconds", "60", "--warmup", "30", "--cold-keys", "1000", "--idle", str(IDLE),
                            "--slowloris", str(SLOW), "--hold", "20", "--measure", "10",
                            "--header-timeout", str(HEADER_TIMEOUT), "--json", out],
                           capture_output=True, text=True, timeout=600)
        print(r.stdout[-3000:])
        assert os.path.exists(out), r.stderr[-4000:]
        with open(out) as f:
            fig = json.load(f)
    if not fig["asan"]:
        assert fig["rss_growth"] < 0.05, fig["samples"]
    assert fig["fds_end"] <= fig["fds_baseline"], fig["samples"]
    assert set(fig["status"]) <= {"200", "304"}, (fig["status"], fig["unexplained"])
    assert fig["kinds"]["cold"] > 0 and fig["kinds"]["no-cache"] > 0 and fig["writes"] > 0, fig
    assert fig["status"].get("304", 0) > 0, fig["status"]
    # "busy": the same timing without the connections already missed
    # 10 ms (a shared CI box); then the connections must add under 10 ms.
    u = fig["under_load"]
    # "asan": over the bound under ASan only, where it is not judged
    # (scripts/soak: the plain build's run judges the latency).
    allowed = ("ok", "busy", "asan") if fig["asan"] else ("ok", "busy")
    assert fig["p99_verdict"] in allowed, (u, fig["baseline"])
    if fig["p99_verdict"] == "busy":
        print("box too busy for the 10 ms claim: baseline p99 %.2f ms, held %.2f ms"
              % (fig["baseline"]["p99_ms"], u["p99_ms"]))
    idle = fig["idle"]
    assert idle["cut_by_server"] == 0 and idle["still_answering"] == idle["checked"], idle
    s = fig["slowloris"]
    assert s["answered"] == 0 and s["cut"] >= SLOW, s
    assert HEADER_TIMEOUT - 0.5 <= s["lifetime_min_s"] <= s["lifetime_max_s"] <= \
        HEADER_TIMEOUT + 1.5, s
    assert s["max_open"] >= SLOW * 0.95, s
    assert fig["held"]["fds"] >= IDLE + SLOW, fig["held"]
    assert fig["fds_after_close"] <= fig["fds_baseline"], fig
    assert r.returncode == 0, r.stdout[-3000:]


qctest.main(globals())
