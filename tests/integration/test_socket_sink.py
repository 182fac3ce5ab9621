"""Sink `socket`: subscribers of the local API take events and acknowledge
them; competing subscribers, redelivery, back-pressure, crashes."""
import os
import random
import signal
import socket
import time

import pytest

from apiclient import (ready, Subscriber, consumer, get, remove_dir, request,
                       short_dir)
from conftest import committed_seq, read_lines, wait_for


@pytest.fixture
def sockdir():
    d = short_dir()
    yield d
    remove_dir(d)


def config(sock, rate=0, count=0, window=1000, ack_timeout="30s", extra=""):
    return f"""
[daemon]
state = state.db
checkpoint_interval = 20ms
status_interval = 0
shutdown_timeout = 2s
socket = {sock}

[consumer q]
source = generate
rate = {rate}
count = {count}
max_in_flight = {window}
sink = socket
ack_timeout = {ack_timeout}
{extra}
"""


def start(tether, sockdir, **kw):
    sock = os.path.join(sockdir, "api.sock")
    t = tether(config(sock, **kw))
    t.start()
    wait_for(lambda: ready(sock),
             20, "the API", t)
    return t, sock


def test_ndjson_and_sse_subscribers_and_cumulative_ack(tether, sockdir):
    t, sock = start(tether, sockdir, count=30)
    sub = Subscriber(sock, "q", who="a")
    evs = sub.take(30)
    assert [e["seq"] for e in evs] == list(range(1, 31))
    assert sub.headers["content-type"] == "application/x-ndjson"
    assert evs[0]["consumer"] == "q" and evs[0]["event"] == "tick"
    # Nothing is committed before the application acknowledges.
    assert committed_seq(t.state, "q") == 0
    assert sub.ack(seq=10) == 10
    wait_for(lambda: committed_seq(t.state, "q") == 10, 20, "cursor 10", t)
    # Selective acks: the cursor moves only over a contiguous run.
    assert sub.ack(seqs=[12, 13, 30]) == 3
    assert consumer(sock, "q")["cursor"]["seq"] == 10
    assert sub.ack(seqs=[11]) == 1
    wait_for(lambda: committed_seq(t.state, "q") == 13, 20, "cursor 13", t)
    sub.kill()

    # The rest goes to the next subscriber, here over text/event-stream
    # with id = seq.
    sse = Subscriber(sock, "q", sse=True)
    evs = sse.take(16)
    assert sorted(e["seq"] for e in evs) == list(range(14, 30))
    assert all(e["_sse_id"] == str(e["seq"]) for e in evs)
    assert sse.headers["content-type"].startswith("text/event-stream")
    assert sse.ack(seq=30) == 16
    wait_for(lambda: committed_seq(t.state, "q") == 30, 20, "cursor 30", t)
    status, _, body = request(sock, "POST", "/v1/consumers/q/ack",
                              {"seq": "x"})
    assert status == 400 and body["error"]["code"] == "invalid_ack"
    status, _, body = request(sock, "POST", "/v1/consumers/q/ack", "[1,")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    sse.kill()


def test_no_subscriber_fills_the_window_and_pauses_the_source(tether,
                                                               sockdir):
    t, sock = start(tether, sockdir, window=50)
    wait_for(lambda: consumer(sock, "q")["in_flight"] == 50, 20,
             "the window to fill", t)
    seen = consumer(sock, "q")["events_received"]
    assert seen == 50
    time.sleep(0.3)  # an observation window: the source stays paused
    assert consumer(sock, "q")["events_received"] == 50
    assert committed_seq(t.state, "q") == 0
    # A subscriber arrives: nothing was dropped.
    sub = Subscriber(sock, "q", who="late")
    evs = sub.take(50)
    assert [e["seq"] for e in evs] == list(range(1, 51))
    sub.ack(seq=50)
    more = sub.take(10)
    assert more[0]["seq"] == 51
    sub.kill()


