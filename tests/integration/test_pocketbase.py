"""The pocketbase source against the reference PocketBase server
(tests/servers/pocketbase_server.py): ties, late commits, restarts and
kill -9 with no record lost; auth expiry, refresh, revocation and rules;
realtime wake-ups, dropped and reordered events, idle and lifetime closes;
429 storms, 5xx and refused connections; the offset mirror; malformed
answers that must never move the cursor."""
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest

from apiclient import cli, consumer, remove_dir, short_dir
from conftest import BIN, SRC, read_lines, wait_for
from peers import free_port, http

SUPERUSER = ("admin@example.com", "secret-password-1")


class PB:
    """The reference server's base URL and its control paths."""

    def __init__(self, base):
        self.base = base

    def call(self, method, path, body=None, token=None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        data = json.dumps(body).encode() if body is not None else None
        status, _, raw = http(method, self.base + path, data, headers)
        return status, (json.loads(raw) if raw else None)

    def ctl(self, path, body=None):
        status, doc = self.call("POST", path, body if body is not None else {})
        assert status == 200, (path, status, doc)
        return doc

    def collection(self, name, **kw):
        body = {"name": name, "listRule": None, "createRule": None,
                "has_created": True, "fields": ["n", "status", "owner"]}
        body.update(kw)
        return self.ctl("/_pb/collections", body)

    def create(self, coll, records, **kw):
        body = {"collection": coll, "records": records}
        body.update(kw)
        return self.ctl("/_pb/create", body)

    def faults(self, **kw):
        return self.ctl("/_pb/faults", kw)

    def records(self, coll):
        status, doc = self.call("GET", f"/_pb/records?collection={coll}")
        assert status == 200
        return doc

    def requests(self, path=None):
        q = f"?path={path}" if path else ""
        status, _, raw = http("GET", f"{self.base}/_requests{q}")
        assert status == 200
        return json.loads(raw)

    def login(self):
        status, doc = self.call(
            "POST", "/api/collections/_superusers/auth-with-password",
            {"identity": SUPERUSER[0], "password": SUPERUSER[1]})
        assert status == 200, doc
        return doc["token"]


@pytest.fixture
def pb(ref_server):
    def make(*args):
        return PB(ref_server("pocketbase_server.py", *args))
    return make


@pytest.fixture
def sock_dir():
    d = short_dir()
    yield d
    remove_dir(d)


def config(out, base, sock_dir, upstream="", consumer_keys="",
           collection="orders", settle="200ms", poll_interval="500ms",
           auth="superuser", batch_size=100, daemon_extra=""):
    creds = ""
    if auth == "superuser":
        creds = f"identity = {SUPERUSER[0]}\npassword = {SUPERUSER[1]}"
    return f"""
[daemon]
state = state.db
socket = {sock_dir}/t.sock
checkpoint_interval = 100ms
status_interval = 0
{daemon_extra}

[upstream pb]
type = pocketbase
url = {base}
auth = {auth}
{creds}
reconnect_min = 50ms
reconnect_max = 2s
immediate_retries = 0
{upstream}

[consumer orders]
upstream = pb
collection = {collection}
sink = file:{out}
batch_size = {batch_size}
settle = {settle}
poll_interval = {poll_interval}
{consumer_keys}
"""


def got(out):
    return [r for r in read_lines(out, running=True)[0]]


def got_ids(out):
    return [r["data"]["id"] for r in got(out)]


def wait_ids(t, out, want, timeout=60):
    want = set(want)
    wait_for(lambda: want <= set(got_ids(out)), timeout,
             f"{len(want)} records in the sink", t)


def state_of(sock, name="orders"):
    """The consumer's status from the API; {} while the socket is not up."""
    try:
        return consumer(sock, name)
    except OSError:
        return {}


def server_order(s, ids, coll="orders"):
    """ids in the (created, id) order the server sorts by."""
    recs = {r["record"]["id"]: r["record"] for r in s.records(coll)}
    return sorted(ids, key=lambda i: (recs[i]["created"], i))


def failed_with(t, *words):
    """The only consumer failed: tether exits 1 and logs the cause."""
    assert t.wait_exit(30) == 1
    log = t.log()
    for w in words:
        assert w in log, (w, log)


# ---- the hazards of §2.3 ----------------------------------------------------


def test_envelope_and_ties_arrive_once(tether, tmp_path, pb, sock_dir):
    s = pb()
    s.collection("orders")
    # 1,000 records in one millisecond, read in pages of 100: every page
    # boundary falls inside the tie, and the id breaks it.
    made = s.create("orders", [{"n": i} for i in range(1000)], same_ms=True)
    assert len(set(made["created"])) == 1
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir)).start()
    wait_ids(t, out, made["ids"])
    assert t.stop() == 0
    recs, torn = read_lines(out)
    assert torn == 0
    ids = [r["data"]["id"] for r in recs]
    assert sorted(ids) == sorted(made["ids"]) and len(ids) == 1000
    first = recs[0]
    assert first["event"] == "create" and first["kind"] == "orders"
    assert first["cursor"] == f'{first["data"]["created"]}|{first["data"]["id"]}'
    # time is the record's created, in the envelope's own layout.
    assert first["time"].replace("T", " ") == first["data"]["created"]
    # In (created, id) order, and the committed cursor is the last one.
    cursors = [r["cursor"] for r in recs]
    assert cursors == sorted(cursors)
    row = t.cursor("orders", "pocketbase")
    assert row["position"] == cursors[-1] and row["last_sequence"] == 1000
    # Every poll asked for an explicit total order, skipTotal and the
    # compound filter.
    polls = s.requests("/api/collections/orders/records")
    assert polls and all(p["query"].get("sort") == "created,id" and
                         p["query"].get("skipTotal") == "1" for p in polls)
    assert any('id > "' in p["query"].get("filter", "") for p in polls)


