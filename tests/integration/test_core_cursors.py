"""Issue 10, the consumer core, points 5 and 6: a cursor's key does not
change with a tuning option, a cursor never silently follows another
stream, an earlier version's cursor is adopted, orphans are listed and
removed, and a reset names where it goes on and never sends seq backward,
a crash included (the seq lease in the state file)."""
import json
import os
import re
import shutil
import sqlite3

import pytest

from apiclient import cli, consumer, ready, remove_dir, request, short_dir
from conftest import SRC, committed_seq, count_lines, read_lines, wait_for
from peers import http
from test_disk import limit_fsize

# ---- helpers ----------------------------------------------------------------


@pytest.fixture
def sockdir():
    d = short_dir()
    yield d
    remove_dir(d)


@pytest.fixture
def poll_server(ref_server):
    return lambda *args: ref_server("poll_server.py", *args)


CHANGES = "/db/_changes?since={cursor}&limit=%d"


def poll_config(out, base, path, sock, extra=""):
    """An http-poll consumer c reading a CouchDB-style changes feed."""
    return f"""
[daemon]
state = state.db
checkpoint_interval = 50ms
status_interval = 0
socket = {sock}

[upstream ref]
type = http-poll
url = {base}
reconnect_min = 20ms
reconnect_max = 300ms
immediate_retries = 0

[consumer c]
upstream = ref
sink = file:{out}
poll_interval = 100ms
path = {path}
cursor_initial = 0
items = /results
page_cursor = /last_seq
{extra}
"""


def records(out):
    return read_lines(out, running=True)[0]


def ids(out):
    return [r["data"]["id"] for r in records(out)]


def docs(first, last):
    return [f"doc-{i}" for i in range(first, last + 1)]


def requests(base, path="/db/_changes"):
    status, _, body = http("GET", f"{base}/_requests?path={path}")
    assert status == 200
    return json.loads(body)


def add_doc(base):
    status, _, _ = http("POST", f"{base}/db/doc", b"{}")
    assert status == 201


def run_to(t, out, n, timeout=30):
    """Starts t, waits for n records in out, stops it (SIGTERM: exit 0)."""
    t.start()
    wait_for(lambda: len(ids(out)) >= n, timeout, f"{n} records", t)
    assert t.stop() == 0


def rows(db, sql, args=()):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


def sock_of(sockdir):
    return os.path.join(sockdir, "api.sock")


# ---- 5: a stable cursor identity ---------------------------------------------


def test_tuned_path_keeps_its_cursor(tether, tmp_path, poll_server, sockdir):
    """The issue's case: limit=100 becomes limit=50. It used to start the
    consumer over and deliver the 408 events again with seq from 1; now
    the cursor is kept, nothing comes twice and seq goes on."""
    base = poll_server("--docs", "408")
    out = tmp_path / "out.ndjson"
    sock = sock_of(sockdir)
    t = tether(poll_config(out, base, CHANGES % 100, sock))
    run_to(t, out, 408)
    assert ids(out) == docs(1, 408)

    t.write_config(poll_config(out, base, CHANGES % 50, sock))
    t.start()
    # The tuned path is asked with the committed cursor...
    wait_for(lambda: any(r["query"].get("limit") == "50" and
                         r["query"].get("since") == "408"
                         for r in requests(base)), 20,
             "a poll with limit=50 after the committed cursor", t)
    # ... and a new change is the only thing that comes, numbered after
    # the last one.
    add_doc(base)
    wait_for(lambda: len(ids(out)) >= 409, 20, "the new change", t)
    assert t.stop() == 0
    recs, torn = read_lines(out)
    assert torn == 0
    assert [r["data"]["id"] for r in recs] == docs(1, 409)
    assert [r["seq"] for r in recs] == list(range(1, 410))
    # Since the first tuned poll, nothing was asked from the start again.
    tuned = [r for r in requests(base) if r["query"].get("limit") == "50"]
    assert tuned and all(r["query"]["since"] != "0" for r in tuned)

    # One cursor row, under the source type's name, and the stored
    # identity names the stream without its tuning parameters.
    cur = rows(t.state, "SELECT * FROM cursors")
    assert [(r["consumer_id"], r["stream_name"], r["subject_id"],
             r["last_sequence"], r["position"]) for r in cur] == \
        [("c", "http-poll", "", 409, "409")]
    [st] = rows(t.state, "SELECT * FROM consumer_state")
    assert st["consumer_id"] == "c"
    assert st["identity"].startswith(base + "/db/_changes")
    assert "limit" not in st["identity"]
    assert "since=" in st["identity"]
    assert st["high_seq"] >= 409


