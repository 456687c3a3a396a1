//! A subscriber's queue: declared and bound (with its binding record, so keys the
//! token no longer names are unbound), remembered for a while so that the user's next
//! polls skip it, and deleted when the user's device cap evicts it.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use lapin::{
    BasicProperties, Channel,
    options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, BasicRejectOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use tokio::time::Instant;
use tracing::warn;

use super::{RabbitBroker, codec::field_table, lanes::OwnLane, publish::DEFAULT_EXCHANGE};
use crate::{
    broker::BrokerError,
    telemetry::Throttle,
    topology::{
        QueueArgument, SINGLE_ACTIVE_CONSUMER, Subscriber, binding_record_arguments,
        binding_record_queue_name, user_queue_arguments,
    },
};

/// How long after this process last declared or consumed from a queue it is taken as
/// still there, so a user's next polls skip the declare and binds: a steady idle poll is
/// then its consume and its cancel alone. Each consume uses the queue, which restarts
/// its 30-minute `x-expires`, so within this third of it the queue cannot have expired;
/// one deleted meanwhile (a device cap eviction, an operator) refuses the consume, and
/// the next poll declares it again.
const DECLARED_FRESH_FOR: Duration = Duration::from_secs(10 * 60);

/// Most queues a process remembers declaring; past it, the stale ones are dropped, or
/// all of them when few are stale, so that the scan happens once per many inserts.
const MAX_DECLARED_REMEMBERED: usize = 100_000;

/// Queue → (routing keys bound, when): the queues declared recently by this process.
#[derive(Default)]
pub(super) struct Declared(Mutex<HashMap<String, (Vec<String>, Instant)>>);

impl Declared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<String>, Instant)>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `queue` was declared and bound to exactly `keys` lately.
    pub fn recently(&self, queue: &str, keys: &[String]) -> bool {
        self.lock()
            .get(queue)
            .is_some_and(|(bound, at)| bound == keys && at.elapsed() < DECLARED_FRESH_FOR)
    }

    pub fn remember(&self, queue: &str, keys: &[String]) {
        let mut declared = self.lock();
        if let Some((bound, at)) = declared.get_mut(queue)
            && bound.as_slice() == keys
        {
            *at = Instant::now();
            return;
        }
        if declared.len() >= MAX_DECLARED_REMEMBERED {
            declared.retain(|_, (_, at)| at.elapsed() < DECLARED_FRESH_FOR);
            // Still full of fresh ones: forget them all rather than scan again on the
            // next insert (a forgotten queue costs one declare).
            if declared.len() >= MAX_DECLARED_REMEMBERED * 3 / 4 {
                declared.clear();
            }
        }
        declared.insert(queue.to_owned(), (keys.to_vec(), Instant::now()));
    }

    /// The queue may be gone: the next poll declares it again.
    pub fn forget(&self, queue: &str) {
        self.lock().remove(queue);
    }
}

