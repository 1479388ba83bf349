#!/usr/bin/env python3
"""Route policies of the pass-through (issue 12 items 2, 3, 5, 6): a `local`
route is answered from the in-process cache only for the identity that
stored it; RFC 9111 rules decide what is stored (no-store, Set-Cookie,
Vary, statuses, max-age) and stored validators give 304s; a write drops its
target's copy; bypass and unlisted routes always reach the upstream; every
proxied answer says X-Cache/Cache-Status. The upstream is upstream_app.py;
no backend is needed (pass-through does not wait for the catalog)."""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

ROUTES = {"routes": [
    {"name": "me", "path": "/me/*", "policy": "local", "identity": "header:Authorization"},
    {"name": "cart", "methods": ["GET", "HEAD", "PUT", "POST"], "path": "/cart/{id}",
     "policy": "local", "ttl": 30, "identity": "cookie:sid"},
    {"name": "orders", "path": "/orders/*", "policy": "bypass"},
]}
st = px = app = None
app_port = None
A = {"Authorization": "Bearer user-a"}
B = {"Authorization": "Bearer user-b"}


def setup_module():
    global st, px, app, app_port
    app = qctest.UpstreamApp()
    app_port = app.port
    st = qcstack.Stack(redis=False, postgres=False, tax=False)
    path = os.path.join(st.dir, "routes.json")
    with open(path, "w") as f:
        json.dump(ROUTES, f)
    px = qcstack.Proxy(st, upstream="http://127.0.0.1:%d" % app_port, routes=path,
                       admin_listen=None)


def teardown_module():
    if st:
        st.stop()
    if app:
        app.stop()


def calls(path):
    return app.calls(path)


def get(path, headers=None, method="GET"):
    return qcstack.http_request(px.port, method, path, headers=headers)


def seen_auth(body):
    return [v for k, v in json.loads(body)["headers"] if k.lower() == "authorization"]


def test_local_hit_for_the_same_identity():
    s1, h1, b1 = get("/me/profile", A)
    s2, h2, b2 = get("/me/profile", A)
    assert s1 == s2 == 200 and b1 == b2
    assert h1["x-cache"] == "MISS" and h1["cache-status"] == "quotecache; fwd=uri-miss; stored"
    assert h2["x-cache"] == "HIT" and h2["cache-status"].startswith("quotecache; hit; ttl=")
    assert 58 <= int(h2["cache-status"].rsplit("=", 1)[1]) <= 60  # default TTL 60 s
    assert h2["age"] in ("0", "1") and h2["x-upstream"] == "yes"
    assert calls("/me/profile") == 1


def test_never_served_to_another_identity():
    s, h, b = get("/me/orders", A)
    assert s == 200 and seen_auth(b) == ["Bearer user-a"]
    s, h, b = get("/me/orders", B)
    assert h["x-cache"] == "MISS" and seen_auth(b) == ["Bearer user-b"]
    s, h, b = get("/me/orders", A)
    assert h["x-cache"] == "HIT" and seen_auth(b) == ["Bearer user-a"]
    s, h, b = get("/me/orders", B)
    assert h["x-cache"] == "HIT" and seen_auth(b) == ["Bearer user-b"]
    # no identity: never a stored copy, never stored
    for _ in range(2):
        s, h, b = get("/me/orders")
        assert h["x-cache"] == "BYPASS" and seen_auth(b) == []
    # a second Authorization field is nobody's identity
    s, h, b = get("/me/orders", {"Authorization": "Bearer user-a, Bearer user-b"})
    assert h["x-cache"] == "MISS" and seen_auth(b) == ["Bearer user-a, Bearer user-b"]
    assert calls("/me/orders") == 5


