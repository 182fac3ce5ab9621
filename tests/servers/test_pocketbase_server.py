"""Checks the PocketBase reference server against its wire contract
(/work/shared/protocols/pocketbase.md), over real HTTP.

    /usr/bin/python3 -m pytest -q tests/servers/test_pocketbase_server.py

Every wait is bounded: socket timeouts and waits on a condition with a
deadline. Where a test must show that something did NOT arrive, it sends a
second, allowed event afterwards and checks that only that one came (the
server delivers in order unless told to reorder).
"""

import base64
import contextlib
import http.client
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import spawn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
PEERS = os.path.join(ROOT, "tests", "peers")
TIMEOUT = 5.0
SU_EMAIL = "admin@example.com"
SU_PASSWORD = "secret-password-1"
PB_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z")
GENERIC_400 = {"data": {}, "message": "Something went wrong while processing "
               "your request.", "status": 400}
_names = itertools.count(1)


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
        time.sleep(0.01)


def pb_now():
    ms = int(time.time() * 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000)) + \
        ".%03dZ" % (ms % 1000)


def after_ms(stamp):
    """Waits until the clock (shared with the server) is past a `created`
    value, so that the next record gets a later millisecond."""
    wait_for(lambda: pb_now() > stamp, 1, "the clock to pass %s" % stamp)


class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)


