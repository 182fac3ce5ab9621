"""Files removed under a running tether.

A file sink's file removed (rm, not a rename) takes with it every line since
the last commit while writes into the open descriptor still succeed: tether
notices at the next commit, says so, writes a new file at the path and
delivers again everything after its committed cursor. A rename followed by
SIGHUP (logrotate) and tether's own rotation carry on without that.

The state file removed or replaced while running is made again with every
cursor tether holds; a state file that exists but holds no cursor for a
consumer at start (emptied, its WAL lost) is a warning per consumer."""
import json
import os
import re
import signal
import sqlite3
import time

import pytest

from apiclient import consumer, ready, remove_dir, request, short_dir
from conftest import committed_seq, read_lines, wait_for

REWIND = (r"error the sink lost what it held since the last commit; "
          r"delivering again everything after the committed cursor "
          r"consumer=gen sink=file path=\S*out\.ndjson "
          r"err=\"\S*out\.ndjson was removed; writing a new file there\" "
          r"committed=(\d+) events=\d+")


@pytest.fixture
def sockdir():
    d = short_dir()
    yield d
    remove_dir(d)


def seqs(records):
    return [r["seq"] for r in records]


def gen_config(out, sock=None, rate=2000, count=200_000, extra=""):
    return f"""
[daemon]
state = state.db
checkpoint_interval = 100ms
status_interval = 0
{f"socket = {sock}" if sock else ""}

[consumer gen]
source = generate
rate = {rate}
count = {count}
sink = file:{out}
{extra}
"""


def read_lines_fd(f):
    """The records of a file through an open descriptor (its name may be
    gone)."""
    f.seek(0)
    return [json.loads(line) for line in f.read().split(b"\n") if line]


def max_seq(path):
    """The seq of the last whole line, read from the file's tail only (the
    file grows fast)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            start = max(0, f.tell() - 65536)
            f.seek(start)
            lines = f.read().split(b"\n")[1 if start else 0:-1]
    except FileNotFoundError:
        return 0
    return json.loads(lines[-1])["seq"] if lines else 0


# A steady rate, and a fast one: then a batch mostly waits behind the sync
# that finds the file gone, and must not reach the new file first. count
# bounds the files either way.
@pytest.mark.parametrize("rate", [2000, 50_000])
def test_removed_sink_file_is_written_again(tether, tmp_path, sockdir, rate):
    out = str(tmp_path / "out.ndjson")
    sock = os.path.join(sockdir, "api.sock")
    t = tether(gen_config(out, sock, rate=rate))
    t.start()
    wait_for(lambda: ready(sock), 20, "the API to be ready", t)
    wait_for(lambda: committed_seq(t.state, "gen") >= 500, 30,
             "500 committed events", t)
    # The test keeps the removed file readable through its own descriptor,
    # to see what the commits before the removal covered.
    old = open(out, "rb")
    try:
        os.unlink(out)
        m = t.wait_log(REWIND, 30)
        at_removal = int(m.group(1))
        wait_for(lambda: max_seq(out) >= at_removal + 500, 30,
                 "500 events in the new file", t)
        # From now on no commit is ahead of the new file: fdatasync comes
        # first, so the line of every committed seq is already there.
        for _ in range(20):
            c = committed_seq(t.state, "gen")
            assert c <= max_seq(out), (c, max_seq(out))
            time.sleep(0.02)
        assert consumer(sock, "gen")["sink_rewinds"] == 1
        _, _, metrics = request(sock, "GET", "/metrics")
        assert 'tether_sink_rewinds_total{consumer="gen"} 1' in metrics
        assert t.stop() == 0
        old_records = read_lines_fd(old)
    finally:
        old.close()

    new, torn = read_lines(out)
    assert torn == 0
    # The new file holds every event after the cursor committed when the
    # removal was found, in order, once, up to the last committed one.
    assert seqs(new) == list(range(at_removal + 1, seqs(new)[-1] + 1))
    final = committed_seq(t.state, "gen")
    assert final == seqs(new)[-1]
    # Every commit before that covered lines of the removed file: nothing
    # committed is missing from both files.
    old_seqs = seqs(old_records)
    assert old_seqs == list(range(1, len(old_seqs) + 1))
    assert len(old_seqs) >= at_removal
    assert t.log().count("the sink lost what it held") == 1


def test_logrotate_and_rotation_need_no_rewind(tether, tmp_path):
    out = tmp_path / "out.ndjson"
    moved = tmp_path / "out.ndjson.old"
    t = tether(gen_config(out, rate=2000,
                          extra="rotate_size = 32KiB\nrotate_keep = 1000"))
    t.start()
    t.wait_log(r"info rotated file consumer=gen", 30)
    wait_for(lambda: committed_seq(t.state, "gen") >= 1000, 30,
             "1000 committed events", t)
    os.rename(out, moved)
    t.send(signal.SIGHUP)
    t.wait_log(r"info reopened file consumer=gen", 30)
    at_reopen = committed_seq(t.state, "gen")
    wait_for(lambda: committed_seq(t.state, "gen") >= at_reopen + 1000, 30,
             "1000 more committed events", t)
    assert t.stop() == 0
    got = []
    for name in os.listdir(tmp_path):
        if re.fullmatch(r"out\.ndjson(\.\d+|\.old)?", name):
            records, torn = read_lines(tmp_path / name)
            assert torn == 0
            assert seqs(records) == sorted(seqs(records))
            got += seqs(records)
    # Each event once across the rotated, the moved and the new files:
    # nothing was delivered again, nothing is missing.
    assert sorted(got) == list(range(1, len(got) + 1))
    assert committed_seq(t.state, "gen") == len(got)
    assert "the sink lost what it held" not in t.log()


# ---- the state file ---------------------------------------------------------

def two_consumers(sock, out_a, out_b):
    return f"""
