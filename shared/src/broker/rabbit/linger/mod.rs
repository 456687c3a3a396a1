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

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use lapin::message::Delivery;

use self::subscriptions::{Attached, Subscriptions, Taken};
use super::{RabbitBroker, codec::decode, lanes::PREFETCH};
use crate::{
    broker::{Broker, BrokerError, Poll, Presence, Publication, Publish, Receipt},
    budget::PollBudget,
    event::Event,
    shard::ShardRecord,
    topology::{CollegeId, QueueType, Subscriber, UserId},
};

/// A [`RabbitBroker`] whose consumers outlive their polls, for a long-running server
/// that alone serves its users (the local server), never for Lambda.
pub struct LingeringBroker {
    rabbit: RabbitBroker,
    subscriptions: Arc<Subscriptions>,
}

impl LingeringBroker {
    /// `rabbit`, with each user's consumer kept for `linger` after their poll ends.
    ///
    /// Classic queues only (panics on [`QueueType::Quorum`]): a lingering consumer ends
    /// with a cancel and hands back what it kept with rejects, and a quorum queue may
    /// deliver after a cancel and puts rejected events behind later returns (see
    /// `consume`'s `PollLane`), which would hold events out of reach or reorder them.
    pub fn new(rabbit: RabbitBroker, linger: Duration) -> Self {
        assert_eq!(
            rabbit.queue_type,
            QueueType::Classic,
            "lingering consumers need classic queues"
        );
        Self {
            rabbit,
            subscriptions: Arc::new(Subscriptions::new(linger)),
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
            let (lane, consumer) = self
                .rabbit
                .set_up_consumer(&queue, &keys, PREFETCH, budget)
                .await?;
            self.subscriptions.retire_others(&queue, &key);
            if let Some(attached) = self
                .subscriptions
                .insert(key.clone(), &queue, lane, consumer)
            {
                return Ok(attached);
            }
        }
    }

    /// Takes from the subscriber's lingering consumer with `take`. A consumer whose
    /// channel died mid-hold (on a cluster, with the node it was on; the broker requeues
    /// what it held) is replaced within the hold, on a fresh connection, as
    /// [`RabbitBroker`]'s own polls do.
    async fn attach_and_take<T, F, Fut>(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
        take: F,
    ) -> Result<Taken<T>, BrokerError>
    where
        F: Fn(Attached) -> Fut,
        Fut: Future<Output = Result<Taken<T>, BrokerError>>,
    {
        loop {
            let attached = self.attach_lingering(subscriber, budget).await?;
            match take(attached).await {
                Err(BrokerError::Failed { .. }) if !budget.hold_over() => {
                    self.rabbit.declared.forget(&subscriber.queue_name());
                }
                taken => return taken,
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
        let taken = self
            .attach_and_take(subscriber, budget, |attached| async move {
                attached.take(budget).await
            })
            .await;
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
        let queue_name = queue.as_str();
        let acknowledged = &|delivery: &Delivery| {
            decode(queue_name, delivery).is_some_and(|event| event.id == acked)
        };
        let taken = self
            .attach_and_take(subscriber, budget, |attached| async move {
                attached
                    .take_with_cursor(
                        acknowledged,
                        |delivery| decode(queue_name, delivery),
                        budget,
                    )
                    .await
            })
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
        let poll = async {
            self.rabbit.make_room(subscriber).await?;
            self.wait_lingering(subscriber, budget).await
        };
        self.rabbit
            .presence_refreshes
            .answering(subscriber.user_id, poll)
            .await
    }

    async fn wait_with_cursor(
        &self,
        subscriber: &Subscriber,
        acked: &str,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        let poll = async {
            self.rabbit.make_room(subscriber).await?;
            self.wait_lingering_with_cursor(subscriber, acked, budget)
                .await
        };
        self.rabbit
            .presence_refreshes
            .answering(subscriber.user_id, poll)
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
        self.rabbit.mark_online(user, college, budget).await
    }

    async fn mark_offline(&self, user: UserId) -> Result<(), BrokerError> {
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
    async fn claim_shard(&self, record: &ShardRecord) -> Result<(), BrokerError> {
        self.rabbit.claim_shard(record).await
    }

    async fn close(&self) {
        self.rabbit.close().await;
    }
}
