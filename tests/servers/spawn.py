"""Starts and stops a reference server (or any program that prints
"listening on HOST:PORT" once it listens) for tests.

    from spawn import start, stop
    proc, host, port = start("sse_server.py", "--events", "100")
    try:
        ...
    finally:
        stop(proc)

A bare script name is looked up next to this file. "--port 0" is added when
the arguments hold no --port. The server's stderr goes to a temporary file,
named by proc.stderr_path and shown in every error, so a crash is easy to
read; stop() keeps it as proc.stderr_text and removes the file. Nothing here sleeps blindly: waits are bounded polls.
"""

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LISTENING = re.compile(rb"^listening on (\S+):(\d+)\s*$")


class SpawnError(RuntimeError):
    pass


def _stderr_of(proc):
    if getattr(proc, "stderr_text", None) is not None:
        return proc.stderr_text
    try:
        with open(proc.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except (OSError, AttributeError):
        return ""


def start(script, *args, timeout=10.0, python=None, env=None, cwd=None):
    """Starts script with args and waits (at most timeout seconds) for its
    "listening on HOST:PORT" line. Returns (proc, host, port); proc is a
    subprocess.Popen. Raises SpawnError, with the server's stderr, when it
    exits or stays silent. python defaults to $TETHER_SERVER_PYTHON, else
    the running interpreter."""
    python = python or os.environ.get("TETHER_SERVER_PYTHON") or sys.executable
    path = script if os.path.dirname(script) else os.path.join(HERE, script)
    argv = [python, path, *map(str, args)]
    if not any(a == "--port" or str(a).startswith("--port=") for a in args):
        argv += ["--port", "0"]
    err = tempfile.NamedTemporaryFile(
        prefix="tether-server-", suffix=".stderr", delete=False)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err,
                            stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    err.close()
    proc.stderr_path = err.name
    proc.argv = argv

    line = b""
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                stop(proc)
                raise SpawnError("%s printed no listening line within %.1fs; "
                                 "stderr:\n%s" % (script, timeout,
                                                  _stderr_of(proc)))
            if not sel.select(left):
                continue
            b = os.read(proc.stdout.fileno(), 1)
            if not b:
                proc.wait(timeout=5)
                stop(proc)
                raise SpawnError("%s exited with %s before listening; "
                                 "stderr:\n%s" % (script, proc.returncode,
                                                  _stderr_of(proc)))
            line += b
    finally:
        sel.close()
    m = LISTENING.match(line)
    if m is None:
        stop(proc)
        raise SpawnError("%s printed %r, not \"listening on HOST:PORT\"; "
                         "stderr:\n%s" % (script, line, _stderr_of(proc)))
    return proc, m.group(1).decode(), int(m.group(2))


def stop(proc, timeout=5.0):
    """SIGTERM, then SIGKILL after timeout seconds. Returns the exit status
    (negative for a signal, as Popen reports it). Safe to call twice."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None and not proc.stdout.closed:
        proc.stdout.close()
    # Keep what it wrote in memory (proc.stderr_text) and drop the file.
    if getattr(proc, "stderr_text", None) is None:
        proc.stderr_text = _stderr_of(proc)
        try:
            os.unlink(proc.stderr_path)
        except OSError:
            pass
    return proc.returncode


@contextlib.contextmanager
def running(script, *args, **kw):
    """with running("poll_server.py") as (proc, host, port): ..."""
    proc, host, port = start(script, *args, **kw)
    try:
        yield proc, host, port
    finally:
        stop(proc)


def stderr_of(proc):
    """What the server wrote to stderr so far (for post-mortems)."""
    return _stderr_of(proc)