def call(addr, method, path, body=None, token=None, headers=None, raw=None):
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=TIMEOUT)
    hs = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        hs.setdefault("Content-Type", "application/json")
    if token:
        hs["Authorization"] = token
    try:
        conn.request(method, path, body=data, headers=hs)
        r = conn.getresponse()
        return Resp(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


def ctl(addr, path, body=None, method="POST"):
    r = call(addr, method, path, body if method == "POST" else None)
    assert r.status == 200, (path, r.status, r.body)
    return r.json()


def q(**params):
    return "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def login(addr, email=SU_EMAIL, password=SU_PASSWORD, coll="_superusers"):
    r = call(addr, "POST", "/api/collections/%s/auth-with-password" % coll,
             {"identity": email, "password": password})
    assert r.status == 200, r.body
    return r.json()["token"]


def claims(token):
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def new_collection(addr, **kw):
    name = kw.pop("name", None) or "c%d" % next(_names)
    body = {"name": name, "fields": ["status", "n"]}
    body.update(kw)
    ctl(addr, "/_pb/collections", body)
    return name


def create(addr, coll, records, **kw):
    return ctl(addr, "/_pb/create", dict(collection=coll, records=records, **kw))


def listing(addr, coll, token=None, **params):
    r = call(addr, "GET", "/api/collections/%s/records%s" % (coll, q(**params)),
             token=token)
    return r


def items(addr, coll, token, **params):
    r = listing(addr, coll, token, **params)
    assert r.status == 200, r.body
    return r.json()["items"]


class Sse:
    """GET /api/realtime on a raw socket; splits the chunked body into the
    chunks the server wrote and the SSE frames they carry."""

    def __init__(self, addr, path="/api/realtime"):
        self.sock = socket.create_connection(addr, timeout=TIMEOUT)
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: t\r\nAccept: "
                           "text/event-stream\r\n\r\n" % path).encode())
        self.raw = b""
        self.head = None
        self.chunks = []
        self.terminated = False  # the 0-length chunk arrived
        self.eof = False
        self._pos = 0
        self._frames_taken = 0
        self.read_until(lambda: self.chunks, "PB_CONNECT")
        first = self.chunks[0]
        m = re.match(rb"id:([A-Za-z0-9]+)\n", first)
        self.client_id = m.group(1).decode()

    def _parse(self):
        if self.head is None:
            i = self.raw.find(b"\r\n\r\n")
            if i < 0:
                return
            lines = self.raw[:i].decode("latin-1").split("\r\n")
            self.status = int(lines[0].split(" ")[1])
            self.head = [tuple(x.split(": ", 1)) for x in lines[1:]]
            self._pos = i + 4
        while not self.terminated:
            j = self.raw.find(b"\r\n", self._pos)
            if j < 0:
                return
            n = int(self.raw[self._pos:j], 16)
            if len(self.raw) < j + 2 + n + 2:
                return
            assert self.raw[j + 2 + n:j + 4 + n] == b"\r\n", "bad chunk end"
            if n == 0:
                self.terminated = True
            else:
                self.chunks.append(self.raw[j + 2:j + 2 + n])
            self._pos = j + 4 + n

    def read_some(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        try:
            b = self.sock.recv(65536)
        except socket.timeout:
            return
        except ConnectionResetError:
            b = b""
        if not b:
            self.eof = True
        self.raw += b
        self._parse()

    def read_until(self, pred, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise AssertionError("no %s (eof=%s, terminated=%s): %r"
                                     % (what, self.eof, self.terminated,
                                        self.raw[-400:]))
            self.read_some(left)

    def header(self, name):
        return dict((k.lower(), v) for k, v in self.head).get(name.lower())

    def events(self):
        """(name, data) of every record event so far (PB_CONNECT left out)."""
        out = []
        for c in self.chunks[1:]:
            m = re.fullmatch(rb"id:([^\n]*)\nevent:([^\n]*)\ndata:([^\n]*)\n\n", c)
            assert m, c
            assert m.group(1).decode() == self.client_id
            out.append((m.group(2).decode(), json.loads(m.group(3))))
        return out

    def wait_events(self, n, what="events", timeout=TIMEOUT):
        self.read_until(lambda: len(self.chunks) - 1 >= n, what, timeout)
        return self.events()

    def wait_end(self, timeout=TIMEOUT):
        self.read_until(lambda: self.terminated or self.eof, "end of stream",
                        timeout)

    def subscribe(self, addr, topics, token=None):
        return call(addr, "POST", "/api/realtime",
                    {"clientId": self.client_id, "subscriptions": topics},
                    token=token)

    def close(self):
        self.sock.close()


@contextlib.contextmanager
def server(*args):
    """A server that must stop cleanly and log nothing to stderr."""
    proc, host, port = spawn.start("pocketbase_server.py", *args)
    try:
        yield (host, port)
    finally:
        code = spawn.stop(proc)
    assert code == 0, "exit %s:\n%s" % (code, proc.stderr_text)
    assert proc.stderr_text == "", proc.stderr_text


@pytest.fixture(scope="module")
def shared():
    with server() as addr:
        yield addr


@pytest.fixture
def pb(shared):
    """The shared server with its faults and recorder cleared."""
    ctl(shared, "/_reset")
    yield shared
    ctl(shared, "/_pb/drop_streams", {"clean": True})
    ctl(shared, "/_reset")


@pytest.fixture
def su(pb):
    return login(pb)


@pytest.fixture(scope="module")
def legacy():
    with server("--legacy", "--realtime-idle", "0.6",
                "--realtime-lifetime", "0.3") as addr:
        yield addr


# -- basics -------------------------------------------------------------------


def test_health_date_and_unknown_route(pb):
    r = call(pb, "GET", "/api/health")
    assert r.status == 200
    assert r.body == b'{"code":200,"data":{},"message":"API is healthy."}\n'
    assert r.header("Content-Type") == "application/json"
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", r.header("Date"))
    r = call(pb, "GET", "/api/nope")
    assert r.status == 404
    assert r.json() == {"data": {}, "message": "The requested resource wasn't "
                        "found.", "status": 404}
    assert r.header("Date")


def test_recorder_keeps_api_not_control(pb, su):
    name = new_collection(pb)
    listing(pb, name, su, perPage=2)
    got = ctl(pb, "/_requests", method="GET")
    paths = [x["path"] for x in got]
    assert "/api/collections/%s/records" % name in paths
    assert not any(p.startswith("/_pb/") for p in paths)
    rec = [x for x in got if x["path"].endswith("/records")][0]
    assert rec["query"]["perPage"] == "2"


# -- records list -------------------------------------------------------------


def test_list_paging_clamping_and_totals(pb, su):
    name = new_collection(pb)
    create(pb, name, [{"status": "s", "n": i} for i in range(7)])
    pages = [listing(pb, name, su, page=p, perPage=3, sort="n").json()
             for p in (1, 2, 3, 4)]
    assert [[x["n"] for x in pg["items"]] for pg in pages] == \
        [[0, 1, 2], [3, 4, 5], [6], []]
    assert all(pg["totalItems"] == 7 and pg["totalPages"] == 3 and
               pg["perPage"] == 3 for pg in pages)
    assert [pg["page"] for pg in pages] == [1, 2, 3, 4]
    for raw, used in (("0", 30), ("-5", 30), ("5000", 1000), ("1000", 1000),
                      ("1", 1)):
        assert listing(pb, name, su, perPage=raw).json()["perPage"] == used, raw
    assert listing(pb, name, su, page=0).json()["page"] == 1
    for flag in ("1", "true", "t", "TRUE"):
        r = listing(pb, name, su, skipTotal=flag, perPage=2).json()
        assert (r["totalItems"], r["totalPages"]) == (-1, -1)
        assert len(r["items"]) == 2
    r = listing(pb, name, su, skipTotal="0").json()
    assert (r["totalItems"], r["totalPages"]) == (7, 1)
    for bad in ({"page": "x"}, {"perPage": "1.5"}, {"skipTotal": "yes"}):
        r = listing(pb, name, su, **bad)
        assert (r.status, r.json()) == (400, GENERIC_400), bad


def test_list_record_shape_and_collection_lookup(pb, su):
    name = new_collection(pb, fields=["status", "n", "total"])
    before = ctl(pb, "/_pb/records?collection=%s" % name, method="GET")
    create(pb, name, [{"status": "paid", "n": 1, "total": 12.5,
                       "created": "1999-01-01 00:00:00.000Z"}])
    raw = listing(pb, name, su).body
    item = json.loads(raw)["items"][0]
    assert list(item) == sorted(item)  # keys sorted, as Go writes maps
    assert set(item) == {"collectionId", "collectionName", "created", "id",
                         "n", "status", "total", "updated"}
    assert re.fullmatch(r"[a-z0-9]{15}", item["id"])
    assert PB_TIME.fullmatch(item["created"]) and item["created"] > "2020"
    assert item["updated"] == item["created"]
    assert item["total"] == 12.5 and b'"n":1,' in raw
    assert before == []
    # By name without case, or by id; never with a trailing slash.
    assert len(items(pb, name.upper(), su)) == 1
    assert len(items(pb, item["collectionId"], su)) == 1
    r = call(pb, "GET", "/api/collections/%s/records/" % name, token=su)
    assert r.status == 404
    r = listing(pb, "missing_coll", su)
    assert (r.status, r.json()["message"]) == (404, "Missing collection context.")
    # fields= picks keys; expand= names nothing here and changes nothing.
    assert items(pb, name, su, fields="id,n") == [{"id": item["id"], "n": 1}]
    assert items(pb, name, su, expand="customer") == [item]
    assert items(pb, name, su, fields="*,status:excerpt(2,true)")[0]["status"] \
        == "pa..."


def test_list_sort(pb, su):
    name = new_collection(pb)
    create(pb, name, [{"status": s, "n": n} for s, n in
                      (("b", 2), ("a", 3), ("b", 1), ("a", 10))])
    assert [x["n"] for x in items(pb, name, su, sort="n")] == [1, 2, 3, 10]
    assert [x["n"] for x in items(pb, name, su, sort="-n")] == [10, 3, 2, 1]
    assert [x["n"] for x in items(pb, name, su, sort="+n")] == [1, 2, 3, 10]
    assert [(x["status"], x["n"]) for x in items(pb, name, su, sort="status,-n")] \
        == [("a", 10), ("a", 3), ("b", 2), ("b", 1)]
    assert [x["n"] for x in items(pb, name, su, sort="-@rowid")] == [10, 1, 3, 2]
    got = [(x["created"], x["id"]) for x in items(pb, name, su, sort="created,id")]
    assert got == sorted(got)
    got = [(x["created"], x["id"]) for x in items(pb, name, su, sort="-created,-id")]
    assert got == sorted(got, reverse=True)
    for bad in ("nope", "n,", "-", ",".join(["n"] * 9), "password"):
        r = listing(pb, name, su, sort=bad)
        assert (r.status, r.json()) == (400, GENERIC_400), bad


def test_list_filter_operators(pb, su):
    name = new_collection(pb, fields=["status", "n", {"name": "extra", "type": "json"}])
    create(pb, name, [
        {"status": "Paid", "n": 5, "extra": {"k": 1}},
        {"status": "pending", "n": 12},
        {"status": "", "n": 0},
        {"status": 'say "hi"', "n": 7},
        {"status": "it's", "n": 8},
        {"status": "50%_off", "n": 9},
    ])

    def ns(flt):
        r = listing(pb, name, su, filter=flt, sort="n")
        assert r.status == 200, (flt, r.body)
        return [x["n"] for x in r.json()["items"]]

    assert ns('status = "Paid"') == [5]
    assert ns("status = 'Paid'") == [5]
    assert ns('status != "Paid"') == [0, 7, 8, 9, 12]
    assert ns("n > 7") == [8, 9, 12]
    assert ns("n >= 7 && n < 9") == [7, 8]
    assert ns("n <= 0 || n = 12") == [0, 12]
    assert ns("n > 5 && (status ~ 'pend' || status ~ 'IT')") == [8, 12]
    assert ns('status ~ "paid"') == [5]  # contains, ASCII case-insensitive
    assert ns('status ~ "pa%"') == [5]  # a % makes it a LIKE pattern
    assert ns('status ~ "%\\_off"') == [9]
    assert ns('status ~ "5_\\%%"') == [9]  # _: any one char; escaped %: itself
    assert ns('status ~ "0%_"') == []  # a pattern is anchored
    assert ns('status !~ "a"') == [0, 8, 9, 12]
    assert ns('status = "say \\"hi\\""') == [7]
    assert ns("status = 'it\\'s'") == [8]
    assert ns('status = ""') == [0]
    assert ns('extra = ""') == [0, 7, 8, 9, 12]  # "" also matches null
    assert ns("extra = null") == [0, 7, 8, 9, 12]
    assert ns('n > 6 // a comment\n && n < 9') == [7, 8]
    assert ns("n = 5.0 || n = -1") == [5]
    assert ns("(" * 100 + "n = 5" + ")" * 100) == [5]
    assert ns('n > "6"') == [7, 8, 9, 12]  # numeric text compares as a number
    assert ns("created > '2000-01-01 00:00:00.000Z' && id != ''") == \
        [0, 5, 7, 8, 9, 12]
    for bad in ("nope = 1", "n >", "(n > 1", "n > 1)", "n >> 1", "n = 'x",
                "n = 1 &&", "()", "strftime('%Y', created) = '2026'",
                "@collection.other.x = 1", "n & 1",
                "(" * 600 + "n = 1" + ")" * 600):
        r = listing(pb, name, su, filter=bad)
        assert (r.status, r.json()) == (400, GENERIC_400), bad


def test_filter_length_limit(pb, su):
    name = new_collection(pb)
    create(pb, name, [{"status": "x", "n": 1}])
    base = 'status != "'
    ok = base + "a" * (3500 - len(base) - 1) + '"'
    assert len(ok.encode()) == 3500
    r = listing(pb, name, su, filter=ok)
    assert r.status == 200 and len(r.json()["items"]) == 1
    r = listing(pb, name, su, filter=ok[:-1] + 'a"')
    assert (r.status, r.json()) == (400, GENERIC_400)
    # Bytes count, not characters.
    r = listing(pb, name, su, filter=base + "é" * 1745 + '"')
    assert r.status == 400


def test_tie_burst_and_the_compound_cursor(pb, su):
    """A same_ms burst shares one `created`; tether's (created, id) cursor
    filter pages through it without losing or repeating a record."""
    name = new_collection(pb)
    first = create(pb, name, [{"status": "paid", "n": 0}])
    after_ms(first["created"][0])
    burst = create(pb, name, [{"status": "paid" if i % 4 else "void", "n": i}
                              for i in range(1, 12)], same_ms=True)
    assert len(set(burst["created"])) == 1
    assert all(PB_TIME.fullmatch(c) for c in burst["created"])
    after_ms(burst["created"][0])
    after = create(pb, name, [{"status": "paid", "n": 99}])
    everything = items(pb, name, su, sort="created,id", perPage=100)
    want = [x["id"] for x in everything if x["status"] == "paid"]
    assert first["ids"][0] == want[0] and after["ids"][0] == want[-1]
    # Inside the tie, the id breaks it: bytewise.
    tie = [x["id"] for x in everything if x["created"] == burst["created"][0]]
    assert tie == sorted(tie) and len(tie) >= 11

    w = everything[-1]["created"]
    c, i = "", ""
    got = []
    for _ in range(20):
        flt = ('(created > "%s" || (created = "%s" && id > "%s")) && '
               'created <= "%s" && (status = "paid")' % (c, c, i, w))
        r = listing(pb, name, su, page=1, perPage=3, skipTotal=1,
                    sort="created,id", filter=flt).json()
        got += [x["id"] for x in r["items"]]
        if r["items"]:
            c, i = r["items"][-1]["created"], r["items"][-1]["id"]
        if len(r["items"]) < r["perPage"]:
            break
    assert got == want
    # Only `created > C` loses the rest of a tie.
    mid = [x for x in everything if x["created"] == burst["created"][0]][3]
    lossy = items(pb, name, su, sort="created,id",
                  filter='created > "%s"' % mid["created"])
    assert [x["n"] for x in lossy] == [99]


def test_offsets_collection_filter_and_unique_index(pb, su):
    name = new_collection(pb, fields=["consumer_group", "collection", "offset"],
                          unique=[["consumer_group", "collection"]])
    create(pb, name, [{"consumer_group": "g", "collection": "orders",
                       "offset": "a|b"},
                      {"consumer_group": "g", "collection": "other", "offset": "x"}])
    got = items(pb, name, su, filter='consumer_group = "g" && collection = "orders"')
    assert [x["offset"] for x in got] == ["a|b"]
    r = call(pb, "POST", "/api/collections/%s/records" % name,
             {"consumer_group": "g", "collection": "orders", "offset": "c|d"}, su)
    assert r.status == 400
    assert r.json()["data"]["consumer_group"]["code"] == "validation_not_unique"
    assert r.json()["message"] == "Failed to create record."
    r = call(pb, "PATCH", "/api/collections/%s/records/%s" % (name, got[0]["id"]),
             {"offset": "c|d"}, su)
    assert r.status == 200 and r.json()["offset"] == "c|d"


def test_late_commit_visibility_order(pb, su):
    """A record stamped first but committed late shows up after one stamped
    later; its realtime event fires only when it becomes visible."""
    name = new_collection(pb, listRule="")
    s = Sse(pb)
    try:
        assert s.subscribe(pb, [name + "/*"]).status == 204
        late = create(pb, name, [{"status": "late", "n": 1}], lag_ms=400)
        after_ms(late["created"][0])
        early = create(pb, name, [{"status": "early", "n": 2}])
        assert late["created"][0] < early["created"][0]
        assert [x["n"] for x in items(pb, name, su, sort="created,id")] == [2]
        recs = ctl(pb, "/_pb/records?collection=" + name, method="GET")
        assert [(r["record"]["n"], r["visible"]) for r in recs] == \
            [(1, False), (2, True)]
        r = call(pb, "GET", "/api/collections/%s/records/%s"
                 % (name, late["ids"][0]), token=su)
        assert r.status == 404  # not committed yet
        ev = s.wait_events(1, "the early event")
        assert [e[1]["record"]["n"] for e in ev] == [2]
        ev = s.wait_events(2, "the late event")
        assert [(e[1]["action"], e[1]["record"]["n"]) for e in ev] == \
            [("create", 2), ("create", 1)]
        assert [x["n"] for x in items(pb, name, su, sort="created,id")] == [1, 2]
    finally:
        s.close()


# -- single records -----------------------------------------------------------


def test_crud_codes(pb, su):
    name = new_collection(pb)
    base = "/api/collections/%s/records" % name
    r = call(pb, "POST", base, {"status": "new", "n": 1,
                                "created": "2000-01-01 00:00:00.000Z"}, su)
    assert r.status == 200
    rec = r.json()
    assert rec["status"] == "new" and rec["created"] > "2020"
    rid = rec["id"]
    r = call(pb, "GET", base + "/" + rid, token=su)
    assert (r.status, r.json()) == (200, rec)
    time.sleep(0.002)  # so that `updated` moves by at least 1 ms
    r = call(pb, "PATCH", base + "/" + rid, {"status": "paid", "id": "zzz"}, su)
    assert r.status == 200
    assert r.json()["status"] == "paid" and r.json()["id"] == rid
    assert r.json()["created"] == rec["created"] < r.json()["updated"]
    r = call(pb, "DELETE", base + "/" + rid, token=su)
    assert (r.status, r.body) == (204, b"")
    for method in ("GET", "PATCH", "DELETE"):
        r = call(pb, method, base + "/" + rid, {} if method == "PATCH" else None, su)
        assert r.status == 404, method
        assert r.json()["message"] == "The requested resource wasn't found."

    mine = "abcdefghij12345"
    assert call(pb, "POST", base, {"id": mine, "n": 2}, su).json()["id"] == mine
    r = call(pb, "POST", base, {"id": mine, "n": 3}, su)
    assert r.status == 400
    assert r.json() == {"data": {"id": {"code": "validation_not_unique",
                                        "message": "Value must be unique."}},
                        "message": "Failed to create record.", "status": 400}
    for bad in ("short", "ABCDEFGHIJ12345", "abcdefghij123456"):
        r = call(pb, "POST", base, {"id": bad}, su)
        assert r.status == 400 and "id" in r.json()["data"], bad
    r = call(pb, "POST", base, raw=b"{not json", token=su,
             headers={"Content-Type": "application/json"})
    assert (r.status, r.json()["message"]) == (400, "Failed to read the submitted data.")
    # multipart/form-data, as the SDK sends it with files (plain fields here).
    form = (b"--XyZ\r\nContent-Disposition: form-data; name=\"status\"\r\n\r\n"
            b"multi\r\n--XyZ\r\nContent-Disposition: form-data; "
            b"name=\"@jsonPayload\"\r\n\r\n{\"n\":4}\r\n--XyZ--\r\n")
    r = call(pb, "POST", base, raw=form, token=su,
             headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert r.status == 200 and (r.json()["status"], r.json()["n"]) == ("multi", 4)

    # Rules: createRule null is superusers only; "" lets a guest in.
    r = call(pb, "POST", base, {"n": 5})
    assert (r.status, r.json()["message"]) == (403, "Only superusers can perform "
                                               "this action.")
    public = new_collection(pb, listRule="", createRule="")
    r = call(pb, "POST", "/api/collections/%s/records" % public, {"n": 6})
    assert r.status == 200 and r.json()["n"] == 6
    r = call(pb, "DELETE", "/api/collections/%s/records/%s" % (public, r.json()["id"]))
    assert r.status == 403


def test_create_collection_api(pb, su):
    body = {"name": "api%d" % next(_names), "type": "base", "listRule": None,
            "fields": [{"name": "key", "type": "text", "required": True},
                       {"name": "n", "type": "number"}],
            "indexes": ["CREATE UNIQUE INDEX idx_k ON x (key, n)"]}
    r = call(pb, "POST", "/api/collections", body)
    assert (r.status, r.json()["message"]) == \
        (401, "The request requires valid record authorization token.")
    r = call(pb, "POST", "/api/collections", body, su)
    assert r.status == 200 and re.fullmatch(r"pbc_\d{10}", r.json()["id"])
    name = body["name"]
    base = "/api/collections/%s/records" % name
    rec = call(pb, "POST", base, {"key": "a", "n": "7"}, su).json()
    assert "created" not in rec and rec["n"] == 7  # no autodate field declared
    r = call(pb, "POST", base, {"key": "a", "n": 7}, su)
    assert r.status == 400
    assert r.json()["data"]["key"]["code"] == "validation_not_unique"
    for p in ({"sort": "created"}, {"filter": 'created > ""'}):
        assert listing(pb, name, su, **p).status == 400
    body2 = dict(body, name="api%d" % next(_names), indexes=[],
                 fields=body["fields"] + [
                     {"name": "created", "type": "autodate", "onCreate": True},
                     {"name": "updated", "type": "autodate", "onCreate": True,
                      "onUpdate": True}])
    assert call(pb, "POST", "/api/collections", body2, su).status == 200
    rec = call(pb, "POST", "/api/collections/%s/records" % body2["name"],
               {"key": "a"}, su).json()
    assert PB_TIME.fullmatch(rec["created"]) and rec["updated"] == rec["created"]
    assert call(pb, "POST", "/api/collections", body2, su).status == 400  # exists


# -- auth -----------------------------------------------------------------------


def test_password_auth_and_jwt(pb):
    r = call(pb, "POST", "/api/collections/_superusers/auth-with-password",
             {"identity": SU_EMAIL, "password": SU_PASSWORD})
    assert r.status == 200
    body = r.json()
    assert set(body) == {"record", "token"}
    rec = body["record"]
    assert rec["email"] == SU_EMAIL and rec["collectionName"] == "_superusers"
    assert "password" not in rec and "tokenKey" not in rec
    token = body["token"]
    head = token.split(".")[0]
    assert json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))) == \
        {"alg": "HS256", "typ": "JWT"}
    assert "=" not in token
    cl = claims(token)
    assert set(cl) == {"collectionId", "exp", "id", "refreshable", "type"}
    assert (cl["type"], cl["refreshable"], cl["id"], cl["collectionId"]) == \
        ("auth", True, rec["id"], rec["collectionId"])
    assert abs(cl["exp"] - (time.time() + 86400)) < 5
    for bad in ({"identity": SU_EMAIL, "password": "wrong"},
                {"identity": "nobody@example.com", "password": SU_PASSWORD},
                {"identity": "", "password": SU_PASSWORD},
                {"identity": SU_EMAIL, "password": "x" * 256}, {}):
        r = call(pb, "POST", "/api/collections/_superusers/auth-with-password", bad)
        assert r.json() == {"data": {}, "message": "Failed to authenticate.",
                            "status": 400}, bad
    name = new_collection(pb)
    for coll in (name, "missing"):
        r = call(pb, "POST", "/api/collections/%s/auth-with-password" % coll,
                 {"identity": SU_EMAIL, "password": SU_PASSWORD})
        assert r.status == 404
        assert r.json()["message"] == "Missing or invalid auth collection context."
    # The Bearer prefix is optional and its case does not matter.
    create(pb, name, [{"n": 1}])
    for prefix in ("", "Bearer ", "bearer ", "BEARER "):
        assert len(items(pb, name, prefix + token)) == 1, prefix


