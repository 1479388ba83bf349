#!/usr/bin/env python3
"""Methods evhttp does not know (PROPFIND, FOO), sent as raw bytes: a JSON
405 with `Allow: GET, HEAD` on quotecache's own routes, a JSON 501
`not_implemented` elsewhere, never forwarded to the upstream; with a body
(which nobody reads) the answer closes the connection, without one the
connection stays usable. And the admin listener runs the framing checks of
the public one (a body on HEAD/TRACE, Content-Length with
Transfer-Encoding, two Hosts; TRACE/CONNECT a 405 with `Allow: POST`).
Ends with a clean exit (under ASan: no leak)."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

Q = "/quote/1?region=US&tier=gold"
UNKNOWN = (b"PROPFIND", b"FOO")
# A request that answers and closes, sent after the one under test on the
# same connection: it is answered only if that connection was kept in step.
NEXT = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
NEXT_ADMIN = b"GET /admin/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
st = px = app = None
app_port = None


def setup_module():
    global st, px, app, app_port
    app = qctest.UpstreamApp()
    app_port = app.port
    st = qcstack.Stack(products=50)
    px = qcstack.Proxy(st, upstream="http://127.0.0.1:%d" % app_port).ready()


def teardown_module():
    if app:
        app.stop()
    if st:
        st.stop()


def upstream_calls():
    return app.calls()


def responses(raw):
    """Every answer in raw, in order: [(status, headers, body)]."""
    out = []
    while raw:
        s, h, body = qcstack.parse_response(raw)
        if s is None:
            break
        out.append((s, h, body))
        head = raw.index(b"\r\n\r\n") + 4
        raw = raw[head + int(h.get("content-length", len(raw))):]
    return out


def exchange(data, port=None):
    return responses(qcstack.raw_request(port or px.port, data, timeout=4))


def assert_json_error(answer, status, code, head=False):
    """Our JSON error (head: its headers only, as a HEAD gets it)."""
    s, h, body = answer
    assert s == status, answer
    assert h.get("content-type", "").startswith("application/json"), h
    if head:
        assert body == b"" and int(h["content-length"]) > 0, answer
        return
    doc = json.loads(body)
    assert doc["error"] == code and isinstance(doc.get("message"), str), doc


def assert_kept(answers):
    """The first answer did not close; the next request was answered."""
    assert len(answers) == 2, answers
    assert answers[0][1].get("connection", "").lower() != "close", answers[0]
    assert answers[1][0] in (200, 404), answers[1]


def assert_closed(answers):
    """The only answer said Connection: close (what followed was not read
    as a request)."""
    assert len(answers) == 1, answers
    assert answers[0][1].get("connection", "").lower() == "close", answers[0]


# ----------------------------------------------------------- public listener


def test_unknown_method_on_own_routes_405_with_allow():
    before = upstream_calls()
    for m in UNKNOWN:
        for path in (Q, "/healthz", "/metrics"):
            got = exchange(m + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n" + NEXT)
            assert_json_error(got[0], 405, "method_not_allowed")
            assert got[0][1].get("allow") == "GET, HEAD", (m, path, got[0])
            assert_kept(got)
    assert upstream_calls() == before


def test_unknown_method_elsewhere_501_never_forwarded():
    before = upstream_calls()
    # Paths the upstream would get, and ours that have no route.
    for m in UNKNOWN:
        for path in (b"/echo", b"/echo/a?x=1", b"/quote", b"/admin/invalidate", b"/"):
            got = exchange(m + b" " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n" + NEXT)
            assert_json_error(got[0], 501, "not_implemented")
            assert "x-cache" not in got[0][1], got[0]  # neither looked up nor stored
            assert "allow" not in got[0][1], got[0]
            assert_kept(got)
    assert upstream_calls() == before
    # The same paths with a known method do reach it.
    s, _, _ = qcstack.http_request(px.port, "POST", "/echo/a?x=1", body=b"{}")
    assert s == 200 and upstream_calls().get("/echo/a", 0) == before.get("/echo/a", 0) + 1


def test_unknown_method_with_body_closes():
    smuggled = b"GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    before = upstream_calls()
    for m in UNKNOWN:
        for path, status in ((Q.encode(), 405), (b"/echo", 501)):
            for framing, body in ((b"Content-Length: %d" % len(smuggled), smuggled),
                                  (b"Transfer-Encoding: chunked",
                                   b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled))):
                got = exchange(m + b" " + path + b" HTTP/1.1\r\nHost: x\r\n" + framing
                               + b"\r\n\r\n" + body)
                assert_closed(got)
                assert_json_error(got[0], status, "method_not_allowed" if status == 405
                                  else "not_implemented")
    assert upstream_calls() == before  # the body was not read as a request either
    # An empty body said out loud is no body: the connection is kept.
    got = exchange(b"FOO /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" + NEXT)
    assert_json_error(got[0], 501, "not_implemented")
    assert_kept(got)


def test_unknown_method_framing_checked_first():
    got = exchange(b"FOO /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                   b"Content-Length: 4\r\n\r\nabcd")
    assert_closed(got)
    assert_json_error(got[0], 400, "bad_framing")


def test_oversized_bodyless_with_body_closes():
    """A 414 or 431 comes before the framing checks: to a HEAD or an unknown
    method with a body (unread) it must close too, or the body is read as
    the next request (smuggled past whoever framed it by its length)."""
    smuggled = b"GET /echo/smuggled414 HTTP/1.1\r\nHost: x\r\n\r\n"
    before = upstream_calls()
    for m in (b"HEAD", b"FOO"):
        for target, extra, status in ((b"/echo/" + b"a" * 5000, b"", 414),
                                      (b"/echo", b"X-Big: " + b"b" * 17000 + b"\r\n", 431)):
            got = exchange(m + b" " + target + b" HTTP/1.1\r\nHost: x\r\n" + extra
                           + b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
            assert got and got[0][0] == status, (m, status, got)
            assert_closed(got)
    assert upstream_calls().get("/echo/smuggled414", 0) == before.get("/echo/smuggled414", 0)


# ------------------------------------------------------------ admin listener


def warm_hit():
    px.get(Q)
    s, h, _ = px.get(Q)
    assert s == 200 and h.get("x-cache") == "HIT", (s, h)


def test_admin_framing_checks():
    warm_hit()
    purge = b'{"all": true}'
    for data, code in (
            # A body evhttp does not read on HEAD / TRACE.
            (b"HEAD /admin/invalidate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
             % len(NEXT_ADMIN) + NEXT_ADMIN, "bad_framing"),
            (b"TRACE /admin/invalidate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
             b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(NEXT_ADMIN), NEXT_ADMIN), "bad_framing"),
            # Framings another parser could read differently, each around a
            # purge that must not happen. evhttp itself refuses
            # Content-Length with Transfer-Encoding (its HTML 400: None).
            (b"POST /admin/invalidate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
             % (len(purge), len(purge), purge), None),
            (b"POST /admin/invalidate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (len(purge), len(purge), purge), "bad_framing"),
            (b"POST /admin/invalidate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked"
             b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(purge), purge), "bad_framing"),
            (b"POST /admin/invalidate HTTP/1.1\r\nHost: x\r\nContent-Length: +%d\r\n\r\n%s"
             % (len(purge), purge), "bad_framing")):
        got = exchange(data, port=px.admin_port)
        assert_closed(got)
        if code is None:
            assert got[0][0] == 400, got
        else:
            assert_json_error(got[0], 400, code, head=data.startswith(b"HEAD"))
    got = exchange(b"POST /admin/invalidate HTTP/1.1\r\nHost: x\r\nHost: y\r\n"
                   b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(purge), purge),
                   port=px.admin_port)
    assert len(got) == 1, got
    assert_json_error(got[0], 400, "bad_host")
    s, h, _ = px.get(Q)
    assert h.get("x-cache") == "HIT", h  # nothing was purged


def test_admin_trace_connect_and_unknown_405_with_allow():
    for m in (b"TRACE", b"CONNECT") + UNKNOWN:
        got = exchange(m + b" /admin/invalidate HTTP/1.1\r\nHost: x\r\n\r\n" + NEXT_ADMIN,
                       port=px.admin_port)
        assert_json_error(got[0], 405, "method_not_allowed")
        assert got[0][1].get("allow") == "POST", (m, got[0])
        assert_kept(got)
    # An unknown method with a body: the same 405, and the connection closed.
    got = exchange(b"FOO /admin/invalidate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                   % len(NEXT_ADMIN) + NEXT_ADMIN, port=px.admin_port)
    assert_closed(got)
    assert_json_error(got[0], 405, "method_not_allowed")
    assert got[0][1].get("allow") == "POST", got[0]
    # The admin listener still purges.
    warm_hit()
    s, _, _ = qcstack.http_post(px.admin_port, "/admin/invalidate", body={"all": True})
    assert s == 200
    s, h, _ = px.get(Q)
    assert s == 200 and h.get("x-cache") != "HIT", h


def test_clean_exit():
    px.stop_clean()


if __name__ == "__main__":
    qctest.main(globals())
