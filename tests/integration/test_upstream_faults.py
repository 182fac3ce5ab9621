"""Faults every HTTP upstream shares (issue 9, points 6, 7 and 13), against
the real binary: configured headers must not follow a redirect to another
origin; an upstream that accepts and never answers is timed out, logged and
backed off, then read once it answers; a stream is not declared idle while
its bytes wait unread after the process was stopped."""
import json
import re
import signal
import socket
import threading
import time

import pytest

from apiclient import consumer, remove_dir, short_dir
from conftest import read_lines, wait_for
from peers import http

SECRET_HEADERS = ("X-Api-Key", "Authorization", "Cookie")


@pytest.fixture
def sock_dir():
    d = short_dir()
    yield d
    remove_dir(d)


def daemon(sock_dir):
    return f"""
[daemon]
state = state.db
socket = {sock_dir}/t.sock
checkpoint_interval = 100ms
status_interval = 0
"""


def requests(base, path=None):
    q = f"?path={path}" if path else ""
    status, _, body = http("GET", f"{base}/_requests{q}")
    assert status == 200
    return json.loads(body)


def header_names(reqs):
    return {name.lower() for r in reqs for name, _ in r["headers"]}


def port_of(base):
    return int(base.rsplit(":", 1)[1])


def datas(path):
    return [r["data"] for r in read_lines(path, running=True)[0]]


def state_of(sock, name="c"):
    try:
        return consumer(sock, name)
    except OSError:
        return {}


# -- 6: configured headers and redirects to another origin ------------------

def upstream_with_secrets(kind, base, keep):
    return f"""
[upstream ref]
type = {kind}
url = {base}
reconnect_min = 20ms
reconnect_max = 300ms
immediate_retries = 0
header.X-Api-Key = key-123
header.Authorization = Bearer tok-456
header.Cookie = session=789
{"redirect_headers = keep" if keep else ""}
"""


@pytest.mark.parametrize("keep", [False, True], ids=["drop", "keep"])
@pytest.mark.parametrize("kind", ["sse", "http-poll"])
def test_redirect_to_another_origin(tether, tmp_path, sock_dir, ref_server,
                                    kind, keep):
    """The first server redirects (307 for the stream, 302 for the poll) to
    a second one on another port: another origin. By default it gets none
    of the configured headers, and events still flow from it."""
    out = tmp_path / "out.ndjson"
    if kind == "sse":
        first = ref_server("sse_server.py", "--events", "5")
        second = ref_server("sse_server.py", "--events", "5")
        path = "/events"
        consumer_keys = f"path = {path}?redirect=307&to_port={port_of(second)}"
    else:
        first = ref_server("poll_server.py", "--docs", "5")
        second = ref_server("poll_server.py", "--docs", "5")
        path = "/db/_changes"
        consumer_keys = f"""
path = {path}?since={{cursor}}&limit=2&redirect=302&to_port={port_of(second)}
cursor_initial = 0
items = /results
page_cursor = /last_seq
poll_interval = 100ms
"""
    t = tether(daemon(sock_dir) + upstream_with_secrets(kind, first, keep) + f"""
[consumer c]
upstream = ref
sink = file:{out}
{consumer_keys}
""")
    t.start()
    wait_for(lambda: len(datas(out)) >= 5, 30, "5 events from the second "
             "server", t)
    assert t.stop() == 0
    got = datas(out)
    if kind == "sse":
        assert [d["n"] for d in got] == [1, 2, 3, 4, 5]
    else:
        assert [d["id"] for d in got] == [f"doc-{i}" for i in range(1, 6)]

    # The configured origin got every configured header ...
    asked = requests(first, path)
    assert asked and all(
        {h.lower() for h in SECRET_HEADERS} <= header_names([r]) for r in asked)
    # ... the other origin answered every event, with none of them unless
    # the upstream keeps them.
    served = requests(second, path)
    assert served
    seen = header_names(served)
    for h in SECRET_HEADERS:
        assert (h.lower() in seen) == keep, (h, seen)
    if keep:
        values = dict(served[0]["headers"])
        assert values["X-Api-Key"] == "key-123"
    # The request still went there with the protocol's own headers.
    assert "accept" in seen


# -- 7: an upstream that accepts and never answers --------------------------

