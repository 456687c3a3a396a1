// Unit tests of LongPollingClient with a scripted fake fetch (node's test runner).

import assert from "node:assert/strict";
import { test } from "node:test";

import { LongPollingClient, type LongPollingOptions, type Status } from "../src/index.js";

type Reply = Response | Error | "hang";

/** A fetch that answers with `replies` in turn (then hangs) and records each call. */
function scriptedFetch(replies: Reply[]) {
  const calls: { url: string; init: RequestInit }[] = [];
  const fetch = (async (url: string, init: RequestInit = {}) => {
    calls.push({ url, init });
    const reply = replies.shift() ?? "hang";
    if (reply === "hang") {
      return new Promise((_, reject) =>
        init.signal?.addEventListener("abort", () => reject(new Error("aborted"))),
      );
    }
    if (reply instanceof Error) throw reply;
    return reply;
  }) as unknown as typeof globalThis.fetch;
  return { fetch, calls };
}

function events(...items: { id: string; event?: string; data?: unknown }[]): Response {
  const body = items.map(({ id, event = "message", data = { id } }) => ({
    id,
    event,
    data,
    timestamp: 1,
  }));
  return Response.json({ events: body, timestamp: 1 });
}

function error(status: number, headers: Record<string, string> = {}): Response {
  return Response.json({ error: "e", message: `status ${status}` }, { status, headers });
}

/** A client with recorded sleeps that return at once, and memory storage. */
function client(replies: Reply[], options: LongPollingOptions = {}) {
  const { fetch, calls } = scriptedFetch(replies);
  const sleeps: number[] = [];
  const store = new Map<string, string>();
  const storage = {
    getItem: (key: string) => store.get(key) ?? null,
    setItem: (key: string, value: string) => void store.set(key, value),
  };
  const poller = new LongPollingClient("TOKEN", {
    fetch,
    storage,
    random: () => 1,
    sleep: async (ms) => void sleeps.push(ms),
    ...options,
  });
  return { poller, calls, sleeps, storage };
}

/** Waits until `check` holds (the client runs on its own). */
async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (check()) return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  assert.fail(`timed out waiting for ${what}`);
}

test("the token goes in Authorization: Bearer, with this tab's device and the cursor", async () => {
  const { poller, calls } = client([events({ id: "a" })], { device: "tab-1" });
  poller.start();
  await until(() => calls.length === 2, "the second poll");
  poller.stop();
  const first = new URL(calls[0].url, "http://x");
  assert.equal(first.pathname, "/api/v1/communication/poll/events/");
  assert.equal(first.searchParams.get("device"), "tab-1");
  assert.equal(first.searchParams.get("ack"), "", "the first poll acknowledges nothing");
  assert.equal(first.searchParams.get("token"), null);
  assert.deepEqual(calls[0].init.headers, { Authorization: "Bearer TOKEN" });
  assert.equal(new URL(calls[1].url, "http://x").searchParams.get("ack"), "a");
});

test("the token goes in the query only when asked; guide mode sends neither device nor ack", async () => {
  const { poller, calls } = client([], { tokenInQuery: true, device: false, cursor: false });
  poller.start();
  await until(() => calls.length === 1, "a poll");
  poller.stop();
  assert.equal(calls[0].url, "/api/v1/communication/poll/events/?token=TOKEN");
  assert.deepEqual(calls[0].init.headers, {});
});

test("a device id is made once per tab and kept in sessionStorage", async () => {
  const first = client([]);
  const id = first.storage.getItem("longpoll.device.anonymous");
  assert.match(id ?? "", /^[A-Za-z0-9_-]{1,64}$/);
  const again = new LongPollingClient("T", { storage: first.storage, fetch: first.poller["fetchImpl"] });
  assert.equal(again["device"], id);
});

test("errors back off exponentially with full jitter, up to the cap", async () => {
  const replies = Array.from({ length: 7 }, () => error(502));
  const { poller, sleeps, calls } = client(replies, {
    backoffInitialMs: 1000,
    backoffMaxMs: 30_000,
  });
  poller.start();
  await until(() => calls.length === 8, "eight polls");
  poller.stop();
  assert.deepEqual(sleeps, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);

  const half = client([error(500), error(500)], { random: () => 0.5 });
  half.poller.start();
  await until(() => half.calls.length === 3, "three polls");
  half.poller.stop();
  assert.deepEqual(half.sleeps, [500, 1000], "a random fraction of the ceiling");
});

test("Retry-After is honoured, and a success resets the backoff", async () => {
  const { poller, sleeps, calls } = client(
    [error(503, { "Retry-After": "7" }), error(503), events({ id: "a" }), error(503)],
    { random: () => 0.1 },
  );
  poller.start();
  await until(() => calls.length === 5, "five polls");
  poller.stop();
  assert.deepEqual(sleeps, [7000, 200, 100]);
});

test("network errors and timeouts retry; status goes connecting, live, reconnecting, live", async () => {
  const { poller, calls } = client(
    [events({ id: "a" }), new TypeError("failed to fetch"), "hang", events({ id: "b" })],
    { healthTimeoutMs: 50 },
  );
  const statuses: Status[] = [];
  poller.on("status", (status) => statuses.push(status));
  poller.start();
  await until(() => calls.length === 5, "five polls");
  poller.stop();
  assert.deepEqual(statuses, ["connecting", "live", "reconnecting", "live", "offline"]);
});

