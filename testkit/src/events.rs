//! Events to publish, and publishing, declaring and waiting on a broker directly.

use longpoll::{
    Broker,
    broker::{Publication, Receipt},
    event::{EventBody, NotificationData, TypingData},
    topology::{Audience, Subscriber},
};
use std::time::Duration;
use tokio::time::Instant;

use crate::PollBudget;

/// A deadline for operations that should not wait long.
pub fn in_a_while() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// A chat message whose `data.id` is `n`, so tests can check order.
pub fn message(n: i64) -> EventBody {
    serde_json::from_value(serde_json::json!({"event": "message", "data": {
        "id": n, "sender_id": 1, "sender_name": "Tester", "message": format!("message {n}")}}))
    .expect("a valid message")
}

pub fn typing(sender: i64) -> EventBody {
    EventBody::Typing(TypingData {
        sender_id: sender,
        sender_name: None,
        is_typing: true,
        extra: Default::default(),
    })
}

pub fn notice(title: &str) -> EventBody {
    EventBody::Notification(NotificationData {
        title: title.to_owned(),
        message: "body".to_owned(),
        notification_type: Some("notice".to_owned()),
        timestamp: None,
        extra: Default::default(),
    })
}

pub fn message_data_id(event: &longpoll::event::Event) -> i64 {
    event.data["id"]
        .as_i64()
        .expect("a message event with an id")
}

/// One poll of `subscriber`, held at most `hold`, in the guide's mode: the ids of the
/// message events it answered ([`message_data_id`]), in order. Panics on a broker error.
pub async fn polled_ids(broker: &dyn Broker, subscriber: &Subscriber, hold: Duration) -> Vec<i64> {
    broker
        .wait_for_events(subscriber, &PollBudget::until(Instant::now() + hold))
        .await
        .expect("a poll")
        .iter()
        .map(message_data_id)
        .collect()
}

/// Publishes one event and returns its receipt.
pub async fn publish(broker: &dyn Broker, audience: Audience, body: &EventBody) -> Receipt {
    let receipts = broker
        .publish(&[Publication {
            audience,
            event: body.prepare(),
        }])
        .await
        .expect("publish");
    receipts.into_iter().next().expect("one receipt")
}

/// Publishes many events to one audience, in order, confirmed together.
pub async fn publish_all(
    broker: &dyn Broker,
    audience: Audience,
    bodies: &[EventBody],
) -> Vec<Receipt> {
    let batch: Vec<Publication> = bodies
        .iter()
        .map(|body| Publication {
            audience,
            event: body.prepare(),
        })
        .collect();
    broker.publish(&batch).await.expect("publish")
}

/// A poll with a short hold, used to create and bind a subscriber's queue. It marks the
/// user online first, which also opens the broker connection outside the short hold;
/// the hold still bounds the queue's creation, so it leaves room for a busy broker.
pub async fn declare(broker: &dyn Broker, subscriber: &Subscriber) {
    broker
        .mark_online(
            subscriber.user_id,
            subscriber.college_id,
            &PollBudget::until(in_a_while()),
        )
        .await
        .expect("mark online");
    let events = broker
        .wait_for_events(
            subscriber,
            &PollBudget::until(Instant::now() + Duration::from_millis(300)),
        )
        .await
        .expect("declare by polling");
    assert!(events.is_empty(), "a fresh queue has no events");
}
