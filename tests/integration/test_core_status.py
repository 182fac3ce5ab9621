"""Issue 10, the consumer core, points 7, 8 and 11: errors go to the cursor
row's last_error and clear with the next advance; tether status, the API
and the metrics say what the sink and the store are doing (a fifo with no
reader, a socket with no subscriber, a full disk, failing commits, a drain
that waits); and the window is bounded in bytes as well as in events."""
import json
import os
import re
import signal
import threading

import pytest

from apiclient import (Subscriber, cli, consumer, get, ready, remove_dir,
                       short_dir)
from conftest import committed_seq, read_lines, wait_for
from peers import free_port
from test_disk import lift_fsize, limit_fsize


@pytest.fixture
def sockdir():
    d = short_dir()
    yield d
    remove_dir(d)


def sock_of(sockdir):
    return os.path.join(sockdir, "api.sock")


def status_rows(sock):
    """`tether status` as (exit code, first line, {consumer: {COLUMN:
    text}}). LAST ERROR is the rest of the line after the fixed columns."""
    p = cli("status", sock=sock)
    lines = p.stdout.splitlines()
    header = lines[2]
    cols = ["CONSUMER", "STATE", "SINK", "CURSOR", "COMMITTED", "IN_FLIGHT",
            "LAG_S", "EVENTS/S"]
    assert header.split()[:len(cols)] == cols, header
    err_at = header.index("LAST ERROR")
    table = {}
    for line in lines[3:]:
        fields = line[:err_at].split()
        row = dict(zip(cols, fields))
        row["LAST ERROR"] = line[err_at:].strip()
        table[fields[0]] = row
    return p.returncode, lines[0], table


def status_json(sock):
    p = cli("status", "--json", sock=sock)
    return {c["name"]: c for c in json.loads(p.stdout)["consumers"]}


def cursor_api(sock, name, stream):
    status, body = get(sock, f"/v1/cursors/{name}/{stream}")
    return body["cursor"] if status == 200 else None


def metric(text, name, **labels):
    """The value of one sample of the Prometheus text, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def metrics(sock):
    status, body = get(sock, "/metrics")
    assert status == 200
    return body


# ---- 7: errors recorded ------------------------------------------------------


def test_source_error_is_recorded_and_cleared(tether, tmp_path, sockdir,
                                              ref_server):
    """An upstream that refuses connections: the failure is in the cursor
    row's last_error (API and CLI) and in tether status; once the server
    is up and an event is delivered, it is gone again."""
    sock = sock_of(sockdir)
    port = free_port()
    out = tmp_path / "out.ndjson"
    t = tether(f"""
[daemon]
state = state.db
checkpoint_interval = 50ms
status_interval = 0
socket = {sock}

[upstream ref]
type = http-poll
url = http://127.0.0.1:{port}
reconnect_min = 50ms
reconnect_max = 200ms
immediate_retries = 0

