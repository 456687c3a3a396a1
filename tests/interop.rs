//! Interop with the real producer ecosystem: Python's `pika` and `PyJWT`, run from
//! `tests/interop/` (bare clients, as the contract says a producer needs) with no shim of ours.
//!
//! `scripts/test` makes a virtual environment with `tests/interop/requirements.txt` and
//! points `LONGPOLL_PYTHON` at it; otherwise `python3` must have both installed.

use std::{process::Command, time::Duration};

use longpoll_testkit::*;
use serde_json::json;

fn python(script: &str, args: &[&str]) -> String {
    let python = std::env::var("LONGPOLL_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let path = format!("{}/interop/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(&python)
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{python}: {error}"));
    assert!(
        output.status.success(),
        "{script} failed (run scripts/test, which installs pika and PyJWT, or pip install -r tests/interop/requirements.txt):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

async fn poll_with(app: &longpoll::App, token: &str) -> lambda_http::Response<lambda_http::Body> {
    let request = Fixture::new("poll-events")
        .authorization(&format!("Bearer {token}"))
        .request();
    poll_events::handle(app, request).await.unwrap()
}

/// An event pika published with the documented routing key and properties comes out
/// of the poll endpoint unchanged, with pika's message id and timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_by_pika_is_delivered_unchanged() {
    let config = config(&unique_name("interop"));
    let app = app(config.clone(), rabbit(&config), Duration::from_secs(3));
    let college = unique_college();
    let user = subscriber(unique_user(), Some(college));
    declare(&*app.broker, &user).await;

    let data = json!({"id": 123, "sender_id": 456, "sender_name": "John Doe", "receiver_id": 789,
        "message": "Hello! ünïcødé ✓", "attachment": null, "timestamp": "2026-01-10T10:30:00Z",
        "is_read": false, "conversation_id": 101, "extra": {"nested": [1, 2.5, "x"]}});
    let body = json!({"event": "message", "data": data}).to_string();
    let message_id = python(
        "producer.py",
        &[&amqp_url(), &format!("user.{}", user.user_id), &body],
    );
    let notice =
        json!({"event": "notification", "data": {"title": "Notice", "message": "College-wide"}})
            .to_string();
    let notice_id = python(
        "producer.py",
        &[&amqp_url(), &format!("college.{college}"), &notice],
    );

    let token = token(user.user_id, Some(college));
    let response = poll_with(&app, &token).await;
    assert_eq!(response.status(), 200);
    let events = json_of(&response)["events"].clone();
    assert_eq!(events[0]["id"], message_id);
    assert_eq!(events[0]["event"], "message");
    assert_eq!(events[0]["data"], data, "data passes through unchanged");
    let age = longpoll::http::now_seconds() - events[0]["timestamp"].as_f64().unwrap();
    assert!((-1.0..60.0).contains(&age), "pika's timestamp, {age} s old");
    assert_eq!(events[1]["id"], notice_id);
    assert_eq!(events[1]["data"]["title"], "Notice");
}

/// pika learns when nobody polls: its mandatory publish comes back unroutable.
#[tokio::test]
async fn pika_sees_unroutable_events() {
    let body = json!({"event": "typing", "data": {"sender_id": 1, "is_typing": true}}).to_string();
    let printed = python(
        "producer.py",
        &[&amqp_url(), &format!("user.{}", unique_user()), &body],
    );
    assert_eq!(printed, "None");
}

/// PyJWT's tokens (string `sub`, HS256) are accepted; expired or wrongly signed ones
/// are 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_minted_by_pyjwt_are_verified() {
    let config = config(&unique_name("interop"));
    let app = app(config.clone(), memory(&config), Duration::from_millis(100));
    let user = unique_user();
    let id = user.to_string();
    let good = python("tokens.py", &[JWT_SECRET, &id, "600", "5"]);
    let expired = python("tokens.py", &[JWT_SECRET, &id, "-120"]);
    let forged = python("tokens.py", &["some-other-secret", &id, "600"]);

    let identity = app.tokens.verify(&good).unwrap();
    assert_eq!(
        (identity.user_id, identity.college_id.map(|c| c.0)),
        (user, Some(5))
    );
    for (token, status, code) in [
        (good, 200, None),
        (expired, 401, Some("token_expired")),
        (forged, 401, Some("invalid_token")),
    ] {
        let response = poll_with(&app, &token).await;
        assert_eq!(response.status(), status);
        if let Some(code) = code {
            assert_eq!(json_of(&response)["error"], code);
        }
    }
}
