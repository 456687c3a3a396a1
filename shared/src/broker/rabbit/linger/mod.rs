//! Lingering consumers, for long-running servers (the local server), never for Lambda.
//!
//! A user re-polls as soon as a poll answers, so starting and cancelling a consumer for
//! every poll costs the broker two operations per user every 5.5 s, which is what
//! limits how many held polls one broker sustains. Here a user's consumer outlives the
//! poll: it stays registered for `linger` after the last poll ended, buffering (unacked,
//! at most the prefetch of 100) what arrives meanwhile, and the next poll takes from the
//! buffer at once. An idle re-poll then costs the broker nothing beyond presence.
//!
//! A lingering consumer that no poll comes back for is cancelled and what it buffered is
//! requeued, in order, for whoever polls next; if the connection dies, the broker
//! requeues it. So nothing is lost, but with several processes serving one queue a
//! lingering consumer in one of them would hold events for up to `linger` while the
//! user polls another: hence long-running, single-process servers only.
//!
//! Cursor mode (`?ack=`) keeps what it returns *handed out*: delivered to the
//! subscription and unacked at the broker, until a later poll acknowledges it (then it
//! is acked) or the subscription ends (then the broker has it back, in order). So a
//! cursor re-poll costs one ack per event instead of a consume, a cancel and a requeue
//! of the whole queue.

//!
//! [`LingeringBroker`] wraps the [`RabbitBroker`] that Lambda uses and adds only this;
//! [`subscriptions`] keeps the consumers.

mod subscriptions;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use lapin::message::Delivery;
use tokio::time::Instant;

use self::subscriptions::{Attached, Subscriptions, Taken};
use super::{RabbitBroker, codec::decode};
use crate::{
    broker::{Broker, BrokerError, Poll, Presence, Publication, Publish, Receipt},
    budget::PollBudget,
    event::Event,
    topology::{CollegeId, Subscriber, UserId},
};

/// Most users whose presence refresh a lingering broker remembers before it drops
/// the ones already due.
const MAX_PRESENCE_REMEMBERED: usize = 100_000;

/// A [`RabbitBroker`] whose consumers outlive their polls, for a long-running server
/// that alone serves its users (the local server), never for Lambda. It also re-declares
/// a user's presence queue every tenth to fifth of its TTL (at random, so that users who
/// came together do not all refresh together) rather than on every poll: it then lapses
/// 80 to 100 % of the TTL after the last poll. A disconnect through this process still
/// ends it at once, and the next poll declares it again.
pub struct LingeringBroker {
    rabbit: RabbitBroker,
    subscriptions: Arc<Subscriptions>,
    /// User → when this process is next due to re-declare their presence queue, and the
    /// college it was bound under.
    presence_declared: Mutex<HashMap<UserId, (Instant, Option<CollegeId>)>>,
}

