"""The local API's connection budgets and idle connections (the unix socket
and http_listen count apart; idle connections are closed after
api_idle_timeout, or to make room on a full listener), and names and bytes
it cannot use, sent raw in every endpoint that takes a name."""
import json
import os
import re
import socket
import time

import pytest

from apiclient import Subscriber, cli, get, ready, remove_dir, short_dir
from conftest import wait_for


@pytest.fixture
def sockdir():
    d = short_dir()
    yield d
    remove_dir(d)


def config(sock, daemon_extra="", sink="file:out.ndjson"):
    return f"""
[daemon]
state = state.db
checkpoint_interval = 50ms
status_interval = 0
shutdown_timeout = 5s
socket = {sock}
{daemon_extra}

[consumer gen]
source = generate
rate = 200
sink = {sink}
"""


def start(tether, sockdir, daemon_extra="", **kw):
    """Starts tether; returns it, the socket path and the TCP port (None
    without http_listen)."""
    sock = os.path.join(sockdir, "api.sock")
    t = tether(config(sock, daemon_extra, **kw))
    t.start()
    port = None
    if "http_listen" in daemon_extra:
        m = t.wait_log(r"local API listening socket=\S+ "
                       r"http_listen=127\.0\.0\.1:(\d+)")
        port = int(m.group(1))
    wait_for(lambda: ready(sock), 20, "the API to be ready", t)
    return t, sock, port


def tcp_conn(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.settimeout(20)
    return s


def unix_conn(sock):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(sock)
    return s


def read_response(s):
    """Reads one response with a Content-Length body on s, which stays
    open; (0, b"") when the connection ends (or is reset) first."""
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            n = int(m.group(1)) if m else 0
            if len(rest) >= n:
                return int(head.split(b" ")[1]), rest[:n]
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            return 0, b""
        data += chunk


def ask(s, target=b"/v1/health", method=b"GET"):
    """One request on the open connection s; (status, body bytes)."""
    try:
        s.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: t\r\n"
                  b"Content-Length: 0\r\n\r\n")
    except OSError:
        return 0, b""
    return read_response(s)


def closed_by_peer(s):
    """True once the server has closed s (EOF or reset); waits up to the
    socket's timeout."""
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def error_code(body):
    j = json.loads(body)
    assert set(j) == {"error"} and set(j["error"]) == {"code", "message"}, j
    return j["error"]["code"]


# ---- Budgets ---------------------------------------------------------------

def test_full_http_listen_leaves_the_unix_socket_free(tether, sockdir):
    # The unix socket's own budget is small here, so that connections on
    # the TCP listener would use it up if they counted against it.
    t, sock, port = start(tether, sockdir,
                          "http_listen = 0\napi_max_connections = 8\n"
                          "api_idle_timeout = 1m")
    conns = [tcp_conn(port) for _ in range(40)]
    try:
        # The first 16 (http_max_connections' default) hold their places,
        # silent; the others are answered 503 and closed (past as many
        # again, closed without an answer).
        refused = 0
        for s in conns[16:]:
            status, body = read_response(s)
            assert status in (0, 503), (status, body)
            if status == 503:
                assert error_code(body) == "too_many_connections"
                assert b"on the TCP listener" in body, body
                refused += 1
        assert refused >= 16
        # An exec probe and any client of the unix socket are served at
        # once, every time.
        for _ in range(3):
            start_at = time.monotonic()
            p = cli("status", sock=sock, timeout=20)
            assert p.returncode == 0, (p.stdout, p.stderr)
            assert "tether is ready" in p.stdout
            assert get(sock, "/v1/health")[0] == 200
            assert time.monotonic() - start_at < 10
        held = [unix_conn(sock) for _ in range(8)]
        try:
            for s in held:
                assert ask(s)[0] == 200
        finally:
            for s in held:
                s.close()
        # The 16 held TCP connections are still served.
        for s in conns[:16]:
            assert ask(s, b"/v1/ready")[0] == 200
    finally:
        for s in conns:
            s.close()
    t.fail_if_exited("after filling http_listen")