def test_local_copy_is_per_host():
    # Two sites behind one proxy, the same path and the same user: each
    # site's answer is its own copy (the Host is in the key, as for shared
    # routes), and each is a hit for its own site afterwards.
    def host_get(host):
        return get("/me/sites", dict(A, Host=host))
    for host in ("shop.example", "admin.example"):
        s, h, b = host_get(host)
        assert s == 200 and h["x-cache"] == "MISS", (host, h)
        assert [v for k, v in json.loads(b)["headers"] if k.lower() == "host"] == [host]
    for host in ("shop.example", "admin.example"):
        s, h, b = host_get(host)
        assert h["x-cache"] == "HIT", (host, h)
        assert [v for k, v in json.loads(b)["headers"] if k.lower() == "host"] == [host]
    assert calls("/me/sites") == 2


def test_cookie_identity():
    s, h, _ = get("/cart/1", {"Cookie": "theme=dark; sid=s1"})
    assert h["x-cache"] == "MISS"
    s, h, _ = get("/cart/1", {"Cookie": "sid=s1; lang=fr"})  # other cookies do not matter
    assert h["x-cache"] == "HIT"
    assert h["cache-status"].startswith("quotecache; hit; ttl=")
    assert int(h["cache-status"].rsplit("=", 1)[1]) <= 30  # the route's ttl
    s, h, _ = get("/cart/1", {"Cookie": "sid=s2"})
    assert h["x-cache"] == "MISS"
    s, h, _ = get("/cart/1", {"Cookie": "xsid=s1"})
    assert h["x-cache"] == "BYPASS"
    assert calls("/cart/1") == 3


def test_query_order_does_not_split_the_cache():
    get("/me/q?a=1&b=2", A)
    s, h, _ = get("/me/q?b=2&a=1", A)
    assert h["x-cache"] == "HIT"
    s, h, _ = get("/me/q?a=1&b=3", A)
    assert h["x-cache"] == "MISS"


def twice(path, headers=A):
    get(path, headers)
    return get(path, headers)


def test_no_store_set_cookie_and_statuses_never_stored():
    for q in ("h_Cache-Control=no-store", "h_Cache-Control=no-cache",
              "h_Set-Cookie=s%3D1", "h_Vary=*", "code=500", "code=201",
              "h_Cache-Control=max-age%3D0"):
        path = "/me/never?" + q
        s, h, _ = twice(path)
        assert h["x-cache"] == "MISS" and "stored" not in h["cache-status"], (q, h)
        assert calls("/me/never") % 2 == 0
    assert calls("/me/never") == 14
    # a request's no-store: forwarded, nothing stored
    get("/me/nostore", dict(A, **{"Cache-Control": "no-store"}))
    s, h, _ = get("/me/nostore", A)
    assert h["x-cache"] == "MISS"


def test_empty_answers_are_stored_too():
    s, h, b = twice("/me/empty?code=204")
    assert s == 204 and b == b"" and h["x-cache"] == "HIT"
    assert calls("/me/empty") == 1


def test_private_is_stored_in_the_local_cache():
    s, h, _ = twice("/me/p?h_Cache-Control=private")
    assert h["x-cache"] == "HIT"


def test_vary_honoured():
    path = "/me/v?h_Vary=Accept-Language"
    en = dict(A, **{"Accept-Language": "en"})
    fr = dict(A, **{"Accept-Language": "fr"})
    get(path, en)
    s, h, b = get(path, en)
    assert h["x-cache"] == "HIT"
    s, h, b = get(path, fr)
    assert h["x-cache"] == "MISS"
    langs = [v for k, v in json.loads(b)["headers"] if k == "Accept-Language"]
    assert langs == ["fr"]


def test_max_age_caps_the_ttl():
    path = "/me/short?h_Cache-Control=max-age%3D1"
    s, h, _ = twice(path)
    assert h["x-cache"] == "HIT" and int(h["cache-status"].rsplit("=", 1)[1]) <= 1
    time.sleep(1.3)
    s, h, _ = get(path, A)
    assert h["x-cache"] == "MISS"
    assert calls("/me/short") == 2


