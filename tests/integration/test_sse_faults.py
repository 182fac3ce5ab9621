"""The sse source against the reference server's fault switches
(tests/servers/sse_server.py): every framing and line ending, drops in the
middle of an event, one byte per read, garbage and NUL bytes, a line over
the cap, 204, 503 with Retry-After, redirects and their loop, a stall past
idle_timeout, id-only blocks and id resets, a unix socket. Each case ends
in its documented state, with no event lost and none delivered twice."""
import json
import os
import time

import pytest

from apiclient import consumer, ready, remove_dir, request, short_dir
from conftest import read_lines, wait_for


EVENTS = 20


@pytest.fixture
def sse_server(ref_server):
    def make(*args, events=EVENTS):
        return ref_server("sse_server.py", "--events", str(events), *args)
    return make


def config(out, base, path, consumer_extra="", upstream_extra="",
           reconnect_max="200ms"):
    return f"""
[daemon]
state = state.db
checkpoint_interval = 100ms
status_interval = 0

[upstream ref]
type = sse
url = {base}
reconnect_min = 20ms
reconnect_max = {reconnect_max}
immediate_retries = 0
{upstream_extra}

[consumer c]
upstream = ref
path = {path}
sink = file:{out}
{consumer_extra}
"""


def ns(path):
    return [r["data"]["n"] for r in read_lines(path, running=True)[0]]


def requests(base, path=None):
    from peers import http
    url = f"{base}/_requests" + (f"?path={path}" if path else "")
    status, _, body = http("GET", url)
    assert status == 200
    return json.loads(body)


def run_until(t, out, n, timeout=30):
    t.start()
    wait_for(lambda: len(ns(out)) >= n, timeout, f"{n} events", t)
    assert t.stop() == 0
    records, torn = read_lines(out)
    assert torn == 0
    return [r["data"]["n"] for r in records]


@pytest.mark.parametrize("switches", [
    "framing=close", "framing=chunked", "framing=length",
    "framing=chunked&eol=crlf", "eol=cr", "eol=mixed&framing=chunked",
    "bom=1&nospace=1", "eol=crlf&bom=1&framing=length",
])
def test_framing_and_line_endings(tether, tmp_path, sse_server, switches):
    base = sse_server()
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, f"/events?{switches}"))
    assert run_until(t, out, EVENTS) == list(range(1, EVENTS + 1))


@pytest.mark.parametrize("drop", ["rst", "fin"])
def test_drop_in_the_middle_of_an_event(tether, tmp_path, sse_server, drop):
    base = sse_server()
    out = tmp_path / "out.ndjson"
    # Every connection is cut 45 bytes in: inside the third or fourth event.
    t = tether(config(out, base, f"/events?drop_after=45&drop={drop}"))
    assert run_until(t, out, EVENTS) == list(range(1, EVENTS + 1))
    # Each reconnect resumed after the last whole event.
    ids = [r["headers"] for r in requests(base, "/events")]
    sent = [dict(h).get("Last-Event-ID") for h in ids]
    assert sent[0] is None and sent[1] is not None
    assert "source failed; retrying" in t.log() or drop == "fin"


def test_one_byte_per_read(tether, tmp_path, sse_server):
    base = sse_server(events=8)
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, "/events?drip=1&framing=chunked&eol=mixed"))
    assert run_until(t, out, 8) == list(range(1, 9))


def test_garbage_and_nul_bytes(tether, tmp_path, sse_server):
    base = sse_server()
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, "/events?garbage=200"))
    assert run_until(t, out, EVENTS) == list(range(1, EVENTS + 1))


def test_line_over_the_cap_is_a_poison_event(tether, tmp_path, sse_server):
    base = sse_server()
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, "/events?huge=5000&huge_at=4",
                      consumer_extra="max_line = 4KiB"))
    t.start()
    assert t.wait_exit(30) == 1
    assert ns(out) == [1, 2, 3]
    log = t.log()
    assert 'err="line_too_long in the stream from' in log
    assert "line_too_long 3 times after id \\\"3\\\": a poison event; raise " \
           "max_line or skip it upstream" in log
    # Under the cap the same event goes through.
    out2 = tmp_path / "out2.ndjson"
    # A state of its own: another path is another stream, which the first
    # run's cursor does not belong to.
    t2 = tether(config(out2, base, "/events?huge=3000&huge_at=4",
                       consumer_extra="max_line = 4KiB"), name="under",
                workdir=tmp_path / "under")
    assert run_until(t2, out2, EVENTS) == list(range(1, EVENTS + 1))