def later_than(s, late):
    """Creates visible records until one is stamped a later millisecond
    than the late one; returns their ids."""
    ids = []
    for _ in range(1000):
        r = s.create("orders", [{"n": 2}])
        ids += r["ids"]
        if r["created"][0] > late["created"][0]:
            return ids
    raise AssertionError("the server's clock did not move")


def test_late_commit_inside_settle_arrives(tether, tmp_path, pb, sock_dir):
    s = pb()
    s.collection("orders")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, settle="1500ms",
                      poll_interval="200ms")).start()
    wait_for(lambda: s.requests("/api/collections/orders/records"), 20,
             "the first poll", t)
    # A is stamped first but commits 700 ms later; B is visible at once.
    late = s.create("orders", [{"n": 1}], lag_ms=700)
    early = later_than(s, late)
    wait_ids(t, out, late["ids"] + early, 20)
    assert got_ids(out) == server_order(s, late["ids"] + early)


def test_without_settle_a_late_commit_is_skipped(tether, tmp_path, pb,
                                                 sock_dir):
    # The control for the test above: settle = 0 reads at once, and a
    # record that commits after a newer one is behind the cursor for good.
    # This is the hazard settle exists for (documented with the option).
    s = pb()
    s.collection("orders")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, settle="0",
                      poll_interval="100ms")).start()
    wait_for(lambda: s.requests("/api/collections/orders/records"), 20,
             "the first poll", t)
    late = s.create("orders", [{"n": 1}], lag_ms=1500)
    early = later_than(s, late)
    wait_ids(t, out, early, 20)
    # Wait until the late record is visible and several polls ran after it.
    wait_for(lambda: all(r["visible"] for r in s.records("orders")), 10,
             "the late commit")
    seen = len(s.requests("/api/collections/orders/records"))
    wait_for(lambda: len(s.requests("/api/collections/orders/records")) >=
             seen + 5, 10, "five more polls", t)
    assert late["ids"][0] not in got_ids(out)