def test_full_unix_socket_leaves_http_listen_free(tether, sockdir):
    t, sock, port = start(tether, sockdir,
                          "http_listen = 0\napi_max_connections = 4\n"
                          "api_idle_timeout = 1m")
    # Four unix connections with a request under way: not idle, they keep
    # their places, and a fifth is refused.
    busy = [unix_conn(sock) for _ in range(4)]
    try:
        for s in busy:
            s.sendall(b"GET /v1/health HTTP/1.1\r\n")

        def refused():
            s = unix_conn(sock)
            try:
                return read_response(s)[0] == 503
            finally:
                s.close()
        wait_for(refused, 20, "the unix socket to be full", t)
        s = tcp_conn(port)
        try:
            assert ask(s)[0] == 200
            assert ask(s, b"/metrics")[0] == 200
        finally:
            s.close()
        for s in busy:
            s.sendall(b"Host: t\r\n\r\n")
            assert read_response(s)[0] == 200
    finally:
        for s in busy:
            s.close()


def test_new_connection_takes_the_longest_idle_ones_place(tether, sockdir):
    t, sock, port = start(tether, sockdir,
                          "http_listen = 0\nhttp_max_connections = 2\n"
                          "api_idle_timeout = 1m")
    a, b = tcp_conn(port), tcp_conn(port)
    c = d = e = None
    try:
        assert ask(a)[0] == 200
        assert ask(b)[0] == 200
        # Both are kept alive and idle, a the longer: a newcomer is served
        # and a is closed to make room.
        c = tcp_conn(port)
        assert ask(c)[0] == 200
        a.settimeout(10)
        assert closed_by_peer(a), "the longest-idle connection stays open"
        assert ask(b)[0] == 200  # b is served on
        # Connections that have not been answered yet are never closed to
        # make room: with two of those, the next is answered 503.
        c.close()
        b.close()
        d, e = tcp_conn(port), tcp_conn(port)

        def refused():
            s = tcp_conn(port)
            try:
                status, body = read_response(s)
                return status == 503 and error_code(body)
            finally:
                s.close()
        assert wait_for(refused, 20, "a 503 from the full listener",
                        t) == "too_many_connections"
        assert ask(d)[0] == 200 and ask(e)[0] == 200
    finally:
        for s in (a, b, c, d, e):
            if s is not None:
                s.close()


def test_subscribers_keep_their_place_on_a_full_socket(tether, sockdir):
    t, sock, _ = start(tether, sockdir,
                       "api_max_connections = 2\napi_idle_timeout = 1m",
                       sink="socket")
    sub = Subscriber(sock, "gen", who="w1")
    try:
        first = sub.take(3)
        assert sub.status == 200
        # The other place: a kept-alive connection, idle after its answer.
        k = unix_conn(sock)
        assert ask(k)[0] == 200
        # Newcomers take the idle connection's place, never the
        # subscriber's, however many come.
        for _ in range(3):
            s = unix_conn(sock)
            try:
                status, body = ask(s, b"/v1/consumers/gen")
                assert status == 200, body
            finally:
                s.close()
        k.settimeout(10)
        assert closed_by_peer(k)
        more = sub.take(3)
        assert more[0]["seq"] > first[-1]["seq"]
        assert not sub.closed.is_set()
    finally:
        sub.kill()


# ---- Idle connections ----------------------------------------------------

@pytest.mark.parametrize("listener", ["unix", "tcp"])
def test_idle_connection_is_closed_after_api_idle_timeout(tether, sockdir,
                                                          listener):
    t, sock, port = start(tether, sockdir,
                          "http_listen = 0\napi_idle_timeout = 1s\n"
                          "api_max_connections = 1\n"
                          "http_max_connections = 1")

    def conn():
        return unix_conn(sock) if listener == "unix" else tcp_conn(port)

    # A kept-alive connection, idle after its answer, is closed.
    s = conn()
    try:
        assert ask(s)[0] == 200
        idle_from = time.monotonic()
        s.settimeout(15)
        assert closed_by_peer(s), "the idle connection stays open"
        idle = time.monotonic() - idle_from
        assert 0.5 <= idle < 15, idle
    finally:
        s.close()
    # A connection that never sends a request holds the only place (it is
    # not closed to make room) until the same idle time has passed; then
    # the place is free again.
    def served():
        c = conn()
        try:
            return ask(c)[0] == 200
        finally:
            c.close()
    wait_for(served, 20, "the place to be free", t)
    silent = conn()
    try:
        def refused():
            c = conn()
            try:
                return read_response(c)[0] == 503
            finally:
                c.close()
        wait_for(refused, 20, "the silent connection to hold the place", t)
        silent.settimeout(15)
        assert closed_by_peer(silent)
        wait_for(served, 20, "the place to be free again", t)
    finally:
        silent.close()


