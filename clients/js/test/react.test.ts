// useLongPolling under React's StrictMode (which mounts, unmounts and mounts again in
// development), rendered into jsdom: exactly one client polls while mounted, none after
// unmount, and events reach the latest callback.

import assert from "node:assert/strict";
import { after, test } from "node:test";

import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><div id=root></div>");
Object.assign(globalThis, {
  window: dom.window,
  document: dom.window.document,
  navigator: dom.window.navigator,
  IS_REACT_ACT_ENVIRONMENT: true,
});

// jsdom's window keeps the process alive until closed.
after(() => dom.window.close());

const React = await import("react");
const { createRoot } = await import("react-dom/client");
const { act } = React;
const { useLongPolling } = await import("../src/react.js");

/** A fetch whose polls stay held until aborted, except those given events. */
function heldFetch() {
  const polls: { signal: AbortSignal; answered: boolean; answer: (body: unknown) => void }[] = [];
  const fetch = (async (_url: string, init: RequestInit = {}) =>
    new Promise((resolve, reject) => {
      init.signal?.addEventListener("abort", () => reject(new Error("aborted")));
      const poll = {
        signal: init.signal!,
        answered: false,
        answer: (body: unknown) => {
          poll.answered = true;
          resolve(Response.json(body));
        },
      };
      polls.push(poll);
    })) as unknown as typeof globalThis.fetch;
  /** Polls held right now: neither answered nor aborted. */
  const live = () => polls.filter((poll) => !poll.answered && !poll.signal.aborted);
  return { fetch, polls, live };
}

test("StrictMode's double mount leaves one client polling; unmount leaves none", async () => {
  const { fetch, polls, live } = heldFetch();
  const received: string[] = [];
  let status = "";
  function Chat({ label }: { label: string }) {
    const result = useLongPolling(
      "h.eyJzdWIiOiI3In0.s",
      (type, data) => received.push(`${label}:${type}:${data.text}`),
      { fetch, storage: null, device: "tab" },
    );
    status = result.status;
    return null;
  }
  const root = createRoot(document.getElementById("root")!);
  await act(async () => {
    root.render(React.createElement(React.StrictMode, null, React.createElement(Chat, { label: "first" })));
  });
  assert.equal(polls.length, 2, "StrictMode mounted twice");
  assert.equal(live().length, 1, "the first mount's poll was aborted");
  assert.equal(status, "connecting");

  // A re-render with a new callback does not restart polling; events reach the new one.
  await act(async () => {
    root.render(React.createElement(React.StrictMode, null, React.createElement(Chat, { label: "second" })));
  });
  assert.equal(live().length, 1);
  await act(async () => {
    live()[0].answer({ events: [{ id: "e1", event: "message", data: { text: "hi" }, timestamp: 1 }] });
  });
  assert.deepEqual(received, ["second:message:hi"]);
  assert.equal(status, "live");
  assert.equal(live().length, 1, "the next poll is held");

  await act(async () => root.unmount());
  assert.equal(live().length, 0, "unmount aborted the poll");
  const before = polls.length;
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(polls.length, before, "no poll after unmount");
});
