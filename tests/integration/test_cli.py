"""The command line: check with good and bad configurations (exact
messages, exit code 2), version, help, and usage errors."""
import os
import subprocess

import pytest

from conftest import BIN

LONG = "x" * 200

# name, file text, the exact error output.
BAD = [
    ("not_an_integer",
     "[consumer a]\nsource = generate\nsink = stdout\nmax_in_flight = ten\n",
     'bad.ini:4: [consumer a] max_in_flight = "ten": expected an integer '
     "1..1000000"),
    ("out_of_range",
     "[consumer a]\nsource = generate\nsink = stdout\nmax_in_flight = 0\n",
     'bad.ini:4: [consumer a] max_in_flight = "0": expected an integer '
     "1..1000000"),
    ("unknown_source",
     "[consumer a]\nsource = nosuch\nsink = stdout\n",
     'bad.ini:2: [consumer a] source = "nosuch": expected one of: generate'),
    ("missing_sink",
     "[consumer a]\nsource = generate\n",
     "bad.ini:1: [consumer a]: sink is required"),
    ("unknown_sink",
     "[consumer a]\nsource = generate\nsink = kafka:x\n",
     'bad.ini:3: [consumer a] sink = "kafka:x": expected stdout, file:PATH, '
     "fifo:PATH, exec:ARGV or socket"),
    ("file_without_path",
     "[consumer a]\nsource = generate\nsink = file:\n",
     'bad.ini:3: [consumer a] sink = "file:": file needs a path: file:PATH'),
    ("unknown_key",
     "[consumer a]\nsource = generate\nsink = file:x\nrotate_sise = 1MiB\n",
     'bad.ini:4: [consumer a] rotate_sise = "1MiB": unknown key for a '
     "consumer with source generate and sink file; did you mean "
     "rotate_size?"),
    ("duration_without_unit",
     "[daemon]\ncheckpoint_interval = 5\n"
     "[consumer a]\nsource = generate\nsink = stdout\n",
     'bad.ini:2: [daemon] checkpoint_interval = "5": expected a duration '
     "with a unit, such as 250ms, 30s, 5m or 1h"),
    ("bad_enum",
     "[daemon]\nlog_format = yaml\n"
     "[consumer a]\nsource = generate\nsink = stdout\n",
     'bad.ini:2: [daemon] log_format = "yaml": expected one of: text, json'),
    ("unset_env",
     "[daemon]\nstate = ${TETHER_TEST_UNSET_VAR}\n"
     "[consumer a]\nsource = generate\nsink = stdout\n",
     'bad.ini:2: [daemon] state = "${TETHER_TEST_UNSET_VAR}": environment '
     "variable TETHER_TEST_UNSET_VAR is not set (write "
     "${TETHER_TEST_UNSET_VAR:-default} to give a default)"),
    ("key_twice",
     "[consumer a]\nsource = generate\nsink = stdout\nsink = file:x\n",
     "bad.ini:4: [consumer a] sink: set twice (first at line 3)"),
    ("section_twice",
     "[consumer a]\nsource = generate\nsink = stdout\n"
     "[consumer a]\nsource = generate\nsink = stdout\n",
     "bad.ini:4: [consumer a]: duplicate section (first at line 1)"),
    ("no_consumer",
     "[daemon]\n",
     "bad.ini: no [consumer NAME] section: nothing to consume"),
    ("unknown_section",
     "[consumers a]\nsource = generate\n",
     "bad.ini:1: unknown section [consumers a]: expected [daemon], "
     "[upstream NAME] or [consumer NAME]\n"
     "bad.ini: no [consumer NAME] section: nothing to consume"),
    ("missing_upstream",
     "[consumer a]\nupstream = pb\nsink = stdout\n",
     'bad.ini:2: [consumer a] upstream = "pb": no [upstream pb] section'),
    ("upstream_not_yet",
     "[upstream pb]\ntype = lockd\n"
     "[consumer a]\nupstream = pb\nsink = stdout\n",
     'bad.ini:4: [consumer a] upstream = "pb": [upstream pb] has type '
     "lockd, which this version cannot consume yet"),
    ("bad_template",
     '[consumer a]\nsource = generate\nsink = stdout\ntemplate = {"a":{seq}\n',
     "bad.ini:1: [consumer a]: template is not valid JSON once {seq} is a "
     "number: '}' expected near end of file at column 10"),
    ("size_out_of_range",
     "[consumer a]\nsource = generate\nsink = stdout\npayload_size = 10MiB\n",
     'bad.ini:4: [consumer a] payload_size = "10MiB": expected a size '
     "32..1MiB"),
    ("line_without_equals",
     "[consumer a]\nsource = generate\nsink = stdout\nno equals here\n",
     'bad.ini:4: expected "key = value" or "[section]"'),
    ("line_too_long",
     f"[consumer a]\nsource = generate\nsink = stdout\ntemplate = {LONG}\n",
     "bad.ini:4: line is 211 bytes long; the limit is 197: split the value "
     "over indented continuation lines"),
    ("retry_min_above_max",
     "[consumer a]\nsource = generate\nsink = stdout\n"
     "retry_min = 1m\nretry_max = 1s\n",
     "bad.ini:1: [consumer a]: retry_min (1m) is above retry_max (1s)"),
    ("bad_bool",
     "[daemon]\nexit_when_done = maybe\n"
     "[consumer a]\nsource = generate\nsink = stdout\n",
     'bad.ini:2: [daemon] exit_when_done = "maybe": expected true or false'),
    ("bad_upstream_type",
     "[upstream pb]\ntype = kafka\n"
     "[consumer a]\nsource = generate\nsink = stdout\n",
     'bad.ini:2: [upstream pb] type = "kafka": expected one of: pocketbase, '
     "lockd, eventstream, synchro, sse, http-poll"),
    ("bad_section_name",
     "[consumer a b]\nsource = generate\nsink = stdout\n",
     "bad.ini:1: [consumer a b]: a name is 1 to 64 characters of A-Z, a-z, "
     "0-9, _, . and -"),
    ("several_errors_at_once",
     "[daemon]\nlog_level = loud\n"
     "[consumer a]\nsource = generate\nsink = stdout\nrate = fast\n",
     'bad.ini:2: [daemon] log_level = "loud": expected one of: debug, info, '
     "warn, error\n"
     'bad.ini:6: [consumer a] rate = "fast": expected an integer '
     "0..100000000"),
]


