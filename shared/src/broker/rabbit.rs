//! The RabbitMQ broker (lapin).
//!
//! One AMQP connection per process, opened on first use and shared by every
//! invocation, with one channel in publisher-confirm mode that all operations share
//! (RabbitMQ allows thousands of consumers on one channel; a Lambda instance runs one
//! poll at a time anyway). A connection that died (broker restart, a thawed Lambda whose
//! heartbeats lapsed) or stopped answering is replaced on the next operation, which is
//! retried once on the fresh connection.
//!
//! A poll is a consumer, not a sleep-and-check loop: `basic.consume` with a prefetch of
//! 100 and manual acks; the first delivery ends the wait, `basic.cancel` stops the flow
//! (deliveries that raced with it arrive before `cancel-ok` and are kept), `basic.get`
//! tops the batch up with what else is queued, and each returned message is acked.
//! If anything fails before the acks, the broker requeues the unacked messages when
//! the channel closes: a failed poll loses nothing.

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures_lite::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions,
        BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable},
};
use tokio::{
    sync::Mutex,
    time::{Instant, timeout_at},
};
use tracing::{info, warn};

use super::{Broker, BrokerError, Publication, Receipt};
use crate::{
    config::Config,
    event::{Event, epoch_seconds},
    topology::{
        MAX_BATCH, QueueArgument, Subscriber, UserId, millis, presence_queue_arguments,
        presence_queue_name, user_queue_arguments,
    },
};

/// Bound on stopping a consumer and acking its deliveries once the wait is over. It
/// takes a millisecond on a healthy broker; past this the connection is sick.
const CLEANUP_BUDGET: Duration = Duration::from_millis(500);

/// RabbitMQ behind the [`Broker`] trait.
pub struct RabbitBroker {
    url: String,
    connection_name: String,
    exchange: String,
    presence_ttl: Duration,
    /// Bound on connecting and on each round trip, so a dead broker costs a 503 and
    /// never a hang past the Lambda deadline.
    op_timeout: Duration,
    /// The shared connection. A mutex (not a lock-free cell) so that when it dies, one
    /// caller reconnects while the others wait for the result instead of racing to open
    /// connections of their own.
    session: Mutex<Option<Session>>,
}

/// A live connection and the channel every operation uses.
#[derive(Clone)]
struct Session {
    connection: Arc<Connection>,
    channel: Channel,
}

impl Session {
    fn is_usable(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    fn is(&self, other: &Session) -> bool {
        Arc::ptr_eq(&self.connection, &other.connection) && self.channel.id() == other.channel.id()
    }
}

impl RabbitBroker {
    /// A broker for `config`. Connects lazily, on the first operation, so a function
    /// starts (and answers 503) even while the broker is down.
    pub fn new(config: &Config) -> Self {
        Self {
            url: config.amqp_url.clone(),
            connection_name: config.connection_name.clone(),
            exchange: config.exchange.clone(),
            presence_ttl: config.presence_ttl,
            op_timeout: config.amqp_timeout,
            session: Mutex::new(None),
        }
    }

    /// Connects now, for callers that prefer to fail at start-up.
    pub async fn connect(&self) -> Result<(), BrokerError> {
        self.session(Instant::now() + self.op_timeout)
            .await
            .map(drop)
    }

    /// Closes the connection (graceful shutdown); the next operation would reopen it.
    pub async fn close(&self) {
        if let Some(session) = self.session.lock().await.take() {
            let _ = timeout_at(
                Instant::now() + self.op_timeout,
                session.connection.close(200, "shutdown".into()),
            )
            .await;
        }
    }

