/**
 * The browser client of longpoll: the design guide's `LongPollingClient`, with what its
 * own "Best Practices" ask for and its code does not do.
 *
 * - The token goes in `Authorization: Bearer` (in `?token=` only when asked).
 * - Delivery guarantees by default: a per-tab `device` id (kept in `sessionStorage`, so a
 *   reload keeps it) and cursor mode (`ack=` the last event id handled), so a lost
 *   response or a reload loses nothing; events are de-duplicated by `id`.
 * - Exponential backoff with full jitter on network errors, 5xx and 429, honouring
 *   `Retry-After`; a `status` event (`connecting`, `live`, `reconnecting`, `offline`);
 *   the guide's health rule (no answer for over 10 s: abort and retry); stops on 401.
 * - `stop()` aborts the request in flight; `disconnect()` tells the server the user left,
 *   with a `keepalive` request (or `navigator.sendBeacon` on page unload).
 */
/** sessionStorage keys, followed by the token's user (two users may share a tab's
 * storage, e.g. in two same-origin frames). */
const DEVICE_KEY = "longpoll.device";
const CURSOR_KEY = "longpoll.cursor";
/** A poll still held this long after it was sent was accepted (errors answer at once):
 * the status turns `live` without waiting out the first hold. */
const LIVE_AFTER_MS = 1000;
/** How much longer than the server's hold a poll may go unanswered before it is
 * taken for a dead connection (the guide's 10 s on a 5.5 s hold). */
const HEALTH_MARGIN_MS = 4500;
/** The longest hold any front door allows (API Gateway's 30 s integration timeout):
 * what a poll is given before the server has named its hold. */