def test_created_while_down_arrives_after_restart(tether, tmp_path, pb,
                                                  sock_dir):
    s = pb()
    s.collection("orders")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir)).start()
    a = s.create("orders", [{"n": i} for i in range(10)])
    wait_ids(t, out, a["ids"])
    assert t.stop() == 0
    b = s.create("orders", [{"n": i} for i in range(10, 20)])
    t.start()
    wait_ids(t, out, a["ids"] + b["ids"])
    assert t.stop() == 0
    # Nothing came twice: the cursor resumed exactly.
    assert got_ids(out) == server_order(s, a["ids"]) + server_order(s, b["ids"])


def test_kill9_while_writing_loses_nothing(tether, tmp_path, pb, sock_dir):
    s = pb()
    s.collection("orders")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, settle="100ms",
                      poll_interval="200ms", batch_size=500)).start()
    total, chunk = 20_000, 100
    made = []
    done = threading.Event()

    def writer():
        try:
            for i in range(0, total, chunk):
                r = s.create("orders", [{"n": j} for j in range(i, i + chunk)],
                             same_ms=(i // chunk) % 3 == 0)
                made.extend(r["ids"])
        finally:
            done.set()

    w = threading.Thread(target=writer)
    w.start()
    rng = random.Random(os.getpid())
    try:
        for _ in range(20):
            # A random moment: somewhere in the next 0-150 ms of work.
            base = len(got(out))
            time.sleep(rng.uniform(0, 0.15))  # the random kill moment
            t.kill9()
            row = t.cursor("orders", "pocketbase")
            if row is not None:
                held = {r["cursor"] for r in got(out)}
                # The committed cursor is never ahead of the sink.
                assert row["position"] in held, row
            t.start()
            wait_for(lambda: len(got(out)) > base or done.is_set(), 30,
                     "progress after a restart", t)
    finally:
        w.join()
    wait_ids(t, out, made, 120)
    assert t.stop() == 0
    recs, torn = read_lines(out)
    assert torn == 0
    assert set(r["data"]["id"] for r in recs) == set(made)
    assert len(made) == total


# ---- auth ----------------------------------------------------------------------


def test_token_expiry_is_refreshed_mid_stream(tether, tmp_path, pb, sock_dir):
    s = pb("--token-ttl", "3")
    s.collection("orders")  # listRule null: a guest would get 403
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, poll_interval="200ms")).start()
    ids = []
    deadline = time.monotonic() + 8  # past two token lifetimes
    while time.monotonic() < deadline:
        ids += s.create("orders", [{"n": len(ids)}])["ids"]
        time.sleep(0.2)  # pacing the writer, not waiting for tether
    wait_ids(t, out, ids, 30)
    refreshes = s.requests("/api/collections/_superusers/auth-refresh")
    assert len(refreshes) >= 2
    assert state_of(f"{sock_dir}/t.sock")["state"] == "connected"
    assert "PocketBase token refreshed" in t.log()


def test_revoked_password_is_a_clear_fatal_state(tether, tmp_path, pb,
                                                 sock_dir):
    s = pb("--token-ttl", "2")
    s.collection("orders")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, poll_interval="200ms")).start()
    a = s.create("orders", [{"n": 1}])
    wait_ids(t, out, a["ids"])
    s.ctl("/_pb/password", {"collection": "_superusers",
                            "email": SUPERUSER[0], "password": "rotated-pw-2"})
    failed_with(t, SUPERUSER[0], "check identity and password")


def test_mfa_is_a_clear_config_error(tether, tmp_path, pb, sock_dir):
    s = pb()
    s.collection("orders")
    s.faults(auth_mfa=True)
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir)).start()
    failed_with(t, "second factor (MFA)", "auth = token")
    # A config error is not retried: one login, no storm.
    assert len(s.requests("/api/collections/_superusers/auth-with-password")) == 1


