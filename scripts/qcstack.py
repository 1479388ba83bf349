"""qcstack: a private legacy backend (redis-server, PostgreSQL 15, the tax
simulator) on free loopback ports in a temp dir, plus helpers to run the
quotecache binary against it and talk HTTP to it. Python 3 stdlib only.

Used by the integration tests (sys.path.insert(0, <repo>/scripts)) and by the
`scripts/stack` CLI. Every process it starts is tracked by PID and only those
are ever signalled; stop() (also run by `with`, and atexit) kills them and
removes the temp dir.

Environment:
  QC_BUILD   meson build dir holding quotecache and quotecache-taxsim
             (default <repo>/build)
  QC_SRC     source root (default: the parent of this file's directory)
  QC_KEEP=1  keep the temp dir (logs, data) after stop()
  QC_REDIS=cluster  every Stack(redis=True) starts a 3+3 Redis Cluster
             (Cluster below) instead of one redis-server, and Proxy passes
             --redis-cluster <seeds> instead of --redis (default: single)

SQL: after schema.sql and the seed, every other scripts/sql/*.sql file is
applied in name order (for instance the change-notification triggers), then
pg_stat_statements is reset so tests count only their own statements.
"""

import atexit
import http.client
import json
import os
import pwd
import resource
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

SRC = os.path.abspath(os.environ.get("QC_SRC") or
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PG_BIN = "/usr/lib/postgresql/15/bin"
IS_ROOT = os.geteuid() == 0


def build_dir():
    return os.path.abspath(os.environ.get("QC_BUILD") or os.path.join(SRC, "build"))


def _raise_nofile():
    """Many concurrent sockets in tests and children: lift the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


_raise_nofile()

try:
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None


def _die_with_parent():
    """preexec_fn: the child gets SIGKILL if the test process dies (even by
    SIGKILL), so a crashed test leaves no servers behind."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _exit_on_sigterm():
    """A SIGTERM (meson's timeout) runs finally blocks and atexit cleanup."""
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def free_port():
    """A TCP port free on 127.0.0.1 right now (bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port, host="127.0.0.1", timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pid(pid, sig=signal.SIGTERM, timeout=10.0, proc=None):
    """Signal one PID we started, wait up to timeout, then SIGKILL.
    Returns the exit status when `proc` (its Popen) is given, else None."""
    def gone():
        if proc is not None:
            return proc.poll() is not None
        return not pid_alive(pid)
    if gone():
        return proc.returncode if proc is not None else None
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone():
            return proc.returncode if proc is not None else None
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        return proc.wait()
    for _ in range(250):
        if not pid_alive(pid):
            break
        time.sleep(0.02)
    return None


def wait_until(pred, timeout, what, proc=None, log=None):
    """Poll pred() until true; fail early if proc died. Raises RuntimeError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return
        except (OSError, http.client.HTTPException):
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("%s exited with %s before it was ready%s"
                               % (what, proc.returncode, _tail(log)))
        if time.monotonic() > deadline:
            raise RuntimeError("%s not ready after %.0fs%s" % (what, timeout, _tail(log)))
        time.sleep(0.02)


def _tail(path, n=4000):
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        data = f.read()[-n:]
    return "\n--- %s ---\n%s" % (path, data.decode(errors="replace"))


# ---------------------------------------------------------------- HTTP


def http_request(port, method, path, body=None, headers=None, timeout=5, host="127.0.0.1"):
    """One request on a fresh connection.
    Returns (status, {lowercase header: value}, body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = dict(headers or {})
            headers.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def http_get(port, path, headers=None, timeout=5, host="127.0.0.1"):
    return http_request(port, "GET", path, headers=headers, timeout=timeout, host=host)


def http_post(port, path, body=None, headers=None, timeout=5, host="127.0.0.1"):
    return http_request(port, "POST", path, body=body, headers=headers, timeout=timeout,
                        host=host)


def get_json(port, path, headers=None, timeout=5):
    """GET and decode a JSON body: (status, headers, object)."""
    st, h, b = http_get(port, path, headers=headers, timeout=timeout)
    return st, h, json.loads(b) if b else None


def raw_request(port, data, timeout=5, host="127.0.0.1", shut_write=False):
    """Send raw bytes, return every byte received until the server closes or
    `timeout` seconds pass without data (for hostile/malformed input tests).
    shut_write: half-close after sending."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        out = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out.append(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(out)


def send_and_close(port, path, n=1, host="127.0.0.1", timeout=10.0):
    """Open a connection, write one GET for `path`, close at once (a client
    that gives up), `n` times in a row. Returns how many were sent before
    `timeout` seconds passed."""
    req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (path, host, port)).encode()
    deadline = time.monotonic() + timeout
    sent = 0
    while sent < n and time.monotonic() < deadline:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(req)
        sent += 1
    return sent


