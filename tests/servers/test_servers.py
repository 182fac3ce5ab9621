"""Checks the reference servers themselves, with raw sockets and urllib.

    pytest-3 -q tests/servers/test_servers.py

Every wait is bounded: socket timeouts and wait_for(predicate, timeout).
"""

import contextlib
import email.utils
import json
import os
import re
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spawn  # noqa: E402

TIMEOUT = 5.0


# -- helpers ----------------------------------------------------------------


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what))
        time.sleep(0.005)


class Response:
    def __init__(self, status, headers, body, raw):
        self.status = status
        self.headers = headers  # [(name, value)]
        self.body = body  # de-chunked
        self.raw = raw  # every byte received

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)


def split_head(raw):
    i = raw.index(b"\r\n\r\n")
    lines = raw[:i].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [tuple(x.strip() for x in l.split(":", 1)) for l in lines[1:]]
    return status, headers, raw[i + 4:]


def dechunk(data):
    """(body, complete) of a chunked body."""
    out = bytearray()
    i = 0
    while True:
        j = data.find(b"\r\n", i)
        if j < 0:
            return bytes(out), False
        n = int(data[i:j].split(b";")[0], 16)
        if n == 0:
            return bytes(out), data[j + 2:j + 4] == b"\r\n"
        if len(data) < j + 2 + n + 2:
            out += data[j + 2:j + 2 + n]
            return bytes(out), False
        out += data[j + 2:j + 2 + n]
        i = j + 2 + n + 2


def request_bytes(method, target, headers=(), body=b"", close=True):
    hs = [("Host", "test")] + list(headers)
    if body:
        hs.append(("Content-Length", str(len(body))))
    if close:
        hs.append(("Connection", "close"))
    text = "%s %s HTTP/1.1\r\n" % (method, target)
    text += "".join("%s: %s\r\n" % h for h in hs) + "\r\n"
    return text.encode("utf-8") + body


def complete(raw, method="GET"):
    """True when raw holds a whole response (by its framing)."""
    if b"\r\n\r\n" not in raw:
        return False
    status, headers, rest = split_head(raw)
    r = Response(status, headers, rest, raw)
    if status in (204, 304) or method == "HEAD":
        return True
    if r.header("Content-Length") is not None:
        return len(rest) >= int(r.header("Content-Length"))
    if "chunked" in (r.header("Transfer-Encoding") or ""):
        return dechunk(rest)[1]
    return False  # close-delimited: only EOF ends it


def http(addr, method, target, headers=(), body=b"", timeout=TIMEOUT):
    """One request on a new connection; reads until the response ends."""
    s = socket.create_connection(addr, timeout=timeout)
    try:
        s.sendall(request_bytes(method, target, headers, body))
        raw = b""
        while not complete(raw, method):
            b = s.recv(65536)
            if not b:
                break
            raw += b
    finally:
        s.close()
    return parse(raw)


def parse(raw):
    status, headers, rest = split_head(raw)
    r = Response(status, headers, rest, raw)
    if "chunked" in (r.header("Transfer-Encoding") or ""):
        r.body = dechunk(rest)[0]
    elif r.header("Content-Length") is not None:
        r.body = rest[:int(r.header("Content-Length"))]
    return r


class Stream:
    """A raw connection that reads a response as it comes."""

    def __init__(self, addr, target, headers=(), timeout=TIMEOUT):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.sendall(request_bytes("GET", target, headers))
        self.raw = b""
        self.eof = False
        self.reset = False
        self.reads = 0

    def read_some(self, timeout=TIMEOUT):
        self.sock.settimeout(timeout)
        try:
            b = self.sock.recv(65536)
        except socket.timeout:
            return None
        except ConnectionResetError:
            self.reset = self.eof = True
            return b""
        if not b:
            self.eof = True
        self.reads += 1
        self.raw += b
        return b

    def read_until(self, pred, timeout=TIMEOUT, what="data"):
        deadline = time.monotonic() + timeout
        while not pred(self):
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise AssertionError("no %s (eof=%s); got %r"
                                     % (what, self.eof, self.raw[-300:]))
            self.read_some(left)
        return self

    def read_to_eof(self, timeout=TIMEOUT):
        return self.read_until(lambda s: s.eof, timeout, "EOF")

    @property
    def head(self):
        return split_head(self.raw)

    @property
    def body(self):
        """The payload so far, de-chunked when chunked."""
        if b"\r\n\r\n" not in self.raw:
            return b""
        status, headers, rest = split_head(self.raw)
        if any(k.lower() == "transfer-encoding" for k, _ in headers):
            return dechunk(rest)[0]
        return rest

    def close(self):
        self.sock.close()


