#!/usr/bin/env python3
"""Running it like nginx: the --config file and --check-config, one set of
metrics per instance whichever worker answers, the master restarting a
worker that dies, and SIGHUP replacing the workers without failing a
request."""

import datetime
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time

import qctest
from qctest import qcstack

BIN = os.path.join(qcstack.build_dir(), "quotecache")
st = None


def setup_module():
    global st
    qctest.require_file(BIN, "quotecache")
    st = qcstack.Stack(products=200)


def teardown_module():
    st.stop()


def run(args, env=None, timeout=10):
    e = {k: v for k, v in os.environ.items() if not k.startswith("QUOTECACHE_")}
    e.update(env or {})
    return subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout, env=e)


def write_conf(name, text):
    path = os.path.join(st.dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def backend_lines():
    """Config lines pointing at the stack. The conninfo has spaces and a
    quoted '#', which only the quoting rules keep whole."""
    return ('redis = %s\n'
            'postgres = "%s application_name=\'qc#ops\'"   # spaces and a #\n'
            "tax-url = %s\n" % (st.redis_addr, st.conninfo, st.tax_url))


def long_path(n):
    return "/x" + "a" * (n - 2)


def status_of(px, path):
    return px.get(path)[0]


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())  # as Proxy.worker_pids()


# ---------------------------------------------------------------- config file


def test_config_file_and_precedence():
    """flag > environment > file > default, observed on --max-uri (414)."""
    conf = write_conf("prec.conf", "# a comment line\n\n" + backend_lines() +
                      "max-uri = 100\n"
                      "key-version = v7   # trailing comment\n")
    base = dict(redis=None, postgres=None, tax_url=None, config=conf)
    px = qcstack.Proxy(st, **base).ready()
    try:
        status, _, body = px.quote(1, region="US", tier="gold")
        assert status == 200 and body["product_id"] == 1, (status, body)
        assert status_of(px, long_path(90)) == 404
        assert status_of(px, long_path(150)) == 414  # the file's 100, not the default 4096
    finally:
        px.stop_clean()
    px = qcstack.Proxy(st, env={"QUOTECACHE_MAX_URI": "200"}, **base).ready()
    try:
        assert status_of(px, long_path(150)) == 404  # environment beats the file
        assert status_of(px, long_path(250)) == 414
    finally:
        px.stop_clean()
    px = qcstack.Proxy(st, env={"QUOTECACHE_MAX_URI": "200"}, max_uri=300, **base).ready()
    try:
        assert status_of(px, long_path(250)) == 404  # the flag beats both
        assert status_of(px, long_path(350)) == 414
    finally:
        px.stop_clean()


def test_config_errors_name_the_line():
    conf = write_conf("bad-start.conf", "ttl = 60\nstale-ttl = soon\n")
    r = run(["--config", conf])
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr)
    assert lines[0].startswith("quotecache: %s:2: stale-ttl: expected an integer" % conf), lines
    r = run(["--config", os.path.join(st.dir, "missing.conf")])
    assert r.returncode == 2 and "cannot read" in r.stderr, r.stderr
    # The file may not pick another file, nor run an action.
    conf = write_conf("actions.conf", "config = other.conf\ninstall-triggers = 1\n")
    r = run(["--config", conf, "--check-config"])
    assert r.returncode == 2, r.stderr
    assert "%s:1: not allowed in a config file: 'config'" % conf in r.stderr, r.stderr
    assert "%s:2: not allowed" % conf in r.stderr, r.stderr


def test_config_that_cannot_be_read_is_an_error():
    """fopen() opens a directory; the read then fails (EISDIR). That read
    error is not the end of an empty file: --check-config said ok."""
    r = run(["--config", st.dir, "--check-config"])
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "--config: cannot read '%s'" % st.dir in r.stderr, r.stderr


