"""The local API over its unix socket (curl and a Python client): every
endpoint and error, malformed and oversized requests, slow clients, the
connection cap, socket permissions, the TCP listener, /metrics."""
import json
import os
import re
import select
import signal
import socket
import subprocess
import time

import pytest

from apiclient import (ready, consumer, curl, get, raw, remove_dir, request,
                       short_dir, status_of, body_of)
from conftest import BIN, committed_seq, read_lines, wait_for


@pytest.fixture
def sockdir():
    d = short_dir()
    yield d
    remove_dir(d)


def config(sock, rate=200, count=0, sink="file:out.ndjson", extra="",
           daemon_extra="", name="gen"):
    return f"""
[daemon]
state = state.db
checkpoint_interval = 50ms
status_interval = 0
shutdown_timeout = 5s
socket = {sock}
{daemon_extra}

[consumer {name}]
source = generate
rate = {rate}
count = {count}
sink = {sink}
{extra}
"""


def started(tether, sockdir, **kw):
    sock = os.path.join(sockdir, "api.sock")
    t = tether(config(sock, **kw))
    t.start()
    wait_for(lambda: ready(sock),
             20, "the API to be ready", t)
    return t, sock


def error_code(body):
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    return body["error"]["code"]


def test_health_ready_and_consumers_through_curl(tether, sockdir):
    t, sock = started(tether, sockdir)
    status, body, _ = curl(sock, "GET", "/v1/health")
    assert status == 200 and body["status"] == "ok" and body["version"]
    status, body, _ = curl(sock, "GET", "/v1/ready")
    assert (status, body) == (200, {"ready": True})

    wait_for(lambda: consumer(sock, "gen")["cursor"]["seq"] >= 5, 20,
             "five events delivered", t)
    status, body, _ = curl(sock, "GET", "/v1/consumers")
    assert status == 200
    [c] = body["consumers"]
    assert c["name"] == "gen" and c["source"] == "generate"
    assert c["sink"] == "file:out.ndjson"
    assert c["state"] == "connected" and c["paused"] is False
    assert c["cursor"]["seq"] >= 5 and c["cursor"]["position"]
    assert c["events_delivered"] >= 5
    assert c["events_received"] >= c["events_delivered"]
    assert set(c["lag"]) == {"events", "seconds"}
    assert c["backoff"] is None
    for key in ("committed_seq", "in_flight", "delivered_per_s",
                "sink_retries", "reconnects"):
        assert key in c, key
    status, body, _ = curl(sock, "GET", "/v1/consumers/gen")
    assert status == 200 and body["consumer"]["name"] == "gen"

    # The rate is measured over at least a second between two reads.
    first = consumer(sock, "gen")["events_delivered"]
    wait_for(lambda: consumer(sock, "gen")["events_delivered"] >= first + 250,
             20, "a second and more of events", t)
    assert consumer(sock, "gen")["delivered_per_s"] > 0