impl LingeringBroker {
    /// `rabbit`, with each user's consumer kept for `linger` after their poll ends.
    pub fn new(rabbit: RabbitBroker, linger: Duration) -> Self {
        Self {
            rabbit,
            subscriptions: Arc::new(Subscriptions::new(linger)),
            presence_declared: Mutex::default(),
        }
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, (Instant, Option<CollegeId>)>> {
        self.presence_declared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether this process declared `user`'s presence recently enough to skip it.
    fn presence_fresh(&self, user: UserId, college: Option<CollegeId>) -> bool {
        let mut declared = self.presence();
        let now = Instant::now();
        if declared.len() >= MAX_PRESENCE_REMEMBERED {
            declared.retain(|_, (due, _)| *due > now);
        }
        declared
            .get(&user)
            .is_some_and(|(due, bound)| *due > now && *bound == college)
    }

    /// Notes `user` online (`Some`, with their college) or offline (`None`).
    fn note_presence(&self, user: UserId, online: Option<Option<CollegeId>>) {
        let mut declared = self.presence();
        if let Some(college) = online {
            let jitter = (uuid::Uuid::new_v4().as_u128() % 1_000) as f64 / 1_000.0;
            let refresh = self.rabbit.presence_ttl.mul_f64(0.1 + 0.1 * jitter);
            declared.insert(user, (Instant::now() + refresh, college));
        } else {
            declared.remove(&user);
        }
    }

    /// The lingering consumer of the subscriber's queue, attached to (one is started if
    /// there is none).
    async fn attach_lingering(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
    ) -> Result<Attached, BrokerError> {
        let queue = subscriber.queue_name();
        let keys = subscriber.routing_keys();
        let key = format!("{queue} {}", keys.join(" "));
        loop {
            if let Some(attached) = self.subscriptions.attach(&key) {
                return Ok(attached);
            }
            let (lane, consumer) = self.rabbit.set_up_consumer(&queue, &keys, budget).await?;
            self.subscriptions.retire_others(&queue, &key);
            if let Some(attached) = self
                .subscriptions
                .insert(key.clone(), &queue, lane, consumer)
            {
                return Ok(attached);
            }
        }
    }

    /// A guide-mode poll through a lingering consumer: takes what it has buffered or
    /// receives.
    async fn wait_lingering(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        let queue = subscriber.queue_name();
        let attached = self.attach_lingering(subscriber, budget).await?;
        let taken = attached.take(budget.hold_until()).await;
        self.lingering_answer(&queue, taken, |deliveries| {
            deliveries
                .iter()
                .filter_map(|delivery| decode(&queue, delivery))
                .collect()
        })
    }

    /// A cursor-mode poll through a lingering consumer: see [`Attached::take_with_cursor`].
    async fn wait_lingering_with_cursor(
        &self,
        subscriber: &Subscriber,
        acked: &str,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        let queue = subscriber.queue_name();
        let attached = self.attach_lingering(subscriber, budget).await?;
        let acknowledged =
            |delivery: &Delivery| decode(&queue, delivery).is_some_and(|event| event.id == acked);
        let taken = attached
            .take_with_cursor(
                acknowledged,
                |delivery| decode(&queue, delivery),
                budget.hold_until(),
            )
            .await;
        self.lingering_answer(&queue, taken, |events| events)
    }

    /// The answer to a poll on a lingering consumer: its events, or none if the consumer
    /// ended (the queue was deleted); either way the queue is declared again next time
    /// unless the poll got events.
    fn lingering_answer<T>(
        &self,
        queue: &str,
        taken: Result<Taken<T>, BrokerError>,
        events: impl FnOnce(Vec<T>) -> Vec<Event>,
    ) -> Result<Vec<Event>, BrokerError> {
        match taken {
            Ok(Taken::Deliveries(taken)) => Ok(events(taken)),
            Ok(Taken::Ended) => {
                self.rabbit.declared.forget(queue);
                Ok(Vec::new())
            }
            Err(error) => {
                self.rabbit.declared.forget(queue);
                Err(error)
            }
        }
    }
}

#[async_trait]
impl Poll for LingeringBroker {
    async fn wait_for_events(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        self.rabbit.make_room(subscriber).await?;
        self.wait_lingering(subscriber, budget).await
    }

    async fn wait_with_cursor(
        &self,
        subscriber: &Subscriber,
        acked: &str,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        self.rabbit.make_room(subscriber).await?;
        self.wait_lingering_with_cursor(subscriber, acked, budget)
            .await
    }
}

#[async_trait]
impl Presence for LingeringBroker {
    async fn mark_online(
        &self,
        user: UserId,
        college: Option<CollegeId>,
        budget: &PollBudget,
    ) -> Result<(), BrokerError> {
        if self.presence_fresh(user, college) {
            return Ok(());
        }
        self.rabbit.mark_online(user, college, budget).await?;
        self.note_presence(user, Some(college));
        Ok(())
    }

    async fn mark_offline(&self, user: UserId) -> Result<(), BrokerError> {
        self.note_presence(user, None);
        self.rabbit.mark_offline(user).await
    }

    async fn is_online(
        &self,
        users: &[UserId],
        within: Option<CollegeId>,
    ) -> Result<Vec<bool>, BrokerError> {
        self.rabbit.is_online(users, within).await
    }
}

#[async_trait]
impl Publish for LingeringBroker {
    async fn publish(&self, batch: &[Publication]) -> Result<Vec<Receipt>, BrokerError> {
        self.rabbit.publish(batch).await
    }
}

#[async_trait]
impl Broker for LingeringBroker {
    async fn close(&self) {
        self.rabbit.close().await;
    }
}
