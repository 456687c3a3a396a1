//! The demo page (`/demo/`): two users of one college chatting through the browser
//! client, the README's "see it work" step. Its files are compiled in, so the one
//! command serves it with nothing else installed; `clients/js/dist/index.js` is the
//! client's build, kept in the repository and checked against its source by the test
//! command.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use longpoll::{
    token::TokenIssuer,
    topology::{CollegeId, UserId},
};
use serde_json::json;

use crate::Functions;

/// The demo's users: (id, name), all in college 1. The banner prints their tokens too.
pub const DEMO_USERS: [(u64, &str); 2] = [(1, "Alice"), (2, "Bob")];
pub const DEMO_COLLEGE: u64 = 1;

const INDEX: &str = include_str!("../../clients/js/demo/index.html");
const PANE: &str = include_str!("../../clients/js/demo/pane.html");
const PANE_JS: &str = include_str!("../../clients/js/demo/pane.js");
const CLIENT_JS: &str = include_str!("../../clients/js/dist/index.js");

/// `/` (redirects), `/demo/` and its files.
pub fn routes() -> Router<Arc<Functions>> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/demo/") }))
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(|| async { file("text/html", INDEX) }))
        .route("/demo/pane.html", get(|| async { file("text/html", PANE) }))
        .route(
            "/demo/pane.js",
            get(|| async { file("text/javascript", PANE_JS) }),
        )
        .route(
            "/demo/longpoll.js",
            get(|| async { file("text/javascript", CLIENT_JS) }),
        )
        .route("/demo/config.json", get(config))
}

/// `/demo/config.json`: the API's base path, a token per demo user, and the publish key
/// (the demo panes stand in for the app's backend when they publish).
async fn config(State(functions): State<Arc<Functions>>) -> Response {
    let config = &functions.app.config;
    let Some(secret) = config.jwt_secret.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let issuer = TokenIssuer::new(secret);
    let users: Vec<_> = DEMO_USERS
        .iter()
        .map(|&(id, name)| {
            let token = issuer.mint(
                UserId(id),
                Some(CollegeId(DEMO_COLLEGE)),
                Some(name),
                Duration::from_secs(24 * 3600),
            );
            json!({"id": id, "name": name, "college_id": DEMO_COLLEGE, "token": token})
        })
        .collect();
    let body = json!({
        "api": "/api/v1/communication",
        "publish_key": config.publish_api_key,
        "users": users,
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn file(content_type: &'static str, text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}
