// One user of the demo: polls with the browser client and renders chat messages, the
// peer's typing indicator, read receipts and college notices. It also publishes (as the
// app's backend would) through the publish endpoint with the local publish key.

import { LongPollingClient } from "./longpoll.js";

const config = await (await fetch("config.json")).json();
const me = config.users.find((user) => String(user.id) === new URLSearchParams(location.search).get("user"))
  ?? config.users[0];
const peer = config.users.find((user) => user.id !== me.id);
const $ = (id) => document.getElementById(id);
$("me").textContent = `${me.name} (user ${me.id})`;
document.title = me.name;

async function publish(event) {
  const response = await fetch(`${config.api}/events/`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Api-Key": config.publish_key },
    body: JSON.stringify(event),
  });
  if (!response.ok) console.error("publish failed", response.status, await response.text());
}

function addMessage({ id, message, mine }) {
  if (document.querySelector(`#messages li[data-id="${id}"]`)) return;
  const item = document.createElement("li");
  item.dataset.id = String(id);
  item.className = mine ? "mine" : "theirs";
  item.textContent = message;
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
}

const client = new LongPollingClient(me.token, { baseUrl: config.api });

client.on("status", (status) => {
  $("status").textContent = status;
  $("status").dataset.status = status;
});

let typingTimer;
client.on("typing", (data) => {
  if (data.sender_id === me.id) return;
  clearTimeout(typingTimer);
  $("typing").textContent = data.is_typing ? `${data.sender_name ?? "Someone"} is typing…` : "";
  // A typing indicator that is not refreshed fades out.
  typingTimer = setTimeout(() => ($("typing").textContent = ""), 4000);
});

client.on("message", (data) => {
  addMessage({ id: data.id, message: data.message, mine: data.sender_id === me.id });
  if (data.sender_id !== me.id) {
    clearTimeout(typingTimer);
    $("typing").textContent = "";
    // Shown on screen: tell the sender it was read.
    publish({
      user_id: data.sender_id,
      event: "read_receipt",
      data: { message_id: data.id, reader_id: me.id, reader_name: me.name, read_at: new Date().toISOString() },
    });
  }
});

client.on("read_receipt", (data) => {
  const item = document.querySelector(`#messages li[data-id="${data.message_id}"]`);
  if (item && !item.querySelector(".receipt")) {
    const receipt = document.createElement("span");
    receipt.className = "receipt";
    receipt.textContent = `✓ read by ${data.reader_name ?? data.reader_id}`;
    item.append(receipt);
  }
});

client.on("notification", (data) => {
  const item = document.createElement("li");
  item.textContent = `${data.title}: ${data.message}`;
  $("notices").append(item);
});

// Typing: at most one event every 2 s while the user types (debounced on the sender).
let lastTyping = 0;
$("input").addEventListener("input", () => {
  if (Date.now() - lastTyping < 2000) return;
  lastTyping = Date.now();
  publish({ user_id: peer.id, event: "typing", data: { sender_id: me.id, sender_name: me.name, is_typing: true } });
});

$("composer").addEventListener("submit", (submit) => {
  submit.preventDefault();
  const text = $("input").value.trim();
  if (!text) return;
  $("input").value = "";
  lastTyping = 0;
  const id = Date.now() * 100 + Math.floor(Math.random() * 100);
  addMessage({ id, message: text, mine: true });
  publish({
    user_id: peer.id,
    event: "message",
    data: { id, sender_id: me.id, sender_name: me.name, receiver_id: peer.id, message: text },
  });
});

$("notice").addEventListener("click", () =>
  publish({
    college_id: me.college_id,
    event: "notification",
    data: { title: `Notice from ${me.name}`, message: "Mid-term exam schedule released", notification_type: "notice" },
  }),
);

// Leaving the page: presence off at once, with a request that outlives the page.
addEventListener("pagehide", () => client.disconnect({ beacon: true }));
client.start();
