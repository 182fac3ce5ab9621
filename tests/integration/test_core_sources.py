"""Issue 10, the consumer core, points 1, 3 and 12 on the real binary: the
durability rule (nothing told outside before the commit that covers it,
here the PocketBase offset mirror), the two-phase stop (the source lives
on through the final commit, so the mirror equals the final cursor), and
a pause that keeps its source (acks still move the cursor, resume goes on
without reading anything twice)."""
import json
import os
import random
import sqlite3
import threading
import time

import pytest

from apiclient import (Subscriber, consumer, ready, remove_dir, request,
                       short_dir)
from conftest import committed_seq, read_cursor, read_lines, wait_for
from peers import http
from test_pocketbase import (MIRROR_FIELDS, PB, config as pb_config, got,
                             got_ids, mirror_rows, server_order, wait_ids)


@pytest.fixture
def sockdir():
    d = short_dir()
    yield d
    remove_dir(d)


@pytest.fixture
def pb(ref_server):
    def make(*args):
        return PB(ref_server("pocketbase_server.py", *args))
    return make


def mirrored_setup(pb):
    s = pb()
    s.collection("orders")
    s.collection("consumer_offsets", fields=MIRROR_FIELDS,
                 unique=[["consumer_group", "collection"]])
    return s, s.login()


def key(position):
    """A position created|id in the order the cursor moves."""
    created, _, rid = position.partition("|")
    return (created, rid)


def local_cursor(t):
    """The committed cursor row of consumer orders. Read by consumer only,
    whatever its key (the source type now; the collection before issue
    10), so the test reads the same on the previous release."""
    if not os.path.exists(t.state):
        return None
    con = sqlite3.connect(f"file:{t.state}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT stream_name FROM cursors WHERE "
                          "consumer_id = 'orders' AND subject_id = ''"
                          ).fetchone()
    except sqlite3.OperationalError:
        row = None
    finally:
        con.close()
    return read_cursor(t.state, "orders", row[0]) if row else None


def mirror_offset(s, token):
    rows = mirror_rows(s, token)
    assert len(rows) <= 1, rows
    return rows[0]["offset"] if rows else None


# ---- 1, 3: the mirror after a stop, and under kill -9 ----------------------


def test_mirror_equals_the_final_cursor_after_sigterm(tether, tmp_path, pb,
                                                      sockdir):
    """The only commit that covers the records is the final one at
    shutdown (checkpoint_interval is far away): the source hears it and
    writes the mirror before it closes. The mirror used to trail the
    local cursor by that last commit."""
    s, token = mirrored_setup(pb)
    out = tmp_path / "out.ndjson"
    cfg = pb_config(out, s.base, sockdir,
                    consumer_keys="offset_store = upstream:consumer_offsets",
                    settle="100ms", poll_interval="200ms").replace(
        "checkpoint_interval = 100ms", "checkpoint_interval = 1h")
    t = tether(cfg)
    made = []
    for round in range(2):  # the row is created (POST), then updated (PATCH)
        t.start()
        ids = s.create("orders", [{"n": round * 10 + i}
                                  for i in range(10)])["ids"]
        made += ids
        wait_ids(t, out, made)
        # Delivered, not yet committed: the mirror has not moved.
        before = local_cursor(t)
        assert before is None or before["last_sequence"] < len(made), before
        mirror = mirror_offset(s, token)
        if before is None or before["last_sequence"] == 0:
            assert mirror is None
        else:
            assert mirror == before["position"]
        assert t.stop() == 0
        row = local_cursor(t)
        last = got(out)[-1]
        assert row["last_sequence"] == len(made)
        assert row["position"] == last["cursor"]
        # The final commit's position, in the mirror, before the exit.
        assert mirror_offset(s, token) == row["position"]
    assert got_ids(out) == server_order(s, made)
    row = mirror_rows(s, token)[0]
    assert row["consumer_group"] == "orders" and row["collection"] == "orders"


