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

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_lite::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicGetOptions, BasicQosOptions, BasicRejectOptions,
    },
};
use tokio::{
    sync::Notify,
    time::{Instant, timeout_at},
};

use super::session::{Lane, poison};
use crate::{
    broker::BrokerError,
    event::Event,
    topology::{MAX_BATCH, MAX_QUEUE_LENGTH, QUEUE_MESSAGE_TTL},
};

/// The lingering consumers of one process, by queue and routing keys.
pub(super) struct Subscriptions {
    pub linger: Duration,
    active: Mutex<HashMap<String, Arc<Subscription>>>,
}

/// One queue's consumer, shared by the polls on that queue.
pub(super) struct Subscription {
    state: Mutex<State>,
    /// The consumer's channel, for topping a full buffer up with `basic.get`.
    channel: lapin::Channel,
    /// The consumer (a handle to the one `run` feeds from), for [`Subscription::catch_up`].
    consumer: lapin::Consumer,
    queue: String,
    /// Woken when a delivery arrives or the consumer ends.
    arrivals: Notify,
    /// Woken when a poll subscribed to the same queue with other routing keys (the
    /// user's token changed college): this consumer then ends as soon as no poll uses
    /// it, instead of lingering, so it does not take the new subscription's events.
    retiring: Notify,
}

#[derive(Default)]
struct State {
    /// Cursor mode: deliveries moved out of the buffer for cursor polls and not yet
    /// acknowledged by the client, in delivery order. They come before `buffered`.
    handed_out: VecDeque<HandedOut>,
    /// Deliveries not yet taken by a poll, with when each arrived.
    buffered: VecDeque<(Delivery, SystemTime)>,
    /// Polls attached right now.
    waiters: usize,
    /// Superseded by a subscription to the same queue with other keys.
    retired: bool,
    last_detached: Option<Instant>,
    /// The consumer is gone: `Some(None)` cancelled (queue deleted or lingered out),
    /// `Some(Some(reason))` failed (channel or connection died).
    ended: Option<Option<String>>,
}

struct HandedOut {
    delivery: Delivery,
    arrived: SystemTime,
    /// Returned to a poll: only such a delivery can the client acknowledge. (One not
    /// yet shown can sort before a shown one: see `take_with_cursor`.)
    shown: bool,
}

/// What a poll attached to a subscription gets: deliveries (a guide-mode poll, which
/// owns them) or events (a cursor poll, whose deliveries stay handed out).
pub(super) enum Taken<T> {
    Deliveries(Vec<T>),
    /// The consumer ended without a failure (the queue was deleted): an empty answer.
    Ended,
}

impl Subscriptions {
    pub fn new(linger: Duration) -> Self {
        Self {
            linger,
            active: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Subscription>>> {
        self.active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The live subscription under `key`, attached (counted as a waiter) so that it
    /// cannot linger out while the poll uses it.
    pub fn attach(&self, key: &str) -> Option<Attached> {
        let subscription = self.lock().get(key)?.clone();
        subscription.attach().then_some(Attached(subscription))
    }

    /// Registers a new consumer on `queue` under `key` and attaches to it, unless
    /// another poll registered one first: then that one is used and `consumer` is given
    /// back.
    pub fn insert(
        self: &Arc<Self>,
        key: String,
        queue: &str,
        lane: Lane,
        consumer: lapin::Consumer,
    ) -> Option<Attached> {
        let mut active = self.lock();
        if let Some(existing) = active.get(&key).cloned() {
            drop(active);
            super::release(lane.channel.clone(), consumer, Vec::new());
            return existing.attach().then_some(Attached(existing));
        }
        let subscription = Arc::new(Subscription {
            state: Mutex::new(State::default()),
            channel: lane.channel.clone(),
            consumer: consumer.clone(),
            queue: queue.to_owned(),
            arrivals: Notify::new(),
            retiring: Notify::new(),
        });
        subscription.attach();
        active.insert(key.clone(), subscription.clone());
        drop(active);
        tokio::spawn(run(self.clone(), key, subscription.clone(), lane, consumer));
        Some(Attached(subscription))
    }

    /// Retires the other subscriptions of `queue` (under keys other than `key`).
    pub fn retire_others(&self, queue: &str, key: &str) {
        for (other, subscription) in self.lock().iter() {
            if subscription.queue == queue && other != key {
                subscription.state().retired = true;
                subscription.retiring.notify_one();
            }
        }
    }

    fn remove(&self, key: &str, subscription: &Arc<Subscription>) {
        let mut active = self.lock();
        if active
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, subscription))
        {
            active.remove(key);
        }
    }
}

impl Subscription {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes sure the buffer holds every delivery the broker sent before now, when it
    /// holds some but less than a batch (a full one has everything the prefetch lets
    /// through). A publish is confirmed on another channel, so a poll right after the
    /// confirm could otherwise answer with part of what reached the queue. The reply
    /// to a `basic.qos` (which changes nothing: the same per-consumer prefetch) comes
    /// on the consumer's channel after the deliveries sent before it; what the
    /// consumer has received by then is moved to the buffer here rather than left to
    /// the feeding task, in delivery-tag order.
    async fn catch_up(&self) -> Result<(), BrokerError> {
        let held = {
            let state = self.state();
            state.buffered.len() + state.handed_out.len()
        };
        if held == 0 || held >= MAX_BATCH {
            return Ok(());
        }
        self.channel
            .basic_qos(MAX_BATCH as u16, BasicQosOptions { global: false })
            .await
            .map_err(|error| failed(error.to_string()))?;
        let mut consumer = self.consumer.clone();
        let mut received = Vec::new();
        let mut failure = None;
        while let Some(Some(next)) = futures_lite::future::poll_once(consumer.next()).await {
            match next {
                Ok(delivery) => received.push((delivery, SystemTime::now())),
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            }
        }
        let mut state = self.state();
        state.buffered.extend(received);
        state
            .buffered
            .make_contiguous()
            .sort_by_key(|(delivery, _)| delivery.delivery_tag);
        match failure {
            // Taken from the feeding task's stream: the subscription ends here instead.
            Some(reason) => {
                state.ended = Some(Some(reason.clone()));
                drop(state);
                self.arrivals.notify_waiters();
                Err(failed(reason))
            }
            None => Ok(()),
        }
    }