def test_check_config_lists_every_problem():
    port = qcstack.free_port()
    conf = write_conf("many.conf", "\n".join([
        "listen = 127.0.0.1:%d" % port,  # 1: fine
        "colour = blue",                  # 2: unknown
        "# fine",                         # 3
        "ttl = 0",                        # 4: out of range
        'postgres = "host=x',             # 5: unterminated
        "listen = 127.0.0.1:%d" % port,  # 6: duplicate
        "just words",                     # 7: no '='
        "redis = nowhere",                # 8: bad HOST:PORT
        "log-level = loud",               # 9: checked after merging
        "ttl2 =",                         # 10: unknown (and no value)
    ]) + "\n")
    r = run(["--config", conf, "--check-config"])
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    got = sorted(int(re.match(r"quotecache: %s:(\d+): " % re.escape(conf), l).group(1))
                 for l in lines)
    assert got == [2, 4, 5, 6, 7, 8, 9, 10], lines
    assert any("unknown option 'colour'" in l for l in lines), lines
    assert any(":6: 'listen' already set on line 1" in l for l in lines), lines
    assert any(":9: log-level: expected debug" in l for l in lines), lines

    # A bad address is one problem, not also a failed bind of the default.
    r = run(["--listen", "nowhere", "--check-config"])
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr

    good = write_conf("good.conf", "listen = 127.0.0.1:%d\n" % port + backend_lines())
    r = run(["--config", good, "--check-config"])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.strip() == "quotecache: configuration ok: " + good, r.stdout

    # A listener that cannot be bound is a problem too ...
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(1)
    try:
        r = run(["--config", good, "--check-config"])
        assert r.returncode == 2, r.stdout
        assert r.stderr.startswith("quotecache: --listen: cannot listen on 127.0.0.1:%d" % port)
    finally:
        s.close()
    # ... but a running quotecache on the address is not (like nginx -t).
    px = qcstack.Proxy(st).ready()
    try:
        good = write_conf("good.conf", "listen = 127.0.0.1:%d\n" % px.port + backend_lines())
        r = run(["--config", good, "--check-config"])
        assert r.returncode == 0, r.stderr
    finally:
        px.stop_clean()


# ---------------------------------------------------------------- metrics


def scrape(px):
    status, _, body = px.get("/metrics")
    assert status == 200
    text = body.decode()
    quotes = sum(int(v) for v in re.findall(
        r'^quotecache_requests_total\{route="quote",[^}]*\} (\d+)$', text, re.M))
    count = int(re.search(r"^quotecache_request_duration_seconds_count (\d+)$", text,
                          re.M).group(1))
    return quotes, count, text


def test_metrics_describe_the_instance():
    """Two workers: every scrape, whichever worker answers, shows all 1,000
    quotes, and no scrape shows less than the one before."""
    px = qcstack.Proxy(st, workers=2).ready()
    try:
        for i in range(1000):  # a new connection each: both workers serve
            status, _, _ = px.quote(1 + i % 10, region="US", tier="gold")
            assert status == 200
        prev = (0, 0)
        for _ in range(20):
            quotes, count, _ = scrape(px)
            assert quotes >= 1000 and count >= 1000, (quotes, count)
            assert quotes >= prev[0] and count >= prev[1], (quotes, count, prev)
            prev = (quotes, count)
    finally:
        px.stop_clean()


# ---------------------------------------------------------------- supervision


