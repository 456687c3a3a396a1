//! `GET /api/v1/communication/poll/events/` — the long poll.
//!
//! Verifies the user token, refreshes the user's presence, then asks the broker for the
//! user's events: at once if some wait, as soon as one arrives, or an empty list when
//! the hold (5.5 s, never past the Lambda deadline) runs out.
//!
//! Two opt-in query parameters give stronger delivery than the guide's:
//! - `device=<id>`: this tab or device reads a queue of its own, so every device of the
//!   user gets every event (without it, the user's devices share one queue and split
//!   the events between them);
//! - `ack=<last event id>` (present, even empty): cursor mode. Returned events stay
//!   queued until a later poll names the last one the client got, so a lost response
//!   loses nothing.

use lambda_http::{
    Body, Error, Request, Response,
    http::{Method, StatusCode},
};
use longpoll::{
    App,
    event::{Event, MAX_EVENT_ID_LENGTH},
    http::{
        ApiError, json_response, now_seconds, poll_budget, query_param, require_method, respond,
        with_poll_hold,
    },
    metrics::{self, Cap},
    routes::Route,
    topology::{DeviceId, MAX_DEVICE_ID_LENGTH},
};
use serde_json::json;
use tokio::time::Instant;
use tracing::info;

/// Where this function is served.
pub const ROUTE: Route = Route {
    method: Method::GET,
    path: "/api/v1/communication/poll/events/",
    function: "poll-events",
};

/// The Lambda handler; also mounted by the local server.
/// Every answer, events or error, names the hold ([`longpoll::routes::POLL_HOLD_HEADER`]).
pub async fn handle(app: &App, request: Request) -> Result<Response<Body>, Error> {
    let events = poll(app, &request).await;
    match &events {
        Ok(events) => metrics::poll_answered(events.iter().map(|event| event.timestamp)),
        Err(_) => metrics::poll_failed(),
    }
    let answer = events.map(|events| {
        json_response(
            StatusCode::OK,
            &json!({"events": events, "timestamp": now_seconds()}),
        )
    });
    Ok(with_poll_hold(respond(answer)?, app.config.poll_timeout))
}

async fn poll(app: &App, request: &Request) -> Result<Vec<Event>, ApiError> {
    require_method(request, ROUTE.method)?;
    let identity = app.authenticate(request)?;
    let _held = app.held_polls.hold(identity.user_id).ok_or_else(|| {
        metrics::cap_hit(Cap::PollsPerUser);
        ApiError::TooManyPolls {
            max: app.held_polls.max_per_user(),
        }
    })?;
    let device = device(request)?;
    let cursor = cursor(request)?;
    let budget = poll_budget(request, app.config.poll_timeout);
    let started = Instant::now();
    // Presence first: if the broker is down we answer 503 before taking any event.
    app.presence
        .mark_online(identity.user_id, identity.college_id, &budget)
        .await?;
    let subscriber = identity.subscriber(device);
    let events = match &cursor {
        None => app.poll.wait_for_events(&subscriber, &budget).await?,
        Some(acked) => {
            app.poll
                .wait_with_cursor(&subscriber, acked, &budget)
                .await?
        }
    };
    info!(
        user_id = identity.user_id.0,
        device = subscriber.device.as_ref().map(DeviceId::as_str),
        cursor = cursor.is_some(),
        events = events.len(),
        waited_ms = started.elapsed().as_millis() as u64,
        "poll answered"
    );
    Ok(events)
}

/// `?device=`, if given; a malformed one is refused rather than silently sharing the
/// user's queue.
fn device(request: &Request) -> Result<Option<DeviceId>, ApiError> {
    let Some(text) = query_param(request, "device") else {
        return Ok(None);
    };
    DeviceId::parse(&text).map(Some).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_device",
            format!(
                "`device` must be 1 to {MAX_DEVICE_ID_LENGTH} characters of A-Z, a-z, 0-9, _ and -"
            ),
        )
    })
}

/// `?ack=`: `None` in the guide's mode, the last event id received (empty on a first
/// poll) in cursor mode.
fn cursor(request: &Request) -> Result<Option<String>, ApiError> {
    let acked = query_param(request, "ack");
    if acked
        .as_ref()
        .is_some_and(|id| id.len() > MAX_EVENT_ID_LENGTH)
    {
        return Err(ApiError::bad_request(
            "invalid_ack",
            format!("`ack` must be an event id of at most {MAX_EVENT_ID_LENGTH} characters"),
        ));
    }
    Ok(acked)
}