def test_every_error_status(tether, sockdir):
    t, sock = started(tether, sockdir)
    cases = [
        ("GET", "/nowhere", None, 404, "not_found"),
        ("GET", "/v1/nothing", None, 404, "not_found"),
        ("GET", "/v1/consumers/ghost", None, 404, "consumer_not_found"),
        ("POST", "/v1/consumers/ghost/pause", None, 404, "consumer_not_found"),
        ("GET", "/v1/consumers/gen/elsewhere", None, 404, "not_found"),
        ("POST", "/v1/health", None, 405, "method_not_allowed"),
        ("DELETE", "/v1/consumers", None, 405, "method_not_allowed"),
        ("GET", "/v1/consumers/gen/pause", None, 405, "method_not_allowed"),
        ("GET", "/v1/consumers/gen/events", None, 409, "not_a_socket_sink"),
        ("POST", "/v1/consumers/gen/ack", {"seq": 1}, 409,
         "not_a_socket_sink"),
        ("GET", "/v1/cursors/gen/nostream", None, 404, "cursor_not_found"),
        ("GET", "/v1/cursors?limit=many", None, 400, "invalid_cursor"),
        ("GET", "/v1/consumers/%zz", None, 400, "bad_request"),
        ("POST", "/v1/cursors/reset", "{not json", 400, "invalid_json"),
        ("POST", "/v1/cursors/reset", {"key": {}}, 400, "invalid_cursor"),
        ("POST", "/v1/cursors/reset", {"bogus": 1}, 400, "invalid_cursor"),
        ("POST", "/v1/cursors/reset",
         {"key": {"consumer_id": "gen", "stream_name": "generate",
                  "subject_id": ""}, "position": "1", "reason": "x"},
         409, "consumer_not_paused"),
        # Where to go on is named: a position, or from_start.
        ("POST", "/v1/cursors/reset",
         {"key": {"consumer_id": "gen", "stream_name": "generate",
                  "subject_id": ""}, "last_sequence": 1, "reason": "x"},
         400, "position_required"),
        ("POST", "/v1/cursors/reset",
         {"key": {"consumer_id": "gen", "stream_name": "generate",
                  "subject_id": ""}, "position": "1", "from_start": True,
          "reason": "x"},
         400, "position_required"),
    ]
    for method, target, body, want, code in cases:
        status, hdrs, got = request(sock, method, target, body)
        assert status == want, (method, target, got)
        assert hdrs["content-type"] == "application/json", target
        assert error_code(got) == code, (method, target, got)
        if want == 405:
            assert hdrs["allow"] in ("GET", "POST"), hdrs
    # The same through curl: a client that is not ours.
    status, got, _ = curl(sock, "GET", "/v1/consumers/ghost")
    assert status == 404 and error_code(got) == "consumer_not_found"
    t.fail_if_exited("after the errors")


def test_pause_resume_persists_and_is_logged(tether, sockdir):
    t, sock = started(tether, sockdir)
    wait_for(lambda: committed_seq(t.state, "gen") >= 3, 20, "a cursor", t)
    status, _, body = request(sock, "POST", "/v1/consumers/gen/pause")
    assert status == 200 and body["consumer"]["paused"] is True
    # Who paused it is logged from the socket's peer credentials.
    t.wait_log(rf"consumer paused consumer=gen by_uid={os.getuid()} "
               rf"by_pid=\d+")
    # Paused: the source stops; what was in flight is delivered.
    wait_for(lambda: consumer(sock, "gen")["in_flight"] == 0, 20,
             "the window to drain", t)
    c = consumer(sock, "gen")
    assert c["state"] == "paused"
    seen = c["events_received"]
    time.sleep(0.5)  # an observation window: nothing may arrive in it
    assert consumer(sock, "gen")["events_received"] == seen

    # It stays paused across a restart.
    assert t.stop() == 0
    out_before = len(read_lines(os.path.join(t.dir, "out.ndjson"))[0])
    t.start()
    wait_for(lambda: ready(sock),
             20, "the API after the restart", t)
    c = consumer(sock, "gen")
    assert c["paused"] is True and c["state"] == "paused"
    time.sleep(0.3)  # an observation window: still nothing may arrive
    assert consumer(sock, "gen")["events_received"] == 0

    status, _, body = request(sock, "POST", "/v1/consumers/gen/resume")
    assert status == 200 and body["consumer"]["paused"] is False
    t.wait_log(r"consumer resumed consumer=gen by_uid=\d+ by_pid=\d+")
    wait_for(lambda: len(read_lines(os.path.join(t.dir, "out.ndjson"),
                                    running=True)[0]) > out_before + 3, 20,
             "events after resume", t)
    recs = read_lines(os.path.join(t.dir, "out.ndjson"), running=True)[0]
    seqs = [r["seq"] for r in recs]
    assert seqs == list(range(1, len(seqs) + 1)), "a gap or a repeat"


