"""The fifo and exec sinks with the real binary: a FIFO whose reader is
absent, leaves and returns, or reads slowly; handler processes that answer
out of order, retry, fail, hang, crash, dead-letter, and outlive a kill -9
of tether."""
import json
import os
import re
import select
import signal
import stat
import threading
import time

from conftest import committed_seq, read_lines, wait_for


def config(sink, count, extra="", window=1000, status="0",
           exit_when_done=True, name="c", rate=0):
    return f"""
[daemon]
state = state.db
checkpoint_interval = 100ms
status_interval = {status}
shutdown_timeout = 10s
exit_when_done = {"true" if exit_when_done else "false"}

[consumer {name}]
source = generate
rate = {rate}
count = {count}
max_in_flight = {window}
sink = {sink}
{extra}
"""


# ---- fifo -----------------------------------------------------------------


class FifoReader(threading.Thread):
    """Reads a FIFO in the background: chunk bytes at a time with a pause
    after each read; with limit, it closes the FIFO once it holds that
    many bytes (a reader that leaves)."""

    def __init__(self, path, chunk=65536, pause=0.0, limit=None):
        super().__init__(daemon=True)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.chunk, self.pause, self.limit = chunk, pause, limit
        self.data = bytearray()
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.closed = threading.Event()
        self.start()

    def run(self):
        try:
            while not self.halt.is_set():
                if self.limit is not None and len(self.data) >= self.limit:
                    break
                ready, _, _ = select.select([self.fd], [], [], 0.05)
                if not ready:
                    continue
                try:
                    b = os.read(self.fd, self.chunk)
                except BlockingIOError:
                    b = b""
                if b:
                    with self.lock:
                        self.data += b
                else:
                    # No writer has the FIFO open at the moment.
                    time.sleep(0.005)
                if self.pause:
                    time.sleep(self.pause)
        finally:
            os.close(self.fd)
            self.closed.set()

    def stop(self):
        self.halt.set()
        self.join(10)
        assert not self.is_alive()

    def snapshot(self):
        with self.lock:
            return bytes(self.data)


def split_lines(data):
    """Whole lines as parsed records; the unfinished tail (no newline) is
    returned apart. A whole line that is not JSON is a torn line."""
    *whole, tail = data.split(b"\n")
    records = [json.loads(line) for line in whole]
    return records, tail


def last_seq(reader):
    records, _ = split_lines(reader.snapshot())
    return records[-1]["seq"] if records else 0


def make_fifo(tmp_path):
    path = str(tmp_path / "events.pipe")
    os.mkfifo(path, 0o600)
    return path


def test_fifo_reader_absent_at_start(tether, tmp_path):
    path = str(tmp_path / "events.pipe")
    t = tether(config(f"fifo:{path}", 500,
                      "fifo_reopen_interval = 20ms\nfifo_mode = 0640"))
    t.start()
    t.wait_log(r"warn sink waiting consumer=c sink=fifo "
               r"state=waiting_for_reader")
    # tether made the FIFO, with the mode asked for.
    st = os.stat(path)
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640
    # Nothing is delivered, and so nothing committed, without a reader.
    assert committed_seq(t.state, "c") == 0
    reader = FifoReader(path)
    try:
        assert t.wait_exit(30) == 0
        wait_for(lambda: last_seq(reader) == 500, 20, "every line read")
    finally:
        reader.stop()
    records, tail = split_lines(reader.snapshot())
    assert tail == b""
    assert [r["seq"] for r in records] == list(range(1, 501))
    assert "info sink ready again consumer=c sink=fifo" in t.log()
    assert committed_seq(t.state, "c") == 500


def test_fifo_no_reader_does_not_hold_shutdown(tether, tmp_path):
    from apiclient import consumer, remove_dir, short_dir
    path = str(tmp_path / "events.pipe")
    sockdir = short_dir()
    sock = os.path.join(sockdir, "api.sock")
    t = tether(config(f"fifo:{path}", 0, exit_when_done=False).replace(
        "shutdown_timeout = 10s",
        f"shutdown_timeout = 500ms\nsocket = {sock}"))
    t.start()
    t.wait_log(r"state=waiting_for_reader")
    # Events wait in the window (the first ones come once the seq lease is
    # committed, a moment after the start).
    try:
        wait_for(lambda: consumer(sock, "c")["in_flight"] > 0, 20,
                 "events in flight", t)
        assert t.stop(signal.SIGTERM, timeout=20) == 0
    finally:
        remove_dir(sockdir)
    log = t.log()
    assert "shutdown timeout: giving up on events not yet delivered" in log
    # Nothing reached a reader, so nothing was committed.
    assert committed_seq(t.state, "c") == 0


