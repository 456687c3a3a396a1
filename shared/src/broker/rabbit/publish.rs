//! Publishing with `mandatory` set and publisher confirms, returned messages matched to
//! their events by message id; [`Publish`] for the RabbitMQ broker, and the probes of
//! presence lookups, go through it.

use std::collections::HashMap;

use async_trait::async_trait;
use lapin::{BasicProperties, options::BasicPublishOptions};
use tokio::time::Instant;

use super::{RabbitBroker, session::OwnLane};
use crate::{
    broker::{BrokerError, Publication, Publish, Receipt},
    event::epoch_seconds,
    topology::millis,
};

/// The default exchange: routes a message to the queue its routing key names.
pub(super) const DEFAULT_EXCHANGE: &str = "";

/// One message for [`RabbitBroker::publish_mandatory`].
pub(super) struct Outgoing<'a> {
    pub routing_key: String,
    /// Its `message_id`, by which a `basic.return` is matched to it.
    pub id: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

impl RabbitBroker {
    /// Publishes `messages` to `exchange` with `mandatory` set, on a channel of its own
    /// (see `session` on returns), and returns whether each was routed to a queue, once
    /// the broker has confirmed them all.
    pub(super) async fn publish_mandatory(
        &self,
        operation: &'static str,
        exchange: &str,
        messages: &[Outgoing<'_>],
    ) -> Result<Vec<bool>, BrokerError> {
        let deadline = Instant::now() + self.connector.op_timeout;
        let confirmations = self
            .run_on(operation, deadline, |lane: OwnLane| async move {
                // All publishes first, then all confirms: one round trip for the batch.
                let mut pending = Vec::with_capacity(messages.len());
                for message in messages {
                    let confirm = lane
                        .channel
                        .basic_publish(
                            exchange.into(),
                            message.routing_key.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            message.body,
                            message.properties.clone(),
                        )
                        .await?;
                    pending.push(confirm);
                }
                let mut confirmations = Vec::with_capacity(messages.len());
                for confirm in pending {
                    confirmations.push(confirm.await?);
                }
                lane.finished();
                Ok(confirmations)
            })
            .await?;
        if let Some((refused, _)) = messages
            .iter()
            .zip(&confirmations)
            .find(|(_, confirmation)| confirmation.is_nack())
        {
            return Err(BrokerError::Failed {
                operation,
                reason: format!("the broker refused message {} (nack)", refused.id),
            });
        }
        // A basic.return (no queue is bound to the key) comes before the ack of its
        // message, but an ack may cover several messages and lapin hands the return to
        // whichever of them it settles first: match returns to messages by message id.
        // The channel was this call's alone, so every return on it is one of ours.
        let mut returned: HashMap<String, usize> = HashMap::new();
        for message in confirmations.into_iter().filter_map(|c| c.take_message()) {
            let id = message
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string());
            *returned.entry(id.unwrap_or_default()).or_default() += 1;
        }
        Ok(messages
            .iter()
            .map(|message| match returned.get_mut(message.id) {
                Some(count) if *count > 0 => {
                    *count -= 1;
                    false
                }
                _ => true,
            })
            .collect())
    }
}

#[async_trait]
impl Publish for RabbitBroker {
    async fn publish(&self, batch: &[Publication]) -> Result<Vec<Receipt>, BrokerError> {
        let messages: Vec<Outgoing> = batch
            .iter()
            .map(|publication| Outgoing {
                routing_key: publication.audience.routing_key(),
                id: &publication.event.id,
                body: &publication.event.body,
                properties: message_properties(publication),
            })
            .collect();
        let routed = self
            .publish_mandatory("publish", self.exchange(), &messages)
            .await?;
        Ok(batch
            .iter()
            .zip(routed)
            .map(|(publication, routed)| Receipt {
                id: publication.event.id.clone(),
                routed,
            })
            .collect())
    }
}

/// The contract's message properties: JSON, persistent, the event id, the publish
/// time, and the event type's time to live.
fn message_properties(publication: &Publication) -> BasicProperties {
    let event = &publication.event;
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.id.as_str().into())
        .with_timestamp(epoch_seconds(event.published_at) as u64)
        .with_type(event.event_type.as_str().into())
        .with_expiration(millis(event.event_type.ttl()).to_string().into())
}
