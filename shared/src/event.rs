//! The event model.
//!
//! Three shapes of one event:
//! - [`EventBody`]: what a producer means, typed: `{"event": "message", "data": {...}}`
//!   with `data` checked against its type. Unknown fields in `data` are kept, so a
//!   producer can add fields without a release of ours.
//! - [`OutgoingEvent`]: a body ready for the broker: its serialized bytes, the stable `id`
//!   and the publish time, which travel as message properties.
//! - [`Event`]: what a poll returns: `{"id", "event", "data", "timestamp"}`. It is built
//!   from the raw message and passes `data` through unchanged, so events published by
//!   any producer (pika, the CLI, the publish endpoint) reach browsers exactly as sent.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time to live of every event but `typing` (the guide's 30 minutes).
pub const EVENT_TTL: Duration = Duration::from_secs(30 * 60);
/// Time to live of a `typing` event: a typing indicator delivered late is wrong.
pub const TYPING_TTL: Duration = Duration::from_secs(10);

/// The four event types of the guide's "Event Types Reference".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Message,
    Typing,
    ReadReceipt,
    Notification,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::Message,
        EventType::Typing,
        EventType::ReadReceipt,
        EventType::Notification,
    ];

    /// The name on the wire, e.g. `read_receipt`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Message => "message",
            EventType::Typing => "typing",
            EventType::ReadReceipt => "read_receipt",
            EventType::Notification => "notification",
        }
    }

    /// How long an event of this type may wait in a queue before it is worthless.
    pub fn ttl(self) -> Duration {
        match self {
            EventType::Typing => TYPING_TTL,
            _ => EVENT_TTL,
        }
    }
}

/// A new chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageData {
    pub id: i64,
    pub sender_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<i64>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<i64>,
    /// Fields the guide does not name, carried through untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Someone started or stopped typing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypingData {
    pub sender_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    pub is_typing: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A message was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadReceiptData {
    pub message_id: i64,
    pub reader_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A system or college-wide notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationData {
    pub title: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An event as a producer describes it; serializes to the wire body
/// `{"event": "<type>", "data": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum EventBody {
    Message(MessageData),
    Typing(TypingData),
    ReadReceipt(ReadReceiptData),
    Notification(NotificationData),
}

impl EventBody {
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::Message(_) => EventType::Message,
            EventBody::Typing(_) => EventType::Typing,
            EventBody::ReadReceipt(_) => EventType::ReadReceipt,
            EventBody::Notification(_) => EventType::Notification,
        }
    }

    /// Gives the event its id and publish time, ready for any broker.
    pub fn prepare(&self) -> OutgoingEvent {
        OutgoingEvent {
            id: new_event_id(),
            event_type: self.event_type(),
            body: serde_json::to_vec(self).expect("an EventBody always serializes"),
            published_at: SystemTime::now(),
        }
    }
}

/// An event ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingEvent {
    /// Travels as the AMQP `message_id`; stable across redeliveries.
    pub id: String,
    pub event_type: EventType,
    /// The wire body, `{"event": ..., "data": ...}`.
    pub body: Vec<u8>,
    /// Travels as the AMQP `timestamp` (whole seconds).
    pub published_at: SystemTime,
}

/// Longest event id: it travels as the AMQP `message_id`, a short string.
pub const MAX_EVENT_ID_LENGTH: usize = 255;

/// A fresh event id: a UUIDv7, so ids sort by creation time.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// An event as a poll returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub event: String,
    pub data: Value,
    /// Publish time in epoch seconds, `null` when the producer set none.
    pub timestamp: Option<f64>,
}

/// A queued message that is not an event: not JSON, or not `{"event": "<string>",
/// "data": {...}}`.
#[derive(Debug, thiserror::Error)]
#[error("message is not an event body ({0})")]
pub struct NotAnEvent(String);

#[derive(Deserialize)]
struct WireBody {
    event: String,
    data: Map<String, Value>,
}

impl Event {
    /// Builds the poll's view of a queued message. `message_id` and `timestamp` are the
    /// AMQP properties; a message without an id gets one derived from its content and
    /// publish time, so every redelivery of it carries the same id.
    pub fn from_message(
        body: &[u8],
        message_id: Option<&str>,
        timestamp_secs: Option<u64>,
    ) -> Result<Event, NotAnEvent> {
        let wire: WireBody =
            serde_json::from_slice(body).map_err(|error| NotAnEvent(error.to_string()))?;
        let id = match message_id.filter(|id| !id.is_empty()) {
            Some(id) => id.to_owned(),
            None => derived_event_id(body, timestamp_secs),
        };
        Ok(Event {
            id,
            event: wire.event,
            data: Value::Object(wire.data),
            timestamp: timestamp_secs.map(|secs| secs as f64),
        })
    }
}

