#!/usr/bin/env python3
"""--access-log and request ids (issue 9, item 4), with the real binary:
lines are valid JSON with every field, a hostile X-Request-Id is replaced
(and the log stays valid JSON), a valid one is echoed, SIGUSR1 after `mv`
starts a new file with the next lines, both workers' lines arrive, and off
means no file."""

import json
import os
import re
import signal
import subprocess
import time

import qctest
from qctest import qcstack

st = None
FIELDS = {"time", "request_id", "client", "method", "target", "status", "cache", "bytes",
          "duration"}
RID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def setup_module():
    global st
    st = qcstack.Stack(products=50)


def teardown_module():
    st.stop()


def read_lines(path, want=0, timeout=3.0, rids=()):
    """The JSON lines of path once it holds at least `want` and a line for
    each of `rids` (flushed every 100 ms); every line must parse."""
    deadline = time.monotonic() + timeout
    while True:
        lines = []
        if os.path.exists(path):
            with open(path, "rb") as f:
                raw = f.read()
            assert raw == b"" or raw.endswith(b"\n"), raw[-200:]
            lines = [json.loads(l) for l in raw.decode("ascii").splitlines()]
        have = {l["request_id"] for l in lines}
        if (len(lines) >= want and all(r in have for r in rids)) or \
                time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def rid_of(headers):
    return headers.get("x-request-id")


def test_lines_are_json_with_every_field():
    path = os.path.join(st.dir, "access-fields.log")
    px = qcstack.Proxy(st, access_log=path).ready()
    try:
        s1, h1, _ = px.quote(1, region="US", tier="gold")
        s2, h2, _ = px.quote(1, region="US", tier="gold")
        s3, h3, _ = px.get("/nope?x=1")
        s4, h4, _ = qcstack.http_request(px.port, "HEAD", "/quote/1?region=US&tier=gold")
        assert (s1, s2, s3, s4) == (200, 200, 404, 200)
        lines = read_lines(path, rids=[rid_of(h) for h in (h1, h2, h3, h4)])
        by_rid = {l["request_id"]: l for l in lines}
        for l in lines:
            assert set(l) == FIELDS, l
            assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", l["time"]), l
            assert RID.match(l["request_id"]), l
            assert l["client"] == "127.0.0.1" and 0 <= l["duration"] < 5, l
        for h in (h1, h2, h3, h4):
            assert RID.match(rid_of(h)), h
        miss, hit, nf, head = (by_rid[rid_of(h)] for h in (h1, h2, h3, h4))
        assert (miss["cache"], hit["cache"]) == ("MISS", "HIT")
        assert miss["method"] == "GET" and miss["target"] == "/quote/1?region=US&tier=gold"
        assert miss["status"] == 200 and miss["bytes"] == int(h1["content-length"]) > 100
        assert nf["status"] == 404 and nf["cache"] is None and nf["target"] == "/nope?x=1"
        assert head["method"] == "HEAD" and head["bytes"] == 0 and head["cache"] == "HIT"
        assert len({rid_of(h) for h in (h1, h2, h3, h4)}) == 4
    finally:
        px.stop_clean()


def test_request_ids_given_and_hostile():
    path = os.path.join(st.dir, "access-rid.log")
    px = qcstack.Proxy(st, access_log=path).ready()
    try:
        good = "abc.DEF_123:req-9"
        s, h, _ = px.quote(2, region="US", tier="gold", headers={"X-Request-Id": good})
        assert s == 200 and rid_of(h) == good, h
        hostile = [b'x"}\\{"status":999', b"a" * 65, b"caf\xc3\xa9", b"a b",
                   b"\\u0000", b"x\x01y"]
        got = []
        for bad in hostile:
            raw = qcstack.raw_request(px.port, b"GET /quote/2?region=US&tier=gold HTTP/1.1\r\n"
                                      b"Host: x\r\nX-Request-Id: " + bad +
                                      b"\r\nConnection: close\r\n\r\n")
            status, headers, _ = qcstack.parse_response(raw)
            assert status == 200, raw[:200]
            rid = {k.lower(): v for k, v in headers.items()}["x-request-id"]
            assert RID.match(rid) and rid != bad.decode("latin-1"), rid
            got.append(rid)
        lines = read_lines(path, rids=[good] + got)
        rids = [l["request_id"] for l in lines]
        assert good in rids
        for rid in got:
            assert rid in rids
        assert all(l["status"] in (200, 503) for l in lines), lines
        # A hostile target is escaped too: the log still parses (read_lines).
        qcstack.raw_request(px.port, b'GET /x"\\%01\xff HTTP/1.1\r\nHost: x\r\n'
                            b"Connection: close\r\n\r\n")
        lines = read_lines(path, len(lines) + 1)
        assert any(l["target"].startswith('/x"\\') for l in lines), lines[-1]
    finally:
        px.stop_clean()