[consumer c]
upstream = ref
sink = file:{out}
poll_interval = 100ms
path = /db/_changes?since={{cursor}}&limit=4
cursor_initial = 0
items = /results
page_cursor = /last_seq
""")
    t.start()
    wait_for(lambda: ready(sock), 20, "the API", t)
    # Recorded in the state file, so shown by /v1/cursors.

    def listed_error():
        status, body = get(sock, "/v1/cursors?consumer_id=c")
        assert status == 200, body
        return [c for c in body["cursors"] if c.get("last_error")]
    [listed] = wait_for(listed_error, 20, "last_error in /v1/cursors", t)
    assert "refused" in listed["last_error"].lower(), listed
    assert str(port) in listed["last_error"], listed
    assert listed["stream_name"] == "http-poll"
    assert listed["last_sequence"] == 0
    assert t.cursor("c", "http-poll")["last_error"] == listed["last_error"]
    p = cli("cursors", "get", "c", "http-poll", sock=sock)
    assert p.returncode == 0, p.stderr
    assert "last_error: " in p.stdout and "refused" in p.stdout.lower()
    _, _, table = status_rows(sock)
    assert "refused" in table["c"]["LAST ERROR"].lower(), table
    assert consumer(sock, "c")["state"] == "backoff"

    ref_server("poll_server.py", "--port", str(port), "--docs", "3")
    wait_for(lambda: committed_seq(t.state, "c", "http-poll") == 3, 30,
             "three changes committed", t)
    # The advance cleared it.
    cur = cursor_api(sock, "c", "http-poll")
    assert "last_error" not in cur, cur
    assert t.cursor("c", "http-poll")["last_error"] == ""
    p = cli("cursors", "get", "c", "http-poll", sock=sock)
    assert "last_error" not in p.stdout, p.stdout
    wait_for(lambda: status_rows(sock)[2]["c"]["LAST ERROR"] == "", 20,
             "LAST ERROR cleared in tether status", t)
    assert t.stop() == 0


# ---- 8: status tells the truth -----------------------------------------------


def test_sink_states_in_status_and_metrics(tether, tmp_path, sockdir):
    """A fifo with no reader is waiting_for_reader, a socket consumer with
    events and no subscriber is no_subscriber, a file sink that writes is
    ok: in tether status (SINK), --json (sink_status) and the metrics,
    with the bytes each sink delivered."""
    sock = sock_of(sockdir)
    pipe = tmp_path / "events.pipe"
    out = tmp_path / "out.ndjson"
    t = tether(f"""
[daemon]
state = state.db
checkpoint_interval = 50ms
status_interval = 0
shutdown_timeout = 1s
socket = {sock}

[consumer pipe]
source = generate
rate = 0
count = 20
sink = fifo:{pipe}

[consumer sub]
source = generate
rate = 0
count = 20
sink = socket

[consumer file]
source = generate
rate = 0
count = 20
sink = file:{out}
""")
    t.start()
    wait_for(lambda: ready(sock), 20, "the API", t)
    wait_for(lambda: consumer(sock, "sub")["in_flight"] == 20 and
             consumer(sock, "pipe")["in_flight"] > 0 and
             committed_seq(t.state, "file") == 20, 20,
             "events waiting and the file written", t)
    code, first, table = status_rows(sock)
    assert code == 0 and first == "tether is ready"
    assert table["pipe"]["SINK"] == "waiting_for_reader", table
    assert table["sub"]["SINK"] == "no_subscriber", table
    assert table["file"]["SINK"] == "ok", table
    js = status_json(sock)
    assert js["pipe"]["sink_status"] == "waiting_for_reader"
    assert js["sub"]["sink_status"] == "no_subscriber"
    assert js["file"]["sink_status"] == "ok"

    m = metrics(sock)
    for name, now in (("pipe", "waiting_for_reader"), ("sub", "no_subscriber"),
                      ("file", "ok")):
        assert metric(m, "tether_sink_state", consumer=name, state=now) == 1, \
            (name, m)
        others = [metric(m, "tether_sink_state", consumer=name, state=s)
                  for s in ("ok", "waiting_for_reader", "no_subscriber",
                            "retrying", "failed") if s != now]
        assert others == [0, 0, 0, 0], (name, others)
    # Bytes delivered: exactly the file's size; nothing for the others yet.
    size = os.path.getsize(out)
    assert metric(m, "tether_sink_delivered_bytes_total",
                  consumer="file") == size
    assert consumer(sock, "file")["bytes_delivered"] == size
    assert metric(m, "tether_sink_delivered_bytes_total", consumer="sub") == 0
    held = consumer(sock, "sub")["bytes_in_flight"]
    assert held > 20 * 100
    assert metric(m, "tether_events_in_flight_bytes", consumer="sub") == held

    # A subscriber takes everything: the socket sink is ok again, and its
    # bytes delivered are the lines it got.
    s = Subscriber(sock, "sub", who="w")
    evs = s.take(20)
    assert s.ack(seq=20) == 20
    wait_for(lambda: consumer(sock, "sub")["sink_status"] == "ok", 20,
             "the socket sink ok", t)
    m = metrics(sock)
    assert metric(m, "tether_sink_state", consumer="sub",
                  state="no_subscriber") == 0
    assert metric(m, "tether_sink_state", consumer="sub", state="ok") == 1
    lines = sum(len(json.dumps(e, separators=(",", ":"))) + 1 for e in evs)
    assert metric(m, "tether_sink_delivered_bytes_total",
                  consumer="sub") == lines
    s.kill()
    assert t.stop() == 0


def test_full_disk_shows_retrying_with_the_error(tether, tmp_path, sockdir):
    """A file sink on a full disk (EFBIG from RLIMIT_FSIZE) is retrying,
    and LAST ERROR says why; it used to show connected, no error and a
    null backoff. Once space returns it is ok and everything arrives."""
    sock = sock_of(sockdir)
    out = tmp_path / "out.ndjson"
    count = 8000
    t = tether(f"""