def test_ack_takes_only_events_out_with_a_subscriber(tether, sockdir):
    """An acknowledgement names events the application has: one never sent
    to any subscriber, or sent to another than the one named, is not
    acknowledged, and the answer counts only what was."""
    t, sock = start(tether, sockdir, count=50, window=50)
    wait_for(lambda: consumer(sock, "q")["in_flight"] == 50, 20,
             "the window to fill", t)

    def ack(body):
        status, _, answer = request(sock, "POST", "/v1/consumers/q/ack", body)
        assert status == 200, answer
        return answer["acknowledged"]

    # No subscriber: nothing was sent, so nothing can be acknowledged. The
    # ack is carried out before it is answered, so the cursor would already
    # show it.
    assert ack({"seq": 5000}) == 0
    assert ack({"seqs": [1, 2, 50, 150]}) == 0
    assert consumer(sock, "q")["cursor"]["seq"] == 0
    assert consumer(sock, "q")["in_flight"] == 50

    a = Subscriber(sock, "q", who="a")
    got = a.take(50)
    assert [e["seq"] for e in got] == list(range(1, 51))
    # Named for a subscriber that holds none of them: nothing.
    assert ack({"seq": 5000, "subscriber": "b"}) == 0
    assert ack({"seqs": [3], "subscriber": "b"}) == 0
    assert consumer(sock, "q")["cursor"]["seq"] == 0
    # The holder's name, or none: exactly what is out, however far the
    # number reaches.
    assert ack({"seqs": [1, 2, 2, 9999], "subscriber": "a"}) == 2
    assert ack({"seq": 5000, "subscriber": "a"}) == 48
    assert ack({"seq": 5000}) == 0
    wait_for(lambda: committed_seq(t.state, "q") == 50, 20, "cursor 50", t)
    a.kill()


def test_an_ack_naming_a_huge_seq_costs_what_is_held(tether, sockdir):
    """An acknowledgement costs O(events held): a seq near 2^63 once walked
    every number up to it and froze the loop for good."""
    t, sock = start(tether, sockdir, count=50, window=50)
    sub = Subscriber(sock, "q", who="a")
    sub.take(50)
    for body in ({"seq": 9223372036854775807},
                 {"seq": 9223372036854775807, "subscriber": "nobody"},
                 {"seqs": [9223372036854775807, 0, 1]}):
        began = time.monotonic()
        status, _, answer = request(sock, "POST", "/v1/consumers/q/ack", body)
        assert status == 200, answer
        # Generous for a loaded machine; the walk took hours.
        assert time.monotonic() - began < 5, body
        assert get(sock, "/v1/health")[0] == 200
    # The first one acknowledged the 50 held, the third one nothing new.
    wait_for(lambda: committed_seq(t.state, "q") >= 50, 20, "cursor 50", t)
    sub.kill()


def test_competing_subscribers_one_killed_mid_stream(tether, sockdir):
    total = 2000
    t, sock = start(tether, sockdir, count=total, window=200)
    a = Subscriber(sock, "q", who="a")
    b = Subscriber(sock, "q", who="b")
    wait_for(lambda: consumer(sock, "q")["subscribers"] == 2, 20,
             "two subscribers", t)
    got_a, got_b = [], []
    # a takes some, acks them, then dies holding unacknowledged events.
    got_a += a.take(60)
    a.ack(seq=max(e["seq"] for e in got_a[:30]))
    # Everything a had acknowledged is not its own to lose.
    a.kill()
    wait_for(lambda: consumer(sock, "q")["subscribers"] == 1, 20,
             "a to be gone", t)
    acked_by_a = {e["seq"] for e in got_a[:30]}
    seen_b = set()
    while len(seen_b | acked_by_a) < total:
        batch = b.take(1, timeout=20)
        got_b += batch
        seen_b.update(e["seq"] for e in batch)
        if len(got_b) % 100 == 0:
            b.ack(seq=max(seen_b))
    b.ack(seq=total)
    wait_for(lambda: committed_seq(t.state, "q") == total, 20,
             "every event acknowledged", t)
    # a's unacknowledged events reached b; both saw some (they competed).
    unacked_a = {e["seq"] for e in got_a} - acked_by_a
    assert unacked_a and unacked_a <= seen_b
    assert seen_b | acked_by_a == set(range(1, total + 1))
    # Competing, not broadcasting: b did not get what a acknowledged.
    assert not (acked_by_a & seen_b)
    t.wait_log(r"subscriber left consumer=q unacknowledged=\d+")
    c = consumer(sock, "q")
    assert c["events_retried"] >= len(unacked_a)
    b.kill()