@pytest.mark.parametrize("change", ["path", "url"])
def test_another_stream_refuses_to_start(tether, tmp_path, poll_server,
                                         sockdir, change):
    """Another resource (path) or another upstream (url) is another stream:
    the consumer does not start on a cursor that is a position in the old
    one. Exit 2, and the log says what changed and both ways out."""
    base = poll_server("--docs", "10")
    out = tmp_path / "out.ndjson"
    sock = sock_of(sockdir)
    t = tether(poll_config(out, base, CHANGES % 4, sock))
    run_to(t, out, 10)
    before = rows(t.state, "SELECT * FROM cursors")

    if change == "path":
        other_base = base
        t.write_config(poll_config(out, base, "/v1/events?after={cursor}",
                                   sock).replace("page_cursor = /last_seq",
                                                 "item_cursor = /id"))
        new_identity = base + "/v1/events?after="
    else:
        other_base = poll_server("--docs", "20")
        t.write_config(poll_config(out, other_base, CHANGES % 4, sock))
        new_identity = other_base + "/db/_changes?since="
    t.start()
    assert t.wait_exit(30) == 2
    log = t.log()
    line = next((l for l in log.splitlines()
                 if "the consumer does not start" in l), None)
    assert line is not None, log
    m_was = re.search(r'was="?(\S+?)"? now=', line)
    m_now = re.search(r'now="?(\S+?)"? ', line)
    assert m_was and m_now, line
    assert m_was.group(1).startswith(base + "/db/_changes?since="), line
    assert m_now.group(1).startswith(new_identity), line
    assert "consumer=c" in line
    assert "on_stream_change = keep" in line
    assert "on_stream_change = restart" in line
    # Nothing was read, delivered or changed.
    assert ids(out) == docs(1, 10)
    assert rows(t.state, "SELECT * FROM cursors") == before
    assert requests(other_base, "/v1/events") == []
    if change == "url":
        assert requests(other_base) == []


def test_stream_change_keep_goes_on_from_the_cursor(tether, tmp_path,
                                                    poll_server, sockdir):
    """on_stream_change = keep: the same stream under another name (here
    a second server holding the same history and more). The cursor goes
    on; the new identity is stored, so the next start needs no option."""
    a = poll_server("--docs", "10")
    b = poll_server("--docs", "15")
    out = tmp_path / "out.ndjson"
    sock = sock_of(sockdir)
    t = tether(poll_config(out, a, CHANGES % 4, sock))
    run_to(t, out, 10)

    t.write_config(poll_config(out, b, CHANGES % 4, sock,
                               "on_stream_change = keep"))
    run_to(t, out, 15)
    assert re.search(r"the cursor was taken from another stream; keeping it "
                     r"\(on_stream_change = keep\) consumer=c", t.log())
    recs = records(out)
    assert [r["data"]["id"] for r in recs] == docs(1, 15)
    assert [r["seq"] for r in recs] == list(range(1, 16))
    # b was first asked after the kept cursor.
    assert requests(b)[0]["query"]["since"] == "10"

    # The identity stored now is b's: without the option it starts.
    t.write_config(poll_config(out, b, CHANGES % 4, sock))
    t.start()
    add_doc(b)
    wait_for(lambda: len(ids(out)) >= 16, 20, "the next change", t)
    assert t.stop() == 0
    recs = records(out)
    assert [r["data"]["id"] for r in recs] == docs(1, 16)
    assert [r["seq"] for r in recs] == list(range(1, 17))
    [st] = rows(t.state, "SELECT * FROM consumer_state")
    assert st["identity"].startswith(b + "/db/_changes")