[daemon]
state = state.db
checkpoint_interval = 100ms
status_interval = 0
socket = {sock}

[consumer gen]
source = generate
rate = 4000
count = {count}
retry_min = 50ms
retry_max = 200ms
sink = file:{out}
""")
    t.start(preexec_fn=limit_fsize(1_000_000))
    wait_for(lambda: ready(sock), 20, "the API", t)
    t.wait_log(r"sink failed; the batch will be retried consumer=gen", 30)

    def retrying():
        code, _, table = status_rows(sock)
        return table["gen"]["SINK"] == "retrying" and table["gen"]
    row = wait_for(retrying, 20, "SINK retrying in tether status", t)
    assert "File too large" in row["LAST ERROR"], row
    assert "out.ndjson" in row["LAST ERROR"], row
    js = status_json(sock)["gen"]
    assert js["sink_status"].startswith("retrying: "), js
    assert "File too large" in js["sink_status"]
    assert "File too large" in js["last_error"]
    m = metrics(sock)
    assert metric(m, "tether_sink_state", consumer="gen",
                  state="retrying") == 1

    lift_fsize(t.pid)
    wait_for(lambda: committed_seq(t.state, "gen") == count, 60,
             "every event once space is back", t)
    wait_for(lambda: status_rows(sock)[2]["gen"]["SINK"] == "ok", 20,
             "SINK ok", t)
    assert t.stop() == 0
    recs, torn = read_lines(out)
    assert torn == 0
    assert [r["seq"] for r in recs] == list(range(1, count + 1))


def test_ready_turns_false_while_commits_fail(tether, tmp_path, sockdir):
    """Cursor commits that fail (the state file cannot grow: EFBIG) for
    ready_commit_timeout make /v1/ready 503 commits_failing and tether
    status exit 1; once they succeed again it is 200."""
    sock = sock_of(sockdir)
    t = tether(f"""
[daemon]
state = state.db
checkpoint_interval = 20ms
status_interval = 0
ready_commit_timeout = 1s
socket = {sock}

[consumer gen]
source = generate
rate = 2000
count = 3000
max_in_flight = 50
sink = stdout
""")
    # The sink is a pipe, beyond RLIMIT_FSIZE's reach: only the state
    # file's write-ahead log runs into the limit.
    t.start(preexec_fn=limit_fsize(96 * 1024), pipe_stdout=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(t.proc.stdout))
    reader.start()
    try:
        t.wait_log(r"error cursor commit failed; consumers wait until it "
                   r"succeeds", 30)

        def failing():
            status, body = get(sock, "/v1/ready")
            return status == 503 and body["error"]["code"] == \
                "commits_failing" and body
        body = wait_for(failing, 30, "/v1/ready 503 commits_failing", t)
        msg = body["error"]["message"]
        m = re.search(r"failing for ([0-9.]+) s", msg)
        assert m and float(m.group(1)) >= 1.0, msg
        assert "File too large" in msg or "disk" in msg, msg
        code, first, table = status_rows(sock)
        assert code == 1, first
        assert first.startswith("tether is not ready: cursor commits have "
                                "been failing"), first
        assert table["gen"]["LAST ERROR"], table
        assert consumer(sock, "gen")["last_error"]

        lift_fsize(t.pid)
        wait_for(lambda: get(sock, "/v1/ready")[0] == 200, 30,
                 "/v1/ready 200 again", t)
        t.wait_log(r"cursor commits recovered")
        wait_for(lambda: committed_seq(t.state, "gen") == 3000, 30,
                 "every event committed", t)
        assert cli("status", sock=sock).returncode == 0
        assert t.stop() == 0
    finally:
        if t.proc.poll() is None:
            t.proc.kill()
        reader.join()
    seqs = [json.loads(l)["seq"] for l in lines]
    assert seqs == list(range(1, 3001))


def test_drain_says_what_it_waits_for(tether, tmp_path, sockdir):
    """A drain that waits (a fifo with no reader, events in flight) says
    every few seconds which consumer it waits for and on what, then gives
    up at shutdown_timeout."""
    sock = sock_of(sockdir)
    pipe = tmp_path / "events.pipe"
    t = tether(f"""