def test_fifo_reader_leaves_and_returns(tether, tmp_path):
    count = 20000
    path = make_fifo(tmp_path)
    first = FifoReader(path, chunk=4096, limit=300_000)
    t = tether(config(f"fifo:{path}", count, "fifo_reopen_interval = 20ms"))
    t.start()
    try:
        first.closed.wait(30)
        assert first.closed.is_set()
        t.wait_log(r"state=waiting_for_reader")
        second = FifoReader(path)
        try:
            assert t.wait_exit(60) == 0
            wait_for(lambda: last_seq(second) == count, 30,
                     "the second reader to get the last line")
        finally:
            second.stop()
    finally:
        first.stop()
    one, tail1 = split_lines(first.snapshot())
    two, tail2 = split_lines(second.snapshot())
    # No torn line: every whole line parsed (split_lines would have raised),
    # and the second reader starts at the start of a line.
    assert tail2 == b""
    seqs1 = [r["seq"] for r in one]
    seqs2 = [r["seq"] for r in two]
    assert seqs1 == list(range(1, len(seqs1) + 1))
    assert seqs2 == list(range(seqs2[0], count + 1))
    # Nothing the first reader left in the pipe is lost with it: the
    # second starts at the line the first was cut off in (or before it,
    # with a few lines again).
    assert seqs2[0] <= seqs1[-1] + 1
    assert seqs2[0] >= 1
    assert "state=waiting_for_reader" in t.log()


def test_fifo_slow_reader_backpressure(tether, tmp_path):
    count, window = 3000, 100
    path = make_fifo(tmp_path)
    reader = FifoReader(path, chunk=4096, pause=0.01)
    t = tether(config(f"fifo:{path}", count, window=window, status="100ms"))
    start = time.monotonic()
    t.start()
    try:
        assert t.wait_exit(120) == 0
        wait_for(lambda: last_seq(reader) == count, 30, "every line read")
    finally:
        reader.stop()
    records, tail = split_lines(reader.snapshot())
    assert tail == b""
    assert [r["seq"] for r in records] == list(range(1, count + 1))
    # The reader set the pace (~700 KB at ~400 KB/s) and the window held:
    # never more than max_in_flight events between the source and the pipe.
    assert time.monotonic() - start > 1.0
    in_flight = [int(x) for x in re.findall(r" in_flight=(\d+)", t.log())]
    assert in_flight, t.log()
    assert max(in_flight) <= window
    assert max(in_flight) >= window // 2


# ---- exec -----------------------------------------------------------------


PRELUDE = """#!/usr/bin/python3
import json, os, select, sys, time
DIR = os.path.dirname(os.path.abspath(__file__))
def out(text):
    sys.stdout.write(text + "\\n")
    sys.stdout.flush()
def ack(seq, status="ok", **kw):
    d = {"seq": seq, "status": status}
    d.update(kw)
    out(json.dumps(d))
def note(name, text):
    with open(os.path.join(DIR, name), "a") as f:
        f.write(text + "\\n")
def acked(seq):
    note("acked", str(seq))
note("pids", str(os.getpid()))
"""


def handler(tmp_path, body, name="handler.py"):
    path = tmp_path / name
    path.write_text(PRELUDE + body)
    path.chmod(0o755)
    return str(path)


def acked(tmp_path):
    try:
        with open(tmp_path / "acked") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def pids(tmp_path):
    try:
        with open(tmp_path / "pids") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def gone(pid):
    """The process is gone (a zombie waiting for its reaper counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


ACK_ALL = """
for line in sys.stdin:
    seq = json.loads(line)["seq"]
    acked(seq)
    ack(seq)
"""


def test_exec_out_of_order_acks(tether, tmp_path):
    # Answers each group of seven in reverse, half of them as bare numbers;
    # a group left short is answered when nothing more comes for 50 ms.
    h = handler(tmp_path, """
