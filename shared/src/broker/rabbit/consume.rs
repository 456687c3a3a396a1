//! A poll's consumer, up to the batch it takes: set up (declare unless recent, then
//! `basic.consume` on a shared lane, or a channel of its own for a quorum queue), the
//! wait for the first delivery, and the clean-up (cancel, collect what raced with it, top
//! the batch up with `basic.get`). `settle` then acks or gives back the batch, and `poll`
//! builds [`Poll`](crate::broker::Poll) from the two.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{
        BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
        BasicRejectOptions,
    },
    types::FieldTable,
};
use tokio::{
    sync::oneshot,
    time::{Instant, timeout_at},
};
use tracing::warn;

use super::{
    RabbitBroker,
    codec::decode,
    lanes::{Borrow, Channelled, Lane, OwnLane, PREFETCH, poison},
    runner::failed,
};
use crate::{
    broker::BrokerError,
    budget::{CLEAN_UP, PollBudget},
    event::Event,
    telemetry::Throttle,
    topology::{QueueType, Subscriber},
};

impl RabbitBroker {
    /// Starts a consumer on `queue`, already declared, that may hold up to `prefetch`
    /// unacknowledged deliveries.
    async fn start_consumer(
        &self,
        channel: &Channel,
        queue: &str,
        prefetch: u16,
    ) -> lapin::Result<lapin::Consumer> {
        // The consume runs in a task of its own: if this poll stops waiting for
        // consume-ok (its set-up timed out under load), the task still gets the consumer
        // and gives it back, so no consumer is left holding messages nobody reads.
        let (handover, handed) = oneshot::channel();
        let (channel, queue_name) = (channel.clone(), queue.to_owned());
        tokio::spawn(async move {
            // A per-consumer prefetch other than the channel's: sent first, its reply
            // awaited together with the consume's (one round trip, in order).
            let qos = async {
                if prefetch == PREFETCH {
                    return Ok(());
                }
                let per_consumer = BasicQosOptions { global: false };
                channel.basic_qos(prefetch, per_consumer).await
            };
            let consume = channel.basic_consume(
                queue_name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            );
            let (qos, consumer) = futures_lite::future::zip(qos, consume).await;
            let consumer = qos.and(consumer);
            if let Err(Ok(unwanted)) = handover.send(consumer) {
                release(channel, unwanted, Vec::new());
            }
        });
        handed.await.expect("the consume task always hands over")
    }

    /// A consumer on `queue` (declared and bound to `keys` unless this process just did),
    /// on a borrowed lane, within the set-up of `budget`.
    pub(super) async fn set_up_consumer<L: Borrow + Channelled>(
        &self,
        queue: &str,
        keys: &[String],
        prefetch: u16,
        budget: &PollBudget,
    ) -> Result<(L, lapin::Consumer), BrokerError> {
        let deadline = budget.set_up_until();
        if !self.declared.recently(queue, keys) {
            self.declare_subscriber_queue(queue, keys, deadline).await?;
            // Remembered at once: a poll whose consume then misses its hold (a herd)
            // retries without declaring again.
            self.declared.remember(queue, keys);
        }
        let consumer = self
            .run_on("poll set-up", deadline, |lane: L| async move {
                let consumer = self.start_consumer(lane.channel(), queue, prefetch).await?;
                Ok((lane, consumer))
            })
            .await;
        match &consumer {
            // A consume uses the queue, which restarts its `x-expires`: the queue stays
            // fresh for as long as the user keeps polling through this process.
            Ok(_) => self.declared.remember(queue, keys),
            // A consume refused or failed may mean the queue is gone: declare it next time.
            Err(BrokerError::Refused { .. } | BrokerError::Failed { .. }) => {
                self.declared.forget(queue)
            }
            Err(_) => {}
        }
        consumer
    }

    /// Waits on the subscriber's queue until a message arrives (or the hold of `budget`
    /// ends), then stops the consumer, collects the deliveries that raced with the stop
    /// and tops the batch up to `limit` with what else is queued, within the clean-up.
    /// Nothing is settled yet: the caller acks or requeues each delivery with
    /// [`Self::settle`](super::settle), within what is left of the clean-up.
    pub(super) async fn take(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
        limit: usize,
    ) -> Result<Taken, BrokerError> {
        let queue = subscriber.queue_name();
        let keys = subscriber.routing_keys();
        let mut deliveries = Vec::new();
        let mut consumer_ended = false;
        let (lane, mut consumer) = loop {
            let (lane, mut consumer) = match self.queue_type {
                QueueType::Classic => {
                    let (lane, consumer) = self
                        .set_up_consumer(&queue, &keys, PREFETCH, budget)
                        .await?;
                    (PollLane::Shared(lane), consumer)
                }
                // A quorum queue with a single active consumer refuses `basic.get`
                // (RESOURCE_LOCKED): the consumer's prefetch covers the whole batch
                // instead of topping it up afterwards.
                QueueType::Quorum => {
                    let prefetch = u16::try_from(limit).unwrap_or(u16::MAX);
                    let (lane, consumer) = self
                        .set_up_consumer(&queue, &keys, prefetch, budget)
                        .await?;
                    (PollLane::Own(lane), consumer)
                }
            };
            match budget.within_hold(consumer.next()).await {
                Some(Some(Ok(delivery))) => deliveries.push(delivery),
                // The channel or connection died mid-hold (on a cluster, with the node
                // it was on); the broker requeues what it had sent. Within the hold, the
                // poll sets up again, on a fresh connection through the broker's endpoint
                // to a live node, instead of answering 503: a node's restart then costs
                // its users a reconnect, not a failed poll.
                Some(Some(Err(error))) => {
                    self.declared.forget(&queue);
                    if budget.hold_over() {
                        return Err(failed("poll", error));
                    }
                    static LOST: Throttle = Throttle::per_second();
                    if let Some(suppressed) = LOST.allow() {
                        warn!(%error, suppressed, "a held poll lost its channel; setting up again");
                    }
                    continue;
                }
                // The broker cancelled the consumer (the queue was deleted).
                Some(None) => {
                    consumer_ended = true;
                    self.declared.forget(&queue);
                }
                None => {} // the hold is over
            }
            break (lane, consumer);
        };
        let collect = collect_rest(
            &lane,
            &mut consumer,
            consumer_ended,
            &queue,
            &mut deliveries,
            limit,
        );
        let clean_up_until = Instant::now() + CLEAN_UP;
        match timeout_at(clean_up_until, collect).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(failed("poll", error)),
            Err(_) => {
                // The poll answers 503; what it took goes back to the queue (a channel
                // of its own closes as the lane drops).
                if let PollLane::Shared(lane) = &lane {
                    release(lane.channel.clone(), consumer, deliveries);
                }
                return Err(BrokerError::Timeout("poll clean-up"));
            }
        }
        Ok(Taken {
            lane,
            queue,
            deliveries,
            clean_up_until,
            _consumer: consumer,
        })
    }
}