    /// The rest of the queue, by `basic.get`: what a full buffer (the prefetch of 100
    /// delivered and unacked) leaves there.
    async fn fetch_rest(&self) -> Result<Vec<(Delivery, SystemTime)>, BrokerError> {
        let mut fetched = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions::default())
            .await
            .map_err(|error| failed(error.to_string()))?
        {
            fetched.push((message.delivery, SystemTime::now()));
        }
        Ok(fetched)
    }

    /// Counts a poll in; false once the consumer has ended.
    fn attach(&self) -> bool {
        let mut state = self.state();
        if state.ended.is_some() {
            return false;
        }
        state.waiters += 1;
        true
    }
}

/// A poll attached to a subscription; detaches when dropped.
pub(super) struct Attached(Arc<Subscription>);

impl Drop for Attached {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.waiters -= 1;
        state.last_detached = Some(Instant::now());
    }
}

impl Attached {
    /// The buffered deliveries (up to a batch), acked, as soon as there are some;
    /// nothing at `deadline`.
    ///
    /// Two rules of the queue stop applying once the broker has delivered a message, so
    /// they are applied here, to keep the behaviour of one consumer per poll: a message
    /// past its time to live (a 10 s `typing` event) is dropped, and when the buffer is
    /// full (the prefetch of 100) the rest is fetched from the queue and only the newest
    /// 100 are kept, as `x-max-length` with `drop-head` would have.
    pub async fn take(&self, deadline: Instant) -> Result<Taken<Delivery>, BrokerError> {
        let subscription = &self.0;
        loop {
            // Register for the wake-up before looking, so an arrival in between counts.
            let arrival = subscription.arrivals.notified();
            tokio::pin!(arrival);
            arrival.as_mut().enable();
            subscription.catch_up().await?;
            let (mut batch, full): (Vec<(Delivery, SystemTime)>, bool) = {
                let mut state = subscription.state();
                // A cursor poll's leftovers, if the queue is also polled the guide's way.
                let handed_out = std::mem::take(&mut state.handed_out);
                for held in handed_out.into_iter().rev() {
                    state.buffered.push_front((held.delivery, held.arrived));
                }
                let count = state.buffered.len().min(MAX_BATCH);
                if count == 0 {
                    match &state.ended {
                        Some(None) => return Ok(Taken::Ended),
                        Some(Some(reason)) => return Err(failed(reason.clone())),
                        None => {}
                    }
                }
                let full = state.buffered.len() >= MAX_BATCH;
                (state.buffered.drain(..count).collect(), full)
            };
            if full {
                batch.extend(subscription.fetch_rest().await?);
            }
            let now = SystemTime::now();
            let overflow = batch.len().saturating_sub(MAX_QUEUE_LENGTH);
            let mut kept = Vec::with_capacity(batch.len());
            // One ack each: the lane is shared (see `settle`). Once an ack fails the
            // channel is gone: the broker requeues the rest, but the acks before it may
            // have removed theirs, so the poll still answers with the whole batch (what
            // was requeued comes again under the same ids) rather than lose them.
            let mut acking = true;
            for (index, (delivery, arrived)) in batch.into_iter().enumerate() {
                if acking {
                    acking = delivery.acker.ack(BasicAckOptions::default()).await.is_ok();
                }
                if index >= overflow && !expired(&delivery, arrived, now) {
                    kept.push(delivery);
                }
            }
            if !kept.is_empty() {
                return Ok(Taken::Deliveries(kept));
            }
            if timeout_at(deadline, arrival).await.is_err() {
                return Ok(Taken::Deliveries(Vec::new()));
            }
        }
    }

