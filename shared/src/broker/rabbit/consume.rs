//! A poll's consumer: set up (declare unless recent, then `basic.consume` on a shared
//! lane), the wait for the first delivery, the clean-up (cancel, collect what raced with
//! it, top the batch up with `basic.get`), and the settlement (acks, or requeues in
//! cursor mode). [`Poll`] for the RabbitMQ broker is built from these.

use std::time::Duration;

use async_trait::async_trait;
use futures_lite::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
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
    runner::failed,
    session::{Borrow, Channelled, Lane, OwnLane, PREFETCH, REPLY_SUCCESS, poison},
};
use crate::{
    broker::{BrokerError, Poll},
    budget::{CLEAN_UP, PollBudget},
    event::Event,
    telemetry::Throttle,
    topology::{MAX_BATCH, MAX_QUEUE_LENGTH, QueueType, Subscriber},
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
    /// [`Self::settle`], within what is left of the clean-up.
    async fn take(
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

    /// Acks (removes) each delivery of `taken` for which `remove` says so and requeues
    /// the others, which go back to their places at the head of the queue.
    async fn settle(
        &self,
        taken: &Taken,
        remove: impl Fn(usize) -> bool,
    ) -> Result<(), BrokerError> {
        let lane = match &taken.lane {
            PollLane::Shared(lane) => lane,
            PollLane::Own(lane) => {
                // A quorum queue: ack what goes, then close the channel, which gives back
                // the rest (and any delivery that came after we stopped reading) in queue
                // order. Neither a cancel nor rejects, see [`PollLane::Own`].
                let settle = async {
                    let mut acked = false;
                    for (index, delivery) in taken.deliveries.iter().enumerate() {
                        if remove(index) {
                            delivery.acker.ack(BasicAckOptions::default()).await?;
                            acked = true;
                        }
                    }
                    // Acks have no reply, and a close right behind them gave acked
                    // events back to the queue now and then (a later poll saw them
                    // again; tests/conformance.rs, 3.10). A `basic.qos` that changes
                    // nothing is answered only after the acks before it.
                    if acked {
                        let unchanged = BasicQosOptions { global: false };
                        lane.channel.basic_qos(PREFETCH, unchanged).await?;
                    }
                    lane.channel
                        .close(REPLY_SUCCESS, "poll answered".into())
                        .await
                };
                return match timeout_at(taken.clean_up_until, settle).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(failed("poll", error)),
                    // The lane closes its channel as it drops.
                    Err(_) => Err(BrokerError::Timeout("poll clean-up")),
                };
            }
        };
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
                lane.channel.basic_qos(PREFETCH, unchanged).await?;
            }
            Ok(())
        };
        match timeout_at(taken.clean_up_until, settle).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(failed("poll", error)),
            Err(_) => {
                // Closing the channel requeues whatever is still unacked.
                poison(lane.channel.clone());
                Err(BrokerError::Timeout("poll clean-up"))
            }
        }
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
enum PollLane {
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
struct Taken {
    lane: PollLane,
    queue: String,
    deliveries: Vec<Delivery>,
    /// When the settlement must be done: the poll's clean-up started as the wait ended.
    clean_up_until: Instant,
    /// Kept until the batch is settled. Dropping lapin's last handle on a consumer
    /// sends `basic.cancel` in the background; on a quorum poll's own channel that
    /// cancel raced with the channel's close and failed the close ("invalid channel
    /// state: Closing (basic.cancel)"), answering 503 about one run in three of
    /// tests/delivery.rs. Dropped after the close, it sends nothing.
    _consumer: lapin::Consumer,
}

impl Taken {
    fn events(&self) -> impl Iterator<Item = Option<Event>> + '_ {
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

#[async_trait]
impl Poll for RabbitBroker {
    async fn wait_for_events(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        let poll = self.poll_events(subscriber, budget);
        self.presence_refreshes
            .answering(subscriber.user_id, poll)
            .await
    }

    async fn wait_with_cursor(
        &self,
        subscriber: &Subscriber,
        acked: &str,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        let poll = self.poll_after_cursor(subscriber, acked, budget);
        self.presence_refreshes
            .answering(subscriber.user_id, poll)
            .await
    }
}

impl RabbitBroker {
    /// A guide-mode poll: a consumer for the hold, then the batch acked.
    async fn poll_events(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        self.make_room(subscriber).await?;
        let taken = self.take(subscriber, budget, MAX_BATCH).await?;
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

    /// A cursor-mode poll: the acknowledged prefix removed, the rest answered and kept.
    async fn poll_after_cursor(
        &self,
        subscriber: &Subscriber,
        acked: &str,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        self.make_room(subscriber).await?;
        let mut acked = Some(acked);
        loop {
            // The whole queue (it keeps at most 100) plus what arrives while we read it.
            let taken = self
                .take(subscriber, budget, MAX_QUEUE_LENGTH + MAX_BATCH)
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
            if !kept.is_empty() || budget.hold_over() {
                return Ok(kept.into_iter().take(MAX_BATCH).collect());
            }
        }
    }
}
