/**
 * `useLongPolling(token, onEvent, options)`: the design guide's React hook on the
 * client, returning the connection status.
 *
 * One client per mounted component and token; the effect's clean-up stops it (aborting
 * the request in flight), so StrictMode's mount, unmount, mount in development leaves
 * exactly one client polling, and no handler runs after unmount.
 */
import { useEffect, useRef, useState } from "react";
import { LongPollingClient } from "./index.js";
export function useLongPolling(token, onEvent, options = {}) {
    const [status, setStatus] = useState("offline");
    // The latest callback, without restarting the client when it changes.
    const onEventRef = useRef(onEvent);
    onEventRef.current = onEvent;
    const optionsRef = useRef(options);
    optionsRef.current = options;
    const { baseUrl, device, cursor, tokenInQuery } = options;
    useEffect(() => {
        if (!token)
            return;
        const { types = ["message", "typing", "read_receipt", "notification"], ...rest } = optionsRef.current;
        const client = new LongPollingClient(token, rest);
        for (const type of types) {
            client.on(type, (data, event) => onEventRef.current(type, data, event));
        }
        client.on("status", setStatus);
        client.start();
        return () => client.stop();
    }, [token, baseUrl, device, cursor, tokenInQuery]);
    return { status };
}
