// A better-sse peer: numbered events (id 1, 2, 3, ...) appended every TICK
// ms up to MAX, replayed after Last-Event-ID, with keep-alive comments and a
// retry: hint. PORT=0 picks a free port; the first stdout line says which.
"use strict";
const http = require("node:http");
const { createSession } = require("better-sse");

const TICK = +(process.env.TICK ?? 10);
const MAX = +(process.env.MAX || 1000);
const KEEPALIVE = +(process.env.KEEPALIVE || 200);
const RETRY = +(process.env.RETRY || 300);
const log = [];
const sessions = new Set();

if (TICK > 0) setInterval(() => {
  if (log.length >= MAX) return;
  const ev = { id: log.length + 1, data: { n: log.length + 1 } };
  log.push(ev);
  for (const s of sessions) if (s.isConnected) s.push(ev.data, "tick", String(ev.id));
}, TICK);

// POST /publish: the body becomes the data of the next event, pushed to
// every session at once (latency benchmarks; TICK=0 turns the ticks off).
function publish(req, res) {
  let body = "";
  req.on("data", (c) => (body += c));
  req.on("end", () => {
    const ev = { id: log.length + 1, data: body };
    log.push(ev);
    for (const s of sessions)
      if (s.isConnected) s.push(ev.data, "message", String(ev.id));
    res.writeHead(204).end();
  });
}

const server = http.createServer(async (req, res) => {
  if (req.method === "POST" && req.url === "/publish") {
    publish(req, res);
    return;
  }
  if (!req.url.startsWith("/events")) {
    res.writeHead(404).end();
    return;
  }
  // ?drop=MS: the server cuts the stream after MS, to test resuming.
  const drop = /[?&]drop=(\d+)/.exec(req.url);
  if (drop) setTimeout(() => res.destroy(), +drop[1]);
  const session = await createSession(req, res, {
    keepAlive: KEEPALIVE,
    retry: RETRY,
    serializer: (d) => (typeof d === "string" ? d : JSON.stringify(d)),
  });
  const after = parseInt(session.lastId, 10) || 0;
  for (const ev of log) if (ev.id > after) session.push(ev.data, "tick", String(ev.id));
  sessions.add(session);
  session.on("disconnected", () => sessions.delete(session));
});
server.listen(+(process.env.PORT || 0), "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});
process.on("SIGTERM", () => process.exit(0));