# ---- Names that are not UTF-8 -------------------------------------------

def raw_request(sock, method, target, body=b""):
    """One request with target as raw bytes; (status, parsed body)."""
    s = unix_conn(sock)
    try:
        s.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: t\r\n"
                  b"Content-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() +
                  b"\r\nConnection: close\r\n\r\n" + body)
        status, data = read_response(s)
    finally:
        s.close()
    # Every answer is JSON in UTF-8, whatever bytes the request held.
    return status, json.loads(data.decode("utf-8"))


NAME_ENDPOINTS = [
    (b"GET", b"/v1/consumers/%s", b""),
    (b"POST", b"/v1/consumers/%s/pause", b""),
    (b"POST", b"/v1/consumers/%s/resume", b""),
    (b"GET", b"/v1/consumers/%s/events", b""),
    (b"POST", b"/v1/consumers/%s/ack", b'{"seq":1}'),
]

# Percent-escaped and raw: bytes that are never UTF-8, a valid name with a
# bad byte after it, a bad continuation, a sequence cut short.
NOT_UTF8 = [b"%ff%fe", b"\xff\xfe", b"gen%ff", b"%c3%28", b"%e2%82"]


def test_consumer_names_that_are_not_utf8_are_unknown(tether, sockdir):
    t, sock, _ = start(tether, sockdir)
    for name in NOT_UTF8:
        for method, target, body in NAME_ENDPOINTS:
            status, got = raw_request(sock, method, target % name, body)
            assert status == 404, (target % name, got)
            assert error_code(json.dumps(got)) == "consumer_not_found", got
            msg = got["error"]["message"]
            assert msg.startswith("no consumer named "), msg
            assert "memory" not in msg, msg
    status, got = raw_request(sock, b"GET", b"/v1/consumers/%ff%fe")
    assert got["error"]["message"] == "no consumer named %FF%FE", got
    assert get(sock, "/v1/consumers/gen")[0] == 200
    t.fail_if_exited("after names that are not UTF-8")


CURSOR_TARGETS = [
    b"/v1/cursors/%ff%fe/generate", b"/v1/cursors/gen/%ff%fe",
    b"/v1/cursors/gen/generate/%ff%fe", b"/v1/cursors/\xff/\xfe/\xfd"]


def test_cursor_keys_that_are_not_utf8_are_refused(tether, sockdir):
    t, sock, _ = start(tether, sockdir)
    for target in CURSOR_TARGETS:
        status, got = raw_request(sock, b"GET", target)
        assert status == 400, (target, got)
        assert error_code(json.dumps(got)) == "invalid_cursor", got
        assert "is not valid UTF-8" in got["error"]["message"], got
    t.fail_if_exited("after cursor keys that are not UTF-8")


BAD_BYTES = [
    (b"GET", b"/v1/\xff", 404, "not_found", "no endpoint GET /v1/%FF"),
    (b"GET", b"/\x80%ff", 404, "not_found", "no endpoint GET /%80%25ff"),
    (b"GET", b"/v1/cursors?limit=%ff", 400, "invalid_cursor",
     'limit = "%FF"'),
    (b"GET", b"/v1/cursors?consumer_id=%zz", 400, "bad_request",
     "query parameter consumer_id has a bad percent escape"),
    (b"GET", b"/v1/consumers/gen%00x", 400, "bad_request", "%00"),
    (b"POST", b"/v1/consumers/gen%00/pause", 400, "bad_request", "%00"),
    (b"GET", b"/v1/cursors/gen%00/generate", 400, "bad_request", "%00"),
    (b"GET", b"/v1/cursors?consumer_id=gen%00", 400, "bad_request", "%00"),
    (b"GET", b"/v1/consumers/gen/events?subscriber=%zz", 400, "bad_request",
     "query parameter subscriber"),
]


def test_bytes_no_name_may_hold_are_clear_errors(tether, sockdir):
    t, sock, _ = start(tether, sockdir)
    for method, target, want, code, says in BAD_BYTES:
        status, got = raw_request(sock, method, target)
        assert status == want, (target, got)
        assert error_code(json.dumps(got)) == code, (target, got)
        assert says in got["error"]["message"], (target, got)
    # gen%00 never reached gen: it is not paused.
    assert get(sock, "/v1/consumers/gen")[1]["consumer"]["paused"] is False
    t.fail_if_exited("after bad bytes")