def test_mfa_fault(pb):
    ctl(pb, "/_pb/faults", {"auth_mfa": True})
    r = call(pb, "POST", "/api/collections/_superusers/auth-with-password",
             {"identity": SU_EMAIL, "password": SU_PASSWORD})
    assert r.status == 401
    body = r.json()
    assert set(body) == {"mfaId"} and len(body["mfaId"]) == 15
    # A wrong password still fails first: MFA is the second factor.
    r = call(pb, "POST", "/api/collections/_superusers/auth-with-password",
             {"identity": SU_EMAIL, "password": "wrong"})
    assert r.status == 400


def test_auth_status_fault(pb):
    ctl(pb, "/_pb/faults", {"auth_status": 503, "auth_fail": 2})
    for _ in range(2):
        r = call(pb, "POST", "/api/collections/_superusers/auth-with-password",
                 {"identity": SU_EMAIL, "password": SU_PASSWORD})
        assert r.status == 503 and r.json()["status"] == 503
        assert r.header("Retry-After") is None
    token = login(pb)  # the third one passes
    assert claims(token)["type"] == "auth"


def test_expired_or_bad_token_is_a_guest(pb):
    closed = new_collection(pb)  # listRule null
    owned = new_collection(pb, fields=["owner", "n"], listRule="owner = @request.auth.id")
    email = "u%d@example.com" % next(_names)
    uid = ctl(pb, "/_pb/users", {"email": email, "password": "pw-123456"})["id"]
    create(pb, closed, [{"n": 1}])
    create(pb, owned, [{"owner": uid, "n": 1}, {"owner": "someoneelse1234", "n": 2}])
    su = login(pb)
    user = login(pb, email, "pw-123456", "users")
    assert [x["n"] for x in items(pb, owned, user)] == [1]
    assert [x["n"] for x in items(pb, owned, su)] == [1, 2]
    assert items(pb, owned, None) == []
    # Only superusers may name @request./@collection. in filter or sort.
    for param, value, special in (("filter", "owner = @request.auth.id", "@request."),
                                  ("sort", "@collection.x.y", "@collection.")):
        r = listing(pb, owned, user, **{param: value})
        assert (r.status, r.json()["message"]) == \
            (403, "Only superusers can filter by " + special)
    assert len(items(pb, owned, su, filter="owner != @request.auth.id")) == 2

    parts = su.split(".")
    tampered = parts[0] + "." + parts[1] + "." + parts[2][::-1]
    for bad in (tampered, "garbage", "a.b.c"):
        r = listing(pb, closed, bad)
        assert (r.status, r.json()["message"]) == \
            (403, "Only superusers can perform this action."), bad

    try:
        ctl(pb, "/_pb/token_ttl", {"collection": "_superusers", "seconds": 0})
        ctl(pb, "/_pb/token_ttl", {"collection": "users", "seconds": 0})
        old_su = login(pb)
        old_user = login(pb, email, "pw-123456", "users")
        assert claims(old_su)["exp"] <= time.time()
        # Silently a guest: 403 where only superusers may list, and an empty
        # page (not 401) where a rule filters.
        r = listing(pb, closed, old_su)
        assert (r.status, r.json()["message"]) == \
            (403, "Only superusers can perform this action.")
        r = listing(pb, owned, old_user)
        assert r.status == 200 and r.json()["items"] == []
        r = call(pb, "POST", "/api/collections/_superusers/auth-refresh", token=old_su)
        assert r.json() == {"data": {}, "message": "The request requires valid "
                            "record authorization token.", "status": 401}
    finally:
        ctl(pb, "/_pb/token_ttl", {"collection": "_superusers", "seconds": 86400})
        ctl(pb, "/_pb/token_ttl", {"collection": "users", "seconds": 432000})

    r = call(pb, "POST", "/api/collections/_superusers/auth-refresh", token="junk")
    assert r.status == 401
    r = call(pb, "POST", "/api/collections/_superusers/auth-refresh", token=user)
    assert (r.status, r.json()["message"]) == \
        (403, "The request requires auth record from users collection.")
    wait_for(lambda: int(time.time()) > claims(user)["exp"] - 432000, 2,
             "the next second")
    r = call(pb, "POST", "/api/collections/users/auth-refresh", token=user)
    assert r.status == 200
    assert claims(r.json()["token"])["exp"] > claims(user)["exp"]
    assert r.json()["record"]["id"] == uid