class Gate:
    """A TCP listener on loopback in front of a server. While shut it
    accepts every connection and never answers (it reads nothing either);
    once opened, new connections are relayed to the server."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.lsock.settimeout(0.05)
        self.port = self.lsock.getsockname()[1]
        self.is_open = False
        self.accepted = []  # monotonic time of each accept
        self.socks = []
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def open(self):
        self.is_open = True

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self.accepted.append(time.monotonic())
            self.socks.append(c)
            if not self.is_open:
                continue  # held: the request sits unread, nothing answers
            try:
                u = socket.create_connection(("127.0.0.1", self.target), 5)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            c.settimeout(None)
            self.socks.append(u)
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b),
                                 daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.lsock.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture
def gate():
    made = []

    def make(target_port):
        g = Gate(target_port)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


SUPERUSER = ("admin@example.com", "secret-password-1")


def hung_setup(kind, ref_server, gate, out):
    """Starts the real server of kind behind a shut gate; returns the gate,
    the consumer's config and the count of events to expect."""
    if kind == "sse":
        base = ref_server("sse_server.py", "--events", "5")
        g = gate(port_of(base))
        return g, f"""
[upstream ref]
type = sse
url = {g.url}

[consumer c]
upstream = ref
path = /events
sink = file:{out}
""", 5
    if kind == "http-poll":
        base = ref_server("poll_server.py", "--docs", "5")
        g = gate(port_of(base))
        return g, f"""
[upstream ref]
type = http-poll
url = {g.url}

[consumer c]
upstream = ref
path = /db/_changes?since={{cursor}}&limit=10
cursor_initial = 0
items = /results
page_cursor = /last_seq
poll_interval = 200ms
sink = file:{out}
""", 5
    base = ref_server("pocketbase_server.py")
    body = json.dumps({"name": "orders", "listRule": None,
                       "has_created": True, "fields": ["n"]}).encode()
    assert http("POST", base + "/_pb/collections", body,
                {"Content-Type": "application/json"})[0] == 200
    body = json.dumps({"collection": "orders",
                       "records": [{"n": i} for i in range(1, 6)]}).encode()
    assert http("POST", base + "/_pb/create", body,
                {"Content-Type": "application/json"})[0] == 200
    g = gate(port_of(base))
    return g, f"""
[upstream ref]
type = pocketbase
url = {g.url}
auth = superuser
identity = {SUPERUSER[0]}
password = {SUPERUSER[1]}

[consumer c]
upstream = ref
collection = orders
settle = 0
poll_interval = 300ms
sink = file:{out}
""", 5


@pytest.mark.parametrize("kind", ["sse", "http-poll", "pocketbase"])
def test_hung_upstream_times_out_backs_off_and_recovers(
        tether, tmp_path, sock_dir, ref_server, gate, kind):
    out = tmp_path / "out.ndjson"
    g, cfg, n = hung_setup(kind, ref_server, gate, out)
    # response_timeout and the backoff go into the upstream section.
    cfg = cfg.replace(f"url = {g.url}\n", f"""url = {g.url}
response_timeout = 1s
reconnect_min = 200ms
reconnect_max = 500ms
immediate_retries = 0
""")
    t = tether(daemon(sock_dir) + cfg)
    sock = f"{sock_dir}/t.sock"
    started = time.monotonic()
    t.start()
    want = f"no response head from 127.0.0.1:{g.port} within 1000 ms " \
           "(response_timeout)"
    wait_for(lambda: want in t.log(), 20, "the response_timeout line", t)
    took = time.monotonic() - started
    print(f"\n{kind}: the hung upstream was timed out and logged "
          f"{took:.2f} s after start (response_timeout = 1s)")
    assert 0.9 <= took < 10
    log = t.log()
    # The line names the consumer, and the source (or, for the login, the
    # upstream) and the server it waited for.
    if kind == "pocketbase":
        # The login and the realtime stream, beside the poller.
        assert re.search(r"PocketBase login failed; retrying upstream=ref "
                         r"error=\"[^\"]*" + re.escape(want), log), log
        wait_for(lambda: "realtime stream lost upstream=ref error=\"" + want
                 in t.log(), 20, "the realtime stream's timeout", t)
    assert re.search(r"source failed; retrying consumer=c source=" + kind +
                     r" err=\"[^\"]*" + re.escape(want), log), log
    # The consumer says so: backoff, with the reason.
    st = wait_for(lambda: (lambda s: s if s.get("state") == "backoff" and
                           want in (s.get("last_error") or "") else None)(
                               state_of(sock)), 20, "state backoff", t)
    assert st["reconnects"] >= 1
    # It tries again (after its backoff), and is cut off again.
    wait_for(lambda: len(g.accepted) >= 2, 20, "a second attempt", t)
    wait_for(lambda: t.log().count(want) >= 2, 20, "a second timeout", t)
    # The server starts answering: everything arrives.
    g.open()
    wait_for(lambda: len(datas(out)) >= n, 30, f"{n} events once it answers",
             t)
    wait_for(lambda: state_of(sock).get("state") == "connected", 20,
             "state connected", t)
    assert t.stop() == 0
    assert len(datas(out)) == n