def test_login_5xx_backs_off_then_recovers(tether, tmp_path, pb, sock_dir):
    # Logins that fail with 503 are retried on the login's own backoff:
    # neither the realtime stream nor the poller asks for more logins.
    s = pb()
    s.collection("orders")
    s.faults(auth_status=503, auth_fail=3)
    a = s.create("orders", [{"n": 1}])
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, poll_interval="200ms")).start()
    wait_ids(t, out, a["ids"], 30)
    logins = s.requests("/api/collections/_superusers/auth-with-password")
    assert len(logins) == 4, [r["time"] for r in logins]
    times = [r["time"] for r in logins]
    # After the first retry, each waits longer than reconnect_min (50 ms).
    assert all(b - a >= 0.05 for a, b in zip(times[1:], times[2:])), times
    assert "PocketBase login failed; retrying" in t.log()
    assert t.stop() == 0


def test_user_auth_rules(tether, tmp_path, pb, sock_dir):
    s = pb()
    s.collection("secret")  # listRule null: superusers only
    s.collection("orders", listRule="owner = @request.auth.id")
    uid = s.ctl("/_pb/users", {"collection": "users", "email": "u@example.com",
                               "password": "user-pw-123"})["id"]
    mine = s.create("orders", [{"n": i, "owner": uid} for i in range(5)])
    s.create("orders", [{"n": i, "owner": "someoneelse1234"}
                        for i in range(5)])
    out = tmp_path / "out.ndjson"
    user = ("identity = u@example.com\npassword = user-pw-123\n"
            "auth_collection = users")
    cfg = config(out, s.base, sock_dir, auth="user", upstream=user)
    cfg += f"""
[consumer secret]
upstream = pb
collection = secret
sink = file:{tmp_path / "secret.ndjson"}
"""
    t = tether(cfg).start()
    # A rule that filters: only the user's records, silently.
    wait_ids(t, out, mine["ids"])
    sock = f"{sock_dir}/t.sock"
    # Superusers only: 403 twice (once more after a new login) is fatal.
    wait_for(lambda: state_of(sock, "secret")["state"] == "failed", 20,
             "the superuser-only consumer to fail", t)
    err = state_of(sock, "secret").get("last_error", "")
    assert "403" in err and "auth = superuser" in err, err
    logins = s.requests("/api/collections/users/auth-with-password")
    assert len(logins) >= 2  # the re-login before giving up
    assert sorted(got_ids(out)) == sorted(mine["ids"])
    assert t.stop() == 0


def test_legacy_server_superuser(tether, tmp_path, pb, sock_dir):
    s = pb("--legacy")
    s.collection("orders")
    a = s.create("orders", [{"n": i} for i in range(600)])
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, batch_size=1000)).start()
    wait_ids(t, out, a["ids"])
    assert s.requests("/api/admins/auth-with-password")
    assert "PocketBase <= v0.22" in t.log()
    # perPage is capped at the old maximum.
    polls = s.requests("/api/collections/orders/records")
    assert all(int(p["query"]["perPage"]) <= 500 for p in polls)
    assert t.stop() == 0


# ---- realtime ----------------------------------------------------------------


def subscriptions(s):
    return [c["subscriptions"] for c in s.call("GET", "/_pb/clients")[1]]


def wait_subscribed(s, t, want):
    """Waits until the server's realtime clients hold exactly want (one
    list of topics per client)."""
    wait_for(lambda: subscriptions(s) == want, 20, f"realtime topics {want}",
             t)


def first_arrival(out, rid, timeout, t):
    start = time.monotonic()
    wait_for(lambda: rid in got_ids(out), timeout, f"record {rid}", t)
    return time.monotonic() - start


def test_realtime_wakes_before_poll_interval(tether, tmp_path, pb, sock_dir):
    s = pb()
    s.collection("orders")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, settle="300ms",
                      poll_interval="30s")).start()
    wait_subscribed(s, t, [["orders/*"]])
    for i in range(3):
        rid = s.create("orders", [{"n": i}])["ids"][0]
        assert first_arrival(out, rid, 10, t) < 5  # well before 30 s
    assert t.stop() == 0


