//! The RabbitMQ broker (lapin).
//!
//! One AMQP connection per process, opened on first use and shared by every
//! invocation; its channels are lanes that operations borrow ([`session`]). A
//! connection that died (broker restart, a thawed Lambda whose heartbeats lapsed) is
//! replaced on the next operation, which is retried once on the fresh connection.
//!
//! A poll is a consumer, not a sleep-and-check loop: `basic.consume` with a prefetch of
//! 100 and manual acks; the first delivery ends the wait, `basic.cancel` stops the flow
//! (deliveries that raced with it arrive before `cancel-ok` and are kept), `basic.get`
//! tops the batch up with what else is queued, and each returned message is acked.
//! If anything fails before the acks, the broker requeues the unacked messages when
//! the channel closes: a failed poll loses nothing.

mod linger;
mod session;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex as SyncMutex},
    time::Duration,
};

use async_trait::async_trait;
use futures_lite::StreamExt;
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions,
        BasicPublishOptions, BasicQosOptions, BasicRejectOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    protocol::AMQPErrorKind,
    types::{AMQPValue, FieldTable},
};
use tokio::{
    sync::{Semaphore, oneshot},
    time::{Instant, timeout_at},
};
use tracing::warn;

use self::{
    linger::Subscriptions,
    session::{Borrow, Connector, Lane, OwnLane, poison},
};
use super::{Broker, BrokerError, Publication, Receipt, devices::Devices};
use crate::{
    config::Config,
    event::{Event, epoch_seconds},
    telemetry::Throttle,
    topology::{
        CollegeId, MAX_BATCH, MAX_QUEUE_LENGTH, QueueArgument, Subscriber, UserId,
        binding_record_arguments, binding_record_queue_name, college_presence_key, millis,
        presence_queue_arguments, presence_queue_name, user_queue_arguments,
    },
};

/// Bound on stopping a consumer and acking its deliveries once the wait is over. It
/// takes a millisecond on a healthy broker; past this the channel is abandoned.
const CLEANUP_BUDGET: Duration = Duration::from_millis(1000);
/// The least time a poll's set-up (declare, binds, consume) gets, even when the hold is
/// shorter: on a busy broker a short hold would otherwise answer 503 for a set-up that
/// was about to succeed. A set-up that ends after the hold answers at once with what is
/// queued. Well inside a function timeout sized for the 5.5 s hold, since holds shorter
/// than this are configured ones, not the Lambda deadline closing in.
const LEAST_SET_UP_BUDGET: Duration = Duration::from_millis(1500);
/// How long a queue this process declared and bound is taken as still there, so a
/// user's next polls skip the declare and binds (one round trip instead of several).
/// Far below the queue's 30-minute `x-expires`, which only runs while it is unused.
const DECLARED_FRESH_FOR: Duration = Duration::from_secs(60);
/// Most broker operations of one stage in flight at once per process. Enough to keep
/// the broker busy; more only lengthens every answer until they all time out together.
const MAX_OPERATIONS_IN_FLIGHT: usize = 64;

/// RabbitMQ behind the [`Broker`] trait.
pub struct RabbitBroker {
    connector: Connector,
    presence_ttl: Duration,
    /// Queue → (routing keys bound, when): the queues declared recently by this process.
    declared: SyncMutex<HashMap<String, (Vec<String>, Instant)>>,
    /// Bounds the operations in flight on the connection (held polls are not counted
    /// once set up), one queue of turns per stage of a poll's set-up and one for the
    /// rest (publishes, lookups). Each queue is first come, first served, so under a
    /// herd a poll through presence goes on to its declare at once instead of waiting
    /// behind every other newcomer's presence: set-ups finish in the order they came, at
    /// the rate the broker sustains, and a publish never waits behind a herd.
    turns: Turns,
    /// The cap on each user's device queues.
    devices: Devices,
    /// Consumers kept between polls ([`linger`]); `None` (the default, and on Lambda):
    /// one consumer per poll.
    subscriptions: Option<Arc<Subscriptions>>,
    /// With lingering consumers: user → when this process is next due to re-declare
    /// their presence queue (a tenth to a fifth of its TTL after the last declare), and
    /// the college it was bound under.
    presence_declared: Option<SyncMutex<HashMap<UserId, PresenceDeclared>>>,
}