def test_stream_change_restart_reads_from_the_start_with_higher_seqs(
        tether, tmp_path, poll_server, sockdir):
    """on_stream_change = restart: the new stream is read from its start,
    and its events get seqs above every seq used before (an application
    dropping duplicates by seq must not drop them); the reset is recorded
    in cursor_resets with its reason."""
    a = poll_server("--docs", "10")
    b = poll_server("--docs", "15")
    out = tmp_path / "out.ndjson"
    sock = sock_of(sockdir)
    t = tether(poll_config(out, a, CHANGES % 4, sock))
    run_to(t, out, 10)
    high_before = rows(t.state, "SELECT high_seq FROM consumer_state "
                       "WHERE consumer_id = 'c'")[0]["high_seq"]
    assert high_before >= 10

    t.write_config(poll_config(out, b, CHANGES % 4, sock,
                               "on_stream_change = restart"))
    run_to(t, out, 25)
    m = re.search(r"the cursor was taken from another stream; starting over "
                  r"\(on_stream_change = restart\) consumer=c .*"
                  r"seq_from=(\d+)", t.log())
    assert m, t.log()
    seq_from = int(m.group(1))
    recs = records(out)
    assert [r["data"]["id"] for r in recs] == docs(1, 10) + docs(1, 15)
    old, new = recs[:10], recs[10:]
    assert [r["seq"] for r in old] == list(range(1, 11))
    # Above every seq ever handed out (the lease included), in order.
    assert seq_from == high_before + 1
    assert [r["seq"] for r in new] == list(range(seq_from, seq_from + 15))
    assert min(r["seq"] for r in new) > max(r["seq"] for r in old)
    assert requests(b)[0]["query"]["since"] == "0"

    [reset] = rows(t.state, "SELECT * FROM cursor_resets")
    assert (reset["consumer_id"], reset["stream_name"],
            reset["subject_id"]) == ("c", "http-poll", "")
    assert reset["old_sequence"] == 10 and reset["old_position"] == "10"
    assert reset["new_sequence"] == high_before
    assert reset["new_position"] == ""
    assert "on_stream_change = restart" in reset["reason"]
    assert a + "/db/_changes" in reset["reason"]
    assert b + "/db/_changes" in reset["reason"]
    cur = t.cursor("c", "http-poll")
    assert cur["last_sequence"] == seq_from + 14 and cur["position"] == "15"


def test_cursor_of_the_previous_release_is_adopted(tether, tmp_path,
                                                   poll_server, sockdir):
    """A state file of the previous release (schema 2) keeps an http-poll
    cursor under its path. The new tether moves it to the key it keeps
    now and resumes after it: an upgrade delivers nothing again."""
    base = poll_server("--docs", "10")
    out = tmp_path / "out.ndjson"
    sock = sock_of(sockdir)
    path = CHANGES % 4
    t = tether(poll_config(out, base, path, sock))
    shutil.copy(os.path.join(SRC, "tests", "unit", "data", "state-v2.db"),
                t.state)
    con = sqlite3.connect(t.state)
    with con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 2
        con.execute(
            "INSERT INTO cursors (consumer_id, stream_name, subject_id, "
            "last_sequence, last_delivery_id, last_delivered_at, last_error, "
            "updated_at, position) VALUES ('c', ?, '', 4, 'c:4', "
            "'2026-12-06T06:10:15.000000000Z', '', "
            "'2026-12-06T06:10:15.000000000Z', '4')", (path,))
    con.close()

    t.start()
    wait_for(lambda: len(ids(out)) >= 6, 20, "the changes after 4", t)
    assert t.stop() == 0
    assert re.search(r"cursor moved to the key this version keeps it under "
                     r"consumer=c from=\"?/db/_changes\?since=\{cursor\}"
                     r"&limit=4\"? to=http-poll", t.log()), t.log()
    recs, torn = read_lines(out)
    assert torn == 0
    assert [r["data"]["id"] for r in recs] == docs(5, 10)
    assert [r["seq"] for r in recs] == list(range(5, 11))
    assert requests(base)[0]["query"]["since"] == "4"
    mine = rows(t.state, "SELECT stream_name, last_sequence, position "
                "FROM cursors WHERE consumer_id = 'c'")
    assert mine == [{"stream_name": "http-poll", "last_sequence": 10,
                     "position": "10"}]
    # The other consumers of the old file are untouched (and orphans now).
    assert committed_seq(t.state, "gen") == 40


