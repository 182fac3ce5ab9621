"""The CLI over the API socket: status, consumers, cursors, tail."""
import json
import os
import signal
import subprocess

import pytest

from apiclient import ready, cli, consumer, get, remove_dir, short_dir
from conftest import BIN, committed_seq, read_lines, wait_for


@pytest.fixture
def sockdir():
    d = short_dir()
    yield d
    remove_dir(d)


def config(sock, sink="file:out.ndjson", rate=100, count=0, drain="2s"):
    return f"""
[daemon]
state = state.db
checkpoint_interval = 20ms
status_interval = 0
shutdown_timeout = {drain}
socket = {sock}

[consumer gen]
source = generate
rate = {rate}
count = {count}
sink = {sink}
"""


def start(tether, sockdir, **kw):
    sock = os.path.join(sockdir, "api.sock")
    t = tether(config(sock, **kw))
    t.start()
    wait_for(lambda: ready(sock),
             20, "the API", t)
    return t, sock


def test_status_table_json_and_exit_codes(tether, sockdir):
    t, sock = start(tether, sockdir)
    wait_for(lambda: committed_seq(t.state, "gen") >= 3, 20, "events", t)
    p = cli("status", sock=sock)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "tether is ready"
    header = lines[2].split()
    assert header[:4] == ["CONSUMER", "STATE", "SINK", "CURSOR"]
    row = lines[3].split()
    assert row[:3] == ["gen", "connected", "ok"] and int(row[3]) >= 3

    p = cli("status", "--json", sock=sock)
    assert p.returncode == 0
    assert json.loads(p.stdout)["consumers"][0]["name"] == "gen"

    # TETHER_SOCKET picks the socket when -s is not given.
    p = cli("status", env={"TETHER_SOCKET": sock})
    assert p.returncode == 0 and "gen" in p.stdout

    # A missing daemon exits 1 with one line naming the socket.
    assert t.stop() == 0
    p = cli("status", sock=sock)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and sock in p.stderr, p.stderr
    assert p.stderr.startswith("tether: cannot reach tether at ")


def test_status_exits_1_while_draining(tether, sockdir):
    # Events held for a subscriber that never comes keep it draining.
    t, sock = start(tether, sockdir, sink="socket", rate=0, drain="30s")
    wait_for(lambda: consumer(sock, "gen")["in_flight"] > 0, 20, "held", t)
    t.send(signal.SIGTERM)
    wait_for(lambda: get(sock, "/v1/ready")[0] == 503, 20, "draining", t)
    p = cli("status", sock=sock)
    assert p.returncode == 1 and p.stdout.startswith("tether is not ready")
    t.send(signal.SIGTERM)
    assert t.wait_exit() == 0


def test_usage_errors_exit_2(tether):
    for args in (["consumers"], ["consumers", "stop", "x"], ["cursors"],
                 ["cursors", "reset", "gen", "generate"], ["tail"],
                 ["status", "extra"], ["cursors", "reset", "a", "b",
                                       "--seq", "-1", "--reason", "r"]):
        p = cli(*args, sock="/nonexistent/api.sock")
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith("tether: "), p.stderr
    for cmd in ("status", "consumers", "cursors", "tail"):
        p = cli("help", cmd)
        assert p.returncode == 0 and p.stdout.startswith("usage: tether " +
                                                         cmd)
    p = cli("help")
    for cmd in ("status", "consumers", "cursors", "tail"):
        assert f"  {cmd}" in p.stdout


def test_consumers_pause_resume_and_errors(tether, sockdir):
    t, sock = start(tether, sockdir)
    p = cli("consumers", "pause", "gen", sock=sock)
    assert p.returncode == 0 and p.stdout == "gen paused\n"
    assert consumer(sock, "gen")["paused"] is True
    p = cli("consumers", "resume", "gen", sock=sock)
    assert p.returncode == 0 and p.stdout == "gen resumed\n"
    assert consumer(sock, "gen")["paused"] is False
    p = cli("consumers", "pause", "ghost", sock=sock)
    assert p.returncode == 1
    assert p.stderr == "tether: no consumer named ghost (HTTP 404)\n"