def test_cursors_list_get_reset(tether, sockdir):
    t, sock = started(tether, sockdir)
    wait_for(lambda: committed_seq(t.state, "gen") >= 20, 20, "20 events", t)
    status, body = get(sock, "/v1/cursors")
    assert status == 200
    [cur] = body["cursors"]
    assert cur["consumer_id"] == "gen" and cur["stream_name"] == "generate"
    assert cur["subject_id"] == "" and cur["last_sequence"] >= 20
    assert cur["updated_at"].endswith("Z")
    status, body = get(sock, "/v1/cursors?consumer_id=gen&limit=1")
    assert status == 200 and len(body["cursors"]) == 1
    status, body = get(sock, "/v1/cursors?consumer_id=nobody")
    assert (status, body) == (200, {"cursors": []})
    status, body = get(sock, "/v1/cursors/gen/generate")
    assert status == 200 and body["cursor"]["last_sequence"] >= 20

    key = {"consumer_id": "gen", "stream_name": "generate", "subject_id": ""}
    status, _, body = request(sock, "POST", "/v1/consumers/gen/pause")
    assert status == 200
    wait_for(lambda: consumer(sock, "gen")["in_flight"] == 0, 20,
             "nothing in flight", t)
    status, _, body = request(sock, "POST", "/v1/cursors/reset",
                              {"key": key, "last_sequence": 5,
                               "position": "5"})
    assert status == 400 and error_code(body) == "reset_reason_required"
    out = os.path.join(t.dir, "out.ndjson")
    seen = read_lines(out)[0]
    status, _, body = request(sock, "POST", "/v1/cursors/reset",
                              {"key": key, "last_sequence": 5,
                               "position": "5", "reason": "replay a test"})
    assert status == 200, body
    # seq never goes backward: the cursor's seq is the highest ever handed
    # out (the lease), whatever floor the request named.
    floor = body["cursor"]["last_sequence"]
    assert floor >= max(r["seq"] for r in seen)
    assert body["cursor"]["position"] == "5"
    t.wait_log(r"cursor reset consumer=gen stream=generate seq=%d "
               r"reason=\"?replay a test\"? by_uid=\d+" % floor)
    assert committed_seq(t.state, "gen") == floor
    before = len(seen)
    assert request(sock, "POST", "/v1/consumers/gen/resume")[0] == 200
    # It goes on from the new position (event 6 comes again) with new
    # seqs above every one used before.
    wait_for(lambda: len(read_lines(out, running=True)[0]) > before + 2, 20,
             "events after the reset", t)
    again = read_lines(out, running=True)[0][before:]
    assert again[0]["cursor"] == "6" and again[0]["data"]["seq"] == 6
    assert [r["seq"] for r in again] == list(
        range(floor + 1, floor + 1 + len(again)))


def test_ready_is_503_while_draining(tether, sockdir):
    # A socket sink with no subscriber keeps its events in flight, so a
    # SIGTERM drains until shutdown_timeout: long enough to ask.
    sock = os.path.join(sockdir, "api.sock")
    t = tether(config(sock, sink="socket").replace("shutdown_timeout = 5s",
                                                   "shutdown_timeout = 30s"))
    t.start()
    wait_for(lambda: ready(sock),
             20, "ready", t)
    wait_for(lambda: consumer(sock, "gen")["in_flight"] > 0, 20,
             "events waiting for a subscriber", t)
    t.send(signal.SIGTERM)
    def draining():
        status, body = get(sock, "/v1/ready")
        return status == 503 and body
    body = wait_for(draining, 20, "ready to answer 503", t)
    assert error_code(body) == "not_ready"
    assert "draining" in body["error"]["message"]
    assert get(sock, "/v1/health")[0] == 200
    t.send(signal.SIGTERM)  # the second signal stops at once
    assert t.wait_exit() == 0
    assert not os.path.exists(sock), "the socket file is removed at exit"