def test_ack_timeout_sends_the_event_to_another(tether, sockdir):
    t, sock = start(tether, sockdir, count=5, ack_timeout="300ms")
    slow = Subscriber(sock, "q", who="slow")
    first = slow.take(5)
    fast = Subscriber(sock, "q", who="fast")
    # slow never acknowledges: after ack_timeout the events go round again,
    # and fast acknowledges each one it gets.
    again = []
    deadline = time.monotonic() + 20
    while {e["seq"] for e in again} != set(range(1, 6)):
        assert time.monotonic() < deadline, again
        try:
            got = fast.take(1, timeout=1)
        except AssertionError:
            continue
        again += got
        fast.ack(seqs=[got[0]["seq"]])
    wait_for(lambda: committed_seq(t.state, "q") == 5, 20, "cursor 5", t)
    assert [e["seq"] for e in first] == [1, 2, 3, 4, 5]
    t.wait_log(r"not acknowledged in time")
    slow.kill()
    fast.kill()


def test_a_named_cumulative_ack_covers_only_its_own_events(tether, sockdir):
    # Slow enough that both are attached before most events exist.
    t, sock = start(tether, sockdir, count=20, rate=50)
    a = Subscriber(sock, "q", who="a")
    b = Subscriber(sock, "q", who="b")
    wait_for(lambda: consumer(sock, "q")["subscribers"] == 2, 20, "two", t)
    seen = {}

    def drain():
        for who, s in (("a", a), ("b", b)):
            while not s.events.empty():
                seen[s.events.get()["seq"]] = who
        return len(seen) == 20
    wait_for(drain, 20, "20 events between the two", t)
    a_seqs = sorted(s for s, w in seen.items() if w == "a")
    b_seqs = sorted(s for s, w in seen.items() if w == "b")
    assert a_seqs and b_seqs
    assert a.ack(seq=20) == len(a_seqs)
    # b's events are still outstanding: the cursor stops before the first.
    wait_for(lambda: consumer(sock, "q")["cursor"]["seq"] == min(b_seqs) - 1,
             20, "the cursor to stop before b's first event", t)
    assert b.ack(seq=20) == len(b_seqs)
    wait_for(lambda: committed_seq(t.state, "q") == 20, 20, "cursor 20", t)
    a.kill()
    b.kill()


def test_peek_does_not_move_the_cursor(tether, sockdir):
    t, sock = start(tether, sockdir, count=10)
    peek = Subscriber(sock, "q", peek=True)
    evs = peek.take(10)
    assert [e["seq"] for e in evs] == list(range(1, 11))
    assert consumer(sock, "q")["subscribers"] == 0
    # Seen is not taken: the events wait for a real subscriber.
    time.sleep(0.3)  # an observation window: the cursor must not move
    assert committed_seq(t.state, "q") == 0
    assert consumer(sock, "q")["in_flight"] == 10
    peek.kill()


def test_kill9_during_acks_loses_nothing(tether, sockdir):
    total = 3000
    t, sock = start(tether, sockdir, count=total, window=300)
    seen = set()
    rng = random.Random(5)
    for run in range(4):
        sub = Subscriber(sock, "q", who=f"run{run}")
        deadline = time.monotonic() + rng.uniform(0.2, 0.8)
        last = 0
        while time.monotonic() < deadline:
            try:
                evs = sub.take(1, timeout=0.5)
            except AssertionError:
                break
            seen.add(evs[0]["seq"])
            last = max(last, evs[0]["seq"])
            if len(seen) % 37 == 0:
                try:
                    sub.ack(seq=last)
                except (AssertionError, OSError):
                    break
        t.kill9()
        sub.kill()
        t.start()
        wait_for(lambda: ready(sock), 20, "restart", t)
    sub = Subscriber(sock, "q", who="final")
    while committed_seq(t.state, "q") < total:
        try:
            evs = sub.take(1, timeout=5)
        except AssertionError:
            break
        seen.add(evs[0]["seq"])
        if evs[0]["seq"] % 50 == 0 or evs[0]["seq"] == total:
            sub.ack(seq=evs[0]["seq"])
    sub.ack(seq=total)
    wait_for(lambda: committed_seq(t.state, "q") == total, 20, "all", t)
    # Every event reached a subscriber at least once; none was skipped.
    assert seen == set(range(1, total + 1))
    sub.kill()
    assert t.stop() == 0


