//! The handlers behind the Application Load Balancer front door (`FrontDoor=alb`), fed an
//! ALB's Lambda events (`fixtures/alb.json`) on RabbitMQ: a backend publishes with its
//! key, a browser polls with its token and gets the event, its percent-encoded query
//! decoded, the answer naming the hold; without the key the publish is refused.

use std::time::Duration;

use lambda_http::{Body, Response};
use longpoll_testkit::*;
use serde_json::{Value, json};

const HOLD: Duration = Duration::from_millis(1500);
const EVENTS: &str = "/api/v1/communication/poll/events/";
const PUBLISH: &str = "/api/v1/communication/events/";

async fn publish(publisher: &publish_event::Publisher, fixture: Fixture) -> Response<Body> {
    publish_event::handle(publisher, fixture.request())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_backend_publishes_and_a_browser_polls_through_an_alb() {
    let config = config(&unique_name("alb"));
    let broker = rabbit(&config);
    let app = app(config.clone(), broker.clone(), HOLD);
    let publisher = publisher(&config, broker.clone());
    let user = longpoll::topology::Subscriber {
        device: longpoll::topology::DeviceId::parse("tab-1"),
        ..subscriber(unique_user(), None)
    };
    declare(&*app.broker, &user).await;
    let event = json!({"user_id": user.user_id.0, "event": "message",
        "data": {"id": 7, "sender_id": 1, "sender_name": "Backend", "message": "hello"}});

    // No key: refused, nothing published.
    let refused = publish(
        &publisher,
        Fixture::alb(PUBLISH)
            .method("POST")
            .body(&event.to_string()),
    )
    .await;
    assert_error(&refused, 401, "missing_api_key");

    let published = publish(
        &publisher,
        Fixture::alb(PUBLISH)
            .method("POST")
            .header("content-type", "application/json")
            .header("x-api-key", PUBLISH_KEY)
            .body(&event.to_string()),
    )
    .await;
    assert_eq!(published.status(), 200, "{}", json_of(&published));
    let receipt = json_of(&published)["published"][0].clone();
    assert_eq!(receipt["routed"], true, "{receipt}");

    // The ALB leaves query values percent-encoded (`tab%2D1` is `tab-1`).
    let token = token(user.user_id, None);
    let polled = poll_events::handle(
        &app,
        Fixture::alb(EVENTS)
            .authorization(&format!("Bearer {token}"))
            .query("device=tab%2D1&ack=")
            .request(),
    )
    .await
    .unwrap();
    assert_eq!(polled.status(), 200);
    assert_eq!(
        polled.headers()["x-poll-hold-ms"],
        HOLD.as_millis().to_string().as_str()
    );
    let body: Value = json_of(&polled);
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["data"]["id"], 7);
    assert_eq!(events[0]["id"], receipt["id"]);
}