def test_orphans_are_listed_and_removed(tether, tmp_path, sockdir):
    """A cursor no configured consumer reads is an orphan: listed as such
    by the API and the CLI, and removable; a configured consumer's own
    cursor is not (409 cursor_in_use)."""
    sock = sock_of(sockdir)

    def gen_config(names):
        text = f"""
[daemon]
state = state.db
checkpoint_interval = 20ms
status_interval = 0
socket = {sock}
"""
        for n in names:
            text += f"""
[consumer {n}]
source = generate
rate = 0
count = 5
sink = file:{n}.ndjson
"""
        return text

    t = tether(gen_config(["kept", "gone"]))
    t.start()
    wait_for(lambda: committed_seq(t.state, "kept") == 5 and
             committed_seq(t.state, "gone") == 5, 20, "both consumers", t)
    assert t.stop() == 0

    t.write_config(gen_config(["kept"]))
    t.start()
    wait_for(lambda: ready(sock), 20, "the API", t)
    status, _, body = request(sock, "GET", "/v1/cursors")
    assert status == 200, body
    by = {c["consumer_id"]: c for c in body["cursors"]}
    assert set(by) == {"kept", "gone"}
    assert by["gone"].get("orphan") is True
    assert "orphan" not in by["kept"]

    p = cli("cursors", "list", sock=sock)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    header = lines[0].split()
    assert "ORPHAN" in header
    col = header.index("ORPHAN")
    table = {l.split()[0]: l.split() for l in lines[1:]}
    assert table["gone"][col] == "orphan"
    assert table["kept"][col] == "-"
    p = cli("cursors", "list", "--json", sock=sock)
    assert {c["consumer_id"]: c.get("orphan", False)
            for c in json.loads(p.stdout)["cursors"]} == \
        {"kept": False, "gone": True}

    # A configured consumer's own cursor is reset, never removed.
    status, _, body = request(sock, "DELETE", "/v1/cursors/kept/generate")
    assert status == 409 and body["error"]["code"] == "cursor_in_use", body
    p = cli("cursors", "remove", "kept", "generate", sock=sock)
    assert p.returncode == 1, p.stderr
    assert "reads this cursor" in p.stderr and "HTTP 409" in p.stderr, \
        p.stderr
    assert committed_seq(t.state, "kept") == 5

    p = cli("cursors", "remove", "gone", "generate", sock=sock)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1].split()[0] == "gone"
    t.wait_log(r"orphan cursor removed consumer=gone stream=generate")
    status, _, body = request(sock, "GET", "/v1/cursors")
    assert [c["consumer_id"] for c in body["cursors"]] == ["kept"]
    # Its consumer's other state went with its last cursor.
    assert [r["consumer_id"] for r in
            rows(t.state, "SELECT consumer_id FROM consumer_state")] == \
        ["kept"]
    # Gone now: a second removal is a 404.
    status, _, body = request(sock, "DELETE", "/v1/cursors/gone/generate")
    assert status == 404, body
    assert t.stop() == 0


# ---- 6: resets that keep seq honest -------------------------------------------


def gen_file_config(sock, out, count, rate=0, interval="20ms", extra=""):
    return f"""
[daemon]
state = state.db
checkpoint_interval = {interval}
status_interval = 0
socket = {sock}

[consumer gen]
source = generate
rate = {rate}
count = {count}
sink = file:{out}
{extra}
"""


def pause_drained(t, sock, name="gen"):
    p = cli("consumers", "pause", name, sock=sock)
    assert p.returncode == 0, p.stderr
    wait_for(lambda: consumer(sock, name)["in_flight"] == 0, 20,
             "nothing in flight", t)


def resets(db):
    return rows(db, "SELECT * FROM cursor_resets ORDER BY id")


def test_reset_needs_a_position(tether, tmp_path, sockdir):
    """A reset that does not say where the consumer goes on is refused:
    it used to replay the whole upstream under seqs already used."""
    sock = sock_of(sockdir)
    out = tmp_path / "out.ndjson"
    t = tether(gen_file_config(sock, out, 50))
    t.start()
    wait_for(lambda: committed_seq(t.state, "gen") == 50, 20, "50 events", t)
    pause_drained(t, sock)

    p = cli("cursors", "reset", "gen", "generate", "--reason", "replay",
            sock=sock)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "--position P or --from-start" in p.stderr
    p = cli("cursors", "reset", "gen", "generate", "--seq", "10",
            "--reason", "replay", sock=sock)
    assert p.returncode == 2, (p.stdout, p.stderr)
    p = cli("cursors", "reset", "gen", "generate", "--position", "10",
            "--from-start", "--reason", "replay", sock=sock)
    assert p.returncode == 2, (p.stdout, p.stderr)

    key = {"consumer_id": "gen", "stream_name": "generate", "subject_id": ""}
    for body in ({"key": key, "reason": "replay"},
                 {"key": key, "reason": "replay", "last_sequence": 10},
                 {"key": key, "reason": "replay", "position": "10",
                  "from_start": True},
                 {"key": key, "reason": "replay", "from_start": False}):
        status, _, resp = request(sock, "POST", "/v1/cursors/reset", body)
        assert status == 400, (body, resp)
        assert resp["error"]["code"] == "position_required", (body, resp)
    # Nothing changed.
    assert resets(t.state) == []
    assert t.cursor("gen")["last_sequence"] == 50
    assert t.cursor("gen")["position"] == "50"
    assert t.stop() == 0


