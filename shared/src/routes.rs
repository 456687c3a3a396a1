//! A route: the method, path and function (binary) of one endpoint.
//!
//! Each function crate exports its own `ROUTE` beside its handler, and the handler takes
//! its method from it. The local server mounts the functions from those routes; the
//! `[workspace.metadata.lambda.watch.router]` of the root `Cargo.toml` mirrors them for
//! `cargo lambda watch`, and `template.yaml` for API Gateway; a test of the local server
//! proves all of them agree (and `openapi.yaml` too). Routes match every method: a wrong
//! one reaches the function, which answers 405 with `Allow`, as the contract asks.

use lambda_http::http::Method;

/// Every answer of the poll route names the hold it is served with, in milliseconds, so
/// that a client times a poll out from the deployment's hold (`POLL_TIMEOUT_MS`), not
/// from a constant of its own.
pub const POLL_HOLD_HEADER: &str = "x-poll-hold-ms";

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The method the function serves.
    pub method: Method,
    pub path: &'static str,
    /// The function (and binary) name.
    pub function: &'static str,
}