def sse_parse(data):
    """The SSE interpretation of a body (WHATWG, as in the contract §1):
    returns (events as (type, data, last_id), last_id, retry)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    parts = re.split(rb"\r\n|\r|\n", data)
    parts.pop()  # the unterminated rest
    events, last_id, id_buf, retry = [], "", "", None
    dbuf, tbuf = "", ""
    for raw in parts:
        line = raw.decode("utf-8", "replace")
        if line == "":
            last_id = id_buf
            if dbuf == "":
                tbuf = ""
                continue
            events.append((tbuf or "message", dbuf[:-1], last_id))
            dbuf = tbuf = ""
            continue
        if line.startswith(":"):
            continue
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            dbuf += value + "\n"
        elif field == "event":
            tbuf = value
        elif field == "id":
            if "\0" not in value:
                id_buf = value
        elif field == "retry":
            if re.fullmatch(r"[0-9]+", value):
                retry = int(value)
    return events, last_id, retry


def expected(ids):
    return [("message", '{"n":%d}' % i, str(i)) for i in ids]


def sse_get(addr, target, headers=()):
    """A finite stream (done=1 or count=N): the whole response."""
    s = Stream(addr, target, headers)
    try:
        s.read_to_eof()
    finally:
        s.close()
    return s


# -- fixtures ---------------------------------------------------------------


@contextlib.contextmanager
def server(script, *args):
    """A server that must stop cleanly and log nothing to stderr."""
    proc, host, port = spawn.start(script, *args)
    try:
        yield (host, port)
    finally:
        code = spawn.stop(proc)
    assert code == 0, "%s exited with %s:\n%s" % (script, code,
                                                  proc.stderr_text)
    assert proc.stderr_text == "", proc.stderr_text


@pytest.fixture(scope="module")
def sse():
    """A shared SSE server whose log stays ids 1..20 (nobody publishes)."""
    with server("sse_server.py", "--events", "20") as addr:
        yield addr


@pytest.fixture
def sse_live():
    """A private SSE server, for tests that publish."""
    with server("sse_server.py", "--events", "3") as addr:
        yield addr


@pytest.fixture(scope="module")
def poll():
    with server("poll_server.py", "--docs", "10") as addr:
        yield addr


@pytest.fixture
def poll_private():
    with server("poll_server.py", "--docs", "3") as addr:
        yield addr


def url(addr, target):
    return "http://%s:%d%s" % (addr[0], addr[1], target)


# -- spawn ------------------------------------------------------------------


def test_spawn_start_stop():
    t = time.monotonic()
    proc, host, port = spawn.start("sse_server.py", "--events", "2")
    assert host == "127.0.0.1" and port > 0
    assert proc.poll() is None
    r = http((host, port), "GET", "/x?done=1")
    assert r.status == 200
    assert spawn.stop(proc) == 0
    assert spawn.stop(proc) == 0  # twice is harmless
    assert time.monotonic() - t < 5
    assert proc.stderr_text == ""


def test_spawn_reports_failure():
    with pytest.raises(spawn.SpawnError, match="exited with 2"):
        spawn.start("poll_server.py", "--ties", "x")


def test_unix_socket():
    path = os.path.join(tempfile.mkdtemp(prefix="tether-srv-"), "s.sock")
    proc, host, port = spawn.start("sse_server.py", "--unix", path)
    try:
        wait_for(lambda: os.path.exists(path), 2, "the unix socket")
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(TIMEOUT)
        s.connect(path)
        s.sendall(request_bytes("GET", "/u?done=1&count=2"))
        raw = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            raw += b
        s.close()
        assert sse_parse(parse(raw).body)[0] == expected([1, 2])
    finally:
        spawn.stop(proc)
    assert not os.path.exists(path)
    os.rmdir(os.path.dirname(path))


# -- SSE: framing -------------------------------------------------------------


def test_framing_close(sse):
    s = sse_get(sse, "/fc?done=1")
    status, headers, _ = s.head
    r = parse(s.raw)
    assert status == 200
    assert r.header("Content-Length") is None
    assert r.header("Transfer-Encoding") is None
    assert r.header("Content-Type") == "text/event-stream; charset=utf-8"
    assert r.header("Connection") == "close"
    assert r.body.startswith(b'id: 1\ndata: {"n":1}\n\nid: 2\n')
    assert sse_parse(r.body)[0] == expected(range(1, 21))


def test_framing_chunked(sse):
    s = sse_get(sse, "/fch?done=1&framing=chunked")
    r = parse(s.raw)
    assert r.header("Transfer-Encoding") == "chunked"
    body, done = dechunk(split_head(s.raw)[2])
    assert done, "the chunked terminator is there"
    assert sse_parse(body)[0] == expected(range(1, 21))


def test_framing_length(sse):
    r = http(sse, "GET", "/fl?framing=length")
    assert int(r.header("Content-Length")) == len(r.body) > 0
    assert sse_parse(r.body)[0] == expected(range(1, 21))


def test_count_ends_stream(sse):
    s = sse_get(sse, "/cnt?count=3")
    assert sse_parse(s.body)[0] == expected([1, 2, 3])


# -- SSE: replay --------------------------------------------------------------


def test_replay_by_header_and_query(sse):
    s = sse_get(sse, "/r?done=1", [("Last-Event-ID", "17")])
    assert sse_parse(s.body)[0] == expected([18, 19, 20])
    s = sse_get(sse, "/r?done=1&last_event_id=18")
    assert sse_parse(s.body)[0] == expected([19, 20])
    s = sse_get(sse, "/r?done=1&lastEventId=19")
    assert sse_parse(s.body)[0] == expected([20])
    # The header wins over the query, as nchan's first non-empty rule says.
    s = sse_get(sse, "/r?done=1&last_event_id=1", [("Last-Event-ID", "19")])
    assert sse_parse(s.body)[0] == expected([20])
    s = sse_get(sse, "/r?done=1", [("Last-Event-ID", "20")])
    assert sse_parse(s.body)[0] == []


def test_unknown_id(sse):
    for last in ("1795370959:0", "99", "-1"):
        s = sse_get(sse, "/u?done=1", [("Last-Event-ID", last)])
        assert sse_parse(s.body)[0] == expected(range(1, 21)), last
        s = sse_get(sse, "/u?done=1&unknown_id=none",
                    [("Last-Event-ID", last)])
        assert sse_parse(s.body)[0] == [], last
    s = sse_get(sse, "/u?done=1&first=newest")
    assert sse_parse(s.body)[0] == []


# -- SSE: bytes on the wire ---------------------------------------------------


def test_eol_variants(sse):
    bodies = {}
    for eol in ("lf", "crlf", "cr", "mixed"):
        body = sse_get(sse, "/eol?count=6&eol=" + eol).body
        bodies[eol] = body
        assert sse_parse(body)[0] == expected(range(1, 7)), eol
    assert b"\r" not in bodies["lf"]
    assert bodies["crlf"].count(b"\r\n") == bodies["lf"].count(b"\n")
    assert b"\n" not in bodies["cr"]
    mixed = bodies["mixed"]
    assert b"\r\n" in mixed and re.search(rb"[^\r]\n", mixed) \
        and re.search(rb"\r[^\n]", mixed)


def test_nospace_bom_retry(sse):
    body = sse_get(sse, "/b?count=1&nospace=1&bom=1&retry=500").body
    assert body == b'\xef\xbb\xbfretry:500\n\nid:1\ndata:{"n":1}\n\n'
    assert sse_parse(body) == (expected([1]), "1", 500)


def test_idonly_idreset(sse):
    body = sse_get(sse, "/i?count=4&idonly=2&idreset=3").body
    assert body == (b'id: 1\ndata: {"n":1}\n\n'
                    b"id: 2\n\n"
                    b'id:\ndata: {"n":3}\n\n'
                    b'id: 4\ndata: {"n":4}\n\n')
    events, last, _ = sse_parse(body)
    assert events == [("message", '{"n":1}', "1"), ("message", '{"n":3}', ""),
                      ("message", '{"n":4}', "4")]


def test_garbage_is_inert(sse):
    a = sse_get(sse, "/g?count=5&garbage=300").body
    b = sse_get(sse, "/g?count=5&garbage=300&eol=cr").body
    assert a == sse_get(sse, "/g?count=5&garbage=300").body, "deterministic"
    assert len(a) == len(sse_get(sse, "/g?count=5").body) + 5 * 300
    for needle in (b"\0", b"\r", b"\xff"):
        assert needle in a
    assert sse_parse(a)[0] == expected(range(1, 6))
    assert sse_parse(b)[0] == expected(range(1, 6))


def test_huge_line(sse):
    for size in (100, 70000):
        body = sse_get(sse, "/h?count=2&huge=%d" % size).body
        lines = body.split(b"\n")
        assert lines[0] == b"id: 1"
        assert len(lines[1]) == size and lines[1].startswith(b'data: {"n":1,')
        assert json.loads(lines[1][6:])["n"] == 1
        assert sse_parse(body)[0][1] == expected([2])[0]


def test_keepalive(sse):
    s = Stream(sse, "/k?keepalive=0.05&first=newest")
    try:
        s.read_until(lambda s: s.body.count(b":\n\n") >= 2, 3, "keep-alives")
        assert s.body.replace(b":\n\n", b"") == b""
    finally:
        s.close()


def test_stall(sse):
    s = Stream(sse, "/st?stall=0.3&count=1")
    try:
        t = time.monotonic()
        s.read_until(lambda s: b"\r\n\r\n" in s.raw, 2, "the head")
        assert s.body == b""
        s.read_to_eof(3)
        assert time.monotonic() - t >= 0.25
        assert sse_parse(s.body)[0] == expected([1])
    finally:
        s.close()


def test_drip(sse):
    s = Stream(sse, "/d?count=1&drip=2&framing=chunked")
    try:
        s.read_to_eof(5)
    finally:
        s.close()
    body, done = dechunk(split_head(s.raw)[2])
    assert done and body == b'id: 1\ndata: {"n":1}\n\n'
    # Every byte is its own one-byte chunk.
    assert split_head(s.raw)[2].startswith(b"1\r\ni\r\n1\r\nd\r\n")
    assert s.reads > 3


def test_drop_fin_and_rst(sse):
    for mode, framing in (("fin", "close"), ("rst", "close"),
                          ("fin", "chunked")):
        s = Stream(sse, "/x?drop_after=30&drop=%s&framing=%s" % (mode, framing))
        try:
            s.read_to_eof(3)
        finally:
            s.close()
        assert s.body == b'id: 1\ndata: {"n":1}\n\nid: 2\ndata'[:30]
        assert len(s.body) == 30
        if framing == "chunked":
            assert dechunk(split_head(s.raw)[2])[1] is False
        if mode == "fin":
            assert not s.reset
    # drop_after=0: the head, then nothing.
    s = Stream(sse, "/x?drop_after=0&drop=fin")
    s.read_to_eof(3)
    s.close()
    assert s.body == b""


def test_drop_rst_is_a_reset(sse):
    """A reset shows up as ECONNRESET once the data is read."""
    s = Stream(sse, "/x?drop_after=25&drop=rst")
    try:
        s.read_to_eof(3)
    finally:
        s.close()
    assert len(s.body) == 25
    assert s.reset


# -- SSE: status, redirects, headers -----------------------------------------


def test_status_and_retry_after(sse):
    for code in (204, 404, 500, 503):
        r = http(sse, "GET", "/s?status=%d" % code)
        assert r.status == code
        assert r.header("Retry-After") is None
    r = http(sse, "GET", "/s?status=503&retry_after=7")
    assert r.header("Retry-After") == "7"
    r = http(sse, "GET", "/s?status=503&retry_after=date:30")
    when = email.utils.parsedate_to_datetime(r.header("Retry-After"))
    date = email.utils.parsedate_to_datetime(r.header("Date"))
    assert 29 <= (when - date).total_seconds() <= 32
    r = http(sse, "GET", "/s?status=503&retry_after=date&date_skew=-100")
    when = email.utils.parsedate_to_datetime(r.header("Retry-After"))
    date = email.utils.parsedate_to_datetime(r.header("Date"))
    assert 99 <= (when - date).total_seconds() <= 103


def test_fail_then_succeed(sse):
    target = "/ff?status=503&fail=2&retry_after=1&done=1&count=1"
    assert http(sse, "GET", target).status == 503
    assert http(sse, "GET", target).status == 503
    r = http(sse, "GET", target)
    assert r.status == 200
    assert sse_parse(r.body)[0] == expected([1])
    # The count is per path and switches, not per cursor.
    r = http(sse, "GET", target, [("Last-Event-ID", "5")])
    assert r.status == 200


def test_redirects(sse):
    for code in (301, 302, 303, 307, 308):
        r = http(sse, "GET", "/rd?redirect=%d&done=1&count=1" % code)
        assert r.status == code
        assert r.header("Location") == "/rd?done=1&count=1"
    r = http(sse, "GET", "/rd?redirect=302&loop=1")
    assert r.header("Location") == "/rd?redirect=302&loop=1"
    r = http(sse, "GET", "/rd?redirect=301&to_http=1&count=1")
    assert r.header("Location") == "http://test/rd?count=1"
    r = http(sse, "GET", "/rd?redirect=307&to=https%3A%2F%2Fexample.org%2Fx")
    assert r.header("Location") == "https://example.org/x"
    # urllib follows it to the stream.
    with urllib.request.urlopen(
            url(sse, "/rd?redirect=307&done=1&count=2"), timeout=TIMEOUT) as f:
        assert sse_parse(f.read())[0] == expected([1, 2])


def test_redirect_to_another_port(sse):
    r = http(sse, "GET", "/rd?redirect=307&to_port=8123&count=1")
    assert r.header("Location") == "http://test:8123/rd?count=1"
    s = socket.create_connection(sse, timeout=TIMEOUT)
    try:
        s.sendall(b"GET /rd?redirect=302&to_port=9&done=1 HTTP/1.1\r\n"
                  b"Host: [::1]:4000\r\nConnection: close\r\n\r\n")
        raw = b""
        while not complete(raw):
            raw += s.recv(65536)
    finally:
        s.close()
    assert parse(raw).header("Location") == "http://[::1]:9/rd?done=1"


def test_need_accept_and_ctype(sse):
    r = http(sse, "GET", "/a?need_accept=1&count=1")
    assert r.status == 403
    s = sse_get(sse, "/a?need_accept=1&count=1",
                [("Accept", "text/event-stream")])
    assert s.head[0] == 200
    s = sse_get(sse, "/a?count=1&ctype=text/plain")
    assert parse(s.raw).header("Content-Type") == "text/plain"
    s = sse_get(sse, "/a?count=1&ctype=none")
    assert parse(s.raw).header("Content-Type") is None


def test_requests_recorder(sse):
    http(sse, "POST", "/_reset")
    sse_get(sse, "/rec?count=1&x=%C3%A9",
            [("Last-Event-ID", "0"), ("Accept", "text/event-stream")])
    with urllib.request.urlopen(url(sse, "/_requests"), timeout=TIMEOUT) as f:
        reqs = json.load(f)
    assert len(reqs) == 1
    r = reqs[0]
    assert r["method"] == "GET" and r["path"] == "/rec"
    assert r["target"] == "/rec?count=1&x=%C3%A9"
    assert r["query"] == {"count": "1", "x": "\u00e9"}
    assert ["Last-Event-ID", "0"] in r["headers"]
    assert ["Accept", "text/event-stream"] in r["headers"]
    assert http(sse, "POST", "/_reset").status == 200
    assert http(sse, "GET", "/_requests").json() == []


def test_bad_request_and_disconnects(sse):
    # Garbage instead of HTTP, a client that vanishes mid-head and one that
    # vanishes mid-stream: the server keeps serving.
    s = socket.create_connection(sse, timeout=TIMEOUT)
    s.sendall(b"\x00\xff garbage\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 400")
    s.close()
    s = socket.create_connection(sse, timeout=TIMEOUT)
    s.sendall(b"GET /x HTTP/1.1\r\nHost")
    s.close()
    s = Stream(sse, "/x?huge=5000000")
    s.read_some()
    s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    s.close()
    assert sse_parse(sse_get(sse, "/x?count=1").body)[0] == expected([1])


# -- SSE: live ----------------------------------------------------------------


def test_publish_live(sse_live):
    s = Stream(sse_live, "/live", [("Last-Event-ID", "3")])
    try:
        s.read_until(lambda s: b"\r\n\r\n" in s.raw, 2, "the head")
        t = time.monotonic()
        r = http(sse_live, "POST", "/publish", body=b'{"hello":"world"}')
        assert r.json() == {"first": 4, "last": 4}
        s.read_until(lambda s: len(sse_parse(s.body)[0]) >= 1, 2, "event 4")
        assert time.monotonic() - t < 1.0
        assert sse_parse(s.body)[0] == [("message", '{"hello":"world"}', "4")]
        r = http(sse_live, "POST", "/publish?event=add", body=b"a\nb\r\nc")
        s.read_until(lambda s: len(sse_parse(s.body)[0]) >= 2, 2, "event 5")
        assert sse_parse(s.body)[0][1] == ("add", "a\nb\nc", "5")
    finally:
        s.close()
    # A late subscriber gets the published events too.
    body = sse_get(sse_live, "/late?done=1").body
    assert [e[2] for e in sse_parse(body)[0]] == ["1", "2", "3", "4", "5"]


def test_publish_throughput(sse_live):
    s = Stream(sse_live, "/live?first=newest")
    try:
        s.read_until(lambda s: b"\r\n\r\n" in s.raw, 2, "the head")
        t = time.monotonic()
        r = http(sse_live, "POST", "/publish?count=5000")
        assert r.json() == {"first": 4, "last": 5003}
        s.read_until(lambda s: s.body.endswith(b'id: 5003\ndata: {"n":5003}\n\n'),
                     10, "5000 events")
        assert time.monotonic() - t < 5
        events = sse_parse(s.body)[0]
        assert events == expected(range(4, 5004))
    finally:
        s.close()


# -- poll: _changes -----------------------------------------------------------


def test_changes_paging(poll):
    seen = []
    since = "0"
    for _ in range(10):
        r = http(poll, "GET", "/db/_changes?since=%s&limit=3" % since)
        assert r.status == 200
        assert r.header("Content-Type") == "application/json"
        page = r.json()
        if not page["results"]:
            assert page["last_seq"] == int(since) and page["pending"] == 0
            break
        seen += [c["seq"] for c in page["results"]]
        assert page["last_seq"] == page["results"][-1]["seq"]
        assert page["pending"] == 10 - seen[-1]
        since = str(page["last_seq"])
    assert seen == list(range(1, 11))
    c = http(poll, "GET", "/db/_changes?since=9").json()["results"][0]
    assert c["id"] == "doc-10" and c["changes"][0]["rev"].startswith("1-")
    # limit=0 acts as 1; since=now is the end.
    assert len(http(poll, "GET", "/db/_changes?limit=0").json()["results"]) == 1
    assert http(poll, "GET", "/db/_changes?since=now").json() == \
        {"results": [], "last_seq": 10, "pending": 0}
    assert http(poll, "GET", "/db/_changes?since=x").status == 400


def test_changes_opaque():
    with server("poll_server.py", "--docs", "4", "--opaque") as (h, p):
        page = http((h, p), "GET", "/db/_changes?limit=2").json()
        seqs = [c["seq"] for c in page["results"]]
        assert all(isinstance(s, str) and re.fullmatch(r"\d+-g1AAAA\w+", s)
                   for s in seqs)
        assert page["last_seq"] == seqs[-1]
        q = urllib.parse.quote(page["last_seq"], safe="")
        page2 = http((h, p), "GET", "/db/_changes?since=%s" % q).json()
        assert [c["id"] for c in page2["results"]] == ["doc-3", "doc-4"]
        end = http((h, p), "GET", "/db/_changes?since=%s" %
                   urllib.parse.quote(page2["last_seq"], safe="")).json()
        assert end["results"] == [] and end["last_seq"] == page2["last_seq"]


def test_longpoll_waits_for_a_change(poll_private):
    addr = poll_private
    s = Stream(addr, "/db/_changes?feed=longpoll&since=3&heartbeat=30")
    try:
        s.read_until(lambda s: s.body.count(b"\n") >= 2, 3, "heartbeats")
        assert s.body.strip(b"\n") == b""
        r = http(addr, "POST", "/db/doc", body=b'{"_id":"new"}')
        assert r.status == 201 and r.json()["seq"] == 4
        s.read_to_eof(3)
    finally:
        s.close()
    page = json.loads(s.body)  # the heartbeats are JSON whitespace
    assert [c["id"] for c in page["results"]] == ["new"]
    assert page["last_seq"] == 4 and page["pending"] == 0
    # Existing changes come back at once.
    r = http(addr, "GET", "/db/_changes?feed=longpoll&since=1")
    assert [c["seq"] for c in r.json()["results"]] == [2, 3, 4]
    # An update replaces the document's earlier change.
    http(addr, "POST", "/db/doc", body=b'{"_id":"doc-1"}')
    r = http(addr, "GET", "/db/_changes")
    assert [(c["id"], c["seq"]) for c in r.json()["results"]] == \
        [("doc-2", 2), ("doc-3", 3), ("new", 4), ("doc-1", 5)]


def test_longpoll_timeout(poll):
    t = time.monotonic()
    r = http(poll, "GET", "/db/_changes?feed=longpoll&since=now&timeout=150")
    assert 0.1 <= time.monotonic() - t < 2
    assert r.json() == {"results": [], "last_seq": 10, "pending": 0}


def test_etag_304(poll_private):
    addr = poll_private
    r = http(addr, "GET", "/db/_changes?since=0")
    tag = r.header("ETag")
    assert re.fullmatch(r'"[0-9a-f]+"', tag)
    r2 = http(addr, "GET", "/db/_changes?since=0", [("If-None-Match", tag)])
    assert r2.status == 304 and r2.body == b"" and r2.header("ETag") == tag
    # Weak comparison: W/ on either side still matches.
    r3 = http(addr, "GET", "/db/_changes?since=0",
              [("If-None-Match", '"nope", W/' + tag)])
    assert r3.status == 304
    http(addr, "POST", "/db/doc")
    r4 = http(addr, "GET", "/db/_changes?since=0", [("If-None-Match", tag)])
    assert r4.status == 200 and r4.header("ETag") != tag
    assert http(addr, "GET", "/db/_changes?etag=weak").header("ETag") \
        .startswith('W/"')
    assert http(addr, "GET", "/db/_changes?etag=none").header("ETag") is None


def test_429_then_success(poll):
    target = "/db/_changes?since=0&limit=1&status=429&fail=2&retry_after=2"
    for _ in range(2):
        r = http(poll, "GET", target)
        assert r.status == 429 and r.header("Retry-After") == "2"
    r = http(poll, "GET", target)
    assert r.status == 200 and r.json()["last_seq"] == 1
    r = http(poll, "GET", "/events?status=503&retry_after=date")
    assert r.status == 503
    email.utils.parsedate_to_datetime(r.header("Retry-After"))
    # _reset starts the count again.
    http(poll, "POST", "/_reset")
    assert http(poll, "GET", target).status == 429


# -- poll: json-server collection and ties ----------------------------------


def test_collection_filters_and_sort(poll):
    rows = http(poll, "GET", "/events").json()
    assert len(rows) == 20
    assert [r["id"] for r in rows] != list(range(1, 21)), "shuffled"
    r = http(poll, "GET", "/events?seq_gte=15&_sort=seq,id&_order=asc,asc")
    assert [x["seq"] for x in r.json()] == list(range(15, 21))
    assert r.header("X-Total-Count") is None
    r = http(poll, "GET", "/events?seq_gte=3&_sort=seq&_limit=4")
    assert [x["seq"] for x in r.json()] == [3, 4, 5, 6]
    assert r.header("X-Total-Count") == "18"
    # seq_gt is not an operator: json-server drops it and returns all.
    assert len(http(poll, "GET", "/events?seq_gt=8").json()) == 20
    r = http(poll, "GET", "/events?seq_lte=2&_sort=id&_order=desc")
    assert [x["id"] for x in r.json()] == [2, 1]
    assert http(poll, "GET", "/events?id=7").json()[0]["seq"] == 7


def test_tie_groups():
    # Page size 5: groups smaller than, equal to and larger than a page.
    with server("poll_server.py", "--ties", "1,3,1,5,1,8,1") as (h, p):
        addr = (h, p)
        rows = http(addr, "GET", "/events?_sort=seq,id&_order=asc,asc").json()
        sizes = {}
        for r in rows:
            sizes[r["seq"]] = sizes.get(r["seq"], 0) + 1
        assert sizes == {1: 1, 2: 3, 3: 1, 4: 5, 5: 1, 6: 8, 7: 1}
        assert [r["id"] for r in rows] == list(range(1, 21))

        # Inclusive paging with a boundary set gets through groups < page;
        # a group >= page fills a whole page at one cursor.
        cursor, boundary, got, stuck = 0, set(), [], None
        for _ in range(20):
            page = http(addr, "GET", "/events?seq_gte=%d&_sort=seq,id"
                        "&_order=asc,asc&_limit=5" % cursor).json()
            new = [r for r in page
                   if not (r["seq"] == cursor and r["id"] in boundary)]
            for r in new:
                if r["seq"] == cursor:
                    boundary.add(r["id"])
                else:
                    cursor, boundary = r["seq"], {r["id"]}
                got.append(r["id"])
            if not new:
                if len(page) >= 5 and all(r["seq"] == cursor for r in page):
                    stuck = cursor
                break
        assert stuck == 4, "the 5-row group fills a page: no progress"
        assert got == list(range(1, 11))

        # POST adds a row with the next seq, or a tie when asked.
        r = http(addr, "POST", "/events", body=b'{"seq": 7}')
        assert r.status == 201 and r.json()["id"] == 21
        tie = http(addr, "GET", "/events?seq=7&_sort=id").json()
        assert [x["id"] for x in tie] == [20, 21]
        r = http(addr, "POST", "/events?count=2")
        assert [x["seq"] for x in r.json()] == [8, 9]


def test_json_server_page_links(poll):
    r = http(poll, "GET", "/events?_sort=seq&_page=2&_limit=5")
    assert [x["seq"] for x in r.json()] == [6, 7, 8, 9, 10]
    assert r.header("X-Total-Count") == "20"
    link = r.header("Link")
    assert '<http://test/events?_sort=seq&_limit=5&_page=3>; rel="next"' in link
    assert 'rel="first"' in link and 'rel="prev"' in link \
        and 'rel="last"' in link


def next_link(header):
    """Tiny RFC 8288 split for the test: commas outside <> and quotes."""
    links, cur, depth, quoted, esc = [], "", 0, False, False
    for ch in header:
        if esc:
            cur += ch
            esc = False
            continue
        if quoted and ch == "\\":
            esc = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            depth += 1
        elif ch == ">" and not quoted:
            depth -= 1
        elif ch == "," and not quoted and depth == 0:
            links.append(cur)
            cur = ""
            continue
        cur += ch
    links.append(cur)
    for link in links:
        target = link[link.index("<") + 1:link.index(">")]
        params = re.findall(r';\s*([A-Za-z]+)="((?:[^"\\]|\\.)*)"', link)
        rels = [v for k, v in params if k.lower() == "rel"]
        anchor = any(k.lower() == "anchor" for k, _ in params)
        if rels and not anchor and "next" in rels[0].lower().split():
            return target
    return None


def test_paged_link_next(poll):
    for style in ("absolute", "relative", "multi", "tricky"):
        target = "/paged?per_page=6&link=%s" % style
        ids = []
        for _ in range(10):
            r = http(poll, "GET", target)
            ids += [x["id"] for x in r.json()]
            nxt = next_link(", ".join(r.header_all("Link")))
            if nxt is None:
                break
            target = nxt.replace("http://test", "")
            assert target.startswith("/paged?")
        assert ids == list(range(1, 21)), style
    r = http(poll, "GET", "/paged?per_page=6&link=multi")
    assert len(r.header_all("Link")) == 3


def test_after_api(poll):
    r = http(poll, "GET", "/v1/events?limit=7").json()
    assert [x["id"] for x in r["data"]] == list(range(1, 8)) and r["has_more"]
    r = http(poll, "GET", "/v1/events?after=17&limit=7").json()
    assert [x["id"] for x in r["data"]] == [18, 19, 20] and not r["has_more"]


def reject(constant):
    raise ValueError("%s is not JSON" % constant)


def test_broken_upstreams(poll):
    for kind in ("truncated", "garbage", "empty", "html", "nan", "trailing"):
        r = http(poll, "GET", "/bad/json?kind=%s" % kind)
        assert r.status == 200
        with pytest.raises(ValueError):
            json.loads(r.body, parse_constant=reject)
    assert "results" not in http(poll, "GET", "/bad/noitems").json()
    assert isinstance(http(poll, "GET", "/bad/notarray").json()["results"], dict)
    big = http(poll, "GET", "/bad/bigint")
    assert b'"seq":18446744073709551616' in big.body
    assert big.json()["last_seq"] == 2 ** 64
    assert http(poll, "GET", "/bad/bigstring").json()["last_seq"] == \
        "18446744073709551616"
    assert http(poll, "GET", "/bad/real").json()["last_seq"] == 1.5
    assert "seq" not in http(poll, "GET", "/bad/nocursor").json()["results"][0]
    assert http(poll, "GET", "/bad/nothing").status == 404


def test_poll_framing_and_keepalive(poll):
    r = http(poll, "GET", "/db/_changes?limit=1&framing=chunked")
    assert r.header("Transfer-Encoding") == "chunked"
    assert r.json()["last_seq"] == 1
    s = Stream(poll, "/db/_changes?limit=1&framing=close")
    s.read_to_eof()
    s.close()
    assert parse(s.raw).header("Content-Length") is None
    assert json.loads(s.body)["last_seq"] == 1
    # Two requests on one connection.
    c = socket.create_connection(poll, timeout=TIMEOUT)
    try:
        for since in (0, 5):
            c.sendall(request_bytes("GET", "/db/_changes?limit=1&since=%d"
                                    % since, close=False))
            raw = b""
            while not complete(raw):
                raw += c.recv(65536)
            assert parse(raw).json()["last_seq"] == since + 1
    finally:
        c.close()


def test_poll_recorder_and_redirect(poll):
    http(poll, "POST", "/_reset")
    with urllib.request.urlopen(
            url(poll, "/db/_changes?limit=2&redirect=302"), timeout=TIMEOUT) as f:
        assert json.load(f)["last_seq"] == 2
    reqs = http(poll, "GET", "/_requests").json()
    assert [r["target"] for r in reqs] == ["/db/_changes?limit=2&redirect=302",
                                           "/db/_changes?limit=2"]
    only = http(poll, "GET", "/_requests?path=/db/_changes").json()
    assert len(only) == 2
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url(poll, "/nowhere"), timeout=TIMEOUT)
    assert e.value.code == 404
