"""Clients of tether's local API for the tests: curl over the unix socket,
http.client over the unix socket, raw bytes, and a streaming subscriber."""
import http.client
import json
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading

from conftest import BIN


def short_dir():
    """A directory with a short path (a unix socket path has at most 107
    bytes, and pytest's tmp_path can be longer), readable by other users
    so the permission tests test the socket's mode and not the directory's."""
    d = tempfile.mkdtemp(prefix="tt", dir="/tmp")
    os.chmod(d, 0o755)
    return d


def remove_dir(d):
    shutil.rmtree(d, ignore_errors=True)


def curl(sock, method, target, body=None, headers=(), preexec_fn=None):
    """One request through curl --unix-socket; returns (status, parsed JSON
    or text, raw stderr). Status 0 means curl could not connect."""
    cmd = ["curl", "-sS", "--max-time", "20", "--unix-socket", sock,
           "-X", method, "-o", "-", "-w", "\n%{http_code}"]
    for h in headers:
        cmd += ["-H", h]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary",
                body if isinstance(body, str) else json.dumps(body)]
    cmd.append("http://tether" + target)
    p = subprocess.run(cmd, capture_output=True, timeout=30,
                       preexec_fn=preexec_fn)
    out = p.stdout.decode("utf-8", "replace")
    text, _, code = out.rpartition("\n")
    status = int(code) if code.isdigit() else 0
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return status, parsed, p.stderr.decode("utf-8", "replace")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=20):
        super().__init__("tether", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def request(sock, method, target, body=None, headers=None):
    """One request; returns (status, headers dict with lower-case names,
    parsed JSON body or text)."""
    c = UnixHTTPConnection(sock)
    try:
        h = dict(headers or {})
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        c.request(method, target, body=data, headers=h)
        r = c.getresponse()
        raw = r.read().decode("utf-8", "replace")
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return r.status, hdrs, parsed
    finally:
        c.close()


def get(sock, target):
    status, _, body = request(sock, "GET", target)
    return status, body


def ready(sock):
    """True once the API answers /v1/ready with 200; False while the socket
    is missing, refuses, or tether is not ready."""
    try:
        return get(sock, "/v1/ready")[0] == 200
    except OSError:
        return False


def consumer(sock, name):
    status, body = get(sock, f"/v1/consumers/{name}")
    assert status == 200, body
    return body["consumer"]


def raw(sock, data, timeout=10):
    """Sends bytes on a fresh connection and reads until the server closes
    or timeout; returns what came back."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def status_of(response_bytes):
    line = response_bytes.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def body_of(response_bytes):
    return json.loads(response_bytes.split(b"\r\n\r\n", 1)[1])


class Subscriber:
    """GET /v1/consumers/NAME/events as NDJSON (or SSE), read on a thread;
    events land in self.events (a queue of envelopes)."""

    def __init__(self, sock, name, sse=False, peek=False, who=None):
        self.sock_path = sock
        self.name = name
        self.who = who
        self.sse = sse
        self.events = queue.Queue()
        self.closed = threading.Event()
        self.error = None
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(sock)
        accept = "text/event-stream" if sse else "application/x-ndjson"
        query = [f"subscriber={who}"] if who else []
        if peek:
            query.append("peek=1")
        target = f"/v1/consumers/{name}/events" + \
            ("?" + "&".join(query) if query else "")
        self.s.sendall((f"GET {target} HTTP/1.1\r\nHost: tether\r\n"
                        f"Accept: {accept}\r\n\r\n").encode())
        self.status = None
        self.headers = {}
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _read_exact(self, f, n):
        data = f.read(n)
        if len(data) < n:
            raise EOFError
        return data

    def _run(self):
        f = self.s.makefile("rb")
        try:
            line = f.readline()
            self.status = int(line.split()[1])
            while True:
                h = f.readline()
                if h in (b"\r\n", b""):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                self.headers[k.strip().lower()] = v.strip()
            pending = b""
            while True:
                size_line = f.readline()
                if not size_line:
                    break
                size = int(size_line.strip().split(b";")[0], 16)
                if size == 0:
                    break
                pending += self._read_exact(f, size)
                self._read_exact(f, 2)
                pending = self._parse(pending)
        except (OSError, EOFError, ValueError) as e:
            self.error = e
        finally:
            self.closed.set()

    def _parse(self, pending):
        if not self.sse:
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    self.events.put(json.loads(line))
            return pending
        while b"\n\n" in pending:
            block, pending = pending.split(b"\n\n", 1)
            ev = {}
            for l in block.decode().split("\n"):
                k, _, v = l.partition(":")
                if v.startswith(" "):
                    v = v[1:]
                if k == "data":
                    ev["data"] = ev.get("data", "") + v
                elif k:
                    ev[k] = v
            if "data" in ev:
                env = json.loads(ev["data"])
                env["_sse_id"] = ev.get("id")
                env["_sse_event"] = ev.get("event")
                self.events.put(env)
        return pending

    def take(self, n, timeout=20):
        """The next n envelopes; fails when they do not come in time."""
        out = []
        for _ in range(n):
            try:
                out.append(self.events.get(timeout=timeout))
            except queue.Empty:
                raise AssertionError(f"subscriber {self.name}: got {len(out)}"
                                     f" of {n} events; error={self.error}")
        return out

    def ack(self, seq=None, seqs=None):
        body = {"seq": seq} if seqs is None else {"seqs": seqs}
        if self.who:
            body["subscriber"] = self.who
        status, _, resp = request(self.sock_path, "POST",
                                  f"/v1/consumers/{self.name}/ack", body)
        assert status == 200, resp
        return resp["acknowledged"]

    def kill(self):
        """Goes away without a word (as a crashed subscriber does)."""
        try:
            self.s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.s.close()
        self.closed.wait(10)


def cli(*args, sock=None, env=None, timeout=30):
    """Runs the tether binary as a client; returns CompletedProcess."""
    full = dict(os.environ)
    full.pop("TETHER_SOCKET", None)
    full.update(env or {})
    cmd = [BIN] + list(args)
    if sock is not None:
        cmd += ["-s", sock]
    return subprocess.run(cmd, capture_output=True, text=True, env=full,
                          timeout=timeout)