/// When a user's presence is next due for a re-declare, and the college it was bound under.
type PresenceDeclared = (Instant, Option<CollegeId>);

impl RabbitBroker {
    /// A broker for `config`. Connects lazily, on the first operation, so a function
    /// starts (and answers 503) even while the broker is down.
    pub fn new(config: &Config) -> Self {
        Self {
            connector: Connector::new(
                config.amqp_url.clone(),
                config.connection_name.clone(),
                config.exchange.clone(),
                config.amqp_timeout,
            ),
            presence_ttl: config.presence_ttl,
            declared: SyncMutex::default(),
            turns: Turns::default(),
            devices: Devices::new(config.max_devices_per_user),
            subscriptions: None,
            presence_declared: None,
        }
    }

    /// For a long-running server that alone serves its users (the local server), not
    /// for Lambda. Keeps each user's consumer for `linger` after their poll ends, so that
    /// a re-poll costs the broker no consume and cancel (see [`linger`]), and re-declares
    /// a user's presence queue every tenth to fifth of its TTL (at random, so that users
    /// who came together do not all refresh together) rather than on every poll: it then
    /// lapses 80 to 100 % of the TTL after the last poll. A disconnect through this
    /// process still ends it at once, and the next poll declares it again.
    pub fn with_lingering_consumers(mut self, linger: Duration) -> Self {
        self.subscriptions = Some(Arc::new(Subscriptions::new(linger)));
        self.presence_declared = Some(SyncMutex::default());
        self
    }

    /// Whether this process declared `user`'s presence recently enough to skip it.
    fn presence_fresh(&self, user: UserId, college: Option<CollegeId>) -> bool {
        let Some(declared) = &self.presence_declared else {
            return false;
        };
        let mut declared = declared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if declared.len() >= 100_000 {
            declared.retain(|_, (due, _)| *due > now);
        }
        declared
            .get(&user)
            .is_some_and(|(due, bound)| *due > now && *bound == college)
    }

    /// Notes `user` online (`Some`, with their college) or offline (`None`).
    fn note_presence(&self, user: UserId, online: Option<Option<CollegeId>>) {
        if let Some(declared) = &self.presence_declared {
            let mut declared = declared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(college) = online {
                let jitter = (uuid::Uuid::new_v4().as_u128() % 1_000) as f64 / 1_000.0;
                let refresh = self.presence_ttl.mul_f64(0.1 + 0.1 * jitter);
                declared.insert(user, (Instant::now() + refresh, college));
            } else {
                declared.remove(&user);
            }
        }
    }

    /// The lingering consumer of the subscriber's queue, attached to (one is started if
    /// there is none).
    async fn attach_lingering(
        &self,
        subscriptions: &Arc<Subscriptions>,
        subscriber: &Subscriber,
        deadline: Instant,
    ) -> Result<linger::Attached, BrokerError> {
        let queue = subscriber.queue_name();
        let keys = subscriber.routing_keys();
        let key = format!("{queue} {}", keys.join(" "));
        loop {
            if let Some(attached) = subscriptions.attach(&key) {
                return Ok(attached);
            }
            let (lane, consumer) = self.set_up_consumer(&queue, &keys, deadline).await?;
            subscriptions.retire_others(&queue, &key);
            if let Some(attached) = subscriptions.insert(key.clone(), &queue, lane, consumer) {
                return Ok(attached);
            }
        }
    }

    /// A guide-mode poll through a lingering consumer: takes what it has buffered or
    /// receives.
    async fn wait_lingering(
        &self,
        subscriptions: &Arc<Subscriptions>,
        subscriber: &Subscriber,
        deadline: Instant,
    ) -> Result<Vec<Event>, BrokerError> {
        let queue = subscriber.queue_name();
        let attached = self
            .attach_lingering(subscriptions, subscriber, deadline)
            .await?;
        let taken = attached.take(deadline).await;
        self.lingering_answer(&queue, taken, |deliveries| {
            deliveries
                .iter()
                .filter_map(|delivery| decode(&queue, delivery))
                .collect()
        })
    }

