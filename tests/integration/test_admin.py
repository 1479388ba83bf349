#!/usr/bin/env python3
"""The admin listener (api.md, "Admin"): POST /admin/invalidate with a
bearer token drops one product's quotes (every region, tier, currency) or
everything, on every instance sharing Redis; without the right token it is a
401 that changes nothing; bad bodies are 400, other methods 405; the route is
never served on the public listener; and a non-loopback admin listener
without a token refuses to start."""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

TOKEN = "adm1n-T0ken-for-tests"
ROUTE = "/admin/invalidate"
st = None
px1 = px2 = None
pool = []


def setup_module():
    global st, px1, px2, pool
    qctest.require_file(os.path.join(qcstack.build_dir(), "quotecache"), "quotecache")
    st = qcstack.Stack(products=2000)
    # Active products priced in both US and EU.
    pool = [int(x) for x in st.psql(
        "SELECT p.id FROM products p WHERE p.active AND EXISTS (SELECT 1 FROM regional_prices "
        "WHERE product_id = p.id AND region = 'US') AND EXISTS (SELECT 1 FROM regional_prices "
        "WHERE product_id = p.id AND region = 'EU') ORDER BY p.id LIMIT 40").split()]
    assert len(pool) >= 20, pool
    px1 = start_proxy(admin_token=TOKEN)
    px2 = start_proxy(admin_token=TOKEN)


def teardown_module():
    if st is not None:
        st.stop()


def start_proxy(**opts):
    return qcstack.Proxy(st, **opts).ready()


def take():
    return pool.pop(0)


def keys_of(pid):
    """Several cache entries of one product."""
    return [(pid, "US", "standard", "USD"), (pid, "EU", "gold", "EUR"),
            (pid, "US", "platinum", "GBP")]


def xcache(p, key):
    s, h, doc = p.quote(key[0], region=key[1], tier=key[2], currency=key[3])
    assert s == 200, (key, s, doc)
    return h.get("x-cache")


def miss_soon(p, key, within=1.0):
    """The X-Cache of `key` on p once it is no longer a HIT (or at `within`
    seconds): another instance learns of a purge from the announcement, a
    few milliseconds after the purging instance has answered."""
    t0 = time.monotonic()
    while True:
        x = xcache(p, key)
        if x != "HIT" or time.monotonic() - t0 > within:
            return x
        time.sleep(0.005)


def warm(keys):
    for p in (px1, px2):
        for k in keys:
            xcache(p, k)
            assert xcache(p, k) == "HIT", k


def assert_all(keys, want, proxies=None):
    for p in proxies or (px1, px2):
        for k in keys:
            got = xcache(p, k)
            assert got == want, (k, p.port, got, want)


def admin(p, body, token=TOKEN, headers=None, method="POST", path=ROUTE, port=None):
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = "Bearer " + token
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    s, rh, b = qcstack.http_request(port or p.admin_port, method, path, body=body, headers=h)
    try:
        doc = json.loads(b) if b else None
    except ValueError:
        doc = b
    return s, rh, doc


def assert_json_error(s, h, doc, status):
    assert s == status, (s, doc)
    assert h.get("content-type", "").startswith("application/json"), h
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"] \
        and isinstance(doc.get("message"), str), doc


# ------------------------------------------------------------------ tests


def test_without_the_right_token_401_and_nothing_changes():
    pid = take()
    keys = keys_of(pid)
    warm(keys)
    st.tax_reset()
    bad_auth = [
        None,                                   # no Authorization at all
        {"Authorization": "Bearer wrong-token-xyz"},
        {"Authorization": "Bearer " + TOKEN[:-1]},   # a prefix
        {"Authorization": "Bearer " + TOKEN + "x"},  # longer
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": TOKEN},                    # no scheme
        {"Authorization": "Basic " + TOKEN},
    ]
    for hdrs in bad_auth:
        for body in ({"product_id": pid}, {"all": True}):
            for p in (px1, px2):
                s, h, doc = admin(p, body, token=None, headers=hdrs)
                assert_json_error(s, h, doc, 401)
    assert_all(keys, "HIT")
    assert st.tax_stats() == 0


def test_product_invalidation_reaches_every_instance():
    pid, other = take(), take()
    keys, others = keys_of(pid), keys_of(other)
    warm(keys + others)
    s, h, doc = admin(px1, {"product_id": pid})
    assert s == 200, (s, doc)
    assert h.get("content-type", "").startswith("application/json"), h
    assert doc == {"invalidated": "product", "product_id": pid}, doc
    # Each entry of the product misses, on the instance that was told and
    # on the other one (each key asked first where it is not yet reloaded).
    assert miss_soon(px2, keys[0]) == "MISS"
    assert xcache(px1, keys[1]) == "MISS"
    assert xcache(px1, keys[2]) == "MISS"
    assert xcache(px2, keys[1]) == "HIT" and xcache(px2, keys[2]) == "HIT"
    assert xcache(px1, keys[0]) == "HIT"
    assert_all(others, "HIT")
    # The same through the other instance's admin listener; whitespace in
    # the JSON does not matter.
    s, h, doc = admin(px2, ' { "product_id" : %d } ' % pid)
    assert s == 200 and doc == {"invalidated": "product", "product_id": pid}, (s, doc)
    assert xcache(px2, keys[1]) == "MISS"
    assert miss_soon(px1, keys[0]) == "MISS"
    assert_all(others, "HIT")