held = []
def flush():
    global held
    for s in reversed(held):
        acked(s)
        out(str(s)) if s % 2 else ack(s)
    held = []
buf = b""
while True:
    ready, _, _ = select.select([0], [], [], 0.05)
    if not ready:
        flush()
        continue
    chunk = os.read(0, 65536)
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\\n")
    for line in lines:
        held.append(json.loads(line)["seq"])
        if len(held) == 7:
            flush()
""")
    t = tether(config(f"exec:{h}", 1000))
    t.start()
    assert t.wait_exit(60) == 0
    assert sorted(set(acked(tmp_path))) == list(range(1, 1001))
    assert committed_seq(t.state, "c") == 1000
    assert "malformed" not in t.log()


def test_exec_retry_and_fail(tether, tmp_path):
    h = handler(tmp_path, """
tries = {}
for line in sys.stdin:
    seq = json.loads(line)["seq"]
    tries[seq] = tries.get(seq, 0) + 1
    if seq % 10 == 0 and tries[seq] == 1:
        ack(seq, "retry", delay_ms=10)
    elif seq % 10 == 5 and tries[seq] <= 2:
        ack(seq, "fail", error="not yet")
    else:
        acked(seq)
        ack(seq)
""")
    t = tether(config(f"exec:{h}", 200,
                      "max_attempts = 5\nresend_min = 10ms\n"
                      "resend_max = 50ms"))
    t.start()
    assert t.wait_exit(60) == 0
    got = acked(tmp_path)
    assert sorted(got) == list(range(1, 201))  # each exactly once
    log = t.log()
    assert "event not handled; it will be sent again consumer=c sink=exec " \
           "seq=5 attempts=1 err=\"not yet\"" in log
    assert "seq=5 attempts=2 err=\"not yet\"" in log
    assert "max_attempts" not in log
    assert committed_seq(t.state, "c") == 200


def test_exec_hanging_handler(tether, tmp_path):
    h = handler(tmp_path, """
for line in sys.stdin:
    seq = json.loads(line)["seq"]
    if seq == 50 and not os.path.exists(os.path.join(DIR, "hung")):
        note("hung", "x")
        time.sleep(1000)
    acked(seq)
    ack(seq)
""")
    t = tether(config(f"exec:{h}", 100,
                      "handler_timeout = 300ms\nstop_timeout = 200ms\n"
                      "restart_min = 10ms\nrestart_max = 100ms"))
    t.start()
    assert t.wait_exit(60) == 0
    assert sorted(set(acked(tmp_path))) == list(range(1, 101))
    log = t.log()
    assert "the handler answered nothing within handler_timeout; " \
           "restarting it" in log
    assert "handler killed by a signal" in log
    assert len(pids(tmp_path)) >= 2
    wait_for(lambda: all(gone(p) for p in pids(tmp_path)), 10,
             "every handler to be gone")


def test_exec_crash_every_n(tether, tmp_path):
    h = handler(tmp_path, """
n = 0
for line in sys.stdin:
    seq = json.loads(line)["seq"]
    acked(seq)
    ack(seq)
    n += 1
    if n == 25:
        sys.exit(3)
""")
    t = tether(config(f"exec:{h}", 200,
                      "restart_min = 10ms\nrestart_max = 100ms", window=50))
    t.start()
    assert t.wait_exit(60) == 0
    assert sorted(set(acked(tmp_path))) == list(range(1, 201))
    log = t.log()
    assert re.search(r"warn handler exited consumer=c sink=exec pid=\d+ "
                     r"status=3", log)
    assert len(pids(tmp_path)) >= 8
    assert "state=handler_restarting" in log
    assert committed_seq(t.state, "c") == 200


def test_exec_dead_letter(tether, tmp_path):
    dead = tmp_path / "dead.ndjson"
    h = handler(tmp_path, """
for line in sys.stdin:
    seq = json.loads(line)["seq"]
    if seq % 17 == 0:
        ack(seq, "fail", error="bad order %d" % seq)
    else:
        acked(seq)
        ack(seq)
