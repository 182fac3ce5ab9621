"""The http-poll source against the reference poll server
(tests/servers/poll_server.py): opaque sequences, ETag/304, 429 and 503
with Retry-After, Link paging, tie groups against the page size, longpoll
with heartbeats and its timeout, and broken bodies that must fail the
consumer with a message naming what is wrong."""
import json
import os

import pytest

from conftest import read_lines, wait_for
from peers import http


@pytest.fixture
def poll_server(ref_server):
    return lambda *args: ref_server("poll_server.py", *args)


def config(out, base, keys, reconnect_max="300ms", poll_interval="100ms"):
    return f"""
[daemon]
state = state.db
checkpoint_interval = 100ms
status_interval = 0

[upstream ref]
type = http-poll
url = {base}
reconnect_min = 20ms
reconnect_max = {reconnect_max}
immediate_retries = 0

[consumer c]
upstream = ref
sink = file:{out}
poll_interval = {poll_interval}
{keys}
"""


CHANGES = """
path = /db/_changes?since={cursor}&limit=4
cursor_initial = 0
items = /results
page_cursor = /last_seq
"""


def ids(path):
    return [r["data"]["id"] for r in read_lines(path, running=True)[0]]


def requests(base, path):
    status, _, body = http("GET", f"{base}/_requests?path={path}")
    assert status == 200
    return json.loads(body)


def run_until(t, out, n, timeout=30):
    t.start()
    wait_for(lambda: len(ids(out)) >= n, timeout, f"{n} items", t)
    assert t.stop() == 0
    records, torn = read_lines(out)
    assert torn == 0
    return [r["data"]["id"] for r in records]


def test_opaque_sequences(tether, tmp_path, poll_server):
    base = poll_server("--docs", "10", "--opaque")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, CHANGES))
    assert run_until(t, out, 10) == [f"doc-{i}" for i in range(1, 11)]
    # The opaque last_seq went back percent-encoded, byte for byte.
    since = [r["query"]["since"] for r in requests(base, "/db/_changes")]
    assert since[0] == "0" and since[1].startswith("4-")
    assert t.cursor("c", "http-poll")[
        "position"].startswith("10-")


def test_etag_and_304(tether, tmp_path, poll_server):
    base = poll_server("--docs", "3")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, CHANGES))
    t.start()
    wait_for(lambda: len(ids(out)) >= 3, 20, "three changes", t)
    # Polls with nothing new send the ETag back and get 304s.
    wait_for(lambda: any(dict(r["headers"]).get("If-None-Match")
                         for r in requests(base, "/db/_changes")), 20,
             "a conditional request", t)
    http("POST", f"{base}/db/doc", b"{}")
    wait_for(lambda: len(ids(out)) >= 4, 20, "the new change", t)
    assert t.stop() == 0
    assert ids(out) == [f"doc-{i}" for i in range(1, 5)]


@pytest.mark.parametrize("status,retry_after", [
    (429, "1"), (503, "date"), (500, None)])
def test_retry_after_and_backoff(tether, tmp_path, poll_server, status,
                                 retry_after):
    base = poll_server("--docs", "4")
    out = tmp_path / "out.ndjson"
    switches = f"status={status}&fail=2" + \
        (f"&retry_after={retry_after}" if retry_after else "")
    keys = CHANGES.replace("limit=4", f"limit=4&{switches}")
    t = tether(config(out, base, keys, reconnect_max="5s"))
    assert run_until(t, out, 4) == [f"doc-{i}" for i in range(1, 5)]
    times = [r["time"] for r in requests(base, "/db/_changes")]
    if retry_after:
        # The hint wins over reconnect_min (20 ms).
        assert times[1] - times[0] >= 0.5 and times[2] - times[1] >= 0.5
    assert t.log().count(f"HTTP {status} from ") == 2


def test_link_paging(tether, tmp_path, poll_server):
    base = poll_server("--rows", "12")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, """
path = /paged?per_page=5&c={cursor}&link=tricky
items =
item_cursor = /seq
follow_next = true
""", poll_interval="1h"))
    # One cycle follows rel="next" through the three pages (the tricky
    # links it must not follow are skipped), then sleeps.
    got = run_until(t, out, 12)
    assert got == list(range(1, 13))
    pages = [r["query"].get("page") for r in requests(base, "/paged")]
    assert pages == [None, "2", "3"]


TIES = """
path = /events?seq_gte={cursor}&_sort=seq,id&_order=asc,asc&_limit=5
cursor_initial = 0
items =
item_cursor = /seq
item_id = /id
cursor_bound = inclusive
page_size = 5
"""


def test_tie_groups_smaller_than_the_page(tether, tmp_path, poll_server):
    base = poll_server("--ties", "1,3,1,4,2")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, TIES))
    assert run_until(t, out, 11) == list(range(1, 12))


# The group's first page is delivered (ids 2..6 share seq 2); the next page
# at that seq brings nothing new and is full: the source cannot get past.
@pytest.mark.parametrize("ties,delivered", [("1,5,1", 6), ("1,8,1", 6)])
def test_tie_group_of_a_page_or_more_fails(tether, tmp_path, poll_server,
                                           ties, delivered):
    base = poll_server("--ties", ties)
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, TIES))
    t.start()
    assert t.wait_exit(20) == 1
    assert "tie_group_exceeds_page: 5 items share the cursor \\\"2\\\", a " \
           "whole page of 5 or more" in t.log()
    assert ids(out) == list(range(1, 1 + delivered))


