"""The fifo sink's delivery rule against the real binary: an event counts
delivered only once a reader has read its line, so a reader that leaves
loses nothing. Readers here come and go as an application that restarts
does: they read a random amount, cut a line or stop at its end, and close,
some opening the FIFO again at once, before tether can have noticed."""
import fcntl
import json
import os
import select
import subprocess
import sys
import termios
import time

from apiclient import consumer, ready, remove_dir, short_dir
from conftest import committed_seq, wait_for


def config(sink, count, api, window=1000):
    return f"""
[daemon]
state = state.db
socket = {api}
checkpoint_interval = 50ms
status_interval = 0
shutdown_timeout = 10s
exit_when_done = true

[consumer c]
source = generate
rate = 0
count = {count}
max_in_flight = {window}
sink = {sink}
fifo_reopen_interval = 5ms
"""


# One reader process that opens the FIFO, reads, closes, and again, until a
# stop file appears. Each session's bytes go to their own file as they are
# read, so the test can compare what was read with the committed cursor at
# any moment.
CHURN = r"""
import os, random, select, sys, time
path, out, seed, max_read = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
    int(sys.argv[4])
rng = random.Random(seed)
stop = os.path.join(out, "stop")
n = 0
while not os.path.exists(stop):
    n += 1
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    log = os.open(os.path.join(out, "s%05d" % n),
                  os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    target = rng.randint(1, max_read)
    at_line_end = rng.random() < 0.5
    got, last = 0, b""
    while not os.path.exists(stop):
        if got >= target and (not at_line_end or last == b"\n"):
            break
        # Past the target, one byte at a time up to the end of the line.
        want = min(target - got, 4096) if got < target else 1
        if not select.select([fd], [], [], 0.05)[0]:
            continue
        try:
            b = os.read(fd, want)
        except BlockingIOError:
            continue
        if not b:
            time.sleep(0.001)  # no writer has the FIFO open yet
            continue
        os.write(log, b)
        got, last = got + len(b), b[-1:]
    os.close(fd)
    os.close(log)
    # Half the time the next session opens at once, racing tether's view of
    # the one that just left; otherwise after a pause.
    if rng.random() < 0.5:
        time.sleep(rng.uniform(0.001, 0.02))
"""


class Sessions:
    """What the reader sessions have read so far, parsed. A whole line is
    one that ends in a newline and parses; a torn one does not parse. The
    last piece of a session (no newline) is a line cut by the reader's
    leaving, not a torn line."""

    def __init__(self, out):
        self.out = out
        self.done = {}  # session file -> (seqs, torn lines, ends mid-line)

    def parse(self, name):
        with open(os.path.join(self.out, name), "rb") as f:
            *whole, tail = f.read().split(b"\n")
        seqs, torn = [], []
        for i, line in enumerate(whole):
            try:
                seqs.append(json.loads(line)["seq"])
            except (ValueError, KeyError, TypeError):
                torn.append(i)
        return seqs, torn, tail != b""

    def scan(self, final=False):
        names = sorted(n for n in os.listdir(self.out) if n.startswith("s"))
        result = []
        for i, name in enumerate(names):
            # Every session but the newest is closed and never grows.
            if name in self.done:
                result.append(self.done[name])
                continue
            parsed = self.parse(name)
            if final or i < len(names) - 1:
                self.done[name] = parsed
            result.append(parsed)
        return result

    def seqs(self, final=False):
        out = set()
        for seqs, _, _ in self.scan(final):
            out.update(seqs)
        return out


def run_churn(tether, tmp_path, count, max_read, seed):
    api = short_dir()
    path = str(tmp_path / "events.pipe")
    out = str(tmp_path / "read")
    os.mkdir(out)
    os.mkfifo(path, 0o600)
    script = tmp_path / "churn.py"
    script.write_text(CHURN)
    t = tether(config(f"fifo:{path}", count, os.path.join(api, "t.sock")))
    t.start()
    reader = subprocess.Popen([sys.executable, str(script), path, out,
                               str(seed), str(max_read)])
    sessions = Sessions(out)
    checks = ahead = 0
    try:
        deadline = time.monotonic() + 240
        while t.proc.poll() is None:
            assert time.monotonic() < deadline, \
                f"not done after 240 s; committed {committed_seq(t.state, 'c')}"
            assert reader.poll() is None, "the reader process died"
            # The cursor first, then what was read: whatever the cursor
            # covers was read before it was committed, so it is in the
            # session files by the time they are read.
            committed = committed_seq(t.state, "c")
            seen = sessions.seqs()
            checks += 1
            if any(s not in seen for s in range(1, committed + 1)):
                ahead += 1
            time.sleep(0.05)
        assert t.wait_exit(10) == 0
    finally:
        open(os.path.join(out, "stop"), "w").close()
        try:
            assert reader.wait(20) == 0
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
            remove_dir(api)
    return t, sessions, checks, ahead