def test_password_change_revokes_tokens():
    with server("--superuser", "root@example.com:first-password") as addr:
        token = login(addr, "root@example.com", "first-password")
        name = new_collection(addr)
        assert listing(addr, name, token).status == 200
        ctl(addr, "/_pb/password", {"collection": "_superusers",
                                    "email": "root@example.com",
                                    "password": "second-password"})
        assert listing(addr, name, token).status == 403  # now a guest
        r = call(addr, "POST", "/api/collections/_superusers/auth-with-password",
                 {"identity": "root@example.com", "password": "first-password"})
        assert r.status == 400
        fresh = login(addr, "root@example.com", "second-password")
        assert listing(addr, name, fresh).status == 200


# -- faults -----------------------------------------------------------------------


def test_rate_limit_429_without_retry_after(pb, su):
    name = new_collection(pb)
    ctl(pb, "/_pb/faults", {"rate_limit": {"max": 3, "window_ms": 60000}})
    codes = [listing(pb, name, su).status for _ in range(3)]
    r = call(pb, "GET", "/api/health")
    assert codes == [200, 200, 200]
    assert r.status == 429
    assert r.body == b'{"data":{},"message":"Too Many Requests.","status":429}\n'
    assert r.header("Retry-After") is None
    assert listing(pb, name, su).status == 429  # superusers count too
    assert ctl(pb, "/_pb/clients", method="GET") == []  # control paths don't
    ctl(pb, "/_reset")
    assert listing(pb, name, su).status == 200
    ctl(pb, "/_pb/faults", {"rate_limit": {"max": 1, "window_ms": 150}})
    assert call(pb, "GET", "/api/health").status == 200
    assert call(pb, "GET", "/api/health").status == 429
    wait_for(lambda: call(pb, "GET", "/api/health").status == 200, 2,
             "a new window")