def test_malformed_and_oversized_requests(tether, sockdir):
    t, sock = started(tether, sockdir)
    r = raw(sock, b"THIS IS NOT HTTP\r\n\r\n")
    assert status_of(r) == 400 and error_code(body_of(r)) == "bad_request"
    r = raw(sock, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert status_of(r) == 400
    r = raw(sock, b"GET /v1/health HTTP/1.1\r\nX-Big: " + b"a" * 20000 +
            b"\r\n\r\n")
    assert status_of(r) == 431
    assert error_code(body_of(r)) == "headers_too_large"
    r = raw(sock, b"POST /v1/consumers/gen/ack HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 5000000\r\n\r\n")
    assert status_of(r) == 413
    assert error_code(body_of(r)) == "body_too_large"
    r = raw(sock, b"POST /v1/consumers/gen/pause HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
    assert status_of(r) == 400
    # Pipelined requests are answered in order on one connection.
    r = raw(sock, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /v1/consumers/ghost HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /v1/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    statuses = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3})", r)]
    assert statuses == [200, 404, 200]
    # Random bytes: an answer or a closed connection, and tether lives on.
    for seed in range(20):
        junk = os.urandom(64 + seed * 50)
        raw(sock, junk, timeout=2)
    assert get(sock, "/v1/health")[0] == 200
    t.fail_if_exited("after malformed requests")


def test_slow_client_is_cut_without_harm_to_others(tether, sockdir):
    sock = os.path.join(sockdir, "api.sock")
    t = tether(config(sock, daemon_extra="api_request_timeout = 1s"))
    t.start()
    wait_for(lambda: ready(sock),
             20, "ready", t)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock)
    start = time.monotonic()
    request_bytes = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + \
        b"z" * 200
    answer, cut = b"", False
    for i, byte in enumerate(request_bytes):
        try:
            s.send(bytes([byte]))
        except OSError:
            cut = True
            break
        # A well-behaved client meanwhile is served at once.
        if i % 20 == 0:
            assert get(sock, "/v1/health")[0] == 200
        time.sleep(0.02)  # the slow client's pace, a byte per 20 ms
        if time.monotonic() - start > 8:
            break
    if not cut:
        try:
            answer = s.recv(65536)
        except OSError:
            cut = True
    s.close()
    elapsed = time.monotonic() - start
    assert cut or answer == b"" or status_of(answer) == 408, answer
    assert elapsed < 8, "the slow client was not cut off"
    t.fail_if_exited("after the slow client")


def test_connections_beyond_the_cap_are_refused(tether, sockdir):
    sock = os.path.join(sockdir, "api.sock")
    # Idle for as long as the test may take: none is closed for idling.
    t = tether(config(sock, daemon_extra="api_idle_timeout = 5m"))
    t.start()
    wait_for(lambda: ready(sock),
             20, "ready", t)
    conns = []
    try:
        for _ in range(1000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)  # blocking: waits while the backlog is full
            s.settimeout(10)
            conns.append(s)
        # 256 are held open (the API's cap); the rest are answered 503 and
        # closed (past as many again still closing, closed without an
        # answer: a flood costs tether no memory). Which ones are held
        # depends on when tether saw earlier clients go, so each is asked,
        # once tether has seen every one: a connection accepted after an
        # answered one could take its place (it is idle then).
        def handled():
            p = select.poll()
            for s in conns:
                p.register(s, select.POLLIN)
            return len(p.poll(0)) == len(conns) - 256
        wait_for(handled, 30, "tether to refuse all but 256", t)
        live = answered = closed = 0
        for s in conns:
            try:
                s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            except OSError:
                pass
            status, body = read_response(s)
            if status == 200:
                live += 1
            elif status == 503:
                assert error_code(json.loads(body)) == "too_many_connections"
                answered += 1
            else:
                assert status == 0, (status, body)
                closed += 1
        assert live == 256, (live, answered, closed)
        assert answered >= 256 and live + answered + closed == 1000
    finally:
        for s in conns:
            s.close()
    # Once they are gone new clients are served again.
    wait_for(lambda: ready(sock), 20, "the API after the flood", t)
    t.fail_if_exited("after 1,000 connections")


def read_response(s):
    """Reads one response with a Content-Length body; (0, b"") when the
    connection ends (or is reset) first."""
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            if m and len(rest) >= int(m.group(1)):
                return status_of(data), rest[:int(m.group(1))]
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            return (status_of(data), rest) if sep else (0, b"")
        data += chunk


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
@pytest.mark.parametrize("mode,group,allowed", [
    ("0600", "", False), ("0660", "nogroup", True)])