    /// A cursor-mode poll through a lingering consumer: see [`linger::Attached::take_with_cursor`].
    async fn wait_lingering_with_cursor(
        &self,
        subscriptions: &Arc<Subscriptions>,
        subscriber: &Subscriber,
        acked: &str,
        deadline: Instant,
    ) -> Result<Vec<Event>, BrokerError> {
        let queue = subscriber.queue_name();
        let attached = self
            .attach_lingering(subscriptions, subscriber, deadline)
            .await?;
        let acknowledged =
            |delivery: &Delivery| decode(&queue, delivery).is_some_and(|event| event.id == acked);
        let taken = attached
            .take_with_cursor(acknowledged, |delivery| decode(&queue, delivery), deadline)
            .await;
        self.lingering_answer(&queue, taken, |events| events)
    }

    /// The answer to a poll on a lingering consumer: its events, or none if the consumer
    /// ended (the queue was deleted); either way the queue is declared again next time
    /// unless the poll got events.
    fn lingering_answer<T>(
        &self,
        queue: &str,
        taken: Result<linger::Taken<T>, BrokerError>,
        events: impl FnOnce(Vec<T>) -> Vec<Event>,
    ) -> Result<Vec<Event>, BrokerError> {
        match taken {
            Ok(linger::Taken::Deliveries(taken)) => Ok(events(taken)),
            Ok(linger::Taken::Ended) => {
                self.forget_declared(queue);
                Ok(Vec::new())
            }
            Err(error) => {
                self.forget_declared(queue);
                Err(error)
            }
        }
    }

    fn exchange(&self) -> &str {
        &self.connector.exchange
    }