def test_list_status_fault(pb, su):
    name = new_collection(pb)
    ctl(pb, "/_pb/faults", {"list_status": 503, "list_fail": 2})
    got = [listing(pb, name, su) for _ in range(3)]
    assert [r.status for r in got] == [503, 503, 200]
    assert got[0].json() == {"data": {}, "message": "Something went wrong while "
                             "processing your request.", "status": 503}
    assert got[0].header("Retry-After") is None
    assert call(pb, "GET", "/api/health").status == 200  # only lists fail
    ctl(pb, "/_pb/faults", {"list_status": 500})
    assert [listing(pb, name, su).status for _ in range(3)] == [500] * 3
    ctl(pb, "/_pb/faults", {})  # {} leaves the switches as they are
    assert listing(pb, name, su).status == 500
    ctl(pb, "/_reset")
    assert listing(pb, name, su).status == 200


@pytest.mark.parametrize("mode", ["bad_json", "no_items", "items_not_array",
                                  "item_not_object", "id_not_string",
                                  "created_not_string", "html"])
def test_list_malformed(pb, su, mode):
    name = new_collection(pb)
    create(pb, name, [{"n": 1}, {"n": 2}])
    ctl(pb, "/_pb/faults", {"list_malformed": mode, "list_fail": 1})
    r = listing(pb, name, su, sort="n")
    assert r.status == 200
    if mode == "html":
        assert r.header("Content-Type").startswith("text/html")
        assert r.body.lstrip().startswith(b"<!DOCTYPE html>")
    elif mode == "bad_json":
        with pytest.raises(ValueError):
            json.loads(r.body)
    else:
        body = r.json()
        assert body["page"] == 1 and body["perPage"] == 30
        its = body.get("items")
        if mode == "no_items":
            assert "items" not in body
        elif mode == "items_not_array":
            assert isinstance(its, dict)
        elif mode == "item_not_object":
            assert not isinstance(its[0], dict) and its[1]["n"] == 2
        elif mode == "id_not_string":
            assert not isinstance(its[0]["id"], str) and its[0]["n"] == 1
        else:
            assert not isinstance(its[0]["created"], str)
    assert [x["n"] for x in items(pb, name, su, sort="n")] == [1, 2]  # K=1 used


