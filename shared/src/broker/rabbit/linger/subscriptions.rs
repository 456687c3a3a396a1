//! The lingering consumers of one process: one per queue and routing keys, fed by a
//! task of its own, buffering what arrives between polls.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures_lite::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicGetOptions, BasicQosOptions, BasicRejectOptions},
};
use tokio::{sync::Notify, time::Instant};

use crate::broker::rabbit::{
    consume::{RELEASE_BUDGET, release},
    lanes::{Lane, poison},
};
use crate::{broker::BrokerError, topology::MAX_BATCH};

mod attached;

pub(super) use self::attached::Attached;

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
            release(lane.channel.clone(), consumer, Vec::new());
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

fn failed(reason: String) -> BrokerError {
    BrokerError::Failed {
        operation: "poll",
        reason,
    }
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
    if !matches!(tokio::time::timeout(RELEASE_BUDGET, done).await, Ok(Ok(()))) {
        poison(channel);
    }
}
