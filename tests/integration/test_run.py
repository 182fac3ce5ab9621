"""tether run: the quickstart default, draining on signals, reopening on
SIGHUP, rotation, repair of a torn last line, resuming from the cursor and
clear start-up errors."""
import json
import os
import signal

from conftest import (committed_seq, count_lines, read_lines, wait_for)


def config(out, count=0, rate=0, interval="100ms", extra="", daemon_extra="",
           name="gen", window=1000):
    return f"""
[daemon]
state = state.db
checkpoint_interval = {interval}
status_interval = 0
{daemon_extra}

[consumer {name}]
source = generate
rate = {rate}
count = {count}
max_in_flight = {window}
sink = file:{out}
{extra}
"""


def seqs(records):
    return [r["seq"] for r in records]


def test_quickstart_default(tether, tmp_path):
    t = tether()
    t.start(args=["run"])
    # Events on stdout and a status line on stderr, quickly.
    wait_for(lambda: t.stdout().count("\n") >= 2, 15, "two events", t)
    t.wait_log(r" info status consumer=demo state=connected", 15)
    assert t.stop(signal.SIGINT) == 0
    lines = [json.loads(l) for l in t.stdout().splitlines()]
    assert [r["seq"] for r in lines] == list(range(1, len(lines) + 1))
    assert lines[0]["consumer"] == "demo"
    assert lines[0]["event"] == "tick"
    assert set(lines[0]) == {"consumer", "seq", "cursor", "event", "kind",
                             "time", "data"}
    assert lines[0]["cursor"] == "1"
    # State lives in ./.tether/, and the cursor covers what was printed.
    db = os.path.join(t.dir, ".tether", "state.db")
    assert committed_seq(db, "demo") == len(lines)
    assert "tether stopped" in t.log()

    # A second run resumes the numbering after the committed cursor.
    t.start(args=["run"])
    wait_for(lambda: t.stdout().count("\n") >= 1, 15, "an event", t)
    assert t.stop(signal.SIGTERM) == 0
    again = [json.loads(l) for l in t.stdout().splitlines()]
    assert again[0]["seq"] == len(lines) + 1


def test_sigterm_drains_and_commits(tether, tmp_path):
    out = tmp_path / "out.ndjson"
    t = tether(config(out, rate=5000))
    t.start()
    wait_for(lambda: count_lines(out) >= 2000, 20, "2000 lines", t)
    assert t.stop(signal.SIGTERM) == 0
    records, torn = read_lines(out)
    assert torn == 0
    s = seqs(records)
    assert s == list(range(1, len(s) + 1))
    # Everything delivered before the exit is committed: nothing would be
    # delivered twice after a restart.
    assert committed_seq(t.state, "gen") == s[-1]
    log = t.log()
    assert "shutting down reason=SIGTERM" in log
    assert f"consumer stopped consumer=gen delivered={len(s)} " \
           f"cursor={s[-1]}" in log


def test_restart_resumes_without_duplicates(tether, tmp_path):
    out = tmp_path / "out.ndjson"
    t = tether(config(out, rate=2000, count=3000,
                      daemon_extra="exit_when_done = true"))
    t.start()
    wait_for(lambda: count_lines(out) >= 500, 20, "500 lines", t)
    assert t.stop(signal.SIGINT) == 0
    first = committed_seq(t.state, "gen")
    t.start()
    assert t.wait_exit(60) == 0
    records, torn = read_lines(out)
    assert torn == 0
    assert seqs(records) == list(range(1, 3001))
    assert f"resume_after={first}" in t.log()
    assert "every source is done (exit_when_done)" in t.log()


def test_second_signal_stops_at_once(tether, tmp_path):
    out = tmp_path / "out.ndjson"
    # A long drain: a huge shutdown_timeout, and a source still running.
    t = tether(config(out, rate=1000, daemon_extra="shutdown_timeout = 1h"))
    t.start()
    wait_for(lambda: count_lines(out) >= 100, 20, "100 lines", t)
    t.send(signal.SIGTERM)
    t.send(signal.SIGTERM)
    assert t.wait_exit(20) == 0
    records, torn = read_lines(out)
    assert torn == 0
    assert committed_seq(t.state, "gen") <= seqs(records)[-1]