    /// Cursor mode: acks the handed-out deliveries the client acknowledged (those
    /// shown to it, up to and including the last one `acknowledged` picks: the event
    /// the client names as the last it received), then answers with the handed-out
    /// deliveries and the buffer, oldest first, up to a batch, as events; with
    /// nothing, waits for an arrival until `deadline`. What it answers with stays
    /// handed out. Like [`Self::take`], it answers with what has reached the consumer.
    ///
    /// The queue's rules apply here too, as in [`Self::take`]: expired messages are
    /// dropped, and a full subscription (the prefetch of 100 delivered and unacked)
    /// fetches the rest of the queue with `basic.get` and keeps the newest 100. Those
    /// fetches can overtake deliveries still on their way to the consumer (an ack frees
    /// room in the prefetch), so the handed-out deliveries are kept in delivery-tag
    /// order (the channel numbers consumer deliveries and fetches in one sequence, in
    /// the queue's order), and only those shown can be acknowledged.
    pub async fn take_with_cursor(
        &self,
        acknowledged: impl Fn(&Delivery) -> bool,
        decode: impl Fn(&Delivery) -> Option<Event>,
        deadline: Instant,
    ) -> Result<Taken<Event>, BrokerError> {
        let subscription = &self.0;
        let acked: Vec<Delivery> = {
            let mut state = subscription.state();
            let through = state
                .handed_out
                .iter()
                .rposition(|held| held.shown && acknowledged(&held.delivery));
            match through {
                Some(through) => {
                    let (seen, rest): (VecDeque<_>, VecDeque<_>) = state
                        .handed_out
                        .drain(..)
                        .enumerate()
                        .partition(|(index, held)| *index <= through && held.shown);
                    state.handed_out = rest.into_iter().map(|(_, held)| held).collect();
                    seen.into_iter().map(|(_, held)| held.delivery).collect()
                }
                None => Vec::new(),
            }
        };
        remove(acked).await?;
        loop {
            let arrival = subscription.arrivals.notified();
            tokio::pin!(arrival);
            arrival.as_mut().enable();
            subscription.catch_up().await?;
            let full = {
                let mut state = subscription.state();
                if state.handed_out.is_empty() && state.buffered.is_empty() {
                    match &state.ended {
                        Some(None) => return Ok(Taken::Ended),
                        Some(Some(reason)) => return Err(failed(reason.clone())),
                        None => {}
                    }
                }
                let buffered = std::mem::take(&mut state.buffered);
                state.hand_out(buffered);
                state.handed_out.len() >= MAX_BATCH
            };
            let fetched = if full {
                subscription.fetch_rest().await?
            } else {
                Vec::new()
            };
            let (dropped, events) = {
                let mut state = subscription.state();
                state.hand_out(fetched);
                let now = SystemTime::now();
                let overflow = state.handed_out.len().saturating_sub(MAX_QUEUE_LENGTH);
                let mut dropped = Vec::new();
                let mut events = Vec::new();
                let handed_out = std::mem::take(&mut state.handed_out);
                for (index, mut held) in handed_out.into_iter().enumerate() {
                    let event = (index >= overflow && !expired(&held.delivery, held.arrived, now))
                        .then(|| decode(&held.delivery))
                        .flatten();
                    match event {
                        Some(event) => {
                            if events.len() < MAX_BATCH {
                                events.push(event);
                                held.shown = true;
                            }
                            state.handed_out.push_back(held);
                        }
                        // Dropped by the queue's rules, or not an event: left handed
                        // out it would come back on every poll.
                        None => dropped.push(held.delivery),
                    }
                }
                (dropped, events)
            };
            remove(dropped).await?;
            if !events.is_empty() {
                return Ok(Taken::Deliveries(events));
            }
            if timeout_at(deadline, arrival).await.is_err() {
                return Ok(Taken::Deliveries(Vec::new()));
            }
        }
    }
}