def test_list_hold_fault(pb, su):
    name, other = new_collection(pb), new_collection(pb)
    ctl(pb, "/_pb/faults", {"list_hold": {"collection": name, "after": 1}})
    assert listing(pb, name, su).status == 200  # the one let through
    assert listing(pb, other, su).status == 200  # another collection
    got = []
    th = threading.Thread(target=lambda: got.append(listing(pb, name, su)))
    th.start()
    wait_for(lambda: ctl(pb, "/_pb/faults", method="GET")["list_held"] == 1,
             TIMEOUT, "a held listing")
    assert not got
    ctl(pb, "/_pb/faults", {"list_hold": None})  # removing it lets it go
    th.join(TIMEOUT)
    assert [r.status for r in got] == [200]
    assert ctl(pb, "/_pb/faults", method="GET")["list_held"] == 0
    r = call(pb, "POST", "/_pb/faults", {"list_hold": {"after": 1}})
    assert r.status == 400


# -- realtime ---------------------------------------------------------------------


def test_realtime_connect_frame(pb):
    s = Sse(pb)
    try:
        assert s.status == 200
        assert s.header("Content-Type") == "text/event-stream"
        assert s.header("Cache-Control") == "no-store"
        assert s.header("X-Accel-Buffering") == "no"
        assert s.header("Transfer-Encoding") == "chunked"
        assert s.header("Date")
        cid = s.client_id
        assert re.fullmatch(r"[A-Za-z0-9]{40}", cid)
        assert s.chunks[0] == ('id:%s\nevent:PB_CONNECT\ndata:{"clientId":"%s"}\n\n'
                               % (cid, cid)).encode()
        clients = ctl(pb, "/_pb/clients", method="GET")
        assert [c["clientId"] for c in clients] == [cid]
        assert clients[0]["subscriptions"] == [] and clients[0]["auth"] is None
        assert abs(clients[0]["connected_at"] - time.time()) < 5
        other = Sse(pb)
        assert other.client_id != cid
        other.close()
    finally:
        s.close()
    wait_for(lambda: ctl(pb, "/_pb/clients", method="GET") == [], 2,
             "the server to notice the closed streams")


def test_realtime_event_bytes_and_topics(pb, su):
    name = new_collection(pb)
    coll_id = ctl(pb, "/_pb/collections",
                  {"name": name + "x", "fields": ["n"]})["id"]
    s = Sse(pb)
    try:
        topics = [name + "/*", name, name.upper() + "/*", coll_id + "/*"]
        r = s.subscribe(pb, topics, su)
        assert (r.status, r.body) == (204, b"")
        one = create(pb, name, [{"status": "a", "n": 1}])["ids"][0]
        create(pb, name + "x", [{"n": 2}])
        ev = s.wait_events(3)
        rec = call(pb, "GET", "/api/collections/%s/records/%s" % (name, one),
                   token=su).json()
        data = json.dumps({"action": "create", "record": rec}, sort_keys=True,
                          separators=(",", ":"))
        assert s.chunks[1] == ("id:%s\nevent:%s/*\ndata:%s\n\n"
                               % (s.client_id, name, data)).encode()
        assert s.chunks[2] == ("id:%s\nevent:%s\ndata:%s\n\n"
                               % (s.client_id, name, data)).encode()
        # Case-sensitive: NAME/* heard nothing; by id works.
        assert [e[0] for e in ev] == [name + "/*", name, coll_id + "/*"]
        assert ev[2][1]["record"]["n"] == 2

        # Replace: one record, with an options filter, and update/delete.
        opts = urllib.parse.quote(json.dumps({"query": {"filter": "n > 5"}}))
        only = "%s/%s" % (name, one)
        filtered = "%s/*?options=%s" % (name, opts)
        assert s.subscribe(pb, [only, filtered], su).status == 204
        base = "/api/collections/%s/records" % name
        call(pb, "POST", base, {"n": 3}, su)  # neither topic
        call(pb, "PATCH", base + "/" + one, {"status": "b"}, su)
        six = call(pb, "POST", base, {"n": 6}, su).json()["id"]
        call(pb, "DELETE", base + "/" + one, token=su)
        ev = s.wait_events(6)[3:]
        assert [(e[0], e[1]["action"], e[1]["record"]["id"]) for e in ev] == \
            [(only, "update", one), (filtered, "create", six),
             (only, "delete", one)]
        assert ev[0][1]["record"]["status"] == "b"
        clients = ctl(pb, "/_pb/clients", method="GET")
        assert clients[0]["subscriptions"] == [only, filtered]
        assert clients[0]["auth"].startswith("_superusers/")
    finally:
        s.close()