def test_topic_follows_the_exact_collection_name(tether, tmp_path, pb,
                                                 sock_dir):
    # REST matches a collection name in any case, realtime topics only
    # exactly: once a record shows the name, the topic follows it.
    s = pb()
    s.collection("orders")
    first = s.create("orders", [{"n": 0}])["ids"]
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, collection="ORDERS",
                      poll_interval="30s")).start()
    wait_ids(t, out, first, 10)
    wait_subscribed(s, t, [["orders/*"]])
    rid = s.create("orders", [{"n": 1}])["ids"][0]
    assert first_arrival(out, rid, 10, t) < 5
    assert t.stop() == 0


def test_a_settling_record_times_the_next_poll(tether, tmp_path, pb,
                                               sock_dir):
    # Realtime off, poll_interval 30 s: the first poll sees a record still
    # settling, holds it back, and comes again when it has settled rather
    # than after poll_interval.
    s = pb()
    s.collection("orders")
    rid = s.create("orders", [{"n": 1}])["ids"]
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, settle="2s", poll_interval="30s",
                      upstream="realtime = false"))
    start = time.monotonic()
    t.start()
    wait_ids(t, out, rid, 10)
    took = time.monotonic() - start
    assert 1 < took < 8, took
    polls = s.requests("/api/collections/orders/records")
    assert len(polls) == 2  # one saw it settling, the next handed it on
    assert all("created <=" not in p["query"]["filter"] for p in polls)
    assert not s.requests("/api/realtime")
    assert t.stop() == 0


def test_settle_zero_wakes_at_once(tether, tmp_path, pb, sock_dir):
    # No bound at all with settle = 0: a realtime event polls at once and
    # the poll sees the record, whatever tether thinks the server's time is.
    s = pb()
    s.collection("orders")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, settle="0",
                      poll_interval="30s")).start()
    wait_subscribed(s, t, [["orders/*"]])
    for i in range(5):
        rid = s.create("orders", [{"n": i}])["ids"][0]
        assert first_arrival(out, rid, 10, t) < 2
    polls = s.requests("/api/collections/orders/records")
    assert all("created <=" not in p["query"].get("filter", "")
               for p in polls)
    assert t.stop() == 0


def test_offset_id_with_increasing_ids(tether, tmp_path, pb, sock_dir):
    s = pb()
    s.collection("orders", has_created=False)
    ids = [f"k{i:014d}" for i in range(250)]
    s.create("orders", [{"n": i} for i in range(250)], ids=ids)
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, collection="orders",
                      poll_interval="300ms",
                      consumer_keys="offset = id")).start()
    wait_ids(t, out, ids)
    recs = got(out)
    assert [r["data"]["id"] for r in recs] == ids
    assert recs[-1]["cursor"] == "|" + ids[-1]
    more = [f"k{i:014d}" for i in range(250, 260)]
    s.create("orders", [{"n": i} for i in range(10)], ids=more)
    wait_ids(t, out, ids + more)
    # Idle: polls come every poll_interval, not in a loop.
    before = len(s.requests("/api/collections/orders/records"))
    time.sleep(1.5)  # an observation window, not a wait for a condition
    after = len(s.requests("/api/collections/orders/records"))
    assert after - before <= 8, after - before
    polls = s.requests("/api/collections/orders/records")
    assert all(p["query"]["sort"] == "id" for p in polls)
    assert t.stop() == 0


def test_one_stream_for_every_consumer_start_now_and_fields(tether, tmp_path,
                                                           pb, sock_dir):
    s = pb()
    s.collection("orders")
    s.collection("refunds")
    old = s.create("orders", [{"n": i, "status": "paid"} for i in range(5)])
    out = tmp_path / "out.ndjson"
    refunds = tmp_path / "refunds.ndjson"
    cfg = config(out, s.base, sock_dir, poll_interval="30s",
                 consumer_keys="start = now\nfields = n")
    cfg += f"""
[consumer refunds]
upstream = pb
collection = refunds
settle = 200ms
poll_interval = 30s
sink = file:{refunds}
"""
    t = tether(cfg).start()
    # One realtime connection carries both consumers' topics.
    wait_for(lambda: [sorted(x) for x in subscriptions(s)] ==
             [["orders/*", "refunds/*"]], 20, "both topics on one stream", t)
    new = s.create("orders", [{"n": 10, "status": "paid"}])["ids"]
    r = s.create("refunds", [{"n": 1}])["ids"]
    wait_ids(t, out, new, 10)
    wait_ids(t, refunds, r, 10)
    recs = got(out)
    # start = now: what existed before the start is not delivered.
    assert not set(old["ids"]) & set(got_ids(out))
    # fields = n: id and created come too (the cursor needs them).
    assert set(recs[0]["data"]) == {"n", "id", "created"}
    assert recs[0]["cursor"] == f'{recs[0]["data"]["created"]}|{new[0]}'
    assert t.stop() == 0


