// Drives the official PocketBase JS SDK against a server (the reference
// server in tests/servers/pocketbase_server.py): superuser password auth,
// list/full list, CRUD, an error, realtime subscribe/unsubscribe and a token
// refresh. Prints one JSON object with what it saw and exits 0; any failure
// exits non-zero with the reason on stderr.
//
//   node tests/peers/pb-sdk-check.mjs http://127.0.0.1:PORT [EMAIL PASSWORD]
//
// The server must already have an `orders` collection with `status` and `n`
// fields (the pytest test creates it through /_pb/collections).
import PocketBase from "pocketbase";
import { EventSource } from "eventsource";

// node has no EventSource; the SDK's realtime service looks for a global one.
globalThis.EventSource = EventSource;

const base = process.argv[2];
const email = process.argv[3] || "admin@example.com";
const password = process.argv[4] || "secret-password-1";
if (!base) {
  console.error("usage: pb-sdk-check.mjs BASEURL [EMAIL PASSWORD]");
  process.exit(2);
}

// Nothing here may hang a test run.
const watchdog = setTimeout(() => {
  console.error("pb-sdk-check: gave up after 20 s");
  process.exit(3);
}, 20000);

const pb = new PocketBase(base);
pb.autoCancellation(false);

const exp = (token) =>
  JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString()).exp;

// Resolves with the first event passed to the returned callback, or rejects
// after ms milliseconds.
function waiter(ms, what) {
  let resolve;
  let reject;
  const p = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  return {
    promise: p,
    callback: (e) => {
      clearTimeout(timer);
      resolve(e);
    },
  };
}

async function main() {
  const out = {};
  const orders = pb.collection("orders");

  const auth = await pb.collection("_superusers").authWithPassword(email, password);
  out.auth = {
    token_parts: auth.token.split(".").length,
    email: auth.record.email,
    collectionName: auth.record.collectionName,
    is_superuser: pb.authStore.isSuperuser,
    is_valid: pb.authStore.isValid,
  };

  const a = await orders.create({ status: "paid", n: 1 });
  const b = await orders.create({ status: "new", n: 2 });
  const c = await orders.create({ status: "paid", n: 3 });
  out.created = {
    ids: [a.id, b.id, c.id],
    id_ok: [a, b, c].every((r) => /^[a-z0-9]{15}$/.test(r.id)),
    created_ok: [a, b, c].every((r) =>
      /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z$/.test(r.created)),
    collectionName: a.collectionName,
  };

  // pb.filter() quotes the way the SDK does; a Date becomes a PocketBase
  // datetime, compared as text on the server.
  const filter = pb.filter("status = {:s} && created >= {:since}", {
    s: "paid",
    since: new Date(Date.now() - 3600 * 1000),
  });
  const page = await orders.getList(1, 50, { filter, sort: "created,id", skipTotal: true });
  out.list = {
    filter,
    page: page.page,
    perPage: page.perPage,
    totalItems: page.totalItems,
    totalPages: page.totalPages,
    ids: page.items.map((r) => r.id),
  };

  const all = await orders.getFullList({ sort: "-n" });
  out.full = { n: all.map((r) => r.n) };

  const one = await orders.getOne(b.id);
  const upd = await orders.update(b.id, { status: "shipped" });
  out.crud = {
    get_status: one.status,
    update_status: upd.status,
    update_same_id: upd.id === b.id,
    delete: await orders.delete(c.id),
  };

  try {
    await orders.getOne(c.id);
    out.error = { thrown: false };
  } catch (e) {
    out.error = {
      thrown: true,
      name: e.constructor.name,
      status: e.status,
      message: e.message,
      response_status: e.response?.status,
    };
  }

  // Realtime: the deprecated COLL topic and COLL/* both hear a create.
  const legacyTopic = waiter(5000, "event on orders");
  const starTopic = waiter(5000, "event on orders/*");
  const unsubLegacy = await pb.realtime.subscribe("orders", legacyTopic.callback);
  await orders.subscribe("*", starTopic.callback);
  out.realtime_connected = pb.realtime.isConnected;
  const d = await orders.create({ status: "live", n: 4 });
  const [ev1, ev2] = await Promise.all([legacyTopic.promise, starTopic.promise]);
  out.realtime = {
    legacy_topic: { action: ev1.action, id: ev1.record.id, status: ev1.record.status },
    star_topic: { action: ev2.action, id: ev2.record.id, status: ev2.record.status },
    created_id: d.id,
  };
  await unsubLegacy();
  await orders.unsubscribe("*");
  out.realtime_after_unsubscribe = pb.realtime.isConnected;

  // A refresh issued within the same second could carry the same exp (and
  // so the same token): wait for the next second first.
  const before = pb.authStore.token;
  const second = Math.floor(Date.now() / 1000);
  while (Math.floor(Date.now() / 1000) === second) {
    await new Promise((r) => setTimeout(r, 25));
  }
  const refreshed = await pb.collection("_superusers").authRefresh();
  out.refresh = {
    token_changed: refreshed.token !== before,
    exp_later: exp(refreshed.token) > exp(before),
    store_updated: pb.authStore.token === refreshed.token,
    record_email: refreshed.record.email,
  };
  return out;
}

main().then(
  (out) => {
    clearTimeout(watchdog);
    console.log(JSON.stringify(out));
    process.exit(0);
  },
  (e) => {
    clearTimeout(watchdog);
    console.error("pb-sdk-check failed:", e?.stack || e, e?.response ? JSON.stringify(e.response) : "");
    process.exit(1);
  },
);