""")
    t = tether(config(f"exec:{h}", 100,
                      f"max_attempts = 2\non_fail = dead_letter:{dead}\n"
                      "resend_min = 10ms"))
    t.start()
    assert t.wait_exit(60) == 0
    records, torn = read_lines(dead)
    assert torn == 0
    assert [r["seq"] for r in records] == [17, 34, 51, 68, 85]
    for r in records:
        assert set(r) == {"consumer", "seq", "attempts", "error", "event"}
        assert r["consumer"] == "c"
        assert r["attempts"] == 2
        assert r["error"] == f"bad order {r['seq']}"
        assert r["event"]["seq"] == r["seq"]
        assert r["event"]["consumer"] == "c"
        assert r["event"]["event"] == "tick"
    assert sorted(acked(tmp_path)) == [s for s in range(1, 101) if s % 17]
    # The cursor passed the dead-lettered events: they count as delivered.
    assert committed_seq(t.state, "c") == 100
    assert "event goes to the dead-letter file after max_attempts " \
           "consumer=c sink=exec seq=17 attempts=2" in t.log()


def test_exec_kill9_loses_nothing(tether, tmp_path):
    count = 3000
    h = handler(tmp_path, ACK_ALL)
    # 1000 events a second: the kill comes in the middle of the stream.
    t = tether(config(f"exec:{h}", count, window=200, rate=1000,
                      exit_when_done=False))
    t.start()
    wait_for(lambda: len(acked(tmp_path)) >= 500 and
             committed_seq(t.state, "c") > 0, 30, "500 acks and a commit", t)
    old = pids(tmp_path)
    assert len(old) == 1
    assert not gone(old[0])
    t.kill9()
    resume = committed_seq(t.state, "c")
    assert 0 < resume < count
    # The handler reads EOF on its stdin and exits by itself.
    wait_for(lambda: gone(old[0]), 10, "the old handler to exit")
    t.write_config(config(f"exec:{h}", count, window=200))
    t.start()
    assert t.wait_exit(60) == 0
    assert set(acked(tmp_path)) == set(range(1, count + 1))
    assert committed_seq(t.state, "c") == count
    assert f"resume_after={resume}" in t.log()
    wait_for(lambda: all(gone(p) for p in pids(tmp_path)), 10,
             "every handler to be gone")


def test_exec_sigterm_stops_handler(tether, tmp_path):
    h = handler(tmp_path, ACK_ALL + "note('eof', 'x')\n")
    t = tether(config(f"exec:{h}", 0, exit_when_done=False))
    t.start()
    wait_for(lambda: len(acked(tmp_path)) >= 100, 30, "100 acks", t)
    assert t.stop(signal.SIGTERM) == 0
    # The handler saw its stdin end and finished on its own, no signal.
    assert (tmp_path / "eof").read_text() == "x\n"
    assert "SIGTERM consumer=c" not in t.log()
    assert re.search(r"info handler exited consumer=c sink=exec", t.log())
    assert all(gone(p) for p in pids(tmp_path))
    # Every event committed was acked.
    assert set(range(1, committed_seq(t.state, "c") + 1)) <= \
        set(acked(tmp_path))


def test_exec_handler_that_exits_at_start(tether, tmp_path):
    # A broken deployment: the handler dies before reading anything. tether
    # restarts it with backoff (no hot loop), holds the events, and delivers
    # them all once the handler is fixed.
    h = handler(tmp_path, """
if not os.path.exists(os.path.join(DIR, "fixed")):
    sys.stderr.write("config missing\\n")
    sys.exit(1)
""" + ACK_ALL)
    t = tether(config(f"exec:{h}", 50,
                      "restart_min = 50ms\nrestart_max = 200ms"))
    t.start()
    wait_for(lambda: len(pids(tmp_path)) >= 4, 20, "a few restarts", t)
    t.wait_log(r"config missing")
    started = time.monotonic()
    n = len(pids(tmp_path))
    time.sleep(1.0)  # an observation window for the restart rate
    rate = (len(pids(tmp_path)) - n) / (time.monotonic() - started)
    assert rate <= 10, f"{rate:.0f} restarts a second: a hot loop"
    assert committed_seq(t.state, "c") == 0
    (tmp_path / "fixed").write_text("")
    assert t.wait_exit(60) == 0
    assert sorted(acked(tmp_path)) == list(range(1, 51))
    assert committed_seq(t.state, "c") == 50