def test_socket_permissions(tether, sockdir, mode, group, allowed):
    sock = os.path.join(sockdir, "api.sock")
    t = tether(config(sock, daemon_extra=f"socket_mode = {mode}\n"
                                         f"socket_group = {group}"))
    t.start()
    wait_for(lambda: ready(sock),
             20, "ready", t)
    st = os.stat(sock)
    assert oct(st.st_mode & 0o777) == oct(int(mode, 8))
    # Another uid: setpriv, as an operator would try it.
    p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                        "--clear-groups", "curl", "-sS", "--unix-socket", sock,
                        "http://tether/v1/health"],
                       capture_output=True, text=True, timeout=30)
    if allowed:
        assert p.returncode == 0 and json.loads(p.stdout)["status"] == "ok", \
            p.stderr
    else:
        # curl's exit code 7: could not connect.
        assert p.returncode == 7, (p.returncode, p.stderr)
    # The CLI as that user: a refusal is one line naming the socket.
    p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                        "--clear-groups", BIN, "status", "-s", sock],
                       capture_output=True, text=True, timeout=30)
    if allowed:
        assert p.returncode == 0 and "tether is ready" in p.stdout, p.stderr
    else:
        assert p.returncode == 1 and sock in p.stderr, p.stderr
        assert "permission denied" in p.stderr.lower(), p.stderr


def test_stale_socket_is_replaced_and_other_files_refused(tether, sockdir):
    sock = os.path.join(sockdir, "api.sock")
    # A socket file nobody listens on (a crashed tether leaves one).
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock)
    s.close()
    t = tether(config(sock))
    t.start()
    wait_for(lambda: ready(sock), 20,
             "ready over the stale socket's path", t)
    assert t.stop() == 0

    with open(sock, "w") as f:
        f.write("precious\n")
    t.start()
    rc = t.wait_exit()
    assert rc != 0
    assert sock in t.log() and "not a socket" in t.log()
    with open(sock) as f:
        assert f.read() == "precious\n", "a regular file is never replaced"


def test_a_second_tether_on_a_live_socket_is_refused(tether, sockdir, tmp_path):
    t, sock = started(tether, sockdir)
    other = tether(config(sock), name="other", workdir=tmp_path / "b")
    other.start()
    assert other.wait_exit() != 0
    assert "another process is listening there" in other.log()
    assert sock in other.log()
    assert get(sock, "/v1/health")[0] == 200


def test_http_listen_serves_probes_and_metrics_only(tether, sockdir):
    sock = os.path.join(sockdir, "api.sock")
    t = tether(config(sock, daemon_extra="http_listen = 0"))  # loopback
    t.start()
    m = t.wait_log(r"local API listening socket=\S+ http_listen=127\.0\.0\.1:"
                   r"(\d+)")
    port = int(m.group(1))
    base = f"http://127.0.0.1:{port}"

    def tcp(method, path):
        p = subprocess.run(["curl", "-sS", "-X", method, "-o", "-", "-w",
                            "\n%{http_code}", base + path],
                           capture_output=True, text=True, timeout=30)
        text, _, code = p.stdout.rpartition("\n")
        return int(code), text
    wait_for(lambda: tcp("GET", "/v1/ready")[0] == 200, 20, "ready", t)
    assert tcp("GET", "/v1/health")[0] == 200
    status, text = tcp("GET", "/metrics")
    assert status == 200 and "tether_events_delivered_total" in text
    for method, path in (("GET", "/v1/consumers"),
                         ("POST", "/v1/consumers/gen/pause"),
                         ("GET", "/v1/cursors"),
                         ("POST", "/v1/cursors/reset")):
        status, text = tcp(method, path)
        assert status == 404, (path, text)
        assert error_code(json.loads(text)) == "not_found"
    assert consumer(sock, "gen")["paused"] is False


METRIC_LINE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*)?\})? '
    r'(-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')