def run(args, cwd, env=None):
    full = dict(os.environ)
    full.pop("TETHER_TEST_UNSET_VAR", None)
    full.update(env or {})
    return subprocess.run([BIN] + args, cwd=cwd, capture_output=True,
                          text=True, timeout=30, env=full)


@pytest.mark.parametrize("name,text,want", BAD, ids=[b[0] for b in BAD])
def test_check_rejects_bad_config(tmp_path, name, text, want):
    (tmp_path / "bad.ini").write_text(text)
    r = run(["check", "-c", "bad.ini"], tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == want + "\n"
    # run refuses the same file the same way, before touching any state.
    r = run(["run", "-c", "bad.ini"], tmp_path)
    assert r.returncode == 2
    assert r.stderr == want + "\n"
    assert not (tmp_path / ".tether").exists()


def test_check_prints_effective_config(tmp_path):
    (tmp_path / "ok.ini").write_text("""
[upstream pb]
type = lockd
url = https://pb.internal
password = ${PB_PASSWORD}

[consumer a]
source = generate
rate = 5
sink = file:out.ndjson
""")
    r = run(["check", "-c", "ok.ini"], tmp_path,
            {"PB_PASSWORD": "hunter2"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # Defaults are filled in, the secret is masked and never printed.
    assert "checkpoint_interval = 1s\n" in out
    assert "shutdown_timeout = 20s\n" in out
    assert "password = ***\n" in out
    assert "hunter2" not in out
    assert "rate = 5\n" in out
    assert "max_in_flight = 1000\n" in out
    assert "rotate_keep = 5\n" in out
    # The effective configuration is itself a valid configuration.
    (tmp_path / "again.ini").write_text(
        out.replace("password = ***", "password = x"))
    again = run(["check", "-c", "again.ini"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.replace("password = ***", "") == \
        out.replace("password = ***", "")


def test_check_embedded_default(tmp_path):
    r = run(["check"], tmp_path)
    assert r.returncode == 0
    assert "[consumer demo]\nsource = generate\nsink = stdout\n" in r.stdout
    assert "state = ./.tether/state.db\n" in r.stdout


def test_check_missing_file(tmp_path):
    r = run(["check", "-c", "nope.ini"], tmp_path)
    assert r.returncode == 2
    assert r.stderr == "nope.ini: cannot read: No such file or directory\n"


def test_version(tmp_path):
    r = run(["version"], tmp_path)
    assert r.returncode == 0
    assert r.stdout.startswith("tether 0.1.0 (libuv ")
    assert run(["--version"], tmp_path).stdout == r.stdout


@pytest.mark.parametrize("args,first", [
    (["help"], "usage: tether <command> [options]"),
    (["--help"], "usage: tether <command> [options]"),
    (["help", "run"], "usage: tether run [-c FILE]"),
    (["run", "--help"], "usage: tether run [-c FILE]"),
    (["check", "-h"], "usage: tether check [-c FILE]"),
    (["help", "check"], "usage: tether check [-c FILE]"),
    (["version", "--help"], "usage: tether version"),
    (["help", "help"], "usage: tether help [COMMAND | config]"),
])
def test_help(tmp_path, args, first):
    r = run(args, tmp_path)
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == first


def test_help_config_is_the_docs(tmp_path):
    from conftest import SRC
    r = run(["help", "config"], tmp_path)
    assert r.returncode == 0
    with open(os.path.join(SRC, "docs", "config.md")) as f:
        assert r.stdout == f.read()


@pytest.mark.parametrize("args,message", [
    ([], None),
    (["bogus"], "tether: no command named bogus"),
    (["run", "-x"], "tether: unexpected argument: -x"),
    (["run", "-c"], "tether: -c needs a file name"),
    (["help", "nothing"], "tether: no command named nothing"),
    (["version", "extra"], "tether: unexpected argument: extra"),
])
def test_usage_errors(tmp_path, args, message):
    r = run(args, tmp_path)
    assert r.returncode == 2
    if message is None:
        assert r.stderr.startswith("usage: tether")
    else:
        assert r.stderr.splitlines()[0] == message