    /// Follows the events of `routing_keys` live without taking them from anyone: an
    /// exclusive, server-named queue bound to the same keys receives a copy of each and
    /// disappears with the tail (`longpoll tail`, for debugging).
    pub async fn tail(&self, routing_keys: &[String]) -> Result<Tail, BrokerError> {
        let deadline = Instant::now() + self.op_timeout;
        self.run("tail set-up", deadline, |session| async move {
            let channel = session.connection.create_channel().await?;
            let options = QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            };
            let queue = channel
                .queue_declare("".into(), options, FieldTable::default())
                .await?;
            for key in routing_keys {
                channel
                    .queue_bind(
                        queue.name().clone(),
                        self.exchange.as_str().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            let no_ack = BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            };
            let consumer = channel
                .basic_consume(
                    queue.name().clone(),
                    "".into(),
                    no_ack,
                    FieldTable::default(),
                )
                .await?;
            Ok(Tail {
                queue: queue.name().to_string(),
                consumer,
                _channel: channel,
            })
        })
        .await
    }

    /// The shared session, (re)connected if it is missing or broken.
    async fn session(&self, deadline: Instant) -> Result<Session, BrokerError> {
        let mut current = timeout_at(deadline, self.session.lock())
            .await
            .map_err(|_| BrokerError::Timeout("connect"))?;
        if let Some(session) = current.as_ref().filter(|session| session.is_usable()) {
            return Ok(session.clone());
        }
        let deadline = deadline.min(Instant::now() + self.op_timeout);
        let reusable = current
            .take()
            .filter(|old| old.connection.status().connected());
        let connection = match reusable {
            // Only the channel died (a channel error such as a refused declare).
            Some(old) => old.connection,
            None => {
                let properties = ConnectionProperties::default()
                    .with_connection_name(self.connection_name.clone().into());
                let connection = timeout_at(deadline, Connection::connect(&self.url, properties))
                    .await
                    .map_err(|_| BrokerError::Timeout("connect"))?
                    .map_err(|error| BrokerError::Unreachable(error.to_string()))?;
                info!(connection = %self.connection_name, "connected to the broker");
                Arc::new(connection)
            }
        };
        let channel = timeout_at(deadline, self.open_channel(&connection))
            .await
            .map_err(|_| BrokerError::Timeout("channel set-up"))?
            .map_err(|error| failed("channel set-up", error))?;
        let session = Session {
            connection,
            channel,
        };
        *current = Some(session.clone());
        Ok(session)
    }

    async fn open_channel(&self, connection: &Connection) -> lapin::Result<Channel> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Per consumer (global: false): one poll never holds more than a batch.
        channel
            .basic_qos(MAX_BATCH as u16, BasicQosOptions { global: false })
            .await?;
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(channel)
    }

    /// Forgets `broken` if it is still the shared session, so the next caller
    /// reconnects; closes it in the background (a half-open socket may never answer).
    async fn discard(&self, broken: &Session) {
        let mut current = self.session.lock().await;
        if current.as_ref().is_some_and(|session| session.is(broken)) {
            *current = None;
            let connection = broken.connection.clone();
            let op_timeout = self.op_timeout;
            tokio::spawn(async move {
                let _ = tokio::time::timeout(op_timeout, connection.close(320, "replaced".into()))
                    .await;
            });
        }
    }

    /// Runs `operation` on the shared session, within one round-trip timeout and the
    /// caller's deadline; on failure replaces a broken session and tries once more.
    async fn run<T, F, Fut>(
        &self,
        name: &'static str,
        deadline: Instant,
        operation: F,
    ) -> Result<T, BrokerError>
    where
        F: Fn(Session) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        let mut attempts_left = 2;
        loop {
            attempts_left -= 1;
            let session = self.session(deadline).await?;
            let step_deadline = deadline.min(Instant::now() + self.op_timeout);
            let error = match timeout_at(step_deadline, operation(session.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => failed(name, error),
                Err(_) => {
                    // No answer within a round-trip timeout: the socket may be half-open
                    // (a frozen Lambda thawed). Running out of the caller's own time says
                    // nothing about the connection, so that keeps it.
                    if step_deadline < deadline {
                        self.discard(&session).await;
                    }
                    BrokerError::Timeout(name)
                }
            };
            if attempts_left == 0 || Instant::now() >= deadline {
                return Err(error);
            }
            warn!(operation = name, %error, "broker operation failed; retrying on a fresh session");
        }
    }

