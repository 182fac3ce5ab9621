"""The exec sink with the real binary, on two faults of issue 9: a handler
that answers for events ahead of the ones it has read, while the rest wait
in tether behind a full stdin, must not move the committed cursor past what
it was given; and a handler that floods its stderr and exits at once must
still get the count of the lines that were not logged."""
import os
import re

from conftest import committed_seq, wait_for


def config(sink, count, extra="", window=1000, payload=100,
           exit_when_done=True):
    return f"""
[daemon]
state = state.db
checkpoint_interval = 100ms
shutdown_timeout = 10s
exit_when_done = {"true" if exit_when_done else "false"}

[consumer c]
source = generate
rate = 0
count = {count}
payload_size = {payload}
max_in_flight = {window}
sink = {sink}
{extra}
"""


def handler(tmp_path, body):
    path = tmp_path / "handler.py"
    path.write_text("#!/usr/bin/python3\n"
                    "import json, os, sys, time\n"
                    "DIR = os.path.dirname(os.path.abspath(__file__))\n"
                    "with open(os.path.join(DIR, 'pids'), 'a') as f:\n"
                    "    f.write('%d\\n' % os.getpid())\n" + body)
    path.chmod(0o755)
    return str(path)


def numbers(path):
    try:
        with open(path) as f:
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


# The handler notes each seq it reads before it answers, then answers for
# seq + 5 (ahead of what it read) and for seq, and takes 5 ms a line. Once
# tether is gone it goes on reading what is left in its stdin, so the note
# ends up with every line tether managed to write to it.
ANSWER_AHEAD = """
read = open(os.path.join(DIR, "read"), "a", buffering=1)
def out(text):
    try:
        os.write(1, (text + "\\n").encode())
    except OSError:
        pass  # tether is gone; what is left in stdin is still read
for line in sys.stdin.buffer:
    if not line.endswith(b"\\n"):
        break  # cut short by tether's end: not a line it gave us
    seq = json.loads(line)["seq"]
    read.write("%d\\n" % seq)
    out(str(seq + 5))
    out(str(seq))
    time.sleep(0.005)
"""


def test_exec_answer_ahead_commits_only_what_was_read(tether, tmp_path):
    # Lines of 100 KB: the handler's stdin (a socket pair of about 200 KiB)
    # holds two or three, so seq + 5 is still queued in tether when the
    # answer for it comes.
    h = handler(tmp_path, ANSWER_AHEAD)
    t = tether(config(f"exec:{h}", 400, window=50, payload=100_000,
                      exit_when_done=False))
    t.start()
    wait_for(lambda: len(numbers(tmp_path / "read")) >= 60 and
             committed_seq(t.state, "c") > 0, 60,
             "60 lines read and a commit", t)
    t.kill9()
    committed = committed_seq(t.state, "c")
    pid = numbers(tmp_path / "pids")
    assert len(pid) == 1
    # The handler reads EOF once it has what tether wrote, and exits.
    wait_for(lambda: gone(pid[0]), 30, "the handler to exit")
    read = set(numbers(tmp_path / "read"))
    missing = sorted(set(range(1, committed + 1)) - read)
    assert not missing, (f"cursor {committed} committed, but the handler "
                         f"never read {missing[:20]}")
    assert committed <= max(read)
    assert "warn answer for an event not yet written to the handler; " \
           "ignored consumer=c sink=exec" in t.log()


# The first run writes 1000 lines on stderr and exits at once; the next
# ones answer every event.
FLOOD = """
if not os.path.exists(os.path.join(DIR, "flooded")):
    open(os.path.join(DIR, "flooded"), "w").close()
    for i in range(1000):
        sys.stderr.write("flood %d\\n" % i)
    sys.exit(0)
for line in sys.stdin:
    print(json.loads(line)["seq"], flush=True)
"""


def test_exec_stderr_flood_counted_at_exit(tether, tmp_path):
    h = handler(tmp_path, FLOOD)
    t = tether(config(f"exec:{h}", 20, "restart_min = 10ms"))
    t.start()
    assert t.wait_exit(60) == 0
    assert committed_seq(t.state, "c") == 20
    log = t.log()
    logged = len(re.findall(r'handler stderr consumer=c sink=exec pid=\d+ '
                            r'line="flood \d+"', log))
    counts = re.findall(r"warn handler stderr lines not logged \(more than "
                        r"50 a second\) consumer=c sink=exec pid=\d+ "
                        r"lines=(\d+)", log)
    # Every line is either in the log or in a count, and the count came
    # with the handler's exit, before the restart.
    assert 0 < logged < 1000
    assert logged + sum(int(n) for n in counts) == 1000, log
    assert log.index("lines not logged") < \
        log.index("info restarting the handler")
