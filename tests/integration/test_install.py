#!/usr/bin/env python3
"""`meson install --destdir` lays out the binary, the triggers SQL, the
example configuration and the systemd unit; the unit passes
`systemd-analyze verify`; the installed binary accepts the example
configuration (--check-config)."""

import os
import re
import shutil
import socket
import subprocess
import tempfile

import qctest
from qctest import qcstack

BUILD = qcstack.build_dir()
dest = None
prefix = None


def setup_module():
    global dest, prefix
    if shutil.which("meson") is None:
        qctest.skip("meson not on PATH")
    dest = tempfile.mkdtemp(prefix="qc-install-")
    r = subprocess.run(["meson", "install", "-C", BUILD, "--no-rebuild", "--quiet",
                        "--destdir", dest], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    intro = subprocess.run(["meson", "introspect", "--buildoptions", BUILD],
                           capture_output=True, text=True, check=True).stdout
    prefix = re.search(r'"name": "prefix", "value": "([^"]+)"', intro).group(1)


def teardown_module():
    if dest:
        shutil.rmtree(dest, ignore_errors=True)


def installed(rel):
    return os.path.join(dest + prefix, rel)


def test_layout():
    for rel in ["bin/quotecache", "share/quotecache/triggers.sql",
                "share/quotecache/quotecache.conf.example",
                "share/doc/quotecache/operations.md",
                "share/doc/quotecache/prometheus.yml",
                "share/doc/quotecache/grafana-dashboard.json",
                "lib/systemd/system/quotecache.service"]:
        assert os.path.isfile(installed(rel)), rel
    assert os.access(installed("bin/quotecache"), os.X_OK)
    with open(installed("share/quotecache/triggers.sql")) as f, \
            open(os.path.join(qctest.SRC, "scripts/sql/triggers.sql")) as g:
        assert f.read() == g.read()


def test_unit_file():
    with open(installed("lib/systemd/system/quotecache.service")) as f:
        unit = f.read()
    bindir = os.path.join(prefix, "bin")
    for line in ["Type=exec",
                 "ExecStart=%s/quotecache --config /etc/quotecache/quotecache.conf" % bindir,
                 "ExecReload=/bin/kill -HUP $MAINPID", "LimitNOFILE=65536",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                 "DynamicUser=yes", "KillMode=mixed"]:
        assert re.search("^" + re.escape(line) + "$", unit, re.M), line
    assert not re.search(r"@[A-Z]+@", unit), "unsubstituted @VAR@"


def test_systemd_analyze_verify():
    if shutil.which("systemd-analyze") is None:
        qctest.skip("systemd-analyze missing (Debian package systemd)")
    # verify checks that ExecStart exists: point it at the installed copy.
    with open(installed("lib/systemd/system/quotecache.service")) as f:
        unit = f.read().replace(os.path.join(prefix, "bin/quotecache"),
                                installed("bin/quotecache"))
    d = tempfile.mkdtemp(prefix="qc-unit-")
    try:
        path = os.path.join(d, "quotecache.service")
        with open(path, "w") as f:
            f.write(unit)
        r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and r.stderr.strip() == "", (r.returncode, r.stderr)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_installed_binary_accepts_the_example_config():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTECACHE_")}
    r = subprocess.run([installed("bin/quotecache"), "--config",
                        installed("share/quotecache/quotecache.conf.example"),
                        "--listen", "127.0.0.1:%d" % port, "--check-config"],
                       capture_output=True, text=True, timeout=10, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("quotecache: configuration ok"), r.stdout


qctest.main(globals())