    /// Stops the consumer, collects deliveries that raced with the stop, tops the batch
    /// up from the queue and acks everything collected.
    async fn finish_wait(
        &self,
        session: &Session,
        consumer: &mut lapin::Consumer,
        consumer_ended: bool,
        queue: &str,
        deliveries: &mut Vec<Delivery>,
    ) -> lapin::Result<()> {
        let channel = &session.channel;
        if !consumer_ended {
            channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await?;
            // Deliveries sent before cancel-ok are ours; the stream ends after them.
            while let Some(delivery) = consumer.next().await {
                deliveries.push(delivery?);
            }
        }
        if !deliveries.is_empty() {
            while deliveries.len() < MAX_BATCH {
                match channel
                    .basic_get(queue.into(), BasicGetOptions::default())
                    .await?
                {
                    Some(message) => deliveries.push(message.delivery),
                    None => break,
                }
            }
        }
        // One ack each: delivery tags are per channel and the channel is shared, so a
        // `multiple` ack could take other polls' deliveries with it.
        for delivery in deliveries.iter() {
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Broker for RabbitBroker {
    async fn publish(&self, batch: &[Publication]) -> Result<Vec<Receipt>, BrokerError> {
        let deadline = Instant::now() + self.op_timeout;
        let confirmations = self
            .run("publish", deadline, |session| async move {
                // All publishes first, then all confirms: one round trip for the batch.
                let mut pending = Vec::with_capacity(batch.len());
                for publication in batch {
                    let confirm = session
                        .channel
                        .basic_publish(
                            self.exchange.as_str().into(),
                            publication.audience.routing_key().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &publication.event.body,
                            message_properties(publication),
                        )
                        .await?;
                    pending.push(confirm);
                }
                let mut confirmations = Vec::with_capacity(batch.len());
                for confirm in pending {
                    confirmations.push(confirm.await?);
                }
                Ok(confirmations)
            })
            .await?;
        batch
            .iter()
            .zip(confirmations)
            .map(|(publication, confirmation)| {
                if confirmation.is_nack() {
                    return Err(BrokerError::Failed {
                        operation: "publish",
                        reason: format!("the broker refused event {} (nack)", publication.event.id),
                    });
                }
                Ok(Receipt {
                    id: publication.event.id.clone(),
                    // A basic.return came before the ack: no queue is bound to the key.
                    routed: confirmation.take_message().is_none(),
                })
            })
            .collect()
    }

    async fn wait_for_events(
        &self,
        subscriber: &Subscriber,
        deadline: Instant,
    ) -> Result<Vec<Event>, BrokerError> {
        let queue = subscriber.queue_name();
        let routing_keys = subscriber.routing_keys();
        let (session, mut consumer) = self
            .run("poll set-up", deadline, |session| {
                let (queue, routing_keys) = (queue.clone(), routing_keys.clone());
                async move {
                    let channel = &session.channel;
                    // Declare and binds without waiting for their replies: the channel
                    // runs methods in order, so consume-ok vouches for all of them and
                    // a refusal closes the channel, failing the consume. One round trip.
                    channel
                        .queue_declare(
                            queue.as_str().into(),
                            QueueDeclareOptions {
                                durable: true,
                                nowait: true,
                                ..Default::default()
                            },
                            field_table(user_queue_arguments()),
                        )
                        .await?;
                    for key in routing_keys {
                        channel
                            .queue_bind(
                                queue.as_str().into(),
                                self.exchange.as_str().into(),
                                key.into(),
                                QueueBindOptions { nowait: true },
                                FieldTable::default(),
                            )
                            .await?;
                    }
                    let consumer = channel
                        .basic_consume(
                            queue.as_str().into(),
                            "".into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                    Ok((session, consumer))
                }
            })
            .await?;

        let mut deliveries = Vec::new();
        let mut consumer_ended = false;
        match timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(delivery))) => deliveries.push(delivery),
            // The connection died mid-hold; the broker requeues what it had sent.
            Ok(Some(Err(error))) => return Err(failed("poll", error)),
            // The broker cancelled the consumer (the queue was deleted).
            Ok(None) => consumer_ended = true,
            Err(_hold_over) => {}
        }
        let cleanup = self.finish_wait(
            &session,
            &mut consumer,
            consumer_ended,
            &queue,
            &mut deliveries,
        );
        match timeout_at(Instant::now() + CLEANUP_BUDGET, cleanup).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(failed("poll", error)),
            Err(_) => {
                self.discard(&session).await;
                return Err(BrokerError::Timeout("poll clean-up"));
            }
        }
        Ok(deliveries
            .iter()
            .filter_map(|delivery| decode(&queue, delivery))
            .collect())
    }

