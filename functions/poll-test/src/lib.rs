//! `GET /api/v1/communication/poll/test/` — "is long polling up?"
//!
//! Answers the guide's JSON without touching the broker or asking for a token, so it
//! checks the HTTP path alone (API Gateway, the function, its runtime).

use lambda_http::{
    Body, Error, Request, Response,
    http::{Method, StatusCode},
};
use longpoll::{
    http::{json_response, now_seconds, require_method, respond},
    routes::Route,
};
use serde_json::json;

/// Where this function is served.
pub const ROUTE: Route = Route {
    method: Method::GET,
    path: "/api/v1/communication/poll/test/",
    function: "poll-test",
};

/// The Lambda handler; also mounted by the local server.
pub async fn handle(request: Request) -> Result<Response<Body>, Error> {
    respond(require_method(&request, ROUTE.method).map(|()| {
        json_response(
            StatusCode::OK,
            &json!({"status": "ok", "message": "Long polling is working", "timestamp": now_seconds()}),
        )
    }))
}