[daemon]
state = state.db
checkpoint_interval = 50ms
status_interval = 0
shutdown_timeout = 5s
socket = {sock}

[consumer stuck]
source = generate
rate = 0
count = 10
sink = fifo:{pipe}

[consumer fine]
source = generate
rate = 0
count = 10
sink = file:{tmp_path / "out.ndjson"}
""")
    t.start()
    wait_for(lambda: ready(sock), 20, "the API", t)
    wait_for(lambda: consumer(sock, "stuck")["in_flight"] == 10 and
             committed_seq(t.state, "fine") == 10, 20,
             "events waiting for a reader", t)
    t.send(signal.SIGTERM)
    pattern = (r"draining: still waiting for a consumer consumer=stuck "
               r"in_flight=10 sink=waiting_for_reader")
    wait_for(lambda: len(re.findall(pattern, t.log())) >= 2, 20,
             "two drain notes", t)
    assert t.wait_exit(30) == 0
    log = t.log()
    notes = [l for l in log.splitlines() if "draining: still waiting" in l]
    assert len(notes) >= 2, log
    assert all("consumer=stuck" in l for l in notes), notes
    assert "shutdown timeout: giving up on events not yet delivered" in log
    assert committed_seq(t.state, "stuck") == 0


# ---- 11: a byte bound on the window ------------------------------------------


def test_window_is_bounded_in_bytes(tether, tmp_path, sockdir):
    """64 KiB events, max_in_flight = 1000 and max_in_flight_bytes = 1 MiB
    into a socket sink with no subscriber: the window holds about 16
    events (the bytes bound, not 1000); with a subscriber everything
    arrives, in order."""
    sock = sock_of(sockdir)
    count = 200
    t = tether(f"""
[daemon]
state = state.db
checkpoint_interval = 50ms
status_interval = 0
socket = {sock}

[consumer big]
source = generate
rate = 0
count = {count}
payload_size = 64KiB
max_in_flight = 1000
max_in_flight_bytes = 1MiB
sink = socket
""")
    t.start()
    wait_for(lambda: ready(sock), 20, "the API", t)
    c = wait_for(lambda: (lambda c: c["in_flight"] > 0 and
                          c["sink_status"] == "no_subscriber" and c)(
        consumer(sock, "big")), 20, "a full window", t)
    # The generator fills the window in one burst on the loop that also
    # answers the API, so what the API shows is the window full.
    one = c["bytes_in_flight"] / c["in_flight"]
    assert 64 * 1024 < one < 64 * 1024 + 1024, c
    assert 15 <= c["in_flight"] <= 17, c
    assert c["bytes_in_flight"] <= 1024 * 1024 + one, c
    assert c["events_received"] == c["in_flight"], c
    assert committed_seq(t.state, "big") == 0

    s = Subscriber(sock, "big", who="w")
    got = []
    while len(got) < count:
        evs = s.take(1, timeout=30)
        got += evs
        s.ack(seq=evs[-1]["seq"])
        c = consumer(sock, "big")
        assert c["bytes_in_flight"] <= 1024 * 1024 + one, c
    assert [e["seq"] for e in got] == list(range(1, count + 1))
    assert all(len(e["data"]["payload"]) > 60 * 1024 for e in got)
    wait_for(lambda: committed_seq(t.state, "big") == count, 20,
             "every event committed", t)
    s.kill()
    assert t.stop() == 0
