"""Plumbing shared by the reference servers: a raw-socket HTTP/1.1 server on
asyncio, the request recorder, the switches every path understands, and the
command line (--host, --port, --unix, the "listening on" line, SIGTERM).

Python 3 standard library only. http.server is not used on purpose: the
servers must control framing byte by byte (close-delimited bodies, chunks cut
in the middle, resets after N bytes).

Switches every non-control path of both servers understands (query
parameters; see README.md):

  status=CODE [fail=K] [retry_after=S|date|date:S|RAW]
      answer CODE instead of the resource; with fail=K only the first K
      requests that carry the same switches on the same path fail, the next
      ones succeed (POST /_reset starts the count again)
  redirect=301|302|303|307|308 [loop=1] [to_http=1] [to=URL] [to_port=P]
      answer a redirect to the same target without the redirect switches
      (to_port: on port P of the same host, another origin)
  delay=MS        wait before answering
  date_skew=S     shift the Date header by S seconds (may be negative)
"""

import argparse
import asyncio
import email.utils
import errno
import fcntl
import json
import math
import os
import re
import signal
import socket
import struct
import sys
import termios
import time
import traceback
import urllib.parse
from http import HTTPStatus

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
MAX_RECORDED = 100000

# Query parameters that select the redirect itself; they are dropped from the
# Location so that the redirected request gets the resource.
REDIRECT_SWITCHES = ("redirect", "loop", "to_http", "to", "to_port")