@pytest.mark.parametrize("status,message", [
    (204, "the server answered 204 No Content: it asks clients to stop"),
    (404, "HTTP 404 from http://127.0.0.1:"),
    (401, "HTTP 401 from http://127.0.0.1:"),
])
def test_statuses_that_stop(tether, tmp_path, sse_server, status, message):
    base = sse_server()
    t = tether(config(tmp_path / "out", base, f"/events?status={status}"))
    t.start()
    assert t.wait_exit(20) == 1
    assert message in t.log()
    assert len(requests(base, "/events")) == 1  # no retry


def test_wrong_content_type_stops(tether, tmp_path, sse_server):
    base = sse_server()
    t = tether(config(tmp_path / "out", base, "/events?ctype=text/plain"))
    t.start()
    assert t.wait_exit(20) == 1
    assert "expected Content-Type text/event-stream from " \
           f"{base}/events?ctype=text/plain, got text/plain" in t.log()


@pytest.mark.parametrize("retry_after", ["1", "date"])
def test_503_with_retry_after(tether, tmp_path, sse_server, retry_after):
    base = sse_server()
    out = tmp_path / "out.ndjson"
    path = f"/events?status=503&fail=2&retry_after={retry_after}"
    t = tether(config(out, base, path, reconnect_max="5s"))
    assert run_until(t, out, EVENTS) == list(range(1, EVENTS + 1))
    times = [r["time"] for r in requests(base, "/events")]
    assert len(times) == 3
    # The server's hint wins over reconnect_min (20 ms): about a second
    # between attempts ("date" rounds up to a whole second, so >= 0.5 s).
    assert times[1] - times[0] >= 0.5 and times[2] - times[1] >= 0.5
    assert f"HTTP 503 from {base}{path}" in t.log()


def test_500_backs_off_then_recovers(tether, tmp_path, sse_server):
    base = sse_server()
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, "/events?status=500&fail=3"))
    assert run_until(t, out, EVENTS) == list(range(1, EVENTS + 1))
    assert t.log().count("source failed; retrying") == 3
    assert "source connected again consumer=c source=sse attempts=3" in \
        t.log()


def test_redirect_is_followed(tether, tmp_path, sse_server):
    base = sse_server()
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, "/events?redirect=307"))
    assert run_until(t, out, EVENTS) == list(range(1, EVENTS + 1))


def test_redirect_loop_backs_off(tether, tmp_path, sse_server):
    base = sse_server()
    t = tether(config(tmp_path / "out", base, "/events?redirect=302&loop=1"))
    t.start()
    wait_for(lambda: t.log().count("source failed; retrying") >= 2, 20,
             "two failed attempts", t)
    assert t.stop() == 0
    assert "redirect" in t.log().split("source failed; retrying")[1]


def test_stall_past_idle_timeout(tether, tmp_path, sse_server):
    base = sse_server()
    t = tether(config(tmp_path / "out", base, "/events?stall=5",
                      consumer_extra="idle_timeout = 300ms"))
    t.start()
    wait_for(lambda: t.log().count("source failed; retrying") >= 2, 20,
             "two idle timeouts", t)
    assert t.stop() == 0
    assert "idle" in t.log().split("source failed; retrying")[1]


def test_keepalive_comments_keep_the_stream(tether, tmp_path, sse_server):
    base = sse_server(events=1)
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, "/events?keepalive=0.1",
                      consumer_extra="idle_timeout = 400ms"))
    t.start()
    wait_for(lambda: len(ns(out)) >= 1, 20, "the first event", t)
    # Longer than three idle timeouts: comments keep it alive, one request.
    deadline = time.monotonic() + 1.5
    wait_for(lambda: time.monotonic() > deadline, 5, "1.5 s of keep-alives")
    assert len(requests(base, "/events")) == 1
    assert t.stop() == 0
    assert "source failed" not in t.log()


def test_id_only_and_id_reset(tether, tmp_path, sse_server):
    base = sse_server()
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, "/events?idonly=3&idreset=7"))
    got = run_until(t, out, EVENTS - 1)
    assert got == [n for n in range(1, EVENTS + 1) if n != 3]
    records = read_lines(out)[0]
    assert [r["cursor"] for r in records[:3]] == ["1", "2", "4"]
    assert records[5]["cursor"] == ""  # event 7 reset the id


def test_retry_hint_after_a_clean_end(tether, tmp_path, sse_server):
    base = sse_server()
    out = tmp_path / "out.ndjson"
    # The hint is clamped to [reconnect_min, reconnect_max]: 700 ms fits.
    t = tether(config(out, base, "/events?retry=700&done=1",
                      reconnect_max="5s"))
    t.start()
    wait_for(lambda: len(requests(base, "/events")) >= 2, 20,
             "a reconnect after the clean end", t)
    assert t.stop() == 0
    times = [r["time"] for r in requests(base, "/events")]
    assert times[1] - times[0] >= 0.6
    assert dict(requests(base, "/events")[1]["headers"])[
        "Last-Event-ID"] == str(EVENTS)
    assert ns(out) == list(range(1, EVENTS + 1))


