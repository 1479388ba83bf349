#!/usr/bin/env python3
"""Hostile and malformed input: a table of bad requests with the status and
`error` code each must get, none of which may reach the origin or the cache;
size limits (414/431), broken HTTP, slow senders, too many connections; and
afterwards the proxy is still healthy and exits 0 on SIGTERM (under the
sanitizer build that also means no leak)."""

import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

MAX_URI, MAX_HEADERS, MAX_CONNS = 512, 1024, 20
Q = "region=US&tier=gold"
st = px = None

# (path, status, error code); every one fails validation before any lookup.
BAD = [
    # product ids
    ("/quote/0?" + Q, 400, "bad_product_id"),
    ("/quote/000?" + Q, 400, "bad_product_id"),
    ("/quote/-1?" + Q, 400, "bad_product_id"),
    ("/quote/+1?" + Q, 400, "bad_product_id"),
    ("/quote/1.5?" + Q, 400, "bad_product_id"),
    ("/quote/1e3?" + Q, 400, "bad_product_id"),
    ("/quote/0x10?" + Q, 400, "bad_product_id"),
    ("/quote/abc?" + Q, 400, "bad_product_id"),
    ("/quote/?" + Q, 400, "bad_product_id"),
    ("/quote/%20" + "1?" + Q, 400, "bad_product_id"),
    ("/quote/1%00?" + Q, 400, "bad_product_id"),
    ("/quote/%zz?" + Q, 400, "bad_product_id"),
    ("/quote/1%?" + Q, 400, "bad_product_id"),
    ("/quote/9223372036854775808?" + Q, 400, "bad_product_id"),
    ("/quote/99999999999999999999999?" + Q, 400, "bad_product_id"),
    ("/quote/" + "1" * 300 + "?" + Q, 400, "bad_product_id"),
    # missing, empty, repeated, unknown parameters
    ("/quote/1", 400, "missing_parameter"),
    ("/quote/1?region=US", 400, "missing_parameter"),
    ("/quote/1?tier=gold", 400, "missing_parameter"),
    ("/quote/1?region=&tier=gold", 400, "bad_request"),
    ("/quote/1?region=US&tier=", 400, "bad_request"),
    ("/quote/1?" + Q + "&currency=", 400, "bad_request"),
    ("/quote/1?region&tier=gold", 400, "bad_request"),
    ("/quote/1?" + Q + "&region=EU", 400, "duplicate_parameter"),
    ("/quote/1?" + Q + "&REGION=US", 400, "duplicate_parameter"),
    ("/quote/1?currency=EUR&" + Q + "&Currency=EUR", 400, "duplicate_parameter"),
    ("/quote/1?" + Q + "&utm_source=x", 400, "unknown_parameter"),
    ("/quote/1?" + Q + "&regions=US", 400, "unknown_parameter"),
    ("/quote/1?" + Q + "&", 400, "bad_request"),
    ("/quote/1?&" + Q, 400, "bad_request"),
    ("/quote/1?=US&" + Q, 400, "bad_request"),
    # bad encodings and bytes
    ("/quote/1?" + Q + "&currency=%zz", 400, "bad_request"),
    ("/quote/1?" + Q + "&currency=EU%", 400, "bad_request"),
    ("/quote/1?" + Q + "&currency=EU%4", 400, "bad_request"),
    ("/quote/1?region=U%00S&tier=gold", 400, "bad_request"),
    ("/quote/1?region=US&tier=go%0ald", 400, "bad_request"),
    ("/quote/1?" + Q + "&currency=%C3%A9ab", 400, "bad_request"),
    ("/quote/1?reg%zzion=US&tier=gold", 400, "bad_request"),
    # value rules
    ("/quote/1?region=ABCDEFGHIJKLMNOPQ&tier=gold", 400, "bad_request"),  # 17 letters
    ("/quote/1?region=U5&tier=gold", 400, "bad_request"),
    ("/quote/1?region=U+S&tier=gold", 400, "bad_request"),
    ("/quote/1?region=US;tier=gold", 400, "bad_request"),
    ("/quote/1?region=US&tier=go-ld", 400, "bad_request"),
    ("/quote/1?region=US&tier=gold1", 400, "bad_request"),
    ("/quote/1?" + Q + "&currency=US", 400, "bad_request"),
    ("/quote/1?" + Q + "&currency=USDX", 400, "bad_request"),
    ("/quote/1?" + Q + "&currency=U1D", 400, "bad_request"),
    ("/quote/1?" + Q + "&currency=" + "A" * 200, 400, "bad_request"),
    # well formed, but no such tier / currency
    ("/quote/1?region=US&tier=bronze", 400, "unknown_tier"),
    ("/quote/1?region=US&tier=ABCDEFGHIJKLMNOP", 400, "unknown_tier"),
    ("/quote/1?" + Q + "&currency=XYZ", 400, "unknown_currency"),
    ("/quote/1?" + Q + "&currency=usx", 400, "unknown_currency"),
    ("/quote/1?region=ABCDEFGHIJKLMNOP&tier=gold", 400, "unknown_region"),  # 16 letters
    ("/quote/1?region=XX&tier=gold", 400, "unknown_region"),
    # routes
    ("/quote/1/x?" + Q, 404, "no_route"),
    ("/quote?" + Q, 404, "no_route"),
    ("/QUOTE/1?" + Q, 404, "no_route"),
    ("/nope", 404, "no_route"),
    ("/", 404, "no_route"),
    ("/admin/invalidate", 404, "no_route"),  # never on the public listener
]

