//! `GET /api/v1/communication/poll/events/` — the long poll.
//!
//! Verifies the user token, refreshes the user's presence, then asks the broker for the
//! user's events: at once if some wait, as soon as one arrives, or an empty list when
//! the hold (5.5 s, never past the Lambda deadline) runs out.

use lambda_http::{
    Body, Error, Request, Response,
    http::{Method, StatusCode},
};
use longpoll::{
    App,
    http::{ApiError, json_response, now_seconds, poll_deadline, require_method, respond},
};
use serde_json::json;
use tokio::time::Instant;
use tracing::info;

/// The Lambda handler; also mounted by the local server.
pub async fn handle(app: &App, request: Request) -> Result<Response<Body>, Error> {
    respond(poll(app, &request).await)
}

async fn poll(app: &App, request: &Request) -> Result<Response<Body>, ApiError> {
    require_method(request, Method::GET)?;
    let identity = app.authenticate(request)?;
    let deadline = poll_deadline(request, app.config.poll_timeout);
    let started = Instant::now();
    // Presence first: if the broker is down we answer 503 before taking any event.
    app.broker.mark_online(identity.user_id).await?;
    let events = app
        .broker
        .wait_for_events(&identity.subscriber(), deadline)
        .await?;
    info!(
        user_id = identity.user_id.0,
        events = events.len(),
        waited_ms = started.elapsed().as_millis() as u64,
        "poll answered"
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({"events": events, "timestamp": now_seconds()}),
    ))
}