def test_sighup_reopens_file_and_log(tether, tmp_path):
    out = tmp_path / "out.ndjson"
    moved = tmp_path / "out.ndjson.1"
    log = tmp_path / "tether.log"
    t = tether(config(out, rate=500,
                      daemon_extra=f"log_file = {log}\nlog_level = info"))
    t.start()
    wait_for(lambda: count_lines(out) >= 50, 20, "50 lines", t)
    os.rename(out, moved)
    os.rename(log, str(log) + ".1")
    t.send(signal.SIGHUP)
    # The sink opens a new file at the old path and keeps writing there.
    wait_for(lambda: count_lines(out) >= 50, 20, "lines in the new file", t)
    wait_for(lambda: os.path.exists(log), 20, "a new log file", t)
    assert t.stop() == 0
    old, torn_old = read_lines(moved)
    new, torn_new = read_lines(out)
    assert torn_old == 0 and torn_new == 0
    assert seqs(old) + seqs(new) == list(range(1, len(old) + len(new) + 1))
    with open(log) as f:
        assert "reopened file" in f.read()


def test_rotation(tether, tmp_path):
    out = tmp_path / "out.ndjson"
    t = tether(config(out, count=4000, rate=0,
                      extra="rotate_size = 64KiB\nrotate_keep = 3",
                      daemon_extra="exit_when_done = true"))
    t.start()
    assert t.wait_exit(60) == 0
    files = [f"{out}.3", f"{out}.2", f"{out}.1", str(out)]
    assert not os.path.exists(f"{out}.4")
    all_seqs = []
    for path in files:
        assert os.path.getsize(path) <= 64 * 1024
        records, torn = read_lines(path)
        assert torn == 0
        all_seqs += seqs(records)
    # The kept files hold the newest events, contiguous up to the last.
    assert all_seqs == list(range(all_seqs[0], 4001))
    assert "rotated file" in t.log()


def test_partial_last_line_is_repaired(tether, tmp_path):
    out = tmp_path / "out.ndjson"
    whole = b'{"seq":1}\n{"seq":2}\n'
    with open(out, "wb") as f:
        f.write(whole + b'{"consumer":"gen","seq":3,"cur')
    t = tether(config(out, count=5, daemon_extra="exit_when_done = true"))
    t.start()
    assert t.wait_exit(30) == 0
    with open(out, "rb") as f:
        data = f.read()
    assert data.startswith(whole + b'{"consumer":"gen","seq":1,')
    records, torn = read_lines(out)
    assert torn == 0
    assert seqs(records) == [1, 2, 1, 2, 3, 4, 5]
    assert "cut a partial last line left by a crash" in t.log()
    assert "bytes=30" in t.log()


def test_corrupt_state_file_is_a_clear_error(tether, tmp_path):
    out = tmp_path / "out.ndjson"
    t = tether(config(out, count=5))
    with open(t.state, "wb") as f:
        f.write(b"this is not a database\n" * 400)
    before = open(t.state, "rb").read()
    t.start()
    assert t.wait_exit(20) == 1
    log = t.log()
    assert "cannot open the state file" in log
    assert "state.db" in log
    # Never reset silently: the file is as it was.
    assert open(t.state, "rb").read() == before


def test_state_file_in_use(tether, tmp_path):
    out1, out2 = tmp_path / "a.ndjson", tmp_path / "b.ndjson"
    a = tether(config(out1, rate=10), name="a")
    a.start()
    wait_for(lambda: count_lines(out1) >= 1, 20, "first tether running", a)
    b = tether(config(out2, rate=10), name="b")
    b.start()
    assert b.wait_exit(20) == 1
    assert f"in use by another tether (pid {a.pid})" in b.log()
    assert a.stop() == 0


def test_unwritable_sink_is_a_clear_error(tether, tmp_path):
    out = tmp_path / "missing-dir" / "out.ndjson"
    t = tether(config(out, count=5))
    t.start()
    assert t.wait_exit(20) == 1
    assert "cannot start the consumer consumer=gen" in t.log()
    assert "missing-dir/out.ndjson: No such file or directory" in t.log()


def test_closed_stdout_fails_the_consumer(tether, tmp_path):
    t = tether(f"""
[daemon]
state = state.db
[consumer gen]
source = generate
rate = 0
sink = stdout
""")
    r, w = os.pipe()
    os.close(r)
    import subprocess
    from conftest import BIN
    p = subprocess.run([BIN, "run", "-c", t.config_path], cwd=t.dir,
                       stdout=w, stderr=subprocess.PIPE, timeout=30)
    os.close(w)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert "sink failed for good; the consumer stops consumer=gen " \
           "sink=stdout err=\"write stdout: Broken pipe\"" in err