def test_mirror_is_never_ahead_of_the_cursor_under_kill9(tether, tmp_path, pb,
                                                         sockdir):
    """kill -9 at 15 random moments while records are created: at every
    kill the mirror row's offset is at or behind the committed local
    cursor (it is written only after the commit that covers it), and in
    the end every record arrives."""
    s, token = mirrored_setup(pb)
    out = tmp_path / "out.ndjson"
    t = tether(pb_config(out, s.base, sockdir,
                         consumer_keys="offset_store = "
                         "upstream:consumer_offsets",
                         settle="100ms", poll_interval="200ms",
                         batch_size=200))
    sock = os.path.join(sockdir, "t.sock")
    t.start()
    total, chunk = 6000, 100
    made = []
    done = threading.Event()

    def writer():
        try:
            for i in range(0, total, chunk):
                r = s.create("orders", [{"n": j} for j in range(i, i + chunk)],
                             same_ms=(i // chunk) % 3 == 0)
                made.extend(r["ids"])
                time.sleep(0.02)  # pacing the writer, not waiting on tether
        finally:
            done.set()

    w = threading.Thread(target=writer)
    w.start()
    rng = random.Random(os.getpid())
    mirrored = 0
    try:
        for _ in range(15):
            base = len(got(out))
            # Up (a signal before its handlers are set would kill it),
            # some progress in this run, then a random moment.
            wait_for(lambda: ready(sock), 30, "the API", t)
            wait_for(lambda: len(got(out)) > base or done.is_set(), 30,
                     "progress in this run", t)
            time.sleep(rng.uniform(0, 0.3))  # the random kill moment
            t.kill9()
            row = local_cursor(t)
            mirror = mirror_offset(s, token)
            if mirror is not None:
                mirrored += 1
                assert row is not None and row["position"], (mirror, row)
                assert key(mirror) <= key(row["position"]), (mirror, row)
            if row is not None and row["position"]:
                held = {r["cursor"] for r in got(out)}
                assert row["position"] in held, row
            t.start()
    finally:
        w.join()
    wait_for(lambda: ready(sock), 30, "the API", t)
    wait_ids(t, out, made, 120)
    assert t.stop() == 0
    recs, torn = read_lines(out)
    assert torn == 0
    assert set(r["data"]["id"] for r in recs) == set(made)
    assert len(made) == total
    # The mirror was there to check at most kills, and it ends equal.
    assert mirrored >= 10, mirrored
    assert mirror_offset(s, token) == \
        local_cursor(t)["position"]


# ---- 3: a pause keeps the source ----------------------------------------------


def test_pause_keeps_the_source(tether, tmp_path, sockdir):
    """A socket-sink consumer, paused with events out: the subscriber's
    acks still move the committed cursor, no new event is emitted, and a
    resume goes on with the next seq from the same source, so nothing is
    delivered twice."""
    sock = os.path.join(sockdir, "api.sock")
    count = 60
    t = tether(f"""
[daemon]
state = state.db
checkpoint_interval = 20ms
status_interval = 0
socket = {sock}

[consumer q]
source = generate
rate = 0
count = {count}
max_in_flight = 10
sink = socket
""")
    t.start()
    wait_for(lambda: ready(sock), 20, "the API", t)
    sub = Subscriber(sock, "q", who="w")
    first = sub.take(10)
    assert [e["seq"] for e in first] == list(range(1, 11))
    assert request(sock, "POST", "/v1/consumers/q/pause")[0] == 200
    assert consumer(sock, "q")["paused"] is True

    # Acks while paused move the committed cursor.
    assert sub.ack(seq=5) == 5
    wait_for(lambda: committed_seq(t.state, "q") == 5, 20, "cursor 5", t)
    c = consumer(sock, "q")
    assert c["state"] == "paused" and c["in_flight"] == 5, c
    assert sub.ack(seq=10) == 5
    wait_for(lambda: committed_seq(t.state, "q") == 10, 20, "cursor 10", t)
    # The window is empty and has room, but nothing new was read.
    c = consumer(sock, "q")
    assert c["in_flight"] == 0 and c["events_received"] == 10, c
    assert sub.events.empty()

    assert request(sock, "POST", "/v1/consumers/q/resume")[0] == 200
    rest = []
    while len(rest) < count - 10:
        evs = sub.take(1)
        rest += evs
        sub.ack(seq=evs[-1]["seq"])
    wait_for(lambda: committed_seq(t.state, "q") == count, 20,
             "every event committed", t)
    allev = first + rest
    assert [e["seq"] for e in allev] == list(range(1, count + 1))
    # The generator's own counter went on: no event was read twice.
    assert [e["cursor"] for e in allev] == [str(i)
                                            for i in range(1, count + 1)]
    assert consumer(sock, "q")["events_received"] == count
    sub.kill()
    assert t.stop() == 0


def test_pause_with_events_out_resumes_without_rereading(tether, tmp_path,
                                                         sockdir):
    """Resumed while half of the paused window is still out: the source
    was kept, so it goes on after what it read, not after the committed
    cursor (a source started anew there would read 6..10 again under new
    seqs)."""
    sock = os.path.join(sockdir, "api.sock")
    count = 40
    t = tether(f"""
[daemon]
state = state.db
checkpoint_interval = 20ms
status_interval = 0
socket = {sock}

[consumer q]
source = generate
rate = 0
count = {count}
max_in_flight = 10
sink = socket
""")
    t.start()
    wait_for(lambda: ready(sock), 20, "the API", t)
    sub = Subscriber(sock, "q", who="w")
    first = sub.take(10)
    assert request(sock, "POST", "/v1/consumers/q/pause")[0] == 200
    assert sub.ack(seq=5) == 5
    wait_for(lambda: committed_seq(t.state, "q") == 5, 20, "cursor 5", t)
    assert consumer(sock, "q")["events_received"] == 10
    assert request(sock, "POST", "/v1/consumers/q/resume")[0] == 200
    assert sub.ack(seq=10) == 5
    rest = []
    while len(rest) < count - 10:
        evs = sub.take(1)
        rest += evs
        sub.ack(seq=evs[-1]["seq"])
    wait_for(lambda: committed_seq(t.state, "q") == count, 20,
             "every event committed", t)
    allev = first + rest
    assert [e["seq"] for e in allev] == list(range(1, count + 1))
    assert [e["cursor"] for e in allev] == [str(i)
                                            for i in range(1, count + 1)]
    sub.kill()
    assert t.stop() == 0


def test_pause_keeps_the_sse_stream(tether, tmp_path, sockdir, ref_server):
    """An sse consumer paused and resumed keeps its stream: it stops
    reading while paused and goes on reading the same response after,
    where a source closed by the pause would open a new one."""
    base = ref_server("sse_server.py", "--events", "10")
    sock = os.path.join(sockdir, "api.sock")
    out = tmp_path / "out.ndjson"
    t = tether(f"""
[daemon]
state = state.db
checkpoint_interval = 20ms
status_interval = 0
socket = {sock}

[upstream ref]
type = sse
url = {base}
reconnect_min = 20ms
reconnect_max = 200ms
immediate_retries = 0

[consumer c]
upstream = ref
path = /events
sink = file:{out}
""")

    def ns():
        return [r["data"]["n"] for r in read_lines(out, running=True)[0]]

    def streams():
        status, _, body = http("GET", f"{base}/_requests?path=/events")
        assert status == 200
        return json.loads(body)

    t.start()
    wait_for(lambda: ready(sock), 20, "the API", t)
    wait_for(lambda: len(ns()) == 10, 20, "ten events", t)
    assert request(sock, "POST", "/v1/consumers/c/pause")[0] == 200
    wait_for(lambda: consumer(sock, "c")["state"] == "paused", 20,
             "paused", t)
    status, _, _ = http("POST", f"{base}/publish?count=5")
    assert status == 200
    assert request(sock, "POST", "/v1/consumers/c/resume")[0] == 200
    wait_for(lambda: len(ns()) == 15, 20, "the events published meanwhile", t)
    assert t.stop() == 0
    recs, torn = read_lines(out)
    assert torn == 0
    assert [r["data"]["n"] for r in recs] == list(range(1, 16))
    assert [r["seq"] for r in recs] == list(range(1, 16))
    # One stream from start to stop: the pause did not close it.
    assert len(streams()) == 1, streams()
