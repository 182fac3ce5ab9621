"""tether's benchmarks, each beside a baseline measured in the same run.

    python3 bench/bench.py            every case; writes bench/RESULTS.md
    python3 bench/bench.py --quick    shorter runs, no RESULTS.md
    python3 bench/bench.py --case generate_file

Cases:
  generate_file   generate -> file:PATH, 100-byte payloads, checkpoint 1s
                  (fdatasync before every commit), as fast as it goes;
                  baseline: the same NDJSON bytes copied by copysync (1 MiB
                  writes, one fdatasync per second)
  idle            RSS and CPU ticks over 30 s: 1 and 100 consumers at 1
                  event/s, and 1 consumer whose source is done
  sse_file        SSE -> file: a pre-built text/event-stream of 1,000,000
                  events served by nginx; baselines: curl -sN -o /dev/null
                  (the raw read limit) and the eventsource npm client
                  counting events (what a user would write instead)
  sse_latency     publish -> sink at 10,000 events/s through a better-sse
                  server, p50/p99; baseline: curl reading the same stream
  socket_sink     generate -> sink = socket, 100-byte payloads, read by
                  bench/subscriber.c over the API socket (NDJSON, chunked)
                  and acknowledged every 100 events on a second
                  connection, max_in_flight 1000 and 10000; baseline: the
                  same NDJSON bytes through a pipe into subscriber --stdin
                  (the same line splitting and seq parsing, no HTTP)
  fifo_sink       generate -> fifo:PATH read by bench/subscriber --stdin
                  from the FIFO (an event counts delivered once read),
                  max_in_flight 1000 and 10000; baseline: the same NDJSON
                  bytes through a pipe into subscriber --stdin
  exec_sink       generate -> sink = exec:bench/acker, which answers each
                  event's bare seq in one write per read block;
                  baseline: the same NDJSON bytes through a pipe into
                  acker, its answers to /dev/null
  api_latency     GET /v1/consumers with 100 consumers, 2,000 requests
                  on one keep-alive connection, p50/p99; baseline: GET
                  /v1/health the same way (the server's floor)
  pocketbase_file pocketbase -> file:PATH: 20,000 records already in the
                  reference PocketBase server (tests/servers), pages of 500,
                  settle 0, realtime off; baseline: the server's ceiling, an
                  http.client loop on one keep-alive connection sending the
                  very requests tether sends (same filter, sort and page)
  pocketbase_wakeup
                  create -> stdout latency with poll_interval 10s and the
                  realtime wake-up on, 50 single creates 300 ms apart, at
                  settle 0 and 500ms, p50/p99; baseline: a realtime client
                  subscribed to orders/* on the same server, timing the
                  create events of the same creates (the realtime floor)
  binary          the stripped size of the release binary

Machines here are noisy: each throughput figure is the median of 3 runs and
is reported as a ratio to its baseline.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.path.join(ROOT, "build-release")
TETHER = os.path.join(BUILD, "daemon", "tether")
COPYSYNC = os.path.join(BUILD, "bench", "copysync")
SUBSCRIBER = os.path.join(BUILD, "bench", "subscriber")
ACKER = os.path.join(BUILD, "bench", "acker")
TICK = os.sysconf("SC_CLK_TCK")


def build():
    if not os.path.exists(os.path.join(BUILD, "build.ninja")):
        subprocess.run(["meson", "setup", BUILD, "--buildtype=release"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    # meson compile looks targets up before it regenerates: a target new
    # in a meson.build is "not found" until build.ninja is brought up to
    # date.
    subprocess.run(["ninja", "-C", BUILD, "build.ninja"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["meson", "compile", "-C", BUILD, "daemon/tether",
                    "bench/copysync", "bench/subscriber", "bench/acker"],
                   check=True, stdout=subprocess.DEVNULL)


def run_timed(argv, cwd, stdout=subprocess.DEVNULL):
    """Runs argv; returns (wall seconds, cpu seconds, peak RSS KiB). The peak
    is sampled from /proc (VmHWM) while it runs: wait4's ru_maxrss would
    count the copy of this Python process the child was forked from."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=cwd, stdout=stdout,
                         stderr=subprocess.PIPE)
    wall, cpu, hwm = watch(p, t0)
    err = p.stderr.read().decode()
    p.stderr.close()
    if p.returncode != 0:
        sys.exit(f"{argv[0]} failed:\n{err}")
    return wall, cpu, hwm


def watch(p, t0, timeout=600):
    """Waits for p, sampling its peak RSS; returns (wall seconds since t0,
    cpu seconds, peak RSS KiB) and sets p.returncode. Kills it and fails
    when it still runs `timeout` seconds after t0."""
    hwm = 0
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid != 0:
            break
        if time.monotonic() - t0 > timeout:
            p.kill()
            p.wait()
            sys.exit(f"{p.args[0]} still ran after {timeout:.0f} s: "
                     "killed")
        hwm = max(hwm, proc_status_kib(p.pid, "VmHWM"))
        time.sleep(0.01)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, ru.ru_utime + ru.ru_stime, hwm


def generate_file(work, events, window, runs):
    results = []
    out = os.path.join(work, "out.ndjson")
    for _ in range(runs):
        for f in os.listdir(work):
            # .tether/ holds the API socket of the default config.
            path = os.path.join(work, f)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        generate_ini(os.path.join(work, "bench.ini"), work, events, window,
                     f"file:{out}")
        wall, cpu, rss = run_timed([TETHER, "run", "-c", "bench.ini"], work)
        size = os.path.getsize(out)
        # The baseline copies the very bytes tether wrote.
        copy = os.path.join(work, "copy.ndjson")
        with open(out, "rb") as src:
            p = subprocess.run([COPYSYNC, copy], stdin=src,
                               capture_output=True, check=True)
        copied, secs = p.stdout.split()
        assert int(copied) == size
        os.unlink(copy)
        results.append({
            "eps": events / wall,
            "eps_cpu": events / cpu,
            "rss": rss,
            "bytes": size,
            "base_eps": events / float(secs),
        })
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    return med