def parse_response(raw):
    """Parse raw HTTP/1.x response bytes -> (status, headers, body); status
    None when nothing (or garbage) came back."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return None, {}, raw
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return None, {}, raw
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, buf = b"", rest
        while buf:
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            body, buf = body + buf[:size], buf[size + 2:]
        return status, headers, body
    if "content-length" in headers:
        return status, headers, rest[:int(headers["content-length"])]
    return status, headers, rest


def concurrent_gets(port, paths, n_threads=None, headers=None, timeout=10, host="127.0.0.1"):
    """Fire one GET per path, all at once (every connection is opened and
    every request written before any response is read), from one
    non-blocking loop. Returns [(status, headers, body)] in the order of
    `paths`; status None for a connection that failed or was closed without
    an answer. n_threads is accepted for compatibility and ignored."""
    del n_threads
    extra = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
    if not any(k.lower() == "host" for k in (headers or {})):  # a given Host replaces ours
        extra = "Host: %s:%d\r\n" % (host, port) + extra
    sel = selectors.DefaultSelector()
    socks, bufs, results = [], [], [None] * len(paths)
    try:
        for i, path in enumerate(paths):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((host, port))
            req = ("GET %s HTTP/1.1\r\n%sConnection: close\r\n\r\n" % (path, extra)).encode()
            socks.append(s)
            bufs.append(bytearray())
            sel.register(s, selectors.EVENT_WRITE, [i, req])
        pending = len(paths)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for key, ev in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                s, (i, req) = key.fileobj, key.data
                try:
                    if ev & selectors.EVENT_WRITE:
                        n = s.send(req)
                        key.data[1] = req = req[n:]
                        if not req:
                            sel.modify(s, selectors.EVENT_READ, key.data)
                        continue
                    chunk = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    bufs[i] += chunk
                    continue
                sel.unregister(s)
                pending -= 1
                results[i] = parse_response(bytes(bufs[i]))
        for i, r in enumerate(results):
            if r is None:
                results[i] = parse_response(bytes(bufs[i])) if bufs[i] else (None, {}, b"")
        return results
    finally:
        sel.close()
        for s in socks:
            s.close()


def stop_process(pid):
    """SIGSTOP one PID we started (a hung server); resume with cont_process."""
    os.kill(pid, signal.SIGSTOP)


def cont_process(pid):
    os.kill(pid, signal.SIGCONT)


# ---------------------------------------------------------------- Redis Cluster


def resp(port, *args, host="127.0.0.1", timeout=5.0):
    """One command to one Redis node over a fresh connection (RESP2), so a
    killed node or a redirection is seen as it is: returns the decoded reply
    (str, int, list, None); an error reply is returned as RespError, not
    raised, so a caller can look at MOVED/ASK/CLUSTERDOWN."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(_resp_encode(args))
        return _RespReader(s).read()


class RespError(str):
    """An error reply ("-MOVED 1234 127.0.0.1:7001", ...)."""


def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _RespReader:
    def __init__(self, sock):
        self.s, self.buf = sock, b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError("bad RESP line %r" % line)