test("a poll times out from the hold the server names, not from a constant", async () => {
  const held = (holdMs: string) =>
    Response.json({ events: [], timestamp: 1 }, { headers: { "X-Poll-Hold-Ms": holdMs } });
  const { poller, calls } = client([held("25000"), "hang"]);
  assert.equal(poller.healthTimeoutMs(), 34_500, "before any answer: the longest hold");
  poller.start();
  await until(() => calls.length >= 2, "the second poll");
  poller.stop();
  assert.equal(poller.healthTimeoutMs(), 29_500, "a 25 s hold");
  const failed = client([error(503, { "X-Poll-Hold-Ms": "5500" }), "hang"]);
  failed.poller.start();
  await until(() => failed.calls.length >= 2, "the poll after the 503");
  failed.poller.stop();
  assert.equal(failed.poller.healthTimeoutMs(), 10_000, "an error names the hold too");
  const fixed = client([held("25000")], { healthTimeoutMs: 50 });
  assert.equal(fixed.poller.healthTimeoutMs(), 50, "the caller's own timeout wins");
});

test("a 401 stops polling and reports why", async () => {
  const { poller, calls } = client([error(401), events({ id: "a" })]);
  const errors: unknown[] = [];
  poller.on("error", (error) => errors.push(error));
  poller.start();
  await until(() => poller.status === "offline" && errors.length === 1, "the stop");
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(calls.length, 1, "no poll after a 401");
  assert.equal(poller.isPolling, false);
  assert.equal((errors[0] as { status: number }).status, 401);
});

test("events are de-duplicated by id; the cursor advances only after the handlers ran", async () => {
  const { poller, calls } = client([
    events({ id: "a" }, { id: "b" }),
    // The response to the previous poll was lost by the page: the same events again.
    events({ id: "a" }, { id: "b" }, { id: "c" }),
  ]);
  const log: string[] = [];
  poller.on("message", (data: { id: string }) => {
    log.push(`handled ${data.id}, polls so far ${calls.length}, cursor ${poller.cursor}`);
  });
  poller.start();
  await until(() => calls.length === 3, "three polls");
  poller.stop();
  assert.deepEqual(log, [
    "handled a, polls so far 1, cursor ",
    "handled b, polls so far 1, cursor ",
    "handled c, polls so far 2, cursor b",
  ]);
  assert.equal(new URL(calls[2].url, "http://x").searchParams.get("ack"), "c");
});

test("the cursor survives a reload of the tab (sessionStorage)", async () => {
  const first = client([events({ id: "a" })], { device: "tab" });
  first.poller.start();
  await until(() => first.calls.length === 2, "two polls");
  first.poller.stop();
  const reloaded = client([], { device: "tab" });
  const key = "longpoll.cursor.anonymous.tab";
  reloaded.storage.setItem(key, first.storage.getItem(key)!);
  const poller = new LongPollingClient("T", {
    device: "tab",
    storage: reloaded.storage,
    fetch: scriptedFetch([]).fetch,
  });
  assert.equal(poller.cursor, "a");
});

test("a failing handler does not stop the others or the cursor", async () => {
  const { poller, calls } = client([events({ id: "a" }, { id: "b" })]);
  const handled: string[] = [];
  const original = console.error;
  console.error = () => {};
  try {
    poller.on("message", (data: { id: string }) => {
      if (data.id === "a") throw new Error("boom");
      handled.push(data.id);
    });
    poller.start();
    await until(() => calls.length === 2, "two polls");
    poller.stop();
  } finally {
    console.error = original;
  }
  assert.deepEqual(handled, ["b"]);
  assert.equal(poller.cursor, "b");
});

test("stop() aborts the poll in flight and no handler runs afterwards", async () => {
  const { poller, calls } = client(["hang"]);
  poller.start();
  await until(() => calls.length === 1, "a poll");
  poller.stop();
  assert.equal(calls[0].init.signal?.aborted, true);
  assert.equal(poller.status, "offline");
});

test("disconnect() stops and posts to poll/disconnect/ with keepalive", async () => {
  const { poller, calls } = client([Response.json({ status: "disconnected", user_id: 1 })]);
  await poller.disconnect();
  assert.equal(calls[0].url, "/api/v1/communication/poll/disconnect/");
  assert.equal(calls[0].init.method, "POST");
  assert.equal(calls[0].init.keepalive, true);
  assert.deepEqual(calls[0].init.headers, { Authorization: "Bearer TOKEN" });
});

test("each user of a shared storage keeps a device and cursor of their own", async () => {
  const jwt = (sub: string) => `h.${btoa(JSON.stringify({ sub })).replace(/=+$/, "")}.s`;
  const store = new Map<string, string>();
  const storage = {
    getItem: (key: string) => store.get(key) ?? null,
    setItem: (key: string, value: string) => void store.set(key, value),
  };
  const fetch = scriptedFetch([]).fetch;
  const alice = new LongPollingClient(jwt("1"), { storage, fetch });
  const bob = new LongPollingClient(jwt("2"), { storage, fetch });
  assert.ok(store.has("longpoll.device.1") && store.has("longpoll.device.2"));
  assert.notEqual(alice["device"], bob["device"]);
});