impl RabbitBroker {
    /// Counts the subscriber's device in and, past the user's device cap, deletes the
    /// queue of their least recently polled device (and its binding record); a poll
    /// held on it ends with nothing, since the broker cancels its consumer.
    pub(super) async fn make_room(&self, subscriber: &Subscriber) -> Result<(), BrokerError> {
        let Some(evicted) = self.devices.admit(subscriber) else {
            return Ok(());
        };
        let queue = evicted.queue_name();
        self.declared.forget(&queue);
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

    /// Declares `queue`, binds it to `keys` and unbinds the keys it was bound to before
    /// and is no longer (a token moved to another college, or lost its college), on a
    /// channel of its own, waiting for the broker's answer. A refusal (a queue limit, a
    /// precondition) closes only that channel, so it fails only this poll, never the
    /// polls held on the shared lanes. One round trip, plus one when the keys changed.
    pub(super) async fn declare_subscriber_queue(
        &self,
        queue: &str,
        keys: &[String],
        deadline: Instant,
    ) -> Result<(), BrokerError> {
        let arguments = user_queue_arguments(self.queue_type);
        match self.declare_queue(queue, keys, &arguments, deadline).await {
            // A quorum queue an earlier version declared, without single active consumer
            // (RabbitMQ refuses a declare whose arguments differ, and arguments cannot
            // change): used as it is until it expires, rather than failing every poll
            // of its user, whose events it holds.
            Err(BrokerError::Refused { reason, .. }) if reason.contains(SINGLE_ACTIVE_CONSUMER) => {
                static LEGACY: Throttle = Throttle::per_second();
                if let Some(suppressed) = LEGACY.allow() {
                    warn!(
                        queue,
                        suppressed,
                        "a user queue lacks x-single-active-consumer (declared by an earlier version); \
                         used as it is until it expires"
                    );
                }
                let mut legacy = arguments;
                legacy.retain(|(name, _)| *name != SINGLE_ACTIVE_CONSUMER);
                self.declare_queue(queue, keys, &legacy, deadline).await
            }
            other => other,
        }
    }

    /// The queue with `arguments`, its bindings and, when its node is up, its binding
    /// record.
    async fn declare_queue(
        &self,
        queue: &str,
        keys: &[String],
        arguments: &[(&'static str, QueueArgument)],
        deadline: Instant,
    ) -> Result<(), BrokerError> {
        match self
            .declare_with_record(queue, keys, arguments, deadline)
            .await
        {
            // The binding record is a classic queue, on one node: not worth a Raft group
            // of its own. With its node down (a cluster's maintenance window), the user's
            // queue, quorum and so on the live nodes, is declared and bound without it.
            // The cost: a college change made while the record is away leaves the old
            // college bound until this process declares the queue again (10 minutes on).
            // If it is the user's queue itself that is out of reach (classic queues on a
            // cluster), this fails the same way, and the poll answers 503.
            Err(BrokerError::QueueUnavailable { .. }) => {
                self.declare_without_record(queue, keys, arguments, deadline)
                    .await
            }
            other => other,
        }
    }

    /// The queue and its bindings alone, pipelined: the last bind's reply vouches for all.
    async fn declare_without_record(
        &self,
        queue: &str,
        keys: &[String],
        arguments: &[(&'static str, QueueArgument)],
        deadline: Instant,
    ) -> Result<(), BrokerError> {
        let exchange = self.exchange();
        self.run_on("queue declare", deadline, |lane: OwnLane| {
            let arguments = arguments.to_vec();
            async move {
                declare_and_bind(&lane.channel, queue, exchange, keys, arguments, true).await?;
                lane.finished();
                Ok(())
            }
        })
        .await
    }

    /// The queue, its bindings and its binding record: see
    /// [`Self::declare_subscriber_queue`].
    async fn declare_with_record(
        &self,
        queue: &str,
        keys: &[String],
        arguments: &[(&'static str, QueueArgument)],
        deadline: Instant,
    ) -> Result<(), BrokerError> {
        let exchange = self.exchange();
        self.run_on("queue declare", deadline, |lane: OwnLane| {
            let arguments = arguments.to_vec();
            async move {
                let channel = &lane.channel;
                // Pipelined: only the last method waits, and its reply vouches for all the
                // others, since a channel runs its methods in order and a refusal closes it.
                declare_and_bind(channel, queue, exchange, keys, arguments, false).await?;
                let declare = QueueDeclareOptions {
                    durable: true,
                    nowait: true,
                    ..Default::default()
                };
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
            }
        })
        .await
    }
}

/// Sends the declare of the user's `queue` and its binds to `keys`, none of them waiting
/// for a reply unless `last_waits`, when the last bind's reply vouches for them all.
async fn declare_and_bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    keys: &[String],
    arguments: Vec<(&'static str, QueueArgument)>,
    last_waits: bool,
) -> lapin::Result<()> {
    let declare = QueueDeclareOptions {
        durable: true,
        nowait: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), declare, field_table(arguments))
        .await?;
    for (index, key) in keys.iter().enumerate() {
        let nowait = !(last_waits && index + 1 == keys.len());
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.as_str().into(),
                QueueBindOptions { nowait },
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}
