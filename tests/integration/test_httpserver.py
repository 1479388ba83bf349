#!/usr/bin/env python3
"""quotecache's own HTTP/1.1 server side (httpconn.c, reqparse.c), over raw
sockets: several requests in one write answered in order (own routes, a
quote miss, proxied ones, HEAD), a body split across many writes (by
length and chunked), Expect: 100-continue (and a 413 instead of it), HEAD
on a keep-alive connection, HTTP/1.0 with and without keep-alive, the
header deadline of a later request on a kept connection (slowloris), the
listen backlog, and a drain that answers an idle keep-alive connection with a close. Ends with a clean
exit (under ASan: no leak)."""

import json
import os
import select
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

Q = "/quote/1?region=US&tier=gold"
st = px = app = None


def setup_module():
    global st, px, app
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    app = qctest.UpstreamApp()
    st = qcstack.Stack(products=50)
    px = qcstack.Proxy(st, upstream="http://127.0.0.1:%d" % app.port, header_timeout=1,
                       idle_timeout=30, max_body=4096).ready()


def teardown_module():
    if app:
        app.stop()
    if st:
        st.stop()


def read_answers(sock, n, timeout=5):
    """Reads n answers from sock: [(status, headers, body)] (a HEAD's body
    is empty: callers pass heads=... to say which)."""
    return read_framed(sock, [False] * n, timeout)