def test_a_peeker_that_stops_reading_is_let_go(tether, sockdir):
    # A peeker shows every event or none: one that stops reading is
    # disconnected once it is more than the stream cap behind, instead of
    # being shown a stream with holes.
    t, sock = start(tether, sockdir, window=20000)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.sendall(b"GET /v1/consumers/q/events?peek=1 HTTP/1.1\r\nHost: x\r\n"
              b"Accept: application/x-ndjson\r\n\r\n")
    t.wait_log(r"a peeking subscriber fell behind; it is disconnected")
    # A real subscriber still gets every event from the first.
    sub = Subscriber(sock, "q", who="w")
    evs = sub.take(100)
    assert [e["seq"] for e in evs] == list(range(1, 101))
    s.close()
    sub.kill()


def test_unacknowledged_events_go_to_the_dead_letter_file(tether, sockdir,
                                                          tmp_path):
    """max_attempts = 2, on_fail = dead_letter: an event sent out twice
    without an acknowledgement (two ack_timeouts) is given up once its
    record is durable: the record is in the file and the cursor passes it,
    though no application ever acknowledged it."""
    dead = tmp_path / "dead.ndjson"
    t, sock = start(tether, sockdir, count=3, ack_timeout="300ms",
                    extra=f"max_attempts = 2\non_fail = dead_letter:{dead}")
    sub = Subscriber(sock, "q", who="mute")
    # Each event twice: sent, timed out, sent again, timed out.
    evs = sub.take(6)
    assert sorted(e["seq"] for e in evs) == [1, 1, 2, 2, 3, 3]
    wait_for(lambda: committed_seq(t.state, "q") == 3, 20,
             "the cursor to pass the dead-lettered events", t)
    records, torn = read_lines(dead)
    assert torn == 0
    assert [r["seq"] for r in records] == [1, 2, 3]
    by_seq = {e["seq"]: e for e in evs}
    for r in records:
        assert list(r) == ["consumer", "seq", "attempts", "error", "event"]
        assert r["consumer"] == "q"
        assert r["attempts"] == 2
        assert r["error"] == "not acknowledged within ack_timeout"
        assert r["event"] == by_seq[r["seq"]]
    # Given up: an acknowledgement now comes too late and counts nothing.
    assert sub.ack(seq=3) == 0
    c = consumer(sock, "q")
    assert (c["events_failed"], c["events_dead_lettered"]) == (3, 3)
    assert "event goes to the dead-letter file after max_attempts " \
           "consumer=q sink=socket seq=2 attempts=2 " \
           "err=\"not acknowledged within ack_timeout\"" in t.log()
    sub.kill()
    assert t.stop() == 0


def test_a_subscriber_leaving_counts_as_an_attempt(tether, sockdir):
    """max_attempts = 1, on_fail = skip: events out with a subscriber that
    leaves without acknowledging them are given up at once, and the
    consumer goes on with the next ones."""
    t, sock = start(tether, sockdir, count=5, window=3,
                    extra="max_attempts = 1\non_fail = skip")
    first = Subscriber(sock, "q", who="gone")
    assert [e["seq"] for e in first.take(3)] == [1, 2, 3]
    first.kill()
    second = Subscriber(sock, "q", who="next")
    assert [e["seq"] for e in second.take(2)] == [4, 5]
    assert second.ack(seq=5) == 2
    wait_for(lambda: committed_seq(t.state, "q") == 5, 20, "cursor 5", t)
    log = t.log()
    for seq in (1, 2, 3):
        assert "error giving up on an event after max_attempts (on_fail = " \
               f"skip) consumer=q sink=socket seq={seq} attempts=1 " \
               "err=\"the subscriber left without acknowledging it\"" in log
    assert consumer(sock, "q")["events_failed"] == 3
    second.kill()
    assert t.stop() == 0