class Cluster:
    """A private Redis Cluster on loopback: `masters` masters with
    `replicas` replicas each (default 3 + 3), every node a redis-server
    --cluster-enabled yes on a free port with its own dir, joined with
    `redis-cli --cluster create`. A short --cluster-node-timeout (1500 ms)
    makes a killed master's replica take over within seconds.

        with qcstack.Cluster(dir) as cl:
            Proxy(st, redis_cluster=cl.seeds)
            cl.master_of("qc:v1:{42}:gen")       # the node serving that key
            took = cl.kill_master(node)           # SIGKILL, wait for promotion
            cl.migrate_slot(slot, dst=other)      # SETSLOT + MIGRATE, live

    Nodes are dicts {port, dir, proc, log}; only their PIDs are signalled.
    The map calls (CLUSTER NODES/SLOTS) go through `resp`, a tiny RESP
    client on a fresh socket per command (no state to go stale across a
    failover)."""

    def __init__(self, dir=None, masters=3, replicas=1, node_timeout_ms=1500,
                 detached=False, start=True):
        self.own_dir = dir is None
        self.dir = dir or tempfile.mkdtemp(prefix="qccluster-", dir="/tmp")
        os.makedirs(self.dir, exist_ok=True)
        self.n_masters, self.n_replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self.detached = detached
        self.nodes = []
        self.seed_ports = []
        self._stopped = False
        if start:
            self.start()

    # -- lifecycle

    def start(self):
        if not self.detached:
            atexit.register(self.stop)
            _exit_on_sigterm()
        try:
            for i in range(self.n_masters * (1 + self.n_replicas)):
                port = free_port()
                d = os.path.join(self.dir, "node-%d" % port)
                os.makedirs(d)
                # Its own bus port: port + 10000 (the default) may be taken
                # or out of range for a port from the ephemeral range.
                node = {"port": port, "bus": free_port(), "dir": d, "proc": None,
                        "log": os.path.join(d, "redis.log")}
                self.nodes.append(node)
                self._spawn(node)
            for node in self.nodes:
                wait_until(lambda: resp(node["port"], "PING") == "PONG", 10,
                           "cluster node %d" % node["port"], node["proc"], node["log"])
            r = subprocess.run(
                ["redis-cli", "--cluster", "create"]
                + ["127.0.0.1:%d" % n["port"] for n in self.nodes]
                + ["--cluster-replicas", str(self.n_replicas), "--cluster-yes"],
                capture_output=True, timeout=60)
            if r.returncode != 0:
                raise RuntimeError("redis-cli --cluster create: %s%s"
                                   % (r.stdout.decode(errors="replace")[-2000:],
                                      r.stderr.decode(errors="replace")))
            self.wait_ok(30)
            self.seed_ports = [m["port"] for m in self.masters()]
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, node):
        kw = {} if self.detached else {"preexec_fn": _die_with_parent}
        with open(node["log"], "ab") as out:
            node["proc"] = subprocess.Popen(
                ["redis-server", "--port", str(node["port"]), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-port", str(node["bus"]),
                 "--cluster-node-timeout", str(self.node_timeout_ms),
                 # A replica may always take over (its data is as fresh as
                 # the test made it; the default refuses after a long gap).
                 "--cluster-replica-validity-factor", "0",
                 "--save", "", "--appendonly", "no", "--daemonize", "no",
                 "--dir", node["dir"], "--protected-mode", "no", "--maxclients", "10000"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=node["dir"], start_new_session=self.detached, **kw)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        """Stop every node this cluster started (SIGTERM, then SIGKILL);
        remove its dir if it made it."""
        if self._stopped:
            return
        self._stopped = True
        for node in self.nodes:
            self.stop_node(node)
        if self.own_dir and os.environ.get("QC_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    def pids(self):
        return {"redis_%d" % n["port"]: n["proc"].pid for n in self.nodes if self.alive(n)}

    @staticmethod
    def alive(node):
        return node["proc"] is not None and node["proc"].poll() is None

    def stop_node(self, node, kill=False):
        p, node["proc"] = node["proc"], None
        if p is not None:
            kill_pid(p.pid, signal.SIGKILL if kill else signal.SIGTERM, timeout=15, proc=p)

    def restart_node(self, node, timeout=30):
        """Start a stopped node again on its port and dir (its nodes.conf
        keeps its identity; a former master comes back as a replica of the
        node that took over) and wait until the cluster agrees again."""
        assert not self.alive(node), node["port"]
        self._spawn(node)
        wait_until(lambda: resp(node["port"], "PING") == "PONG", 10,
                   "cluster node %d" % node["port"], node["proc"], node["log"])
        self.wait_ok(timeout)

    # -- addresses and the map

    @property
    def seeds(self):
        """HOST:PORT,... of the masters the cluster was created with (a
        killed one stays listed: a client must get past a dead seed)."""
        return ",".join("127.0.0.1:%d" % p for p in self.seed_ports)

    def node(self, port):
        return next(n for n in self.nodes if n["port"] == port)

    def live(self):
        return [n for n in self.nodes if self.alive(n)]

    def cmd(self, node, *args):
        return resp(node["port"], *args)

    def any_node(self):
        return self.live()[0]

    def cluster_nodes(self, node=None):
        """CLUSTER NODES as seen by `node`: {port: {id, flags, master, slots}}."""
        out = {}
        for line in self.cmd(node or self.any_node(), "CLUSTER", "NODES").splitlines():
            f = line.split()
            port = int(f[1].split("@")[0].rsplit(":", 1)[1])
            out[port] = {"id": f[0], "flags": set(f[2].split(",")),
                         "master": None if f[3] == "-" else f[3],
                         "link": f[7], "slots": f[8:]}
        return out

    def node_id(self, node):
        return self.cmd(node, "CLUSTER", "MYID")

    def slot_map(self, node=None):
        """CLUSTER SLOTS as seen by `node`: sorted [(start, end, master port)]."""
        rows = self.cmd(node or self.any_node(), "CLUSTER", "SLOTS")
        if isinstance(rows, RespError):
            raise RuntimeError("CLUSTER SLOTS: %s" % rows)
        return sorted((r[0], r[1], r[2][1]) for r in rows)

    def masters(self):
        """The live nodes that own slots, as every node sees them now."""
        ports = sorted({m for _, _, m in self.slot_map()})
        return [self.node(p) for p in ports if self.alive(self.node(p))]

    def replicas_of(self, master):
        mid = self.node_id(master)
        view = self.cluster_nodes()
        return [self.node(p) for p, v in view.items() if v["master"] == mid]

    def keyslot(self, key):
        return self.cmd(self.any_node(), "CLUSTER", "KEYSLOT", key)

    def master_of_slot(self, slot):
        for a, b, port in self.slot_map():
            if a <= slot <= b:
                return self.node(port)
        raise RuntimeError("slot %d not served" % slot)

    def master_of(self, key):
        """The master that serves `key` (by CLUSTER KEYSLOT)."""
        return self.master_of_slot(self.keyslot(key))

    def state_ok(self, node):
        info = self.cmd(node, "CLUSTER", "INFO")
        return isinstance(info, str) and "cluster_state:ok" in info

    def agreed(self):
        """Every live node says cluster_state:ok and reports the same slot
        map covering all 16384 slots, owned by live masters only."""
        maps, live = [], {n["port"] for n in self.live()}
        for n in self.live():
            if not self.state_ok(n):
                return False
            view = self.cluster_nodes(n)
            # A restarted node counts once everyone has it back (no fail flag).
            if any(view.get(p) is None or view[p]["flags"] & {"fail", "fail?"} for p in live):
                return False
            # Every live node has its role: a master with slots, or a
            # replica whose replication link is up (so a failover loses
            # nothing the test wrote).
            for p in live:
                v = view[p]
                if "slave" in v["flags"]:
                    if v["master"] is None:
                        return False
                elif not v["slots"]:
                    return False
            if "slave" in view[n["port"]]["flags"]:
                role = self.cmd(n, "ROLE")
                if not (isinstance(role, list) and role[0] == "slave" and role[3] == "connected"):
                    return False
            maps.append(self.slot_map(n))
        if any(m != maps[0] for m in maps):
            return False
        covered = sum(b - a + 1 for a, b, _ in maps[0])
        return covered == 16384 and all(self.alive(self.node(p)) for _, _, p in maps[0])

    def wait_ok(self, timeout=30):
        def ok():
            try:
                return self.agreed()
            except (OSError, RuntimeError, ValueError):
                return False
        wait_until(ok, timeout, "redis cluster agreement (state ok, one slot map)")

    # -- faults and resharding

    def kill_master(self, master, timeout=30):
        """SIGKILL `master` and wait until one of its replicas owns its
        slots and every live node agrees. Returns (new master node, seconds
        from the kill to agreement)."""
        replicas = self.replicas_of(master)
        assert replicas, "master %d has no replica" % master["port"]
        slots = [(a, b) for a, b, p in self.slot_map() if p == master["port"]]
        t0 = time.monotonic()
        self.stop_node(master, kill=True)

        def promoted():
            try:
                if not self.agreed():
                    return False
                owners = {p for a, b, p in self.slot_map() if (a, b) in slots}
                return len(owners) == 1 and owners <= {r["port"] for r in replicas}
            except (OSError, RuntimeError, ValueError):
                return False
        wait_until(promoted, timeout, "promotion of a replica of %d" % master["port"])
        took = time.monotonic() - t0
        new = self.master_of_slot(slots[0][0])
        return new, took

    def keys(self, pattern="*"):
        """{master port: [keys]} matching `pattern` on every master (SCAN)."""
        out = {}
        for m in self.masters():
            cursor, got = "0", []
            while True:
                cursor, batch = self.cmd(m, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                got += batch
                if cursor == "0":
                    break
            out[m["port"]] = got
        return out

    def migrate_slot(self, slot, dst, batch=10, pause=0.0, hold=0.0):
        """Move `slot` from its master to `dst` live, the way redis-cli
        --cluster reshard does: SETSLOT IMPORTING on dst, MIGRATING on the
        source, MIGRATE its keys in batches of `batch` (sleeping `pause`
        between batches), then, `hold` seconds later (ASK redirections are
        answered meanwhile), SETSLOT NODE on dst, the source, and every other
        master. Returns the number of keys moved."""
        src = self.master_of_slot(slot)
        assert src is not dst, "slot %d already on %d" % (slot, dst["port"])
        src_id, dst_id = self.node_id(src), self.node_id(dst)
        self._ok(self.cmd(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id))
        self._ok(self.cmd(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id))
        moved = 0
        while True:
            keys = self.cmd(src, "CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            r = self.cmd(src, "MIGRATE", "127.0.0.1", dst["port"], "", 0, 5000,
                         "REPLACE", "KEYS", *keys)
            if isinstance(r, RespError):
                raise RuntimeError("MIGRATE slot %d: %s" % (slot, r))
            moved += len(keys)
            if pause:
                time.sleep(pause)
        if hold:
            time.sleep(hold)
        self._ok(self.cmd(dst, "CLUSTER", "SETSLOT", slot, "NODE", dst_id))
        self._ok(self.cmd(src, "CLUSTER", "SETSLOT", slot, "NODE", dst_id))
        for m in self.masters():
            if m is not src and m is not dst:
                self._ok(self.cmd(m, "CLUSTER", "SETSLOT", slot, "NODE", dst_id))
        self.wait_ok(30)
        return moved

    @staticmethod
    def _ok(r):
        if isinstance(r, RespError) or r != "OK":
            raise RuntimeError("redis: %s" % r)
        return r

    # -- redis-cli over the whole cluster (what Stack.redis_cli does on one node)

    def cli(self, *args):
        """redis-cli semantics for tests written against one node: keyed
        commands follow redirections (-c); FLUSHALL/FLUSHDB/CONFIG/CLIENT/
        SCRIPT go to every master; INFO sums the cmdstat_* counters over the
        masters; KEYS and --scan concatenate every master's keys."""
        a = [str(x) for x in args]
        head = a[0].upper() if a else ""
        if head in ("KEYS", "--SCAN"):
            return "\n".join(x for m in self.masters() for x in
                             self._cli(m, *a).splitlines() if x)
        if head == "INFO":
            return self._summed_info(a)
        if head in ("FLUSHALL", "FLUSHDB", "CONFIG", "CLIENT", "SCRIPT", "DBSIZE"):
            outs = [self._cli(m, *a) for m in self.masters()]
            if all(o.lstrip("-").isdigit() for o in outs):
                return str(sum(int(o) for o in outs))
            return outs[0]
        return self._cli(self.any_master(), "-c", *a)

    def any_master(self):
        return self.masters()[0]

    @staticmethod
    def _cli(node, *args):
        r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(node["port"])]
                           + list(args), capture_output=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError("redis-cli %s: %s" % (args, r.stderr.decode(errors="replace")))
        return r.stdout.decode(errors="replace").rstrip("\n")

    def _summed_info(self, a):
        sums, order, other = {}, [], []
        for m in self.masters():
            for line in self._cli(m, *a).splitlines():
                name, sep, fields = line.partition(":")
                if not (sep and name.startswith("cmdstat_")):
                    other.append(line)
                    continue
                if name not in sums:
                    sums[name] = {}
                    order.append(name)
                for kv in fields.split(","):
                    k, _, v = kv.partition("=")
                    try:
                        sums[name][k] = sums[name].get(k, 0) + float(v)
                    except ValueError:
                        pass
        lines = ["%s:%s" % (n, ",".join("%s=%s" % (k, int(v) if v == int(v) else v)
                                        for k, v in sums[n].items())) for n in order]
        return "\n".join(lines + other)


# ---------------------------------------------------------------- the stack


class Stack:
    """A private backend. Typical use:

        with qcstack.Stack(products=2000) as st:
            st.psql("UPDATE ...")
            with qcstack.Proxy(st) as px:
                status, headers, body = qcstack.http_get(px.port, "/quote/1?region=US&tier=gold")

    Arguments: products/seed for the data set; tax_delay_ms, tax_jitter_ms,
    tax_fail_rate, tax_drop_rate, tax_seed for the simulator; redis, postgres,
    tax: whether to start each; pg_stat_statements; detached: children in new
    sessions and nothing cleaned up at exit (used by `scripts/stack start`).

    redis may also be "single" or "cluster"; True means $QC_REDIS (default
    single). In cluster mode self.cluster is a Cluster (3 masters + 3
    replicas), redis_port is None, redis_cli() spans the cluster and
    stop_redis()/start_redis() stop and restart every node.
    """

    def __init__(self, products=10000, seed=1, tax_delay_ms=0, tax_jitter_ms=0,
                 tax_fail_rate=0.0, tax_drop_rate=0.0, tax_seed=1, redis=True,
                 postgres=True, tax=True, pg_stat_statements=True, build=None,
                 detached=False, start=True):
        self.products, self.seed = products, seed
        self.tax_args = dict(delay_ms=tax_delay_ms, jitter_ms=tax_jitter_ms,
                             fail_rate=tax_fail_rate, drop_rate=tax_drop_rate, seed=tax_seed)
        if redis is True:
            redis = os.environ.get("QC_REDIS") or "single"
        if redis not in (False, "single", "cluster"):
            raise ValueError("redis=%r: True, False, 'single' or 'cluster'" % (redis,))
        self.redis_mode = redis or None
        self.cluster = None
        self.want = dict(redis=bool(redis), postgres=postgres, tax=tax)
        self.pg_stat_statements = pg_stat_statements
        self.build = os.path.abspath(build or build_dir())
        self.detached = detached
        self.dir = None
        self.procs = {}      # name -> Popen (redis, postgres, tax)
        self.proxies = []
        self.redis_port = self.pg_port = self.tax_port = None
        self._stopped = False
        if start:
            self.start()

    # -- addresses

    @property
    def redis_addr(self):
        if self.redis_port is None and self.cluster is not None:
            raise RuntimeError("a cluster stack has no single Redis address: "
                               "use st.cluster.seeds (this test is single-node only)")
        return "127.0.0.1:%d" % self.redis_port

    @property
    def conninfo(self):
        return "host=127.0.0.1 port=%d dbname=pricing user=postgres" % self.pg_port

    @property
    def tax_url(self):
        return "http://127.0.0.1:%d" % self.tax_port

    def env(self):
        """QUOTECACHE_* variables pointing the proxy at this stack."""
        e = {}
        if self.redis_port:
            e["QUOTECACHE_REDIS"] = self.redis_addr
        if self.cluster is not None:
            e["QUOTECACHE_REDIS_CLUSTER"] = self.cluster.seeds
        if self.pg_port:
            e["QUOTECACHE_POSTGRES"] = self.conninfo
        if self.tax_port:
            e["QUOTECACHE_TAX_URL"] = self.tax_url
        return e

    def pids(self):
        out = {name: p.pid for name, p in self.procs.items() if p.poll() is None}
        if self.cluster is not None:
            out.update(self.cluster.pids())
        return out

    # -- lifecycle

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="qcstack-", dir="/tmp")
        os.chmod(self.dir, 0o755)  # postgres must traverse it when we are root
        if not self.detached:
            atexit.register(self.stop)
            _exit_on_sigterm()
        try:
            if self.redis_mode == "cluster":
                self.cluster = Cluster(os.path.join(self.dir, "cluster"),
                                       detached=self.detached)
                sys.stderr.write("qcstack: Redis Cluster, 3 masters + 3 replicas, seeds %s\n"
                                 % self.cluster.seeds)
            elif self.want["redis"]:
                self.redis_port = free_port()
                self.start_redis()
            if self.want["tax"]:
                self.tax_port = free_port()
                self.start_tax()
            if self.want["postgres"]:
                self._init_pg()
                self.pg_port = free_port()
                self.start_pg()
                self._load_pg()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        """Stop every proxy and server this stack started; remove the dir."""
        if self._stopped:
            return
        self._stopped = True
        for px in list(self.proxies):
            px.kill()
        for name in ("tax", "redis", "postgres"):
            p = self.procs.pop(name, None)
            if p is not None:
                self._stop_proc(name, p)
        if self.cluster is not None:
            self.cluster.stop()
        if self.dir and os.environ.get("QC_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(self, name, argv, user=None):
        log = os.path.join(self.dir, name + ".log")
        kw = {}
        if user is not None:
            kw = dict(user=user, group=pwd.getpwnam(user).pw_gid, extra_groups=[])
        if not self.detached:
            kw["preexec_fn"] = _die_with_parent
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=self.dir,
                                 start_new_session=self.detached, **kw)
        self.procs[name] = p
        return p, log

    @staticmethod
    def _stop_proc(name, p, sig=None):
        # postgres: SIGINT is "fast" shutdown (SIGTERM would wait for clients).
        if sig is None:
            sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
        kill_pid(p.pid, sig, timeout=15, proc=p)

    # -- redis

    def start_redis(self):
        """(Re)start redis-server on self.redis_port (in cluster mode: every
        stopped node, then wait for the cluster to agree)."""
        if self.cluster is not None:
            for node in self.cluster.nodes:
                if not self.cluster.alive(node):
                    self.cluster._spawn(node)
            self.cluster.wait_ok(60)
            return
        rdir = os.path.join(self.dir, "redis")
        os.makedirs(rdir, exist_ok=True)
        p, log = self._spawn("redis", [
            "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", rdir,
            "--protected-mode", "no", "--maxclients", "10000"])
        wait_until(lambda: self._redis_ping(), 10, "redis-server", p, log)

    def stop_redis(self, kill=False):
        if self.cluster is not None:
            for node in self.cluster.nodes:
                self.cluster.stop_node(node, kill=kill)
            return
        p = self.procs.pop("redis", None)
        if p is not None:
            self._stop_proc("redis", p, signal.SIGKILL if kill else None)

    def _redis_ping(self):
        with socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def redis_cli(self, *args):
        """Run redis-cli against our redis; returns stdout without the final newline.
        In cluster mode see Cluster.cli (keyed commands follow redirections,
        INFO sums over the masters, KEYS/--scan concatenate)."""
        if self.cluster is not None:
            return self.cluster.cli(*args)
        r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis_port)]
                           + [str(a) for a in args], capture_output=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError("redis-cli %s: %s" % (args, r.stderr.decode(errors="replace")))
        return r.stdout.decode(errors="replace").rstrip("\n")

    # -- postgres

    def _pg_user(self):
        return "postgres" if IS_ROOT else None

    def _init_pg(self):
        self.pg_data = os.path.join(self.dir, "pg")
        self.pg_sock = os.path.join(self.dir, "pgsock")
        os.makedirs(self.pg_sock)
        if IS_ROOT:
            pw = pwd.getpwnam("postgres")
            os.chown(self.pg_sock, pw.pw_uid, pw.pw_gid)
            # initdb creates pg/ itself; it needs to write into self.dir.
            os.makedirs(self.pg_data, mode=0o700)
            os.chown(self.pg_data, pw.pw_uid, pw.pw_gid)
        log = os.path.join(self.dir, "initdb.log")
        kw = {}
        if IS_ROOT:
            pw = pwd.getpwnam("postgres")
            kw = dict(user="postgres", group=pw.pw_gid, extra_groups=[])
        with open(log, "wb") as out:
            r = subprocess.run([PG_BIN + "/initdb", "-D", self.pg_data, "-A", "trust",
                                "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"],
                               stdout=out, stderr=subprocess.STDOUT, cwd=self.dir, **kw)
        if r.returncode != 0:
            raise RuntimeError("initdb failed" + _tail(log))

    def start_pg(self):
        """(Re)start PostgreSQL on self.pg_port with the same data dir."""
        argv = [PG_BIN + "/postgres", "-D", self.pg_data, "-p", str(self.pg_port),
                "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + self.pg_sock,
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=300",
                "-c", "log_min_messages=warning", "-c", "logging_collector=off"]
        if self.pg_stat_statements:
            argv += ["-c", "shared_preload_libraries=pg_stat_statements",
                     "-c", "pg_stat_statements.track=all"]
        p, log = self._spawn("postgres", argv, user=self._pg_user())
        wait_until(self._pg_ready, 30, "postgres", p, log)

    def stop_pg(self, mode="fast"):
        """Stop PostgreSQL: mode 'fast' (SIGINT), 'smart' (SIGTERM),
        'immediate' (SIGQUIT, crash-like) or 'kill' (SIGKILL)."""
        sig = {"fast": signal.SIGINT, "smart": signal.SIGTERM,
               "immediate": signal.SIGQUIT, "kill": signal.SIGKILL}[mode]
        p = self.procs.pop("postgres", None)
        if p is not None:
            self._stop_proc("postgres", p, sig)
            if mode == "kill":
                # Orphaned backends notice postmaster death; wait for the port.
                wait_until(lambda: not port_open(self.pg_port), 10, "postgres backends exit")

    def _pg_ready(self):
        r = subprocess.run([PG_BIN + "/pg_isready", "-q", "-h", "127.0.0.1",
                            "-p", str(self.pg_port), "-d", "postgres", "-U", "postgres"])
        return r.returncode == 0

    def psql(self, sql, db="pricing", timeout=120):
        """Run SQL through psql (-X -A -t, ON_ERROR_STOP). Returns stdout;
        raises RuntimeError with stderr on failure."""
        r = subprocess.run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                            "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres",
                            "-d", db], input=sql.encode(), capture_output=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("psql failed (%d): %s" % (r.returncode,
                                                         r.stderr.decode(errors="replace")))
        return r.stdout.decode()

    def psql_file(self, path, db="pricing"):
        with open(path) as f:
            return self.psql(f.read(), db=db)

    def _load_pg(self):
        self.psql("CREATE DATABASE pricing", db="postgres")
        sqldir = os.path.join(SRC, "scripts", "sql")
        self.psql_file(os.path.join(sqldir, "schema.sql"))
        seed = subprocess.run([sys.executable, os.path.join(SRC, "scripts", "seed"),
                               "--products", str(self.products), "--seed", str(self.seed)],
                              capture_output=True, check=True)
        self.psql(seed.stdout.decode())
        for name in sorted(os.listdir(sqldir)):
            if name.endswith(".sql") and name != "schema.sql":
                self.psql_file(os.path.join(sqldir, name))
        if self.pg_stat_statements:
            self.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements;")
            self.pg_stat_reset()

    def pg_stat_reset(self):
        self.psql("SELECT pg_stat_statements_reset();")

    def pg_statements(self, like=None):
        """Total calls recorded by pg_stat_statements (in db pricing),
        optionally only of statements whose text matches LIKE `like`;
        psql's own statements and pg_stat_statements queries are excluded."""
        cond = "query NOT ILIKE '%pg_stat_statements%'"
        if like is not None:
            cond += " AND query LIKE '%s'" % like.replace("'", "''")
        out = self.psql("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
                        "JOIN pg_database d ON d.oid = s.dbid "
                        "WHERE d.datname = 'pricing' AND " + cond + ";")
        return int(out.strip())

    # -- tax simulator

    def start_tax(self):
        """(Re)start the tax simulator on self.tax_port with the current settings."""
        exe = os.path.join(self.build, "quotecache-taxsim")
        if not os.path.exists(exe):
            raise RuntimeError("%s not found: build first (meson compile -C %s)"
                               % (exe, self.build))
        a = self.tax_args
        p, log = self._spawn("tax", [
            exe, "--listen", "127.0.0.1:%d" % self.tax_port,
            "--delay-ms", str(a["delay_ms"]), "--jitter-ms", str(a["jitter_ms"]),
            "--fail-rate", repr(float(a["fail_rate"])),
            "--drop-rate", repr(float(a["drop_rate"])), "--seed", str(a["seed"])])
        wait_until(lambda: port_open(self.tax_port), 10, "quotecache-taxsim", p, log)

    def stop_tax(self, kill=False):
        p = self.procs.pop("tax", None)
        if p is not None:
            self._stop_proc("tax", p, signal.SIGKILL if kill else None)

    def tax_stats(self):
        """/v1/tax requests the simulator received since start or last reset."""
        st, _, body = http_get(self.tax_port, "/stats")
        assert st == 200, (st, body)
        return json.loads(body)["requests"]

    def tax_reset(self):
        """Zero the request counter; returns the count it had."""
        st, _, body = http_post(self.tax_port, "/stats/reset")
        assert st == 200, (st, body)
        return json.loads(body)["requests"]

    def tax_control(self, **kw):
        """Change delay_ms / jitter_ms / fail_rate / drop_rate at run time.
        Returns the settings in force. Not kept across start_tax()."""
        qs = urllib.parse.urlencode({k: v for k, v in kw.items()})
        st, _, body = http_post(self.tax_port, "/control?" + qs)
        if st != 200:
            raise RuntimeError("tax control %s: %s %s" % (kw, st, body))
        return json.loads(body)


