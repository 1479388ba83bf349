"""qctest: the tiny runner of the integration tests.

A test file defines test_* functions (and optionally setup_module() /
teardown_module()), then ends with `qctest.main(globals())`. Tests run in
definition order; each prints `ok name (1.2s)` or `FAIL name` with its
traceback (and the stderr of quotecache processes it started). Exit status:
1 if any failed, 77 (meson's "skipped") if every test skipped, else 0.
Arguments on the command line select tests by name.

Call skip("why") inside a test (or setup_module) to skip it.
"""

import json
import os
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.environ.get("QC_SRC") or os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SRC, "scripts"))

import qcstack  # noqa: E402


class Skip(Exception):
    pass


def skip(reason):
    raise Skip(reason)


def require_file(path, what=None):
    """Skip unless `path` exists (e.g. a binary not built yet)."""
    if not os.path.exists(path):
        skip("%s missing: %s" % (what or "file", path))


FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def faketime_env(dir):
    """The environment of a proxy whose wall clock alone (not its
    monotonic one) follows the offset written to the returned file
    ("+0" now; e.g. "-3600" steps it back an hour). Skips without
    libfaketime (Debian package faketime). Returns (file, env)."""
    require_file(FAKETIME, "libfaketime")
    offset_file = os.path.join(dir, "faketime")
    with open(offset_file, "w") as f:
        f.write("+0\n")
    return offset_file, {
        "LD_PRELOAD": FAKETIME, "FAKETIME_TIMESTAMP_FILE": offset_file,
        "FAKETIME_NO_CACHE": "1", "DONT_FAKE_MONOTONIC": "1",
        # an ASan build refuses a preload ahead of its runtime otherwise
        "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}


class UpstreamApp:
    """upstream_app.py, the application behind the pass-through in the
    proxy tests, on a free port (kept across stop/start): its endpoints
    count their calls by path (/stats)."""

    def __init__(self):
        self.port = qcstack.free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "upstream_app.py"), str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout.readline().strip() == b"ready"

    def stop(self):
        if self.proc is not None:
            qcstack.kill_pid(self.proc.pid, proc=self.proc)
            self.proc = None

    def calls(self, path=None):
        """Calls of path so far (0 for none), or every path's (a dict)."""
        s, _, b = qcstack.http_get(self.port, "/stats")
        assert s == 200
        calls = json.loads(b)["calls"]
        return calls if path is None else calls.get(path, 0)


def load_retries(proxies):
    """Loads repeated because a write overtook them (the proxy's
    quotecache_load_retries_total), summed over proxies."""
    total = 0
    for p in proxies:
        _, _, body = p.get("/metrics")
        line = [ln for ln in body.decode().splitlines()
                if ln.startswith("quotecache_load_retries_total ")]
        assert line, "quotecache_load_retries_total missing"
        total += int(float(line[0].split()[1]))
    return total


def main(ns):
    only = set(sys.argv[1:])
    tests = [(n, f) for n, f in ns.items()
             if n.startswith("test_") and callable(f) and (not only or n in only)]
    unknown = only - {n for n, _ in tests}
    if unknown:  # a typo must not pass as "0 passed"
        print("no such test: %s" % ", ".join(sorted(unknown)), flush=True)
        sys.exit(2)
    failed = skipped = 0
    try:
        if "setup_module" in ns:
            ns["setup_module"]()
    except Skip as e:
        print("skip all: %s" % e, flush=True)
        sys.exit(77)
    try:
        for name, fn in tests:
            qcstack.test_started()
            t0 = time.monotonic()
            try:
                fn()
            except Skip as e:
                skipped += 1
                print("skip %s: %s" % (name, e), flush=True)
                continue
            except BaseException as e:
                failed += 1
                print("FAIL %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
                traceback.print_exc(file=sys.stdout)
                qcstack.on_test_failure()
                sys.stdout.flush()
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise  # interrupted (e.g. meson's timeout): stop, clean up
                continue
            print("ok %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
    finally:
        if "teardown_module" in ns:
            ns["teardown_module"]()
    print("%d passed, %d failed, %d skipped"
          % (len(tests) - failed - skipped, failed, skipped), flush=True)
    if failed:
        sys.exit(1)
    sys.exit(77 if tests and skipped == len(tests) else 0)