class HttpError(Exception):
    """Ends a request with a status and a short reason."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Dropped(Exception):
    """The response was cut on purpose; the connection is gone."""


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def decode_text(b):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def http_date(t=None):
    return email.utils.formatdate(time.time() if t is None else t, usegmt=True)


class Request:
    def __init__(self, method, target, version, headers, body, peer):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # [(name, value)] as received, str
        self.body = body  # bytes
        self.peer = peer
        split = urllib.parse.urlsplit(target)
        self.path = split.path or "/"
        self.raw_query = split.query
        self.query_list = urllib.parse.parse_qsl(
            split.query, keep_blank_values=True
        )
        self.query = dict(self.query_list)  # the last value of a name wins

    def header(self, name, default=None):
        """The first header of that name (case-insensitive)."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def keep_alive(self):
        tokens = ",".join(self.header_all("connection")).lower()
        tokens = {t.strip() for t in tokens.split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    def record(self):
        return {
            "time": time.time(),
            "method": self.method,
            "target": self.target,
            "path": self.path,
            "query": self.query,
            "version": self.version,
            "headers": [[k, v] for k, v in self.headers],
            "body": decode_text(self.body[:4096]),
        }

    def qint(self, name, default=None, lo=None, hi=None):
        if name not in self.query:
            return default
        try:
            v = int(self.query[name], 10)
        except ValueError:
            raise HttpError(400, "%s=%r is not an integer" % (name, self.query[name]))
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise HttpError(400, "%s=%d is out of range" % (name, v))
        return v

    def qfloat(self, name, default=None):
        if name not in self.query:
            return default
        try:
            v = float(self.query[name])
        except ValueError:
            raise HttpError(400, "%s=%r is not a number" % (name, self.query[name]))
        if not math.isfinite(v) or v < 0:
            raise HttpError(400, "%s=%r is out of range" % (name, self.query[name]))
        return v

    def qchoice(self, name, choices, default):
        v = self.query.get(name, default)
        if v not in choices:
            raise HttpError(
                400, "%s=%r: expected one of %s" % (name, v, "|".join(choices))
            )
        return v

    def qbool(self, name):
        return self.query.get(name, "0") not in ("", "0", "false", "no")


async def read_request(reader, peer):
    """Reads one request; None on a clean EOF before its first byte."""
    lines = []
    size = 0
    while True:
        try:
            line = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            raise HttpError(431, "header line too long")
        if not line:
            if not lines:
                return None
            raise asyncio.IncompleteReadError(b"", None)
        size += len(line)
        if size > MAX_HEAD:
            raise HttpError(431, "head too large")
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue  # RFC 9112 §2.2: ignore empty lines before a request
            break
        lines.append(line.rstrip(b"\r\n"))
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise HttpError(400, "bad request line")
    method, target, version = (decode_text(p) for p in parts)
    headers = []
    for raw in lines[1:]:
        name, colon, value = raw.partition(b":")
        if not colon or not name or name != name.strip():
            raise HttpError(400, "bad header line")
        headers.append((decode_text(name), decode_text(value.strip(b" \t"))))
    req = Request(method, target, version, headers, b"", peer)

    te = (req.header("transfer-encoding") or "").lower()
    if "chunked" in te:
        body = bytearray()
        while True:
            size_line = await reader.readline()
            try:
                n = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise HttpError(400, "bad chunk size")
            if n == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            if len(body) + n > MAX_BODY:
                raise HttpError(413, "body too large")
            body += await reader.readexactly(n)
            await reader.readline()
        req.body = bytes(body)
    elif req.header("content-length") is not None:
        try:
            n = int(req.header("content-length"))
        except ValueError:
            raise HttpError(400, "bad Content-Length")
        if n < 0 or n > MAX_BODY:
            raise HttpError(413, "body too large")
        req.body = await reader.readexactly(n)
    return req


class Conn:
    """One client connection: raw writes, framing helpers, drop on purpose."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self.head_sent = False
        self.closed = False
        sock = writer.get_extra_info("socket")
        self.sock = sock
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def write(self, data):
        # Writing to a transport the peer has closed only counts the bytes
        # and, past a few, logs "socket.send() raised exception": stop here.
        if self.closed or self.writer.transport.is_closing():
            raise ConnectionResetError("connection closed")
        self.writer.write(data)

    async def drain(self):
        await self.writer.drain()

    async def flush(self):
        """Waits until every written byte has left the process and, as far
        as the kernel tells, the socket (so a reset cannot eat them)."""
        transport = self.writer.transport
        transport.set_write_buffer_limits(0)
        await self.writer.drain()
        deadline = time.monotonic() + 1.0
        buf = bytearray(4)
        while self.sock is not None and time.monotonic() < deadline:
            if transport.is_closing():
                raise ConnectionResetError("connection closed")
            try:
                fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, buf)
            except (OSError, ValueError):  # ValueError: fd already -1
                break
            if struct.unpack("i", bytes(buf))[0] == 0:
                break
            await asyncio.sleep(0.001)

    async def send_head(self, status, headers, date_skew=0.0):
        lines = ["HTTP/1.1 %d %s" % (status, reason(status))]
        if not any(k.lower() == "date" for k, _ in headers):
            lines.append("Date: " + http_date(time.time() + date_skew))
        lines += ["%s: %s" % (k, v) for k, v in headers]
        self.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        self.head_sent = True

    async def reset(self):
        """Flushes, then closes with RST (SO_LINGER 0)."""
        await self.flush()
        if self.sock is not None and self.sock.family != socket.AF_UNIX:
            try:
                self.sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            except OSError:
                pass
        self.closed = True
        self.writer.transport.abort()

    async def fin(self):
        """Flushes, then closes with FIN."""
        await self.flush()
        self.close()

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.writer.close()
            except Exception:
                pass


def reason(status):
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status %d" % status


def retry_after_value(spec):
    """A Retry-After value: "date" (an HTTP-date 1 s ahead), "date:S" (S
    seconds ahead; "date+S" works too when the + is sent as %2B), or any
    other text as is (delay-seconds, or something invalid on purpose)."""
    m = re.fullmatch(r"date(?:[:+ ]([0-9]+(?:\.[0-9]*)?))?", spec)
    if m is None:
        return spec
    extra = float(m.group(1)) if m.group(1) else 1.0
    # HTTP-date has whole seconds: round up so the wait is never shorter.
    return http_date(math.ceil(time.time() + extra))


class App:
    """Base of a reference server: dispatch, recorder, common switches."""

    name = "server"

    def __init__(self, args):
        self.args = args
        self.requests = []
        self.fail_counts = {}
        self.host = None
        self.port = None

    # -- to override ----------------------------------------------------

    async def route(self, req, conn):
        """Serves one request. Returns True to keep the connection."""
        raise HttpError(404, "no such path")

    def reset(self):
        """POST /_reset: clears the recorder and the fail counters."""
        self.requests.clear()
        self.fail_counts.clear()

    # -- helpers --------------------------------------------------------

    async def respond(self, req, conn, status, body=b"", headers=(), ctype=None,
                      framing="length", date_skew=None):
        """A whole response. framing: length (Content-Length), chunked (one
        chunk) or close (close-delimited; the connection closes)."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        hs = list(headers)
        if ctype is not None:
            hs.append(("Content-Type", ctype))
        keep = req.keep_alive and framing != "close"
        no_body = status in (204, 304) or 100 <= status < 200
        if not no_body:
            if framing == "length":
                hs.append(("Content-Length", str(len(body))))
            elif framing == "chunked":
                hs.append(("Transfer-Encoding", "chunked"))
        hs.append(("Connection", "keep-alive" if keep else "close"))
        skew = self.date_skew(req) if date_skew is None else date_skew
        await conn.send_head(status, hs, skew)
        if not no_body and req.method != "HEAD":
            if framing == "chunked":
                if body:
                    conn.write(b"%x\r\n%s\r\n" % (len(body), body))
                conn.write(b"0\r\n\r\n")
            else:
                conn.write(body)
        await conn.drain()
        return keep

    async def respond_json(self, req, conn, status, obj, headers=(), **kw):
        body = json.dumps(obj, separators=(",", ":")).encode("utf-8")
        ctype = req.query.get("ctype", "application/json")
        return await self.respond(
            req, conn, status, body, headers,
            ctype=None if ctype == "none" else ctype, **kw
        )

    async def respond_error(self, req, conn, status, reason_text, headers=()):
        obj = {"error": reason(status).lower().replace(" ", "_"),
               "reason": reason_text}
        body = json.dumps(obj).encode("utf-8") + b"\n"
        return await self.respond(req, conn, status, body, headers,
                                  ctype="application/json")

    def date_skew(self, req):
        try:
            return float(req.query.get("date_skew", "0"))
        except ValueError:
            return 0.0

    def location(self, req, target):
        host = req.header("host") or "%s:%s" % (self.host, self.port)
        return "http://%s%s" % (host, target)

    def other_origin(self, req, target, port):
        """An absolute URL of target on another port of the host the client
        asked for: the same host, another origin."""
        host = req.header("host") or self.host
        name = urllib.parse.urlsplit("//" + host).hostname or self.host
        if ":" in name:
            name = "[%s]" % name
        return "http://%s:%d%s" % (name, port, target)

    async def common_switches(self, req, conn):
        """delay, status/fail, redirect. Returns None to go on, or the
        keep-alive result of the response it sent."""
        delay = req.qfloat("delay")
        if delay:
            await asyncio.sleep(delay / 1000.0)

        if "status" in req.query:
            status = req.qint("status", lo=100, hi=999)
            fail = req.qint("fail", lo=0)
            failing = True
            if fail is not None:
                key = (req.path, req.query.get("status"), req.query.get("fail"),
                       req.query.get("retry_after"), req.query.get("fail_id"))
                n = self.fail_counts.get(key, 0) + 1
                self.fail_counts[key] = n
                failing = n <= fail
            if failing:
                hs = []
                if "retry_after" in req.query:
                    hs.append(("Retry-After",
                               retry_after_value(req.query["retry_after"])))
                return await self.respond_error(
                    req, conn, status, "status switch", hs)

        if "redirect" in req.query:
            code = req.qint("redirect")
            if code not in (301, 302, 303, 307, 308):
                raise HttpError(400, "redirect=%d is not a redirect" % code)
            if req.qbool("loop"):
                target = req.target
            else:
                q = [(k, v) for k, v in req.query_list
                     if k not in REDIRECT_SWITCHES]
                target = req.path + ("?" + urllib.parse.urlencode(q) if q else "")
            if "to" in req.query:
                loc = req.query["to"]
            elif "to_port" in req.query:
                loc = self.other_origin(req, target,
                                        req.qint("to_port", lo=1, hi=65535))
            elif req.qbool("to_http"):
                loc = self.location(req, target)
            else:
                loc = target
            return await self.respond(
                req, conn, code, b"", [("Location", loc)])
        return None

    # -- connection loop ------------------------------------------------

    async def dispatch(self, req, conn):
        if req.path == "/_requests" and req.method == "GET":
            items = self.requests
            if "path" in req.query:
                items = [r for r in items if r["path"] == req.query["path"]]
            return await self.respond_json(req, conn, 200, items)
        if req.path == "/_reset" and req.method == "POST":
            self.reset()
            return await self.respond_json(req, conn, 200, {"ok": True})
        if len(self.requests) < MAX_RECORDED:
            self.requests.append(req.record())
        r = await self.common_switches(req, conn)
        if r is not None:
            return r
        return await self.route(req, conn)

    async def on_client(self, reader, writer):
        task = asyncio.current_task()
        self.tasks.add(task)
        conn = Conn(reader, writer)
        peer = writer.get_extra_info("peername")
        try:
            while True:
                conn.head_sent = False
                req = await read_request(reader, peer)
                if req is None:
                    break
                try:
                    keep = await self.dispatch(req, conn)
                except HttpError as e:
                    if conn.head_sent:
                        raise
                    keep = await self.respond_error(req, conn, e.status, e.reason)
                if not keep or conn.closed:
                    break
        except HttpError as e:
            if not conn.head_sent and not conn.closed:
                try:
                    body = (e.reason + "\n").encode()
                    conn.write(b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n"
                               b"Connection: close\r\n\r\n%s"
                               % (e.status, reason(e.status).encode(),
                                  len(body), body))
                    await conn.drain()
                except Exception:
                    pass
        except (Dropped, ConnectionError, asyncio.IncompleteReadError,
                asyncio.CancelledError, TimeoutError):
            pass
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN,
                               errno.EBADF):
                log("%s: connection error: %r" % (self.name, e))
        except Exception:
            log("%s: unexpected error:\n%s" % (self.name, traceback.format_exc()))
        finally:
            conn.close()
            self.tasks.discard(task)

    async def serve(self):
        self.tasks = set()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        servers = []
        tcp = await asyncio.start_server(
            self.on_client, self.args.host, self.args.port, limit=MAX_HEAD,
            reuse_address=True)
        servers.append(tcp)
        addr = tcp.sockets[0].getsockname()
        self.host, self.port = addr[0], addr[1]
        if self.args.unix:
            try:
                os.unlink(self.args.unix)
            except FileNotFoundError:
                pass
            servers.append(await asyncio.start_unix_server(
                self.on_client, self.args.unix, limit=MAX_HEAD))
        # The one line tests wait for; everything else goes to stderr.
        print("listening on %s:%d" % (self.host, self.port), flush=True)
        await stop.wait()
        for s in servers:
            s.close()
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)
        if self.args.unix:
            try:
                os.unlink(self.args.unix)
            except OSError:
                pass


def arg_parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0,
                   help="TCP port (0 = any free port; see the listening line)")
    p.add_argument("--unix", metavar="PATH",
                   help="also serve on this unix socket")
    return p


def run(app):
    try:
        asyncio.run(app.serve())
    except KeyboardInterrupt:
        pass
