"""Disk trouble: a file sink or the state file that cannot grow (EFBIG from
RLIMIT_FSIZE, ENOSPC on a tiny tmpfs) gives a clear error and backs off, the
cursor does not advance meanwhile, and nothing is lost once space returns."""
import os
import re
import resource
import subprocess
import threading

import pytest

from conftest import committed_seq, count_lines, read_lines, wait_for


def limit_fsize(nbytes):
    """A preexec_fn: caps the size of any file the child writes. Only the
    soft limit drops, so the test can raise it again with prlimit."""
    def apply():
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    return apply


def lift_fsize(pid):
    hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))


def file_sink_config(out, count):
    """generate -> file with quick commits and quick sink retries."""
    return f"""
[daemon]
state = state.db
checkpoint_interval = 100ms
status_interval = 0
exit_when_done = true

[consumer gen]
source = generate
rate = 4000
count = {count}
retry_min = 50ms
retry_max = 200ms
sink = file:{out}
"""


def test_file_sink_efbig_backs_off_and_recovers(tether, tmp_path):
    out = tmp_path / "out.ndjson"
    count = 8000
    t = tether(file_sink_config(out, count))
    t.start(preexec_fn=limit_fsize(1_000_000))
    t.wait_log(r'sink failed; the batch will be retried consumer=gen '
               r'sink=file err="write .*out\.ndjson: File too large"', 30)
    # While it fails: no torn line, the cursor comes to cover exactly what
    # the file holds, and then stands still across further retries.
    records, torn = read_lines(out, running=True)
    assert torn == 0
    assert os.path.getsize(out) <= 1_000_000
    wait_for(lambda: committed_seq(t.state, "gen") == count_lines(out), 20,
             "the cursor to cover the file", t)
    at_failure = committed_seq(t.state, "gen")
    retries = t.log().count("sink failed;")
    wait_for(lambda: t.log().count("sink failed;") >= retries + 2, 20,
             "two more retries", t)
    assert committed_seq(t.state, "gen") == at_failure
    # A retry in progress may hold a partial batch for a moment before it
    # is cut back; between retries the file is exactly what was delivered.
    wait_for(lambda: count_lines(out) == at_failure, 20,
             "the file to hold exactly the delivered lines", t)
    assert read_lines(out, running=True)[1] == 0

    lift_fsize(t.pid)
    assert t.wait_exit(60) == 0
    records, torn = read_lines(out)
    assert torn == 0
    # No crash, so no duplicate: exactly every event once.
    assert [r["seq"] for r in records] == list(range(1, count + 1))
    assert "sink recovered consumer=gen sink=file" in t.log()
    assert committed_seq(t.state, "gen") == count


def test_file_sink_gives_up_after_max_attempts(tether, tmp_path):
    """max_attempts = 2, on_fail = skip: a batch the file cannot take is
    written twice, then given up; the consumer goes on, every skipped seq is
    in the log, and the cursor passes them. Nothing is lost silently: each
    event is in the file or named as skipped."""
    out = tmp_path / "out.ndjson"
    count = 4000
    t = tether(file_sink_config(out, count).replace(
        "retry_min = 50ms", "retry_min = 10ms\nmax_attempts = 2\n"
        "on_fail = skip"))
    t.start(preexec_fn=limit_fsize(256 * 1024))
    # The source finishes (exit_when_done) although the file stays full.
    assert t.wait_exit(60) == 0
    records, torn = read_lines(out)
    assert torn == 0
    written = [r["seq"] for r in records]
    skipped = []
    for m in re.finditer(
            r"error giving up on a batch after max_attempts \(on_fail = "
            r"skip\) consumer=gen sink=file first_seq=(\d+) last_seq=(\d+) "
            r"attempts=2 err=\"write .*out\.ndjson: File too large\"",
            t.log()):
        skipped.extend(range(int(m.group(1)), int(m.group(2)) + 1))
    # A smaller batch may still fit after a bigger one was given up: each
    # event is in the file, in order, or was skipped, never both.
    assert written == sorted(written)
    assert len(written) > 0 and len(skipped) > 0
    assert sorted(written + skipped) == list(range(1, count + 1))
    assert committed_seq(t.state, "gen") == count


def test_state_file_efbig_holds_consumers_and_recovers(tether, tmp_path):
    count = 3000
    t = tether(f"""
[daemon]
state = state.db
checkpoint_interval = 20ms
status_interval = 0
exit_when_done = true

[consumer gen]
source = generate
rate = 2000
count = {count}
max_in_flight = 50
sink = stdout
""")
    # The sink is a pipe, which RLIMIT_FSIZE does not reach: only the state
    # file's write-ahead log runs into the limit.
    t.start(preexec_fn=limit_fsize(96 * 1024), pipe_stdout=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(t.proc.stdout))
    reader.start()
    try:
        t.wait_log(r"error cursor commit failed; consumers wait until it "
                   r"succeeds err=.*(File too large|disk)", 30)
        held_at = committed_seq(t.state, "gen")
        failures = t.log().count("cursor commit failed")
        wait_for(lambda: t.log().count("cursor commit failed") > failures,
                 30, "another failed commit", t)
        # Held back: the cursor stands still, and what went out past it
        # stays within the window (50) and the batch the sink held.
        assert committed_seq(t.state, "gen") == held_at
        assert len(lines) - held_at <= 100
        lift_fsize(t.pid)
        assert t.wait_exit(60) == 0
    finally:
        if t.proc.poll() is None:
            t.proc.kill()
        reader.join()
    assert "cursor commits recovered" in t.log()
    seqs = [int(l.split(b'"seq":')[1].split(b",")[0]) for l in lines]
    assert seqs == list(range(1, count + 1))
    assert committed_seq(t.state, "gen") == count


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs",
                        str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_file_sink_enospc_on_tmpfs(tether, tmp_path, tiny_tmpfs):
    out = tiny_tmpfs / "out.ndjson"
    count = 4000
    t = tether(file_sink_config(out, count))
    t.start()
    t.wait_log(r'err="write .*out\.ndjson: No space left on device"', 30)
    records, torn = read_lines(out, running=True)
    assert torn == 0
    assert committed_seq(t.state, "gen") <= len(records)
    subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_tmpfs)],
                   check=True)
    assert t.wait_exit(60) == 0
    records, torn = read_lines(out)
    assert torn == 0
    assert [r["seq"] for r in records] == list(range(1, count + 1))