# Odd but valid: (path, status).
GOOD = [
    ("/quote/%31?" + Q, 200),                    # percent-encoded digit is 1
    ("/quote/0001?" + Q, 200),                   # leading zeros
    ("/quote/1?region=%55S&tier=GOLD&currency=eur", 200),
    ("/quote/1?tier=gold&currency=USD&region=us", 200),
    ("/quote/9223372036854775807?" + Q, 404),    # fits int64, does not exist
    ("/quote/00009223372036854775807?" + Q, 404),
]


def setup_module():
    global st, px
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=2000, seed=1)
    px = qcstack.Proxy(st, max_uri=MAX_URI, max_headers=MAX_HEADERS, header_timeout=1,
                       max_conns=MAX_CONNS)
    px.wait_health(status="ok", timeout=10)


def teardown_module():
    if st is not None:
        st.stop()


def error_of(body):
    doc = json.loads(body)
    assert isinstance(doc.get("message"), str) and doc["message"], doc
    return doc.get("error")


def origin_counts():
    return (st.tax_stats(), st.pg_statements(like="WITH p AS (%"),  # the quote statement
            int(st.redis_cli("DBSIZE")))


def test_bad_request_table():
    assert len(BAD) >= 40
    before = origin_counts()
    for path, status, code in BAD:
        s, h, body = px.get(path)
        assert s == status, (path, s, body)
        assert h.get("content-type") == "application/json", (path, h)
        assert error_of(body) == code, (path, body)
        assert "x-cache" not in h and "etag" not in h, (path, h)
    # Nothing reached PostgreSQL's quote query or the tax service, nothing cached.
    assert origin_counts() == before, (origin_counts(), before)


def test_message_does_not_echo_raw_input():
    s, _, body = px.get("/quote/%3Cscript%3Ealert(1)%3C%2Fscript%3E?" + Q)
    assert s == 400
    msg = json.loads(body)["message"]
    assert "<" not in msg and ">" not in msg and len(msg) < 200, msg
    s, _, body = px.get("/quote/1?" + Q + "&" + "x" * 400 + "=1")
    assert s == 400 and len(json.loads(body)["message"]) < 200, body


