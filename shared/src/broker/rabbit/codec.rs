//! Between AMQP and the crate's types: a delivery as an event, queue arguments as a
//! field table.

use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable},
};
use tracing::warn;

use crate::{event::Event, topology::QueueArgument};

/// The poll's view of a delivery; a message that is not an event is logged and skipped
/// (it was acked: left in the queue it would block every later poll).
pub(super) fn decode(queue: &str, delivery: &Delivery) -> Option<Event> {
    let properties = &delivery.properties;
    let message_id = properties.message_id().as_ref().map(|id| id.as_str());
    match Event::from_message(&delivery.data, message_id, *properties.timestamp()) {
        Ok(event) => Some(event),
        Err(error) => {
            warn!(queue, %error, bytes = delivery.data.len(), "dropped a message that is not an event");
            None
        }
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

/// A queue argument as AMQP writes it: any client of the contract's queues (the
/// benchmark's guide baseline declares them with its own channel) converts with this.
impl From<QueueArgument> for AMQPValue {
    fn from(value: QueueArgument) -> Self {
        match value {
            QueueArgument::Text(text) => AMQPValue::LongString(text.into()),
            QueueArgument::Number(number) => AMQPValue::LongLongInt(number as i64),
        }
    }
}
