/**
 * `useLongPolling(token, onEvent, options)`: the design guide's React hook on the
 * client, returning the connection status.
 *
 * One client per mounted component and token; the effect's clean-up stops it (aborting
 * the request in flight), so StrictMode's mount, unmount, mount in development leaves
 * exactly one client polling, and no handler runs after unmount.
 */
import { type LongPollEvent, type LongPollingOptions, type Status } from "./index.js";
export type OnEvent = (type: string, data: any, event: LongPollEvent) => void;
export declare function useLongPolling(token: string | null | undefined, onEvent: OnEvent, options?: LongPollingOptions & {
    types?: string[];
}): {
    status: Status;
};