/// Most time a released consumer gets to stop and give its messages back before its
/// channel is closed instead (which also gives them back, but ends the lane's polls).
pub(super) const RELEASE_BUDGET: Duration = Duration::from_secs(30);

/// Gives back, in the background, a consumer that no poll will read: cancels it and
/// requeues what it delivered, with `deliveries` already taken from it. Closing the
/// shared lane would do the same but also end every other poll held on it, so that is
/// only the last resort, for a channel the broker no longer answers on.
pub(super) fn release(
    channel: Channel,
    mut consumer: lapin::Consumer,
    mut deliveries: Vec<Delivery>,
) {
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

/// The channel a poll's consumer runs on.
pub(super) enum PollLane {
    /// A classic queue: a shared lane. The consumer ends with a cancel, after which the
    /// queue sends nothing more, and what the poll keeps is requeued with rejects.
    Shared(Lane),
    /// A quorum queue: a channel of the poll's own, closed when it is answered. A quorum
    /// queue may still deliver to a consumer after its `cancel-ok` (the delivery was on
    /// its way from the Raft leader; seen on 3.10); lapin drops a delivery for a consumer
    /// it no longer knows, which leaves the event unacked on the channel, out of reach,
    /// and later redelivered out of order. A reject also puts an event back behind
    /// others that are returned later. Closing the channel gives back everything unacked
    /// at once, in queue order.
    Own(OwnLane),
}

impl PollLane {
    fn channel(&self) -> &Channel {
        match self {
            PollLane::Shared(lane) => lane.channel(),
            PollLane::Own(lane) => lane.channel(),
        }
    }
}

/// Deliveries taken from a queue and not yet settled, and the lane they came on (acks
/// must go back on the same channel).
pub(super) struct Taken {
    pub(super) lane: PollLane,
    queue: String,
    pub(super) deliveries: Vec<Delivery>,
    /// When the settlement must be done: the poll's clean-up started as the wait ended.
    pub(super) clean_up_until: Instant,
    /// Kept until the batch is settled. Dropping lapin's last handle on a consumer
    /// sends `basic.cancel` in the background; on a quorum poll's own channel that
    /// cancel raced with the channel's close and failed the close ("invalid channel
    /// state: Closing (basic.cancel)"), answering 503 about one run in three of
    /// tests/delivery.rs. Dropped after the close, it sends nothing.
    _consumer: lapin::Consumer,
}

impl Taken {
    pub(super) fn events(&self) -> impl Iterator<Item = Option<Event>> + '_ {
        self.deliveries
            .iter()
            .map(|delivery| decode(&self.queue, delivery))
    }
}

/// Stops the consumer, collects deliveries that raced with the stop and, if the
/// consumer's prefetch was used up, tops the batch up to `limit` from the queue. Below
/// the prefetch there is nothing to top up: the queue delivers each message to a
/// consumer with room as it enqueues it, so by `cancel-ok` the consumer has had all
/// that was queued before the cancel.
async fn collect_rest(
    lane: &PollLane,
    consumer: &mut lapin::Consumer,
    consumer_ended: bool,
    queue: &str,
    deliveries: &mut Vec<Delivery>,
    limit: usize,
) -> lapin::Result<()> {
    let channel = lane.channel();
    if let PollLane::Own(_) = lane {
        // A quorum queue's consumer is never cancelled (see [`PollLane::Own`]): one round
        // trip lets what the queue sent along with the first delivery arrive, and what is
        // here by then joins the batch. The rest goes back when the channel closes.
        if !consumer_ended {
            let unchanged = BasicQosOptions { global: false };
            channel.basic_qos(PREFETCH, unchanged).await?;
            while deliveries.len() < limit {
                match futures_lite::future::poll_once(consumer.next()).await {
                    Some(Some(delivery)) => deliveries.push(delivery?),
                    _ => break,
                }
            }
        }
    } else if !consumer_ended {
        channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await?;
        // Deliveries sent before cancel-ok are ours; the stream ends after them.
        while let Some(delivery) = consumer.next().await {
            deliveries.push(delivery?);
        }
    }
    // A quorum poll's consumer already took up to `limit` (and its queue would refuse a
    // `basic.get`); a classic one stopped at the lanes' prefetch.
    if matches!(lane, PollLane::Shared(_)) && deliveries.len() >= usize::from(PREFETCH) {
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