class ClientLoop:
    """Quote requests in a loop until stopped, from `threads` threads, each
    on new connections or on one keep-alive connection. Records (start time,
    outcome) of each request."""

    def __init__(self, px, keepalive=False, threads=2):
        self.px, self.keepalive = px, keepalive
        self.results = []
        self.lock = threading.Lock()
        self.stop_flag = False
        self.threads = [threading.Thread(target=self.loop, args=(i,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def one(self, conn, i):
        path = "/quote/%d?region=US&tier=gold" % (1 + i % 10)
        if conn is None:
            return qcstack.http_get(self.px.port, path, timeout=5)[0]
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status

    def loop(self, n):
        conn = (http.client.HTTPConnection("127.0.0.1", self.px.port, timeout=5)
                if self.keepalive else None)
        i = n
        while not self.stop_flag:
            t0 = time.monotonic()
            try:
                outcome = self.one(conn, i)
            except Exception as e:  # a reset, a close without an answer
                outcome = repr(e)
                if conn is not None:
                    conn.close()
            with self.lock:
                self.results.append((t0, outcome))
            i += 1
        if conn is not None:
            conn.close()

    def stop(self):
        self.stop_flag = True
        for t in self.threads:
            t.join(10)
        return self.results


def metric_value(px, name):
    text = scrape(px)[2]
    return int(re.search(r"^%s (\d+)$" % name, text, re.M).group(1))


def test_repeated_sigterm_while_stopping_exits_cleanly():
    """An impatient operator (or supervisor) sends SIGTERM again and again
    while a worker drains and tears down: the worker still exits 0 (the
    master says so with its own status), never killed by a default action
    once its signal events are gone."""
    for _ in range(3):
        px = qcstack.Proxy(st).ready()
        (w,) = children(px.pid)
        px.signal(signal.SIGTERM)
        t_end = time.monotonic() + 10
        while qcstack.pid_alive(w) and time.monotonic() < t_end:
            try:
                os.kill(w, signal.SIGTERM)
            except ProcessLookupError:
                break
            time.sleep(0.0005)
        rc = px.stop()
        assert rc == 0, (rc, px.stderr_text()[-2000:])


def test_answer_in_flight_at_stop_closes_its_connection():
    """A request that arrived before the drain began, answered after it:
    its answer says Connection: close and the connection then closes, so
    a keep-alive client does not send its next request to a worker that
    is going away."""
    st.tax_control(delay_ms=800)
    px = qcstack.Proxy(st).ready()
    try:
        c = socket.create_connection(("127.0.0.1", px.port), timeout=10)
        c.sendall(b"GET /quote/7?region=US&tier=standard HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)  # the load is waiting for the tax service
        px.signal(signal.SIGTERM)
        raw = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break  # closed after the answer
            raw += chunk
        c.close()
        status, hdrs, body = qcstack.parse_response(raw)
        assert status == 200 and hdrs.get("x-cache") == "MISS", raw[:300]
        assert hdrs.get("connection") == "close", hdrs
        assert raw.count(b"HTTP/1.1 ") == 1, raw[:600]
        assert px.stop() == 0
    finally:
        st.tax_control(delay_ms=0)
        px.stop()


def test_a_killed_worker_is_replaced():
    px = qcstack.Proxy(st, workers=2).ready()
    try:
        pids = children(px.pid)
        assert len(pids) == 2, pids
        loop = ClientLoop(px, threads=2)
        time.sleep(0.3)
        before = scrape(px)[0]
        assert before > 0
        os.kill(pids[0], signal.SIGKILL)
        qcstack.wait_until(lambda: not qcstack.pid_alive(pids[0]), 2, "killed worker to die")
        dead_at = time.monotonic()
        qcstack.wait_until(lambda: len(set(children(px.pid)) - set(pids)) == 1, 1,
                           "a new worker within 1 s")
        replaced_in = time.monotonic() - dead_at
        time.sleep(1.5)
        results = loop.stop()
        after = [r for t, r in results if t >= dead_at]
        assert len(after) > 50, len(after)
        assert all(r == 200 for r in after), [r for r in after if r != 200][:5]
        assert metric_value(px, "quotecache_worker_restarts_total") == 1
        # The dead worker's counts stay in its slot, which its successor
        # continues: the instance's counters never went down.
        assert scrape(px)[0] >= before + len(after), (before, len(after))
        now = children(px.pid)
        assert len(now) == 2 and pids[1] in now, (pids, now)
        print("replaced in %.0f ms; %d requests after the kill, all 200"
              % (replaced_in * 1e3, len(after)))
    finally:
        px.stop_clean()


def log_ms(line):
    """The millisecond of a log line's UTC timestamp."""
    stamp = line.split(" ", 1)[0].rstrip("Z")
    t = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1e3


def restart_gaps(log, pids):
    """For each killed pid but the last (alive) one: the delay the master announced and the time from
    that announcement to the first line of the worker that came next, both
    read off the instance's own log (the test's view of a death is late by
    its polling, which made a 100 ms delay look like 97 ms)."""
    lines = log.splitlines()
    gaps = []
    for pid, nxt in zip(pids, pids[1:]):
        said = next(l for l in lines if "worker %d (index 0)" % pid in l)
        delay = int(re.search(r"restarting in (\d+) ms", said).group(1))
        first = next(l for l in lines[lines.index(said):]
                     if re.match(r"\S+ \[(\d+)\]", l) and
                     int(re.match(r"\S+ \[(\d+)\]", l).group(1)) == nxt)
        gaps.append((delay, log_ms(first) - log_ms(said)))
    return gaps


def test_a_worker_that_keeps_dying_is_restarted_with_backoff():
    px = qcstack.Proxy(st, workers=1).ready()
    try:
        killed = []
        for _ in range(3):
            (pid,) = children(px.pid)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            qcstack.wait_until(lambda: not qcstack.pid_alive(pid), 2, "worker to die")
            qcstack.wait_until(lambda: len(children(px.pid)) == 1 and
                               children(px.pid)[0] != pid, 3, "a new worker")
        (last,) = children(px.pid)
        qcstack.wait_until(lambda: "[%d]" % last in px.stderr_text(), 3,
                           "the last worker's first line")
        gaps = restart_gaps(px.stderr_text(), killed + [last])
        assert [d for d, _ in gaps] == [0, 100, 200], gaps
        # Log stamps are whole milliseconds, so a gap of at least the delay
        # still reads as at least the delay.
        assert all(gap >= delay for delay, gap in gaps), gaps
        assert gaps[2][1] < 1500, gaps
        print("announced delay and measured gap (ms): %s" % gaps)
        assert metric_value(px, "quotecache_worker_restarts_total") == 3
        status, _, _ = px.quote(1, region="US", tier="gold")
        assert status == 200
    finally:
        px.stop_clean()


def test_workers_that_cannot_start_stop_the_instance():
    """A worker that fails while starting (here: its tax URL) is not
    restarted forever: the instance exits 1 with the worker's one line."""
    r = run(["--listen", "127.0.0.1:%d" % qcstack.free_port(), "--workers", "2",
             "--tax-url", "http://[::1", "--redis", "none", "--postgres", st.conninfo])
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert len(lines) == 1 and "--tax-url" in lines[0], lines


# ---------------------------------------------------------------- reload


def wait_generation(px, old, workers):
    """Until every worker is new (the old ones retired and exited)."""
    def replaced():
        now = children(px.pid)
        return len(now) == workers and not set(now) & set(old)
    qcstack.wait_until(replaced, 10, "the workers to be replaced", px.proc)
    return children(px.pid)


def test_reload_drops_no_request():
    conf_text = backend_lines() + "max-uri = 100\nworkers = 2\n"
    conf = write_conf("reload.conf", conf_text)
    px = qcstack.Proxy(st, redis=None, postgres=None, tax_url=None, config=conf).ready()
    try:
        assert status_of(px, long_path(150)) == 414
        pids = children(px.pid)
        assert len(pids) == 2, pids
        loops = [ClientLoop(px, keepalive=True, threads=2), ClientLoop(px, threads=2)]
        time.sleep(0.3)
        for i in range(5):
            if i == 4:  # the last reload also changes two settings
                write_conf("reload.conf", conf_text.replace("max-uri = 100", "max-uri = 200") +
                           "log-level = debug\n")
            px.signal(signal.SIGHUP)
            pids = wait_generation(px, pids, 2)
        time.sleep(0.5)
        results = [r for lp in loops for _, r in lp.stop()]
        failed = [r for r in results if r != 200]
        assert len(results) > 200 and not failed, (len(results), failed[:5])
        assert status_of(px, long_path(150)) == 404  # the new max-uri is in effect
        assert status_of(px, long_path(250)) == 414
        assert re.search(r"\[(%s)\] debug: " % "|".join(map(str, pids)), px.stderr_text())
        print("%d requests over 5 reloads, none failed" % len(results))

        # A setting that cannot change on reload: refused, with a log line,
        # and the old configuration and workers stay.
        write_conf("reload.conf", conf_text.replace("max-uri = 100", "max-uri = 300")
                   .replace("workers = 2", "workers = 3") + "log-level = debug\n")
        px.signal(signal.SIGHUP)
        qcstack.wait_until(lambda: "reload refused" in px.stderr_text(), 5, "the refusal")
        time.sleep(0.3)
        assert children(px.pid) == pids
        assert "--workers cannot change on reload" in px.stderr_text()
        assert status_of(px, long_path(250)) == 414  # still 200, not 300

        # A file with an error: refused with its line, nothing changes.
        write_conf("reload.conf", conf_text.replace("max-uri = 100", "max-uri = lots"))
        px.signal(signal.SIGHUP)
        want = "reload refused: %s:4: max-uri: expected an integer" % conf
        qcstack.wait_until(lambda: want in px.stderr_text(), 5, "the refusal")
        time.sleep(0.3)
        assert children(px.pid) == pids
        assert status_of(px, long_path(150)) == 404 and status_of(px, long_path(250)) == 414

        # An access log the new workers could not open: refused the same
        # way (they would die at start, over and over).
        write_conf("reload.conf", conf_text + "access-log = /nonexistent-dir/a.log\n")
        px.signal(signal.SIGHUP)
        want = "reload refused: --access-log /nonexistent-dir/a.log: No such file or directory"
        qcstack.wait_until(lambda: want in px.stderr_text(), 5, "the refusal")
        time.sleep(0.3)
        assert children(px.pid) == pids
        assert status_of(px, long_path(150)) == 404
    finally:
        px.stop_clean()


def test_sighup_without_a_config_file_replaces_the_workers():
    """Nothing to re-read, but the same rolling replacement (e.g. after a
    library upgrade on disk, or to reconnect everything)."""
    px = qcstack.Proxy(st, workers=2).ready()
    try:
        pids = children(px.pid)
        loop = ClientLoop(px, keepalive=True, threads=2)
        time.sleep(0.2)
        px.signal(signal.SIGHUP)
        wait_generation(px, pids, 2)
        time.sleep(0.3)
        results = [r for _, r in loop.stop()]
        assert results and all(r == 200 for r in results), [r for r in results if r != 200][:5]
    finally:
        px.stop_clean()


# ---------------------------------------------------------------- Cache-Status

CACHE_STATUS = {"HIT": "quotecache; hit", "MISS": "quotecache; fwd=uri-miss; stored",
                "COALESCED": "quotecache; fwd=uri-miss; collapsed",
                "STALE": "quotecache; fwd=stale", "BYPASS": "quotecache; fwd=bypass"}


def test_cache_status_on_every_quote_answer():
    seen = {}

    def check(h):
        cs, x = h.get("cache-status", ""), h["x-cache"]
        if x in ("HIT", "STALE"):
            # a copy: RFC 9211 ttl (seconds of freshness left, negative when
            # stale) and RFC 9111 Age, both from the copy's store time
            want, ttl = cs.rsplit("; ttl=", 1)
            age = int(h["age"])
            assert 0 <= age <= 2, h
            assert int(ttl) == 1 - age, h  # --ttl 1
            assert (int(ttl) < 1) if x == "STALE" else (int(ttl) > 0 or age == 1), h
            assert want == CACHE_STATUS[x], h
        else:
            assert cs == CACHE_STATUS[x], h
            assert "age" not in h, h
        seen[x] = cs
    px = qcstack.Proxy(st, ttl=1, stale_ttl=60).ready()
    try:
        st.tax_control(delay_ms=300)
        for status, h, _ in qcstack.concurrent_gets(px.port, ["/quote/11?region=US&tier=gold"] * 5):
            assert status == 200
            check(h)
        check(px.quote(11, region="US", tier="gold")[1])
        check(px.quote(11, region="US", tier="gold", headers={"Cache-Control": "no-cache"})[1])
        time.sleep(1.3)  # past --ttl, inside --stale-ttl
        check(px.quote(11, region="US", tier="gold")[1])
    finally:
        st.tax_control(delay_ms=0)
        px.stop_clean()
    px = qcstack.Proxy(st, redis="none").ready()
    try:
        check(px.quote(12, region="US", tier="gold")[1])
    finally:
        px.stop_clean()
    assert set(seen) == set(CACHE_STATUS), seen


def nofile_soft(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-files limit for %d" % pid)


def test_reload_refits_the_descriptor_limit():
    """A reload that raises --max-conns past the soft RLIMIT_NOFILE the
    master fitted at start: the new workers raise theirs (up to the hard
    limit) instead of inheriting one sized for the old bound."""
    conf_text = backend_lines() + "max-conns = 500\n"
    conf = write_conf("nofile.conf", conf_text)
    wrapper = write_conf("nofile-wrapper.sh", "#!/bin/sh\nexec prlimit --nofile=600:20000 %s \"$@\"\n"
                         % BIN)
    os.chmod(wrapper, 0o755)
    px = qcstack.Proxy(st, binary=wrapper, redis=None, postgres=None, tax_url=None,
                       config=conf).ready()
    try:
        pids = children(px.pid)
        first = nofile_soft(pids[0])
        assert 500 < first < 3000, first  # fitted to 500 clients
        write_conf("nofile.conf", conf_text.replace("max-conns = 500", "max-conns = 5000"))
        px.signal(signal.SIGHUP)
        pids = wait_generation(px, pids, 1)
        assert nofile_soft(pids[0]) > 5000, nofile_soft(pids[0])
        assert px.quote(1, region="US", tier="gold")[0] == 200
    finally:
        px.stop_clean()


qctest.main(globals())