def test_resume_by_query_and_filter(tether, tmp_path, sse_server):
    base = sse_server()
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, "/events?need_accept=1",
                      consumer_extra="resume = query:last_event_id\n"
                                     "event_types = message"))
    assert run_until(t, out, EVENTS) == list(range(1, EVENTS + 1))
    # A restart sends the committed id as ?last_event_id=.
    from peers import http
    http("POST", f"{base}/publish", b'{"n":99}')
    t.start()
    wait_for(lambda: len(ns(out)) >= EVENTS + 1, 20, "the published event", t)
    assert t.stop() == 0
    last = requests(base, "/events")[-1]
    assert last["query"].get("last_event_id") == str(EVENTS)
    assert ns(out)[-1] == 99


def test_unix_socket_upstream(tether, tmp_path, sse_server):
    sock = str(tmp_path / "sse.sock")
    base = sse_server("--unix", sock)
    out = tmp_path / "out.ndjson"
    t = tether(config(out, "http://upstream.local", "/events",
                      upstream_extra=f"unix_socket = {sock}"))
    assert run_until(t, out, EVENTS) == list(range(1, EVENTS + 1))
    assert dict(requests(base, "/events")[0]["headers"])["Host"] == \
        "upstream.local"


def test_pause_with_a_live_stream_takes_nothing(tether, tmp_path, sse_server):
    # A paused consumer keeps its source and its stream open; events that
    # arrive meanwhile wait (the stream stops reading), none is taken
    # without room, and after the resume each comes once, in order.
    from peers import http
    base = sse_server(events=5)
    out = tmp_path / "out.ndjson"
    sockdir = short_dir()
    sock = os.path.join(sockdir, "api.sock")
    try:
        t = tether(config(out, base, "/events?keepalive=0.2").replace(
            "status_interval = 0", f"status_interval = 0\nsocket = {sock}"))
        t.start()
        wait_for(lambda: ready(sock) and len(ns(out)) == 5, 20,
                 "the first five events", t)
        status, _, body = request(sock, "POST", "/v1/consumers/c/pause")
        assert status == 200 and body["consumer"]["paused"] is True
        for _ in range(5):
            assert http("POST", f"{base}/publish")[0] == 200
        # For a while nothing more is taken, and tether stays up.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            assert t.proc.poll() is None, t.log()
            c = consumer(sock, "c")
            assert c["events_received"] == 5 and len(ns(out)) == 5, c
            time.sleep(0.05)
        status, _, _ = request(sock, "POST", "/v1/consumers/c/resume")
        assert status == 200
        wait_for(lambda: len(ns(out)) >= 10, 20, "the five held events", t)
        assert t.stop() == 0
        assert ns(out) == list(range(1, 11))
        # One stream all along: the pause held it, it did not reconnect.
        assert len(requests(base, "/events")) == 1
    finally:
        remove_dir(sockdir)


def test_streams_beyond_max_connections(tether, tmp_path, sse_server):
    # Each stream has a connection of its own, outside max_connections:
    # three consumers of one upstream with max_connections = 1 all read.
    base = sse_server()
    outs = [tmp_path / f"out{i}.ndjson" for i in range(3)]
    text = config(outs[0], base, "/a", upstream_extra="max_connections = 1")
    for i in (1, 2):
        text += f"""
[consumer c{i}]
upstream = ref
path = /{"abc"[i]}
sink = file:{outs[i]}
"""
    t = tether(text)
    t.start()
    for out in outs:
        wait_for(lambda: len(ns(out)) >= EVENTS, 20, f"{EVENTS} events in {out}",
                 t)
    assert t.stop() == 0
    for out in outs:
        assert ns(out) == list(range(1, EVENTS + 1))


def test_stream_past_max_streams_backs_off(tether, tmp_path, sse_server):
    # max_streams caps the streams of an origin: the one past it is
    # refused with a message naming the cap, and retried with backoff.
    base = sse_server()
    outs = [tmp_path / "out0.ndjson", tmp_path / "out1.ndjson"]
    text = config(outs[0], base, "/a", upstream_extra="max_streams = 1")
    text += f"""
[consumer c1]
upstream = ref
path = /b
sink = file:{outs[1]}
"""
    t = tether(text)
    t.start()
    wait_for(lambda: "(max_streams)" in t.log(), 20, "the cap refused", t)
    assert "long-lived streams at once to 127.0.0.1:" in t.log()
    # One of the two reads; the other keeps retrying, never failing.
    wait_for(lambda: max(len(ns(o)) for o in outs) >= EVENTS, 20,
             "one stream read", t)
    assert "the consumer stops" not in t.log()
    assert t.stop() == 0