def test_dropped_and_reordered_events_change_nothing(tether, tmp_path, pb,
                                                     sock_dir):
    s = pb()
    s.collection("orders")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, poll_interval="1s")).start()
    s.faults(realtime_reorder=7)
    ids = []
    for i in range(30):
        ids += s.create("orders", [{"n": i}])["ids"]
    s.faults(realtime_drop=True)
    for i in range(30):
        ids += s.create("orders", [{"n": i}])["ids"]
    wait_ids(t, out, ids, 30)
    assert got_ids(out) == server_order(s, ids)  # each once, in order
    assert t.stop() == 0


def test_realtime_stream_leaves_the_pool_to_the_polls(tether, tmp_path, pb,
                                                      sock_dir):
    # With max_connections = 1 the realtime stream must not hold the one
    # pooled connection: the login and the polls go out beside it.
    s = pb()
    s.collection("orders")
    a = s.create("orders", [{"n": i} for i in range(5)])
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, poll_interval="30s",
                      upstream="max_connections = 1")).start()
    wait_ids(t, out, a["ids"], 20)
    wait_subscribed(s, t, [["orders/*"]])
    # A wake-up through the stream still polls at once.
    more = s.create("orders", [{"n": 9}])["ids"]
    assert first_arrival(out, more[0], 10, t) < 5
    assert t.stop() == 0


def test_idle_and_lifetime_closes_reconnect(tether, tmp_path, pb, sock_dir):
    s = pb("--realtime-idle", "1", "--realtime-lifetime", "2")
    s.collection("orders")
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, poll_interval="30s")).start()
    streams = lambda: len(s.requests("/api/realtime"))  # GETs and POSTs
    wait_for(lambda: streams() >= 6, 30, "three streams (closes)", t)
    # After the closes a create still wakes the poller quickly: the new
    # stream is subscribed, and nothing was lost in the gaps.
    ids = s.create("orders", [{"n": 1}])["ids"]
    assert first_arrival(out, ids[0], 10, t) < 5
    # A stream dropped abruptly reconnects too; records created while it
    # was down arrive through the catch-up poll, not at poll_interval.
    s.ctl("/_pb/drop_streams")
    more = s.create("orders", [{"n": 2}])["ids"]
    assert first_arrival(out, more[0], 10, t) < 5
    assert t.stop() == 0


# ---- failures ------------------------------------------------------------------


def list_times(s):
    return [r["time"] for r in s.requests("/api/collections/orders/records")]


def test_429_storm_backs_off(tether, tmp_path, pb, sock_dir):
    s = pb()
    s.collection("orders")
    s.faults(list_status=429, list_fail=4)
    a = s.create("orders", [{"n": 1}])
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir)).start()
    wait_ids(t, out, a["ids"], 30)
    times = list_times(s)
    assert len(times) >= 5
    # The four refused polls were each followed by a wait of a second or
    # more: PocketBase sends no Retry-After, so tether never hurries.
    gaps = [b - a for a, b in zip(times, times[1:5])]
    assert all(g >= 0.95 for g in gaps), gaps
    assert t.stop() == 0