def parse_metrics(text):
    """Parses Prometheus text format strictly; returns {(name, labels): v}
    and the declared types."""
    samples, types = {}, {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            types[name] = kind
            continue
        m = METRIC_LINE.match(line)
        assert m, f"not a Prometheus sample: {line!r}"
        base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
        assert m.group(1) in types or base in types, f"no TYPE for {line}"
        samples[(m.group(1), m.group(2) or "")] = float(m.group(7))
    return samples, types


def test_metrics_parse_and_move(tether, sockdir):
    t, sock = started(tether, sockdir)
    status, hdrs, text = request(sock, "GET", "/metrics")
    assert status == 200 and hdrs["content-type"].startswith("text/plain")
    first, types = parse_metrics(text)
    for name in ("tether_events_received_total",
                 "tether_events_delivered_total",
                 "tether_events_retried_total", "tether_events_failed_total",
                 "tether_events_dead_lettered_total",
                 "tether_events_in_flight", "tether_cursor_lag_events",
                 "tether_cursor_lag_seconds",
                 "tether_upstream_reconnects_total", "tether_consumer_state",
                 "tether_sink_write_errors_total",
                 "tether_store_commit_duration_seconds",
                 "tether_store_commit_failures_total",
                 "process_resident_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds", "tether_build_info"):
        assert name in types, name
    assert first[("tether_consumer_state",
                  '{consumer="gen",state="connected"}')] == 1
    assert first[("process_resident_memory_bytes", "")] > 1e6
    assert first[("process_open_fds", "")] > 3
    key = ("tether_events_delivered_total", '{consumer="gen"}')
    wait_for(lambda: parse_metrics(get(sock, "/metrics")[1])[0][key] >=
             first[key] + 50, 20, "delivered_total to move", t)
    later = parse_metrics(request(sock, "GET", "/metrics")[2])[0]
    count = ("tether_store_commit_duration_seconds_count", "")
    assert later[count] > first[count], "commits are counted"
    inf = ("tether_store_commit_duration_seconds_bucket", '{le="+Inf"}')
    assert later[inf] == later[count]


def test_metrics_count_failures_and_dead_letters(tether, sockdir, tmp_path):
    handler = tmp_path / "h.py"
    handler.write_text("""#!/usr/bin/python3
import json, sys
for line in sys.stdin:
    seq = json.loads(line)["seq"]
    if seq % 5 == 0:
        print(json.dumps({"seq": seq, "status": "fail", "error": "no"}))
    else:
        print(seq)
    sys.stdout.flush()
""")
    handler.chmod(0o755)
    sock = os.path.join(sockdir, "api.sock")
    t = tether(config(sock, rate=0, count=20, sink=f"exec:{handler}",
                      extra=f"max_attempts = 2\nresend_min = 10ms\n"
                            f"on_fail = dead_letter:{tmp_path}/dead.ndjson"))
    t.start()
    wait_for(lambda: committed_seq(t.state, "gen") == 20, 30,
             "every event answered or dead-lettered", t)
    m = parse_metrics(get(sock, "/metrics")[1])[0]
    label = '{consumer="gen"}'
    assert m[("tether_events_dead_lettered_total", label)] == 4
    assert m[("tether_events_failed_total", label)] == 4
    assert m[("tether_events_retried_total", label)] >= 4
    assert m[("tether_events_delivered_total", label)] == 20
    c = consumer(sock, "gen")
    assert (c["events_failed"], c["events_dead_lettered"]) == (4, 4)
    records, _ = read_lines(str(tmp_path / "dead.ndjson"))
    assert [r["seq"] for r in records] == [5, 10, 15, 20]


def test_bad_http_listen_is_a_clear_startup_error(tether, sockdir):
    sock = os.path.join(sockdir, "api.sock")
    t = tether(config(sock, daemon_extra="http_listen = localhost:http"))
    t.start()
    assert t.wait_exit() != 0
    assert 'cannot start the local API socket=' in t.log()
    assert 'http_listen = \\"localhost:http\\": expected HOST:PORT or PORT' \
        in t.log(), t.log()
    assert not os.path.exists(sock)