# ---------------------------------------------------------------- proxy

_proxies_this_test = []


class HeldSession:
    """One psql session of stack's PostgreSQL kept open across calls: a
    transaction that holds a lock while the test does other things, or a
    session that can still write while new connections are refused."""

    def __init__(self, stack, db="pricing"):
        self.p = subprocess.Popen(
            ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(stack.pg_port), "-U", "postgres", "-d", db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1)
        # Connected before the caller goes on: a test that refuses new
        # connections next (ALLOW_CONNECTIONS false) raced psql's own
        # connect on a loaded box, and the session it counted on was refused.
        self.run("SELECT 1;")

    def run(self, sql):
        self.p.stdin.write(sql + "\n\\echo __done__\n")
        self.p.stdin.flush()
        out = []
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("psql session ended: %s" % "".join(out))
            if line.strip() == "__done__":
                return "".join(out)
            out.append(line)

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                kill_pid(self.p.pid, proc=self.p)


def test_started():
    """qctest calls this before each test (to know whose logs to print)."""
    del _proxies_this_test[:]


def on_test_failure():
    """qctest calls this after a failed test: print the proxies' stderr."""
    for px in _proxies_this_test:
        sys.stdout.write(_tail(px.stderr_path, 20000) + "\n")


class Proxy:
    """The quotecache binary, pointed at `stack`.

    Default flags: --listen 127.0.0.1:<free> --admin-listen 127.0.0.1:<free>
    --redis <stack redis or none> --postgres <conninfo> --tax-url <url>.
    Keyword options override or add flags (underscores become dashes; True
    means a bare flag; None removes a default), e.g.
        Proxy(st, redis="none", ttl=1, workers=2)
    On a cluster stack (st.cluster) the default is --redis-cluster <seeds>
    and no --redis; an explicit redis=... option drops --redis-cluster.
    `flags` is a list of raw extra arguments appended last.
    """

    def __init__(self, stack, flags=(), env=None, binary=None, start=True,
                 ready_timeout=15, **opts):
        self.stack = stack
        self.port = free_port()
        self.admin_port = free_port()
        o = {"listen": "127.0.0.1:%d" % self.port,
             "admin-listen": "127.0.0.1:%d" % self.admin_port,
             "redis": stack.redis_addr if stack.redis_port else "none",
             "postgres": stack.conninfo if stack.pg_port else None,
             "tax-url": stack.tax_url if stack.tax_port else None}
        if getattr(stack, "cluster", None) is not None and "redis" not in opts:
            o["redis"] = None
            o["redis-cluster"] = stack.cluster.seeds
        for k, v in opts.items():
            o[k.replace("_", "-")] = v
        if o.get("admin-listen") is None:
            self.admin_port = None
        self.opts = o
        self.extra = list(flags)
        self.binary = binary or os.path.join(stack.build, "quotecache")
        self.env = env
        self.ready_timeout = ready_timeout
        self.proc = None
        self.returncode = None
        self.stderr_path = None
        self._n = 0
        if start:
            self.start()

    def argv(self):
        a = [self.binary]
        for k, v in self.opts.items():
            if v is None or v is False:
                continue
            a += ["--" + k] if v is True else ["--" + k, str(v)]
        return a + self.extra

    def start(self):
        """Start and wait until GET /healthz answers. Raises RuntimeError
        (with the stderr tail) if the process exits or never answers."""
        if not os.path.exists(self.binary):
            raise RuntimeError("%s not found: build first" % self.binary)
        self._n += 1
        self.stderr_path = os.path.join(self.stack.dir, "proxy-%d-%d.stderr"
                                        % (self.port, self._n))
        env = dict(os.environ)
        env.update(self.env or {})
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=_die_with_parent)
        self.returncode = None
        if self not in self.stack.proxies:
            self.stack.proxies.append(self)
        _proxies_this_test.append(self)

        def healthy():
            st, _, _ = http_get(self.port, "/healthz", timeout=1)
            return st is not None
        try:
            wait_until(healthy, self.ready_timeout, "quotecache", self.proc, self.stderr_path)
        except (RuntimeError, http.client.HTTPException):
            self.kill()
            raise
        return self

    @property
    def pid(self):
        """The master's PID; it serves nothing (see worker_pids)."""
        return self.proc.pid if self.proc else None

    def worker_pids(self):
        """PIDs of the worker processes (the master's children), sorted:
        the ones that hold connections, use CPU and open descriptors."""
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True)
        return sorted(int(p) for p in out.stdout.split())

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def ready(self, timeout=15):
        """Wait until /healthz says ok (the catalog is loaded: until then
        quotes answer 503); returns self."""
        self.wait_health(status="ok", timeout=timeout)
        return self

    def stop_clean(self):
        """SIGTERM and assert a clean exit: status 0 (under the sanitizer
        build a leak makes it non-zero) and no sanitizer report."""
        rc = self.stop()
        err = self.stderr_text()
        assert rc == 0, (rc, err[-4000:])
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            assert bad not in err, err[-8000:]

    def stop(self, timeout=15):
        """SIGTERM, wait; returns the exit code (SIGKILL after timeout: -9)."""
        if self.proc is None:
            return self.returncode
        self.returncode = kill_pid(self.proc.pid, signal.SIGTERM, timeout, self.proc)
        self.proc = None
        return self.returncode

    def kill(self):
        """SIGKILL (a crash) of the workers and the master; returns the
        master's exit status. The workers go first: killed alone, the master
        would let them drain gracefully (PR_SET_PDEATHSIG), not crash."""
        if self.proc is None:
            return self.returncode
        for w in self.worker_pids():
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.returncode = kill_pid(self.proc.pid, signal.SIGKILL, 5, self.proc)
        self.proc = None
        return self.returncode

    def signal(self, sig):
        self.proc.send_signal(sig)

    def health(self):
        """GET /healthz decoded: {"status": ..., "redis": ..., ...}."""
        return get_json(self.port, "/healthz", timeout=2)[2]

    def wait_health(self, timeout=10, **want):
        """Poll /healthz until every given field has the given value, e.g.
        wait_health(status="ok") or wait_health(redis="down"). Returns the
        last health document; raises RuntimeError on timeout."""
        last = [None]

        def match():
            last[0] = self.health()
            return all(last[0].get(k) == v for k, v in want.items())
        try:
            wait_until(match, timeout, "quotecache health %s" % want, self.proc)
        except RuntimeError as e:
            raise RuntimeError("%s; last /healthz: %s" % (e, last[0]))
        return last[0]

    def stderr_text(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def get(self, path, headers=None, timeout=5):
        return http_get(self.port, path, headers=headers, timeout=timeout)

    def quote(self, product_id, region="US", tier="standard", currency=None, headers=None):
        """GET /quote/...; returns (status, headers, decoded JSON or raw bytes)."""
        q = {"region": region, "tier": tier}
        if currency is not None:
            q["currency"] = currency
        st, h, b = self.get("/quote/%s?%s" % (product_id, urllib.parse.urlencode(q)),
                            headers=headers)
        try:
            return st, h, json.loads(b)
        except ValueError:
            return st, h, b

    def admin_post(self, path, body=None, token=None):
        headers = {"Authorization": "Bearer " + token} if token else None
        return http_post(self.admin_port, path, body=body, headers=headers)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.running():
            self.stop()


# ---------------------------------------------------------------- env files


def write_env(stack, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lines = ["%s=%s" % (k, shlex.quote(v)) for k, v in stack.env().items()]
    for name, pid in stack.pids().items():
        lines.append("QCSTACK_%s_PID=%d" % (name.upper(), pid))
    lines += ["QCSTACK_DIR=%s" % shlex.quote(stack.dir),
              "QCSTACK_PRODUCTS=%d" % stack.products]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = " ".join(shlex.split(v))
    return env


EXPECTED_EXE = {"REDIS": "redis-server", "POSTGRES": "postgres", "TAX": "quotecache-taxsim"}


def env_pids(env):
    """{name: pid} of the env file's processes that are still alive and
    still the program we started (guards against PID reuse)."""
    out = {}
    for k, v in env.items():
        if not (k.startswith("QCSTACK_") and k.endswith("_PID")):
            continue
        name, pid = k[len("QCSTACK_"):-len("_PID")], int(v)
        exe = EXPECTED_EXE.get(name.split("_")[0])  # REDIS_<port>: a cluster node
        if not exe:
            continue
        if not pid_alive(pid):
            continue
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if exe.encode() in os.path.basename(cmd[0]) or exe.encode() in cmd[0]:
            out[name] = pid
    return out


def stop_env(path):
    """Stop a stack recorded in an env file; returns the names stopped."""
    if not os.path.exists(path):
        return []
    env = read_env(path)
    pids = env_pids(env)
    for name, pid in pids.items():
        sig = signal.SIGINT if name == "POSTGRES" else signal.SIGTERM
        kill_pid(pid, sig, timeout=15)
    d = env.get("QCSTACK_DIR")
    if d and os.path.basename(d).startswith("qcstack-") and os.path.isdir(d):
        shutil.rmtree(d, ignore_errors=True)
    os.unlink(path)
    return sorted(pids)