def test_5xx_and_refused_connections_recover(tether, tmp_path, pb, sock_dir,
                                             ref_server):
    port = free_port()
    out = tmp_path / "out.ndjson"
    base = f"http://127.0.0.1:{port}"
    t = tether(config(out, base, sock_dir)).start()
    sock = f"{sock_dir}/t.sock"
    wait_for(lambda: state_of(sock).get("state") == "backoff", 20,
             "backoff while nothing listens", t)
    s = PB(ref_server("pocketbase_server.py", "--port", str(port)))
    s.collection("orders")
    s.faults(list_status=503, list_fail=3)
    a = s.create("orders", [{"n": 1}, {"n": 2}])
    wait_ids(t, out, a["ids"], 30)
    assert state_of(sock)["state"] == "connected"
    assert t.stop() == 0


MALFORMED = {
    "bad_json": "malformed list response",
    "no_items": "items",
    "items_not_array": "items",
    "item_not_object": "items[0]",
    "id_not_string": "items[0].id",
    "created_not_string": "items[0].created",
    "html": "malformed list response",
}


@pytest.mark.parametrize("mode", sorted(MALFORMED))
def test_malformed_answers_never_move_the_cursor(tether, tmp_path, pb,
                                                 sock_dir, mode):
    s = pb()
    s.collection("orders")
    a = s.create("orders", [{"n": 1}])
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, poll_interval="100ms")).start()
    wait_ids(t, out, a["ids"])
    sock = f"{sock_dir}/t.sock"
    wait_for(lambda: (t.cursor("orders", "pocketbase") or {}).get(
        "last_sequence") == 1, 10, "the first commit", t)
    before = t.cursor("orders", "pocketbase")
    s.faults(list_malformed=mode)
    b = s.create("orders", [{"n": 2}])
    wait_for(lambda: MALFORMED[mode] in state_of(sock).get("last_error", ""),
             20,
             f"an error naming {MALFORMED[mode]}", t)
    assert state_of(sock)["state"] == "backoff"
    assert t.cursor("orders", "pocketbase")["position"] == before["position"]
    assert got_ids(out) == a["ids"]
    s.ctl("/_reset")
    wait_ids(t, out, a["ids"] + b["ids"], 30)
    assert t.stop() == 0


def test_collection_without_created_is_a_clear_error(tether, tmp_path, pb,
                                                     sock_dir):
    s = pb()
    s.collection("bare", has_created=False)
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, collection="bare")).start()
    failed_with(t, "has no created field", "offset = id")


def test_bad_filter_is_refused_by_check(tether, tmp_path, pb, sock_dir):
    s = pb()
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir,
                      consumer_keys='filter = n = 1) || (n = 2'))
    t.start(["check", "-c", t.config_path])
    assert t.wait_exit() != 0
    assert "filter" in t.log() and "unbalanced" in t.log()


# ---- offset mirror ---------------------------------------------------------


MIRROR_FIELDS = ["consumer_group", "collection", "offset", "appname"]


def mirror_rows(s, token):
    status, doc = s.call("GET", "/api/collections/consumer_offsets/records"
                         "?perPage=50", token=token)
    assert status == 200, doc
    return doc["items"]


def test_offset_mirror_follows_each_commit(tether, tmp_path, pb, sock_dir):
    s = pb()
    s.collection("orders")
    s.collection("consumer_offsets", fields=MIRROR_FIELDS,
                 unique=[["consumer_group", "collection"]])
    token = s.login()
    out = tmp_path / "out.ndjson"
    keys = ("offset_store = upstream:consumer_offsets\n"
            "consumer_group = billing\nappname = tether-test")
    t = tether(config(out, s.base, sock_dir, consumer_keys=keys)).start()
    for burst in range(3):
        s.create("orders", [{"n": burst * 10 + i} for i in range(10)])

        def mirrored():
            row = t.cursor("orders", "pocketbase")
            rows = mirror_rows(s, token)
            return (row is not None and row["last_sequence"] == 10 * (burst + 1)
                    and len(rows) == 1 and rows[0]["offset"] == row["position"])
        wait_for(mirrored, 20, f"the mirror after burst {burst}", t)
    row = mirror_rows(s, token)[0]
    assert row["consumer_group"] == "billing"
    assert row["collection"] == "orders" and row["appname"] == "tether-test"
    assert t.stop() == 0