    /// Follows the events of `routing_keys` live without taking them from anyone: an
    /// exclusive, server-named queue bound to the same keys receives a copy of each and
    /// disappears with the tail (`longpoll tail`, for debugging).
    pub async fn tail(&self, routing_keys: &[String]) -> Result<Tail, BrokerError> {
        let deadline = Instant::now() + self.connector.op_timeout;
        self.run("tail set-up", deadline, |lane| async move {
            let channel = lane.connection.create_channel().await?;
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
                        self.exchange().into(),
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

    /// Publishes `messages` to `exchange` with `mandatory` set, on a channel of its own
    /// (see `session` on returns), and returns whether each was routed to a queue, once
    /// the broker has confirmed them all.
    async fn publish_mandatory(
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

    /// Runs `operation` on a borrowed shared lane: see [`Self::run_on`].
    async fn run<T, F, Fut>(
        &self,
        name: &'static str,
        deadline: Instant,
        operation: F,
    ) -> Result<T, BrokerError>
    where
        F: Fn(Lane) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        self.run_on(name, deadline, operation).await
    }

    /// Runs `operation` on a borrowed channel, within one round-trip timeout and the
    /// caller's deadline; on failure tries once more (on a fresh connection if the old
    /// one died).
    async fn run_on<L, T, F, Fut>(
        &self,
        name: &'static str,
        deadline: Instant,
        operation: F,
    ) -> Result<T, BrokerError>
    where
        L: Borrow,
        F: Fn(L) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        let mut attempts_left = 2;
        loop {
            attempts_left -= 1;
            let session = self.connector.session(deadline).await?;
            // Wait for a turn before talking to the broker: a burst of polls queues here
            // instead of flooding it, where every answer would slow down together.
            let _turn = timeout_at(deadline, self.turns.of(name).acquire())
                .await
                .map_err(|_| BrokerError::Timeout(name))?
                .expect("the semaphore is never closed");
            // One round trip's time, when this is the only operation on the connection:
            // no answer then means a dead socket (a frozen Lambda thawed), worth a retry
            // on a fresh connection. Under load a slow answer says nothing about the
            // connection (heartbeats watch it), so the operation may take until its
            // deadline: a herd's set-ups wait for the broker within their polls' hold
            // instead of failing at the first slow step.
            let alone = session.load() == 0;
            let step_deadline = if alone {
                deadline.min(Instant::now() + self.connector.op_timeout)
            } else {
                deadline
            };
            let error = match timeout_at(step_deadline, L::borrow(&session)).await {
                Err(_) => BrokerError::Timeout(name),
                Ok(Err(error)) => failed(name, error),
                Ok(Ok(lane)) => {
                    match timeout_at(step_deadline, operation(lane)).await {
                        Ok(Ok(value)) => return Ok(value),
                        Ok(Err(error)) => failed(name, error),
                        Err(_) => {
                            // Abandoned midway. A late reply is harmless (a consume
                            // gives its consumer back by itself, see start_consumer);
                            // closing the lane would end every poll held on it.
                            // Alone yet no answer: the socket is likely half-open.
                            if alone && step_deadline < deadline && session.load() == 0 {
                                self.connector.discard(&session).await;
                            }
                            BrokerError::Timeout(name)
                        }
                    }
                }
            };
            let refused = matches!(error, BrokerError::Refused { .. });
            if refused {
                session.note_refusal();
            }
            if refused || attempts_left == 0 || Instant::now() >= deadline {
                return Err(error);
            }
            static RETRYING: Throttle = Throttle::per_second();
            if let Some(suppressed) = RETRYING.allow() {
                warn!(operation = name, %error, suppressed, "broker operation failed; retrying");
            }
        }
    }

    fn recently_declared(&self, queue: &str, keys: &[String]) -> bool {
        let declared = self
            .declared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        declared
            .get(queue)
            .is_some_and(|(bound, at)| bound == keys && at.elapsed() < DECLARED_FRESH_FOR)
    }

    fn remember_declared(&self, queue: &str, keys: &[String]) {
        let mut declared = self
            .declared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if declared.len() >= 10_000 {
            declared.retain(|_, (_, at)| at.elapsed() < DECLARED_FRESH_FOR);
        }
        declared.insert(queue.to_owned(), (keys.to_vec(), Instant::now()));
    }

    fn forget_declared(&self, queue: &str) {
        self.declared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(queue);
    }

    /// Counts the subscriber's device in and, past the user's device cap, deletes the
    /// queue of their least recently polled device (and its binding record); a poll
    /// held on it ends with nothing, since the broker cancels its consumer.
    async fn make_room(&self, subscriber: &Subscriber) -> Result<(), BrokerError> {
        let Some(evicted) = self.devices.admit(subscriber) else {
            return Ok(());
        };
        let queue = evicted.queue_name();
        self.forget_declared(&queue);
        let deadline = Instant::now() + self.connector.op_timeout;
        self.run_on("device queue delete", deadline, |lane: OwnLane| {
            let queue = queue.clone();
            async move {
                let record = binding_record_queue_name(&queue);
                let nowait = QueueDeleteOptions {
                    nowait: true,
                    ..Default::default()
                };
                lane.channel
                    .queue_delete(record.as_str().into(), nowait)
                    .await?;
                lane.channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await?;
                lane.finished();
                Ok(())
            }
        })
        .await
    }

    /// Starts a consumer on `queue`, already declared.
    async fn start_consumer(
        &self,
        channel: &Channel,
        queue: &str,
    ) -> lapin::Result<lapin::Consumer> {
        // The consume runs in a task of its own: if this poll stops waiting for
        // consume-ok (its set-up timed out under load), the task still gets the consumer
        // and gives it back, so no consumer is left holding messages nobody reads.
        let (handover, handed) = oneshot::channel();
        let (channel, queue_name) = (channel.clone(), queue.to_owned());
        tokio::spawn(async move {
            let consumer = channel
                .basic_consume(
                    queue_name.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await;
            if let Err(Ok(unwanted)) = handover.send(consumer) {
                release(channel, unwanted, Vec::new());
            }
        });
        handed.await.expect("the consume task always hands over")
    }

    /// Declares `queue`, binds it to `keys` and unbinds the keys it was bound to before
    /// and is no longer (a token moved to another college, or lost its college), on a
    /// channel of its own, waiting for the broker's answer. A refusal (a queue limit, a
    /// precondition) closes only that channel, so it fails only this poll, never the
    /// polls held on the shared lanes. One round trip, plus one when the keys changed.
    async fn declare_subscriber_queue(
        &self,
        queue: &str,
        keys: &[String],
        deadline: Instant,
    ) -> Result<(), BrokerError> {
        let exchange = self.exchange();
        self.run_on("queue declare", deadline, |lane: OwnLane| async move {
            let channel = &lane.channel;
            // Pipelined: only the last method waits, and its reply vouches for all the
            // others, since a channel runs its methods in order and a refusal closes it.
            let declare = QueueDeclareOptions {
                durable: true,
                nowait: true,
                ..Default::default()
            };
            channel
                .queue_declare(queue.into(), declare, field_table(user_queue_arguments()))
                .await?;
            for key in keys {
                channel
                    .queue_bind(
                        queue.into(),
                        exchange.into(),
                        key.as_str().into(),
                        QueueBindOptions { nowait: true },
                        FieldTable::default(),
                    )
                    .await?;
            }
            let record = binding_record_queue_name(queue);
            channel
                .queue_declare(
                    record.as_str().into(),
                    declare,
                    field_table(binding_record_arguments()),
                )
                .await?;
            let previous = channel
                .basic_get(record.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
                .map(|message| message.delivery);
            let current = keys.join(" ");
            match previous {
                Some(previous) if previous.data == current.as_bytes() => {
                    previous
                        .acker
                        .reject(BasicRejectOptions { requeue: true })
                        .await?;
                }
                previous => {
                    if let Some(previous) = &previous {
                        let previous = String::from_utf8_lossy(&previous.data);
                        let stale = previous
                            .split(' ')
                            .filter(|key| !key.is_empty() && !keys.iter().any(|k| k == key));
                        for key in stale {
                            channel
                                .queue_unbind(
                                    queue.into(),
                                    exchange.into(),
                                    key.into(),
                                    FieldTable::default(),
                                )
                                .await?;
                        }
                    }
                    // The new record first, then the old one goes: a crash in between
                    // leaves two, and the record queue's length limit drops the older.
                    // Transient: confirmed without a disk write, which a herd of new
                    // users would wait on; a broker restart forgets it, and the next
                    // college change after one leaves the old binding to the queue's
                    // expiry.
                    channel
                        .basic_publish(
                            DEFAULT_EXCHANGE.into(),
                            record.as_str().into(),
                            BasicPublishOptions::default(),
                            current.as_bytes(),
                            BasicProperties::default(),
                        )
                        .await?
                        .await?;
                    if let Some(previous) = previous {
                        previous.acker.ack(BasicAckOptions::default()).await?;
                    }
                }
            }
            lane.finished();
            Ok(())
        })
        .await
    }

    /// A consumer on `queue` (declared and bound to `keys` unless this process just did),
    /// on a borrowed lane, within `deadline` or [`LEAST_SET_UP_BUDGET`], whichever is
    /// later: a poll's set-up.
    async fn set_up_consumer(
        &self,
        queue: &str,
        keys: &[String],
        deadline: Instant,
    ) -> Result<(Lane, lapin::Consumer), BrokerError> {
        let deadline = deadline.max(Instant::now() + LEAST_SET_UP_BUDGET);
        if !self.recently_declared(queue, keys) {
            self.declare_subscriber_queue(queue, keys, deadline).await?;
            // Remembered at once: a poll whose consume then misses its hold (a herd)
            // retries without declaring again.
            self.remember_declared(queue, keys);
        }
        let consumer = self
            .run("poll set-up", deadline, |lane| async move {
                let consumer = self.start_consumer(&lane.channel, queue).await?;
                Ok((lane, consumer))
            })
            .await;
        // A consume refused or failed may mean the queue is gone: declare it next time.
        if let Err(BrokerError::Refused { .. } | BrokerError::Failed { .. }) = &consumer {
            self.forget_declared(queue);
        }
        consumer
    }

    /// Waits on the subscriber's queue until a message arrives (or `deadline`), then
    /// stops the consumer, collects the deliveries that raced with the stop and tops
    /// the batch up to `limit` with what else is queued. Nothing is settled yet: the
    /// caller acks or requeues each delivery with [`Self::settle`].
    async fn take(
        &self,
        subscriber: &Subscriber,
        deadline: Instant,
        limit: usize,
    ) -> Result<Taken, BrokerError> {
        let queue = subscriber.queue_name();
        let keys = subscriber.routing_keys();
        let (lane, mut consumer) = self.set_up_consumer(&queue, &keys, deadline).await?;

        let mut deliveries = Vec::new();
        let mut consumer_ended = false;
        match timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(delivery))) => deliveries.push(delivery),
            // The channel or connection died mid-hold; the broker requeues what it had sent.
            Ok(Some(Err(error))) => {
                self.forget_declared(&queue);
                return Err(failed("poll", error));
            }
            // The broker cancelled the consumer (the queue was deleted).
            Ok(None) => {
                consumer_ended = true;
                self.forget_declared(&queue);
            }
            Err(_hold_over) => {}
        }
        let collect = collect_rest(
            &lane.channel,
            &mut consumer,
            consumer_ended,
            &queue,
            &mut deliveries,
            limit,
        );
        match timeout_at(Instant::now() + CLEANUP_BUDGET, collect).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(failed("poll", error)),
            Err(_) => {
                // The poll answers 503; what it took goes back to the queue.
                release(lane.channel.clone(), consumer, deliveries);
                return Err(BrokerError::Timeout("poll clean-up"));
            }
        }
        Ok(Taken {
            lane,
            queue,
            deliveries,
        })
    }

