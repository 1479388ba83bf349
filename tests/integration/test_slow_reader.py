#!/usr/bin/env python3
"""httpconn.c and a client that reads its answers slowly or not at all:
an answer that takes longer to send than --idle-timeout (or than the 1 s
linger of a closing connection) arrives whole, however slowly it is read,
as long as the client keeps reading; and a client that pipelines requests
without reading their answers cannot make the worker buffer what it sends
past a bound (the worker stops reading it)."""

import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

BIG = 16 << 20
st = px = app = None


def setup_module():
    global st, px, app
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    app = qctest.UpstreamApp()
    st = qcstack.Stack(products=50)
    px = qcstack.Proxy(st, upstream=app.url, idle_timeout=1, header_timeout=2,
                       max_body=32 << 20).ready()


def teardown_module():
    if app:
        app.stop()
    if st:
        st.stop()


def slow_client():
    s = socket.socket()
    # A small window: the answer crosses it a few KB at a time.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.connect(("127.0.0.1", px.port))
    return s


def read_one(s, timeout=10, pace=0):
    """One answer: (status, headers, body). The body is what arrived,
    short if the connection ended. pace: seconds slept after each read of
    at most 16 KB, else reads go as fast as the answer comes."""
    s.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        c = s.recv(65536)
        assert c, buf
        buf += c
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    h = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    n = int(h["content-length"])
    while len(body) < n:
        c = s.recv(min(16384 if pace else 65536, n - len(body)))
        if not c:
            break
        body += c
        time.sleep(pace)
    return int(lines[0].split(" ")[1]), h, body


def test_closing_answer_slower_than_the_linger_arrives_whole():
    # Through a 16 KB window, read as fast as it comes, it takes seconds:
    # past the 1 s a closing connection lingers. (Read any slower and the
    # worker's kernel buffer, megabytes, hides the client's progress from
    # it for longer than the 1 s --idle-timeout here.)
    with slow_client() as s:
        s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % BIG)
        t0 = time.monotonic()
        status, h, body = read_one(s)
        took = time.monotonic() - t0
        assert status == 200 and h.get("connection") == "close"
        assert len(body) == BIG, "%d of %d bytes in %.1f s" % (len(body), BIG, took)
        assert s.recv(1) == b""  # then the close


def test_keepalive_answer_slower_than_idle_timeout_arrives_whole():
    # --idle-timeout 1: the answer takes longer, but the client never
    # stops reading; the connection then carries the next request.
    with slow_client() as s:
        s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % BIG)
        t0 = time.monotonic()
        status, h, body = read_one(s)
        took = time.monotonic() - t0
        assert status == 200 and "connection" not in h
        assert len(body) == BIG, "%d of %d bytes in %.1f s" % (len(body), BIG, took)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = read_one(s)
        assert status == 200


def test_small_answer_behind_a_big_one_still_being_read_keeps_the_connection():
    # The small answer goes into the kernel at once, behind megabytes of
    # the big one that the client is still taking, more slowly than the
    # 1 s --idle-timeout drains them: the connection idles after it, yet
    # its client is reading, and its next request is served.
    with slow_client() as s:
        s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" % BIG)
        status, _, body = read_one(s, pace=0.004)  # about 4 MB/s
        assert status == 200 and len(body) == BIG, (status, len(body))
        status, _, _ = read_one(s)
        assert status == 200
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = read_one(s)
        assert status == 200


def test_small_answer_read_slowly_past_the_idle_timeout_is_not_cut():
    # An answer under 64 KB, all in the kernel at once, that its client
    # takes slowly (2 KB each 50 ms through a 4 KB window: 1.5 s, past the
    # 1 s --idle-timeout) while making progress all along; it sends its
    # next request before the end. Closed at the idle deadline with bytes
    # still unsent, the request reaching the closed socket is answered by
    # a reset, which throws away the rest of the answer (it arrived short:
    # 50953 of 62000 bytes).
    n = 62000
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", px.port))
        s.settimeout(10)
        s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
        t0 = time.monotonic()
        got, asked = b"", False
        while True:
            c = s.recv(2048)
            assert c, "the connection ended after %d bytes" % len(got)
            got += c
            if not asked and time.monotonic() - t0 > 1.2:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                asked = True
            if b"\r\n\r\n" in got and len(got.split(b"\r\n\r\n", 1)[1]) >= n:
                break
            time.sleep(0.05)
        assert asked, "the answer came faster than the pace allows"
        rest = got.split(b"\r\n\r\n", 1)[1][n:]
        while b"\r\n\r\n" not in rest:
            c = s.recv(65536)
            assert c, rest
            rest += c
        assert rest.startswith(b"HTTP/1.1 200"), rest[:100]


def worker_rss_kb():
    total = 0
    for pid in px.worker_pids():
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def test_pipelining_client_that_never_reads_is_bounded():
    before = worker_rss_kb()
    req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
    sent = 0
    with socket.create_connection(("127.0.0.1", px.port)) as s:
        s.setblocking(False)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.8:  # under --idle-timeout
            try:
                sent += s.send(req)
            except BlockingIOError:
                time.sleep(0.005)
        grown = worker_rss_kb() - before
    # The answers fill the client's window and then the worker's socket
    # buffer; past that the worker holds at most a bounded backlog of its
    # requests, and the kernel's buffers stop the client.
    assert grown < 64 * 1024, "worker grew by %d KB (%d bytes sent)" % (grown, sent)
    assert sent < 64 << 20, sent


def test_sigterm_lets_an_answer_being_sent_finish():
    # SIGTERM drains: every request answered, then the worker exits. An
    # answer handed to the socket code but not yet all sent is not
    # answered for its client: the worker waits for it (within
    # --shutdown-timeout) instead of cutting it.
    with qcstack.Proxy(st, upstream=app.url, max_body=32 << 20, shutdown_timeout=20000) as p2:
        p2.ready()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.connect(("127.0.0.1", p2.port))
        s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % BIG)
        s.settimeout(10)
        first = s.recv(65536)  # the answer has begun
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        for w in p2.worker_pids():
            os.kill(w, signal.SIGTERM)
        head, body = first.split(b"\r\n\r\n", 1)
        while True:
            c = s.recv(65536)
            if not c:
                break
            body += c
        s.close()
        assert len(body) == BIG, "%d of %d bytes" % (len(body), BIG)


def test_clean_exit():
    px.stop_clean()


if __name__ == "__main__":
    qctest.main(globals())
