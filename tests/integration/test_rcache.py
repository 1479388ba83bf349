#!/usr/bin/env python3
"""Runs tests/integration/rcache_driver.c (src/rcache.c against a real
redis-server: reads, fenced stores, locks, deadlines, a paused server, an
outage with a restart) with a private redis-server of its own.

The driver's path comes from the first argument (meson passes the
executable) or $RCACHE_DRIVER, else <QC_BUILD>/tests/rcache_driver."""

import os
import shlex
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qctest  # noqa: E402
from qctest import qcstack  # noqa: E402

def driver_path():
    args = [a for a in sys.argv[1:] if not a.startswith("test_")]
    if args:
        return os.path.abspath(args[0])
    return os.environ.get("RCACHE_DRIVER") or os.path.join(qcstack.build_dir(), "tests",
                                                           "rcache_driver")


# Read before qctest.main, which selects tests by the remaining arguments.
DRIVER = driver_path()
sys.argv[1:] = [a for a in sys.argv[1:] if a.startswith("test_")]


def setup_module():
    qctest.require_file(DRIVER, "rcache_driver (build it: ninja -C <build>)")


def redis_argv(port, d, daemon_pidfile=None):
    a = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", d, "--protected-mode", "no",
         "--enable-debug-command", "local"]
    if daemon_pidfile:
        a += ["--daemonize", "yes", "--pidfile", daemon_pidfile]
    else:
        a += ["--daemonize", "no"]
    return a


def is_redis(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"redis-server" in f.read()
    except OSError:
        return False


def test_rcache_driver():
    port = qcstack.free_port()
    with tempfile.TemporaryDirectory(prefix="qc-rcache-") as d:
        pidfile = os.path.join(d, "restarted.pid")
        log = open(os.path.join(d, "redis.log"), "wb")
        first = subprocess.Popen(redis_argv(port, d), stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, preexec_fn=qcstack._die_with_parent)
        # The driver SIGKILLs the server and runs this to bring one back.
        restart = " ".join(shlex.quote(a) for a in redis_argv(port, d, pidfile))
        restart += " --logfile " + shlex.quote(os.path.join(d, "restarted.log"))
        try:
            qcstack.wait_until(lambda: qcstack.port_open(port), 10, "redis-server", first)
            r = subprocess.run([DRIVER, str(port), restart], capture_output=True, timeout=100)
            out = (r.stdout + r.stderr).decode(errors="replace")
            assert r.returncode == 0, "rcache_driver exited %d:\n%s" % (r.returncode, out)
            assert "all checks passed" in out, out
            assert "outage checks skipped" not in out, out
            for line in out.splitlines():
                if " after " in line and line.startswith("rcache_driver: "):
                    print(line, flush=True)  # measured times
            for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
                assert bad not in out, out
        finally:
            qcstack.kill_pid(first.pid, signal.SIGKILL, 5, first)
            try:
                with open(pidfile) as f:
                    pid = int(f.read().strip())
                if is_redis(pid):
                    qcstack.kill_pid(pid, signal.SIGKILL, 5)
            except (OSError, ValueError):
                pass
            log.close()


if __name__ == "__main__":
    qctest.main(globals())