    async fn mark_online(&self, user: UserId) -> Result<(), BrokerError> {
        let queue = presence_queue_name(user);
        let deadline = Instant::now() + self.op_timeout;
        self.run("presence", deadline, |session| {
            let queue = queue.clone();
            async move {
                session
                    .channel
                    .queue_declare(
                        queue.into(),
                        QueueDeclareOptions {
                            durable: true,
                            auto_delete: true,
                            ..Default::default()
                        },
                        field_table(presence_queue_arguments(self.presence_ttl)),
                    )
                    .await
                    .map(drop)
            }
        })
        .await
    }

    async fn mark_offline(&self, user: UserId) -> Result<(), BrokerError> {
        let queue = presence_queue_name(user);
        let deadline = Instant::now() + self.op_timeout;
        self.run("presence", deadline, |session| {
            let queue = queue.clone();
            async move {
                // Deleting a queue that does not exist is not an error in RabbitMQ.
                session
                    .channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await
                    .map(drop)
            }
        })
        .await
    }

    async fn close(&self) {
        if let Some(session) = self.session.lock().await.take() {
            let _ = timeout_at(
                Instant::now() + self.op_timeout,
                session.connection.close(200, "shutdown".into()),
            )
            .await;
        }
    }

    async fn is_online(&self, users: &[UserId]) -> Result<Vec<bool>, BrokerError> {
        let deadline = Instant::now() + self.op_timeout;
        self.run("presence lookup", deadline, |session| async move {
            // A passive declare of a missing queue closes its channel (404 NOT_FOUND),
            // so lookups use a channel of their own, reopened after each miss, and
            // never the shared one that other polls are consuming on.
            let mut channel = session.connection.create_channel().await?;
            let mut online = Vec::with_capacity(users.len());
            for user in users {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                match channel
                    .queue_declare(
                        presence_queue_name(*user).into(),
                        passive,
                        FieldTable::default(),
                    )
                    .await
                {
                    Ok(_) => online.push(true),
                    Err(error) if is_not_found(&error) => {
                        online.push(false);
                        channel = session.connection.create_channel().await?;
                    }
                    Err(error) => return Err(error),
                }
            }
            let _ = channel.close(200, "presence lookup done".into()).await;
            Ok(online)
        })
        .await
    }
}

/// A live copy of some routing keys' events; see [`RabbitBroker::tail`].
pub struct Tail {
    queue: String,
    consumer: lapin::Consumer,
    /// Keeps the channel (and so the exclusive queue) open while the tail lives.
    _channel: Channel,
}

impl Tail {
    /// The next event; `None` once the broker ends the tail.
    pub async fn next(&mut self) -> Option<Result<Event, BrokerError>> {
        loop {
            return match self.consumer.next().await? {
                Ok(delivery) => match decode(&self.queue, &delivery) {
                    Some(event) => Some(Ok(event)),
                    None => continue,
                },
                Err(error) => Some(Err(failed("tail", error))),
            };
        }
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

/// The poll's view of a delivery; a message that is not an event is logged and skipped
/// (it was acked: left in the queue it would block every later poll).
fn decode(queue: &str, delivery: &Delivery) -> Option<Event> {
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

fn field_table(arguments: Vec<(&'static str, QueueArgument)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in arguments {
        let value = match value {
            QueueArgument::Text(text) => AMQPValue::LongString(text.into()),
            QueueArgument::Number(number) => AMQPValue::LongLongInt(number as i64),
        };
        table.insert(name.into(), value);
    }
    table
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}

fn failed(operation: &'static str, error: lapin::Error) -> BrokerError {
    BrokerError::Failed {
        operation,
        reason: error.to_string(),
    }
}