    /// Acks (removes) each delivery of `taken` for which `remove` says so and requeues
    /// the others, which go back to their places at the head of the queue.
    async fn settle(
        &self,
        taken: &Taken,
        remove: impl Fn(usize) -> bool,
    ) -> Result<(), BrokerError> {
        // One settlement each: delivery tags are per channel and lanes are shared, so a
        // `multiple` ack could take other polls' deliveries with it.
        let settle = async {
            let mut requeued = false;
            for (index, delivery) in taken.deliveries.iter().enumerate() {
                if remove(index) {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                } else {
                    let requeue = BasicRejectOptions { requeue: true };
                    delivery.acker.reject(requeue).await?;
                    requeued = true;
                }
            }
            // Rejects have no reply. Answering before the broker has taken them back
            // would let the client's next poll, served on another connection (another
            // instance), see newer events ahead of them. A `basic.qos` that changes
            // nothing (the lanes' per-consumer prefetch) is answered on this channel
            // only after the rejects before it: one round trip, for cursor polls that
            // return events.
            if requeued {
                let unchanged = BasicQosOptions { global: false };
                taken
                    .lane
                    .channel
                    .basic_qos(MAX_BATCH as u16, unchanged)
                    .await?;
            }
            Ok(())
        };
        match timeout_at(Instant::now() + CLEANUP_BUDGET, settle).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(failed("poll", error)),
            Err(_) => {
                // Closing the channel requeues whatever is still unacked.
                poison(taken.lane.channel.clone());
                Err(BrokerError::Timeout("poll clean-up"))
            }
        }
    }
}