def test_realtime_access_rules(pb, su):
    closed = new_collection(pb)  # listRule null: superusers only
    public = new_collection(pb, listRule="")
    s = Sse(pb)
    try:
        assert s.subscribe(pb, [closed + "/*", public + "/*"]).status == 204
        create(pb, closed, [{"n": 1}])
        create(pb, public, [{"n": 2}])
        ev = s.wait_events(1)
        assert [(e[0], e[1]["record"]["n"]) for e in ev] == [(public + "/*", 2)]
        # guest -> superuser is allowed, and now the closed one is heard.
        assert s.subscribe(pb, [closed + "/*"], su).status == 204
        create(pb, closed, [{"n": 3}])
        assert s.wait_events(2)[1][1]["record"]["n"] == 3
    finally:
        s.close()


def test_realtime_post_errors(pb, su):
    r = call(pb, "POST", "/api/realtime", {"clientId": "nope", "subscriptions": []})
    assert r.json() == {"data": {}, "message": "Missing or invalid client id.",
                        "status": 404}
    s = Sse(pb)
    try:
        for bad in ({"clientId": "", "subscriptions": []},
                    {"clientId": "x" * 256, "subscriptions": []},
                    {"clientId": s.client_id, "subscriptions": ["a"] * 1001},
                    {"clientId": s.client_id, "subscriptions": ["a" * 2501]}):
            r = call(pb, "POST", "/api/realtime", bad)
            assert r.status == 400 and r.json()["data"], bad
        assert s.subscribe(pb, ["a"] * 1000).status == 204
        assert s.subscribe(pb, ["a" * 2500]).status == 204
        assert s.subscribe(pb, ["x/*"], su).status == 204
        assert s.subscribe(pb, ["x/*"], su).status == 204  # same auth again
        assert s.subscribe(pb, ["x/*"], login(pb)).status == 204  # same record
        mismatch = {"data": {}, "message": "The current and the previous request "
                    "authorization don't match.", "status": 403}
        r = s.subscribe(pb, ["x/*"])  # auth -> guest
        assert (r.status, r.json()) == (403, mismatch)
        email = "rt%d@example.com" % next(_names)
        ctl(pb, "/_pb/users", {"email": email, "password": "pw-123456"})
        r = s.subscribe(pb, ["x/*"], login(pb, email, "pw-123456", "users"))
        assert (r.status, r.json()) == (403, mismatch)
        # An expired token after an authenticated subscribe is a guest: 403.
        try:
            ctl(pb, "/_pb/token_ttl", {"collection": "_superusers", "seconds": 0})
            r = s.subscribe(pb, ["x/*"], login(pb))
            assert (r.status, r.json()) == (403, mismatch)
        finally:
            ctl(pb, "/_pb/token_ttl", {"collection": "_superusers", "seconds": 86400})
    finally:
        s.close()


def test_drop_streams(pb):
    a, b = Sse(pb), Sse(pb)
    try:
        assert ctl(pb, "/_pb/drop_streams", {}) == {"ok": True, "dropped": 2}
        for s in (a, b):
            s.read_until(lambda s=s: s.eof, "the dropped connection")
            assert not s.terminated  # no terminating chunk: a cut connection
        c = Sse(pb)
        assert ctl(pb, "/_pb/drop_streams", {"clean": True})["dropped"] == 1
        c.wait_end()
        assert c.terminated and c.raw.endswith(b"0\r\n\r\n")
        r = call(pb, "POST", "/api/realtime",
                 {"clientId": c.client_id, "subscriptions": []})
        assert r.status == 404
        c.close()
    finally:
        a.close()
        b.close()


def test_realtime_reorder_and_drop(pb):
    name = new_collection(pb, listRule="")
    s = Sse(pb)
    try:
        s.subscribe(pb, [name + "/*"])
        ctl(pb, "/_pb/faults", {"realtime_reorder": 3})
        create(pb, name, [{"n": i} for i in (1, 2, 3)])
        assert [e[1]["record"]["n"] for e in s.wait_events(3)] == [3, 2, 1]
        t0 = time.monotonic()
        create(pb, name, [{"n": i} for i in (4, 5)])  # a partial group
        assert [e[1]["record"]["n"] for e in s.wait_events(5)][3:] == [5, 4]
        assert time.monotonic() - t0 >= 0.15
        ctl(pb, "/_pb/faults", {"realtime_reorder": None, "realtime_drop": True})
        create(pb, name, [{"n": 6}])
        ctl(pb, "/_pb/faults", {"realtime_drop": None})
        create(pb, name, [{"n": 7}])
        assert [e[1]["record"]["n"] for e in s.wait_events(6)][5:] == [7]
        assert len(items(pb, name, None)) == 7  # 6 exists, it was not announced
    finally:
        s.close()


def test_realtime_idle_and_lifetime_close():
    with server("--realtime-idle", "0.5", "--realtime-lifetime", "1.2") as addr:
        name = new_collection(addr, listRule="")
        t0 = time.monotonic()
        quiet = Sse(addr)
        quiet.wait_end(timeout=3)
        idle_for = time.monotonic() - t0
        assert quiet.terminated, "a clean end: the terminating chunk"
        assert 0.4 <= idle_for < 1.1, idle_for
        quiet.close()

        busy = Sse(addr)
        t0 = time.monotonic()
        busy.subscribe(addr, [name + "/*"])
        n = 0
        deadline = t0 + 4
        while not busy.terminated and time.monotonic() < deadline:
            n += 1
            create(addr, name, [{"n": n}])
            busy.read_some(0.15)
        lived = time.monotonic() - t0
        assert busy.terminated, "the lifetime close"
        assert 1.1 <= lived < 2.2, lived
        assert len(busy.events()) >= 5  # traffic did not keep it alive
        busy.close()


