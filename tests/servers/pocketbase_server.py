#!/usr/bin/env python3
"""Reference PocketBase server for tether's `pocketbase` source.

    python3 tests/servers/pocketbase_server.py --port 0 [--host H] [--legacy]
        [--superuser EMAIL:PASSWORD] [--token-ttl S]
        [--realtime-idle S] [--realtime-lifetime S]

Prints "listening on HOST:PORT" once it listens; SIGTERM stops it. It speaks
the part of the PocketBase HTTP API that tether and the official JS SDK use,
as /work/shared/protocols/pocketbase.md describes it (§1-§7, §9): the
records list with filter/sort/paging, single-record CRUD, password auth with
real HS256 tokens, the errors, and realtime over SSE. --legacy switches to
the shapes of PocketBase <= v0.22 (`code` in errors, /api/admins/...).

Everything lives in memory. Control paths under /_pb/ (not recorded by
/_requests) let tests create collections, users and records, inject faults
(list errors, broken bodies, realtime drops and reordering, a rate limit),
expire tokens and close streams. README.md lists them all.
"""

import asyncio
import base64
import calendar
import functools
import hashlib
import hmac
import json
import math
import os
import random
import re
import string
import sys
import time
import urllib.parse

import httpbase
from httpbase import HttpError

ALNUM = string.ascii_letters + string.digits
ID_CHARS = string.ascii_lowercase + string.digits
ID_RE = re.compile(r"[a-z0-9]{15}")

ERR_GENERIC = "Something went wrong while processing your request."
DEFAULT_MESSAGES = {
    400: ERR_GENERIC,
    401: "Missing or invalid authentication.",
    403: "You are not allowed to perform this request.",
    404: "The requested resource wasn't found.",
    429: "Too Many Requests.",
    500: ERR_GENERIC,
}
MSG_SUPERUSERS_ONLY = "Only superusers can perform this action."
MSG_NO_COLLECTION = "Missing collection context."
MSG_NO_AUTH_COLLECTION = "Missing or invalid auth collection context."
MSG_AUTH_FAILED = "Failed to authenticate."
MSG_BAD_BODY = "Failed to read the submitted data."
MSG_NEED_TOKEN = "The request requires valid record authorization token."
MSG_NO_CLIENT = "Missing or invalid client id."
MSG_AUTH_MISMATCH = "The current and the previous request authorization don't match."

MAX_FILTER_BYTES = 3500
MAX_FILTER_EXPRS = 200
MAX_SORT_FIELDS = 8
MAX_PER_PAGE = 1000
MAX_PER_PAGE_LEGACY = 500
DEFAULT_PER_PAGE = 30

SUPERUSERS = "_superusers"
SUPERUSERS_ID = "pbc_3142635823"  # the id a real PocketBase gives it
TTL_SUPERUSERS = 86400.0
TTL_RECORDS = 432000.0

# Sent by PocketBase's security middleware on every route.
SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "SAMEORIGIN"),
    ("X-Xss-Protection", "1; mode=block"),
]

MALFORMED_MODES = ("bad_json", "no_items", "items_not_array", "item_not_object",
                   "id_not_string", "created_not_string", "html")

# Field types whose stored value is text (the zero value is "").
TEXT_TYPES = {"text", "email", "url", "editor", "select", "date", "relation",
              "file", "password", "geoPoint"}

_rng = random.Random(os.urandom(16))


# -- small helpers ------------------------------------------------------------


class PbError(Exception):
    """An API error: answered as {"data","message","status"} (or "code")."""

    def __init__(self, status, message=None, data=None):
        super().__init__(message or DEFAULT_MESSAGES.get(status, ERR_GENERIC))
        self.status = status
        self.message = message or DEFAULT_MESSAGES.get(status, ERR_GENERIC)
        self.data = data or {}


class FilterError(Exception):
    """A filter, rule or sort that does not parse or names an unknown field."""


def pb_time(t):
    """A PocketBase datetime: UTC, a space, exactly 3 fractional digits."""
    return pb_time_ms(int(t * 1000))


def pb_time_ms(ms):
    sec, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec)) + ".%03dZ" % frac


def go_json(obj):
    """JSON as Go's encoder writes it: map keys sorted, no spaces, and <, >,
    & and the JS line separators escaped."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026").replace("\u2028", "\\u2028")
            .replace("\u2029", "\\u2029"))


def tidy_number(v):
    """Whole floats become ints, so 5.0 is written 5 (as float64 in Go is)."""
    if isinstance(v, float) and math.isfinite(v) and v.is_integer() \
            and abs(v) < 1e15:
        return int(v)
    return v


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    pad = "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(text + pad)


def random_id():
    return "".join(_rng.choice(ID_CHARS) for _ in range(15))


def random_client_id():
    return "".join(_rng.choice(ALNUM) for _ in range(40))


def leaf(code, message):
    return {"code": code, "message": message}


def first_values(req):
    """The query as Go's url.Values.Get sees it: the first value wins."""
    out = {}
    for k, v in req.query_list:
        out.setdefault(k, v)
    return out


# -- the filter language (a subset of fexpr) ----------------------------------

_OPERATORS = ("?!=", "?!~", "?>=", "?<=", "!=", "!~", ">=", "<=", "?=", "?>",
              "?<", "?~", "=", ">", "<", "~")
_IDENT_RE = re.compile(r"[A-Za-z_@#][A-Za-z0-9_.:@#]*")
_NUMBER_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_DIGITS = "0123456789"


def tokenize(text):
    """Splits a filter into tokens: (kind, value) with kind in ident, text,
    num, op, and, or, lparen, rparen."""
    toks = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
            continue
        if text.startswith("//", i):  # a comment runs to the end of the line
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c in "'\"":
            # Only the quote itself can be escaped; any other backslash is
            # kept as it is (fexpr <= v0.5).
            buf = []
            j = i + 1
            while True:
                if j >= n:
                    raise FilterError("unterminated quoted text")
                ch = text[j]
                if ch == "\\" and j + 1 < n and text[j + 1] == c:
                    buf.append(c)
                    j += 2
                    continue
                if ch == c:
                    break
                buf.append(ch)
                j += 1
            toks.append(("text", "".join(buf)))
            i = j + 1
            continue
        if c in _DIGITS or (c == "-" and i + 1 < n and text[i + 1] in _DIGITS):
            m = _NUMBER_RE.match(text, i)
            end = m.end()
            if end < n and (text[end].isalnum() or text[end] in "_.@#:"):
                raise FilterError("bad number near %r" % text[i:end + 1])
            toks.append(("num", m.group()))
            i = end
            continue
        m = _IDENT_RE.match(text, i)
        if m:
            toks.append(("ident", m.group()))
            i = m.end()
            continue
        if text.startswith("&&", i):
            toks.append(("and", "&&"))
            i += 2
            continue
        if text.startswith("||", i):
            toks.append(("or", "||"))
            i += 2
            continue
        if c == "(":
            toks.append(("lparen", c))
            i += 1
            continue
        if c == ")":
            toks.append(("rparen", c))
            i += 1
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                toks.append(("op", op))
                i += len(op)
                break
        else:
            raise FilterError("unexpected character %r" % c)
    return toks


class _Parser:
    """Recursive descent with the SQL precedence PocketBase ends up with:
    && binds tighter than ||, parentheses group."""

    def __init__(self, toks, resolve):
        self.toks = toks
        self.i = 0
        self.resolve = resolve
        self.count = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self):
        tok = self.peek()
        if tok is None:
            raise FilterError("unexpected end of the filter")
        self.i += 1
        return tok

    def parse(self):
        if not self.toks:
            return None
        node = self.parse_or()
        if self.peek() is not None:
            raise FilterError("unexpected %r" % (self.peek()[1],))
        return node

    def parse_or(self):
        node = self.parse_and()
        while self.peek() is not None and self.peek()[0] == "or":
            self.take()
            node = ("or", node, self.parse_and())
        return node

    def parse_and(self):
        node = self.parse_term()
        while self.peek() is not None and self.peek()[0] == "and":
            self.take()
            node = ("and", node, self.parse_term())
        return node

    def parse_term(self):
        tok = self.take()
        if tok[0] == "lparen":
            node = self.parse_or()
            if self.take()[0] != "rparen":
                raise FilterError("missing )")
            return node
        if tok[0] not in ("ident", "text", "num"):
            raise FilterError("expected an operand, got %r" % (tok[1],))
        op = self.take()
        if op[0] != "op":
            raise FilterError("expected an operator, got %r" % (op[1],))
        right = self.take()
        if right[0] not in ("ident", "text", "num"):
            raise FilterError("expected an operand, got %r" % (right[1],))
        self.count += 1
        if self.count > MAX_FILTER_EXPRS:
            raise FilterError("too many expressions")
        return ("cmp", self.resolve(tok), op[1], self.resolve(right))


