#!/usr/bin/env python3
"""The origin at its limits: a PostgreSQL deadline cancels the backend's
statement (it does not linger, waiting on a lock, after the client got its
504), and a total that does not fit in 64 bits is a clean 500, never a
wrapped number.

The slow query is real: a psql session holds LOCK TABLE regional_prices IN
ACCESS EXCLUSIVE MODE in an open transaction, so the quote statement waits
on the lock. The huge totals come from a list price near INT64_MAX and a
stand-in tax service (a few lines of http.server) answering what the test
tells it."""

import http.server
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

st = None
INT64_MAX = 2 ** 63 - 1
QUOTE_SQL_LIKE = "WITH p AS (%"


def setup_module():
    global st
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=500, seed=1)
    # Without the seed's store-wide promotions a plain product's USD unit
    # price is its list price, so the test can put it next to INT64_MAX.
    st.psql("DELETE FROM promotions WHERE product_id IS NULL")


def teardown_module():
    if st is not None:
        st.stop()


def plain_products(n):
    """Active products priced in US with no tier discount for 'standard'
    and no promotion (setup_module deleted the store-wide ones): their USD
    unit price is the list price."""
    return [int(x) for x in st.psql(
        "SELECT p.id FROM products p JOIN regional_prices rp ON rp.product_id = p.id "
        "AND rp.region = 'US' WHERE p.active AND NOT EXISTS (SELECT 1 FROM promotions pr "
        "WHERE pr.product_id = p.id OR pr.product_id IS NULL) AND NOT EXISTS (SELECT 1 FROM tier_discounts td WHERE "
        "td.product_id = p.id AND td.tier = 'standard') ORDER BY p.id DESC LIMIT %d" % n).split()]


def lingering_quote_backends():
    return [int(x) for x in st.psql(
        "SELECT pid FROM pg_stat_activity WHERE datname = 'pricing' AND state = 'active' "
        "AND query LIKE '%s' AND pid <> pg_backend_pid()" % QUOTE_SQL_LIKE).split()]


def proxy_backends():
    """Backend pids of the proxy's connections (psql names itself)."""
    return set(st.psql("SELECT pid FROM pg_stat_activity WHERE datname = 'pricing' AND "
                       "application_name <> 'psql' AND backend_type = 'client backend'").split())


def test_deadline_cancels_the_backend_query():
    pid = plain_products(1)[0]
    px = qcstack.Proxy(st, pg_timeout=500, workers=1).ready()
    before = proxy_backends()
    assert len(before) == 5, before  # --pg-pool 4 and the LISTEN connection
    held = qcstack.HeldSession(st)
    try:
        held.run("BEGIN; LOCK TABLE regional_prices IN ACCESS EXCLUSIVE MODE;")
        times = []
        for i in range(3):
            t0 = time.monotonic()
            s, _, doc = px.quote(pid, tier=["standard", "gold", "silver"][i])
            dt = time.monotonic() - t0
            times.append(dt)
            assert s == 504, (s, doc)
            assert doc["error"] == "postgres_timeout", doc
            assert dt < 0.75, "504 after %.3fs" % dt
            # The statement was cancelled, not left waiting on the lock.
            deadline = time.monotonic() + 0.3
            while lingering_quote_backends():
                assert time.monotonic() < deadline, \
                    "quote statement still running 0.3s after its 504: %s" % \
                    st.psql("SELECT pid, state, wait_event_type, wait_event, query_start "
                            "FROM pg_stat_activity WHERE query LIKE '%s'" % QUOTE_SQL_LIKE)
                time.sleep(0.01)
        print("  504 after %s ms; no statement left behind" %
              ", ".join("%.0f" % (t * 1000) for t in times), flush=True)
        held.run("ROLLBACK;")
        # The pool is fine afterwards (the cancelled connections were kept or
        # replaced): the next quote is served.
        t0 = time.monotonic()
        s, _, doc = px.quote(pid)
        assert s == 200, (s, doc)
        assert time.monotonic() - t0 < 1.0
        # Cancelled, not dropped: the same backends serve on.
        assert proxy_backends() == before, (before, proxy_backends())
    finally:
        held.close()
    px.stop_clean()


