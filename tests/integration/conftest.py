"""Fixtures that run the real tether binary.

Every wait is bounded and waits on a condition (wait_for), never on a fixed
sleep. A tether that dies on its own fails the test at once with its log; a
sanitizer report in its stderr fails the test at teardown.
"""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

SRC = os.environ.get(
    "TETHER_SOURCE_ROOT",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BUILD = os.environ.get("TETHER_BUILD_ROOT", os.path.join(SRC, "build"))
BIN = os.path.abspath(
    os.environ.get("TETHER_BIN", os.path.join(BUILD, "daemon", "tether")))

SANITIZER = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
    r"UndefinedBehaviorSanitizer")


def wait_for(predicate, timeout, what, proc=None):
    """Polls predicate until it returns a true value, which is returned.
    Fails after timeout seconds, or at once when proc (a Tether) exits."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None:
            proc.fail_if_exited(what)
        if time.monotonic() > deadline:
            extra = f"\n--- tether log ---\n{proc.log()}" if proc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for "
                                 f"{what}{extra}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class Tether:
    """One tether process with its own directory, config and logs."""

    def __init__(self, workdir, config=None, name="tether"):
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.name = name
        self.config_path = os.path.join(self.dir, f"{name}.ini")
        if config is not None:
            self.write_config(config)
        self.proc = None
        self.runs = 0
        self.expected_exit = None

    def write_config(self, text):
        with open(self.config_path, "w") as f:
            f.write(text)

    @property
    def state(self):
        return os.path.join(self.dir, "state.db")

    def start(self, args=None, env=None, preexec_fn=None, pipe_stdout=False):
        """Starts tether; with pipe_stdout its stdout is a pipe the test
        reads from (t.proc.stdout) instead of a file."""
        assert self.proc is None or self.proc.poll() is not None
        self.runs += 1
        self.stdout_path = os.path.join(self.dir,
                                        f"{self.name}.{self.runs}.stdout")
        self.stderr_path = os.path.join(self.dir,
                                        f"{self.name}.{self.runs}.stderr")
        full_env = dict(os.environ)
        full_env.update(env or {})
        if args is None:
            args = ["run", "-c", self.config_path]
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([BIN] + list(args), cwd=self.dir,
                                     stdout=subprocess.PIPE if pipe_stdout
                                     else self._out, stderr=self._err,
                                     stdin=subprocess.DEVNULL, env=full_env,
                                     preexec_fn=preexec_fn)
        self.expected_exit = None
        return self

    @property
    def pid(self):
        return self.proc.pid

    def stdout(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (AttributeError, FileNotFoundError):
            return ""

    def logs(self):
        """Every run's stderr, oldest first."""
        out = []
        for i in range(1, self.runs + 1):
            p = os.path.join(self.dir, f"{self.name}.{i}.stderr")
            if os.path.exists(p):
                with open(p, "rb") as f:
                    out.append(f.read().decode("utf-8", "replace"))
        return "".join(out)

    def fail_if_exited(self, what=""):
        if self.proc is not None and self.expected_exit is None:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(
                    f"tether exited with {rc} while waiting for {what}\n"
                    f"--- log ---\n{self.log()}")

    def wait_log(self, pattern, timeout=20):
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.log()), timeout,
                        f"log line /{pattern}/", self)

    def send(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=30):
        self.expected_exit = True
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"tether did not exit within {timeout}s\n"
                                 f"--- log ---\n{self.log()}")
        self._out.close()
        self._err.close()
        self.check_sanitizers()
        return rc

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signals tether and returns its exit code."""
        self.send(sig)
        return self.wait_exit(timeout)

    def kill9(self):
        self.expected_exit = True
        self.proc.kill()
        self.proc.wait()
        self._out.close()
        self._err.close()
        return self.proc.returncode

    def check_sanitizers(self):
        text = self.log()
        if SANITIZER.search(text):
            raise AssertionError(f"sanitizer report:\n{text}")
        rc = self.proc.returncode
        if rc is not None and rc < 0 and rc != -signal.SIGKILL:
            raise AssertionError(f"tether died from signal {-rc}\n{text}")

    def cursor(self, consumer, stream="generate", subject=""):
        """The committed cursor row as a dict, or None."""
        return read_cursor(self.state, consumer, stream, subject)

    def teardown(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            for f in (self._out, self._err):
                if not f.closed:
                    f.close()
            self.check_sanitizers()


def read_cursor(db, consumer, stream="generate", subject=""):
    if not os.path.exists(db):
        return None
    # A read-only connection: it never blocks tether's writer (WAL).
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        con.row_factory = sqlite3.Row
        row = con.execute(
            "SELECT * FROM cursors WHERE consumer_id=? AND stream_name=? "
            "AND subject_id=?", (consumer, stream, subject)).fetchone()
        return dict(row) if row else None
    except sqlite3.OperationalError as e:
        # The file exists but tether has not made its tables yet.
        if "no such table" in str(e):
            return None
        raise
    finally:
        con.close()


def committed_seq(db, consumer, stream="generate"):
    row = read_cursor(db, consumer, stream)
    return row["last_sequence"] if row else 0


def read_lines(path, running=False):
    """Parses an NDJSON file; returns (records, torn) where torn counts lines
    that are not valid JSON. With running=True the file is being written:
    a last line without its newline is a write in progress, not torn."""
    records, torn = [], 0
    if not os.path.exists(path):
        return records, torn
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if running:
        lines = lines[:-1]
    for line in lines:
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            torn += 1
    return records, torn


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture
def tether(tmp_path):
    """A factory: tether(config_text, name=...) -> Tether in tmp_path."""
    made = []

    def make(config=None, name="tether", workdir=None):
        t = Tether(workdir or tmp_path, config, name)
        made.append(t)
        return t

    yield make
    for t in made:
        t.teardown()


@pytest.fixture
def ref_server():
    """A factory: ref_server(SCRIPT, *args) starts a reference upstream of
    tests/servers and returns its base URL; each is stopped (and must exit
    cleanly) at teardown."""
    sys.path.insert(0, os.path.join(SRC, "tests", "servers"))
    import spawn
    procs = []

    def make(script, *args):
        proc, host, port = spawn.start(script, *args)
        procs.append(proc)
        return f"http://{host}:{port}"

    yield make
    for p in procs:
        assert spawn.stop(p) == 0, p.stderr_text