def _macros():
    """The datetime macros, evaluated now (UTC)."""
    now = int(time.time() * 1000)
    g = time.gmtime(now // 1000)

    def ms(y, mo, d):
        return calendar.timegm((y, mo, d, 0, 0, 0)) * 1000

    day0 = ms(g.tm_year, g.tm_mon, g.tm_mday)
    ny, nm = (g.tm_year + 1, 1) if g.tm_mon == 12 else (g.tm_year, g.tm_mon + 1)
    return {
        "@now": pb_time_ms(now),
        "@yesterday": pb_time_ms(now - 86400000),
        "@tomorrow": pb_time_ms(now + 86400000),
        "@todayStart": pb_time_ms(day0),
        "@todayEnd": pb_time_ms(day0 + 86399999),
        "@monthStart": pb_time_ms(ms(g.tm_year, g.tm_mon, 1)),
        "@monthEnd": pb_time_ms(ms(ny, nm, 1) - 1),
        "@yearStart": pb_time_ms(ms(g.tm_year, 1, 1)),
        "@yearEnd": pb_time_ms(ms(g.tm_year + 1, 1, 1) - 1),
        "@second": g.tm_sec, "@minute": g.tm_min, "@hour": g.tm_hour,
        "@day": g.tm_mday, "@month": g.tm_mon, "@year": g.tm_year,
        "@weekday": (g.tm_wday + 1) % 7,
    }


def compile_filter(text, names):
    """Parses a filter against the collection's field names. Returns a tree
    (None for an empty filter); raises FilterError."""
    macros = None

    def resolve(tok):
        nonlocal macros
        kind, v = tok
        if kind == "text":
            return ("const", v)
        if kind == "num":
            return ("const", int(v) if re.fullmatch(r"-?[0-9]+", v) else float(v))
        if v in names:
            return ("field", v)
        if v == "null":
            return ("const", None)
        if v in ("true", "false"):
            return ("const", v == "true")
        if v == "@request.auth.id":
            return ("auth", "id")
        if v == "@request.auth.collectionName":
            return ("auth", "collectionName")
        if macros is None:
            macros = _macros()
        if v in macros:
            return ("const", macros[v])
        raise FilterError("unknown field %r" % v)

    try:
        return _Parser(tokenize(text), resolve).parse()
    except RecursionError:
        # Hundreds of nested parentheses: SQLite's expression depth limit
        # refuses those in PocketBase too.
        raise FilterError("nested too deeply")


def _as_text(v):
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(tidy_number(v))
    return go_json(v)


def _as_number(text):
    """The number a text would turn into under SQLite's numeric affinity."""
    s = text.strip()
    if not re.fullmatch(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", s):
        return None
    try:
        f = float(s)
    except ValueError:
        return None
    return tidy_number(f)


def _scalar(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (list, dict)):
        return go_json(v)
    return v


def sql_order(a, b):
    """-1, 0 or 1 for two non-NULL values, the way SQLite orders them: a
    number against a numeric-looking text compares as numbers; otherwise
    numbers sort before text, and text compares bytewise (BINARY)."""
    a, b = _scalar(a), _scalar(b)
    an = isinstance(a, (int, float))
    bn = isinstance(b, (int, float))
    if an and not bn:
        nb = _as_number(b)
        if nb is not None:
            b, bn = nb, True
    elif bn and not an:
        na = _as_number(a)
        if na is not None:
            a, an = na, True
    if an and bn:
        return (a > b) - (a < b)
    if an:
        return -1
    if bn:
        return 1
    return (a > b) - (a < b)  # code point order is UTF-8 byte order


@functools.lru_cache(maxsize=1024)
def like_regex(value):
    """The regex of `x ~ value`: a contains match, or a LIKE pattern when the
    value holds an unescaped %. ASCII case-insensitive, as SQLite's LIKE."""
    raw_pattern = False
    i = 0
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == "%":
            raw_pattern = True
            break
        i += 1
    if raw_pattern:
        pattern = value
    else:
        pattern = "%" + value.replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_") + "%"
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.ASCII | re.DOTALL)


def compare(a, op, b):
    if op.startswith("?"):
        op = op[1:]
        if isinstance(a, list):
            return any(compare(x, op, b) for x in a)
    if op in ("=", "!="):
        # PocketBase wraps both sides in COALESCE(x, ''): NULL equals "".
        a = "" if a is None else a
        b = "" if b is None else b
        same = sql_order(a, b) == 0
        return same if op == "=" else not same
    if a is None or b is None:
        return False
    if op in ("~", "!~"):
        hit = like_regex(_as_text(b)).fullmatch(_as_text(a)) is not None
        return hit if op == "~" else not hit
    c = sql_order(a, b)
    if op == ">":
        return c > 0
    if op == ">=":
        return c >= 0
    if op == "<":
        return c < 0
    return c <= 0


def evaluate(node, data, auth):
    """True when the record data matches the compiled filter."""
    if node is None:
        return True
    kind = node[0]
    if kind == "or":
        return evaluate(node[1], data, auth) or evaluate(node[2], data, auth)
    if kind == "and":
        return evaluate(node[1], data, auth) and evaluate(node[2], data, auth)
    _, left, op, right = node
    return compare(_value(left, data, auth), op, _value(right, data, auth))


def _value(operand, data, auth):
    kind, v = operand
    if kind == "const":
        return v
    if kind == "field":
        return data.get(v)
    if auth is None:
        return ""
    return auth.rec.data["id"] if v == "id" else auth.coll.name


# -- the data model -------------------------------------------------------------


class Collection:
    def __init__(self, app, name, type_="base", fields=(), list_rule=None,
                 view_rule=None, create_rule=None, update_rule=None,
                 delete_rule=None, created=True, updated=True, unique=(),
                 indexes=(), cid=None, hidden=False, system=False,
                 token_ttl=None):
        self.name = name
        self.type = type_
        self.id = cid or app.new_collection_id(name)
        self.fields = dict(fields)  # name -> type ("" = untyped)
        self.list_rule = list_rule
        self.view_rule = view_rule
        self.create_rule = create_rule
        self.update_rule = update_rule
        self.delete_rule = delete_rule
        self.created_field = created
        self.updated_field = updated
        self.unique = [list(u) for u in unique]
        self.indexes = list(indexes)
        self.hidden = hidden  # the --legacy admins table
        self.system = system
        self.token_ttl = token_ttl
        self.records = []  # insertion order, visible or not
        self.by_id = {}
        self.stamp = pb_time(time.time())
        self.rule_cache = {}

    @property
    def is_auth(self):
        return self.type == "auth"

    def names(self):
        """The fields a filter or sort may name (hidden ones left out)."""
        out = ["id"]
        if self.created_field:
            out.append("created")
        if self.updated_field:
            out.append("updated")
        if self.is_auth:
            out += ["email", "emailVisibility", "verified"]
        out += [f for f in self.fields if f not in out]
        return out

    def compiled(self, text):
        """A rule or filter compiled against this collection, cached."""
        if text not in self.rule_cache:
            if len(self.rule_cache) > 256:
                self.rule_cache.clear()
            self.rule_cache[text] = compile_filter(text, set(self.names()))
        return self.rule_cache[text]

    def visible(self, rid):
        rec = self.by_id.get(rid)
        return rec if rec is not None and rec.visible else None

    def describe(self):
        fields = [{"name": "id", "type": "text", "system": True,
                   "primaryKey": True, "pattern": "^[a-z0-9]+$",
                   "min": 15, "max": 15}]
        if self.is_auth:
            fields += [{"name": "password", "type": "password", "system": True,
                        "hidden": True},
                       {"name": "tokenKey", "type": "text", "system": True,
                        "hidden": True},
                       {"name": "email", "type": "email", "system": True},
                       {"name": "emailVisibility", "type": "bool", "system": True},
                       {"name": "verified", "type": "bool", "system": True}]
        fields += [{"name": n, "type": t or "json", "system": False}
                   for n, t in self.fields.items()]
        if self.created_field:
            fields.append({"name": "created", "type": "autodate",
                           "onCreate": True, "onUpdate": False})
        if self.updated_field:
            fields.append({"name": "updated", "type": "autodate",
                           "onCreate": True, "onUpdate": True})
        return {"id": self.id, "name": self.name, "type": self.type,
                "system": self.system, "fields": fields,
                "indexes": self.indexes, "listRule": self.list_rule,
                "viewRule": self.view_rule, "createRule": self.create_rule,
                "updateRule": self.update_rule, "deleteRule": self.delete_rule,
                "created": self.stamp, "updated": self.stamp}


class Record:
    __slots__ = ("coll", "data", "rowid", "visible", "password", "token_key")

    def __init__(self, coll, data, rowid):
        self.coll = coll
        self.data = data
        self.rowid = rowid
        self.visible = False
        self.password = None
        self.token_key = None

    @property
    def id(self):
        return self.data["id"]


class Auth:
    """Who a request (or a realtime client) is: an auth record."""

    __slots__ = ("coll", "rec")

    def __init__(self, coll, rec):
        self.coll = coll
        self.rec = rec

    @property
    def key(self):
        return "%s/%s" % (self.coll.id, self.rec.id)

    @property
    def superuser(self):
        return self.coll.name == SUPERUSERS


def is_superuser(auth):
    return auth is not None and auth.superuser


class Topic:
    """One realtime subscription: COLL/*, COLL/ID or COLL, with options."""

    def __init__(self, raw):
        self.raw = raw
        base, _, qs = raw.partition("?")
        self.coll, slash, rest = base.partition("/")
        self.record_id = rest if slash and rest != "*" else None
        self.filter = None
        self.fields = None
        if qs:
            opts = urllib.parse.parse_qs(qs).get("options", [""])[0]
            try:
                opts = json.loads(opts) if opts else {}
            except ValueError:
                opts = {}
            query = opts.get("query") if isinstance(opts, dict) else None
            if isinstance(query, dict):
                if isinstance(query.get("filter"), str) and query["filter"]:
                    self.filter = query["filter"]
                if isinstance(query.get("fields"), str) and query["fields"]:
                    self.fields = parse_fields(query["fields"])

    def matches(self, coll, rec):
        if self.coll != coll.name and self.coll != coll.id:  # case-sensitive
            return False
        return self.record_id is None or self.record_id == rec.id


class RtClient:
    """One realtime connection and what it listens to."""

    def __init__(self, cid, conn, ip):
        self.id = cid
        self.conn = conn
        self.ip = ip
        self.topics = []
        self.auth = None
        self.connected_at = time.time()
        self.last_sent = time.monotonic()
        self.queue = asyncio.Queue()
        self.stop_mode = None  # "clean" or "drop" once asked to stop
        self.held = []  # record events held back by realtime_reorder
        self.flush_handle = None
        self.closed = False

    def push(self, frame):
        if not self.closed:
            self.queue.put_nowait(frame)

    def hold(self, frame, group):
        """realtime_reorder: keep frames until a group of `group` is there,
        then send it backwards; a partial group goes out after 200 ms."""
        self.held.append(frame)
        if len(self.held) >= group:
            self.flush_held()
        elif self.flush_handle is None:
            self.flush_handle = asyncio.get_running_loop().call_later(
                0.2, self.flush_held)

    def flush_held(self):
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        frames, self.held = self.held, []
        for f in reversed(frames):
            self.push(f)

    def stop(self, mode):
        self.stop_mode = mode
        self.queue.put_nowait(None)


# -- fields= picker ---------------------------------------------------------


def parse_fields(raw):
    """`a,b:excerpt(10,true),*` -> [(name, modifier args or None)]."""
    items, depth, cur = [], 0, ""
    for ch in raw:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth <= 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        name, _, mod = item.partition(":")
        m = re.fullmatch(r"excerpt\(\s*([0-9]+)\s*(?:,\s*(\w+)\s*)?\)", mod.strip())
        out.append((name.strip(), (int(m.group(1)), m.group(2) in ("true", "1", "t"))
                    if m else None))
    return out


def excerpt(value, n, ellipsis):
    text = re.sub(r"<[^>]*>", " ", _as_text(value) if value is not None else "")
    text = " ".join(text.split())
    if len(text) > n:
        text = text[:n] + ("..." if ellipsis else "")
    return text


def pick(obj, fields):
    if not fields:
        return obj
    out = {}
    for name, mod in fields:
        if name == "*":
            for k, v in obj.items():
                out.setdefault(k, v)
    for name, mod in fields:
        if name == "*" or name not in obj:
            continue  # nested names (expand.x) have nothing to pick here
        out[name] = excerpt(obj[name], *mod) if mod else obj[name]
    return out


# -- the server -----------------------------------------------------------------


class PocketBaseApp(httpbase.App):
    name = "pocketbase_server"

    def __init__(self, args):
        super().__init__(args)
        self.legacy = args.legacy
        self.secret = b64url(os.urandom(24))
        self.collections = []
        self.clients = {}  # clientId -> RtClient
        self.rowid = 0
        self.faults = {}
        self.list_fail_left = None  # None: every list request fails
        self.list_held = 0  # list requests waiting for list_hold to go
        self.list_release = asyncio.Event()
        self.auth_fail_left = None  # the same for logins and refreshes
        self.buckets = {}  # ip -> [window start, count] for rate_limit
        email, _, password = args.superuser.partition(":")
        ttl = args.token_ttl
        su = self.add_collection(Collection(
            self, SUPERUSERS, "auth", cid=SUPERUSERS_ID, hidden=self.legacy,
            system=True, token_ttl=TTL_SUPERUSERS if ttl is None else ttl))
        self.add_collection(Collection(
            self, "users", "auth", fields=[("name", "text")],
            list_rule="id = @request.auth.id", view_rule="id = @request.auth.id",
            create_rule="", update_rule="id = @request.auth.id",
            delete_rule="id = @request.auth.id",
            token_ttl=TTL_RECORDS if ttl is None else ttl))
        rec = self.build_record(su, {"email": email, "password": password},
                                superuser=True, creating=True)
        self.insert(su, [rec])
        self.make_visible([rec])

    # -- collections and records -----------------------------------------

    def new_collection_id(self, name):
        taken = {c.id for c in self.collections}
        n = int(hashlib.sha256(name.encode("utf-8")).hexdigest(), 16) % 10 ** 10
        while "pbc_%010d" % n in taken:
            n = (n + 1) % 10 ** 10
        return "pbc_%010d" % n

    def add_collection(self, coll):
        if self.legacy:
            # Before v0.23 every base and auth record had created/updated.
            coll.created_field = coll.updated_field = True
        self.collections.append(coll)
        return coll

    def find_collection(self, ident):
        """As the API looks it up: name without case, or exact id."""
        low = ident.lower()
        for c in self.collections:
            if not c.hidden and (c.id == ident or c.name.lower() == low):
                return c
        return None

    def control_collection(self, ident):
        for c in self.collections:
            if c.id == ident or c.name == ident:
                return c
        raise HttpError(400, "no collection %r" % (ident,))

    def build_record(self, coll, body, superuser, creating, rec=None,
                     stamp=None, pending=()):
        """Validates a create (creating=True) or an update of rec and returns
        the new data as a Record (for a create) or a dict (for an update).
        Raises PbError 400 with per-field errors."""
        errors = {}
        pending_ids = {r.id for r in pending}

        def others():
            """Every other row, committed or not: uniqueness is checked
            against all of them (as SQLite's unique index would)."""
            return [r for r in coll.records if r is not rec] + list(pending)

        if creating:
            data = {}
            rid = body.get("id")
            if rid is None or rid == "":
                rid = random_id()
                while rid in coll.by_id or rid in pending_ids:
                    rid = random_id()
            elif not isinstance(rid, str):
                errors["id"] = leaf("validation_invalid_format", "Invalid value format.")
            elif len(rid) < 15:
                errors["id"] = leaf("validation_min_text_constraint",
                                    "Must be at least 15 character(s).")
            elif len(rid) > 15:
                errors["id"] = leaf("validation_max_text_constraint",
                                    "Must be less than 15 character(s).")
            elif not ID_RE.fullmatch(rid):
                errors["id"] = leaf("validation_invalid_format", "Invalid value format.")
            elif rid in coll.by_id or rid in pending_ids:
                errors["id"] = leaf("validation_not_unique", "Value must be unique.")
            data["id"] = rid
        else:
            data = dict(rec.data)
        for name, ftype in coll.fields.items():
            if name in body:
                data[name] = self.coerce(body[name], ftype)
            elif creating:
                data[name] = self.zero(ftype)

        password = None
        if coll.is_auth:
            if creating or "email" in body:
                email = body.get("email", "")
                if not isinstance(email, str) or not email:
                    errors["email"] = leaf("validation_required", "Cannot be blank.")
                elif not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
                    errors["email"] = leaf("validation_is_email",
                                           "Must be a valid email address.")
                elif any(r.data.get("email", "").lower() == email.lower()
                         for r in others()):
                    errors["email"] = leaf("validation_not_unique",
                                           "Value must be unique.")
                data["email"] = email if isinstance(email, str) else ""
            if creating:
                data["emailVisibility"] = False
                data["verified"] = False
            if "emailVisibility" in body:
                data["emailVisibility"] = self.coerce(body["emailVisibility"], "bool")
            if "verified" in body and superuser:
                data["verified"] = self.coerce(body["verified"], "bool")
            if creating or "password" in body:
                password = body.get("password", "")
                if not isinstance(password, str) or not password:
                    errors["password"] = leaf("validation_required", "Cannot be blank.")
                elif len(password) < 8:
                    errors["password"] = leaf("validation_min_text_constraint",
                                              "Must be at least 8 character(s).")
                confirm = body.get("passwordConfirm")
                if confirm is not None and confirm != password:
                    errors["passwordConfirm"] = leaf("validation_values_mismatch",
                                                     "Values don't match.")

        rows = others() if coll.unique else ()
        for group in coll.unique:
            values = tuple(data.get(f) for f in group)
            if any(tuple(r.data.get(f) for f in group) == values for r in rows):
                errors.setdefault(group[0], leaf("validation_not_unique",
                                                 "Value must be unique."))
        if errors:
            raise PbError(400, "Failed to %s record." %
                          ("create" if creating else "update"), errors)

        now = stamp or pb_time(time.time())
        if creating:
            if coll.created_field:
                data["created"] = now
            if coll.updated_field:
                data["updated"] = now
        elif coll.updated_field:
            data["updated"] = now
        if not creating:
            return data, password
        self.rowid += 1
        out = Record(coll, data, self.rowid)
        if coll.is_auth:
            out.password = password
            out.token_key = b64url(os.urandom(36))
        return out

    @staticmethod
    def coerce(v, ftype):
        if ftype in ("", "json"):
            if isinstance(v, float):
                return tidy_number(v)
            return v
        if ftype == "number":
            if isinstance(v, bool):
                return int(v)
            if isinstance(v, (int, float)):
                return tidy_number(float(v)) if math.isfinite(v) else 0
            if isinstance(v, str):
                n = _as_number(v)
                return n if n is not None else 0
            return 0
        if ftype == "bool":
            if isinstance(v, str):
                return v.strip().lower() in ("1", "t", "true")
            return bool(v)
        if v is None:
            return ""
        return v if isinstance(v, str) else _as_text(v)

    @staticmethod
    def zero(ftype):
        if ftype == "number":
            return 0
        if ftype == "bool":
            return False
        if ftype in ("", "json"):
            return None if ftype == "json" else ""
        return ""

    def insert(self, coll, recs):
        for rec in recs:
            coll.records.append(rec)
            coll.by_id[rec.id] = rec

    def make_visible(self, recs):
        """The commit: the records show up, then realtime hears of them."""
        live = [r for r in recs if r.coll.by_id.get(r.id) is r]
        for rec in live:
            rec.visible = True
        for rec in live:
            self.fire(rec.coll, "create", rec)

    def remove(self, rec):
        coll = rec.coll
        coll.records.remove(rec)
        coll.by_id.pop(rec.id, None)
        if coll.is_auth:
            self.forget_auth(rec)

    def forget_auth(self, rec):
        """PocketBase quietly drops a realtime client's auth when its record
        changes password/tokenKey or goes away."""
        for c in self.clients.values():
            if c.auth is not None and c.auth.rec is rec:
                c.auth = None

    def export(self, rec, viewer, fields=None):
        """The record as the API shows it to viewer (an Auth or None)."""
        out = dict(rec.data)
        out["collectionId"] = rec.coll.id
        out["collectionName"] = rec.coll.name
        if rec.coll.is_auth and not out.get("emailVisibility") and not \
                is_superuser(viewer) and not (viewer is not None and viewer.rec is rec):
            out.pop("email", None)
        return pick(out, fields)

    def allowed(self, coll, rule, rec, auth):
        """Whether auth may see rec under rule (None: superusers only)."""
        if is_superuser(auth):
            return True
        if rule is None:
            return False
        if rule == "":
            return True
        try:
            return evaluate(coll.compiled(rule), rec.data, auth)
        except FilterError:
            return False

    # -- tokens -----------------------------------------------------------

    def issue_token(self, coll, rec):
        exp = int(time.time() + coll.token_ttl)
        if self.legacy:
            if coll.name == SUPERUSERS:
                claims = {"exp": exp, "id": rec.id, "type": "admin"}
            else:
                claims = {"collectionId": coll.id, "exp": exp, "id": rec.id,
                          "type": "authRecord"}
        else:
            claims = {"collectionId": coll.id, "exp": exp, "id": rec.id,
                      "refreshable": True, "type": "auth"}
        head = b64url(b'{"alg":"HS256","typ":"JWT"}')
        body = b64url(go_json(claims).encode("utf-8"))
        signing = (head + "." + body).encode("ascii")
        sig = hmac.new((rec.token_key + self.secret).encode("utf-8"), signing,
                       hashlib.sha256).digest()
        return head + "." + body + "." + b64url(sig)

    def verify_token(self, token):
        """The Auth a token stands for, or None for anything wrong with it
        (PocketBase then serves the request as a guest)."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            head = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
        except (ValueError, TypeError):
            return None
        if not isinstance(head, dict) or head.get("alg") != "HS256" \
                or not isinstance(claims, dict):
            return None
        kind = claims.get("type")
        if self.legacy and kind == "admin":
            coll = self.control_collection(SUPERUSERS)
        elif (kind == "authRecord") if self.legacy else (kind == "auth"):
            coll = next((c for c in self.collections
                         if c.id == claims.get("collectionId")
                         and c.is_auth and not c.hidden), None)
        else:
            return None
        if coll is None or not isinstance(claims.get("id"), str):
            return None
        rec = coll.visible(claims["id"])
        if rec is None:
            return None
        signing = (parts[0] + "." + parts[1]).encode("ascii", "replace")
        want = b64url(hmac.new((rec.token_key + self.secret).encode("utf-8"),
                               signing, hashlib.sha256).digest())
        if not hmac.compare_digest(want, parts[2]):
            return None
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) \
                or time.time() >= exp:
            return None
        return Auth(coll, rec)

    def auth_of(self, req):
        token = req.header("authorization") or ""
        if self.legacy:
            if token.startswith("Bearer "):
                token = token[7:]
        elif len(token) > 7 and token[:7].lower() == "bearer ":
            token = token[7:]
        return self.verify_token(token) if token else None

    # -- responses ----------------------------------------------------------

    async def send_json(self, req, conn, status, obj, headers=()):
        body = (go_json(obj) + "\n").encode("utf-8")
        return await self.respond(req, conn, status, body,
                                  list(headers) + SECURITY_HEADERS,
                                  ctype="application/json")

    async def send_pb_error(self, req, conn, status, message=None, data=None):
        obj = {"data": data or {},
               "message": message or DEFAULT_MESSAGES.get(status, ERR_GENERIC)}
        obj["code" if self.legacy else "status"] = status
        return await self.send_json(req, conn, status, obj)

    async def respond_error(self, req, conn, status, reason_text, headers=()):
        """Errors raised by the shared plumbing, in PocketBase's shape."""
        obj = {"data": {}, "message": DEFAULT_MESSAGES.get(status, ERR_GENERIC)}
        obj["code" if self.legacy else "status"] = status
        body = (go_json(obj) + "\n").encode("utf-8")
        return await self.respond(req, conn, status, body, headers,
                                  ctype="application/json")

    async def send_control(self, req, conn, status, obj):
        body = json.dumps(obj).encode("utf-8")
        return await self.respond(req, conn, status, body,
                                  ctype="application/json")

    def read_body(self, req):
        """The submitted data: JSON, multipart/form-data (with the SDK's
        @jsonPayload) or a urlencoded form; always a dict."""
        ctype = (req.header("content-type") or "").lower()
        raw = req.body
        if ctype.startswith("multipart/form-data"):
            return self.read_multipart(req)
        if ctype.startswith("application/x-www-form-urlencoded"):
            return dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace"),
                                               keep_blank_values=True))
        if not raw.strip():
            return {}
        try:
            obj = json.loads(raw)
        except ValueError:
            raise PbError(400, MSG_BAD_BODY)
        if not isinstance(obj, dict):
            raise PbError(400, MSG_BAD_BODY)
        return obj

    def read_multipart(self, req):
        ctype = req.header("content-type") or ""
        m = re.search(r'boundary="?([^";]+)"?', ctype)
        if m is None:
            raise PbError(400, MSG_BAD_BODY)
        delim = b"--" + m.group(1).encode("latin-1")
        out = {}
        for part in req.body.split(delim)[1:]:
            if part.startswith(b"--"):
                break
            if part.startswith(b"\r\n"):
                part = part[2:]
            head, sep, value = part.partition(b"\r\n\r\n")
            if not sep:
                raise PbError(400, MSG_BAD_BODY)
            if value.endswith(b"\r\n"):
                value = value[:-2]
            nm = re.search(rb'name="([^"]*)"', head)
            if nm is None or re.search(rb"filename=", head):
                continue  # no file fields here
            out[nm.group(1).decode("utf-8", "replace")] = \
                value.decode("utf-8", "replace")
        if "@jsonPayload" in out:
            try:
                extra = json.loads(out.pop("@jsonPayload"))
            except ValueError:
                raise PbError(400, MSG_BAD_BODY)
            if isinstance(extra, dict):
                out.update(extra)
        return out

    # -- dispatch -------------------------------------------------------------

    async def dispatch(self, req, conn):
        if req.path.startswith("/_pb/"):
            try:
                return await self.control(req, conn)
            except HttpError as e:
                return await self.send_control(
                    req, conn, e.status, {"ok": False, "error": e.reason})
            except PbError as e:
                return await self.send_control(
                    req, conn, e.status,
                    {"ok": False, "error": e.message, "data": e.data})
        return await super().dispatch(req, conn)

    def reset(self):
        super().reset()
        self.faults = {}
        self.list_fail_left = None
        self.auth_fail_left = None
        self.buckets.clear()
        self.list_release.set()
        self.list_release = asyncio.Event()

    async def route(self, req, conn):
        try:
            if req.path.startswith("/api/"):
                self.rate_limit(req)
            return await self.api(req, conn)
        except PbError as e:
            return await self.send_pb_error(req, conn, e.status, e.message, e.data)

    def rate_limit(self, req):
        rule = self.faults.get("rate_limit")
        if not rule or self.legacy:
            return
        ip = req.peer[0] if isinstance(req.peer, tuple) and req.peer else ""
        now = time.monotonic()
        bucket = self.buckets.get(ip)
        if bucket is None or now - bucket[0] >= rule["window_ms"] / 1000.0:
            bucket = self.buckets[ip] = [now, 0]
        if bucket[1] >= rule["max"]:
            raise PbError(429)
        bucket[1] += 1

    async def api(self, req, conn):
        path, method = req.path, req.method
        if path == "/api/health" and method in ("GET", "HEAD"):
            return await self.send_json(req, conn, 200, {
                "code": 200, "data": {}, "message": "API is healthy."})
        if path == "/api/realtime":
            if method == "GET":
                return await self.realtime_stream(req, conn)
            if method == "POST":
                return await self.realtime_subscribe(req, conn)
        if self.legacy and method == "POST":
            if path == "/api/admins/auth-with-password":
                return await self.admin_auth(req, conn)
            if path == "/api/admins/auth-refresh":
                return await self.admin_refresh(req, conn)
        if path == "/api/collections" and method == "POST":
            return await self.create_collection(req, conn)
        segs = path.split("/")
        if len(segs) >= 4 and segs[:3] == ["", "api", "collections"] and segs[3]:
            ident = urllib.parse.unquote(segs[3])
            rest = segs[4:]
            rid = urllib.parse.unquote(rest[1]) if len(rest) == 2 else ""
            if not rest and method == "GET":
                return await self.view_collection(req, conn, ident)
            if rest == ["records"]:
                if method == "GET":
                    return await self.list_records(req, conn, ident)
                if method == "POST":
                    return await self.create_record(req, conn, ident)
            if len(rest) == 2 and rest[0] == "records" and rid:
                if method == "GET":
                    return await self.view_record(req, conn, ident, rid)
                if method == "PATCH":
                    return await self.update_record(req, conn, ident, rid)
                if method == "DELETE":
                    return await self.delete_record(req, conn, ident, rid)
            if rest == ["auth-with-password"] and method == "POST":
                return await self.auth_with_password(req, conn, ident)
            if rest == ["auth-refresh"] and method == "POST":
                return await self.auth_refresh(req, conn, ident)
        raise PbError(404)

    # -- records list -------------------------------------------------------

    def take_list_fault(self):
        """Which list fault (if any) this request gets; counts it down."""
        if "list_status" not in self.faults and "list_malformed" not in self.faults:
            return None
        if self.list_fail_left is not None:
            if self.list_fail_left <= 0:
                return None
            self.list_fail_left -= 1
        if "list_status" in self.faults:
            return ("status", self.faults["list_status"])
        return ("malformed", self.faults["list_malformed"])

    async def hold_list(self, ident):
        """list_hold: after `after` more list requests of `collection`,
        each waits until the switch is removed."""
        rule = self.faults.get("list_hold")
        if not rule or urllib.parse.unquote(ident) != rule["collection"]:
            return
        if rule["after"] > 0:
            rule["after"] -= 1
            return
        self.list_held += 1
        try:
            await self.list_release.wait()
        finally:
            self.list_held -= 1

    async def list_records(self, req, conn, ident):
        await self.hold_list(ident)
        fault = self.take_list_fault()
        if fault is not None and fault[0] == "status":
            return await self.send_pb_error(req, conn, fault[1])
        try:
            result = self.list_result(req, ident)
        except PbError:
            if fault is None:
                raise
            result = {"items": [], "page": 1, "perPage": DEFAULT_PER_PAGE,
                      "totalItems": -1, "totalPages": -1}
        if fault is not None:
            return await self.send_malformed(req, conn, fault[1], result)
        return await self.send_json(req, conn, 200, result)

    def list_result(self, req, ident):
        coll = self.find_collection(ident)
        if coll is None:
            raise PbError(404, MSG_NO_COLLECTION)
        auth = self.auth_of(req)
        su = is_superuser(auth)
        if coll.list_rule is None and not su:
            raise PbError(403, MSG_SUPERUSERS_ONLY)
        q = first_values(req)
        if not su:
            for param in ("filter", "sort"):
                for special in ("@collection.", "@request."):
                    if special in q.get(param, ""):
                        raise PbError(403, "Only superusers can filter by " + special)

        page = self.int_param(q, "page", 1)
        per_page = self.int_param(q, "perPage", DEFAULT_PER_PAGE)
        page = 1 if page <= 0 else page
        limit = MAX_PER_PAGE_LEGACY if self.legacy else MAX_PER_PAGE
        per_page = DEFAULT_PER_PAGE if per_page <= 0 else min(per_page, limit)
        skip_total = False
        if q.get("skipTotal", "") != "":
            skip_total = self.go_bool(q["skipTotal"])

        try:
            sort = self.parse_sort(q.get("sort", ""), coll)
            raw_filter = q.get("filter", "")
            if len(raw_filter.encode("utf-8")) > MAX_FILTER_BYTES:
                raise FilterError("filter too long")
            flt = compile_filter(raw_filter, set(coll.names())) if raw_filter else None
            rule = None
            if not su and coll.list_rule:
                rule = coll.compiled(coll.list_rule)
        except FilterError:
            raise PbError(400)

        rows = [r for r in coll.records if r.visible]
        if rule is not None:
            rows = [r for r in rows if evaluate(rule, r.data, auth)]
        if flt is not None:
            rows = [r for r in rows if evaluate(flt, r.data, auth)]
        rows = self.sort_rows(rows, sort)
        fields = parse_fields(q["fields"]) if q.get("fields") else None
        start = (page - 1) * per_page
        items = [self.export(r, auth, fields) for r in rows[start:start + per_page]]
        total = len(rows)
        return {
            "items": items, "page": page, "perPage": per_page,
            "totalItems": -1 if skip_total else total,
            "totalPages": -1 if skip_total else math.ceil(total / per_page),
        }

    @staticmethod
    def int_param(q, name, default):
        raw = q.get(name, "")
        if raw == "":
            return default
        if not re.fullmatch(r"[+-]?[0-9]+", raw):
            raise PbError(400)
        return int(raw)

    @staticmethod
    def go_bool(raw):
        if raw in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if raw in ("0", "f", "F", "FALSE", "false", "False"):
            return False
        raise PbError(400)

    def parse_sort(self, raw, coll):
        """[(name, descending)] from `-created,id`; FilterError when wrong."""
        if raw.strip() == "":
            return []
        names = set(coll.names())
        out = []
        for item in raw.split(","):
            item = item.strip()
            desc = item.startswith("-")
            if item[:1] in ("-", "+"):
                item = item[1:].strip()
            if not item or len(item) > 255:
                raise FilterError("bad sort field")
            if item not in names and item != "@random" and \
                    not (item == "@rowid" and not self.legacy):
                raise FilterError("unknown sort field %r" % item)
            out.append((item, desc))
        if len(out) > MAX_SORT_FIELDS:
            raise FilterError("too many sort fields")
        return out

    @staticmethod
    def sort_rows(rows, sort):
        """A stable sort, last key first, as ORDER BY would order them (NULL
        first, then numbers, then text)."""
        rows = list(rows)
        for name, desc in reversed(sort):
            if name == "@rowid":
                key = lambda r: (1, r.rowid)  # noqa: E731
            elif name == "@random":
                weights = {id(r): _rng.random() for r in rows}
                key = lambda r, w=weights: (1, w[id(r)])  # noqa: E731
            else:
                def key(r, name=name):
                    v = _scalar(r.data.get(name))
                    if v is None:
                        return (0, 0)
                    if isinstance(v, (int, float)):
                        return (1, v)
                    return (2, v)
            rows.sort(key=key, reverse=desc)
        return rows

    async def send_malformed(self, req, conn, mode, result):
        """A 200 answer whose body a consumer must refuse."""
        if mode == "html":
            body = (b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title>"
                    b"</head><body><h1>Bad Gateway</h1></body></html>\n")
            return await self.respond(req, conn, 200, body,
                                      ctype="text/html; charset=utf-8")
        if mode == "bad_json":
            text = go_json(result)
            return await self.respond(req, conn, 200,
                                      text[:max(10, len(text) // 2)].encode("utf-8"),
                                      ctype="application/json")
        result = dict(result)
        items = list(result["items"])
        if not items:
            items = [{"collectionId": "pbc_0000000000", "collectionName": "x",
                      "created": pb_time(time.time()), "id": random_id(),
                      "updated": pb_time(time.time())}]
        first = dict(items[0]) if isinstance(items[0], dict) else {}
        if mode == "no_items":
            del result["items"]
        elif mode == "items_not_array":
            result["items"] = {"0": first}
        elif mode == "item_not_object":
            result["items"] = ["not-an-object"] + items[1:]
        elif mode == "id_not_string":
            first["id"] = 12345
            result["items"] = [first] + items[1:]
        elif mode == "created_not_string":
            first["created"] = 1767225600123
            result["items"] = [first] + items[1:]
        return await self.send_json(req, conn, 200, result)

    # -- single records -------------------------------------------------------

    def api_collection(self, ident):
        coll = self.find_collection(ident)
        if coll is None:
            raise PbError(404, MSG_NO_COLLECTION)
        return coll

    async def view_record(self, req, conn, ident, rid):
        coll = self.api_collection(ident)
        auth = self.auth_of(req)
        if coll.view_rule is None and not is_superuser(auth):
            raise PbError(403, MSG_SUPERUSERS_ONLY)
        rec = coll.visible(rid)
        if rec is None or not self.allowed(coll, coll.view_rule, rec, auth):
            raise PbError(404)
        fields = first_values(req).get("fields")
        return await self.send_json(
            req, conn, 200, self.export(rec, auth, parse_fields(fields) if fields else None))

    async def create_record(self, req, conn, ident):
        coll = self.api_collection(ident)
        auth = self.auth_of(req)
        su = is_superuser(auth)
        if coll.create_rule is None and not su:
            raise PbError(403, MSG_SUPERUSERS_ONLY)
        body = self.read_body(req)
        if not su and coll.is_auth:
            body.pop("verified", None)
        rec = self.build_record(coll, body, superuser=su, creating=True)
        if not su and coll.create_rule:
            if not self.allowed(coll, coll.create_rule, rec, auth):
                raise PbError(400, "Failed to create record.")
        self.insert(coll, [rec])
        self.make_visible([rec])
        fields = first_values(req).get("fields")
        return await self.send_json(
            req, conn, 200, self.export(rec, auth, parse_fields(fields) if fields else None))

    async def update_record(self, req, conn, ident, rid):
        coll = self.api_collection(ident)
        auth = self.auth_of(req)
        su = is_superuser(auth)
        if coll.update_rule is None and not su:
            raise PbError(403, MSG_SUPERUSERS_ONLY)
        rec = coll.visible(rid)
        if rec is None:
            raise PbError(404)
        body = self.read_body(req)
        if not self.allowed(coll, coll.update_rule, rec, auth):
            raise PbError(404)
        data, password = self.build_record(coll, body, superuser=su,
                                           creating=False, rec=rec)
        rec.data = data
        if password is not None:
            rec.password = password
            rec.token_key = b64url(os.urandom(36))
            self.forget_auth(rec)
        self.fire(coll, "update", rec)
        fields = first_values(req).get("fields")
        return await self.send_json(
            req, conn, 200, self.export(rec, auth, parse_fields(fields) if fields else None))

    async def delete_record(self, req, conn, ident, rid):
        coll = self.api_collection(ident)
        auth = self.auth_of(req)
        if coll.delete_rule is None and not is_superuser(auth):
            raise PbError(403, MSG_SUPERUSERS_ONLY)
        rec = coll.visible(rid)
        if rec is None or not self.allowed(coll, coll.delete_rule, rec, auth):
            raise PbError(404)
        self.fire(coll, "delete", rec)  # access is judged on the record as it was
        self.remove(rec)
        return await self.respond(req, conn, 204, b"", SECURITY_HEADERS)

    # -- collections ---------------------------------------------------------

    def require_superuser(self, req):
        auth = self.auth_of(req)
        if self.legacy:
            if not is_superuser(auth):
                raise PbError(401, "The request requires valid admin "
                              "authorization token to be set.")
        elif auth is None:
            raise PbError(401, MSG_NEED_TOKEN)
        elif not auth.superuser:
            raise PbError(403, "The authorized record is not allowed to "
                          "perform this action.")
        return auth

    async def view_collection(self, req, conn, ident):
        self.require_superuser(req)
        coll = self.find_collection(ident)
        if coll is None:
            raise PbError(404)
        return await self.send_json(req, conn, 200, coll.describe())

    async def create_collection(self, req, conn):
        self.require_superuser(req)
        body = self.read_body(req)
        coll = self.collection_from_api(body)
        return await self.send_json(req, conn, 200, coll.describe())

    def collection_from_api(self, body):
        """POST /api/collections: a base (or auth) collection; created and
        updated exist only when listed as autodate fields."""
        errors = {}
        name = body.get("name")
        if not isinstance(name, str) or not name:
            errors["name"] = leaf("validation_required", "Cannot be blank.")
        elif not re.fullmatch(r"\w+", name):
            errors["name"] = leaf("validation_invalid_name",
                                  "Invalid collection name.")
        elif any(c.name.lower() == name.lower() for c in self.collections):
            errors["name"] = leaf("validation_collection_name_exists",
                                  "Collection name must be unique (case insensitive).")
        type_ = body.get("type", "base")
        if type_ not in ("base", "auth"):
            errors["type"] = leaf("validation_in_invalid", "Must be a valid value.")
        raw_fields = body.get("fields", body.get("schema", [])) or []
        fields, created, updated = [], False, False
        if not isinstance(raw_fields, list):
            errors["fields"] = leaf("validation_invalid_type", "Must be a list.")
            raw_fields = []
        for f in raw_fields:
            if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                errors["fields"] = leaf("validation_invalid_field", "Invalid field.")
                continue
            fname, ftype = f["name"], f.get("type", "text")
            if ftype == "autodate" and fname == "created":
                created = True
            elif ftype == "autodate" and fname == "updated":
                updated = True
            elif fname not in ("id", "created", "updated"):
                fields.append((fname, ftype))
        indexes = body.get("indexes") or []
        unique = []
        for ix in indexes if isinstance(indexes, list) else []:
            m = re.match(r"\s*CREATE\s+UNIQUE\s+INDEX\s+.*?\bON\s+[`\"\[]?\w+[`\"\]]?"
                         r"\s*\(([^)]*)\)", str(ix), re.IGNORECASE | re.DOTALL)
            if m:
                unique.append([c.strip().strip("`\"[]").split()[0]
                               for c in m.group(1).split(",") if c.strip()])
        rules = {}
        for key in ("listRule", "viewRule", "createRule", "updateRule", "deleteRule"):
            rules[key] = body.get(key)
        if errors:
            raise PbError(400, "Failed to create collection.", errors)
        coll = Collection(self, name, type_, fields=fields,
                          list_rule=rules["listRule"], view_rule=rules["viewRule"],
                          create_rule=rules["createRule"],
                          update_rule=rules["updateRule"],
                          delete_rule=rules["deleteRule"], created=created,
                          updated=updated, unique=unique, indexes=indexes,
                          token_ttl=self.default_ttl())
        self.check_rules(coll)
        return self.add_collection(coll)

    def default_ttl(self):
        return TTL_RECORDS if self.args.token_ttl is None else self.args.token_ttl

    @staticmethod
    def check_rules(coll):
        for key, rule in (("listRule", coll.list_rule), ("viewRule", coll.view_rule),
                          ("createRule", coll.create_rule),
                          ("updateRule", coll.update_rule),
                          ("deleteRule", coll.delete_rule)):
            if rule is not None and not isinstance(rule, str):
                raise PbError(400, "Failed to create collection.",
                              {key: leaf("validation_invalid_rule", "Invalid rule.")})
            if rule:
                try:
                    coll.compiled(rule)
                except FilterError as e:
                    raise PbError(400, "Failed to create collection.",
                                  {key: leaf("validation_invalid_rule",
                                             "Invalid rule. %s" % e)})

    # -- auth -------------------------------------------------------------------

    def password_login(self, coll, body):
        identity = body.get("identity")
        password = body.get("password")
        for v in (identity, password):
            if not isinstance(v, str) or not v or len(v) > 255:
                raise PbError(400, MSG_AUTH_FAILED)
        rec = next((r for r in coll.records if r.visible and
                    r.data.get("email", "").lower() == identity.lower()), None)
        if rec is None or not hmac.compare_digest(
                (rec.password or "").encode("utf-8"), password.encode("utf-8")):
            raise PbError(400, MSG_AUTH_FAILED)
        return rec

    def auth_fault(self):
        """auth_status: the next auth_fail logins and refreshes (every one
        without auth_fail) answer that status."""
        status = self.faults.get("auth_status")
        if status is None:
            return
        if self.auth_fail_left is not None:
            if self.auth_fail_left <= 0:
                return
            self.auth_fail_left -= 1
        raise PbError(status)

    async def auth_with_password(self, req, conn, ident):
        self.auth_fault()
        coll = self.find_collection(ident)
        if coll is None or not coll.is_auth:
            raise PbError(404, MSG_NO_AUTH_COLLECTION)
        rec = self.password_login(coll, self.read_body(req))
        if self.faults.get("auth_mfa"):
            # The first factor passed and MFA wants a second: 401 with only
            # the id of the MFA session, no status key.
            return await self.send_json(req, conn, 401,
                                        {"mfaId": random_id()})
        auth = Auth(coll, rec)
        return await self.send_json(req, conn, 200, {
            "record": self.export(rec, auth), "token": self.issue_token(coll, rec)})

    async def auth_refresh(self, req, conn, ident):
        self.auth_fault()
        auth = self.auth_of(req)
        if auth is None or (self.legacy and auth.superuser):
            raise PbError(401, MSG_NEED_TOKEN + (" to be set." if self.legacy else ""))
        coll = self.find_collection(ident)
        if coll is None or coll is not auth.coll:
            raise PbError(403, "The request requires auth record from %s "
                          "collection." % auth.coll.name)
        return await self.send_json(req, conn, 200, {
            "record": self.export(auth.rec, auth),
            "token": self.issue_token(auth.coll, auth.rec)})

    def admin_json(self, rec):
        return {"avatar": 0, "created": rec.data.get("created", ""),
                "email": rec.data.get("email", ""), "id": rec.id,
                "updated": rec.data.get("updated", "")}

    async def admin_auth(self, req, conn):
        self.auth_fault()
        coll = self.control_collection(SUPERUSERS)
        rec = self.password_login(coll, self.read_body(req))
        return await self.send_json(req, conn, 200, {
            "admin": self.admin_json(rec), "token": self.issue_token(coll, rec)})

    async def admin_refresh(self, req, conn):
        auth = self.auth_of(req)
        if not is_superuser(auth):
            raise PbError(401, "The request requires valid admin authorization "
                          "token to be set.")
        return await self.send_json(req, conn, 200, {
            "admin": self.admin_json(auth.rec),
            "token": self.issue_token(auth.coll, auth.rec)})

    # -- realtime -------------------------------------------------------------

    def fire(self, coll, action, rec):
        """Sends a record event to every client whose topics take it."""
        if self.faults.get("realtime_drop"):
            return
        group = self.faults.get("realtime_reorder") or 0
        for client in list(self.clients.values()):
            for topic in client.topics:
                if not topic.matches(coll, rec):
                    continue
                rule = coll.list_rule if topic.record_id is None else coll.view_rule
                if not self.allowed(coll, rule, rec, client.auth):
                    continue
                if topic.filter is not None:
                    try:
                        if not evaluate(coll.compiled(topic.filter), rec.data,
                                        client.auth):
                            continue
                    except FilterError:
                        continue
                data = go_json({"action": action,
                                "record": self.export(rec, client.auth, topic.fields)})
                frame = ("id:%s\nevent:%s\ndata:%s\n\n"
                         % (client.id, topic.raw, data)).encode("utf-8")
                if group > 1:
                    client.hold(frame, group)
                else:
                    client.push(frame)

    async def realtime_stream(self, req, conn):
        client = RtClient(random_client_id(), conn,
                          req.peer[0] if isinstance(req.peer, tuple) else "")
        while client.id in self.clients:
            client.id = random_client_id()
        self.clients[client.id] = client
        headers = [("Cache-Control", "no-store"),
                   ("Content-Type", "text/event-stream"),
                   ("Transfer-Encoding", "chunked"),
                   ("X-Accel-Buffering", "no")] + SECURITY_HEADERS
        idle = self.args.realtime_idle
        lifetime = None if self.legacy else self.args.realtime_lifetime
        started = time.monotonic()
        eof = getter = None
        mode = "clean"
        stray = False  # the client wrote while streaming: close at the end
        try:
            await conn.send_head(200, headers, self.date_skew(req))
            hello = ('id:%s\nevent:PB_CONNECT\ndata:{"clientId":"%s"}\n\n'
                     % (client.id, client.id)).encode("ascii")
            conn.write(b"%x\r\n%s\r\n" % (len(hello), hello))
            await conn.drain()
            client.last_sent = time.monotonic()
            eof = asyncio.ensure_future(conn.reader.read(1))
            while True:
                if client.stop_mode is not None:
                    mode = client.stop_mode
                    break
                deadline = client.last_sent + idle
                if lifetime is not None:
                    deadline = min(deadline, started + lifetime)
                left = deadline - time.monotonic()
                if left <= 0:
                    break  # idle or lifetime: a clean end
                if getter is None:
                    getter = asyncio.ensure_future(client.queue.get())
                done, _ = await asyncio.wait(
                    {getter, eof}, timeout=left,
                    return_when=asyncio.FIRST_COMPLETED)
                if eof in done:
                    if not eof.result():
                        mode = "gone"
                        break
                    stray = True
                    eof = asyncio.get_running_loop().create_future()
                if getter in done:
                    frame = getter.result()
                    getter = None
                    if frame is None:
                        continue  # a stop request; the loop head reads it
                    conn.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                    await conn.drain()
                    client.last_sent = time.monotonic()
        finally:
            self.clients.pop(client.id, None)
            client.closed = True
            if client.flush_handle is not None:
                client.flush_handle.cancel()
            waiting = [t for t in (getter, eof) if t is not None and not t.done()]
            for t in waiting:
                t.cancel()
            if waiting:
                await asyncio.wait(waiting)
        if mode == "gone":
            return False
        if mode == "drop":
            await conn.reset()
            return False
        conn.write(b"0\r\n\r\n")
        await conn.drain()
        return req.keep_alive and not stray

    async def realtime_subscribe(self, req, conn):
        body = self.read_body(req)
        cid = body.get("clientId", "")
        subs = body.get("subscriptions")
        subs = [] if subs is None else subs
        errors = {}
        if not isinstance(cid, str) or cid == "":
            errors["clientId"] = leaf("validation_required", "Cannot be blank.")
        elif len(cid) > 255:
            errors["clientId"] = leaf("validation_length_out_of_range",
                                      "The length must be between 1 and 255.")
        if not isinstance(subs, list) or not all(isinstance(s, str) for s in subs):
            errors["subscriptions"] = leaf("validation_invalid_type",
                                           "Must be a list of strings.")
        elif len(subs) > 1000:
            errors["subscriptions"] = leaf("validation_length_too_long",
                                           "The length must be no more than 1000.")
        else:
            long_ones = {str(i): leaf("validation_length_too_long",
                                      "The length must be no more than 2500.")
                         for i, s in enumerate(subs) if len(s) > 2500}
            if long_ones:
                errors["subscriptions"] = long_ones
        if errors:
            raise PbError(400, None, errors)
        client = self.clients.get(cid)
        if client is None:
            raise PbError(404, MSG_NO_CLIENT)
        ip = req.peer[0] if isinstance(req.peer, tuple) else ""
        if not self.legacy and client.ip != ip:
            raise PbError(400, "Invalid realtime client.")
        auth = self.auth_of(req)
        if client.auth is not None and (auth is None or auth.key != client.auth.key):
            raise PbError(403, MSG_AUTH_MISMATCH)
        client.auth = auth
        seen, topics = set(), []
        for s in subs:
            if s and s not in seen:
                seen.add(s)
                topics.append(Topic(s))
        client.topics = topics
        return await self.respond(req, conn, 204, b"", SECURITY_HEADERS)

    # -- control paths (/_pb/...) --------------------------------------------

    @staticmethod
    def control_body(req):
        if not req.body.strip():
            return {}
        try:
            obj = json.loads(req.body)
        except ValueError:
            raise HttpError(400, "the body is not JSON")
        if not isinstance(obj, dict):
            raise HttpError(400, "the body must be a JSON object")
        return obj

    async def control(self, req, conn):
        path, method = req.path, req.method
        handlers = {
            ("POST", "/_pb/collections"): self.ctl_collections,
            ("POST", "/_pb/users"): self.ctl_users,
            ("POST", "/_pb/create"): self.ctl_create,
            ("POST", "/_pb/faults"): self.ctl_faults,
            ("GET", "/_pb/faults"): self.ctl_faults,
            ("POST", "/_pb/drop_streams"): self.ctl_drop_streams,
            ("POST", "/_pb/password"): self.ctl_password,
            ("POST", "/_pb/token_ttl"): self.ctl_token_ttl,
            ("GET", "/_pb/clients"): self.ctl_clients,
            ("GET", "/_pb/records"): self.ctl_records,
        }
        handler = handlers.get((method, path))
        if handler is None:
            raise HttpError(404, "no control path %s %s" % (method, path))
        body = self.control_body(req) if method == "POST" else {}
        result = handler(req, body)
        if isinstance(result, dict) and "ok" not in result:
            result = dict(ok=True, **result)
        return await self.send_control(req, conn, 200, result)

    def ctl_collections(self, req, body):
        name = body.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"\w+", name):
            raise HttpError(400, "name: letters, digits and _ only")
        if any(c.name.lower() == name.lower() for c in self.collections):
            raise HttpError(400, "collection %r exists" % name)
        type_ = body.get("type", "base")
        if type_ not in ("base", "auth"):
            raise HttpError(400, "type: base or auth")
        fields = []
        for f in body.get("fields", []):
            if isinstance(f, str):
                fields.append((f, ""))
            elif isinstance(f, dict) and isinstance(f.get("name"), str):
                fields.append((f["name"], f.get("type", "")))
            else:
                raise HttpError(400, "fields: names or {name, type}")
        fields = [(n, t) for n, t in fields if n not in ("id", "created", "updated")]
        names = {n for n, _ in fields} | {"id", "created", "updated"}
        unique = body.get("unique", [])
        for group in unique:
            if not isinstance(group, list) or not group or \
                    not all(isinstance(f, str) and f in names | {"email"}
                            for f in group):
                raise HttpError(400, "unique: lists of declared field names")
        list_rule = body.get("listRule")
        has_created = bool(body.get("has_created", True))
        coll = Collection(
            self, name, type_, fields=fields, list_rule=list_rule,
            view_rule=body.get("viewRule", list_rule),
            create_rule=body.get("createRule"),
            update_rule=body.get("updateRule"),
            delete_rule=body.get("deleteRule"),
            created=has_created, updated=has_created, unique=unique,
            token_ttl=self.default_ttl())
        try:
            self.check_rules(coll)
        except PbError as e:
            raise HttpError(400, "bad rule: %s" % json.dumps(e.data))
        self.add_collection(coll)
        return {"id": coll.id}

    def ctl_users(self, req, body):
        coll = self.control_collection(body.get("collection", "users"))
        if not coll.is_auth:
            raise HttpError(400, "%s is not an auth collection" % coll.name)
        data = {k: v for k, v in body.items() if k != "collection"}
        rec = self.build_record(coll, data, superuser=True, creating=True)
        self.insert(coll, [rec])
        self.make_visible([rec])
        return {"id": rec.id}

    def ctl_create(self, req, body):
        coll = self.control_collection(body.get("collection", ""))
        records = body.get("records", [{}])
        ids = body.get("ids") or []
        lag = body.get("lag_ms", 0) or 0
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise HttpError(400, "records: a list of objects")
        if not isinstance(ids, list) or not isinstance(lag, (int, float)) or lag < 0:
            raise HttpError(400, "ids: a list; lag_ms: a number >= 0")
        stamp = pb_time(time.time()) if body.get("same_ms") else None
        built = []
        for i, r in enumerate(records):
            r = dict(r)
            if i < len(ids):
                r["id"] = ids[i]
            built.append(self.build_record(coll, r, superuser=True, creating=True,
                                           stamp=stamp, pending=built))
        self.insert(coll, built)
        if lag > 0:
            asyncio.get_running_loop().call_later(lag / 1000.0, self.make_visible,
                                                  built)
        else:
            self.make_visible(built)
        return {"ids": [r.id for r in built],
                "created": [r.data.get("created", "") for r in built]}

    def ctl_faults(self, req, body):
        if req.method == "GET":
            return {"faults": self.faults, "list_fail_left": self.list_fail_left,
                    "list_held": self.list_held}
        known = {"list_status", "list_fail", "list_malformed", "realtime_drop",
                 "realtime_reorder", "rate_limit", "auth_mfa", "auth_status",
                 "auth_fail", "list_hold"}
        unknown = set(body) - known
        if unknown:
            raise HttpError(400, "unknown fault switches: %s" % ", ".join(sorted(unknown)))
        ls = body.get("list_status")
        if ls is not None and (not isinstance(ls, int) or not 100 <= ls <= 999):
            raise HttpError(400, "list_status: an HTTP status")
        lm = body.get("list_malformed")
        if lm is not None and lm not in MALFORMED_MODES:
            raise HttpError(400, "list_malformed: one of " + ", ".join(MALFORMED_MODES))
        lf = body.get("list_fail")
        if lf is not None and (not isinstance(lf, int) or lf < 0):
            raise HttpError(400, "list_fail: a count >= 0")
        ast = body.get("auth_status")
        if ast is not None and (not isinstance(ast, int) or not 100 <= ast <= 999):
            raise HttpError(400, "auth_status: an HTTP status")
        af = body.get("auth_fail")
        if af is not None and (not isinstance(af, int) or af < 0):
            raise HttpError(400, "auth_fail: a count >= 0")
        rr = body.get("realtime_reorder")
        if rr is not None and (not isinstance(rr, int) or rr < 0):
            raise HttpError(400, "realtime_reorder: a group size")
        lh = body.get("list_hold")
        if lh is not None and lh is not False and not (
                isinstance(lh, dict) and isinstance(lh.get("collection"), str)
                and isinstance(lh.get("after"), int) and lh["after"] >= 0):
            raise HttpError(400, "list_hold: {\"collection\": NAME, \"after\": N}")
        rl = body.get("rate_limit")
        if rl is not None and not (
                isinstance(rl, dict) and isinstance(rl.get("max"), int)
                and rl["max"] >= 0 and isinstance(rl.get("window_ms"), (int, float))
                and rl["window_ms"] > 0):
            raise HttpError(400, "rate_limit: {\"max\": N, \"window_ms\": W}")
        for key, value in body.items():
            if key in ("list_fail", "auth_fail"):
                continue
            if value is None or value is False:
                self.faults.pop(key, None)
            else:
                self.faults[key] = value
        # A list fault (or a bare list_fail) restarts the count: K, or every
        # request when list_fail is absent.
        if {"list_status", "list_malformed", "list_fail"} & set(body):
            self.list_fail_left = lf
        if "rate_limit" in body:
            self.buckets.clear()
        if "list_hold" in body:
            # Held requests go on; a new hold holds from now on.
            self.list_release.set()
            self.list_release = asyncio.Event()
        if {"auth_status", "auth_fail"} & set(body):
            self.auth_fail_left = af
        return {"faults": self.faults}

    def ctl_drop_streams(self, req, body):
        clients = list(self.clients.values())
        for c in clients:
            c.stop("clean" if body.get("clean") else "drop")
        return {"dropped": len(clients)}

    def ctl_password(self, req, body):
        coll = self.control_collection(body.get("collection", SUPERUSERS))
        email = str(body.get("email", "")).lower()
        password = body.get("password")
        if not isinstance(password, str) or not password:
            raise HttpError(400, "password: a non-empty string")
        rec = next((r for r in coll.records if r.data.get("email", "").lower() == email),
                   None)
        if rec is None:
            raise HttpError(400, "no %s record with email %r" % (coll.name, email))
        rec.password = password
        rec.token_key = b64url(os.urandom(36))
        self.forget_auth(rec)
        return {}

    def ctl_token_ttl(self, req, body):
        coll = self.control_collection(body.get("collection", SUPERUSERS))
        seconds = body.get("seconds")
        if not coll.is_auth or isinstance(seconds, bool) or \
                not isinstance(seconds, (int, float)):
            raise HttpError(400, "an auth collection and seconds: a number")
        coll.token_ttl = float(seconds)
        return {}

    def ctl_clients(self, req, body):
        return [{"clientId": c.id, "subscriptions": [t.raw for t in c.topics],
                 "auth": "%s/%s" % (c.auth.coll.name, c.auth.rec.id)
                 if c.auth is not None else None,
                 "connected_at": c.connected_at}
                for c in self.clients.values()]

    def ctl_records(self, req, body):
        coll = self.control_collection(req.query.get("collection", ""))
        return [{"record": self.export(r, None) if not coll.is_auth
                 else dict(self.export(r, None), email=r.data.get("email")),
                 "visible": r.visible} for r in coll.records]


def main(argv):
    p = httpbase.arg_parser("Reference PocketBase server for tether tests.")
    p.add_argument("--legacy", action="store_true",
                   help="behave as PocketBase <= v0.22 (code, /api/admins)")
    p.add_argument("--superuser", default="admin@example.com:secret-password-1",
                   metavar="EMAIL:PASSWORD")
    p.add_argument("--token-ttl", type=float, default=None, metavar="SECONDS",
                   help="token lifetime of every auth collection (default: "
                        "86400 for _superusers, 432000 for the others)")
    p.add_argument("--realtime-idle", type=float, default=300.0, metavar="SECONDS",
                   help="end a realtime stream after this long with no message")
    p.add_argument("--realtime-lifetime", type=float, default=1800.0,
                   metavar="SECONDS",
                   help="end a realtime stream after this long (not --legacy)")
    args = p.parse_args(argv)
    if ":" not in args.superuser or not args.superuser.partition(":")[2]:
        p.error("--superuser takes EMAIL:PASSWORD")
    for name in ("token_ttl", "realtime_idle", "realtime_lifetime"):
        v = getattr(args, name)
        if v is not None and (not math.isfinite(v) or v < 0):
            p.error("--%s must be a number >= 0" % name.replace("_", "-"))
    httpbase.run(PocketBaseApp(args))


if __name__ == "__main__":
    main(sys.argv[1:])