def test_sigusr1_reopens_after_mv():
    path = os.path.join(st.dir, "access-rot.log")
    px = qcstack.Proxy(st, access_log=path, workers=2).ready()
    try:
        _, h, _ = px.quote(3, region="US", tier="gold")
        before = rid_of(h)
        assert before in [l["request_id"] for l in read_lines(path, rids=[before])]
        os.rename(path, path + ".1")
        px.signal(signal.SIGUSR1)
        qcstack.wait_until(lambda: px.stderr_text().count("reopened") >= 2, 5,
                           "both workers reopen")
        assert os.path.exists(path), "no new file after SIGUSR1"
        after = [rid_of(px.quote(3, region="US", tier="gold")[1]) for _ in range(6)]
        new = [l["request_id"] for l in read_lines(path, rids=after)]
        assert all(r in new for r in after), (after, new)
        assert before not in new
        old = [l["request_id"] for l in read_lines(path + ".1", 1)]
        assert before in old and not any(r in old for r in after)
        assert px.running() and len(px.worker_pids()) == 2
    finally:
        px.stop_clean()


def test_both_workers_lines_arrive():
    path = os.path.join(st.dir, "access-two.log")
    px = qcstack.Proxy(st, access_log=path, workers=2).ready()
    try:
        rids = []
        for i in range(200):  # a new connection each: both workers take some
            s, h, _ = px.quote(1 + i % 5, region="US", tier="gold")
            assert s == 200
            rids.append(rid_of(h))
        lines = read_lines(path, rids=rids)
        logged = {l["request_id"] for l in lines}
        assert set(rids) <= logged
        prefixes = {r.split("-")[0] for r in rids}  # one random prefix per worker
        assert len(prefixes) == 2, prefixes
    finally:
        px.stop_clean()
    # Stopping writes out what was buffered: nothing is lost at exit.
    assert len(read_lines(path, 0, timeout=0)) >= 200


def test_off_means_no_file():
    before = set(os.listdir(st.dir))
    px = qcstack.Proxy(st, access_log="off").ready()
    try:
        s, h, _ = px.quote(4, region="US", tier="gold")
        assert s == 200 and RID.match(rid_of(h))  # ids are answered anyway
        time.sleep(0.3)
    finally:
        px.stop_clean()
    new = set(os.listdir(st.dir)) - before
    assert all(n.endswith(".stderr") for n in new), new
    assert not os.path.exists(os.path.join(os.getcwd(), "off"))


def test_unwritable_path_fails_start():
    px = qcstack.Proxy(st, access_log="/nonexistent-dir/access.log", start=False)
    try:
        px.start()
        assert False, "started with an access log it cannot open"
    except RuntimeError as e:
        assert "access-log" in str(e) or "access-log" in px.stderr_text(), e


def test_check_config_tries_the_path():
    """--check-config opens the access log like the workers will (nginx -t
    does the same): an unopenable path is one line and exit 2."""
    port = qcstack.free_port()
    base = [os.path.join(qcstack.build_dir(), "quotecache"), "--check-config",
            "--listen", "127.0.0.1:%d" % port, "--redis", st.redis_addr,
            "--postgres", st.conninfo, "--tax-url", st.tax_url]
    bad = subprocess.run(base + ["--access-log", "/nonexistent-dir/a.log"],
                         capture_output=True, text=True, timeout=20)
    assert bad.returncode == 2, (bad.returncode, bad.stderr)
    assert "--access-log /nonexistent-dir/a.log: No such file or directory" in bad.stderr
    path = os.path.join(st.dir, "access-check.log")
    good = subprocess.run(base + ["--access-log", path], capture_output=True, text=True,
                          timeout=20)
    assert good.returncode == 0, good.stderr
    assert os.path.exists(path)


qctest.main(globals())
