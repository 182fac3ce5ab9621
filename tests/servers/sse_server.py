#!/usr/bin/env python3
"""Reference text/event-stream upstream for tether's `sse` source.

    python3 tests/servers/sse_server.py --port 0 [--host H] [--events N]
                                        [--unix PATH]

Prints "listening on HOST:PORT" once it listens; SIGTERM stops it. Every path
that is not a control path (/publish, /_requests, /_reset) is the stream, so
tests may use a fresh path per case. README.md lists every switch; the wire
contract is /work/shared/protocols/sse-and-http-poll.md §8.

The event log is deterministic: event K has id "K" and data {"n":K}.
"""

import asyncio
import random
import re
import sys

import httpbase
from httpbase import Dropped, HttpError

BOM = b"\xef\xbb\xbf"

# A garbage line must never be a field tether acts on. Every line of it (the
# first byte, and every byte after CR or LF) starts with one of these: NUL or
# a byte that is invalid UTF-8 (the field name then holds NUL or U+FFFD, so it
# is an unknown field), ":" (a comment), or another line end (a blank line,
# which dispatches nothing because no data line precedes it).
GARBAGE_STARTERS = b"\x00\xff\x80:\r\n"
# What the rest of a garbage line is drawn from: NUL, CR, LF, bytes that are
# never valid UTF-8, truncated sequences, and printable ASCII.
GARBAGE_SPECIAL = [b"\x00", b"\r", b"\n", b"\xff", b"\xfe", b"\xc0", b"\x80",
                   b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90"]


class Event:
    __slots__ = ("id", "data", "type")

    def __init__(self, id_, data, type_=None):
        self.id = id_  # int
        self.data = data  # bytes, may hold line ends: sent as several lines
        self.type = type_  # bytes or None


class Eol:
    """Line ends for one response: lf, crlf, cr, or mixed (LF, CRLF, CR in
    turn; after a CR an empty line never gets a lone LF, which would merge
    with the CR into one CRLF and swallow the blank line)."""

    CYCLE = (b"\n", b"\r\n", b"\r")

    def __init__(self, kind):
        self.kind = kind
        self.i = 0
        self.prev = b""

    def end(self, line):
        if self.kind == "lf":
            e = b"\n"
        elif self.kind == "crlf":
            e = b"\r\n"
        elif self.kind == "cr":
            e = b"\r"
        else:
            e = self.CYCLE[self.i % 3]
            self.i += 1
            if self.prev == b"\r" and line == b"" and e == b"\n":
                e = b"\r\n"
        self.prev = e
        return line + e

    def block(self, lines):
        """The lines of one block and the blank line that ends it."""
        return b"".join(self.end(l) for l in lines) + self.end(b"")


def garbage(n, after_id):
    """n bytes (n >= 1) ending in LF; deterministic for (n, after_id)."""
    rng = random.Random("garbage-%d-%d" % (n, after_id))
    out = bytearray()
    line_start = True
    while len(out) < n - 1:
        if line_start:
            b = bytes([rng.choice(GARBAGE_STARTERS)])
        elif rng.random() < 0.4:
            b = rng.choice(GARBAGE_SPECIAL)
        else:
            b = bytes([rng.randint(0x20, 0x7e)])
        b = b[: n - 1 - len(out)]
        out += b
        line_start = b[-1:] in (b"\r", b"\n")
    out += b"\n"
    return bytes(out[:n])


class Body:
    """Writes the payload through the framing, with drip and drop."""

    def __init__(self, conn, framing, drip_ms, drop_after, drop_mode):
        self.conn = conn
        self.framing = framing
        self.drip = drip_ms
        self.drop_after = drop_after
        self.drop_mode = drop_mode
        self.sent = 0
        self.unflushed = 0

    def _frame(self, data, declared=None):
        if self.framing == "chunked":
            return b"%x\r\n" % (declared or len(data)) + data + (
                b"\r\n" if declared is None else b"")
        return data

    async def _out(self, data):
        if self.drip is None:
            self.conn.write(self._frame(data))
            self.unflushed += len(data)
            if self.unflushed >= 65536:
                self.unflushed = 0
                await self.conn.drain()
            return
        for i in range(len(data)):
            self.conn.write(self._frame(data[i:i + 1]))
            await self.conn.drain()
            if self.drip > 0:
                await asyncio.sleep(self.drip / 1000.0)

    async def send(self, data):
        if not data:
            return
        if self.drop_after is not None and self.sent + len(data) >= self.drop_after:
            keep = data[: self.drop_after - self.sent]
            if keep:
                if self.drip is None and self.framing == "chunked":
                    # The chunk header announces the whole piece; the cut
                    # lands inside the chunk.
                    self.conn.write(self._frame(keep, declared=len(data)))
                else:
                    await self._out(keep)
            self.sent += len(keep)
            await self.drop()
        self.sent += len(data)
        await self._out(data)

    async def drop(self):
        if self.drop_mode == "rst":
            await self.conn.reset()
        else:
            await self.conn.fin()
        raise Dropped()

    async def end(self):
        if self.framing == "chunked":
            self.conn.write(b"0\r\n\r\n")
        await self.conn.flush()


class SseApp(httpbase.App):
    name = "sse_server"

    def __init__(self, args):
        super().__init__(args)
        self.log = [Event(i, b'{"n":%d}' % i) for i in range(1, args.events + 1)]
        self._changed = None

    @property
    def changed(self):
        # Made on first use, inside the running loop (Python < 3.10 binds an
        # Event to the loop current at construction).
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def publish(self, data, type_=None):
        ev = Event(len(self.log) + 1, data, type_)
        self.log.append(ev)
        return ev

    def wake(self):
        """Wakes every live stream: each waits on the Event current when it
        started waiting, so a fresh one replaces it."""
        self.changed.set()
        self._changed = asyncio.Event()

    async def route(self, req, conn):
        if req.path == "/publish":
            if req.method != "POST":
                raise HttpError(405, "POST /publish")
            count = req.qint("count", 1, lo=1, hi=10000000)
            type_ = req.query.get("event")
            type_ = type_.encode("utf-8") if type_ else None
            first = None
            for _ in range(count):
                n = len(self.log) + 1
                data = req.body if req.body and count == 1 else b'{"n":%d}' % n
                ev = self.publish(data, type_)
                first = first or ev.id
            self.wake()
            return await self.respond_json(
                req, conn, 200, {"first": first, "last": len(self.log)})
        if req.method not in ("GET", "HEAD"):
            raise HttpError(405, "the stream is GET only")
        await self.stream(req, conn)
        return False

    def start_index(self, req):
        """Index into the log of the first event to send."""
        last = req.header("last-event-id") or req.query.get("last_event_id") \
            or req.query.get("lastEventId") or ""
        if last == "":
            first = req.qchoice("first", ("oldest", "newest"), "oldest")
            return 0 if first == "oldest" else len(self.log)
        if re.fullmatch(r"[0-9]+", last) and int(last) <= len(self.log):
            return int(last)
        unknown = req.qchoice("unknown_id", ("all", "none"), "all")
        return 0 if unknown == "all" else len(self.log)

    async def stream(self, req, conn):
        q = req.query
        framing = req.qchoice("framing", ("close", "chunked", "length"), "close")
        eol = Eol(req.qchoice("eol", ("lf", "crlf", "cr", "mixed"), "lf"))
        sep = b":" if req.qbool("nospace") else b": "
        keepalive = req.qfloat("keepalive")
        stall = req.qfloat("stall")
        drop_after = req.qint("drop_after", lo=0)
        drop_mode = req.qchoice("drop", ("rst", "fin"), "rst")
        drip = req.qfloat("drip")
        garbage_n = req.qint("garbage", lo=0, hi=1 << 20)
        huge = req.qint("huge", lo=0, hi=1 << 30)
        huge_at = req.qint("huge_at", lo=1)
        retry = q.get("retry")
        idreset = self.id_set(req, "idreset")
        idonly = self.id_set(req, "idonly")
        count = req.qint("count", lo=0)
        done = req.qbool("done") or framing == "length"

        if req.qbool("need_accept") and "text/event-stream" not in \
                ",".join(req.header_all("accept")):
            await self.respond(req, conn, 403, b"need Accept: text/event-stream\n",
                               ctype="text/plain")
            return

        ctype = q.get("ctype", "text/event-stream; charset=utf-8")
        headers = [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]
        if ctype != "none":
            headers.append(("Content-Type", ctype))
        start = self.start_index(req)

        def event_bytes(ev, first_sent):
            lines = []
            if ev.type:
                lines.append(b"event" + sep + ev.type)
            if ev.id in idreset:
                lines.append(b"id:")
            else:
                lines.append(b"id" + sep + str(ev.id).encode())
            if ev.id not in idonly:
                if huge is not None and ev.id == (huge_at or first_sent):
                    lines.append(huge_line(ev.id))
                else:
                    for part in re.split(rb"\r\n|\r|\n", ev.data):
                        lines.append(b"data" + sep + part)
            out = eol.block(lines)
            if garbage_n:
                out += garbage(garbage_n, ev.id)
            return out

        def huge_line(n):
            prefix = b"data" + sep
            head, tail = b'{"n":%d,"pad":"' % n, b'"}'
            pad = huge - len(prefix) - len(head) - len(tail)
            if pad < 0:
                return (prefix + b"x" * huge)[:max(huge, len(prefix))]
            return prefix + head + b"x" * pad + tail

        async def pieces():
            if req.qbool("bom"):
                yield BOM
            if retry is not None:
                yield eol.block([b"retry" + sep + retry.encode("utf-8")])
            i = start
            sent = 0
            first_sent = None
            while True:
                while i < len(self.log):
                    if count is not None and sent >= count:
                        return
                    ev = self.log[i]
                    first_sent = first_sent or ev.id
                    yield event_bytes(ev, first_sent)
                    i += 1
                    sent += 1
                if done or (count is not None and sent >= count):
                    return
                changed = self.changed
                try:
                    await asyncio.wait_for(changed.wait(), keepalive)
                except asyncio.TimeoutError:
                    yield eol.block([b":"])

        body = Body(conn, framing, drip, drop_after, drop_mode)
        if framing == "length":
            payload = b"".join([p async for p in pieces()])
            headers.append(("Content-Length", str(len(payload))))
        elif framing == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        headers.append(("Connection", "close"))
        await conn.send_head(200, headers, self.date_skew(req))
        await conn.drain()
        if req.method == "HEAD":
            return
        if drop_after == 0:
            await body.drop()
        if stall:
            await asyncio.sleep(stall)
        if framing == "length":
            await body.send(payload)
        else:
            async for p in pieces():
                await body.send(p)
        await body.end()

    @staticmethod
    def id_set(req, name):
        v = req.query.get(name, "")
        try:
            return {int(x) for x in v.split(",") if x}
        except ValueError:
            raise HttpError(400, "%s=%r: expected ids like 3 or 3,7" % (name, v))


def main(argv):
    p = httpbase.arg_parser("Reference SSE upstream for tether tests.")
    p.add_argument("--events", type=int, default=10,
                   help="events in the log at start (ids 1..N)")
    app = SseApp(p.parse_args(argv))
    httpbase.run(app)


if __name__ == "__main__":
    main(sys.argv[1:])