class FakeTax(http.server.BaseHTTPRequestHandler):
    answer = {"tax_cents": 0}

    def do_GET(self):
        body = json.dumps(FakeTax.answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_total_overflow_is_a_clean_500():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeTax)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    pids = plain_products(4)
    px = qcstack.Proxy(st, tax_url="http://127.0.0.1:%d" % srv.server_address[1],
                       redis="none", workers=1).ready()
    try:
        lst = INT64_MAX - 1000
        st.psql("UPDATE regional_prices SET list_price_cents = %d WHERE region = 'US' AND "
                "product_id IN (%s)" % (lst, ",".join(map(str, pids))))
        # Exactly at the top: served, and exact.
        FakeTax.answer = {"tax_cents": 1000}
        s, _, doc = px.quote(pids[0], headers={"Cache-Control": "no-cache"})
        assert s == 200, (s, doc)
        assert doc["unit_price_cents"] == lst and doc["total_cents"] == INT64_MAX, doc
        # One cent over: a clean 500, not a negative total.
        FakeTax.answer = {"tax_cents": 1001}
        s, _, doc = px.quote(pids[1])
        assert s == 500, (s, doc)
        assert doc["error"] == "price_overflow", doc
        # The largest tax the client accepts (2^53) over a huge unit price.
        FakeTax.answer = {"tax_cents": 2 ** 53}
        s, _, doc = px.quote(pids[2])
        assert s == 500 and doc["error"] == "price_overflow", (s, doc)
        # A tax beyond what a double holds exactly is a bad answer (502).
        FakeTax.answer = {"tax_cents": 9.3e18}
        s, _, doc = px.quote(pids[3])
        assert s == 502, (s, doc)
        # Errors are not cached: with a sane tax the same quote is 200.
        FakeTax.answer = {"tax_cents": 1}
        s, _, doc = px.quote(pids[1])
        assert s == 200 and doc["total_cents"] == lst + 1, (s, doc)
    finally:
        srv.shutdown()
        srv.server_close()
    px.stop_clean()


def pg_counters(px):
    """(statements, round trips) from /metrics: pgpool's pipelining counters."""
    text = px.get("/metrics")[2].decode()
    vals = {}
    for line in text.splitlines():
        name, _, v = line.partition(" ")
        vals[name] = v
    return (int(vals["quotecache_pg_statements_total"]),
            int(vals["quotecache_pg_round_trips_total"]))


def quote_path(pid, tier="standard", currency="USD"):
    return "/quote/%d?region=US&tier=%s&currency=%s" % (pid, tier, currency)