def test_fifo_reader_churn_loses_nothing(tether, tmp_path):
    count = 20000
    t, sessions, checks, ahead = run_churn(tether, tmp_path, count,
                                           max_read=40000, seed=9)
    scanned = sessions.scan(final=True)
    seen = sessions.seqs(final=True)
    missing = sorted(set(range(1, count + 1)) - seen)
    # The run churned: many sessions, many of them left mid-line.
    assert len(scanned) >= 50, len(scanned)
    assert sum(1 for _, _, cut in scanned if cut) >= 10
    # Every event reached some reader whole (duplicates allowed).
    assert not missing, f"{len(missing)} events never read whole, first " \
                        f"{missing[:10]}; {len(scanned)} reader sessions"
    # A torn line is only ever the first of a session: the tail of the line
    # the previous reader was cut off in, when this one opened the FIFO
    # before tether could notice the first had left. Lines tether writes
    # are never torn or interleaved.
    for i, (_, torn, _) in enumerate(scanned):
        assert all(pos == 0 for pos in torn), f"session {i + 1}: {torn}"
    # The committed cursor never passed what the readers had read.
    assert checks >= 5
    assert ahead == 0, f"the cursor was ahead of the readers {ahead} times"
    assert committed_seq(t.state, "c") == count


def unread_bytes(fd):
    n = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, n)
    return int.from_bytes(n, sys.byteorder)


def read_exactly(fd, want, timeout=30):
    """Reads want bytes from a non-blocking fd, waiting for them."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while len(data) < want:
        assert time.monotonic() < deadline, f"read {len(data)} of {want}"
        try:
            b = os.read(fd, want - len(data))
        except BlockingIOError:
            b = None
        if b:
            data += b
        else:
            time.sleep(0.002)
    return bytes(data)


def test_fifo_unread_lines_go_to_next_reader(tether, tmp_path):
    """A reader reads 100,000 bytes, cutting a line, and stops reading
    while tether fills the pipe behind it: the cursor stays at the last
    line it read whole. It leaves; the next reader starts with the line
    that was cut, whole, and nothing read before comes again."""
    count = 5000
    api = short_dir()
    sock = os.path.join(api, "t.sock")
    path = str(tmp_path / "events.pipe")
    os.mkfifo(path, 0o600)
    # Small batches: each is written whole long before the pipe is full.
    t = tether(config(f"fifo:{path}", count, sock, window=50))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        t.start()
        wait_for(lambda: ready(sock), 20, "the API", t)
        first = read_exactly(fd, 100_000)
        assert not first.endswith(b"\n")
        *whole, cut = first.split(b"\n")
        last_read = json.loads(whole[-1])["seq"]
        assert [json.loads(x)["seq"] for x in whole] == \
            list(range(1, last_read + 1))
        # tether writes on behind the reader until its window is full of
        # events not read (or, were they delivered once written, until the
        # pipe is: short writes leave part of each page unused, so a "full"
        # 64 KiB pipe holds some 55 KB).
        pipe_size = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        wait_for(lambda: consumer(sock, "c")["in_flight"] == 50 or
                 unread_bytes(fd) > pipe_size // 2, 30,
                 "a full window or a full pipe", t)
        assert unread_bytes(fd) > 0
        # What was read is delivered and committed; nothing after it.
        wait_for(lambda: committed_seq(t.state, "c") >= last_read, 20,
                 "the commit of what was read", t)
        c = consumer(sock, "c")
        assert c["cursor"]["seq"] == last_read, c
        assert committed_seq(t.state, "c") == last_read
        assert c["in_flight"] > 0
    finally:
        os.close(fd)
    try:
        # tether had its reader from the start: this is the first wait.
        t.wait_log(r"state=waiting_for_reader")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        data = bytearray()
        try:
            def done():
                last = data[data.rfind(b"\n", 0, len(data) - 1) + 1:]
                return data.endswith(b"\n") and \
                    last.startswith(b'{"consumer":"c","seq":%d,' % count)

            def read_all():
                # Reads as it comes for a while: tether sends a window's
                # worth at a time, the next once these are read.
                end = time.monotonic() + 0.5
                while not done() and time.monotonic() < end:
                    if select.select([fd], [], [], 0.05)[0]:
                        try:
                            b = os.read(fd, 65536)
                        except BlockingIOError:
                            continue
                        if not b:
                            break  # no writer at the moment
                        data.extend(b)
                return done()
            wait_for(read_all, 60, "the last line", t)
        finally:
            os.close(fd)
        assert t.wait_exit(30) == 0
    finally:
        remove_dir(api)
    assert data.endswith(b"\n")
    seqs = [json.loads(x)["seq"] for x in bytes(data).split(b"\n")[:-1]]
    # The line that was cut comes first, whole; the rest follow once.
    assert seqs == list(range(last_read + 1, count + 1)), seqs[:5]
    assert json.loads(whole[-1])["seq"] + 1 == seqs[0]
    assert cut and bytes(data).startswith(cut)
    assert committed_seq(t.state, "c") == count
