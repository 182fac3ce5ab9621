#!/usr/bin/env python3
"""Reference JSON upstreams for tether's `http-poll` source.

    python3 tests/servers/poll_server.py --port 0 [--host H] [--unix PATH]
        [--docs N] [--opaque] [--ignore-timeout]
        [--rows N] [--ties SIZES]

Prints "listening on HOST:PORT" once it listens; SIGTERM stops it.

  GET  /db/_changes   CouchDB/pouchdb-server-like changes feed
  POST /db/doc        add (or update) a document: one more change
  GET  /events        json-server 0.17-like collection (_gte, _sort, _limit..)
  POST /events        add rows
  GET  /paged         GitHub-like pages with Link: <...>; rel="next"
  GET  /v1/events     generic ?after=ID&limit=N API, items under /data
  GET  /bad/...       invalid JSON, missing items, 2^64 integers, reals
  GET  /_requests, POST /_reset   the recorder

README.md lists every parameter; the contract is
/work/shared/protocols/sse-and-http-poll.md §§5, 6 and 8.
"""

import asyncio
import hashlib
import json
import random
import re
import sys
import urllib.parse

import httpbase
from httpbase import HttpError

BIG = 2 ** 64  # one past uint64: jansson refuses the whole document


def opaque_seq(n):
    """A CouchDB 2+-style opaque sequence for change number n."""
    tag = hashlib.sha1(b"seq-%d" % n).hexdigest()[:12]
    return "%d-g1AAAA%s" % (n, tag)


def etag_of(body, weak):
    tag = '"%s"' % hashlib.sha1(body).hexdigest()[:20]
    return "W/" + tag if weak else tag


