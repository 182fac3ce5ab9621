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
  binary          the stripped size of the release binary

Machines here are noisy: each throughput figure is the median of 3 runs and
is reported as a ratio to its baseline.
"""
import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.path.join(ROOT, "build-release")
TETHER = os.path.join(BUILD, "daemon", "tether")
COPYSYNC = os.path.join(BUILD, "bench", "copysync")
TICK = os.sysconf("SC_CLK_TCK")


def build():
    if not os.path.exists(os.path.join(BUILD, "build.ninja")):
        subprocess.run(["meson", "setup", BUILD, "--buildtype=release"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["meson", "compile", "-C", BUILD, "daemon/tether",
                    "bench/copysync"], check=True, stdout=subprocess.DEVNULL)


def run_timed(argv, cwd, stdout=subprocess.DEVNULL):
    """Runs argv; returns (wall seconds, cpu seconds, peak RSS KiB). The peak
    is sampled from /proc (VmHWM) while it runs: wait4's ru_maxrss would
    count the copy of this Python process the child was forked from."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=cwd, stdout=stdout,
                         stderr=subprocess.PIPE)
    hwm = 0
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid != 0:
            break
        hwm = max(hwm, proc_status_kib(p.pid, "VmHWM"))
        time.sleep(0.01)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode()
    p.stderr.close()
    if p.returncode != 0:
        sys.exit(f"{argv[0]} failed:\n{err}")
    return wall, ru.ru_utime + ru.ru_stime, hwm


def generate_file(work, events, window, runs):
    results = []
    out = os.path.join(work, "out.ndjson")
    for _ in range(runs):
        for f in os.listdir(work):
            os.unlink(os.path.join(work, f))
        with open(os.path.join(work, "bench.ini"), "w") as f:
            f.write(f"""
[daemon]
state = {work}/state.db
checkpoint_interval = 1s
status_interval = 0
exit_when_done = true
log_level = warn

[consumer bench]
source = generate
rate = 0
count = {events}
payload_size = 100
max_in_flight = {window}
sink = file:{out}
""")
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
    finally:
        p.terminate()
        p.wait()
    return rss, ticks


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
    ap.add_argument("--case", choices=["generate_file", "idle", "binary"])
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
        if args.case in (None, "idle"):
            rss1, t1 = idle(work, 1, 1, 0, seconds)
            rss100, t100 = idle(work, 100, 1, 0, seconds)
            rss_done, t_done = idle(work, 1, 1, 1, seconds)
            rows.append((f"idle, 1 consumer at 1/s, {seconds} s",
                         f"{rss1 / 1024:.2f} MiB RSS, {t1} CPU ticks", "", ""))
            rows.append((f"idle, 100 consumers at 1/s, {seconds} s",
                         f"{rss100 / 1024:.2f} MiB RSS, {t100} CPU ticks",
                         "", ""))
            rows.append(("per extra consumer",
                         f"{(rss100 - rss1) / 99:.1f} KiB RSS", "", ""))
            rows.append((f"idle, source done, {seconds} s",
                         f"{rss_done / 1024:.2f} MiB RSS, {t_done} CPU ticks",
                         "", ""))
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
""")


if __name__ == "__main__":
    main()