def test_realtime_legacy_has_no_lifetime(legacy):
    """--legacy: --realtime-lifetime 0.3 is ignored; only idle (0.6) ends."""
    name = new_collection(legacy, listRule="")
    s = Sse(legacy)
    try:
        t0 = time.monotonic()
        s.subscribe(legacy, [name + "/*"])
        n = 0
        while time.monotonic() - t0 < 1.0:
            n += 1
            create(legacy, name, [{"n": n}])
            s.read_some(0.1)
            assert not s.terminated and not s.eof
        assert len(s.events()) >= 5
        t1 = time.monotonic()
        s.wait_end(timeout=3)
        assert s.terminated and 0.4 <= time.monotonic() - t1 < 1.5
    finally:
        s.close()


# -- --legacy (PocketBase <= v0.22) ----------------------------------------------


def test_legacy_shapes(legacy):
    r = call(legacy, "POST", "/api/collections/_superusers/auth-with-password",
             {"identity": SU_EMAIL, "password": SU_PASSWORD})
    assert (r.status, r.json()) == (404, {
        "code": 404, "message": "Missing or invalid auth collection context.",
        "data": {}})
    r = call(legacy, "POST", "/api/admins/auth-with-password",
             {"identity": SU_EMAIL, "password": SU_PASSWORD})
    assert r.status == 200 and set(r.json()) == {"admin", "token"}
    token = r.json()["token"]
    assert r.json()["admin"]["email"] == SU_EMAIL
    assert claims(token)["type"] == "admin"
    r = call(legacy, "POST", "/api/admins/auth-with-password",
             {"identity": SU_EMAIL, "password": "wrong"})
    assert r.json() == {"code": 400, "message": "Failed to authenticate.", "data": {}}

    name = new_collection(legacy, has_created=False)  # still has created
    create(legacy, name, [{"n": i} for i in range(3)])
    r = listing(legacy, name, token, perPage=5000, sort="created,id")
    assert r.status == 200 and r.json()["perPage"] == 500
    assert PB_TIME.fullmatch(r.json()["items"][0]["created"])
    assert listing(legacy, name, token, sort="@rowid").status == 400
    r = listing(legacy, name, None)
    assert r.json() == {"code": 403, "message": "Only superusers can perform "
                        "this action.", "data": {}}
    assert listing(legacy, "_superusers", token).status == 404
    assert listing(legacy, name, "bearer " + token).status == 403  # exact "Bearer "
    assert listing(legacy, name, "Bearer " + token).status == 200

    wait_for(lambda: int(time.time()) > claims(token)["exp"] - 86400, 2,
             "the next second")
    r = call(legacy, "POST", "/api/admins/auth-refresh", token=token)
    assert r.status == 200 and claims(r.json()["token"])["exp"] > claims(token)["exp"]
    r = call(legacy, "POST", "/api/admins/auth-refresh", token="junk")
    assert r.status == 401 and r.json()["code"] == 401

    email = "legacy%d@example.com" % next(_names)
    ctl(legacy, "/_pb/users", {"email": email, "password": "pw-123456"})
    r = call(legacy, "POST", "/api/collections/users/auth-with-password",
             {"identity": email, "password": "pw-123456"})
    assert r.status == 200 and set(r.json()) == {"record", "token"}
    assert claims(r.json()["token"])["type"] == "authRecord"

    ctl(legacy, "/_pb/faults", {"rate_limit": {"max": 0, "window_ms": 60000}})
    try:
        assert call(legacy, "GET", "/api/health").status == 200  # no limiter
    finally:
        ctl(legacy, "/_reset")


# -- the official JS SDK -----------------------------------------------------------


def test_official_js_sdk():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/deps.sh test installs it)")
    if not os.path.isdir(os.path.join(PEERS, "node_modules", "pocketbase")):
        pytest.skip("tests/peers/node_modules/pocketbase is missing "
                    "(run scripts/deps.sh test)")
    with server() as addr:
        ctl(addr, "/_pb/collections", {"name": "orders", "fields": ["status", "n"]})
        p = subprocess.run(
            [node, os.path.join(PEERS, "pb-sdk-check.mjs"),
             "http://%s:%d" % addr], cwd=PEERS, capture_output=True,
            timeout=30, text=True)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        recs = ctl(addr, "/_pb/records?collection=orders", method="GET")
    by_n = {r["record"]["n"]: r["record"] for r in recs}
    a, b, d = by_n[1], by_n[2], by_n[4]
    assert 3 not in by_n  # deleted through the SDK

    assert out["auth"] == {"token_parts": 3, "email": SU_EMAIL,
                           "collectionName": "_superusers", "is_superuser": True,
                           "is_valid": True}
    created = out["created"]
    assert created["ids"][:2] == [a["id"], b["id"]] and len(created["ids"]) == 3
    assert (created["id_ok"], created["created_ok"], created["collectionName"]) \
        == (True, True, "orders")
    lst = out["list"]
    assert re.fullmatch(r'status = "paid" && created >= "%s"' % PB_TIME.pattern,
                        lst["filter"])
    assert (lst["page"], lst["perPage"], lst["totalItems"], lst["totalPages"]) == \
        (1, 50, -1, -1)
    assert lst["ids"] == [a["id"], created["ids"][2]]
    assert out["full"] == {"n": [3, 2, 1]}
    assert out["crud"] == {"get_status": "new", "update_status": "shipped",
                           "update_same_id": True, "delete": True}
    assert b["status"] == "shipped"
    assert out["error"] == {"thrown": True, "name": "ClientResponseError",
                            "status": 404,
                            "message": "The requested resource wasn't found.",
                            "response_status": 404}
    assert out["realtime_connected"] is True
    assert out["realtime"] == {
        "legacy_topic": {"action": "create", "id": d["id"], "status": "live"},
        "star_topic": {"action": "create", "id": d["id"], "status": "live"},
        "created_id": d["id"]}
    assert out["realtime_after_unsubscribe"] is False
    assert out["refresh"] == {"token_changed": True, "exp_later": True,
                              "store_updated": True, "record_email": SU_EMAIL}
