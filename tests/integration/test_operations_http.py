#!/usr/bin/env python3
"""The HTTP front under real operations (issue 8, items 1, 12, 13, 14, 15):
HEAD answers on a reused keep-alive connection, file-descriptor limits and
EMFILE, the header deadline of every request on a keep-alive connection,
readiness before the first catalog load, unknown regions, and the JSON 431."""

import json
import os
import resource
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

Q = "region=US&tier=gold"
st = px = None


def setup_module():
    global st, px
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=2000, seed=1)
    px = qcstack.Proxy(st, header_timeout=1).ready()


def teardown_module():
    if st is not None:
        st.stop()


# ---------------------------------------------------------------- helpers


class Conn:
    """One keep-alive connection whose responses are parsed byte-exactly:
    a response without a body must not be followed by one, and one with a
    body must say its length (Content-Length, no chunking)."""

    def __init__(self, port, timeout=5):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self):
        self.s.close()

    def _fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the proxy; unread: %r" % self.buf[:200])
        self.buf += chunk

    def request(self, method, path, headers=None):
        extra = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
        self.s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (method, path, extra)).encode())
        return self.read_response(method, path)

    def read_response(self, method, path):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), (method, path, lines[0])
        status = int(lines[0].split(" ")[1])
        hdrs = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            assert sep, (method, path, line)
            hdrs[k.strip().lower()] = v.strip()
        assert "transfer-encoding" not in hdrs, (method, path, hdrs)
        body = b""
        if method != "HEAD" and status not in (204, 304):
            assert "content-length" in hdrs, (method, path, status, hdrs)
            n = int(hdrs["content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        return status, hdrs, body

    def assert_drained(self):
        """Nothing more arrived than the responses announced."""
        self.s.settimeout(0.3)
        try:
            extra = self.s.recv(65536)
        except socket.timeout:
            extra = b""
        finally:
            self.s.settimeout(5)
        assert self.buf == b"" and extra == b"", (self.buf, extra)


VARYING = {"date", "age", "x-cache", "cache-status", "x-request-id"}  # the id is per request


def same_headers(head_h, get_h):
    a = {k: v for k, v in head_h.items() if k not in VARYING}
    b = {k: v for k, v in get_h.items() if k not in VARYING}
    assert a == b, (a, b)


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def cpu_over(pid, seconds=2.0):
    """Clock ticks (1/100 s) the process used during `seconds`."""
    t0 = cpu_ticks(pid)
    time.sleep(seconds)
    return cpu_ticks(pid) - t0


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


# ---------------------------------------------------------------- item 1: HEAD


def test_head_on_one_keepalive_connection():
    """HEAD, GET, HEAD, GET on ONE socket for every route and error: each
    HEAD has the GET's headers (Content-Length equal to the GET body's
    length) and no body, so the next response is parsed right."""
    inm = px.get("/quote/3?" + Q)[1]["etag"]
    targets = [
        "/quote/1?" + Q,                          # 200 (MISS, then HIT)
        "/quote/4?region=US&tier=gold&currency=EUR",
        "/quote/abc?" + Q,                        # 400 bad_product_id
        "/quote/1?region=US&tier=bronze",         # 400 unknown_tier
        "/quote/1?" + Q + "&currency=XYZ",        # 400 unknown_currency
        "/quote/9223372036854775807?" + Q,        # 404 not quotable
        "/nope",                                  # 404 no_route
        "/healthz",
    ]
    c = Conn(px.port)
    try:
        for path in targets:
            got = [c.request(m, path) for m in ("HEAD", "GET", "HEAD", "GET")]
            for (hs, hh, hb), (gs, gh, gb) in ((got[0], got[1]), (got[2], got[3])):
                assert hs == gs and hb == b"", (path, hs, gs, hb)
                assert hh.get("content-length") == str(len(gb)), (path, hh, len(gb))
                same_headers(hh, gh)
            assert got[1][2] == got[3][2], path
        # 304: HEAD and GET alike, no body either way.
        for m in ("HEAD", "GET", "HEAD", "GET"):
            s, h, b = c.request(m, "/quote/3?" + Q, headers={"If-None-Match": inm})
            assert s == 304 and b == b"" and h["etag"] == inm, (m, s, h)
        # /metrics changes between two requests: only its framing can be compared.
        for m in ("HEAD", "GET", "HEAD", "GET"):
            s, h, b = c.request(m, "/metrics")
            assert s == 200 and int(h["content-length"]) > 100, (m, h)
            assert (b == b"") == (m == "HEAD"), (m, b[:80])
        # 405: a method the route does not take, then HEAD still works.
        s, h, b = c.request("DELETE", "/healthz")
        assert s == 405 and h["content-length"] == str(len(b)), (s, h, b)
        s, h, b = c.request("HEAD", "/healthz")
        assert s == 200 and b == b"", (s, h)
        c.assert_drained()
    finally:
        c.close()


def test_head_pipelined():
    """The same, with the four requests written at once (pipelined)."""
    c = Conn(px.port)
    try:
        for path in ("/quote/6?" + Q, "/quote/abc?" + Q, "/nope", "/healthz"):
            methods = ("HEAD", "GET", "HEAD", "GET")
            c.s.sendall(b"".join(b"%s %s HTTP/1.1\r\nHost: x\r\n\r\n"
                                 % (m.encode(), path.encode()) for m in methods))
            got = [c.read_response(m, path) for m in methods]
            assert [g[0] for g in got] == [got[1][0]] * 4, (path, got)
            assert got[0][2] == got[2][2] == b"" and got[1][2] == got[3][2] != b"", path
            assert got[0][1]["content-length"] == str(len(got[1][2])), (path, got[0][1])
        c.assert_drained()
    finally:
        c.close()


def test_head_on_errors_and_admin():
    c = Conn(px.port)
    a = Conn(px.admin_port)
    try:
        for _ in range(2):
            s, h, b = c.request("HEAD", "/quote/1/x?" + Q)
            assert s == 404 and b == b"" and int(h["content-length"]) > 0, (s, h)
            s, h, b = c.request("GET", "/quote/1/x?" + Q)
            assert s == 404 and json.loads(b)["error"] == "no_route"
            s, h, b = a.request("HEAD", "/admin/invalidate")   # admin takes POST only
            assert s == 405 and b == b"" and int(h["content-length"]) > 0, (s, h)
            s, _, b = a.request("GET", "/admin/invalidate")
            assert s == 405 and h["content-length"] == str(len(b)), (h, b)
            s, h, b = a.request("HEAD", "/admin/nope")
            assert s == 404 and b == b"", (s, h)
            s, h, b = a.request("GET", "/admin/nope")
            assert s == 404 and json.loads(b)["error"] == "no_route"
        c.assert_drained()
        a.assert_drained()
    finally:
        c.close()
        a.close()


# ---------------------------------------------------------------- item 13


def trickle(sock, data, gap, limit):
    """Send one byte every `gap` s; returns the seconds until the proxy cut
    the connection, or None if it did not within `limit`."""
    t0 = time.monotonic()
    for ch in data:
        try:
            sock.sendall(bytes([ch]))
            sock.settimeout(gap)
            if sock.recv(4096) == b"":
                return time.monotonic() - t0
        except socket.timeout:
            pass
        except OSError:
            return time.monotonic() - t0
        if time.monotonic() - t0 > limit:
            return None
    return None


def test_keepalive_second_request_header_timeout():
    """--header-timeout 1 holds for the second request on a connection too."""
    c = Conn(px.port)
    try:
        assert c.request("GET", "/healthz")[0] == 200
        time.sleep(1.5)  # idling between requests is --idle-timeout's business
        assert c.request("GET", "/quote/1?" + Q)[0] == 200
        req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 60 + b"\r\n"
        cut = trickle(c.s, req, 0.1, 8)
        print("second request cut after %s s (--header-timeout 1)" % cut)
        assert cut is not None and cut < 2.5, cut
    finally:
        c.close()


# ---------------------------------------------------------------- item 15


def junk_counts(stack):
    """Tax calls, executions of the quote statement, Redis keys."""
    return (stack.tax_stats(), stack.pg_statements(like="WITH p AS (%"),
            set(stack.redis_cli("KEYS", "*").split()))


def assert_no_junk(before):
    """Nothing called, nothing run, no key added (one may have expired
    meanwhile: a lock or lease of an earlier test)."""
    now = junk_counts(st)
    assert now[:2] == before[:2] and now[2] <= before[2], (now[:2], before[:2],
                                                           now[2] - before[2])


def test_unknown_region_costs_nothing():
    before = junk_counts(st)
    for i in range(40):
        region = "ZZ" + chr(65 + i % 26) * (1 + i // 26)
        s, h, body = px.get("/quote/%d?region=%s&tier=gold" % (1 + i, region))
        assert s == 400 and json.loads(body)["error"] == "unknown_region", (region, s, body)
        assert "x-cache" not in h, h
    s, _, body = px.get("/quote/1?region=ABCDEFGHIJKLMNOP&tier=gold")
    assert s == 400 and json.loads(body)["error"] == "unknown_region", body
    assert_no_junk(before)
    # Real regions, in any case, still pass validation (200, or 404 when the
    # product is not sold there).
    for region in ("US", "eu", "Uk", "APAC", "latam"):
        s, _, body = px.get("/quote/5?region=%s&tier=gold" % region)
        assert s in (200, 404), (region, s, body)
        assert json.loads(body).get("error") != "unknown_region", body


def test_new_region_quotable_within_a_second():
    """A price row in a region nobody sold in before (a committed INSERT,
    by anyone) makes that region quotable within 1 s: the catalog's region
    set follows regional_prices changes, not only its 10 s refresh. Removed
    again, the region is unknown again within 1 s."""
    s, _, body = px.get("/quote/3?region=MENA&tier=gold")
    assert s == 400 and json.loads(body)["error"] == "unknown_region", body
    st.psql("INSERT INTO regional_prices (product_id, region, list_price_cents) "
            "VALUES (3, 'MENA', 12345)")
    try:
        t0 = time.monotonic()
        qcstack.wait_until(lambda: px.get("/quote/3?region=MENA&tier=gold")[0] == 200, 1.0,
                           "the new region quotable")
        print("new region quotable after %.2f s" % (time.monotonic() - t0))
    finally:
        st.psql("DELETE FROM regional_prices WHERE region = 'MENA'")
    qcstack.wait_until(lambda: px.get("/quote/3?region=MENA&tier=gold")[0] == 400, 1.0,
                       "the removed region unknown again")


def test_oversized_headers_get_json_431():
    """Headers past --max-headers (16384 by default) get our JSON 431, also
    well past it (evhttp's own hard limit is further away)."""
    for size in (17000, 20000, 24000, 30000):
        s, h, body = px.get("/quote/1?" + Q, headers={"X-Pad": "a" * size})
        assert s == 431, (size, s, body[:200])
        assert h["content-type"] == "application/json"
        assert json.loads(body)["error"] == "headers_too_large", body
    many = {"X-H%03d" % i: "v" * 100 for i in range(200)}  # 200 small ones add up
    s, _, body = px.get("/quote/1?" + Q, headers=many)
    assert s == 431 and json.loads(body)["error"] == "headers_too_large", (s, body[:200])
    assert px.get("/quote/1?" + Q, headers={"X-Pad": "a" * 15000})[0] == 200


# ---------------------------------------------------------------- item 14


def test_readiness_waits_for_catalog():
    """PostgreSQL starts after the proxy: /healthz says 503 starting until
    a quote can be served, and quotes sent before then wait and get 200."""
    with qcstack.Stack(products=500, seed=2) as s2:
        s2.stop_pg()
        p = qcstack.Proxy(s2, pg_timeout=10000)
        try:
            code, _, body = p.get("/healthz")
            doc = json.loads(body)
            assert code == 503 and doc["status"] == "starting", (code, doc)
            assert set(doc) >= {"redis", "postgres", "tax", "invalidation"}, doc
            early = []

            def ask():
                t = time.monotonic()
                r = p.get("/quote/1?region=US&tier=gold", timeout=20)
                early.append((r[0], r[2], time.monotonic() - t))
            threads = [threading.Thread(target=ask) for _ in range(5)]
            for t in threads:
                t.start()
            health, stop = [], [False]

            def poll():
                while not stop[0]:
                    code, _, body = p.get("/healthz", timeout=5)
                    if code == 200:  # a quote sent now must be served
                        q = p.get("/quote/2?region=US&tier=gold", timeout=5)
                        health.append((code, q[0], q[2][:200]))
                        return
                    health.append((code, None, json.loads(body)["status"]))
                    time.sleep(0.02)
            poller = threading.Thread(target=poll)
            poller.start()
            time.sleep(0.5)
            s2.start_pg()
            for t in threads:
                t.join(25)
            poller.join(10)  # it ends at its first 200
            stop[0] = True
            assert [e[0] for e in early] == [200] * 5, early
            assert health and health[-1][0] == 200 and health[-1][1] in (200, 404), health[-3:]
            assert all(h[0] == 503 and h[2] == "starting" for h in health[:-1]), health[:5]
        finally:
            p.stop_clean()


def test_readiness_queue_drops_clients_that_left():
    """Quotes waiting for the first catalog load are bounded by
    --max-waiters; 300 clients that send and close while PostgreSQL hangs
    (SIGSTOP) give their places back at once, so the real clients after
    them wait and get 200 once PostgreSQL answers."""
    with qcstack.Stack(products=200, seed=3) as s2:
        pg = s2.procs["postgres"].pid
        qcstack.stop_process(pg)
        try:
            p = qcstack.Proxy(s2, max_waiters=100, pg_timeout=4000)
            path = "/quote/1?region=US&tier=gold"
            assert p.get("/healthz")[0] == 503
            assert qcstack.send_and_close(p.port, path, n=300) == 300
            time.sleep(0.3)
            threading.Timer(0.5, lambda: qcstack.cont_process(pg)).start()
            res = qcstack.concurrent_gets(p.port, [path] * 5, timeout=10)
            assert [r[0] for r in res] == [200] * 5, [(r[0], r[2][:60]) for r in res]
            p.stop_clean()
        finally:
            qcstack.cont_process(pg)


def test_readiness_wait_is_bounded():
    """With no catalog ever, a quote waits --pg-timeout, then 503."""
    with qcstack.Stack(products=100, seed=3, redis=False) as s3:
        s3.stop_pg()
        p = qcstack.Proxy(s3, pg_timeout=1000)
        try:
            t0 = time.monotonic()
            code, _, body = p.get("/quote/1?region=US&tier=gold", timeout=10)
            took = time.monotonic() - t0
            assert code == 503 and json.loads(body)["error"] == "catalog_unavailable", body
            assert 0.8 <= took < 3.0, took
        finally:
            p.stop_clean()


# ---------------------------------------------------------------- item 12


def hold_connections(port, n):
    socks = []
    for _ in range(n):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        socks.append(c)
    time.sleep(0.5)
    return socks


def the_worker(p):
    """The one worker process of p (the master only supervises): the one
    that holds connections, spends CPU and opens descriptors."""
    pids = p.worker_pids()
    assert len(pids) == 1, pids
    return pids[0]


def test_fd_limit_clamps_and_never_spins():
    """Under `ulimit -n 256`, --max-conns 5000 cannot be had: the proxy
    says so in one line and serves fewer; 600 connections opened and closed
    leave it answering and idle."""
    wrapper = os.path.join(st.dir, "ulimit256.sh")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nulimit -n 256 || exit 99\nexec %s \"$@\"\n"
                % os.path.join(qcstack.build_dir(), "quotecache"))
    os.chmod(wrapper, 0o755)
    p = qcstack.Proxy(st, binary=wrapper, max_conns=5000).ready()
    try:
        err = p.stderr_text()
        lines = [ln for ln in err.splitlines() if "RLIMIT_NOFILE" in ln]
        assert len(lines) == 1 and "--max-conns" in lines[0], err[-2000:]
        w = the_worker(p)
        socks = hold_connections(p.port, 600)
        try:
            held = cpu_over(w)
            print("ulimit 256: %d CPU ticks in 2 s with 600 connections held, %d fds"
                  % (held, open_fds(w)))
            assert held <= 20, ("CPU ticks in 2 s with 600 connections held", held)
            assert open_fds(w) < 256
        finally:
            for c in socks:
                c.close()
        qcstack.wait_until(lambda: p.get("/healthz", timeout=2)[0] == 200, 10, "an answer")
        assert p.quote(1, tier="gold")[0] == 200
        idle = cpu_over(w)
        print("ulimit 256: %d CPU ticks in 2 s idle after they closed" % idle)
        assert idle <= 10, ("CPU ticks in 2 s idle", idle)
    finally:
        p.stop_clean()


def test_fd_limit_too_low_refuses():
    """A limit that leaves no room for clients: one clear line, exit 1."""
    wrapper = os.path.join(st.dir, "ulimit40.sh")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nulimit -n 40 || exit 99\nexec %s \"$@\"\n"
                % os.path.join(qcstack.build_dir(), "quotecache"))
    os.chmod(wrapper, 0o755)
    p = qcstack.Proxy(st, binary=wrapper, start=False)
    r = qcstack.subprocess.run(p.argv(), capture_output=True, timeout=20)
    err = r.stderr.decode(errors="replace").strip().splitlines()
    assert r.returncode == 1, (r.returncode, err)
    assert len(err) == 1 and "RLIMIT_NOFILE" in err[0], err


def test_emfile_never_spins():
    """Descriptors run out under the proxy (its limit lowered while it runs,
    as when something else eats them): accept fails with EMFILE; the loop
    must not spin on it, and it serves again once descriptors come back."""
    p = qcstack.Proxy(st).ready()
    try:
        w = the_worker(p)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.prlimit(w, resource.RLIMIT_NOFILE, (open_fds(w) + 8, hard))
        socks = hold_connections(p.port, 200)
        try:
            busy = cpu_over(w)
            print("EMFILE: %d CPU ticks in 2 s with 200 connections waiting" % busy)
            assert busy <= 20, ("CPU ticks in 2 s at EMFILE", busy)
        finally:
            for c in socks:
                c.close()
        resource.prlimit(w, resource.RLIMIT_NOFILE, (soft, hard))
        qcstack.wait_until(lambda: p.get("/healthz", timeout=2)[0] == 200, 10, "an answer")
        assert cpu_over(w) <= 10
    finally:
        p.stop_clean()


def test_fd_limit_counts_the_upstream_pool():
    """Under `ulimit -n 256` with --upstream, the clamp leaves room for the
    pass-through's connections too (main.c's budget counts --upstream's
    pool, up to 512 in use or idle): as many slow pass-through requests at
    once as the client bound it states are all answered, 200 or a 503
    upstream_busy past the upstream's share, never a 502 for want of a
    descriptor nor a connection left unaccepted; the upstream connections
    they leave idle do not keep clients out up to that bound."""
    wrapper = os.path.join(st.dir, "ulimit256up.sh")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nulimit -n 256 || exit 99\nexec %s \"$@\"\n"
                % os.path.join(qcstack.build_dir(), "quotecache"))
    os.chmod(wrapper, 0o755)
    app = qctest.UpstreamApp()
    p = qcstack.Proxy(st, binary=wrapper, max_conns=5000, upstream=app.url, workers=1).ready()
    try:
        line = [ln for ln in p.stderr_text().splitlines() if "RLIMIT_NOFILE" in ln]
        assert line, p.stderr_text()[-2000:]  # the master's, then the worker's
        clients = int(line[-1].split("serving at most ")[1].split()[0])
        res = qcstack.concurrent_gets(p.port, ["/slow?ms=500"] * clients, timeout=20)
        statuses = [r[0] for r in res]
        print("ulimit 256: %d client connections; pass-through burst: %d 200, %d 503, "
              "%d other" % (clients, statuses.count(200), statuses.count(503),
                            len(statuses) - statuses.count(200) - statuses.count(503)))
        assert statuses.count(200) > 0, statuses
        for s, h, b in res:
            assert s == 200 or (s == 503 and json.loads(b)["error"] == "upstream_busy"), \
                (s, b[:200], sorted(set(statuses), key=str))
        w = the_worker(p)
        assert open_fds(w) < 256
        # The burst's upstream connections stay idle; the stated bound of
        # clients is still accepted and answered.
        res = qcstack.concurrent_gets(p.port, ["/healthz"] * clients, timeout=20)
        statuses = [r[0] for r in res]
        assert statuses == [200] * clients, sorted(set(statuses), key=str)
    finally:
        p.stop_clean()
        app.stop()


def test_connection_bound_stops_accepting():
    """At --max-conns the proxy stops accepting (connections wait in the
    kernel's queue) rather than answering 503, and takes them once below."""
    p = qcstack.Proxy(st, max_conns=10).ready()
    try:
        held = []
        for _ in range(10):
            c = Conn(p.port)
            assert c.request("GET", "/healthz")[0] == 200
            held.append(c)
        late = Conn(p.port)   # queued: not answered while the 10 stay
        late.s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        late.s.settimeout(1.0)
        try:
            early = late.s.recv(4096)
        except socket.timeout:
            early = b""
        assert early == b"", early[:200]
        held.pop().close()
        late.s.settimeout(5)
        data = late.s.recv(4096)
        assert qcstack.parse_response(data)[0] == 200, data[:200]
        for c in held:
            c.close()
        late.close()
    finally:
        p.stop_clean()


def test_clean_exit():
    """Everything above left nothing behind (the sanitizer build checks
    leaks at exit)."""
    assert px.get("/healthz")[0] == 200
    px.stop_clean()


if __name__ == "__main__":
    qctest.main(globals())