def test_invalidate_all():
    keys = keys_of(take()) + keys_of(take())
    warm(keys)
    s, h, doc = admin(px2, {"all": True})
    assert s == 200 and doc == {"invalidated": "all"}, (s, doc)
    # Half the keys are asked first on one instance, half on the other.
    for i, k in enumerate(keys):
        p = (px1, px2)[i % 2]
        assert (xcache(p, k) if p is px2 else miss_soon(p, k)) == "MISS", k
    assert_all(keys, "HIT")


def test_one_purge_is_one_bump():
    """A purge is bumped in Redis once, by the worker that was asked; the
    workers that hear its announcement (2 instances x 2 workers) only drop
    their in-process copies. Bumping from each of them emptied the shared
    cache N x W more times, each a reload of every hot key in between."""
    a = start_proxy(admin_token=TOKEN, workers=2)
    b = start_proxy(admin_token=TOKEN, workers=2)
    try:
        pid = take()
        gp = "qc:v1:{%d}:gen" % pid
        g0, p0 = int(st.redis_cli("GET", "qc:v1:gen") or 0), int(st.redis_cli("GET", gp) or 0)
        assert admin(a, {"product_id": pid})[0] == 200
        assert admin(b, {"all": True})[0] == 200
        time.sleep(0.5)  # every announcement heard
        g1, p1 = int(st.redis_cli("GET", "qc:v1:gen") or 0), int(st.redis_cli("GET", gp) or 0)
        assert (g1 - g0, p1 - p0) == (1, 1), ("global, product bumps", g1 - g0, p1 - p0)
        assert miss_soon(a, keys_of(pid)[0]) == "MISS"  # and it still invalidates
    finally:
        a.stop_clean()
        b.stop_clean()


def test_purge_reaches_in_process_caches_without_redis():
    """--redis none caches in process only; a purge on one instance still
    reaches the other (and every worker) through PostgreSQL's notification."""
    a = start_proxy(admin_token=TOKEN, redis="none")
    b = start_proxy(admin_token=TOKEN, redis="none", workers=2)
    try:
        key = keys_of(take())[0]
        xcache(a, key)
        assert xcache(a, key) == "HIT"
        for _ in range(20):
            xcache(b, key)
        assert [xcache(b, key) for _ in range(10)] == ["HIT"] * 10
        s, _, doc = admin(a, {"product_id": key[0]})
        assert s == 200, (s, doc)
        assert xcache(a, key) == "BYPASS"
        # b's two workers each hold a copy; each drops it and reloads once.
        # (20 fresh connections reach both workers but with odds of 2^-19.)
        time.sleep(0.2)
        seen = [xcache(b, key) for _ in range(20)]
        assert seen.count("HIT") == 18 and seen.count("BYPASS") == 2, seen
        assert a.stop() == 0 and b.stop() == 0
    finally:
        for p in (a, b):
            if p.running():
                p.kill()


def test_bad_bodies_400_and_nothing_changes():
    pid = take()
    keys = keys_of(pid)
    warm(keys)
    bodies = [{}, {"product_id": -1}, "junk", {"product_id": "7"}, {"product_id": 0},
              {"product_id": 1.5}, {"product_id": None}, {"all": False}, {"all": "true"},
              {"all": 1}, {"product_id": pid, "all": True}, {"product_ids": pid}, [pid],
              "", "null", str(pid), '{"product_id": %d' % pid,
              {"product_id": 2 ** 63}, {"product_id": 1e300}]
    for body in bodies:
        for p in (px1, px2):
            s, h, doc = admin(p, body)
            assert_json_error(s, h, doc, 400)
    assert_all(keys, "HIT")


def test_methods_routes_and_public_listener():
    pid = take()
    keys = keys_of(pid)
    warm(keys)
    for method in ("GET", "PUT", "DELETE"):
        s, h, doc = admin(px1, {"product_id": pid} if method != "GET" else None,
                          method=method)
        assert_json_error(s, h, doc, 405)
    s, h, doc = admin(px1, {"product_id": pid}, path="/admin/nope")
    assert s == 404, (s, doc)
    # Never on the public listener, with or without the token.
    for token in (TOKEN, None):
        for method in ("POST", "GET"):
            for p in (px1, px2):
                s, h, doc = admin(p, {"all": True} if method == "POST" else None,
                                  token=token, method=method, port=p.port)
                assert s == 404, (method, token, s, doc)
    assert_all(keys, "HIT")


def run_refusal(args):
    """Run quotecache with `args`; it must refuse: non-zero exit, one line."""
    argv = [os.path.join(st.build, "quotecache"), "--listen",
            "127.0.0.1:%d" % qcstack.free_port(), "--redis", st.redis_addr,
            "--postgres", st.conninfo, "--tax-url", st.tax_url] + args
    r = subprocess.run(argv, capture_output=True, timeout=15, stdin=subprocess.DEVNULL)
    lines = r.stderr.decode(errors="replace").strip().splitlines()
    assert r.returncode != 0, (args, r.returncode, lines)
    assert len(lines) == 1 and lines[0].strip(), (args, lines)
    return lines[0]


def test_non_loopback_admin_without_token_refuses_to_start():
    # 0.0.0.0: it only checks the flags and exits; nothing is sent there.
    port = qcstack.free_port()
    line = run_refusal(["--admin-listen", "0.0.0.0:%d" % port])
    assert "admin" in line and "token" in line, line
    assert not qcstack.port_open(port)
    # Tokens shorter than 8 characters are refused too.
    line = run_refusal(["--admin-listen", "127.0.0.1:%d" % qcstack.free_port(),
                        "--admin-token", "short7c"])
    assert "token" in line, line


def test_proxies_exit_cleanly():
    px1.stop_clean()
    px2.stop_clean()


if __name__ == "__main__":
    qctest.main(globals())