def test_longpoll_with_heartbeats_and_timeout(tether, tmp_path, poll_server):
    base = poll_server("--docs", "2")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, """
path = /db/_changes?feed=longpoll&since={cursor}&limit=10&timeout=300&heartbeat=100
cursor_initial = 0
items = /results
page_cursor = /last_seq
mode = longpoll
request_timeout = 5s
"""))
    t.start()
    wait_for(lambda: len(ids(out)) >= 2, 20, "the first changes", t)
    for i in range(3, 6):
        http("POST", f"{base}/db/doc", b"{}")
        wait_for(lambda: len(ids(out)) >= i, 20, f"change {i}", t)
    assert t.stop() == 0
    assert ids(out) == [f"doc-{i}" for i in range(1, 6)]
    assert "source failed" not in t.log()


def test_longpoll_request_timeout_means_no_change(tether, tmp_path,
                                                   poll_server):
    base = poll_server("--docs", "1", "--ignore-timeout")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, """
path = /db/_changes?feed=longpoll&since={cursor}
cursor_initial = 0
items = /results
page_cursor = /last_seq
mode = longpoll
request_timeout = 300ms
"""))
    t.start()
    wait_for(lambda: len(requests(base, "/db/_changes")) >= 4, 20,
             "requests renewed after their timeout", t)
    http("POST", f"{base}/db/doc", b"{}")
    wait_for(lambda: len(ids(out)) >= 2, 20, "the change", t)
    assert t.stop() == 0
    assert "source failed" not in t.log()


@pytest.mark.parametrize("path,message", [
    ("/bad/json?kind=truncated&c={cursor}", "invalid JSON from http://"),
    ("/bad/json?kind=html&c={cursor}", "invalid JSON from http://"),
    ("/bad/noitems?c={cursor}", "items /results in the response from http://"),
    ("/bad/notarray?c={cursor}", "items_not_array: items /results"),
    ("/bad/bigint?c={cursor}", "too big integer"),
    ("/bad/real?c={cursor}", "a cursor cannot be a real number (1.5)"),
    ("/bad/nocursor?c={cursor}", "page_cursor /last_seq: "),
])
def test_broken_bodies_fail_clearly(tether, tmp_path, poll_server, path,
                                    message):
    base = poll_server()
    t = tether(config(tmp_path / "out", base, f"""
path = {path}
items = /results
page_cursor = /last_seq
"""))
    t.start()
    assert t.wait_exit(20) == 1
    assert message in t.log()


def test_string_cursor_beyond_64_bits(tether, tmp_path, poll_server):
    base = poll_server()
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, """
path = /bad/bigstring?c={cursor}
items = /results
page_cursor = /last_seq
"""))
    t.start()
    wait_for(lambda: len(ids(out)) >= 1, 20, "an item", t)
    assert t.stop() == 0
    assert t.cursor("c", "http-poll")["position"] == \
        "18446744073709551616"


def test_a_cursor_that_never_advances_waits_poll_interval(tether, tmp_path,
                                                          poll_server):
    """json-server ignores an operator it does not know (seq_gt), so every
    page is the first one again and its cursor never moves: each page then
    waits poll_interval instead of being asked for again at once, the
    warning is logged once, and the stalls are counted."""
    from apiclient import get, remove_dir, short_dir, request
    sockdir = short_dir()
    try:
        sock = os.path.join(sockdir, "api.sock")
        base = poll_server("--rows", "5")
        out = tmp_path / "out.ndjson"
        text = config(out, base, """
path = /events?seq_gt={cursor}&_sort=seq&_limit=5
cursor_initial = 0
items =
item_cursor = /seq
conditional = false
""", poll_interval="400ms").replace(
            "status_interval = 0", f"status_interval = 0\nsocket = {sock}")
        t = tether(text)
        t.start()
        wait_for(lambda: len(requests(base, "/events")) >= 5, 30,
                 "five polls", t)
        status, body = get(sock, "/v1/consumers/c")
        assert status == 200 and body["consumer"]["cursor_stalls"] >= 3
        _, _, metrics = request(sock, "GET", "/metrics")
        assert 'tether_source_cursor_stalls_total{consumer="c"}' in metrics
        assert t.stop() == 0
        times = [r["time"] for r in requests(base, "/events")]
        # The first page moves the cursor from 0 to 5; every page after it
        # stalls, so each next one waits the interval (it flooded at
        # hundreds a second).
        gaps = [b - a for a, b in zip(times[1:], times[2:])]
        assert gaps and min(gaps) >= 0.35, gaps
        assert t.log().count("its next cursor is the one it was asked") == 1
        # At most one page of repeats per interval: 5 rows per request.
        assert len(ids(out)) <= 5 * len(times)
    finally:
        remove_dir(sockdir)


def test_a_page_over_max_page_size_fails_after_three_tries(tether, tmp_path,
                                                           poll_server):
    """One rule for a response over its cap, as for an SSE event: retried,
    and after three times at one cursor the consumer fails, naming the
    option to raise."""
    base = poll_server("--docs", "100")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, """
path = /db/_changes?since={cursor}&limit=100
cursor_initial = 0
items = /results
page_cursor = /last_seq
max_page_size = 2KiB
"""))
    t.start()
    assert t.wait_exit(30) == 1
    log = t.log()
    assert "page_too_large: the page after cursor \\\"0\\\" was over " \
           "max_page_size (2048 bytes) 3 times" in log, log
    assert len(requests(base, "/db/_changes")) == 3


def test_max_page_size_lets_a_page_under_it_through(tether, tmp_path,
                                                    poll_server):
    base = poll_server("--docs", "100")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, base, """
path = /db/_changes?since={cursor}&limit=10
cursor_initial = 0
items = /results
page_cursor = /last_seq
max_page_size = 2KiB
"""))
    assert run_until(t, out, 100) == [f"doc-{i}" for i in range(1, 101)]