def read_framed(sock, heads, timeout=5):
    sock.settimeout(timeout)
    buf = b""
    out = []
    for head in heads:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, (out, buf)
            buf += chunk
        end = buf.index(b"\r\n\r\n") + 4
        lines = buf[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        h = {}
        for line in lines[1:]:
            if line:
                k, v = line.split(":", 1)
                h[k.strip().lower()] = v.strip()
        n = 0 if head or status in (100, 204, 304) else int(h.get("content-length", 0))
        while len(buf) < end + n:
            chunk = sock.recv(65536)
            assert chunk, (out, buf)
            buf += chunk
        out.append((status, h, buf[end:end + n]))
        buf = buf[end + n:]
    return out, buf


def test_pipelined_requests_in_one_write_answered_in_order():
    n = app.calls().get("/echo/p", 0)
    reqs = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET " + Q.encode() + b" HTTP/1.1\r\nHost: x\r\nCache-Control: no-cache\r\n\r\n"
            b"POST /echo/p?i=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"HEAD " + Q.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /quote HTTP/1.1\r\nHost: x\r\n\r\n"  # ours, no route: 404
            b"POST /echo/p?i=2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nde\r\n0\r\n\r\n"
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    with socket.create_connection(("127.0.0.1", px.port)) as s:
        s.sendall(reqs)
        got, rest = read_framed(s, [False, False, False, True, False, False, False])
        assert rest == b""
    assert [g[0] for g in got] == [200, 200, 200, 200, 404, 200, 200], [g[:2] for g in got]
    assert json.loads(got[0][2])["status"] in ("ok", "degraded")
    assert json.loads(got[1][2])["product_id"] == 1
    a, b = json.loads(got[2][2]), json.loads(got[5][2])
    assert (a["target"], a["body"]) == ("/echo/p?i=1", "abc"), a
    assert (b["target"], b["body"]) == ("/echo/p?i=2", "de"), b
    assert got[3][2] == b"" and int(got[3][1]["content-length"]) == len(got[1][2])
    assert json.loads(got[4][2])["error"] == "no_route"
    assert b"quotecache_" in got[6][2]
    assert app.calls().get("/echo/p", 0) == n + 2
    # Every answer names its own request.
    ids = [g[1]["x-request-id"] for g in got]
    assert len(set(ids)) == len(ids), ids


def test_body_split_across_many_writes():
    body = b"".join(b"%03d," % i for i in range(200))  # 800 bytes
    with socket.create_connection(("127.0.0.1", px.port)) as s:
        s.sendall(b"POST /echo/split HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 37):
            s.sendall(body[i:i + 37])
            time.sleep(0.002)
        got, _ = read_framed(s, [False])
        assert got[0][0] == 200 and json.loads(got[0][2])["body"] == body.decode(), got
        # Chunked, the chunk framing itself cut anywhere, on the same connection.
        chunked = b"".join(b"%x;n=%d\r\n%s\r\n" % (len(body[i:i + 50]), i, body[i:i + 50])
                           for i in range(0, len(body), 50)) + b"0\r\nX-T: 1\r\n\r\n"
        data = b"POST /echo/split HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
        for i in range(0, len(data), 5):
            s.sendall(data[i:i + 5])
        got, _ = read_framed(s, [False])
        doc = json.loads(got[0][2])
        assert got[0][0] == 200 and doc["body"] == body.decode(), got
        hh = {k.lower(): v for k, v in doc["headers"]}
        assert hh["content-length"] == str(len(body)) and "transfer-encoding" not in hh, hh


def test_expect_100_continue():
    with socket.create_connection(("127.0.0.1", px.port)) as s:
        s.sendall(b"POST /echo/cont HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 5\r\n\r\n")
        got, rest = read_framed(s, [False])
        assert got[0][0] == 100 and rest == b"", got
        s.sendall(b"hello")
        got, _ = read_framed(s, [False])
        doc = json.loads(got[0][2])
        assert got[0][0] == 200 and doc["body"] == "hello", got
        # Expect is ours to answer: it is not forwarded.
        assert "expect" not in {k.lower() for k, _ in doc["headers"]}, doc
        # Past --max-body: the 413 comes instead of the 100, and closes.
        s.sendall(b"POST /echo/cont HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 5000\r\n\r\n")
        got, _ = read_framed(s, [False])
        assert got[0][0] == 413 and json.loads(got[0][2])["error"] == "body_too_large", got
        assert got[0][1].get("connection") == "close"
        s.settimeout(3)
        assert s.recv(100) == b""


def test_head_on_keep_alive():
    with socket.create_connection(("127.0.0.1", px.port)) as s:
        for path in (Q.encode(), b"/healthz", b"/echo/head"):
            s.sendall(b"HEAD " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            got, rest = read_framed(s, [True, False])
            (hs, hh, hb), (gs, gh, gb) = got
            assert hs == gs == 200 and hb == b"" and rest == b"", (path, got)
            assert hh.get("content-type") == gh.get("content-type"), (hh, gh)
            if path != b"/echo/head":  # the echo names the method in its body
                assert int(hh["content-length"]) == len(gb), (path, hh, len(gb))


def test_http10():
    # Without keep-alive: answered, then closed.
    out = qcstack.raw_request(px.port, b"GET /healthz HTTP/1.0\r\n\r\n", timeout=3)
    s, h, _ = qcstack.parse_response(out)
    assert s == 200 and h.get("connection") == "close", out
    # With it: kept, and said so; close wins over keep-alive.
    with socket.create_connection(("127.0.0.1", px.port)) as c:
        c.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        got, _ = read_framed(c, [False])
        assert got[0][0] == 200 and got[0][1].get("connection") == "keep-alive", got
        c.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n")
        got, _ = read_framed(c, [False])
        assert got[0][1].get("connection") == "close", got
        c.settimeout(3)
        assert c.recv(100) == b""


def test_connection_close_is_honoured():
    with socket.create_connection(("127.0.0.1", px.port)) as c:
        c.sendall(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
                  b"GET /healthz HTTP/1.1\r\n\r\n")
        got, _ = read_framed(c, [False])
        assert got[0][1].get("connection") == "close", got
        c.settimeout(3)
        assert c.recv(100) == b""  # the second request was never read


def test_header_deadline_of_a_later_request():
    """A kept connection idles (the idle timeout, 30 s here), then starts a
    request and trickles: --header-timeout 1 counts from its first byte."""
    with socket.create_connection(("127.0.0.1", px.port)) as c:
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        read_framed(c, [False])
        time.sleep(1.5)  # idle past the header timeout: still open
        t0 = time.monotonic()
        c.sendall(b"GET /healthz HTTP/1.1\r\n")
        c.settimeout(0.2)
        cut = None
        while time.monotonic() - t0 < 5:
            try:
                c.sendall(b"X-A: b\r\n")
                if c.recv(100) == b"":
                    cut = time.monotonic() - t0
                    break
            except socket.timeout:
                pass
            except OSError:
                cut = time.monotonic() - t0
                break
        assert cut is not None and 0.8 <= cut < 2.5, cut


def test_drain_answers_idle_connections_then_closes():
    """On SIGTERM an idle keep-alive connection is not closed under its
    client (its next request may be on the way): it is answered, with
    Connection: close; the request in flight finishes, and closes too."""
    with qcstack.Proxy(st, upstream="http://127.0.0.1:%d" % app.port) as p2:
        p2.ready()
        idle = socket.create_connection(("127.0.0.1", p2.port))
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        read_framed(idle, [False])
        busy = socket.create_connection(("127.0.0.1", p2.port))
        busy.sendall(b"GET /slow?ms=800 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        for w in p2.worker_pids():
            os.kill(w, signal.SIGTERM)
        time.sleep(0.1)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got, _ = read_framed(idle, [False])
        assert got[0][1].get("connection") == "close", got
        idle.settimeout(3)
        assert idle.recv(100) == b""
        got, _ = read_framed(busy, [False])  # the one in flight finishes, and closes
        assert got[0][0] == 200 and got[0][1].get("connection") == "close", got
        idle.close()
        busy.close()


def test_listen_backlog_is_the_listeners():
    """The kernel's queue holds --max-conns' worth of a burst: the socket
    listens with 1024 (listener.c) and httpconn must not listen() again
    with libevent's default 128 (a burst past it lost SYNs, each client a
    second late: test_coalesce saw HITs among its 500 at once)."""
    w = px.worker_pids()[0]
    socks = []
    os.kill(w, signal.SIGSTOP)  # nothing accepted meanwhile
    try:
        for _ in range(400):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", px.port))
            socks.append(c)
        deadline = time.monotonic() + 2
        done = set()
        while len(done) < len(socks) and time.monotonic() < deadline:
            _, w_ok, _ = select.select([], [c for c in socks if c not in done], [], 0.1)
            done.update(w_ok)
        assert len(done) == len(socks), "%d of %d connected" % (len(done), len(socks))
    finally:
        os.kill(w, signal.SIGCONT)
        for c in socks:
            c.close()
    assert px.get("/healthz")[0] == 200


def test_clean_exit():
    px.stop_clean()


if __name__ == "__main__":
    qctest.main(globals())
