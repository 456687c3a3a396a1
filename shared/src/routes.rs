//! The route table: every HTTP route of the contract and the function that answers it.
//!
//! One description, used three ways: the local server mounts it, the
//! `[workspace.metadata.lambda.watch.router]` of the root `Cargo.toml` mirrors it for
//! `cargo lambda watch`, and `template.yaml` mirrors it for API Gateway; a test proves the
//! three agree. Routes match every method: a wrong one reaches the function, which
//! answers 405 with `Allow`, as the contract asks.

/// One route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The method the function serves.
    pub method: &'static str,
    pub path: &'static str,
    /// The function (and binary) name.
    pub function: &'static str,
}

pub const POLL_EVENTS: Route = Route {
    method: "GET",
    path: "/api/v1/communication/poll/events/",
    function: "poll-events",
};
pub const POLL_TEST: Route = Route {
    method: "GET",
    path: "/api/v1/communication/poll/test/",
    function: "poll-test",
};
pub const POLL_DISCONNECT: Route = Route {
    method: "POST",
    path: "/api/v1/communication/poll/disconnect/",
    function: "poll-disconnect",
};
pub const PUBLISH_EVENT: Route = Route {
    method: "POST",
    path: "/api/v1/communication/events/",
    function: "publish-event",
};
pub const POLL_ONLINE: Route = Route {
    method: "GET",
    path: "/api/v1/communication/poll/online/",
    function: "poll-online",
};

/// Every route of the contract.
pub const ROUTES: [Route; 5] = [
    POLL_EVENTS,
    POLL_TEST,
    POLL_DISCONNECT,
    PUBLISH_EVENT,
    POLL_ONLINE,
];
