// The WHATWG EventSource client (npm eventsource@4) as a cross-check: reads
// URL until it has seen WANT events of any type, printing one JSON line per
// event: {"type","id","data"}. Exits 0 then, 1 on a gap in numeric ids.
import { EventSource } from "eventsource";

const url = process.argv[2];
const want = +(process.argv[3] || 10);
const types = (process.argv[4] || "message").split(",");
const es = new EventSource(url);
let seen = 0;
let last = 0;

const onEvent = (ev) => {
  if (es.readyState === EventSource.CLOSED) return;
  const id = Number(ev.lastEventId);
  if (last && id && id !== last + 1) {
    console.error(`gap: ${last} -> ${id}`);
    process.exitCode = 1;
  }
  if (id) last = id;
  console.log(JSON.stringify({ type: ev.type, id: ev.lastEventId, data: ev.data }));
  if (++seen >= want) {
    es.close();
    process.exit(process.exitCode || 0);
  }
};
for (const t of types) es.addEventListener(t, onEvent);
es.onerror = (e) => console.error(`error: ${e.message ?? ""} readyState=${es.readyState}`);