const LONGEST_HOLD_MS = 30_000;
/** How many recent event ids are remembered for de-duplication. */
const SEEN_IDS = 1000;
/** Why polling failed or stopped. */
export class LongPollError extends Error {
    status;
    code;
    constructor(message, 
    /** HTTP status, or 0 for a network error or timeout. */
    status, 
    /** The server's `error` code, when it sent one. */
    code) {
        super(message);
        this.status = status;
        this.code = code;
        this.name = "LongPollError";
    }
}
export class LongPollingClient {
    /** The current connection status. */
    status = "offline";
    token;
    options;
    /** The caller's fixed health timeout, if it gave one. */
    fixedHealthTimeoutMs;
    /** The hold the server last named (`X-Poll-Hold-Ms`), in ms; null until it has. */
    serverHoldMs = null;
    fetchImpl;
    storage;
    random;
    sleep;
    device;
    /** The token's user (`sub`), to keep each user's stored device and cursor apart. */
    user;
    handlers = new Map();
    seen = [];
    seenSet = new Set();
    cursorValue;
    /** Aborts the current run (its request and its waits); null while stopped. */
    run = null;
    constructor(token, options = {}) {
        this.token = token;
        this.options = {
            baseUrl: (options.baseUrl ?? "/api/v1/communication").replace(/\/$/, ""),
            tokenInQuery: options.tokenInQuery ?? false,
            cursor: options.cursor ?? true,
            backoffInitialMs: options.backoffInitialMs ?? 1000,
            backoffMaxMs: options.backoffMaxMs ?? 30_000,
        };
        this.fixedHealthTimeoutMs = options.healthTimeoutMs;
        this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
        this.storage = options.storage !== undefined ? options.storage : defaultStorage();
        this.random = options.random ?? Math.random;
        this.sleep = options.sleep ?? abortableSleep;
        this.user = subjectOf(token);
        this.device =
            options.device === false ? null : (options.device ?? this.storedDevice());
        this.cursorValue = this.storage?.getItem(this.cursorKey()) ?? "";
    }
    on(type, handler) {
        let set = this.handlers.get(type);
        if (!set) {
            set = new Set();
            this.handlers.set(type, set);
        }
        set.add(handler);
        return () => this.off(type, handler);
    }
    off(type, handler) {
        this.handlers.get(type)?.delete(handler);
    }
    /** Replaces the token (after a refresh); the next poll uses it. */
    setToken(token) {
        this.token = token;
    }
    /** The id of the last event handled: what the next poll acknowledges. */
    get cursor() {
        return this.cursorValue;
    }
    /** Starts polling (again); does nothing if already running. */
    start() {
        if (this.run)
            return;
        const run = new AbortController();
        this.run = run;
        void this.loop(run.signal);
    }
    /** Stops polling and aborts the request in flight. */
    stop() {
        this.run?.abort();
        this.run = null;
        this.setStatus("offline");
    }
    get isPolling() {
        return this.run !== null;
    }
    /**
     * Stops, and tells the server the user left (presence off). `beacon: true` for page
     * unload: `navigator.sendBeacon` when available (token in the query, as a beacon has
     * no headers), else a `keepalive` request that outlives the page.
     */
    async disconnect({ beacon = false } = {}) {
        this.stop();
        const url = `${this.options.baseUrl}/poll/disconnect/`;
        const nav = globalThis.navigator;
        if (beacon && nav?.sendBeacon) {
            nav.sendBeacon(`${url}?token=${encodeURIComponent(this.token)}`);
            return;
        }
        try {
            await this.fetchImpl(url, {
                method: "POST",
                headers: { Authorization: `Bearer ${this.token}` },
                keepalive: true,
            });
        }
        catch {
            // Presence lapses by itself after its TTL.
        }
    }
    async loop(signal) {
        let failures = 0;
        this.setStatus("connecting");
        while (!signal.aborted) {
            const outcome = await this.pollOnce(signal);
            if (signal.aborted)
                return;
            if (outcome.kind === "ok") {
                failures = 0;
                this.setStatus("live");
                continue;
            }
            this.emit("error", outcome.error);
            if (outcome.kind === "fatal") {
                this.run = null;
                this.setStatus("offline");
                return;
            }
            this.setStatus("reconnecting");
            const ceiling = Math.min(this.options.backoffMaxMs, this.options.backoffInitialMs * 2 ** failures);
            failures += 1;
            // Full jitter, but never sooner than the server asked.
            const delay = Math.max(this.random() * ceiling, outcome.retryAfterMs ?? 0);
            await this.sleep(delay, signal).catch(() => undefined);
        }
    }
    async pollOnce(signal) {
        const request = new AbortController();
        const abort = () => request.abort();
        signal.addEventListener("abort", abort, { once: true });
        // The guide's health rule: no answer for too long means the connection is dead.
        const healthTimeoutMs = this.healthTimeoutMs();
        const health = setTimeout(abort, healthTimeoutMs);
        const accepted = setTimeout(() => {
            if (!signal.aborted)
                this.setStatus("live");
        }, LIVE_AFTER_MS);
        try {
            const response = await this.fetchImpl(this.pollUrl(), {
                method: "GET",
                headers: this.options.tokenInQuery ? {} : { Authorization: `Bearer ${this.token}` },
                signal: request.signal,
                cache: "no-store",
            });
            this.learnHold(response);
            if (response.ok) {
                const body = (await response.json());
                if (!signal.aborted)
                    this.handle(body.events ?? []);
                return { kind: "ok" };
            }
            const error = await errorOf(response);
            if (response.status === 401 || response.status === 400 || response.status === 403) {
                return { kind: "fatal", error };
            }
            return { kind: "retry", error, retryAfterMs: retryAfterMs(response) };
        }
        catch (cause) {
            const timedOut = request.signal.aborted && !signal.aborted;
            const message = timedOut
                ? `no answer for ${healthTimeoutMs} ms`
                : `network error: ${String(cause)}`;
            return { kind: "retry", error: new LongPollError(message, 0) };
        }
        finally {
            clearTimeout(health);
            clearTimeout(accepted);
            signal.removeEventListener("abort", abort);
        }
    }
    /** How long the next poll may go unanswered: the caller's fixed timeout, or the
     * server's hold plus a margin. */
    healthTimeoutMs() {
        return this.fixedHealthTimeoutMs ?? (this.serverHoldMs ?? LONGEST_HOLD_MS) + HEALTH_MARGIN_MS;
    }
    /** Keeps the hold the server names on its answers (errors included). */
    learnHold(response) {
        const hold = Number(response.headers?.get("x-poll-hold-ms"));
        if (Number.isFinite(hold) && hold > 0)
            this.serverHoldMs = hold;
    }
    /** Runs the handlers for each new event, then advances the cursor past the batch. */
    handle(events) {
        for (const event of events) {
            if (this.seenSet.has(event.id))
                continue;
            this.remember(event.id);
            for (const handler of [...(this.handlers.get(event.event) ?? [])]) {
                try {
                    handler(event.data, event);
                }
                catch (error) {
                    // One failing handler must not stop delivery or the cursor.
                    console.error(`longpoll: a ${event.event} handler failed`, error);
                }
            }
        }
        const last = events[events.length - 1];
        if (last && this.options.cursor) {
            this.cursorValue = last.id;
            this.storage?.setItem(this.cursorKey(), last.id);
        }
    }
    remember(id) {
        this.seen.push(id);
        this.seenSet.add(id);
        if (this.seen.length > SEEN_IDS) {
            this.seenSet.delete(this.seen.shift());
        }
    }
    pollUrl() {
        const query = new URLSearchParams();
        if (this.device)
            query.set("device", this.device);
        if (this.options.cursor)
            query.set("ack", this.cursorValue);
        if (this.options.tokenInQuery)
            query.set("token", this.token);
        const text = query.toString();
        return `${this.options.baseUrl}/poll/events/${text ? `?${text}` : ""}`;
    }
    storedDevice() {
        const key = `${DEVICE_KEY}.${this.user}`;
        const stored = this.storage?.getItem(key);
        if (stored && /^[A-Za-z0-9_-]{1,64}$/.test(stored))
            return stored;
        const id = randomId();
        this.storage?.setItem(key, id);
        return id;
    }
    cursorKey() {
        return `${CURSOR_KEY}.${this.user}.${this.device ?? "shared"}`;
    }
    setStatus(status) {
        if (this.status === status)
            return;
        this.status = status;
        this.emit("status", status);
    }
    emit(type, ...args) {
        for (const handler of [...(this.handlers.get(type) ?? [])])
            handler(...args);
    }
}
/** The `sub` claim of a JWT, read without verifying (the server verifies). */
function subjectOf(token) {
    try {
        const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
        const sub = JSON.parse(atob(payload)).sub;
        return sub === undefined ? "anonymous" : String(sub);
    }
    catch {
        return "anonymous";
    }
}
function defaultStorage() {
    try {
        return globalThis.sessionStorage ?? null;
    }
    catch {
        return null; // storage disabled
    }
}
function randomId() {
    const crypto = globalThis.crypto;
    if (crypto?.randomUUID)
        return crypto.randomUUID();
    return Math.random().toString(36).slice(2) + Date.now().toString(36);
}
function abortableSleep(ms, signal) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(resolve, ms);
        signal.addEventListener("abort", () => {
            clearTimeout(timer);
            reject(new LongPollError("stopped", 0));
        }, { once: true });
    });
}
/** `Retry-After` in seconds (the form the server sends), as milliseconds. */
function retryAfterMs(response) {
    const value = response.headers.get("retry-after");
    const seconds = value === null ? NaN : Number(value);
    return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : undefined;
}
async function errorOf(response) {
    try {
        const body = (await response.json());
        return new LongPollError(body.message ?? `HTTP ${response.status}`, response.status, body.error);
    }
    catch {
        return new LongPollError(`HTTP ${response.status}`, response.status);
    }
}