def test_offset_mirror_resumes_an_empty_store(tether, tmp_path, pb, sock_dir):
    s = pb()
    s.collection("orders")
    s.collection("consumer_offsets", fields=MIRROR_FIELDS,
                 unique=[["consumer_group", "collection"]])
    token = s.login()
    a = s.create("orders", [{"n": i} for i in range(20)])
    order = server_order(s, a["ids"])
    recs = {r["record"]["id"]: r["record"] for r in s.records("orders")}
    handed = order[9]  # a Go consumer got this far
    status, _ = s.call("POST", "/api/collections/consumer_offsets/records",
                       {"consumer_group": "orders", "collection": "orders",
                        "offset": f'{recs[handed]["created"]}|{handed}'},
                       token=token)
    assert status == 200
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir,
                      consumer_keys="offset_store = upstream:consumer_offsets"))
    t.start()
    wait_ids(t, out, order[10:])
    assert got_ids(out) == order[10:]
    assert "resuming from the offset mirror" in t.log()
    assert t.stop() == 0


def test_offset_mirror_is_written_beside_a_held_poll(tether, tmp_path, pb,
                                                    sock_dir):
    # The mirror write does not wait for the poll lane: a full page asks
    # for the next one at once, before the page's commit, and the server
    # holds that poll; the commit is mirrored all the same.
    s = pb()
    s.collection("orders")
    s.collection("consumer_offsets", fields=MIRROR_FIELDS,
                 unique=[["consumer_group", "collection"]])
    token = s.login()
    a = s.create("orders", [{"n": i} for i in range(10)])
    s.faults(list_hold={"collection": "orders", "after": 1})
    out = tmp_path / "out.ndjson"
    t = tether(config(out, s.base, sock_dir, settle="0ms", batch_size=10,
                      upstream="realtime = false",
                      consumer_keys="offset_store = upstream:consumer_offsets"))
    t.start()
    wait_ids(t, out, a["ids"], 30)

    def held():
        status, doc = s.call("GET", "/_pb/faults")
        return status == 200 and doc["list_held"] == 1
    wait_for(held, 20, "the poll after the full page held by the server", t)

    def mirrored():
        row = t.cursor("orders", "pocketbase")
        rows = mirror_rows(s, token)
        return (row is not None and row["last_sequence"] == 10
                and len(rows) == 1 and rows[0]["offset"] == row["position"])
    wait_for(mirrored, 20, "the mirror written beside the held poll", t)
    assert held()  # the poll was held all along
    # A drain with the poll still held: close cancels it and the source
    # closes once its answer came back.
    assert t.stop() == 0
    assert "the consumer stops" not in t.log()


# ---- the quickstart demo -------------------------------------------------


def test_quickstart_pocketbase_demo(tmp_path, sock_dir):
    # scripts/quickstart.sh pocketbase with this build's tether: the
    # reference server, a writer creating an order every second, and
    # tether consuming them into a file, its status on the socket.
    env = dict(os.environ, TETHER_BIN=BIN, TETHER_DEMO_DIR=sock_dir)
    log = open(tmp_path / "demo.log", "wb")
    p = subprocess.Popen([os.path.join(SRC, "scripts", "quickstart.sh"),
                          "pocketbase"], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    out = os.path.join(sock_dir, "orders.ndjson")
    try:
        wait_for(lambda: len(read_lines(out, running=True)[0]) >= 3, 30,
                 "three orders in the demo's file")
        r = cli("status", sock=f"{sock_dir}/tether.sock")
        assert r.returncode == 0, r.stderr
        assert "orders" in r.stdout and "connected" in r.stdout
        recs = read_lines(out, running=True)[0]
        assert [r["data"]["total"] for r in recs[:3]] == [1, 2, 3]
        assert all(r["kind"] == "orders" for r in recs)
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)
        log.close()
    text = (tmp_path / "demo.log").read_text()
    assert "a new order every second" in text, text
    assert "tether stopped" in text, text