def test_odd_but_valid():
    for path, status in GOOD:
        s, h, body = px.get(path)
        assert s == status, (path, s, body)
        assert h["content-type"] == "application/json"
    # Spelling does not change the cache entry: one MISS, then HITs.
    base = px.get("/quote/2?region=EU&tier=silver&currency=GBP")
    assert base[0] == 200 and base[1]["x-cache"] == "MISS", base
    for path in ("/quote/002?region=eu&tier=SILVER&currency=gbp",
                 "/quote/%32?currency=GBP&tier=silver&region=EU"):
        s, h, body = px.get(path)
        assert s == 200 and h["x-cache"] == "HIT" and body == base[2], (path, s, h)
    s, h, body = px.get("/quote/2?region=EU&tier=silver&currency=USD")
    assert (s, h["x-cache"]) == (200, "MISS")
    assert px.get("/quote/2?region=EU&tier=silver")[1]["x-cache"] == "HIT"  # USD is the default
    # The absolute form of the request target (RFC 7230 5.3.2) is the same route.
    raw = qcstack.raw_request(px.port, b"GET http://quotes.example/quote/2?region=EU&tier=silver"
                              b"&currency=GBP HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    st, hdrs, body = qcstack.parse_response(raw)
    assert st == 200 and body == base[2], raw[:200]


def test_wrong_methods():
    before = origin_counts()
    for m in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/quote/1?" + Q, "/healthz", "/metrics"):
            s, h, body = qcstack.http_request(px.port, m, path, body=b"{}")
            assert s == 405, (m, path, s)
            assert error_of(body) == "method_not_allowed", body
            assert "GET" in h.get("allow", ""), h
    # TRACE and CONNECT: a JSON 405 on every route, and the connection
    # stays usable (keep-alive: the next request on it is answered).
    for req in (b"TRACE /quote/1?" + Q.encode() + b" HTTP/1.1", b"TRACE /healthz HTTP/1.1",
                b"CONNECT quotes.example:443 HTTP/1.1", b"TRACE /anything HTTP/1.1"):
        raw = qcstack.raw_request(px.port, req + b"\r\nHost: x\r\n\r\n"
                                  b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        s, h, body = qcstack.parse_response(raw)
        assert s == 405 and error_of(body) == "method_not_allowed", (req, raw[:300])
        assert raw.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 200" in raw, (req, raw[:600])
    assert origin_counts() == before


def test_uri_limit():
    # /healthz ignores its query, so the exact boundary can be probed.
    ok = "/healthz?" + "a" * (MAX_URI - len("/healthz?"))
    assert len(ok) == MAX_URI
    assert px.get(ok)[0] == 200
    s, h, body = px.get(ok + "a")
    assert s == 414 and error_of(body) == "uri_too_long", (s, body)
    s, _, body = px.get("/quote/1?" + Q + "&x=" + "a" * 600)
    assert s == 414 and error_of(body) == "uri_too_long"
    # Grossly oversized: evhttp may answer 400/414 itself or close.
    try:
        s = px.get("/quote/1?" + Q + "&x=" + "a" * 100000)[0]
    except (ConnectionError, OSError, qcstack.http.client.HTTPException):
        s = None
    assert s in (None, 400, 414), s


def test_header_limit():
    assert px.get("/quote/1?" + Q, headers={"X-Pad": "a" * (MAX_HEADERS - 200)})[0] == 200
    s, _, body = px.get("/quote/1?" + Q, headers={"X-Pad": "a" * (MAX_HEADERS + 10)})
    assert s == 431 and error_of(body) == "headers_too_large", (s, body)
    many = {"X-H%03d" % i: "v" * 10 for i in range(80)}  # many small ones add up
    s, _, body = px.get("/quote/1?" + Q, headers=many)
    assert s == 431 and error_of(body) == "headers_too_large", (s, body)
    try:
        s = px.get("/quote/1?" + Q, headers={"X-Pad": "a" * 100000})[0]
    except (ConnectionError, OSError, qcstack.http.client.HTTPException):
        s = None
    assert s in (None, 400, 431), s


def test_broken_http():
    """Each gets 4xx or a close, promptly; never a hang."""
    cases = [
        (b"GET /quote/1?region=US&tier=gold HTTP/1.1\r\nHost: x", True),  # no end of headers
        (b"\x00\x01\x02garbage\r\n\r\n", False),
        (b"GARBAGE\r\n\r\n", False),
        (b"GET /healthz HTTP/9.9\r\n\r\n", False),
        (b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n", False),
        (b"GET /healthz HTTP/1.1\r\n Host: x\r\n\r\n", False),
        (b"POST /quote/1 HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", False),
        (b"POST /quote/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", False),
        (b"POST /quote/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False),
        (b"\r\n\r\n\r\n", True),
        (b"G" * 5000 + b"\r\n\r\n", False),
    ]
    for data, shut in cases:
        t0 = time.monotonic()
        raw = qcstack.raw_request(px.port, data, timeout=4, shut_write=shut)
        took = time.monotonic() - t0
        status = qcstack.parse_response(raw)[0]
        assert status is None or 400 <= status < 500, (data[:60], raw[:200])
        assert raw == b"" or status is not None, (data[:60], raw[:200])
        assert took < 2.5, (data[:60], took)  # closed by the proxy, not by our timeout
    # Control bytes and spaces inside the request target: 400 JSON.
    for target in (b"/quote/1?region=U\x01S&tier=gold", b"/quote/1?region=U S&tier=gold"):
        raw = qcstack.raw_request(px.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
                                  b"Connection: close\r\n\r\n", timeout=4)
        assert qcstack.parse_response(raw)[0] == 400, raw[:200]


def test_slow_sender_cut():
    """Half a request, then silence longer than --header-timeout 1."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", px.port)) as s:
        s.sendall(b"GET /quote/1?region=US&tier=gold HTTP/1.1\r\nHo")
        s.settimeout(5)
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            data = b""
        took = time.monotonic() - t0
    status = qcstack.parse_response(data)[0]
    assert data == b"" or status in (400, 408), data
    assert 0.8 <= took < 3, took


def test_trickling_sender_cut():
    """One header byte every 200 ms: --header-timeout bounds the time to send
    the whole request (api.md: slow clients are timed out), not the gap
    between two bytes."""
    req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 40 + b"\r\n"
    t0 = time.monotonic()
    cut = None
    with socket.create_connection(("127.0.0.1", px.port)) as s:
        for ch in req:
            try:
                s.sendall(bytes([ch]))
                s.settimeout(0.2)
                if s.recv(4096) == b"":
                    cut = time.monotonic() - t0
                    break
            except socket.timeout:
                pass
            except OSError:
                cut = time.monotonic() - t0
                break
            if time.monotonic() - t0 > 6:
                break
    assert cut is not None and cut < 3, cut


def test_too_many_connections():
    """Past --max-conns the proxy stops accepting: the extra connections
    wait in the kernel's queue, unanswered, until slots free up."""
    socks, res = [], []
    try:
        for _ in range(MAX_CONNS + 10):
            c = socket.create_connection(("127.0.0.1", px.port))
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(c)
        for i, c in enumerate(socks):
            c.settimeout(3 if i < MAX_CONNS else 0.3)
            try:
                res.append(qcstack.parse_response(c.recv(65536))[0])
            except OSError:
                res.append(None)
        ok = res.count(200)
        assert ok <= MAX_CONNS, res
        assert ok >= MAX_CONNS - 2, res  # the limit is not wildly low either
        assert all(r in (200, None) for r in res), res
        assert res.count(None) >= 10, res
    finally:
        for c in socks:
            c.close()
    # The slots come back once those clients leave.
    qcstack.wait_until(lambda: px.get("/healthz")[0] == 200, 5, "a free connection slot")
    res = qcstack.concurrent_gets(px.port, ["/healthz"] * 10)
    assert [r[0] for r in res] == [200] * 10, res


def test_still_up_and_clean_exit():
    s, h, body = px.get("/healthz")
    assert s == 200 and json.loads(body)["status"] == "ok", body
    s, h, body = px.get("/quote/1?" + Q)
    assert s == 200 and json.loads(body)["product_id"] == 1
    s, _, body = px.get("/metrics")
    assert s == 200 and b"quotecache_" in body
    assert px.stop() == 0, px.stderr_text()[-3000:]
    err = px.stderr_text()
    assert "runtime error" not in err and "AddressSanitizer" not in err, err[-3000:]


if __name__ == "__main__":
    qctest.main(globals())