/// Most time a released consumer gets to stop and give its messages back before its
/// channel is closed instead (which also gives them back, but ends the lane's polls).
const RELEASE_BUDGET: Duration = Duration::from_secs(30);

/// Gives back, in the background, a consumer that no poll will read: cancels it and
/// requeues what it delivered, with `deliveries` already taken from it. Closing the
/// shared lane would do the same but also end every other poll held on it, so that is
/// only the last resort, for a channel the broker no longer answers on.
fn release(channel: Channel, mut consumer: lapin::Consumer, mut deliveries: Vec<Delivery>) {
    tokio::spawn(async move {
        let give_back = async {
            // A consumer already cancelled refuses a second cancel; its stream has
            // ended, so the drain below finishes at once.
            let _ = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
            while let Some(delivery) = consumer.next().await {
                deliveries.push(delivery?);
            }
            for delivery in &deliveries {
                let requeue = BasicRejectOptions { requeue: true };
                delivery.acker.reject(requeue).await?;
            }
            lapin::Result::Ok(())
        };
        if !matches!(
            tokio::time::timeout(RELEASE_BUDGET, give_back).await,
            Ok(Ok(()))
        ) {
            poison(channel);
        }
    });
}

/// Deliveries taken from a queue and not yet settled, and the lane they came on (acks
/// must go back on the same channel).
struct Taken {
    lane: Lane,
    queue: String,
    deliveries: Vec<Delivery>,
}

impl Taken {
    fn events(&self) -> impl Iterator<Item = Option<Event>> + '_ {
        self.deliveries
            .iter()
            .map(|delivery| decode(&self.queue, delivery))
    }
}

