#!/usr/bin/env python3
"""The binary's outside edges: flags and environment variables, start-up
errors as one clear line, --workers sharing one port, SIGTERM draining
in-flight requests, and --install-triggers being idempotent."""

import os
import signal
import socket
import subprocess
import threading
import time

import qctest
from qctest import qcstack

BIN = os.path.join(qcstack.build_dir(), "quotecache")
st = None


def run(args, env=None, timeout=10):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout, env=e)


def setup_module():
    global st
    qctest.require_file(BIN, "quotecache")
    st = qcstack.Stack(products=200, tax_delay_ms=300)


def teardown_module():
    st.stop()


def one_error_line(r):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("quotecache: "), lines[0]
    return lines[0]


def test_help_and_version():
    r = run(["--help"])
    assert r.returncode == 0 and "--listen" in r.stdout and "--stale-ttl" in r.stdout
    r = run(["--version"])
    assert r.returncode == 0 and r.stdout.startswith("quotecache ")


def test_bad_flags_exit_with_one_line():
    cases = [
        (["--nope"], "unknown option"),
        (["--ttl", "abc"], "--ttl"),
        (["--ttl", "0"], "--ttl"),
        (["--ttl"], "needs a value"),
        (["--listen", "localhost"], "--listen"),
        (["--listen", "127.0.0.1:70000"], "--listen"),
        (["--redis", "nowhere"], "--redis"),
        (["--key-version", "a b"], "--key-version"),
        (["--tax-url", "ftp://x"], "--tax-url"),
        (["--admin-token", "short"], "--admin-token"),
        (["--log-level", "loud"], "--log-level"),
        (["stray"], "unexpected argument"),
    ]
    for args, want in cases:
        r = run(args)
        assert r.returncode == 2, (args, r.returncode)
        assert want in one_error_line(r), (args, r.stderr)
    r = run([], env={"QUOTECACHE_TTL": "-5"})
    assert r.returncode == 2 and "QUOTECACHE_TTL" in one_error_line(r)


def test_listener_in_use_fails_clearly():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)  # no SO_REUSEPORT: our bind must fail
    try:
        port = s.getsockname()[1]
        r = run(["--listen", "127.0.0.1:%d" % port, "--redis", "none",
                 "--postgres", st.conninfo, "--tax-url", st.tax_url])
        assert r.returncode != 0
        assert "cannot listen" in one_error_line(r)
    finally:
        s.close()


def test_environment_and_flag_precedence():
    other = qcstack.free_port()
    env = dict(st.env())
    env["QUOTECACHE_LISTEN"] = "127.0.0.1:%d" % other
    # The --listen flag the harness passes must win over the variable; the
    # backends come from the variables alone.
    px = qcstack.Proxy(st, env=env, redis=None, postgres=None, tax_url=None, admin_listen=None)
    try:
        px.wait_health(status="ok")
        assert not qcstack.port_open(other)
        status, h, body = px.quote(1, region="US", tier="gold")
        assert status == 200 and body["product_id"] == 1
    finally:
        assert px.stop() == 0


def test_workers_share_the_port():
    px = qcstack.Proxy(st, workers=2)
    try:
        px.wait_health(status="ok")
        pids = set()
        for _ in range(40):
            _, _, b = px.get("/metrics")
            assert b"quotecache_requests_total" in b
        out = subprocess.run(["pgrep", "-P", str(px.pid)], capture_output=True, text=True)
        pids = out.stdout.split()
        assert len(pids) == 2, out.stdout
        status, _, body = px.quote(2, region="US", tier="silver")
        assert status == 200
    finally:
        assert px.stop() == 0
    for p in pids:
        assert not qcstack.pid_alive(int(p)), p


def test_workers_go_when_the_master_is_killed():
    """SIGKILL to the master (a crash) must not leave workers holding the
    port with nobody to stop them."""
    px = qcstack.Proxy(st, workers=2).ready()
    out = subprocess.run(["pgrep", "-P", str(px.pid)], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stdout
    px.kill()
    qcstack.wait_until(lambda: not any(qcstack.pid_alive(p) for p in pids), 3,
                       "workers to exit after their master")


def test_sigterm_drains_in_flight_requests():
    px = qcstack.Proxy(st, redis="none")
    px.wait_health(status="ok")
    results = []

    def call(i):
        results.append(px.quote(3 + i % 5, region="US", tier="gold",
                                headers={"Cache-Control": "no-cache"})[0])
    threads = [threading.Thread(target=call, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # all ten are waiting on the 300 ms tax call
    px.signal(signal.SIGTERM)
    for t in threads:
        t.join(5)
    assert results == [200] * 10, results
    px.proc.wait(5)
    assert px.proc.returncode == 0
    px.proc = None


def test_answers_given_at_shutdown_reach_the_clients():
    """Past --shutdown-timeout the requests still waiting are answered 503,
    and those answers are written out before the connections close."""
    px = qcstack.Proxy(st, redis="none", shutdown_timeout=0).ready()
    results = []

    def call(i):
        try:
            results.append(px.quote(1 + i, region="US", tier="gold")[0])  # 1-10: all regions
        except Exception as e:  # an empty answer or a reset
            results.append(repr(e))
    threads = [threading.Thread(target=call, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # all ten wait on the 300 ms tax call
    px.signal(signal.SIGTERM)
    for t in threads:
        t.join(5)
    assert sorted(results) == [503] * 10, results
    px.proc.wait(5)
    assert px.proc.returncode == 0
    px.proc = None


def test_install_triggers_is_idempotent():
    for _ in range(2):
        r = run(["--install-triggers", "--postgres", st.conninfo])
        assert r.returncode == 0, r.stderr
    n = st.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'quotecache_notify%'").strip()
    assert n == "14", n
    r = run(["--install-triggers", "--postgres", "host=127.0.0.1 port=1 dbname=x"])
    assert r.returncode == 1 and "cannot connect" in one_error_line(r)


qctest.main(globals())
