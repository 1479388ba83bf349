"""delayproxy: a TCP proxy between one quotecache instance and a real
redis-server that can delay lock attempts (SET ... NX) or their answers and
refuse reconnects for a while: the races of the cross-instance wait
(announcement before the lock answer, a subscriber that is down while the
value lands) become deterministic instead of a matter of luck.

It parses just enough RESP: the client's commands (arrays of bulk strings)
to flag SET ... NX and SUBSCRIBE, and the server's replies to match each
reply to its command (Redis answers in order). Once a connection has sent
SUBSCRIBE, the rest of its server bytes pass through unparsed (pushes).
A delayed reply also holds back every later reply on its connection, as a
slow Redis would. Runs in threads of the test process; Python stdlib only.

    dp = DelayProxy(st.redis_port)
    px = qcstack.Proxy(st, redis=dp.addr)
    dp.nx_delay = 0.8          # seconds added to the answer of every SET NX sent from now on
    dp.nx_send_delay = 0.1     # seconds before every SET NX reaches Redis
    dp.blackout(1.5)           # new connections are closed at once for 1.5 s
    dp.times("nx-sent")        # when delayed answers were released
    dp.close()
"""

import socket
import threading
import time


class Incomplete(Exception):
    pass


def _line(buf, pos):
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete()
    return buf[pos:end], end + 2


def parse_reply(buf, pos=0):
    """End offset of the RESP2 value starting at pos; Incomplete if cut."""
    if pos >= len(buf):
        raise Incomplete()
    kind = buf[pos:pos + 1]
    head, pos = _line(buf, pos + 1)
    if kind in (b"+", b"-", b":"):
        return pos
    n = int(head)
    if kind == b"$":
        if n < 0:
            return pos
        if len(buf) < pos + n + 2:
            raise Incomplete()
        return pos + n + 2
    if kind == b"*":
        for _ in range(max(n, 0)):
            pos = parse_reply(buf, pos)
        return pos
    raise ValueError("unexpected RESP type %r" % kind)


def parse_command(buf, pos=0):
    """(args, end offset) of the command array starting at pos."""
    head, pos = _line(buf, pos)
    if not head.startswith(b"*"):  # inline command
        return head.split(), pos
    args = []
    for _ in range(int(head[1:])):
        h, pos = _line(buf, pos)
        n = int(h[1:])
        if len(buf) < pos + n + 2:
            raise Incomplete()
        args.append(buf[pos:pos + n])
        pos += n + 2
    return args, pos


class _Conn:
    def __init__(self, dp, client):
        self.dp = dp
        self.client = client
        self.upstream = socket.create_connection(("127.0.0.1", dp.upstream_port))
        self.flags = []  # per command sent upstream, in order: None, ("nx", delay), "sub"
        self.cv = threading.Condition()
        self.closed = False
        for fn in (self.c2s, self.s2c):
            threading.Thread(target=fn, daemon=True).start()

    def close(self):
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def c2s(self):
        buf = b""
        try:
            while True:
                data = self.client.recv(65536)
                if not data:
                    break
                buf += data
                pos, out = 0, []
                while True:
                    try:
                        args, end = parse_command(buf, pos)
                    except Incomplete:
                        break
                    name = args[0].upper() if args else b""
                    upper = [a.upper() for a in args[1:]]
                    is_nx = name == b"SET" and b"NX" in upper
                    if is_nx and self.dp.nx_send_delay > 0:
                        # Hold the lock attempt (and all after it) back.
                        if out:
                            self.upstream.sendall(b"".join(out))
                            out = []
                        time.sleep(self.dp.nx_send_delay)
                        self.dp.note("nx-forwarded")
                    if is_nx and self.dp.nx_delay > 0:
                        flag = ("nx", self.dp.nx_delay)  # fixed when the command is sent
                        self.dp.note("nx")
                    elif name in (b"SUBSCRIBE", b"PSUBSCRIBE"):
                        flag = "sub"
                        self.dp.note("subscribe")
                    else:
                        flag = None
                    with self.cv:
                        self.flags.append(flag)
                    out.append(buf[pos:end])
                    pos = end
                buf = buf[pos:]
                if out:
                    self.upstream.sendall(b"".join(out))
        except OSError:
            pass
        self.close()

    def s2c(self):
        buf = b""
        passthrough = False
        try:
            while True:
                data = self.upstream.recv(65536)
                if not data:
                    break
                if passthrough:
                    self.client.sendall(data)
                    continue
                buf += data
                pos = 0
                while pos < len(buf) and not passthrough:
                    try:
                        end = parse_reply(buf, pos)
                    except Incomplete:
                        break
                    with self.cv:
                        flag = self.flags.pop(0) if self.flags else None
                    if isinstance(flag, tuple):
                        time.sleep(flag[1])
                        self.dp.note("nx-sent")
                    self.client.sendall(buf[pos:end])
                    pos = end
                    if flag == "sub":
                        passthrough = True
                buf = buf[pos:]
                if passthrough and buf:
                    self.client.sendall(buf)
                    buf = b""
        except OSError:
            pass
        self.close()


class DelayProxy:
    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.nx_delay = 0.0       # added to each SET NX answer
        self.nx_send_delay = 0.0  # added before each SET NX reaches Redis
        self._blackout_until = 0.0
        self.events = []  # (monotonic time, what)
        self._lock = threading.Lock()
        self.conns = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def note(self, what):
        with self._lock:
            self.events.append((time.monotonic(), what))

    def times(self, what):
        with self._lock:
            return [t for t, w in self.events if w == what]

    def blackout(self, seconds):
        """Close every connection accepted in the next `seconds` at once."""
        self._blackout_until = time.monotonic() + seconds

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if time.monotonic() < self._blackout_until:
                self.note("refused")
                client.close()
                continue
            self.note("accept")
            try:
                self.conns.append(_Conn(self, client))
            except OSError:
                client.close()

    def close(self):
        self._closed = True
        self.sock.close()
        for c in self.conns:
            c.close()
