// The demo page in a real browser (Debian's Chromium driven by playwright-core) against
// the one-command local server on RabbitMQ: typing, messages, read receipts, a college
// notice, a second tab, and a reload mid-stream that loses nothing.
//
//   LONGPOLL_LOCAL=target/debug/longpoll-local AMQP_URL=amqp://… node --test clients/js/e2e/
//
// Screenshots of the final state go to tests/artifacts/.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const artifacts = resolve(root, "tests/artifacts");
const SOON = 1000; // "within a second"

let server;
let browser;
let base;

function freePort() {
  return new Promise((done) => {
    const probe = createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => done(port));
    });
  });
}

before(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const binary = process.env.LONGPOLL_LOCAL ?? resolve(root, "target/debug/longpoll-local");
  server = spawn(binary, ["--addr", `127.0.0.1:${port}`], {
    env: {
      ...process.env,
      AMQP_URL: process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f",
      RUST_LOG: "warn",
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`${base}/api/v1/communication/poll/test/`)).ok) break;
    } catch {}
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
});

/** A pane for `user` in its own tab of `context`, once its client is live. Every
 * message the tab ever shows, across reloads, is recorded in the tab's sessionStorage
 * (written in the same task that shows it, so a reload cannot come in between). */
async function pane(context, user) {
  const page = await context.newPage();
  await page.addInitScript(() => {
    new MutationObserver((mutations) => {
      for (const mutation of mutations)
        for (const node of mutation.addedNodes)
          if (node.matches?.("#messages li.theirs")) {
            const shown = JSON.parse(sessionStorage.getItem("e2e.shown") ?? "[]");
            shown.push(node.textContent);
            sessionStorage.setItem("e2e.shown", JSON.stringify(shown));
          }
    }).observe(document, { childList: true, subtree: true });
  });
  page.on("pageerror", (error) => console.error(`page error (user ${user}):`, error));
  await page.goto(`${base}/demo/pane.html?user=${user}`);
  await page.waitForSelector('#status[data-status="live"]', { timeout: 10_000 });
  return page;
}

const shownIn = (page) =>
  page.evaluate(() => JSON.parse(sessionStorage.getItem("e2e.shown") ?? "[]"));

const messageIds = (page) =>
  page.$$eval("#messages li.theirs", (items) => items.map((item) => item.textContent));

test("two users chat, see typing and receipts, get notices, in two tabs, across a reload", async () => {
  const alice = await pane(await browser.newContext(), 1);
  const bobContext = await browser.newContext();
  const bob = await pane(bobContext, 2);
  const bobSecondTab = await pane(bobContext, 2);

  // Alice types: Bob sees the indicator.
  await alice.type("#input", "Hello B");
  await bob.waitForSelector("#typing:has-text('Alice is typing')", { timeout: SOON });

  // She sends: Bob's panes (both tabs) show the message, the indicator goes.
  const text = `Hello Bob ${Date.now()}`;
  await alice.fill("#input", text);
  await alice.click("#send");
  for (const tab of [bob, bobSecondTab]) {
    await tab.waitForSelector(`#messages li.theirs:has-text("${text}")`, { timeout: SOON });
  }
  assert.equal(await bob.textContent("#typing"), "");

  // Bob's pane showed it, so it sent a read receipt: Alice sees it.
  await alice.waitForSelector(`#messages li.mine:has-text("${text}") .receipt`, { timeout: SOON });

  // A college notice reaches everyone.
  await alice.click("#notice");
  for (const tab of [alice, bob, bobSecondTab]) {
    await tab.waitForSelector("#notices li:has-text('Notice from Alice')", { timeout: SOON });
  }

  // A stream of messages while Bob reloads his first tab: he loses none of them.
  const stream = Array.from({ length: 12 }, (_, n) => `stream ${n} ${Date.now()}`);
  for (const [n, message] of stream.entries()) {
    await alice.fill("#input", message);
    await alice.click("#send");
    if (n === 5) {
      await bob.reload();
      await bob.waitForSelector('#status[data-status="live"]', { timeout: 10_000 });
    }
    await alice.waitForTimeout(50);
  }
  // A poll of the page before the reload may still be held on the server (up to 5.5 s)
  // with some of these; in cursor mode it requeues them, so they come, a little later.
  const deadline = Date.now() + 15_000;
  let received = [];
  let shown = [];
  while (Date.now() < deadline) {
    shown = await shownIn(bob);
    received = [...new Set(shown)];
    if (stream.every((message) => received.includes(message))) break;
    await bob.waitForTimeout(100);
  }
  const missing = stream.filter((message) => !received.includes(message));
  assert.deepEqual(missing, [], "every message reached Bob's reloaded tab");
  const shownTwice = stream.filter((message) => shown.filter((m) => m === message).length > 1);
  assert.deepEqual(shownTwice, [], "none was shown again after the reload");
  const afterReload = await messageIds(bob);
  assert.equal(new Set(afterReload).size, afterReload.length, "no message shown twice");
  // The second tab, never reloaded, has every message too.
  for (const message of stream) {
    await bobSecondTab.waitForSelector(`#messages li.theirs:has-text("${message}")`, {
      timeout: 5000,
    });
  }

  mkdirSync(artifacts, { recursive: true });
  await alice.screenshot({ path: resolve(artifacts, "demo-alice.png") });
  await bob.screenshot({ path: resolve(artifacts, "demo-bob.png") });
});