@pytest.mark.parametrize("where", ["position", "from_start"])
def test_reset_goes_on_with_seqs_above_every_seq_used(tether, tmp_path,
                                                      sockdir, where):
    """--position 100 (a generate consumer's position is its counter) or
    --from-start: once resumed the source goes on from there, and every
    new event's seq is above every seq the consumer used before."""
    sock = sock_of(sockdir)
    out = tmp_path / "out.ndjson"
    t = tether(gen_file_config(sock, out, 300))
    t.start()
    wait_for(lambda: committed_seq(t.state, "gen") == 300, 30,
             "300 events", t)
    pause_drained(t, sock)
    before = records(out)
    assert [r["seq"] for r in before] == list(range(1, 301))

    how = ["--position", "100"] if where == "position" else ["--from-start"]
    p = cli("cursors", "reset", "gen", "generate", *how, "--reason",
            "replay a test", sock=sock)
    assert p.returncode == 0, p.stderr
    row = p.stdout.splitlines()[1].split()
    assert row[:2] == ["gen", "generate"]
    floor = int(row[3])
    assert floor >= 300
    [reset] = resets(t.state)
    assert reset["reason"] == "replay a test"
    assert reset["old_sequence"] == 300 and reset["old_position"] == "300"
    assert reset["new_sequence"] == floor
    assert reset["new_position"] == ("100" if where == "position" else "")

    p = cli("consumers", "resume", "gen", sock=sock)
    assert p.returncode == 0, p.stderr
    first = 101 if where == "position" else 1
    again = 300 - first + 1
    wait_for(lambda: len(records(out)) >= 300 + again, 30,
             "the events after the reset", t)
    assert t.stop() == 0
    recs, torn = read_lines(out)
    assert torn == 0 and len(recs) == 300 + again
    new = recs[300:]
    # The source went on from the reset's position...
    assert [r["cursor"] for r in new] == \
        [str(i) for i in range(first, 301)]
    # ... under seqs never used before, in order, right above the floor.
    assert [r["seq"] for r in new] == \
        list(range(floor + 1, floor + 1 + again))
    assert min(r["seq"] for r in new) > max(r["seq"] for r in before)
    assert t.cursor("gen")["last_sequence"] == floor + again


def test_reset_after_a_crash_stays_above_every_seq_written(tether, tmp_path,
                                                           sockdir):
    """kill -9 leaves lines in the file past the last commit (checkpoint
    1 s): their seqs were handed out, though no commit recorded them. A
    reset after the restart must still start above them all: the seq
    lease in the state file (consumer_state.high_seq) covers them."""
    sock = sock_of(sockdir)
    out = tmp_path / "out.ndjson"
    t = tether(gen_file_config(sock, out, 1_000_000, rate=20000,
                               interval="1s"))
    # Kill while the file holds thousands of lines the last commit does
    # not cover (more than one extension of the lease a restart would
    # make without it). A commit may land between the look and the kill:
    # then the next run tries again.
    for attempt in range(10):
        t.start(preexec_fn=limit_fsize(256 * 1024 * 1024))
        wait_for(lambda: committed_seq(t.state, "gen") > 0 and
                 count_lines(out) > committed_seq(t.state, "gen") + 3000, 60,
                 "lines past the last commit", t)
        t.kill9()
        committed = committed_seq(t.state, "gen")
        written = records(out)
        high = max(r["seq"] for r in written)
        if high > committed + 3000:
            break
    else:
        pytest.fail(f"no kill left 3000 lines past the commit: {high} "
                    f"written, {committed} committed")
    lease = rows(t.state, "SELECT high_seq FROM consumer_state WHERE "
                 "consumer_id = 'gen'")[0]["high_seq"]
    assert lease >= high

    # The restart comes up paused (the flag an operator's pause leaves),
    # so nothing is read again before the reset.
    con = sqlite3.connect(t.state)
    with con:
        con.execute("INSERT OR REPLACE INTO consumer_flags (consumer_id, "
                    "paused, updated_at) VALUES ('gen', 1, "
                    "'2026-12-06T06:10:15.000000000Z')")
    con.close()
    t.start()
    wait_for(lambda: ready(sock), 20, "the API", t)
    assert consumer(sock, "gen")["paused"] is True
    pause_drained(t, sock)
    p = cli("cursors", "reset", "gen", "generate", "--position", "10",
            "--reason", "after a crash", sock=sock)
    assert p.returncode == 0, p.stderr
    at_reset = len(records(out))
    assert cli("consumers", "resume", "gen", sock=sock).returncode == 0
    wait_for(lambda: len(records(out)) >= at_reset + 500, 30,
             "events after the reset", t)
    assert t.stop() == 0
    recs, torn = read_lines(out)
    new = recs[at_reset:]
    # The torn last line of the kill (if any) is the only bad one.
    assert torn <= 1
    assert [r["cursor"] for r in new[:500]] == \
        [str(i) for i in range(11, 511)]
    assert min(r["seq"] for r in new) > high
    seqs = [r["seq"] for r in new]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