impl State {
    /// Adds `deliveries` to the handed-out ones, not shown yet, in delivery order.
    fn hand_out(&mut self, deliveries: impl IntoIterator<Item = (Delivery, SystemTime)>) {
        let before = self.handed_out.len();
        self.handed_out
            .extend(deliveries.into_iter().map(|(delivery, arrived)| HandedOut {
                delivery,
                arrived,
                shown: false,
            }));
        if self.handed_out.len() > before {
            self.handed_out
                .make_contiguous()
                .sort_by_key(|held| held.delivery.delivery_tag);
        }
    }
}

/// Acks `deliveries`, one by one (the lane is shared, see `settle`).
async fn remove(deliveries: Vec<Delivery>) -> Result<(), BrokerError> {
    for delivery in deliveries {
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|error| failed(error.to_string()))?;
    }
    Ok(())
}

fn failed(reason: String) -> BrokerError {
    BrokerError::Failed {
        operation: "poll",
        reason,
    }
}

/// Whether a delivered message has outlived its time to live: its own `expiration`, or
/// the queue's `x-message-ttl`, counted from when it was published: the earlier of when
/// it arrived here and the end of the second its `timestamp` (whole seconds) names.
fn expired(delivery: &Delivery, arrived: SystemTime, now: SystemTime) -> bool {
    let properties = &delivery.properties;
    let ttl = properties
        .expiration()
        .as_ref()
        .and_then(|ms| ms.as_str().parse::<u64>().ok())
        .map_or(QUEUE_MESSAGE_TTL, Duration::from_millis)
        .min(QUEUE_MESSAGE_TTL);
    let published = properties
        .timestamp()
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs + 1))
        .map_or(arrived, |published| published.min(arrived));
    now.duration_since(published).is_ok_and(|age| age >= ttl)
}

/// Feeds the subscription from its consumer until the consumer ends or lingers out.
async fn run(
    subscriptions: Arc<Subscriptions>,
    key: String,
    subscription: Arc<Subscription>,
    lane: Lane,
    mut consumer: lapin::Consumer,
) {
    let linger = subscriptions.linger;
    let ended = loop {
        let idle_check = tokio::time::sleep(linger / 2);
        let retiring = subscription.retiring.notified();
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    subscription.state().buffered.push_back((delivery, SystemTime::now()));
                    subscription.arrivals.notify_waiters();
                }
                Some(Err(error)) => break Some(error.to_string()),
                None => break None,
            },
            () = async { tokio::select! { () = idle_check => {}, () = retiring => {} } } => {
                let idle = {
                    let mut state = subscription.state();
                    let idle = state.waiters == 0
                        && (state.retired
                            || state.last_detached.is_some_and(|at| at.elapsed() >= linger));
                    if idle {
                        // From here no poll can attach.
                        state.ended = Some(None);
                    }
                    idle
                };
                if idle {
                    subscriptions.remove(&key, &subscription);
                    give_back(&lane, consumer, &subscription).await;
                    return;
                }
            }
        }
    };
    subscriptions.remove(&key, &subscription);
    {
        let mut state = subscription.state();
        state.ended = Some(ended);
        // The broker requeues a dead channel's unacked deliveries itself; for a consumer
        // the broker cancelled (queue deleted) they are gone with the queue.
        state.buffered.clear();
        state.handed_out.clear();
    }
    subscription.arrivals.notify_waiters();
}

/// Cancels a lingered-out consumer and requeues what it buffered, in order.
async fn give_back(lane: &Lane, mut consumer: lapin::Consumer, subscription: &Subscription) {
    let channel = lane.channel.clone();
    let done = async {
        channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await?;
        while let Some(delivery) = consumer.next().await {
            subscription
                .state()
                .buffered
                .push_back((delivery?, SystemTime::now()));
        }
        // Handed out first: they are the oldest.
        let buffered: Vec<_> = {
            let mut state = subscription.state();
            let buffered = std::mem::take(&mut state.buffered);
            let handed_out = state.handed_out.drain(..);
            handed_out
                .map(|held| (held.delivery, held.arrived))
                .chain(buffered)
                .collect()
        };
        for (delivery, _) in buffered {
            let requeue = BasicRejectOptions { requeue: true };
            delivery.acker.reject(requeue).await?;
        }
        lapin::Result::Ok(())
    };
    if !matches!(
        tokio::time::timeout(super::RELEASE_BUDGET, done).await,
        Ok(Ok(()))
    ) {
        poison(channel);
    }
}