class RawTax:
    """A tax service on a raw socket that reads each request's head and
    sends whatever bytes the test set (then closes when told to)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.answer, self.close = b"", True
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        with c:
            buf = b""
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        d = c.recv(4096)
                        if not d:
                            return
                        buf += d
                    buf = buf[buf.index(b"\r\n\r\n") + 4:]
                    c.sendall(self.answer)
                    if self.close:
                        return
            except OSError:
                return


def test_tax_answer_that_is_not_http_is_a_bad_answer():
    """tax.h: 502 when the service answered badly, 503 when it could not be
    reached or dropped the connection. An answer whose framing cannot be
    read (a 101 never asked for, a transfer coding we cannot undo, two
    differing lengths) came from a service that was reached: 502
    tax_bad_answer, as evhttp's client gave for the first two, not 503
    tax_unavailable "could not be reached". One cut short by the close
    is a dropped connection: 503."""
    srv = RawTax()
    pid = plain_products(1)[0]
    px = qcstack.Proxy(st, tax_url="http://127.0.0.1:%d" % srv.port, redis="none",
                       workers=1).ready()
    good = b'{"tax_cents": 7}'
    cases = [
        ("a 101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n" + good, 502,
         "tax_bad_answer"),
        ("a gzip coding", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + good, 502,
         "tax_bad_answer"),
        ("two lengths", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Length: 3\r\n\r\n"
         % len(good) + good, 502, "tax_bad_answer"),
        ("cut short", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + good, 503,
         "tax_unavailable"),
        ("no answer", b"", 503, "tax_unavailable"),
        ("a good one", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(good) + good,
         200, None),
    ]
    try:
        for what, answer, status, code in cases:
            srv.answer = answer
            s, _, doc = px.quote(pid, headers={"Cache-Control": "no-cache"})
            assert s == status, (what, s, doc)
            if code is not None:
                assert doc["error"] == code, (what, doc)
    finally:
        srv.sock.close()
    px.stop_clean()


def test_pipelined_error_fails_only_its_own_load():
    """Many loads at once share pipelined connections; a statement that
    fails on the server (a JPY unit price beyond bigint) answers its own
    load 500 and no other, and the statements shared round trips."""
    pids = plain_products(60)[10:]
    bad = pids[:3]
    st.psql("UPDATE regional_prices SET list_price_cents = %d WHERE region = 'US' AND "
            "product_id IN (%s)" % (INT64_MAX // 2, ",".join(map(str, bad))))
    px = qcstack.Proxy(st, redis="none", workers=1).ready()
    try:
        paths = [quote_path(p, currency="JPY") for p in pids]
        stmts0, trips0 = pg_counters(px)
        res = qcstack.concurrent_gets(px.port, paths, headers={"Cache-Control": "no-cache"},
                                      timeout=20)
        stmts1, trips1 = pg_counters(px)
        for p, (status, _, body) in zip(pids, res):
            if p in bad:
                assert status == 500, (p, status, body)
                assert json.loads(body)["error"] == "postgres_error", body
            else:
                assert status == 200, (p, status, body)
                assert json.loads(body)["product_id"] == p, body
        assert stmts1 - stmts0 >= len(pids), (stmts0, stmts1)
        # 50 statements on 4 connections: pipelined, fewer reads than statements.
        assert trips1 - trips0 < stmts1 - stmts0, (trips1 - trips0, stmts1 - stmts0)
        print("  %d statements in %d round trips" % (stmts1 - stmts0, trips1 - trips0),
              flush=True)
        # The connections are fine afterwards: the same loads again, all 200
        # for the good ones.
        res = qcstack.concurrent_gets(px.port, paths, headers={"Cache-Control": "no-cache"},
                                      timeout=20)
        assert all(r[0] == (500 if p in bad else 200) for p, r in zip(pids, res)), \
            [(p, r[0]) for p, r in zip(pids, res)]
    finally:
        st.psql("UPDATE regional_prices SET list_price_cents = 1000 WHERE region = 'US' AND "
                "product_id IN (%s)" % ",".join(map(str, bad)))
    px.stop_clean()


def test_pipelined_deadlines_cancel_every_statement():
    """Statements queued behind one another on pipelined connections all
    wait on a lock: each load gets its 504 at its deadline, none of their
    statements lingers on the server afterwards, and the pool serves on."""
    pids = plain_products(60)[20:44]
    px = qcstack.Proxy(st, redis="none", pg_timeout=500, workers=1).ready()
    held = qcstack.HeldSession(st)
    try:
        held.run("BEGIN; LOCK TABLE regional_prices IN ACCESS EXCLUSIVE MODE;")
        paths = [quote_path(p, tier="gold") for p in pids]
        t0 = time.monotonic()
        res = qcstack.concurrent_gets(px.port, paths, headers={"Cache-Control": "no-cache"},
                                      timeout=10)
        dt = time.monotonic() - t0
        for status, _, body in res:
            assert status == 504, (status, body)
            assert json.loads(body)["error"] == "postgres_timeout", body
        assert dt < 1.5, "%d answers took %.3fs for a 500 ms deadline" % (len(res), dt)
        # Every statement was cancelled (at the head, one after another),
        # none left waiting on the lock.
        deadline = time.monotonic() + 2.0
        while lingering_quote_backends():
            assert time.monotonic() < deadline, \
                "quote statements still running 2 s after their 504s: %s" % \
                st.psql("SELECT pid, state, wait_event, query_start FROM pg_stat_activity "
                        "WHERE query LIKE '%s'" % QUOTE_SQL_LIKE)
            time.sleep(0.02)
        held.run("ROLLBACK;")
        deadline = time.monotonic() + 3.0
        while True:
            res = qcstack.concurrent_gets(px.port, paths,
                                          headers={"Cache-Control": "no-cache"}, timeout=10)
            if all(r[0] == 200 for r in res) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert all(r[0] == 200 for r in res), [r[0] for r in res]
    finally:
        held.close()
    px.stop_clean()


qctest.main(globals())
