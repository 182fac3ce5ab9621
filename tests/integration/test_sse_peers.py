"""The sse source against real servers: nginx + nchan (close-delimited
bodies, Last-Event-ID replay, kill -9 mid-publish) and better-sse (no space
after the colon, keep-alive comments, retry:), cross-checked with the
WHATWG eventsource client reading the same server."""
import json
import os
import subprocess
import threading

import pytest

from conftest import read_lines, committed_seq, wait_for
from peers import PEERS, Nchan, node_peer


def sse_config(out, base, path, resume="header", extra="", upstream_extra="",
               interval="100ms", daemon_extra=""):
    return f"""
[daemon]
state = state.db
checkpoint_interval = {interval}
status_interval = 0
{daemon_extra}

[upstream up]
type = sse
url = {base}
reconnect_min = 50ms
reconnect_max = 500ms
{upstream_extra}

[consumer live]
upstream = up
path = {path}
resume = {resume}
sink = file:{out}
{extra}
"""


def datas(records):
    return [r["data"] for r in records]


@pytest.fixture
def nchan(tmp_path):
    peers = []

    def make(**kw):
        d = tmp_path / f"nginx{len(peers)}"
        d.mkdir()
        n = Nchan(str(d), **kw)
        peers.append(n)
        return n

    yield make
    for p in peers:
        p.stop()


def test_nchan_live_stream(tether, tmp_path, nchan):
    n = nchan(buffer=200, first="oldest")
    out = tmp_path / "out.ndjson"
    t = tether(sse_config(out, n.base, "/sub/demo"))
    for i in range(5):
        n.publish("demo", json.dumps({"i": i}))
    t.start()
    wait_for(lambda: len(read_lines(out, running=True)[0]) >= 5, 20,
             "the buffered messages", t)
    for i in range(5, 50):
        n.publish("demo", json.dumps({"i": i}), event="tick" if i % 2 else None)
    wait_for(lambda: len(read_lines(out, running=True)[0]) >= 50, 20,
             "the live messages", t)
    assert t.stop() == 0
    records, torn = read_lines(out)
    assert torn == 0
    assert datas(records) == [{"i": i} for i in range(50)]
    assert [r["event"] for r in records[5:7]] == ["tick", "message"]
    # The cursor is nchan's own id (unixtime:tag), committed as position.
    last = records[-1]["cursor"]
    assert ":" in last
    row = t.cursor("live", "sse")
    assert row["position"] == last and row["last_sequence"] == 50
    assert records[0]["kind"] == "up"


def test_nchan_kill9_resumes_with_last_event_id(tether, tmp_path, nchan):
    total = 10_000
    n = nchan(buffer=total + 100, first="oldest")
    out = tmp_path / "out.ndjson"
    t = tether(sse_config(out, n.base, "/sub/demo"))
    t.start()
    wait_for(lambda: t.cursor("live", "sse") is not None or
             "tether started" in t.log(), 20, "tether to start", t)

    published = []

    def publish_all():
        for i in range(total):
            n.publish("demo", json.dumps({"i": i}))
            published.append(i)

    pub = threading.Thread(target=publish_all)
    pub.start()
    try:
        # kill -9 once a good part has arrived, while the publisher goes on.
        wait_for(lambda: len(read_lines(out, running=True)[0]) >= 2000, 60,
                 "2000 messages before the kill", t)
        t.kill9()
        cursor = t.cursor("live", "sse")
        assert cursor is not None
        t.start()
    finally:
        pub.join()
    wait_for(lambda: len({json.dumps(r["data"]) for r in
                          read_lines(out, running=True)[0]}) >= total, 120,
             "every message after the restart", t)
    assert t.stop() == 0
    records, torn = read_lines(out)
    assert torn == 0
    got = [r["data"]["i"] for r in records]
    assert set(got) == set(range(total))
    # The restart resumed from the committed id: what came twice is only
    # what arrived after the last commit before the kill. A kill that lands
    # while the file holds exactly the committed events repeats nothing, and
    # then the file is in order from the first line to the last.
    restart = next((i for i in range(1, len(got)) if got[i] <= got[i - 1]),
                   None)
    if restart is None:
        assert got == list(range(total))
    else:
        assert got[restart] <= cursor["last_sequence"] + 1
        assert got[restart:] == list(range(got[restart], total))
    assert f"Last-Event-ID" not in t.log()  # never logged


def test_nchan_close_delimited_body_resumes(tether, tmp_path, nchan):
    # nchan closes each subscriber after 1 s: the body ends at the close of
    # the connection, and tether resumes with Last-Event-ID every time.
    n = nchan(buffer=500, first="oldest",
              extra="    nchan_subscriber_timeout 1s;")
    out = tmp_path / "out.ndjson"
    t = tether(sse_config(out, n.base, "/sub/demo",
                          resume="query:last_event_id",
                          daemon_extra="log_level = debug"))
    t.start()
    for i in range(30):
        n.publish("demo", json.dumps({"i": i}))
    wait_for(lambda: len(read_lines(out, running=True)[0]) >= 30, 20,
             "30 messages", t)
    # Two ends of the body at nchan's timeout, each followed by a resume.
    wait_for(lambda: t.log().count("stream ended; reconnecting") >= 2, 20,
             "two close-delimited bodies to end", t)
    for i in range(30, 40):
        n.publish("demo", json.dumps({"i": i}))
    wait_for(lambda: len(read_lines(out, running=True)[0]) >= 40, 20,
             "10 more messages after reconnects", t)
    assert t.stop() == 0
    records, torn = read_lines(out)
    assert torn == 0
    assert datas(records) == [{"i": i} for i in range(40)]


def test_better_sse_and_eventsource_agree(tether, tmp_path):
    want = 150
    server = node_peer("sse-server.cjs", str(tmp_path), "better-sse",
                       env={"TICK": "5", "MAX": str(want), "KEEPALIVE": "100",
                            "RETRY": "200"})
    try:
        url = f"http://127.0.0.1:{server.port}"
        out = tmp_path / "out.ndjson"
        # ?drop=400: the server cuts the stream now and then; both clients
        # must resume with Last-Event-ID and see every event once.
        t = tether(sse_config(out, url, "/events?drop=400"))
        t.start()
        es = subprocess.run(
            ["node", os.path.join(PEERS, "es-client.mjs"),
             f"{url}/events?drop=400", str(want), "tick"],
            capture_output=True, text=True, timeout=60, cwd=PEERS)
        assert es.returncode == 0, es.stderr
        theirs = [json.loads(line) for line in es.stdout.splitlines()]
        wait_for(lambda: len(read_lines(out, running=True)[0]) >= want, 30,
                 f"{want} events", t)
        assert t.stop() == 0
        ours, torn = read_lines(out)
        assert torn == 0
        assert [(r["event"], r["cursor"], json.dumps(r["data"],
                                                     separators=(",", ":")))
                for r in ours[:want]] == \
            [(e["type"], e["id"], e["data"]) for e in theirs]
        assert "error/reconnect" not in t.log()
    finally:
        server.stop()
