#!/usr/bin/env python3
"""upstream_app: the application behind quotecache in the pass-through
tests (--upstream). HTTP/1.1 with keep-alive, one thread per connection.

Endpoints (any method unless said, PROPFIND and FOO included):
  /echo...            200 JSON {method, target, headers: [[k, v]...], body}
  /status/N           answers status N with a small body (none for 204/304)
  /slow?ms=N          answers after N ms
  /close              closes the connection without answering
  /drop-next          answers, then closes the connection on its next request
                      unanswered (a keep-alive close racing a new request)
  /big?n=N            N bytes of body
  /chunked            a chunked answer (Transfer-Encoding: chunked)
  /hop                an answer full of hop-by-hop fields
  /headers?k=v&...    echo whose answer carries the given fields
  /oddfield/.../KIND  echo whose answer carries a field named oddly: long
                      (300 bytes, a token), empty (": 1") or space ("X Bad")
  /stats              {"calls": {path: n}, "connections": n} (not counted)
  /reset              zeroes the counts (not counted)
  /mode?get_ms=N&get_code=C  from now on a GET of /failing/... waits N ms,
                      then answers C (no query: back to echoes); other
                      methods stay echoes (a write succeeds while reads fail)
Every other path counts like /echo, answers ?code=N (200) after
?sleep_ms=N (0) and adds the fields ?h_<Name>=<value> to its answer (a 304
to an If-None-Match equal to ?h_ETag).
Started with `python3 upstream_app.py PORT`; prints "ready" on stdout.
"""

import json
import select
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
calls = {}
connections = 0
mode = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        global connections
        with lock:
            connections += 1
        super().setup()

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, body=b"", ctype="application/json", extra=()):
        self.send_response(status)
        for k, v in extra:
            self.send_header(k, v)
        if status not in (204, 304):
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def handle_any(self):
        global connections
        u = urllib.parse.urlsplit(self.path)
        path, q = u.path, dict(urllib.parse.parse_qsl(u.query))
        body = self.read_body()
        if getattr(self, "drop_next", False):
            # A keep-alive connection the server closes as the next request
            # arrives (an idle timeout racing the client): no answer.
            with lock:
                calls["dropped"] = calls.get("dropped", 0) + 1
            self.close_connection = True
            return
        if path == "/stats":
            with lock:
                doc = {"calls": dict(calls), "connections": connections}
            return self.send(200, json.dumps(doc).encode())
        if path == "/mode":
            mode.clear()
            mode.update({k: int(v) for k, v in q.items()})
            return self.send(200, b"{}")
        if path == "/reset":
            with lock:
                calls.clear()
                connections = 1
            return self.send(200, b"{}")
        with lock:
            calls[path] = calls.get(path, 0) + 1
        echo = json.dumps({"method": self.command, "target": self.path,
                           "headers": [[k, v] for k, v in self.headers.items()],
                           "body": body.decode("latin-1")}).encode()
        if path.startswith("/failing/") and self.command == "GET" and mode:
            time.sleep(mode.get("get_ms", 0) / 1000.0)
            return self.send(mode.get("get_code", 503), b'{"failing":true}')
        if path.startswith("/status/"):
            code = int(path[len("/status/"):])
            return self.send(code, b'{"status":%d}' % code, extra=[("X-Upstream", "yes")])
        if path == "/slow":
            # Waits watching the socket: a proxy that aborts the request
            # closes it, which is counted as "abandoned".
            end = time.monotonic() + int(q.get("ms", "1000")) / 1000.0
            while time.monotonic() < end:
                r, _, _ = select.select([self.connection], [], [], end - time.monotonic())
                if r and not self.connection.recv(1, socket.MSG_PEEK):
                    with lock:
                        calls["abandoned"] = calls.get("abandoned", 0) + 1
                    self.close_connection = True
                    return
            return self.send(200, b'{"slow":true}')
        if path == "/close":
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        if path == "/drop-next":
            self.drop_next = True
            return self.send(200, b"{}")
        if path == "/big":
            return self.send(200, b"x" * int(q.get("n", "1000")), ctype="text/plain")
        if path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for part in (b"hello ", b"chunked ", b"world"):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/hop":
            return self.send(200, echo, extra=[
                ("Connection", "X-Hop-Secret"), ("X-Hop-Secret", "1"),
                ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic"),
                ("Trailer", "X-Trailer"), ("Upgrade", "h2c"), ("X-End-To-End", "kept"),
                ("Via", "1.1 legacy")])
        if path == "/headers":
            return self.send(200, echo, extra=list(q.items()))
        if path.startswith("/oddfield/"):
            kind = path.rsplit("/", 1)[1]
            name = {"long": "X-" + "L" * 298, "empty": "", "space": "X Bad"}[kind]
            return self.send(200, echo, extra=[(name, "1"), ("Cache-Control", "max-age=60")])
        # Everything else: an echo, with status ?code=N and the answer
        # fields given as ?h_<Name>=<value> (Cache-Control, Vary, ...).
        extra = [("X-Upstream", "yes")] + [(k[2:], v) for k, v in q.items()
                                           if k.startswith("h_")]
        time.sleep(int(q.get("sleep_ms", "0")) / 1000.0)
        if "h_ETag" in q and self.headers.get("If-None-Match") == q["h_ETag"]:
            return self.send(304, extra=extra)  # a conditional GET of the current tag
        return self.send(int(q.get("code", "200")), echo, extra=extra)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = handle_any
    # Methods quotecache never forwards: were one forwarded, it would be
    # answered and counted like any other.
    do_PROPFIND = do_FOO = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a burst of new pool connections must not hit SYN retries
    allow_reuse_address = True


def main():
    port = int(sys.argv[1])
    srv = Server(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
