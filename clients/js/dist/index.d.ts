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
export type Status = "connecting" | "live" | "reconnecting" | "offline";
/** One event as the poll endpoint returns it. */
export interface LongPollEvent<Data = Record<string, unknown>> {
    id: string;
    event: string;
    data: Data;
    timestamp: number | null;
}
export type EventHandler = (data: any, event: LongPollEvent) => void;
export interface LongPollingOptions {
    /** Where the API is mounted. Default `/api/v1/communication`. */
    baseUrl?: string;
    /** Send the token as `?token=` instead of `Authorization: Bearer`. */
    tokenInQuery?: boolean;
    /**
     * This tab's device id (`?device=`): every tab gets every event. Default: a random id
     * kept in `sessionStorage`. `false`: the guide's one queue per user, shared by tabs.
     */
    device?: string | false;
    /** Cursor mode (`?ack=`): events stay queued until acknowledged. Default true. */
    cursor?: boolean;
    /** First retry delay and the cap of the exponential backoff, in ms. */
    backoffInitialMs?: number;
    backoffMaxMs?: number;
    /** No answer for this long: abort the poll and retry. By default the server's hold
     * (the `X-Poll-Hold-Ms` of its last answer) plus 4.5 s: the guide's 10 s on its 5.5 s
     * hold; before the first answer, the longest hold a front door allows plus 4.5 s. */
    healthTimeoutMs?: number;
    /** For tests and other runtimes. */
    fetch?: typeof fetch;
    storage?: Pick<Storage, "getItem" | "setItem"> | null;
    random?: () => number;
    sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}
/** The status and error "events" a client emits besides the server's event types. */
type ClientEvents = {
    status: (status: Status) => void;
    error: (error: LongPollError) => void;
};
/** Why polling failed or stopped. */
export declare class LongPollError extends Error {
    /** HTTP status, or 0 for a network error or timeout. */
    readonly status: number;
    /** The server's `error` code, when it sent one. */
    readonly code?: string | undefined;
    constructor(message: string, 
    /** HTTP status, or 0 for a network error or timeout. */
    status: number, 
    /** The server's `error` code, when it sent one. */
    code?: string | undefined);
}
export declare class LongPollingClient {
    /** The current connection status. */
    status: Status;
    private token;
    private readonly options;
    /** The caller's fixed health timeout, if it gave one. */
    private readonly fixedHealthTimeoutMs;
    /** The hold the server last named (`X-Poll-Hold-Ms`), in ms; null until it has. */
    private serverHoldMs;
    private readonly fetchImpl;
    private readonly storage;
    private readonly random;
    private readonly sleep;
    private readonly device;
    /** The token's user (`sub`), to keep each user's stored device and cursor apart. */
    private readonly user;
    private handlers;
    private seen;
    private seenSet;
    private cursorValue;
    /** Aborts the current run (its request and its waits); null while stopped. */
    private run;
    constructor(token: string, options?: LongPollingOptions);
    /** Registers a handler for an event type (`message`, `typing`, …), for `status` or
     * for `error`; handlers get the event's parsed `data`. Returns an unsubscribe. */
    on<K extends keyof ClientEvents>(type: K, handler: ClientEvents[K]): () => void;
    on(type: string, handler: EventHandler): () => void;
    off(type: string, handler: (...args: any[]) => void): void;
    /** Replaces the token (after a refresh); the next poll uses it. */
    setToken(token: string): void;
    /** The id of the last event handled: what the next poll acknowledges. */
    get cursor(): string;
    /** Starts polling (again); does nothing if already running. */
    start(): void;
    /** Stops polling and aborts the request in flight. */
    stop(): void;
    get isPolling(): boolean;
    /**
     * Stops, and tells the server the user left (presence off). `beacon: true` for page
     * unload: `navigator.sendBeacon` when available (token in the query, as a beacon has
     * no headers), else a `keepalive` request that outlives the page.
     */
    disconnect({ beacon }?: {
        beacon?: boolean;
    }): Promise<void>;
    private loop;
    private pollOnce;
    /** How long the next poll may go unanswered: the caller's fixed timeout, or the
     * server's hold plus a margin. */
    healthTimeoutMs(): number;
    /** Keeps the hold the server names on its answers (errors included). */
    private learnHold;
    /** Runs the handlers for each new event, then advances the cursor past the batch. */
    private handle;
    private remember;
    private pollUrl;
    private storedDevice;
    private cursorKey;
    private setStatus;
    private emit;
}
export {};
