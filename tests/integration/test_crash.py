"""The crash test: generate -> file, kill -9 at random moments, restart each
time; afterwards every event is in the file, no line is torn, the committed
cursor was never ahead of what fdatasync had made durable, and duplicates
come only from the window after the last commit."""
import datetime
import os
import random
import re
import subprocess

from conftest import BUILD, committed_seq, read_lines

COUNT = 200_000
KILLS = 25
RATE = 25_000          # events/s: the run spans the kills
INTERVAL_MS = 100      # checkpoint_interval
SEQ = re.compile(rb'^\{"consumer":"crash","seq":(\d+),', re.M)


def syncspy_path():
    path = os.environ.get("TETHER_SYNCSPY")
    if path:
        return path
    for name in ("libsyncspy.so", "syncspy.so"):
        p = os.path.join(BUILD, "tests", name)
        if os.path.exists(p):
            return p
    raise AssertionError("the syncspy shim is not built")


class DurablePrefix:
    """Tracks which seqs lie in the prefix of the sink file that fdatasync
    had made durable, reading only new bytes each time."""

    def __init__(self, path, synclog):
        self.path, self.synclog = path, synclog
        self.seen = bytearray(COUNT + 2)
        self.scanned = 0
        self.low = 1  # every seq below this is in the durable prefix

    def synced_size(self):
        try:
            with open(self.synclog) as f:
                sizes = [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return 0
        return max(sizes, default=0)

    def advance(self):
        size = self.synced_size()
        if size > self.scanned:
            with open(self.path, "rb") as f:
                f.seek(self.scanned)
                chunk = f.read(size - self.scanned)
            for m in SEQ.finditer(chunk):
                self.seen[int(m.group(1))] = 1
            self.scanned = size
        while self.low <= COUNT and self.seen[self.low]:
            self.low += 1
        return self.low - 1  # the highest seq with no gap below it


def test_kill9_at_random_moments(tether, tmp_path):
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    out = str(tmp_path / "out.ndjson")
    synclog = str(tmp_path / "synced.log")
    t = tether(f"""
[daemon]
state = state.db
checkpoint_interval = {INTERVAL_MS}ms
status_interval = 0
exit_when_done = true

[consumer crash]
source = generate
rate = {RATE}
count = {COUNT}
payload_size = 100
sink = file:{out}
""")
    env = {
        "LD_PRELOAD": syncspy_path(),
        "SYNCSPY_PATH": out,
        "SYNCSPY_LOG": synclog,
        # The shim loads before the sanitizer runtime; that is fine here.
        "ASAN_OPTIONS": "verify_asan_link_order=0:detect_leaks=0",
    }
    durable = DurablePrefix(out, synclog)
    kills = []
    for k in range(KILLS):
        t.start(env=env)
        # The kill comes at a random moment: some during start-up, most
        # mid-stream. Waiting on the process bounds it and notices an early
        # exit, which would be a finished run (fewer kills, still valid).
        try:
            t.proc.wait(timeout=rnd.uniform(0.0, 0.5))
            t.expected_exit = True
            assert t.proc.returncode == 0, t.log()
            break
        except subprocess.TimeoutExpired:
            pass
        t.kill9()
        committed = committed_seq(t.state, "crash")
        records_top = durable.advance()
        # The committed cursor is never ahead of the durable prefix.
        assert committed <= records_top, (
            f"seed {seed}, kill {k}: cursor {committed} is ahead of the "
            f"fdatasync'd file, which is whole only up to {records_top}")
        kills.append(committed)

    # Let the last run finish on its own (exit_when_done).
    t.start(env=env)
    assert t.wait_exit(120) == 0, t.log()
    assert committed_seq(t.state, "crash") == COUNT

    records, torn = read_lines(out)
    assert torn == 0, f"seed {seed}: {torn} torn lines"
    got = [r["seq"] for r in records]
    assert set(got) == set(range(1, COUNT + 1)), f"seed {seed}: events lost"

    # Duplicates: after each crash, delivery restarts right after the
    # committed cursor, so each duplicated run begins at cursor + 1 and
    # spans no more than one checkpoint window of time.
    times = {}
    for r in records:
        times.setdefault(r["seq"], r["time"])
    restarts = [i for i in range(1, len(got)) if got[i] <= got[i - 1]]
    assert len(restarts) <= len(kills)
    for i in restarts:
        first_again, last_before = got[i], got[i - 1]
        assert first_again - 1 in kills or first_again == 1, (
            f"seed {seed}: a restart resumed at {first_again}, not right "
            f"after a committed cursor {sorted(set(kills))}")
        span_ms = ms(times[last_before]) - ms(times[first_again])
        assert span_ms <= INTERVAL_MS + 3000, (
            f"seed {seed}: duplicates {first_again}..{last_before} span "
            f"{span_ms} ms, more than one checkpoint window")
    dupes = len(got) - COUNT
    print(f"seed {seed}: {len(kills)} kills, {dupes} duplicates")


def ms(text):
    """2026-11-22T23:12:32.123Z -> Unix milliseconds."""
    t = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    t = t.replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp() * 1000)
