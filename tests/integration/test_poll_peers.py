"""The http-poll source against real servers: pouchdb-server's _changes
feed (normal and longpoll, page cursor last_seq) and json-server (an
inclusive _gte cursor whose boundary items are dropped by id)."""
import json
import os

from conftest import read_lines, wait_for
from peers import NODE_BIN, Peer, free_port, http


def poll_config(out, base, consumer_keys, interval="100ms"):
    return f"""
[daemon]
state = state.db
checkpoint_interval = {interval}
status_interval = 0

[upstream api]
type = http-poll
url = {base}
reconnect_min = 50ms
reconnect_max = 500ms

[consumer poll]
upstream = api
sink = file:{out}
{consumer_keys}
"""


def start_pouchdb(tmp_path):
    d = tmp_path / "pouchdb"
    d.mkdir()
    port = free_port()
    p = Peer([os.path.join(NODE_BIN, "pouchdb-server"), "--host", "127.0.0.1",
              "--port", str(port), "--dir", str(d / "data"), "--config",
              str(d / "config.json"), "--no-color"], str(d), "pouchdb")
    p.wait_port(port, timeout=60)
    p.base = f"http://127.0.0.1:{port}"
    status, _, body = http("PUT", f"{p.base}/db")
    assert status in (201, 412), body
    return p


def put_docs(base, start, n):
    for i in range(start, start + n):
        status, _, body = http("PUT", f"{base}/db/doc{i:04d}",
                               json.dumps({"n": i}).encode(),
                               {"Content-Type": "application/json"})
        assert status == 201, body


def ids(path):
    return [r["data"]["id"] for r in read_lines(path, running=True)[0]]


def test_pouchdb_changes_normal_feed(tether, tmp_path):
    db = start_pouchdb(tmp_path)
    try:
        put_docs(db.base, 0, 12)
        out = tmp_path / "out.ndjson"
        t = tether(poll_config(out, db.base, """
path = /db/_changes?since={cursor}&limit=5
cursor_initial = 0
items = /results
page_cursor = /last_seq
item_id = /id
event = change
poll_interval = 100ms
"""))
        t.start()
        wait_for(lambda: len(ids(out)) >= 12, 20, "12 changes", t)
        put_docs(db.base, 12, 3)
        wait_for(lambda: len(ids(out)) >= 15, 20, "3 more changes", t)
        assert t.stop() == 0
        records, torn = read_lines(out)
        assert torn == 0
        assert [r["data"]["id"] for r in records] == \
            [f"doc{i:04d}" for i in range(15)]
        assert records[0]["event"] == "change"
        # The committed position is the page's last_seq.
        assert t.cursor("poll", "http-poll")[
            "position"] == str(records[-1]["data"]["seq"])
        # A restart resumes after it: nothing is delivered again.
        t.start()
        put_docs(db.base, 15, 1)
        wait_for(lambda: len(ids(out)) >= 16, 20, "the change after restart", t)
        assert t.stop() == 0
        assert ids(out) == [f"doc{i:04d}" for i in range(16)]
    finally:
        db.stop()


def test_pouchdb_changes_longpoll(tether, tmp_path):
    db = start_pouchdb(tmp_path)
    try:
        put_docs(db.base, 0, 3)
        out = tmp_path / "out.ndjson"
        t = tether(poll_config(out, db.base, """
path = /db/_changes?feed=longpoll&since={cursor}&limit=10&heartbeat=500
cursor_initial = 0
items = /results
page_cursor = /last_seq
mode = longpoll
request_timeout = 20s
"""))
        t.start()
        wait_for(lambda: len(ids(out)) >= 3, 20, "the first changes", t)
        # Each change wakes the held request at once.
        for i in range(3, 8):
            put_docs(db.base, i, 1)
            wait_for(lambda: len(ids(out)) >= i + 1, 20, f"change {i}", t)
        assert t.stop() == 0
        assert ids(out) == [f"doc{i:04d}" for i in range(8)]
    finally:
        db.stop()


def start_json_server(tmp_path, rows):
    d = tmp_path / "json-server"
    d.mkdir()
    with open(d / "db.json", "w") as f:
        json.dump({"events": rows}, f)
    port = free_port()
    p = Peer([os.path.join(NODE_BIN, "json-server"), "--host", "127.0.0.1",
              "--port", str(port), "--quiet", "db.json"], str(d),
             "json-server")
    p.wait_port(port, timeout=60)
    p.base = f"http://127.0.0.1:{port}"
    return p


JSON_SERVER_PATH = \
    "/events?seq_gte={cursor}&_sort=seq,id&_order=asc,asc&_limit=3"
JSON_SERVER_KEYS = f"""
path = {JSON_SERVER_PATH}
cursor_initial = 0
items =
item_cursor = /seq
item_id = /id
cursor_bound = inclusive
page_size = 3
poll_interval = 100ms
"""


def test_json_server_inclusive_cursor_drops_boundary_items(tether, tmp_path):
    # Ties smaller than the page (3): seq 2 twice, seq 4 twice across a page
    # end, seq 6 twice and then once more at run time.
    seqs = [1, 2, 2, 3, 4, 4, 5, 6, 6, 7]
    rows = [{"id": i + 1, "seq": s} for i, s in enumerate(seqs)]
    js = start_json_server(tmp_path, rows)
    try:
        out = tmp_path / "out.ndjson"
        t = tether(poll_config(out, js.base, JSON_SERVER_KEYS))
        t.start()
        wait_for(lambda: len(ids(out)) >= len(rows), 20, "every row", t)
        status, _, _ = http("POST", f"{js.base}/events",
                            json.dumps({"seq": 7}).encode(),
                            {"Content-Type": "application/json"})
        assert status == 201
        wait_for(lambda: len(ids(out)) >= len(rows) + 1, 20, "the new row", t)
        assert t.stop() == 0
        got = ids(out)
        assert got == list(range(1, len(rows) + 2))
        # The boundary ids are committed with the cursor.
        pos = json.loads(t.cursor("poll", "http-poll")["position"])
        assert pos["c"] == "7" and set(pos["ids"]) == {"10", "11"}
    finally:
        js.stop()


def test_json_server_tie_group_over_a_page_fails(tether, tmp_path):
    rows = [{"id": i + 1, "seq": 7} for i in range(4)]
    js = start_json_server(tmp_path, rows)
    try:
        out = tmp_path / "out.ndjson"
        t = tether(poll_config(out, js.base, JSON_SERVER_KEYS))
        t.start()
        assert t.wait_exit(30) == 1
        assert "tie_group_exceeds_page: 3 items share the cursor \\\"7\\\", " \
            "a whole page of 3 or more" in t.log()
        assert ids(out) == [1, 2, 3]
    finally:
        js.stop()
