//! `POST /api/v1/communication/poll/disconnect/` — mark the caller offline.
//!
//! Deletes the user's presence queue at once instead of letting it lapse five minutes
//! after the last poll (the browser calls this on page unload).

use lambda_http::{
    Body, Error, Request, Response,
    http::{Method, StatusCode},
};
use longpoll::{
    App,
    http::{ApiError, json_response, require_method, respond},
    routes::Route,
};
use serde_json::json;
use tracing::info;

/// Where this function is served.
pub const ROUTE: Route = Route {
    method: Method::POST,
    path: "/api/v1/communication/poll/disconnect/",
    function: "poll-disconnect",
};

/// The Lambda handler; also mounted by the local server.
pub async fn handle(app: &App, request: Request) -> Result<Response<Body>, Error> {
    respond(disconnect(app, &request).await)
}

async fn disconnect(app: &App, request: &Request) -> Result<Response<Body>, ApiError> {
    require_method(request, ROUTE.method)?;
    let identity = app.authenticate(request)?;
    app.presence.mark_offline(identity.user_id).await?;
    info!(user_id = identity.user_id.0, "user disconnected");
    Ok(json_response(
        StatusCode::OK,
        &json!({"status": "disconnected", "user_id": identity.user_id.0}),
    ))
}