def test_longpoll_head_may_take_its_request_timeout(tether, tmp_path,
                                                    sock_dir, ref_server):
    """A longpoll server may hold even the head until it has a change
    (framing=length: no head before the page). With response_timeout under
    the hold and request_timeout above it, the wait is the longpoll's: one
    request per hold, no error."""
    base = ref_server("poll_server.py", "--docs", "1")
    out = tmp_path / "out.ndjson"
    t = tether(daemon(sock_dir) + f"""
[upstream ref]
type = http-poll
url = {base}
response_timeout = 300ms
reconnect_min = 20ms
reconnect_max = 300ms

[consumer c]
upstream = ref
path = /db/_changes?feed=longpoll&since={{cursor}}&framing=length&timeout=1000
cursor_initial = 0
items = /results
page_cursor = /last_seq
mode = longpoll
request_timeout = 5s
sink = file:{out}
""")
    t.start()
    wait_for(lambda: len(datas(out)) >= 1, 20, "the first change", t)
    wait_for(lambda: len(requests(base, "/db/_changes")) >= 4, 20,
             "three held longpolls", t)
    http("POST", f"{base}/db/doc", b"{}")
    wait_for(lambda: len(datas(out)) >= 2, 20, "the new change", t)
    assert t.stop() == 0
    assert "response_timeout" not in t.log()
    assert "source failed" not in t.log()
    # Each held request lasted the server's hold (1 s), not 300 ms.
    times = [r["time"] for r in requests(base, "/db/_changes")]
    gaps = [b - a for a, b in zip(times[1:3], times[2:4])]
    assert all(g >= 0.9 for g in gaps), gaps


def test_longpoll_connect_timeout_is_a_failure(tether, tmp_path, sock_dir):
    """Only a longpoll's own request_timeout means "nothing changed": a
    connect that never completes (a listener whose accept queue is full
    drops the SYNs) is a failure, logged and backed off, not re-asked in
    silence."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            try:
                f.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(f)
        out = tmp_path / "out.ndjson"
        t = tether(daemon(sock_dir) + f"""
[upstream ref]
type = http-poll
url = http://127.0.0.1:{port}
connect_timeout = 200ms
reconnect_min = 300ms
reconnect_max = 300ms
immediate_retries = 0

[consumer c]
upstream = ref
path = /db/_changes?feed=longpoll&since={{cursor}}
cursor_initial = 0
items = /results
page_cursor = /last_seq
mode = longpoll
request_timeout = 5s
sink = file:{out}
""")
        t.start()
        sock = f"{sock_dir}/t.sock"
        wait_for(lambda: t.log().count("source failed; retrying") >= 2, 20,
                 "two connect timeouts, logged", t)
        st = wait_for(lambda: (lambda s: s if s.get("state") == "backoff"
                               else None)(state_of(sock)), 20,
                      "state backoff", t)
        assert st["reconnects"] >= 1
        assert t.stop() == 0
    finally:
        for f in fillers:
            f.close()
        lst.close()


# -- 13: a stopped process, then data waiting in the socket -----------------

def test_stopped_process_reads_before_idle_timeout(tether, tmp_path, sock_dir,
                                                    ref_server):
    """tether is stopped (SIGSTOP) for several idle timeouts while the
    server keeps writing keep-alives and events. Once continued, the bytes
    waiting in the socket are read before the idle timer may fire: the one
    stream goes on, nothing is reconnected."""
    base = ref_server("sse_server.py", "--events", "3")
    out = tmp_path / "out.ndjson"
    t = tether(daemon(sock_dir) + f"""
[upstream ref]
type = sse
url = {base}
reconnect_min = 20ms
reconnect_max = 300ms

[consumer c]
upstream = ref
path = /events?keepalive=0.1
idle_timeout = 1s
sink = file:{out}
""")
    sock = f"{sock_dir}/t.sock"
    t.start()
    wait_for(lambda: len(datas(out)) >= 3, 20, "the first events", t)
    wait_for(lambda: state_of(sock).get("state") == "connected", 20,
             "state connected", t)
    t.send(signal.SIGSTOP)
    try:
        # Stopped for 3.5 idle timeouts; the server writes meanwhile.
        stop_until = time.monotonic() + 3.5
        for _ in range(2):
            assert http("POST", f"{base}/publish", b"")[0] == 200
        wait_for(lambda: time.monotonic() > stop_until, 10,
                 "3.5 s with tether stopped")
    finally:
        t.send(signal.SIGCONT)
    wait_for(lambda: len(datas(out)) >= 5, 20, "the events sent while "
             "stopped", t)
    assert http("POST", f"{base}/publish", b"")[0] == 200
    wait_for(lambda: len(datas(out)) >= 6, 20, "an event after", t)
    st = state_of(sock)
    assert t.stop() == 0
    assert [d["n"] for d in datas(out)] == [1, 2, 3, 4, 5, 6]
    assert len(requests(base, "/events")) == 1
    assert st["reconnects"] == 0, st
    assert "idle_timeout" not in t.log()
    assert "source failed" not in t.log()