/// Stops the consumer, collects deliveries that raced with the stop and, if the wait
/// ended with a delivery, tops the batch up to `limit` from the queue.
async fn collect_rest(
    channel: &Channel,
    consumer: &mut lapin::Consumer,
    consumer_ended: bool,
    queue: &str,
    deliveries: &mut Vec<Delivery>,
    limit: usize,
) -> lapin::Result<()> {
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
        while deliveries.len() < limit {
            match channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await?
            {
                Some(message) => deliveries.push(message.delivery),
                None => break,
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Broker for RabbitBroker {
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

    async fn wait_for_events(
        &self,
        subscriber: &Subscriber,
        deadline: Instant,
    ) -> Result<Vec<Event>, BrokerError> {
        self.make_room(subscriber).await?;
        if let Some(subscriptions) = &self.subscriptions {
            return self
                .wait_lingering(subscriptions, subscriber, deadline)
                .await;
        }
        let taken = self.take(subscriber, deadline, MAX_BATCH).await?;
        // A failed settle may still have removed some of the batch (acks have no
        // reply): answer with all of it, since what stayed queued comes again under
        // the same ids, rather than answer 503 and lose the rest.
        if let Err(error) = self.settle(&taken, |_| true).await {
            warn!(%error, "acks failed; answering with the batch, the unacked part will come again");
        }
        // A message that is not an event was acked too: left in the queue it would
        // block every later poll.
        Ok(taken.events().flatten().collect())
    }

    async fn wait_with_cursor(
        &self,
        subscriber: &Subscriber,
        acked: &str,
        deadline: Instant,
    ) -> Result<Vec<Event>, BrokerError> {
        self.make_room(subscriber).await?;
        if let Some(subscriptions) = &self.subscriptions {
            return self
                .wait_lingering_with_cursor(subscriptions, subscriber, acked, deadline)
                .await;
        }
        let mut acked = Some(acked);
        loop {
            // The whole queue (it keeps at most 100) plus what arrives while we read it.
            let taken = self
                .take(subscriber, deadline, MAX_QUEUE_LENGTH + MAX_BATCH)
                .await?;
            let events: Vec<Option<Event>> = taken.events().collect();
            // The acknowledged prefix goes; on later rounds nothing is acknowledged.
            let acked_through = acked.take().and_then(|acked| {
                events
                    .iter()
                    .position(|event| event.as_ref().is_some_and(|event| event.id == acked))
            });
            let prefix = acked_through.map_or(0, |position| position + 1);
            // The client can only have received a message that was delivered before:
            // one in the prefix that never was (`redelivered` false) overtook the
            // requeue of earlier ones (a reject travels on another channel than this
            // consume, and the queue may see them in either order), so it stays.
            let acked = |index: usize| {
                index < prefix
                    && (taken.deliveries[index].redelivered || Some(index) == acked_through)
            };
            // A message that is not an event goes wherever it is: requeued, it would
            // come back on every poll.
            self.settle(&taken, |index| acked(index) || events[index].is_none())
                .await?;
            let kept: Vec<Event> = events
                .into_iter()
                .enumerate()
                .filter(|(index, _)| !acked(*index))
                .filter_map(|(_, event)| event)
                .collect();
            if !kept.is_empty() || Instant::now() >= deadline {
                return Ok(kept.into_iter().take(MAX_BATCH).collect());
            }
        }
    }

    async fn mark_online(
        &self,
        user: UserId,
        college: Option<CollegeId>,
        deadline: Instant,
    ) -> Result<(), BrokerError> {
        if self.presence_fresh(user, college) {
            return Ok(());
        }
        let queue = presence_queue_name(user);
        let presence_exchange = self.connector.presence_exchange();
        // A poll's presence waits its turn within the poll's hold (a herd of new users
        // queues here instead of failing), and gets a round trip's time at least.
        let deadline = deadline.max(Instant::now() + self.connector.op_timeout);
        // On a channel of its own: a refused declare (a queue limit) closes it, and must
        // not end the polls held on a shared lane.
        self.run_on("presence", deadline, |lane: OwnLane| {
            let queue = queue.clone();
            async move {
                let options = QueueDeclareOptions {
                    durable: true,
                    auto_delete: true,
                    nowait: college.is_some(),
                    ..Default::default()
                };
                let arguments = field_table(presence_queue_arguments(self.presence_ttl));
                lane.channel
                    .queue_declare(queue.as_str().into(), options, arguments)
                    .await?;
                // A member of a college is also found by the college's lookups: the
                // binding's reply vouches for the declare before it.
                if let Some(college) = college {
                    lane.channel
                        .queue_bind(
                            queue.as_str().into(),
                            presence_exchange.into(),
                            college_presence_key(college, user).into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                }
                lane.finished();
                Ok(())
            }
        })
        .await?;
        self.note_presence(user, Some(college));
        Ok(())
    }

    async fn mark_offline(&self, user: UserId) -> Result<(), BrokerError> {
        self.note_presence(user, None);
        let queue = presence_queue_name(user);
        let deadline = Instant::now() + self.connector.op_timeout;
        self.run_on("presence", deadline, |lane: OwnLane| {
            let queue = queue.clone();
            // Deleting a queue that does not exist is not an error in RabbitMQ.
            async move {
                lane.channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await?;
                lane.finished();
                Ok(())
            }
        })
        .await
    }

    async fn close(&self) {
        self.connector.close().await;
    }

    async fn is_online(
        &self,
        users: &[UserId],
        within: Option<CollegeId>,
    ) -> Result<Vec<bool>, BrokerError> {
        if users.is_empty() {
            // Still connects: the local server's banner uses this to check the broker.
            let deadline = Instant::now() + self.connector.op_timeout;
            return self.connector.session(deadline).await.map(|_| Vec::new());
        }
        // A passive declare of a missing queue is answered with a channel close (404),
        // and lapin never frees the id of a channel the broker closed: 2,047 offline
        // users would use up the connection. Instead, one mandatory probe per user to
        // the default exchange, which routes by queue name: a probe that comes back
        // (`basic.return`) found no presence queue. The probes expire at once
        // (`expiration` 0), so presence queues stay empty, and publishing does not count
        // as using a queue, so it does not extend the presence TTL. One round trip for
        // the whole lookup, and no channel is ever closed by the broker. Scoped to a
        // college, the probes go to the presence exchange instead, where a member's
        // presence queue is bound under the college and user (see `mark_online`).
        let (exchange, key): (&str, &dyn Fn(UserId) -> String) = match within {
            None => (DEFAULT_EXCHANGE, &presence_queue_name),
            Some(college) => (self.connector.presence_exchange(), &move |user| {
                college_presence_key(college, user)
            }),
        };
        let ids: Vec<String> = (0..users.len())
            .map(|index| format!("presence-{index}"))
            .collect();
        let probes: Vec<Outgoing> = users
            .iter()
            .zip(&ids)
            .map(|(user, id)| Outgoing {
                routing_key: key(*user),
                id,
                body: b"",
                properties: BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_expiration("0".into()),
            })
            .collect();
        self.publish_mandatory("presence lookup", exchange, &probes)
            .await
    }
}

/// The queues of turns of [`RabbitBroker::turns`].
struct Turns {
    presence: Semaphore,
    declare: Semaphore,
    consume: Semaphore,
    other: Semaphore,
}

impl Default for Turns {
    fn default() -> Self {
        let turns = || Semaphore::new(MAX_OPERATIONS_IN_FLIGHT);
        Self {
            presence: turns(),
            declare: turns(),
            consume: turns(),
            other: turns(),
        }
    }
}

impl Turns {
    /// The queue an operation named `name` waits in.
    fn of(&self, name: &str) -> &Semaphore {
        match name {
            "presence" => &self.presence,
            "queue declare" => &self.declare,
            "poll set-up" => &self.consume,
            _ => &self.other,
        }
    }
}

/// The default exchange: routes a message to the queue its routing key names.
const DEFAULT_EXCHANGE: &str = "";

/// One message for [`RabbitBroker::publish_mandatory`].
struct Outgoing<'a> {
    routing_key: String,
    /// Its `message_id`, by which a `basic.return` is matched to it.
    id: &'a str,
    body: &'a [u8],
    properties: BasicProperties,
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

/// Queue arguments (as [`crate::topology`] states them) as an AMQP field table, for
/// anything that declares the contract's queues over lapin.
pub fn field_table(arguments: Vec<(&'static str, QueueArgument)>) -> FieldTable {
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

fn failed(operation: &'static str, error: lapin::Error) -> BrokerError {
    let reason = error.to_string();
    match error.kind() {
        // A soft error is the broker closing one channel over one request it refused
        // (403, 404, 405, 406); the connection and its other channels carry on.
        lapin::ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)) => {
            BrokerError::Refused { operation, reason }
        }
        _ => BrokerError::Failed { operation, reason },
    }
}
