//! Publishing with `mandatory` set and publisher confirms, returned messages matched to
//! their events by message id; [`Publish`] for the RabbitMQ broker, and the probes of
//! presence lookups, go through it.

use std::collections::HashMap;

use async_trait::async_trait;
use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use tokio::time::Instant;

use super::{RabbitBroker, codec::PUBLISHED_MS_HEADER, lanes::OwnLane, runner::is_missing_queue};
use crate::{
    broker::{BrokerError, Publication, Publish, Receipt},
    event::epoch_seconds,
    topology::{Audience, QueueType, Subscriber, UserId, millis},
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
        // whichever of them it settles first: match returns to messages by message id
        // and routing key (one event sent to several users shares its id). The channel
        // was this call's alone, so every return on it is one of ours.
        let mut returned: HashMap<(String, String), usize> = HashMap::new();
        for message in confirmations.into_iter().filter_map(|c| c.take_message()) {
            let id = message
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string());
            let key = (id.unwrap_or_default(), message.routing_key.to_string());
            *returned.entry(key).or_default() += 1;
        }
        // Most batches have no return: then no key is built for any message.
        Ok(messages
            .iter()
            .map(|message| {
                if returned.is_empty() {
                    return true;
                }
                let key = (message.id.to_owned(), message.routing_key.clone());
                match returned.get_mut(&key) {
                    Some(count) if *count > 0 => {
                        *count -= 1;
                        false
                    }
                    _ => true,
                }
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
        if self.queue_type == QueueType::Quorum {
            for (publication, _) in batch.iter().zip(&routed).filter(|(_, routed)| !**routed) {
                if let Audience::User(user) = publication.audience {
                    self.confirm_unrouted(user, &publication.event.id).await?;
                }
            }
        }
        Ok(batch
            .iter()
            .zip(routed)
            .map(|(publication, routed)| Receipt::new(publication.event.id.clone(), routed))
            .collect())
    }
}

impl RabbitBroker {
    /// Makes sure an event the broker returned for `user` found no queue, rather than a
    /// queue it could not reach, before the publish answers `routed: false` ("nobody is
    /// listening"; a backend may fall back to e-mail). On a cluster, RabbitMQ 3.x
    /// returns a message routed to a classic queue whose node is down as it returns one
    /// routed nowhere (4.x nacks it, which already fails the publish). A passive declare
    /// tells them apart: `no queue` is the only answer that keeps `routed: false`.
    /// One round trip per returned user event, so only on a cluster ([`QueueType::Quorum`]);
    /// a college event is not checked (its members' queues cannot be listed).
    async fn confirm_unrouted(&self, user: UserId, id: &str) -> Result<(), BrokerError> {
        let queue = Subscriber {
            user_id: user,
            college_id: None,
            device: None,
        }
        .queue_name();
        let deadline = Instant::now() + self.connector.op_timeout;
        let exists = self
            .run_on("publish check", deadline, |lane: OwnLane| {
                let queue = queue.clone();
                async move {
                    let passive = QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    };
                    lane.channel
                        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                        .await?;
                    lane.finished();
                    Ok(())
                }
            })
            .await;
        match exists {
            Err(error) if is_missing_queue(&error) => Ok(()),
            Err(error) => Err(error),
            Ok(()) => Err(BrokerError::QueueUnavailable {
                operation: "publish",
                reason: format!("event {id} was returned though {queue} exists"),
            }),
        }
    }
}

/// The contract's message properties: JSON, persistent, the event id, the publish
/// time, and the event type's time to live. The publish time also goes in milliseconds
/// in [`PUBLISHED_MS_HEADER`]: AMQP's `timestamp` counts whole seconds, too coarse for
/// the events' `timestamp` and the delivery latency metric.
fn message_properties(publication: &Publication) -> BasicProperties {
    let event = &publication.event;
    let mut headers = FieldTable::default();
    let published_ms = (epoch_seconds(event.published_at) * 1000.0) as i64;
    headers.insert(
        PUBLISHED_MS_HEADER.into(),
        AMQPValue::LongLongInt(published_ms),
    );
    BasicProperties::default()
        .with_headers(headers)
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.id.as_str().into())
        .with_timestamp(epoch_seconds(event.published_at) as u64)
        .with_type(event.event_type.as_str().into())
        .with_expiration(millis(event.event_type.ttl()).to_string().into())
}