/// The id of a message whose producer set no `message_id`: a hash of what the broker
/// keeps of it, so the same message always gets the same id.
fn derived_event_id(body: &[u8], timestamp_secs: Option<u64>) -> String {
    let mut hash = Sha256::new();
    hash.update(timestamp_secs.unwrap_or(0).to_be_bytes());
    hash.update(body);
    let digest = hash.finalize();
    let hex: String = digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256-{hex}")
}

/// Seconds since the epoch as a float, the contract's `timestamp` format.
pub fn epoch_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_guide_examples_parse_as_typed_bodies() {
        let message = json!({"event": "message", "data": {
            "id": 123, "sender_id": 456, "sender_name": "John Doe", "receiver_id": 789,
            "message": "Hello!", "attachment": "http://example.com/file.pdf",
            "attachment_type": "pdf", "timestamp": "2026-01-10T10:30:00Z",
            "is_read": false, "conversation_id": 101}});
        let typing = json!({"event": "typing", "data": {
            "sender_id": 456, "sender_name": "John Doe", "is_typing": true}});
        let receipt = json!({"event": "read_receipt", "data": {
            "message_id": 123, "reader_id": 789, "reader_name": "Jane Smith",
            "read_at": "2026-01-10T10:35:00Z"}});
        let notice = json!({"event": "notification", "data": {
            "title": "New Notice Published", "message": "Mid-term exam schedule released",
            "notification_type": "notice", "timestamp": "2026-01-10T10:30:00Z"}});
        for (example, kind) in [
            (message, EventType::Message),
            (typing, EventType::Typing),
            (receipt, EventType::ReadReceipt),
            (notice, EventType::Notification),
        ] {
            let body: EventBody = serde_json::from_value(example.clone()).unwrap();
            assert_eq!(body.event_type(), kind);
            // Serializing gives back exactly what the producer wrote.
            assert_eq!(serde_json::to_value(&body).unwrap(), example);
        }
    }

    #[test]
    fn unknown_data_fields_survive_and_missing_required_ones_fail() {
        let body: EventBody = serde_json::from_value(json!({"event": "typing",
            "data": {"sender_id": 1, "is_typing": false, "room": "a"}}))
        .unwrap();
        assert_eq!(serde_json::to_value(&body).unwrap()["data"]["room"], "a");
        let missing = serde_json::from_value::<EventBody>(
            json!({"event": "typing", "data": {"is_typing": true}}),
        );
        assert!(missing.unwrap_err().to_string().contains("sender_id"));
        let unknown_type =
            serde_json::from_value::<EventBody>(json!({"event": "poke", "data": {}}));
        assert!(unknown_type.is_err());
    }

    #[test]
    fn a_queued_message_passes_through_unchanged() {
        let body = br#"{"event":"custom","data":{"nested":{"x":[1,2]},"n":1.5}}"#;
        let event = Event::from_message(body, Some("abc"), Some(1_704_888_600)).unwrap();
        assert_eq!(event.id, "abc");
        assert_eq!(event.event, "custom");
        assert_eq!(event.data, json!({"nested": {"x": [1, 2]}, "n": 1.5}));
        assert_eq!(event.timestamp, Some(1_704_888_600.0));
    }

    #[test]
    fn a_message_without_id_gets_a_stable_derived_one() {
        let body = br#"{"event":"message","data":{}}"#;
        let first = Event::from_message(body, None, Some(7)).unwrap();
        let again = Event::from_message(body, Some(""), Some(7)).unwrap();
        let later = Event::from_message(body, None, Some(8)).unwrap();
        assert_eq!(first.id, again.id);
        assert_ne!(first.id, later.id);
        assert!(first.id.starts_with("sha256-"));
    }

    #[test]
    fn non_events_are_refused() {
        assert!(Event::from_message(b"not json", None, None).is_err());
        assert!(Event::from_message(br#"{"event":"x","data":[1]}"#, None, None).is_err());
        assert!(Event::from_message(br#"{"data":{}}"#, None, None).is_err());
    }

    #[test]
    fn typing_expires_fast_and_the_rest_after_half_an_hour() {
        assert_eq!(EventType::Typing.ttl(), Duration::from_secs(10));
        for kind in [
            EventType::Message,
            EventType::ReadReceipt,
            EventType::Notification,
        ] {
            assert_eq!(kind.ttl(), Duration::from_secs(1800));
        }
    }
}
