//! The poll's side of a subscription: attached while the poll waits, taking from the
//! buffer (guide mode) or handing out and acknowledging (cursor mode).

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lapin::{Acker, message::Delivery, options::BasicAckOptions};
use tokio::time::Instant;

use super::{HandedOut, State, Subscription, Taken, failed};
use crate::{
    broker::BrokerError,
    budget::PollBudget,
    event::Event,
    topology::{MAX_BATCH, MAX_QUEUE_LENGTH, QUEUE_MESSAGE_TTL},
};

/// A poll attached to a subscription; detaches when dropped.
pub(in crate::broker::rabbit::linger) struct Attached(pub(super) Arc<Subscription>);

impl Drop for Attached {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.waiters -= 1;
        state.last_detached = Some(Instant::now());
    }
}

impl Attached {
    /// The buffered deliveries (up to a batch), acked, as soon as there are some;
    /// nothing once the `budget`'s hold is over.
    ///
    /// Two rules of the queue stop applying once the broker has delivered a message, so
    /// they are applied here, to keep the behaviour of one consumer per poll: a message
    /// past its time to live (a 10 s `typing` event) is dropped, and when the buffer is
    /// full (the prefetch of 100) the rest is fetched from the queue and only the newest
    /// 100 are kept, as `x-max-length` with `drop-head` would have.
    pub async fn take(&self, budget: &PollBudget) -> Result<Taken<Delivery>, BrokerError> {
        let subscription = &self.0;
        let mut first_look = true;
        loop {
            // Register for the wake-up before looking, so an arrival in between counts.
            let arrival = subscription.arrivals.notified();
            tokio::pin!(arrival);
            arrival.as_mut().enable();
            // Only what was confirmed before the poll came must be in its answer; once
            // woken by an arrival it answers at once, without a round trip.
            if std::mem::take(&mut first_look) {
                subscription.catch_up().await?;
            }
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
            let ackers: Vec<Acker> = batch
                .iter()
                .map(|(delivery, _)| delivery.acker.clone())
                .collect();
            let kept: Vec<Delivery> = batch
                .into_iter()
                .enumerate()
                .filter(|(index, (delivery, arrived))| {
                    *index >= overflow && !expired(delivery, *arrived, now)
                })
                .map(|(_, (delivery, _))| delivery)
                .collect();
            // The acks go out after the answer, off its path. If one fails, the channel
            // is gone and the broker requeues the rest: they come again under the same
            // ids, as when a failed ack left a batch half acked before.
            if !ackers.is_empty() {
                tokio::spawn(acknowledge(ackers));
            }
            if !kept.is_empty() {
                return Ok(Taken::Deliveries(kept));
            }
            if budget.within_hold(arrival).await.is_none() {
                return Ok(Taken::Deliveries(Vec::new()));
            }
        }
    }

    /// Cursor mode: acks the handed-out deliveries the client acknowledged (those
    /// shown to it, up to and including the last one `acknowledged` picks: the event
    /// the client names as the last it received), then answers with the handed-out
    /// deliveries and the buffer, oldest first, up to a batch, as events; with
    /// nothing, waits for an arrival until the `budget`'s hold is over. What it answers
    /// with stays handed out. Like [`Self::take`], it answers with what has reached the
    /// consumer.
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
        budget: &PollBudget,
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
        let mut first_look = true;
        loop {
            let arrival = subscription.arrivals.notified();
            tokio::pin!(arrival);
            arrival.as_mut().enable();
            // As in `take`: the catch-up is for the first look only.
            if std::mem::take(&mut first_look) {
                subscription.catch_up().await?;
            }
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
            if budget.within_hold(arrival).await.is_none() {
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

/// Acks a taken batch, one by one (the lane is shared: a `multiple` ack could take other
/// polls' deliveries with it), until the channel fails.
async fn acknowledge(ackers: Vec<Acker>) {
    for acker in ackers {
        if acker.ack(BasicAckOptions::default()).await.is_err() {
            break;
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