def test_cursors_list_get_reset(tether, sockdir):
    t, sock = start(tether, sockdir)
    wait_for(lambda: committed_seq(t.state, "gen") >= 10, 20, "events", t)
    p = cli("cursors", "list", sock=sock)
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()
    assert rows[0].split()[:4] == ["CONSUMER", "STREAM", "SUBJECT", "SEQ"]
    assert rows[1].split()[:3] == ["gen", "generate", "-"]
    p = cli("cursors", "list", "--consumer", "gen", "--json", sock=sock)
    assert json.loads(p.stdout)["cursors"][0]["consumer_id"] == "gen"
    p = cli("cursors", "get", "gen", "generate", sock=sock)
    assert p.returncode == 0 and p.stdout.splitlines()[1].startswith("gen")
    p = cli("cursors", "get", "gen", "nope", sock=sock)
    assert p.returncode == 1 and "HTTP 404" in p.stderr

    p = cli("cursors", "reset", "gen", "generate", "--seq", "2",
            "--position", "2", "--reason", "replay", sock=sock)
    assert p.returncode == 1 and "pause consumer gen" in p.stderr
    assert cli("consumers", "pause", "gen", sock=sock).returncode == 0
    wait_for(lambda: consumer(sock, "gen")["in_flight"] == 0, 20, "drain", t)
    # Where to go on is named.
    p = cli("cursors", "reset", "gen", "generate", "--reason", "replay",
            sock=sock)
    assert p.returncode == 2 and "--position P or --from-start" in p.stderr
    p = cli("cursors", "reset", "gen", "generate", "--seq", "2",
            "--position", "2", "--reason", "replay", sock=sock)
    assert p.returncode == 0, p.stderr
    # --seq is only a floor: seq never goes backward.
    seq = int(p.stdout.splitlines()[1].split()[3])
    out = os.path.join(t.dir, "out.ndjson")
    seen = read_lines(out)[0]
    assert seq >= max(r["seq"] for r in seen)
    assert committed_seq(t.state, "gen") == seq
    before = len(seen)
    assert cli("consumers", "resume", "gen", sock=sock).returncode == 0
    wait_for(lambda: len(read_lines(out, running=True)[0]) > before, 20,
             "events after the reset", t)
    first = read_lines(out, running=True)[0][before]
    assert first["cursor"] == "3" and first["seq"] == seq + 1


def test_tail_acks_and_no_ack_peeks(tether, sockdir):
    t, sock = start(tether, sockdir, sink="socket", rate=0, count=40)
    # --no-ack: sees events, takes none; the cursor stays.
    p = cli("tail", "gen", "--no-ack", "-n", "5", sock=sock)
    assert p.returncode == 0, p.stderr
    seqs = [json.loads(l)["seq"] for l in p.stdout.splitlines()]
    assert seqs == [1, 2, 3, 4, 5]
    assert committed_seq(t.state, "gen") == 0
    assert consumer(sock, "gen")["in_flight"] == 40

    p = cli("tail", "gen", "-n", "25", sock=sock)
    assert p.returncode == 0, p.stderr
    seqs = [json.loads(l)["seq"] for l in p.stdout.splitlines()]
    assert seqs == list(range(1, 26))
    wait_for(lambda: committed_seq(t.state, "gen") == 25, 20,
             "tail's acks to move the cursor", t)

    # Interrupted tail: what it printed is acked, nothing else.
    proc = subprocess.Popen([BIN, "tail", "gen", "-s", sock],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    got = [json.loads(proc.stdout.readline())["seq"] for _ in range(15)]
    assert got == list(range(26, 41))
    wait_for(lambda: committed_seq(t.state, "gen") == 40, 20, "acks", t)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0

    p = cli("tail", "ghost", sock=sock)
    assert p.returncode == 1 and "no consumer named ghost" in p.stderr


def test_tail_of_a_file_consumer_is_a_clear_error(tether, sockdir):
    t, sock = start(tether, sockdir)
    p = cli("tail", "gen", sock=sock)
    assert p.returncode == 1
    assert "only sink = socket serves subscribers" in p.stderr
