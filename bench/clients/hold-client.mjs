// The browser client (clients/js/dist) in Node, for `longpoll-bench hold`: polls BASE_URL
// as the token's user in cursor mode with a device of its own, and prints one JSON line
// per status change and per `message` event received, with the wall-clock time, for the
// benchmark to time against its publishes.
import { LongPollingClient } from "../../clients/js/dist/index.js";

const [baseUrl, token] = process.argv.slice(2);
const client = new LongPollingClient(token, {
  baseUrl,
  device: "bench-hold",
  storage: null,
});
const print = (line) => process.stdout.write(JSON.stringify({ ...line, at: Date.now() }) + "\n");
client.on("status", (status) => print({ status }));
client.on("message", (data) => print({ message: data.id }));
client.start();
process.on("SIGTERM", () => {
  client.stop();
  process.exit(0);
});