[daemon]
state = state.db
checkpoint_interval = 100ms
status_interval = 0
socket = {sock}

[consumer steady]
source = generate
rate = 500
sink = file:{out_a}

[consumer idle]
source = generate
rate = 0
count = 30
sink = file:{out_b}
"""


def db_rows(path):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        cursors = dict(con.execute(
            "SELECT consumer_id, last_sequence FROM cursors").fetchall())
        flags = dict(con.execute(
            "SELECT consumer_id, paused FROM consumer_flags").fetchall())
        return cursors, flags
    finally:
        con.close()


def test_state_file_removed_while_running(tether, tmp_path, sockdir):
    out_a, out_b = tmp_path / "a.ndjson", tmp_path / "b.ndjson"
    sock = os.path.join(sockdir, "api.sock")
    t = tether(two_consumers(sock, out_a, out_b))
    t.start()
    wait_for(lambda: ready(sock), 20, "the API to be ready", t)
    wait_for(lambda: committed_seq(t.state, "idle") == 30, 30,
             "the idle consumer's 30 events committed", t)
    status, _, _ = request(sock, "POST", "/v1/consumers/idle/pause")
    assert status == 200
    wait_for(lambda: committed_seq(t.state, "steady") >= 100, 30,
             "100 committed events", t)
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(t.state + suffix)
        except FileNotFoundError:
            pass
    t.wait_log(r"error the state file was removed or replaced; writing every "
               r"consumer's cursor into a new one state=state\.db "
               r"err=\"state file state\.db was removed while tether ran; "
               r"created it again\"", 30)
    t.wait_log(r"warn the new state file holds every consumer's cursor again "
               r"state=state\.db cursors=2", 30)
    # The idle consumer moved nothing since: its cursor is in the new file
    # all the same, and so is its pause.
    cursors, flags = db_rows(t.state)
    assert cursors["idle"] == 30
    assert cursors["steady"] >= 100
    assert flags == {"idle": 1}
    wait_for(lambda: committed_seq(t.state, "steady") > cursors["steady"],
             30, "commits going on into the new file", t)
    assert t.stop() == 0
    steady_at_stop = committed_seq(t.state, "steady")
    assert steady_at_stop == seqs(read_lines(out_a)[0])[-1]

    # A restart resumes from the new file, not from zero.
    t.start()
    wait_for(lambda: ready(sock), 20, "the API after the restart", t)
    t.wait_log(rf"consumer ready consumer=steady .* "
               rf"resume_after={steady_at_stop}\b")
    t.wait_log(r"consumer ready consumer=idle .* resume_after=30\b")
    assert consumer(sock, "idle")["paused"] is True
    assert t.stop() == 0
    assert "no cursor" not in t.log()
    records, torn = read_lines(out_a)
    assert torn == 0
    assert seqs(records) == list(range(1, len(records) + 1))


def one_consumer(count=0, rate=1000):
    return f"""
[daemon]
state = state.db
checkpoint_interval = 50ms
status_interval = 0

[consumer orders]
source = generate
rate = {rate}
count = {count}
sink = file:orders.ndjson

[consumer audit]
source = generate
rate = {rate}
count = {count}
sink = file:audit.ndjson
"""


def test_first_start_is_quiet_and_empty_state_file_warns(tether, tmp_path):
    t = tether(one_consumer(count=5, rate=0))
    t.start()
    t.wait_log(r"info no cursor yet: the consumer starts at seq 1, where its "
               r"source starts without one consumer=orders source=generate "
               r"state=state\.db")
    t.wait_log(r"info no cursor yet: .* consumer=audit ")
    t.wait_log(r"info tether started ")
    assert t.stop() == 0
    assert " warn " not in t.log()

    # The same file, emptied to 0 bytes: a warning per consumer.
    with open(t.state, "wb"):
        pass
    t.start()
    for name in ("orders", "audit"):
        t.wait_log(rf"warn no cursor for the consumer in the state file: it "
                   rf"starts over at seq 1, where its source starts without "
                   rf"one consumer={name} source=generate state=state\.db")
    t.wait_log(r"info tether started ")
    assert t.stop() == 0


def test_lost_wal_warns(tether, tmp_path):
    t = tether(one_consumer(rate=1000))
    t.start()
    wait_for(lambda: committed_seq(t.state, "orders") >= 100 and
             committed_seq(t.state, "audit") >= 100, 30,
             "commits of both consumers", t)
    t.kill9()
    # The commits live in the WAL until a checkpoint; without it they are
    # gone, and the next start must say so rather than start from zero
    # quietly.
    assert os.path.getsize(t.state + "-wal") > 0
    os.unlink(t.state + "-wal")
    if os.path.exists(t.state + "-shm"):
        os.unlink(t.state + "-shm")
    t.start()
    for name in ("orders", "audit"):
        t.wait_log(rf"warn no cursor for the consumer in the state file: .* "
                   rf"consumer={name} ")
    t.wait_log(r"info tether started ")
    assert t.stop() == 0