def test_validators_give_304_from_the_cache():
    path = "/me/tagged?h_ETag=%22v7%22&h_Last-Modified=Sun,%2006%20Nov%201994%2008:49:37%20GMT"
    get(path, A)
    n = calls("/me/tagged")
    s, h, b = get(path, dict(A, **{"If-None-Match": '"v7"'}))
    assert s == 304 and b == b"" and h["x-cache"] == "HIT" and h["etag"] == '"v7"'
    s, h, b = get(path, dict(A, **{"If-None-Match": '"other"'}))
    assert s == 200 and b and h["x-cache"] == "HIT"
    s, h, b = get(path, dict(A, **{"If-Modified-Since": "Mon, 07 Nov 1994 08:49:37 GMT"}))
    assert s == 304 and b == b""
    s, h, b = get(path, dict(A, **{"If-Modified-Since": "Sat, 05 Nov 1994 08:49:37 GMT"}))
    assert s == 200 and b
    assert calls("/me/tagged") == n


def test_head_served_from_a_stored_get():
    s, h, b = get("/me/h", A)
    s2, h2, b2 = get("/me/h", A, method="HEAD")
    assert s2 == 200 and b2 == b"" and h2["x-cache"] == "HIT"
    assert h2["content-length"] == str(len(b))


def test_request_no_cache_refreshes():
    get("/me/r", A)
    s, h, _ = get("/me/r", dict(A, **{"Cache-Control": "no-cache"}))
    assert h["x-cache"] == "MISS"
    assert calls("/me/r") == 2


def test_write_drops_the_copy_of_its_target():
    s1 = {"Cookie": "sid=w1"}
    s2 = {"Cookie": "sid=w2"}
    get("/cart/9", s1)
    get("/cart/9", s2)
    assert get("/cart/9", s1)[1]["x-cache"] == "HIT"
    s, h, _ = get("/cart/9", s2, method="PUT")
    assert s == 200
    assert get("/cart/9", s2)[1]["x-cache"] == "MISS"
    # The resource changed: every identity's copy of it goes (RFC 9111 4.4).
    assert get("/cart/9", s1)[1]["x-cache"] == "MISS"
    assert get("/cart/9", s1)[1]["x-cache"] == "HIT"
    s, h, _ = get("/cart/9?code=409", s1, method="POST")  # a failed write drops nothing
    assert s == 409
    assert get("/cart/9", s1)[1]["x-cache"] == "HIT"


def test_bypass_and_unlisted_always_forwarded():
    for path in ("/orders/1", "/unlisted/x"):
        for _ in range(2):
            s, h, _ = get(path, A)
            assert s == 200 and h["x-cache"] == "BYPASS"
            assert h["cache-status"] == "quotecache; fwd=bypass"
        assert calls(path) == 2


def test_bad_routes_file_refused():
    bad = os.path.join(st.dir, "bad.json")
    with open(bad, "w") as f:
        f.write('{"routes": [{"name": "x", "path": "/x", "policy": "cached"}]}')
    r = subprocess.run([px.binary, "--check-config", "--redis", "none", "--routes", bad,
                        "--upstream", "http://127.0.0.1:1"], capture_output=True, text=True)
    assert r.returncode == 2 and "route 1" in r.stderr and "policy" in r.stderr, r.stderr
    r = subprocess.run([px.binary, "--check-config", "--redis", "none",
                        "--upstream", "https://x"], capture_output=True, text=True)
    assert r.returncode == 2 and "--upstream" in r.stderr, r.stderr


def test_metrics_by_route():
    s, _, b = get("/metrics")
    text = b.decode()
    hits = [l for l in text.splitlines() if l.startswith(
        'quotecache_proxy_requests_total{route="me",status="2xx",cache="HIT"}')]
    assert hits and int(hits[0].split()[-1]) >= 5, hits
    assert 'quotecache_proxy_requests_total{route="orders",status="2xx",cache="BYPASS"} 2' in text
    count = [l for l in text.splitlines() if l.startswith(
        'quotecache_upstream_duration_seconds_count{route="unlisted"}')]
    assert count and int(count[0].split()[-1]) >= 2, count


def test_clean_exit():
    px.stop_clean()


if __name__ == "__main__":
    qctest.main(globals())