def generate_ini(path, work, events, window, sink, extra=""):
    """A config of one consumer `bench` reading a generate source of
    `events` 100-byte events as fast as the window allows."""
    with open(path, "w") as f:
        f.write(f"""
[daemon]
state = {work}/state.db
checkpoint_interval = 1s
status_interval = 0
exit_when_done = true
log_level = warn
{extra}
[consumer bench]
source = generate
rate = 0
count = {events}
payload_size = 100
max_in_flight = {window}
sink = {sink}
""")


def clean_state(work):
    for f in os.listdir(work):
        if f.startswith("state.db"):
            os.unlink(os.path.join(work, f))


def committed_seq(work, consumer="bench"):
    """The cursor tether committed for `consumer` (0 when none)."""
    db = sqlite3.connect(os.path.join(work, "state.db"))
    try:
        row = db.execute("SELECT max(last_sequence) FROM cursors "
                         "WHERE consumer_id = ?", (consumer,)).fetchone()
    finally:
        db.close()
    return row[0] or 0


def reference_ndjson(work, events):
    """The NDJSON lines tether's file sink writes for the generate source of
    the case: the bytes each pipe baseline reads."""
    out = os.path.join(work, "ref.ndjson")
    generate_ini(os.path.join(work, "ref.ini"), work, events, 10000,
                 f"file:{out}")
    run_timed([TETHER, "run", "-c", "ref.ini"], work)
    clean_state(work)
    with open(out, "rb") as f:
        f.seek(-400, 2)
        if f'"seq":{events},'.encode() not in f.read():
            sys.exit(f"{out} does not end with event {events}")
    return out


def pipe_into(path, argv):
    """Runs argv with the file at path fed through a pipe (by cat, so the
    reader sees a pipe, not a file); returns argv's (stdout, stderr)."""
    with open(path, "rb") as src:
        cat = subprocess.Popen(["cat"], stdin=src, stdout=subprocess.PIPE)
        p = subprocess.run(argv, stdin=cat.stdout, capture_output=True)
        cat.stdout.close()
        cat.wait()
    if p.returncode != 0 or cat.returncode != 0:
        sys.exit(f"{' '.join(argv)} < {path} failed:\n{p.stderr.decode()}")
    return p.stdout.decode(), p.stderr.decode()


def tether_log(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-4000:]
    except FileNotFoundError:
        return ""


