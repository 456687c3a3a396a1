//! Between AMQP and the crate's types: a delivery as an event, queue arguments as a
//! field table.

use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable},
};
use tracing::warn;

use crate::{
    event::Event,
    topology::{QueueArgument, QueueType, user_queue_arguments},
};

/// The poll's view of a delivery; a message that is not an event is logged and skipped
/// (it was acked: left in the queue it would block every later poll).
pub(super) fn decode(queue: &str, delivery: &Delivery) -> Option<Event> {
    let properties = &delivery.properties;
    let message_id = properties.message_id().as_ref().map(|id| id.as_str());
    match Event::from_message(&delivery.data, message_id, *properties.timestamp()) {
        Ok(mut event) => {
            if let Some(published_ms) = published_ms(properties.headers().as_ref()) {
                event.timestamp = Some(published_ms as f64 / 1000.0);
            }
            Some(event)
        }
        Err(error) => {
            warn!(queue, %error, bytes = delivery.data.len(), "dropped a message that is not an event");
            None
        }
    }
}

/// The header that carries an event's publish time in epoch milliseconds: the name
/// RabbitMQ's message timestamp plugin gives it, so a broker running that plugin gives
/// other producers' events the same precision.
pub(super) const PUBLISHED_MS_HEADER: &str = "timestamp_in_ms";

/// [`PUBLISHED_MS_HEADER`] of a delivery, when it has one as a number.
fn published_ms(headers: Option<&FieldTable>) -> Option<i64> {
    match headers?.inner().get(PUBLISHED_MS_HEADER)? {
        AMQPValue::LongLongInt(ms) => Some(*ms),
        AMQPValue::LongInt(ms) => Some(i64::from(*ms)),
        AMQPValue::Timestamp(ms) => i64::try_from(*ms).ok(),
        _ => None,
    }
}

/// Queue arguments (as [`crate::topology`] states them) as an AMQP field table, for
/// anything here that declares the contract's queues.
pub(super) fn field_table(arguments: Vec<(&'static str, QueueArgument)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in arguments {
        table.insert(name.into(), value.into());
    }
    table
}

/// A user's queue arguments ([`crate::topology::user_queue_arguments`]) as lapin's field
/// table, for a tool that declares the contract's queues on a channel of its own (the
/// benchmark's guide baseline and probes).
pub fn user_queue_table(queue_type: QueueType) -> FieldTable {
    field_table(user_queue_arguments(queue_type))
}

/// A queue argument as AMQP writes it.
impl From<QueueArgument> for AMQPValue {
    fn from(value: QueueArgument) -> Self {
        match value {
            QueueArgument::Text(text) => AMQPValue::LongString(text.into()),
            QueueArgument::Number(number) => AMQPValue::LongLongInt(number as i64),
            QueueArgument::Flag(flag) => AMQPValue::Boolean(flag),
        }
    }
}