def etag_matches(header, tag):
    """RFC 9110 §13.1.2: If-None-Match uses the weak comparison."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    bare = tag[2:] if tag.startswith("W/") else tag
    for t in header.split(","):
        t = t.strip()
        if t.startswith("W/"):
            t = t[2:]
        if t == bare:
            return True
    return False


def js_compare(query_value, field, op):
    """json-server's `value <= field` (op "gte") or `value >= field` (op
    "lte") for a query string and a row field: a number field compares
    numerically (a non-number query is NaN: false), a string lexically."""
    if isinstance(field, bool) or field is None:
        return False
    if isinstance(field, (int, float)):
        try:
            q = float(query_value)
        except ValueError:
            return False
    elif isinstance(field, str):
        q = query_value
    else:
        return False
    return q <= field if op == "gte" else q >= field


class PollApp(httpbase.App):
    name = "poll_server"

    def __init__(self, args):
        super().__init__(args)
        self.changes = []  # [{"seq": int, "id": str, "rev": str}], by seq
        self.seq = 0
        self.revs = {}
        for i in range(1, args.docs + 1):
            self.add_doc("doc-%d" % i)
        self.rows = self.make_rows(args.rows, args.ties)
        self._changed = None

    # -- change notification --------------------------------------------

    @property
    def changed(self):
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def wake(self):
        self.changed.set()
        self._changed = asyncio.Event()

    # -- data -----------------------------------------------------------

    def add_doc(self, doc_id, deleted=False):
        self.seq += 1
        n = self.revs.get(doc_id, 0) + 1
        self.revs[doc_id] = n
        # Only the latest change of a document stays in the feed.
        self.changes = [c for c in self.changes if c["id"] != doc_id]
        c = {"seq": self.seq, "id": doc_id,
             "rev": "%d-%s" % (n, hashlib.md5(b"%s-%d" % (doc_id.encode(), n))
                              .hexdigest()[:10])}
        if deleted:
            c["deleted"] = True
        self.changes.append(c)
        return c

    @staticmethod
    def make_rows(n, ties):
        """Rows {id, seq, name}. Without --ties, n rows with seq = id. With
        --ties 1,3,1,5 the groups share one seq each (1; 2,2,2; 3; 4 x5).
        The list is shuffled with a fixed seed, so only _sort orders it."""
        sizes = [int(x) for x in ties.split(",")] if ties else [1] * n
        rows = []
        for seq, size in enumerate(sizes, 1):
            for _ in range(size):
                i = len(rows) + 1
                rows.append({"id": i, "seq": seq, "name": "row-%d" % i})
        random.Random(7).shuffle(rows)
        return rows

    def seq_value(self, n):
        return opaque_seq(n) if self.args.opaque else n

    def parse_since(self, since):
        if since in ("", "0"):
            return 0
        if since == "now":
            return self.seq
        m = re.fullmatch(r"([0-9]+)(-.*)?", since)
        if m is None:
            raise HttpError(400, "since=%r is not a sequence" % since)
        return int(m.group(1))

    # -- routes ---------------------------------------------------------

    async def route(self, req, conn):
        p, m = req.path, req.method
        if p == "/db/_changes" and m in ("GET", "HEAD"):
            return await self.changes_feed(req, conn)
        if p in ("/db/doc", "/db") and m == "POST":
            return await self.post_doc(req, conn)
        if p == "/events" and m in ("GET", "HEAD"):
            return await self.collection(req, conn)
        if p == "/events" and m == "POST":
            return await self.post_rows(req, conn)
        if p == "/paged" and m in ("GET", "HEAD"):
            return await self.paged(req, conn)
        if p == "/v1/events" and m in ("GET", "HEAD"):
            return await self.after_api(req, conn)
        if p.startswith("/bad/") and m in ("GET", "HEAD"):
            return await self.bad(req, conn)
        raise HttpError(404, "no such path: %s %s" % (m, p))

    async def send_cached(self, req, conn, obj, headers=(), weak_default=False):
        """200 with an ETag, or 304 when If-None-Match matches it."""
        body = json.dumps(obj, separators=(",", ":")).encode("utf-8")
        mode = req.qchoice("etag", ("strong", "weak", "none"),
                           "weak" if weak_default else "strong")
        hs = list(headers)
        if mode != "none":
            tag = etag_of(body, mode == "weak")
            hs.append(("ETag", tag))
            if etag_matches(req.header("if-none-match"), tag):
                return await self.respond(req, conn, 304, b"", hs)
        framing = req.qchoice("framing", ("length", "chunked", "close"), "length")
        ctype = req.query.get("ctype", "application/json")
        return await self.respond(req, conn, 200, body, hs,
                                  ctype=None if ctype == "none" else ctype,
                                  framing=framing)

    def changes_page(self, since_n, limit):
        res = [c for c in self.changes if c["seq"] > since_n]
        total = len(res)
        if limit is not None:
            res = res[:max(limit, 1)]  # CouchDB: limit=0 acts as limit=1
        out = []
        for c in res:
            item = {"seq": self.seq_value(c["seq"]), "id": c["id"],
                    "changes": [{"rev": c["rev"]}]}
            if c.get("deleted"):
                item["deleted"] = True
            out.append(item)
        return out, total - len(res)

    async def changes_feed(self, req, conn):
        since_raw = req.query.get("since", "0")
        since_n = self.parse_since(since_raw)
        limit = req.qint("limit", lo=0)
        feed = req.qchoice("feed", ("normal", "longpoll"), "normal")
        results, pending = self.changes_page(since_n, limit)

        def page(results, pending):
            if results:
                last = results[-1]["seq"]
            elif since_raw in ("", "0") or since_raw == "now" or not self.args.opaque:
                last = self.seq_value(since_n)
            else:
                last = since_raw  # an opaque since comes back as given
            return {"results": results, "last_seq": last, "pending": pending}

        if feed == "normal":
            return await self.send_cached(req, conn, page(results, pending))
        if results:
            return await self.respond_json(req, conn, 200, page(results, pending))

        # Longpoll with nothing new: wait for a change. heartbeat=MS sends
        # "\n" while waiting and, as in CouchDB, overrides timeout;
        # --ignore-timeout waits for ever, as pouchdb-server does.
        heartbeat = req.qfloat("heartbeat")
        timeout = req.qfloat("timeout", 60000.0)
        if heartbeat or self.args.ignore_timeout:
            timeout = None
        framing = req.qchoice("framing", ("chunked", "close", "length"), "chunked")
        ctype = req.query.get("ctype", "application/json")
        keep = req.keep_alive and framing != "close"
        hs = []
        if ctype != "none":
            hs.append(("Content-Type", ctype))

        def out(data):
            if framing == "chunked":
                conn.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                conn.write(data)

        if framing != "length":
            hs.append(("Transfer-Encoding", "chunked") if framing == "chunked"
                      else ("Connection", "close"))
            if framing == "chunked":
                hs.append(("Connection", "keep-alive" if keep else "close"))
            await conn.send_head(200, hs, self.date_skew(req))
            await conn.drain()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout / 1000.0
        while not results:
            wait = heartbeat / 1000.0 if heartbeat else None
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    break
                wait = left if wait is None else min(wait, left)
            changed = self.changed
            try:
                await asyncio.wait_for(changed.wait(), wait)
            except asyncio.TimeoutError:
                if heartbeat and framing != "length":
                    out(b"\n")
                    await conn.drain()
            results, pending = self.changes_page(since_n, limit)
        body = json.dumps(page(results, pending), separators=(",", ":")).encode()
        if framing == "length":
            return await self.respond(req, conn, 200, body, hs)
        out(body + b"\n")
        if framing == "chunked":
            conn.write(b"0\r\n\r\n")
        await conn.drain()
        return keep

    async def post_doc(self, req, conn):
        doc = self.json_body(req, {})
        if not isinstance(doc, dict):
            raise HttpError(400, "a document is a JSON object")
        count = req.qint("count", 1, lo=1, hi=1000000)
        made = []
        for _ in range(count):
            doc_id = doc.get("_id") if count == 1 else None
            c = self.add_doc(doc_id or "doc-%d" % (self.seq + 1),
                             deleted=bool(doc.get("_deleted")))
            made.append({"ok": True, "id": c["id"], "rev": c["rev"],
                         "seq": self.seq_value(c["seq"])})
        self.wake()
        return await self.respond_json(req, conn, 201,
                                       made[0] if count == 1 else made)

    @staticmethod
    def json_body(req, default):
        if not req.body.strip():
            return default
        try:
            return json.loads(req.body)
        except ValueError:
            raise HttpError(400, "the body is not JSON")

    # -- json-server collection ------------------------------------------

    def query_rows(self, req):
        """Filters and sorts as json-server 0.17's plural router does."""
        rows = list(self.rows)
        fields = set()
        for r in rows:
            fields.update(r.keys())
        for key, value in req.query_list:
            if key.startswith("_"):
                continue
            m = re.fullmatch(r"(.+)_(gte|lte|ne|like)", key)
            if m and m.group(1) in fields:
                f, op = m.group(1), m.group(2)
                if op in ("gte", "lte"):
                    rows = [r for r in rows if js_compare(value, r.get(f), op)]
                elif op == "ne":
                    rows = [r for r in rows if str(r.get(f)) != value]
                else:
                    rows = [r for r in rows
                            if re.search(value, str(r.get(f, "")), re.I)]
            elif key in fields:
                rows = [r for r in rows if str(r.get(key)) == value]
            # Anything else (seq_gt=8) is dropped, as json-server does.
        sort = [s for s in req.query.get("_sort", "").split(",") if s]
        order = req.query.get("_order", "").split(",")
        for i in reversed(range(len(sort))):
            desc = i < len(order) and order[i].lower() == "desc"
            rows.sort(key=lambda r, k=sort[i]: (r.get(k) is None,
                                                isinstance(r.get(k), str),
                                                r.get(k)),
                      reverse=desc)
        return rows

    async def collection(self, req, conn):
        rows = self.query_rows(req)
        total = len(rows)
        hs = []
        start = req.qint("_start", 0, lo=0)
        end = req.qint("_end", lo=0)
        limit = req.qint("_limit", lo=0)
        page = req.qint("_page", lo=1)
        if page is not None:
            per = limit if limit is not None else 10
            rows = rows[(page - 1) * per: page * per]
            last = max(1, -(-total // per))
            links = []
            for rel, n in (("first", 1), ("prev", page - 1), ("next", page + 1),
                           ("last", last)):
                if rel == "prev" and page <= 1 or rel == "next" and page >= last:
                    continue
                q = [(k, v) for k, v in req.query_list if k != "_page"]
                q.append(("_page", str(n)))
                url = self.location(req, req.path + "?" + urllib.parse.urlencode(q))
                links.append('<%s>; rel="%s"' % (url, rel))
            hs.append(("Link", ", ".join(links)))
        elif end is not None:
            rows = rows[start:end]
        elif limit is not None:
            rows = rows[start:start + limit]
        elif start:
            rows = rows[start:]
        if page is not None or end is not None or limit is not None:
            hs.append(("X-Total-Count", str(total)))
            hs.append(("Access-Control-Expose-Headers", "X-Total-Count"))
        return await self.send_cached(req, conn, rows, hs, weak_default=True)

    async def post_rows(self, req, conn):
        body = self.json_body(req, {})
        count = req.qint("count", 1, lo=1, hi=1000000)
        items = body if isinstance(body, list) else [body] * count
        made = []
        for item in items:
            if not isinstance(item, dict):
                raise HttpError(400, "rows are JSON objects")
            row = dict(item)
            if "id" not in row:
                row["id"] = max([r["id"] for r in self.rows
                                 if isinstance(r.get("id"), int)], default=0) + 1
            if "seq" not in row:
                row["seq"] = max([r["seq"] for r in self.rows
                                  if isinstance(r.get("seq"), int)], default=0) + 1
            row.setdefault("name", "row-%s" % row["id"])
            self.rows.append(row)
            made.append(row)
        self.wake()
        return await self.respond_json(req, conn, 201,
                                       made[0] if len(made) == 1 else made)

    # -- Link paging and ?after= -----------------------------------------

    def sorted_rows(self):
        return sorted(self.rows, key=lambda r: (r["seq"], r["id"]))

    async def paged(self, req, conn):
        page = req.qint("page", 1, lo=1)
        per = req.qint("per_page", 5, lo=1)
        style = req.qchoice("link", ("absolute", "relative", "multi", "tricky"),
                            "absolute")
        rows = self.sorted_rows()
        last = max(1, -(-len(rows) // per))
        items = rows[(page - 1) * per: page * per]

        def url(n):
            q = [(k, v) for k, v in req.query_list if k != "page"]
            q.insert(0, ("page", str(n)))
            target = req.path + "?" + urllib.parse.urlencode(q)
            return target if style == "relative" else self.location(req, target)

        links = []
        if page < last:
            links.append('<%s>; rel="next"' % url(page + 1))
        if page > 1:
            links.append('<%s>; rel="prev"' % url(page - 1))
        links.append('<%s>; rel="first"' % url(1))
        links.append('<%s>; rel="last"' % url(last))
        if style == "tricky":
            # A quoted comma and a fake rel inside a parameter, an anchored
            # "next" that must be ignored, and the real one as "NEXT" among
            # several types, after a link whose first rel is not "next".
            tricky = ['<%s>; title="page, rel=\\"next\\""; rel="first"' % url(1),
                      '<%s/elsewhere>; rel="next"; anchor="#x"'
                      % self.location(req, "")]
            if page < last:
                tricky.append('<%s>; rel="prefetch"; rel="next"' % url(last))
                tricky.append('<%s>; Rel="alternate NEXT"' % url(page + 1))
            links = tricky
        hs = []
        if style == "multi":
            hs += [("Link", l) for l in links]
        else:
            hs.append(("Link", ", ".join(links)))
        return await self.send_cached(req, conn, items, hs)

    async def after_api(self, req, conn):
        after = req.query.get("after", "")
        limit = req.qint("limit", 100, lo=1)
        rows = sorted(self.rows, key=lambda r: r["id"])
        if after != "":
            try:
                a = int(after)
            except ValueError:
                raise HttpError(400, "after=%r is not an id" % after)
            rows = [r for r in rows if r["id"] > a]
        data = rows[:limit]
        obj = {"data": data, "has_more": len(rows) > limit}
        return await self.send_cached(req, conn, obj)

    # -- broken upstreams -------------------------------------------------

    async def bad(self, req, conn):
        kind = req.path[len("/bad/"):]
        item = {"seq": 1, "id": "a", "changes": [{"rev": "1-a"}]}
        raw = None
        if kind == "json":
            variant = req.query.get("kind", "truncated")
            raw = {"truncated": b'{"results":[{"seq":1,"id":"a"},',
                   "garbage": b"\x00\xff not json",
                   "empty": b"",
                   "html": b"<html><body>502 Bad Gateway</body></html>",
                   "nan": b'{"results":[{"seq":NaN,"id":"a"}],"last_seq":NaN}',
                   "trailing": b'{"results":[],"last_seq":0} {"x":1}',
                   }.get(variant)
            if raw is None:
                raise HttpError(400, "kind=%r" % variant)
        elif kind == "noitems":
            raw = b'{"rows":[{"seq":1,"id":"a"}],"last_seq":1,"pending":0}'
        elif kind == "notarray":
            raw = b'{"results":{"seq":1,"id":"a"},"last_seq":1,"pending":0}'
        elif kind == "bigint":
            raw = b'{"results":[{"seq":%d,"id":"a"}],"last_seq":%d,"pending":0}' \
                % (BIG, BIG)
        elif kind == "bigstring":
            raw = b'{"results":[{"seq":"%d","id":"a"}],"last_seq":"%d",' \
                b'"pending":0}' % (BIG, BIG)
        elif kind == "real":
            raw = b'{"results":[{"seq":1.5,"id":"a"}],"last_seq":1.5,"pending":0}'
        elif kind == "nocursor":
            raw = b'{"results":[{"id":"a"}],"pending":0}'
        elif kind == "object":
            obj = {"results": [dict(item, seq={"shard": 1, "n": 1})],
                   "last_seq": {"shard": 1, "n": 1}, "pending": 0}
            raw = json.dumps(obj, separators=(",", ":")).encode()
        if raw is None:
            raise HttpError(404, "no such broken upstream: %s" % kind)
        ctype = req.query.get("ctype", "application/json")
        return await self.respond(req, conn, 200, raw,
                                  ctype=None if ctype == "none" else ctype)


def main(argv):
    p = httpbase.arg_parser("Reference http-poll upstreams for tether tests.")
    p.add_argument("--docs", type=int, default=10,
                   help="documents in the changes feed at start (seq 1..N)")
    p.add_argument("--opaque", action="store_true",
                   help="CouchDB 2+ style: seqs are opaque strings")
    p.add_argument("--ignore-timeout", action="store_true",
                   help="longpoll ignores timeout= (pouchdb-server)")
    p.add_argument("--rows", type=int, default=20,
                   help="rows in /events at start (seq = id), without --ties")
    p.add_argument("--ties", metavar="SIZES",
                   help="comma-separated tie group sizes: rows sharing a seq")
    args = p.parse_args(argv)
    if args.ties and not re.fullmatch(r"[1-9][0-9]*(,[1-9][0-9]*)*", args.ties):
        p.error("--ties takes sizes like 1,3,5,8")
    httpbase.run(PollApp(args))


if __name__ == "__main__":
    main(sys.argv[1:])
