"""TLS to the upstream, against nginx (with nchan) and openssl s_server:
success with the test CA, and a clear error with backoff for a wrong host
name, an unknown CA, an expired certificate and a TLS 1.0-only server;
mutual TLS with a client certificate; tls_verify = false."""
import json
import os
import re
import signal
import ssl

import pytest

from conftest import read_lines, wait_for
from peers import Nchan, Peer, free_port
from pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def tls_config(out, url, tls_keys=""):
    return f"""
[daemon]
state = state.db
checkpoint_interval = 100ms
status_interval = 0

[upstream secure]
type = sse
url = {url}
reconnect_min = 100ms
reconnect_max = 400ms
immediate_retries = 0
{tls_keys}

[consumer live]
upstream = secure
path = /sub/demo
sink = file:{out}
"""


@pytest.fixture
def tls_nchan(tmp_path):
    made = []

    def make(cert, client_ca=None):
        d = tmp_path / f"nginx{len(made)}"
        d.mkdir()
        n = Nchan(str(d), buffer=100, first="oldest",
                  tls={"cert": cert[0], "key": cert[1],
                       "client_ca": client_ca})
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()


def publisher_context(pki, client=False):
    ctx = ssl.create_default_context(cafile=pki["ca"])
    if client:
        ctx.load_cert_chain(*pki["client"])
    return ctx


def test_tls_with_the_test_ca(tether, tmp_path, pki, tls_nchan):
    n = tls_nchan(pki["server"])
    ctx = publisher_context(pki)
    for i in range(5):
        n.publish("demo", json.dumps({"i": i}), context=ctx)
    out = tmp_path / "out.ndjson"
    t = tether(tls_config(out, n.tls_base, f"ca_file = {pki['ca']}"))
    t.start()
    wait_for(lambda: len(read_lines(out, running=True)[0]) >= 5, 20,
             "events over TLS", t)
    assert t.stop() == 0
    assert [r["data"]["i"] for r in read_lines(out)[0]] == list(range(5))
    assert "source failed" not in t.log()


def assert_fails_with(t, pattern):
    """The consumer keeps backing off with an error matching pattern."""
    t.start()
    t.wait_log(r"warn source failed; retrying consumer=live source=sse "
               r"err=\"[^\"]*" + pattern, 20)
    wait_for(lambda: t.log().count("source failed; retrying") >= 2, 20,
             "a second attempt (backoff, not a hot loop)", t)
    assert t.stop() == 0


def test_wrong_host_name(tether, tmp_path, pki, tls_nchan):
    n = tls_nchan(pki["wrong-name"])
    t = tether(tls_config(tmp_path / "out", n.tls_base,
                          f"ca_file = {pki['ca']}"))
    assert_fails_with(t, r"certificate verify failed: .*mismatch.*"
                         r"expected localhost")


def test_unknown_ca(tether, tmp_path, pki, tls_nchan):
    n = tls_nchan(pki["untrusted"])
    t = tether(tls_config(tmp_path / "out", n.tls_base,
                          f"ca_file = {pki['ca']}"))
    assert_fails_with(t, r"certificate verify failed: .*(unknown CA|not "
                         r"trusted)")


def test_expired_certificate(tether, tmp_path, pki, tls_nchan):
    n = tls_nchan(pki["expired"])
    t = tether(tls_config(tmp_path / "out", n.tls_base,
                          f"ca_file = {pki['ca']}"))
    assert_fails_with(t, r"certificate verify failed: .*expired")


def test_tls10_only_server(tether, tmp_path, pki):
    port = free_port()
    cert, key = pki["server"]
    s = Peer(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert",
              cert, "-key", key, "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0",
              "-www", "-quiet"], str(tmp_path), "s_server")
    try:
        s.wait_port(port)
        t = tether(tls_config(tmp_path / "out", f"https://localhost:{port}",
                              f"ca_file = {pki['ca']}"))
        assert_fails_with(t, r"handshake failed: .*(protocol version|"
                             r"TLS 1\.2)")
    finally:
        s.stop()


def test_mutual_tls(tether, tmp_path, pki, tls_nchan):
    n = tls_nchan(pki["server"], client_ca=pki["client-ca"])
    ctx = publisher_context(pki, client=True)
    n.publish("demo", json.dumps({"i": 1}), context=ctx)
    out = tmp_path / "out.ndjson"
    cert, key = pki["client"]
    t = tether(tls_config(out, n.tls_base,
                          f"ca_file = {pki['ca']}\nclient_cert = {cert}\n"
                          f"client_key = {key}"))
    t.start()
    wait_for(lambda: len(read_lines(out, running=True)[0]) >= 1, 20,
             "an event over mutual TLS", t)
    assert t.stop() == 0

    # Without the client certificate nginx refuses the request.
    bare = tether(tls_config(tmp_path / "out2", n.tls_base,
                             f"ca_file = {pki['ca']}"), name="bare")
    bare.start()
    assert bare.wait_exit(20) == 1
    assert re.search(r"source failed; the consumer stops consumer=live "
                     r"source=sse err=\"HTTP 400 from https://localhost",
                     bare.log()), bare.log()


def test_verify_off_is_explicit_and_warned(tether, tmp_path, pki, tls_nchan):
    n = tls_nchan(pki["wrong-name"])
    n.publish("demo", json.dumps({"i": 1}),
              context=ssl._create_unverified_context())
    out = tmp_path / "out.ndjson"
    t = tether(tls_config(out, n.tls_base, "tls_verify = false"))
    t.start()
    wait_for(lambda: len(read_lines(out, running=True)[0]) >= 1, 20,
             "an event without verification", t)
    assert t.stop() == 0
    assert re.search(r" warn TLS verification is off: .* upstream=secure",
                     t.log())