def in_short_dir(case, *args):
    """Runs case(work, *args) in a new directory under /tmp, removed
    afterwards: short, so that a unix socket path in it stays within the
    107 bytes sun_path holds."""
    work = tempfile.mkdtemp(prefix="tb-", dir="/tmp")
    try:
        return case(work, *args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def socket_sink(work, events, window, runs):
    """tether's socket sink read and acknowledged by bench/subscriber over
    the API socket, against subscriber --stdin reading the same bytes
    through a pipe."""
    ref = reference_ndjson(work, events)
    sock = os.path.join(work, "api.sock")
    ini = os.path.join(work, "sock.ini")
    log = os.path.join(work, "tether.log")
    generate_ini(ini, work, events, window, "socket", f"socket = {sock}")
    results = []
    for _ in range(runs):
        clean_state(work)
        with open(log, "w") as err:
            t0 = time.monotonic()
            tp = subprocess.Popen([TETHER, "run", "-c", ini], cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=err)
            # The subscriber waits for the socket to appear.
            try:
                sp = subprocess.run([SUBSCRIBER, sock, str(events)],
                                    capture_output=True, timeout=600)
                why = sp.stderr.decode() if sp.returncode != 0 else None
            except subprocess.TimeoutExpired:
                why = "it still ran after 600 s"
            if why is not None:
                # Without a subscriber tether would wait for it forever.
                tp.kill()
                tp.wait()
                sys.exit(f"subscriber failed: {why}\n"
                         f"tether's log:\n{tether_log(log)}")
            # Then tether commits the last cursor and exits by itself.
            wall, cpu, rss = watch(tp, t0, time.monotonic() - t0 + 60)
        if tp.returncode != 0:
            sys.exit(f"tether exited {tp.returncode}:\n{tether_log(log)}")
        seen, secs, acks = sp.stdout.split()
        if int(seen) != events or committed_seq(work) != events:
            sys.exit(f"subscriber saw {seen} events, tether committed "
                     f"{committed_seq(work)}; expected {events}")
        out, _ = pipe_into(ref, [SUBSCRIBER, "--stdin", str(events)])
        base_seen, base_secs = out.split()
        if int(base_seen) != events:
            sys.exit(f"subscriber --stdin saw {base_seen} events")
        results.append({
            "eps": events / float(secs),
            "eps_wall": events / wall,
            "eps_cpu": events / cpu,
            "rss": rss,
            "acks": int(acks),
            "base_eps": events / float(base_secs),
        })
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def fifo_sink(work, events, window, runs):
    """tether's fifo sink read by subscriber --stdin, which opens the FIFO
    before tether starts (as an application does), against subscriber
    --stdin reading the same bytes through a pipe. tether exits once the
    reader has read every line."""
    ref = reference_ndjson(work, events)
    fifo = os.path.join(work, "events.pipe")
    ini = os.path.join(work, "fifo.ini")
    generate_ini(ini, work, events, window, f"fifo:{fifo}")
    if not os.path.exists(fifo):
        os.mkfifo(fifo, 0o600)
    results = []
    for _ in range(runs):
        clean_state(work)
        # The shell's open of the FIFO waits for tether, and counts as a
        # reader meanwhile (a reader that sees no writer yet reads EOF).
        sp = subprocess.Popen(["sh", "-c", 'exec "$0" --stdin "$1" < "$2"',
                               SUBSCRIBER, str(events), fifo],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wall, cpu, rss = run_timed([TETHER, "run", "-c", ini], work)
        out, err = sp.communicate(timeout=60)
        if sp.returncode != 0 or committed_seq(work) != events:
            sys.exit(f"subscriber: {err.decode()}; tether committed "
                     f"{committed_seq(work)} of {events}")
        seen, secs = out.split()
        base, _ = pipe_into(ref, [SUBSCRIBER, "--stdin", str(events)])
        base_seen, base_secs = base.split()
        if int(seen) != events or int(base_seen) != events:
            sys.exit(f"subscriber saw {seen} and {base_seen} of {events}")
        results.append({"eps": events / wall, "eps_cpu": events / cpu,
                        "eps_reader": events / float(secs), "rss": rss,
                        "base_eps": events / float(base_secs)})
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def exec_sink(work, events, window, runs):
    """tether's exec sink feeding bench/acker, against acker reading the
    same bytes through a pipe. tether reaps the acker, so the CPU time
    wait4 reports for tether includes the acker's."""
    ref = reference_ndjson(work, events)
    ini = os.path.join(work, "exec.ini")
    generate_ini(ini, work, events, window, f"exec:{ACKER}")
    results = []
    for _ in range(runs):
        clean_state(work)
        wall, cpu, rss = run_timed([TETHER, "run", "-c", ini], work)
        if committed_seq(work) != events:
            sys.exit(f"tether committed {committed_seq(work)} of {events} "
                     "events through exec")
        _, err = pipe_into(ref, [ACKER, "--time"])
        lines, secs = err.split()
        if int(lines) != events:
            sys.exit(f"acker answered {lines} lines of {events}")
        results.append({"eps": events / wall, "eps_cpu": events / cpu,
                        "rss": rss, "base_eps": events / float(secs)})
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket: the local API's transport."""

    def __init__(self, path, timeout=10):
        super().__init__("tether", timeout=timeout)
        self.unix_path = path

    def connect(self):
        so = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        so.settimeout(self.timeout)
        so.connect(self.unix_path)
        self.sock = so


def time_gets(conn, target, n):
    """n GETs of target on conn; returns (latencies in ms, body bytes)."""
    lat = []
    body = b""
    for _ in range(n):
        t0 = time.perf_counter_ns()
        conn.request("GET", target)
        r = conn.getresponse()
        body = r.read()
        lat.append((time.perf_counter_ns() - t0) / 1e6)
        if r.status != 200:
            sys.exit(f"GET {target} answered {r.status}: {body[:200]!r}")
    return lat, len(body)


def api_latency(work, consumers, requests):
    """GET /v1/consumers against GET /v1/health on one keep-alive
    connection of the API socket."""
    tp = None
    try:
        sock = os.path.join(work, "api.sock")
        ini = os.path.join(work, "api.ini")
        log = os.path.join(work, "tether.log")
        with open(ini, "w") as f:
            f.write(f"[daemon]\nstate = {work}/state.db\nsocket = {sock}\n"
                    "status_interval = 0\nlog_level = warn\n")
            for i in range(consumers):
                f.write(f"\n[consumer c{i}]\nsource = generate\nrate = 1\n"
                        f"sink = file:{work}/c{i}.ndjson\n")
        with open(log, "w") as err:
            tp = subprocess.Popen([TETHER, "run", "-c", ini], cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 10
        while True:
            if tp.poll() is not None:
                sys.exit(f"tether exited {tp.returncode} before it was "
                         f"ready:\n{tether_log(log)}")
            try:
                c = UnixHTTPConnection(sock, timeout=1)
                c.request("GET", "/v1/ready")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"/v1/ready did not answer 200 within 10 s:\n"
                         f"{tether_log(log)}")
            time.sleep(0.01)
        conn = UnixHTTPConnection(sock)
        time_gets(conn, "/v1/health", 100)  # warm-up, not counted
        time_gets(conn, "/v1/consumers", 100)
        health, health_size = time_gets(conn, "/v1/health", requests)
        lat, size = time_gets(conn, "/v1/consumers", requests)
        conn.close()
        tp.terminate()
        if tp.wait(timeout=30) != 0:
            sys.exit(f"tether exited {tp.returncode} after SIGTERM:\n"
                     f"{tether_log(log)}")
        tp = None
        return {"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99),
                "size": size, "base_p50": percentile(health, 0.5),
                "base_p99": percentile(health, 0.99),
                "base_size": health_size}
    finally:
        if tp is not None:
            tp.kill()
            tp.wait()


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, in ticks


def proc_status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def idle(work, consumers, rate, count, seconds):
    """Starts tether, lets it settle, then measures RSS and CPU ticks over
    `seconds`."""
    ini = os.path.join(work, f"idle-{consumers}-{count}.ini")
    with open(ini, "w") as f:
        f.write(f"[daemon]\nstate = {work}/idle-{consumers}-{count}.db\n"
                "status_interval = 0\nlog_level = warn\n")
        for i in range(consumers):
            f.write(f"\n[consumer c{i}]\nsource = generate\nrate = {rate}\n"
                    f"count = {count}\nsink = stdout\n")
    p = subprocess.Popen([TETHER, "run", "-c", ini], cwd=work,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(3)  # start-up and the first commits settle
        t0 = proc_stat(p.pid)
        time.sleep(seconds)
        ticks = proc_stat(p.pid) - t0
        rss = proc_status_kib(p.pid, "VmRSS")
        pss = smaps_pss_kib(p.pid)
    finally:
        p.terminate()
        p.wait()
    return rss, pss, ticks


def smaps_pss_kib(pid):
    """Proportional set size: shared library pages counted by share."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


NGINX_CONF = """
daemon off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp;
  proxy_temp_path {dir}/tmp;
  fastcgi_temp_path {dir}/tmp;
  uwsgi_temp_path {dir}/tmp;
  scgi_temp_path {dir}/tmp;
  server {{
    listen 127.0.0.1:{port};
    location /static/ {{ root {dir}; default_type text/event-stream; }}
  }}
}}
"""


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def wait_port(port):
    for _ in range(1000):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            time.sleep(0.01)
    sys.exit(f"nothing listens on {port}")


def start_nginx(work):
    d = os.path.join(work, "nginx")
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    os.makedirs(os.path.join(d, "static"), exist_ok=True)
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=d, port=port))
    p = subprocess.Popen(["nginx", "-p", d + "/", "-c", conf, "-e",
                          os.path.join(d, "error.log")])
    wait_port(port)
    return p, port, d


def tail_has(path, needle):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            return needle in f.read()
    except FileNotFoundError:
        return False


# What a user would write instead: the WHATWG EventSource client counting
# events, exiting after N.
NODE_COUNT = """
const { EventSource } = require("eventsource");
const want = +process.argv[2];
let n = 0;
const es = new EventSource(process.argv[1]);
es.onmessage = () => { if (++n >= want) { es.close(); process.exit(0); } };
"""


def sse_file(work, events, runs):
    """tether reading a pre-built stream file into a file sink, against curl
    and the Node EventSource client on the same URL."""
    ng, port, d = start_nginx(work)
    try:
        path = os.path.join(d, "static", "events.txt")
        pad = "x" * 80
        with open(path, "w") as f:
            for i in range(1, events + 1):
                f.write(f'id: {i}\ndata: {{"n":{i},"pad":"{pad}"}}\n\n')
        size = os.path.getsize(path)
        url = f"http://127.0.0.1:{port}/static/events.txt"
        results = []
        for _ in range(runs):
            out = os.path.join(work, "sse.ndjson")
            for f in ("sse.ndjson", "sse.db", "sse.db-wal", "sse.db-shm"):
                if os.path.exists(os.path.join(work, f)):
                    os.unlink(os.path.join(work, f))
            with open(os.path.join(work, "sse.ini"), "w") as f:
                f.write(f"""
[daemon]
state = {work}/sse.db
status_interval = 0
log_level = error
[upstream ng]
type = sse
url = http://127.0.0.1:{port}
[consumer bench]
upstream = ng
path = /static/events.txt
max_in_flight = 10000
sink = file:{out}
""")
            # The file ends the body; tether would then reconnect and read it
            # again. The run ends when the last event is in the sink.
            needle = f'"seq":{events},'.encode()
            t0 = time.monotonic()
            p = subprocess.Popen([TETHER, "run", "-c", "sse.ini"], cwd=work,
                                 stdout=subprocess.DEVNULL)
            while not tail_has(out, needle):
                time.sleep(0.005)
            wall = time.monotonic() - t0
            cpu = proc_stat(p.pid) / TICK
            p.terminate()
            p.wait()
            t0 = time.monotonic()
            subprocess.run(["curl", "-sN", "-o", "/dev/null", url], check=True)
            curl = time.monotonic() - t0
            t0 = time.monotonic()
            subprocess.run(["node", "-e", NODE_COUNT, url, str(events)],
                           cwd=os.path.join(ROOT, "tests", "peers"),
                           check=True, stdout=subprocess.DEVNULL)
            node = time.monotonic() - t0
            results.append({"eps": events / wall, "eps_cpu": events / cpu,
                            "mbps": size / wall / 1e6,
                            "curl_mbps": size / curl / 1e6,
                            "node_eps": events / node})
        return {k: statistics.median(r[k] for r in results)
                for k in results[0]}
    finally:
        ng.send_signal(signal.SIGQUIT)
        ng.wait()


# Publishes RATE events/s for SECONDS to PORT/publish, each carrying its
# CLOCK_MONOTONIC send time: pipelined keep-alive POSTs on 4 connections,
# paced by the clock so a slow response never lowers the rate.
PUBLISHER = """
import asyncio, sys, time
port, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

async def conn(share):
    r, w = await asyncio.open_connection("127.0.0.1", port)

    async def drain_responses():
        while True:
            line = await r.readline()
            if not line:
                return
            length = 0
            while line not in (b"\\r\\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                line = await r.readline()
            await r.readexactly(length)

    responses = asyncio.create_task(drain_responses())
    start, sent = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < seconds:
        while sent < int(elapsed * share):
            body = ('{"t":%d}' % time.monotonic_ns()).encode()
            w.write(b"POST /publish HTTP/1.1\\r\\nHost: x\\r\\n"
                    b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body)
            sent += 1
        await w.drain()
        await asyncio.sleep(0.0002)
    responses.cancel()
    w.close()

async def main():
    await asyncio.gather(*(conn(rate / 4) for _ in range(4)))

asyncio.run(main())
"""


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def sse_latency(work, rate, seconds):
    """Publish -> sink latency: each event carries its publish time; tether
    writes to a pipe this process reads, and curl reads the same stream as
    the baseline, both at once."""
    import threading
    peers = os.path.join(ROOT, "tests", "peers")
    srv = subprocess.Popen(["node", os.path.join(peers, "sse-server.cjs")],
                           cwd=peers, stdout=subprocess.PIPE,
                           env=dict(os.environ, PORT="0", TICK="0",
                                    KEEPALIVE="10000"))
    port = int(srv.stdout.readline().split(b":")[-1])
    try:
        with open(os.path.join(work, "lat.ini"), "w") as f:
            f.write(f"""
[daemon]
state = {work}/lat.db
status_interval = 0
log_level = error
[upstream peer]
type = sse
url = http://127.0.0.1:{port}
[consumer lat]
upstream = peer
path = /events
sink = stdout
""")
        tp = subprocess.Popen([TETHER, "run", "-c", "lat.ini"], cwd=work,
                              stdout=subprocess.PIPE)
        cp = subprocess.Popen(["curl", "-sN", "-H",
                               "Accept: text/event-stream",
                               f"http://127.0.0.1:{port}/events"],
                              stdout=subprocess.PIPE)
        ours, theirs = [], []

        def read_tether():
            for line in tp.stdout:
                i = line.find(b'"t":')
                if i >= 0:
                    t = int(line[i + 4:line.index(b"}", i)])
                    ours.append((time.monotonic_ns() - t) / 1e6)

        def read_curl():
            for line in cp.stdout:
                i = line.find(b'"t":')
                if line.startswith(b"data:") and i >= 0:
                    t = int(line[i + 4:line.index(b"}", i)])
                    theirs.append((time.monotonic_ns() - t) / 1e6)

        readers = [threading.Thread(target=read_tether, daemon=True),
                   threading.Thread(target=read_curl, daemon=True)]
        for r in readers:
            r.start()
        time.sleep(1)  # both subscribers connected before the first publish
        subprocess.run([sys.executable, "-c", PUBLISHER, str(port), str(rate),
                        str(seconds)], check=True)
        time.sleep(0.5)  # the last events reach both readers
        tp.terminate()
        cp.terminate()
        tp.wait()
        cp.wait()
        # The first second warms caches and connections: left out.
        ours, theirs = ours[rate:], theirs[rate:]
        return {"n": len(ours), "p50": percentile(ours, 0.5),
                "p99": percentile(ours, 0.99),
                "base_p50": percentile(theirs, 0.5),
                "base_p99": percentile(theirs, 0.99)}
    finally:
        srv.terminate()
        srv.wait()


PB_SERVER = os.path.join(ROOT, "tests", "servers", "pocketbase_server.py")
PB_SUPERUSER = ("admin@example.com", "secret-password-1")
PB_LIST = "/api/collections/orders/records"


def start_pb(work):
    """Starts the reference PocketBase server; returns (process, port)."""
    with open(os.path.join(work, "pb-server.log"), "w") as err:
        srv = subprocess.Popen([sys.executable, PB_SERVER, "--port", "0"],
                               stdout=subprocess.PIPE, stderr=err)
    line = srv.stdout.readline().decode()
    if not line.startswith("listening on "):
        srv.kill()
        srv.wait()
        sys.exit(f"{PB_SERVER} did not start: {line!r}")
    return srv, int(line.rsplit(":", 1)[1])


def stop_pb(srv):
    srv.terminate()
    srv.wait()


def pb_call(conn, method, path, body=None, token=None, want=200):
    """One JSON request on a keep-alive connection; returns the decoded
    answer (None when empty)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = token
    conn.request(method, path,
                 None if body is None else json.dumps(body), headers)
    r = conn.getresponse()
    raw = r.read()
    if r.status != want:
        sys.exit(f"{method} {path} answered {r.status}: {raw[:300]!r}")
    return json.loads(raw) if raw else None


def pb_login(conn):
    return pb_call(conn, "POST",
                   "/api/collections/_superusers/auth-with-password",
                   {"identity": PB_SUPERUSER[0],
                    "password": PB_SUPERUSER[1]})["token"]


def pb_ini(path, work, port, consumer, sink, settle, realtime, extra=""):
    with open(path, "w") as f:
        f.write(f"""
[daemon]
state = {work}/pb.db
status_interval = 0
log_level = error
checkpoint_interval = 1s
[upstream pb]
type = pocketbase
url = http://127.0.0.1:{port}
auth = superuser
identity = {PB_SUPERUSER[0]}
password = {PB_SUPERUSER[1]}
realtime = {realtime}
[consumer {consumer}]
upstream = pb
collection = orders
settle = {settle}
poll_interval = 10s
sink = {sink}
{extra}
""")


def clean_pb(work):
    for f in os.listdir(work):
        if f.startswith("pb.db") or f.endswith(".ndjson"):
            os.unlink(os.path.join(work, f))


def pb_page_target(created, rid, per_page):
    """A page of the records after the cursor (created, id), sorted by
    (created, id): the request tether sends at settle = 0 (no upper
    bound). Its shape is checked against one of tether's recorded requests
    in each run."""
    flt = (f'(created > "{created}" || (created = "{created}" && '
           f'id > "{rid}"))')
    return (f"{PB_LIST}?page=1&perPage={per_page}&skipTotal=1"
            f"&sort=created%2Cid&filter={urllib.parse.quote(flt, safe='')}")


PB_FILTER = re.compile(r'^\(created > "([^"]*)" \|\| \(created = "\1" && '
                       r'id > "([^"]*)"\)\)$')


def check_pb_shape(conn, per_page):
    """Fails unless pb_page_target rebuilds, byte for byte, a request
    tether sent with a cursor in it."""
    sent = pb_call(conn, "GET", f"/_requests?path={PB_LIST}")
    for req in sent:
        m = PB_FILTER.match(req["query"].get("filter", ""))
        if m and m.group(1):
            ours = pb_page_target(m.group(1), m.group(2),
                                  req["query"]["perPage"])
            if ours != req["target"]:
                sys.exit(f"the baseline's request\n  {ours}\ndiffers from "
                         f"tether's\n  {req['target']}")
            return
    sys.exit(f"no request of tether's has the expected filter; the first: "
             f"{sent[:1]}")


def pb_page_all(port, records, per_page):
    """The server's ceiling: one keep-alive connection logged in as the
    superuser pages through the collection with tether's requests, from
    the empty cursor until a short page. Returns the seconds the paging
    took (the login is not timed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    token = pb_login(conn)
    headers = {"Accept": "application/json", "Authorization": token}
    created, rid, seen = "", "", 0
    t0 = time.monotonic()
    while True:
        conn.request("GET", pb_page_target(created, rid, per_page),
                     headers=headers)
        r = conn.getresponse()
        raw = r.read()
        if r.status != 200:
            sys.exit(f"the paging baseline got {r.status}: {raw[:300]!r}")
        items = json.loads(raw)["items"]
        seen += len(items)
        if items:
            created, rid = items[-1]["created"], items[-1]["id"]
        if len(items) < per_page:
            break
    secs = time.monotonic() - t0
    conn.close()
    if seen != records:
        sys.exit(f"the paging baseline read {seen} records of {records}")
    return secs


def count_lines(path, want, proc, log, timeout):
    """Waits until the file at path holds `want` lines, reading only what
    was appended since the last look; fails when proc exits or `timeout`
    seconds pass first. Returns the monotonic time it saw the last one."""
    deadline = time.monotonic() + timeout
    lines, f = 0, None
    try:
        while True:
            if f is None and os.path.exists(path):
                f = open(path, "rb")
            if f is not None:
                lines += f.read().count(b"\n")
                if lines >= want:
                    return time.monotonic()
            if proc.poll() is not None:
                sys.exit(f"tether exited {proc.returncode} with {lines} of "
                         f"{want} lines:\n{tether_log(log)}")
            if time.monotonic() > deadline:
                sys.exit(f"{lines} of {want} lines after {timeout} s:\n"
                         f"{tether_log(log)}")
            time.sleep(0.005)
    finally:
        if f is not None:
            f.close()


def stop_tether(tp, log):
    tp.terminate()
    try:
        rc = tp.wait(timeout=30)
    except subprocess.TimeoutExpired:
        tp.kill()
        tp.wait()
        sys.exit(f"tether still ran 30 s after SIGTERM:\n{tether_log(log)}")
    if rc != 0:
        sys.exit(f"tether exited {rc} after SIGTERM:\n{tether_log(log)}")


def pocketbase_file(work, records, runs, per_page=500):
    """tether paging a collection of the reference server into a file,
    against a plain client sending the same requests; the CPU the server
    spent while tether ran is reported beside tether's own."""
    srv, port = start_pb(work)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        pb_call(conn, "POST", "/_pb/collections",
                {"name": "orders", "listRule": None, "fields": ["n"]})
        for first in range(0, records, 1000):
            pb_call(conn, "POST", "/_pb/create", {
                "collection": "orders",
                "records": [{"n": i} for i in
                            range(first, min(records, first + 1000))]})
        out = os.path.join(work, "pb.ndjson")
        ini = os.path.join(work, "pb.ini")
        log = os.path.join(work, "tether.log")
        results = []
        for _ in range(runs):
            clean_pb(work)
            pb_ini(ini, work, port, "pb", f"file:{out}", "0", "false",
                   f"batch_size = {per_page}")
            pb_call(conn, "POST", "/_reset")  # an empty request record
            srv_cpu = proc_stat(srv.pid)
            with open(log, "w") as err:
                t0 = time.monotonic()
                tp = subprocess.Popen([TETHER, "run", "-c", ini], cwd=work,
                                      stdout=subprocess.DEVNULL, stderr=err)
            try:
                wall = count_lines(out, records, tp, log, 300) - t0
                cpu = proc_stat(tp.pid) / TICK
                srv_cpu = (proc_stat(srv.pid) - srv_cpu) / TICK
            except BaseException:
                tp.kill()
                tp.wait()
                raise
            stop_tether(tp, log)
            with open(out, "rb") as f:
                written = f.read().count(b"\n")
            if written != records:
                sys.exit(f"tether wrote {written} lines for {records} "
                         "records")
            check_pb_shape(conn, per_page)
            base = pb_page_all(port, records, per_page)
            results.append({"rps": records / wall, "wall": wall,
                            "cpu": cpu, "srv_cpu": srv_cpu,
                            "base_rps": records / base})
        conn.close()
        return {k: statistics.median(r[k] for r in results)
                for k in results[0]}
    finally:
        stop_pb(srv)


def pb_realtime_client(port, token, seen, ready):
    """The realtime floor: subscribes to orders/* and stamps each create
    event by the record's n. Runs until its connection is closed."""
    stream = http.client.HTTPConnection("127.0.0.1", port, timeout=None)
    stream.request("GET", "/api/realtime",
                   headers={"Accept": "text/event-stream"})
    r = stream.getresponse()
    frame = {}
    client_id = None
    try:
        while True:
            line = r.readline()
            if not line:
                return
            now = time.monotonic_ns()
            line = line.rstrip(b"\r\n")
            if line:
                name, _, value = line.partition(b":")
                frame[name] = frame.get(name, b"") + value
                if name == b"event" and value == b"orders/*":
                    frame["t"] = now
                continue
            if frame.get(b"event") == b"PB_CONNECT":
                client_id = json.loads(frame[b"data"])["clientId"]
                conn = http.client.HTTPConnection("127.0.0.1", port,
                                                  timeout=10)
                pb_call(conn, "POST", "/api/realtime",
                        {"clientId": client_id,
                         "subscriptions": ["orders/*"]},
                        token=token, want=204)
                conn.close()
                ready.set()
            elif frame.get(b"event") == b"orders/*":
                doc = json.loads(frame[b"data"])
                if doc["action"] == "create":
                    seen[doc["record"]["n"]] = frame["t"]
            frame = {}
    except (OSError, ValueError):
        return  # closed under it at the end
    finally:
        stream.close()


def pocketbase_wakeup(work, creates, settle, pace=0.3):
    """create -> stdout latency of tether with the realtime wake-up, against
    a realtime client timing the create events of the same creates."""
    import threading
    srv, port = start_pb(work)
    tp = None
    base = None
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        pb_call(conn, "POST", "/_pb/collections",
                {"name": "orders", "listRule": None, "fields": ["n"]})
        token = pb_login(conn)
        clean_pb(work)
        ini = os.path.join(work, "pbw.ini")
        log = os.path.join(work, "tether.log")
        pb_ini(ini, work, port, "pbw", "stdout", settle, "true")
        with open(log, "w") as err:
            tp = subprocess.Popen([TETHER, "run", "-c", ini], cwd=work,
                                  stdout=subprocess.PIPE, stderr=err)
        ours, theirs = {}, {}

        def read_tether():
            for line in tp.stdout:
                now = time.monotonic_ns()
                ours[json.loads(line)["data"]["n"]] = now

        reader = threading.Thread(target=read_tether, daemon=True)
        reader.start()
        ready = threading.Event()
        base = threading.Thread(target=pb_realtime_client,
                                args=(port, token, theirs, ready),
                                daemon=True)
        base.start()
        # Both subscribed (tether's stream and the baseline's) before the
        # first create.
        deadline = time.monotonic() + 10
        while True:
            clients = pb_call(conn, "GET", "/_pb/clients")
            if ready.is_set() and sum(
                    1 for c in clients if c["subscriptions"]) >= 2:
                break
            if tp.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"no two realtime subscribers within 10 s "
                         f"({clients}):\n{tether_log(log)}")
            time.sleep(0.05)
        time.sleep(0.5)  # tether's first (empty) poll is over
        sent = {}
        start = time.monotonic()
        for i in range(creates):
            # Paced by the clock: a slow answer never delays the next one.
            delay = start + i * pace - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent[i] = time.monotonic_ns()
            pb_call(conn, "POST", PB_LIST, {"n": i}, token=token)
        deadline = time.monotonic() + 15
        while len(ours) < creates or len(theirs) < creates:
            if time.monotonic() > deadline:
                sys.exit(f"after 15 s tether had {len(ours)} and the "
                         f"realtime client {len(theirs)} of {creates} "
                         f"creates:\n{tether_log(log)}")
            time.sleep(0.01)
        stop_tether(tp, log)
        tp = None
        conn.close()
        lat = [(ours[i] - sent[i]) / 1e6 for i in range(creates)]
        blat = [(theirs[i] - sent[i]) / 1e6 for i in range(creates)]
        return {"n": creates, "p50": percentile(lat, 0.5),
                "p99": percentile(lat, 0.99),
                "base_p50": percentile(blat, 0.5),
                "base_p99": percentile(blat, 0.99)}
    finally:
        if tp is not None:
            tp.kill()
            tp.wait()
        stop_pb(srv)  # also ends the baseline's stream
        if base is not None:
            base.join(timeout=5)


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') >> 30}"
            f" GiB RAM")


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                              cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("| " + " | ".join(str(c).ljust(widths[i])
                                       for i, c in enumerate(r)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true",
                    help="short runs; does not write RESULTS.md")
    ap.add_argument("--case", choices=["generate_file", "sse_file",
                                       "sse_latency", "socket_sink",
                                       "fifo_sink", "exec_sink",
                                       "api_latency", "idle",
                                       "binary", "pocketbase_file",
                                       "pocketbase_wakeup"])
    args = ap.parse_args()
    build()
    events = 500_000 if args.quick else 2_000_000
    runs = 1 if args.quick else 3
    seconds = 5 if args.quick else 30
    rows = [("case", "tether", "baseline", "ratio")]
    work = tempfile.mkdtemp(prefix="tether-bench-")
    try:
        if args.case in (None, "generate_file"):
            for window in (1000, 10000):
                r = generate_file(work, events, window, runs)
                rows.append((
                    f"generate -> file, {events:,} events, max_in_flight "
                    f"{window}",
                    f"{r['eps']:,.0f} events/s ({r['eps_cpu']:,.0f} per CPU-s,"
                    f" {r['rss'] / 1024:.1f} MiB peak RSS)",
                    f"copysync {r['base_eps']:,.0f} lines/s",
                    f"{r['eps'] / r['base_eps']:.2f}"))
        if args.case in (None, "sse_file"):
            n = 200_000 if args.quick else 1_000_000
            r = sse_file(work, n, runs)
            rows.append((
                f"sse -> file, {n:,} events from nginx",
                f"{r['eps']:,.0f} events/s ({r['eps_cpu']:,.0f} per CPU-s, "
                f"{r['mbps']:.0f} MB/s)",
                f"curl {r['curl_mbps']:.0f} MB/s; eventsource "
                f"{r['node_eps']:,.0f} events/s",
                f"{r['mbps'] / r['curl_mbps']:.2f} of curl; "
                f"{r['eps'] / r['node_eps']:.1f}x node"))
        if args.case in (None, "sse_latency"):
            r = sse_latency(work, 10000, 3 if args.quick else 10)
            rows.append((
                f"publish -> sink, 10,000 events/s, {r['n']:,} samples",
                f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms",
                f"curl p50 {r['base_p50']:.2f} ms, p99 {r['base_p99']:.2f} ms",
                f"+{r['p99'] - r['base_p99']:.2f} ms at p99"))
        if args.case in (None, "socket_sink"):
            n = 300_000 if args.quick else 2_000_000
            sock = {w: in_short_dir(socket_sink, n, w, runs)
                    for w in (1000, 10000)}
            best = max(sock, key=lambda w: sock[w]["eps"])
            for window, r in sock.items():
                rows.append((
                    f"socket sink -> subscriber, {n:,} events, max_in_flight "
                    f"{window}, ack every 100"
                    + (" (headline)" if window == best else ""),
                    f"{r['eps']:,.0f} events/s at the subscriber "
                    f"({r['eps_wall']:,.0f} over tether's wall time, "
                    f"{r['eps_cpu']:,.0f} per CPU-s, {r['rss'] / 1024:.1f} "
                    f"MiB peak RSS)",
                    f"pipe into subscriber --stdin {r['base_eps']:,.0f} "
                    f"events/s",
                    f"{r['eps'] / r['base_eps']:.2f}"))
        if args.case in (None, "fifo_sink"):
            n = 300_000 if args.quick else 2_000_000
            for window in (1000, 10000):
                r = in_short_dir(fifo_sink, n, window, runs)
                rows.append((
                    f"fifo sink -> subscriber --stdin, {n:,} events, "
                    f"max_in_flight {window}",
                    f"{r['eps']:,.0f} events/s over tether's wall time "
                    f"({r['eps_reader']:,.0f} at the reader, "
                    f"{r['eps_cpu']:,.0f} per CPU-s, {r['rss'] / 1024:.1f} "
                    f"MiB peak RSS)",
                    f"pipe into subscriber --stdin {r['base_eps']:,.0f} "
                    f"events/s",
                    f"{r['eps'] / r['base_eps']:.2f}"))
        if args.case in (None, "exec_sink"):
            n = 300_000 if args.quick else 2_000_000
            r = in_short_dir(exec_sink, n, 10000, runs)
            rows.append((
                f"exec sink -> acker, {n:,} events, max_in_flight 10000",
                f"{r['eps']:,.0f} events/s ({r['eps_cpu']:,.0f} per CPU-s, "
                f"{r['rss'] / 1024:.1f} MiB peak RSS)",
                f"pipe into acker {r['base_eps']:,.0f} events/s",
                f"{r['eps'] / r['base_eps']:.2f}"))
        if args.case in (None, "api_latency"):
            r = in_short_dir(api_latency, 100, 2000)
            rows.append((
                "GET /v1/consumers, 100 consumers, 2,000 requests, "
                "keep-alive",
                f"p50 {r['p50']:.3f} ms, p99 {r['p99']:.3f} ms "
                f"({r['size']:,} bytes)",
                f"/v1/health p50 {r['base_p50']:.3f} ms, p99 "
                f"{r['base_p99']:.3f} ms ({r['base_size']} bytes)",
                f"{r['p50'] / r['base_p50']:.0f}x at p50, "
                f"{r['p99'] / r['base_p99']:.0f}x at p99"))
        if args.case in (None, "pocketbase_file"):
            n = 5_000 if args.quick else 20_000
            r = pocketbase_file(work, n, runs)
            rows.append((
                f"pocketbase -> file, {n:,} records, pages of 500, settle 0, "
                "realtime off",
                f"{r['rps']:,.0f} records/s ({r['cpu']:.2f} CPU-s; the "
                f"server meanwhile {r['srv_cpu']:.2f} CPU-s of "
                f"{r['wall']:.2f} s)",
                f"http.client, the same requests {r['base_rps']:,.0f} "
                "records/s",
                f"{r['rps'] / r['base_rps']:.2f}"))
        if args.case in (None, "pocketbase_wakeup"):
            n = 20 if args.quick else 50
            for settle in ("0", "500ms"):
                r = pocketbase_wakeup(work, n, settle)
                rows.append((
                    f"pocketbase create -> stdout, realtime on, poll_interval "
                    f"10s, settle {settle}, {n} creates 300 ms apart",
                    f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms",
                    f"realtime client p50 {r['base_p50']:.2f} ms, p99 "
                    f"{r['base_p99']:.2f} ms",
                    f"{r['p99'] - r['base_p99']:+.2f} ms at p99"))
        if args.case in (None, "idle"):
            rss1, pss1, t1 = idle(work, 1, 1, 0, seconds)
            rss100, pss100, t100 = idle(work, 100, 1, 0, seconds)
            rss_done, pss_done, t_done = idle(work, 1, 1, 1, seconds)
            rows.append((f"idle, 1 consumer at 1/s, {seconds} s",
                         f"{rss1 / 1024:.2f} MiB RSS ({pss1 / 1024:.2f} MiB "
                         f"PSS), {t1} CPU ticks", "", ""))
            rows.append((f"idle, 100 consumers at 1/s, {seconds} s",
                         f"{rss100 / 1024:.2f} MiB RSS ({pss100 / 1024:.2f} "
                         f"MiB PSS), {t100} CPU ticks", "", ""))
            rows.append(("per extra consumer",
                         f"{(rss100 - rss1) / 99:.1f} KiB RSS", "", ""))
            rows.append((f"idle, source done, {seconds} s",
                         f"{rss_done / 1024:.2f} MiB RSS ({pss_done / 1024:.2f}"
                         f" MiB PSS), {t_done} CPU ticks", "", ""))
        if args.case in (None, "binary"):
            stripped = os.path.join(work, "tether.stripped")
            subprocess.run(["strip", "-o", stripped, TETHER], check=True)
            rows.append(("stripped binary",
                         f"{os.path.getsize(stripped) / 1024:.0f} KiB", "", ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    text = table(rows)
    print(text)
    if args.quick or args.case:
        return
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), "w") as f:
        f.write(f"""# Benchmark results

Produced by `python3 bench/bench.py` on {datetime.date.today()} at commit
{commit()}, release build. Machine: {machine()}. Each throughput figure is
the median of {runs} runs; its baseline ran in the same invocation on the
same files (copysync: the same NDJSON bytes in 1 MiB writes with one
fdatasync per second). CPU ticks are 1/{TICK} s.

{text}

How to read it:

- copysync's rate depends on the page cache's writeback state when it runs
  and moves by 2-3x between runs on this machine, so the generate ratio
  inherits that noise; tether's own rate is steadier.
- curl only reads and discards; tether parses every event, encodes an
  envelope and appends it to a file that is fdatasync'd before each commit.
  "of curl" compares those two byte rates as the issue asks.
- The latency case publishes through a better-sse server (tests/peers):
  nginx + nchan 1.3.6 delivered at most about 2,000 messages per second to
  one subscriber here, below the 10,000 the case needs. Both tether and curl
  read the same stream at once; the difference is tether's added latency.
- RSS counts shared library pages (libc, libsqlite3) in full; PSS counts
  them by share.
- socket_sink's events/s is the subscriber's (first byte of the stream to
  the answer of the last acknowledgement); tether's wall time, start-up
  and the last commit included, is beside it. Its baseline and exec_sink's
  only split lines and parse each seq out of a pipe: they are the
  application's own ceiling, not a second implementation of the protocol.
- exec_sink's CPU figure includes the acker's CPU: tether reaps it, so
  wait4 counts it in tether's.
- api_latency's client is Python's http.client; /v1/health shows that
  floor (client and server together).
- The pocketbase cases run against the reference server in
  tests/servers/pocketbase_server.py (Python, one thread), which filters
  and sorts the whole collection for every page: pocketbase_file is bound
  by the server's CPU (shown beside tether's), so its ratio says how much
  tether adds to the server's cost, not what tether could read.
- pocketbase_wakeup has 50 samples per row: its p99 is the slowest one.
""")


if __name__ == "__main__":
    main()
