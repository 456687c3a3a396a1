//! The in-memory broker: RabbitMQ's semantics for this project's topology, in process.
//!
//! Same rules as the real thing, so the conformance suite passes on both: queues are
//! created by a poll and bound to `user.<id>` and `college.<id>`; a publish goes to every
//! bound queue (none bound: not routed); a queue keeps at most 100 events and drops the
//! oldest; events expire after their type's TTL; a queue unused for 30 minutes
//! disappears with its bindings; presence lasts the presence TTL after the last poll.
//! A waiting poll sleeps on a [`Notify`] that publishing wakes: push, not polling.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use tokio::{sync::Notify, time::Instant};

use super::{Broker, BrokerError, Poll, Presence, Publication, Publish, Receipt, devices::Devices};
use crate::{
    budget::PollBudget,
    config::DEFAULT_MAX_DEVICES_PER_USER,
    event::{Event, epoch_seconds},
    shard::ShardRecord,
    topology::{
        CollegeId, MAX_BATCH, MAX_QUEUE_LENGTH, QUEUE_MESSAGE_TTL, Subscriber, USER_QUEUE_EXPIRES,
        UserId,
    },
};

/// How often expired queues and presence entries are swept away, so memory stays
/// bounded even for users who never come back.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The in-memory [`Broker`].
pub struct MemoryBroker {
    presence_ttl: Duration,
    /// The cap on each user's device queues.
    devices: Devices,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    /// Routing key → names of the queues bound to it (the topic exchange).
    bindings: HashMap<String, BTreeSet<String>>,
    /// User → when their presence lapses, and their college.
    presence: HashMap<UserId, (Instant, Option<CollegeId>)>,
    last_sweep: Option<Instant>,
    /// The shard record claimed first, as RabbitMQ keeps it (see [`Broker::claim_shard`]).
    shard_record: Option<String>,
}

struct Queue {
    messages: VecDeque<Stored>,
    /// Routing keys bound to this queue, to unbind it when it expires.
    keys: BTreeSet<String>,
    /// Polls waiting on the queue; a queue with consumers never expires.
    consumers: usize,
    last_used: Instant,
    /// Woken by every publish to this queue.
    arrivals: Arc<Notify>,
}

struct Stored {
    event: Event,
    expires_at: Instant,
}

impl Queue {
    fn new(now: Instant) -> Self {
        Self {
            messages: VecDeque::new(),
            keys: BTreeSet::new(),
            consumers: 0,
            last_used: now,
            arrivals: Arc::new(Notify::new()),
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.consumers == 0 && now.duration_since(self.last_used) >= USER_QUEUE_EXPIRES
    }

    /// Removes and returns up to a batch of live events, oldest first.
    fn take_batch(&mut self, now: Instant) -> Vec<Event> {
        self.drop_expired(now);
        let count = self.messages.len().min(MAX_BATCH);
        self.messages
            .drain(..count)
            .map(|stored| stored.event)
            .collect()
    }

    /// Cursor mode: removes the events up to and including the first with id `acked`
    /// (nothing if none has it), then returns up to a batch of the rest, leaving them
    /// queued.
    fn ack_and_peek(&mut self, acked: Option<&str>, now: Instant) -> Vec<Event> {
        self.drop_expired(now);
        if let Some(position) = acked.and_then(|acked| {
            self.messages
                .iter()
                .position(|stored| stored.event.id == acked)
        }) {
            self.messages.drain(..=position);
        }
        self.messages
            .iter()
            .take(MAX_BATCH)
            .map(|stored| stored.event.clone())
            .collect()
    }

    fn drop_expired(&mut self, now: Instant) {
        self.messages.retain(|stored| stored.expires_at > now);
    }
}

impl State {
    /// Drops expired queues (and their bindings) and lapsed presence, at most once per
    /// [`SWEEP_INTERVAL`].
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|last| now.duration_since(last) < SWEEP_INTERVAL)
        {
            return;
        }
        self.last_sweep = Some(now);
        let expired: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, queue)| queue.expired(now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            self.delete_queue(&name);
        }
        self.presence.retain(|_, (lapses, _)| *lapses > now);
    }

    fn delete_queue(&mut self, name: &str) {
        if let Some(queue) = self.queues.remove(name) {
            queue.arrivals.notify_waiters();
            for key in queue.keys {
                if let Some(bound) = self.bindings.get_mut(&key) {
                    bound.remove(name);
                    if bound.is_empty() {
                        self.bindings.remove(&key);
                    }
                }
            }
        }
    }

    /// Declares the subscriber's queue (recreating it if it expired) and binds it to
    /// exactly the subscriber's routing keys.
    fn declare(&mut self, subscriber: &Subscriber, now: Instant) -> &mut Queue {
        let name = subscriber.queue_name();
        if self
            .queues
            .get(&name)
            .is_some_and(|queue| queue.expired(now))
        {
            self.delete_queue(&name);
        }
        let keys = subscriber.routing_keys();
        // Bindings the token no longer names go (it moved to another college).
        if let Some(queue) = self.queues.get_mut(&name) {
            let stale: Vec<String> = queue
                .keys
                .iter()
                .filter(|key| !keys.contains(key))
                .cloned()
                .collect();
            for key in stale {
                queue.keys.remove(&key);
                if let Some(bound) = self.bindings.get_mut(&key) {
                    bound.remove(&name);
                    if bound.is_empty() {
                        self.bindings.remove(&key);
                    }
                }
            }
        }
        for key in keys {
            self.bindings
                .entry(key.clone())
                .or_default()
                .insert(name.clone());
            self.queues
                .entry(name.clone())
                .or_insert_with(|| Queue::new(now))
                .keys
                .insert(key);
        }
        let queue = self.queues.get_mut(&name).expect("declared above");
        queue.last_used = now;
        queue
    }
}

impl MemoryBroker {
    /// An empty broker whose presence entries last `presence_ttl`.
    pub fn new(presence_ttl: Duration) -> Self {
        Self {
            presence_ttl,
            devices: Devices::new(DEFAULT_MAX_DEVICES_PER_USER),
            state: Mutex::new(State::default()),
        }
    }

    /// Keeps at most `max` device queues per user (see [`super::devices`]).
    pub fn with_max_devices_per_user(mut self, max: usize) -> Self {
        self.devices = Devices::new(max);
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than refusing every later request would.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MemoryBroker {
    /// Declares the subscriber's queue and, counted as its consumer, looks at it with
    /// `look` until that finds events (at once, or each time a publish wakes us) or the
    /// deadline passes.
    async fn wait_until(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
        mut look: impl FnMut(&mut Queue, Instant) -> Vec<Event>,
    ) -> Result<Vec<Event>, BrokerError> {
        let name = subscriber.queue_name();
        let evicted = self.devices.admit(subscriber);
        let arrivals = {
            let mut state = self.state();
            if let Some(evicted) = evicted {
                // A poll waiting on it ends with nothing, as RabbitMQ cancels consumers
                // of a deleted queue.
                state.delete_queue(&evicted.queue_name());
            }
            state.sweep(Instant::now());
            let queue = state.declare(subscriber, Instant::now());
            queue.consumers += 1;
            queue.arrivals.clone()
        };
        let _consumer = ConsumerGuard {
            broker: self,
            queue: name.clone(),
        };
        loop {
            // Register for the wake-up before looking, so a publish between the look
            // and the wait is not missed.
            let arrival = arrivals.notified();
            tokio::pin!(arrival);
            arrival.as_mut().enable();
            let batch = {
                let mut state = self.state();
                // A queue with consumers never expires, but one past the device cap is
                // deleted.
                let Some(queue) = state.queues.get_mut(&name) else {
                    return Ok(Vec::new());
                };
                look(queue, Instant::now())
            };
            if !batch.is_empty() {
                return Ok(batch);
            }
            if budget.within_hold(arrival).await.is_none() {
                return Ok(Vec::new());
            }
        }
    }
}

/// Counts a waiting poll as a consumer for as long as it waits, however it ends.
struct ConsumerGuard<'a> {
    broker: &'a MemoryBroker,
    queue: String,
}

impl Drop for ConsumerGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.broker.state();
        if let Some(queue) = state.queues.get_mut(&self.queue) {
            // Saturating: the queue may be a new one of the same name (the old one was
            // deleted past the device cap while this poll waited on it).
            queue.consumers = queue.consumers.saturating_sub(1);
            queue.last_used = Instant::now();
        }
    }
}

#[async_trait]
impl Publish for MemoryBroker {
    async fn publish(&self, batch: &[Publication]) -> Result<Vec<Receipt>, BrokerError> {
        let now = Instant::now();
        let mut state = self.state();
        state.sweep(now);
        let mut receipts = Vec::with_capacity(batch.len());
        for publication in batch {
            let outgoing = &publication.event;
            let bound: Vec<String> = state
                .bindings
                .get(&publication.audience.routing_key())
                .map(|queues| queues.iter().cloned().collect())
                .unwrap_or_default();
            let mut routed = false;
            for name in bound {
                let Some(queue) = state
                    .queues
                    .get_mut(&name)
                    .filter(|queue| !queue.expired(now))
                else {
                    continue;
                };
                let timestamp = epoch_seconds(outgoing.published_at).trunc() as u64;
                let mut event =
                    Event::from_message(&outgoing.body, Some(&outgoing.id), Some(timestamp))
                        .expect("an OutgoingEvent body is always an event");
                // The publish time to the millisecond, as RabbitMQ carries it in a header.
                event.timestamp = Some(epoch_seconds(outgoing.published_at));
                let ttl = outgoing.event_type.ttl().min(QUEUE_MESSAGE_TTL);
                if queue.messages.len() >= MAX_QUEUE_LENGTH {
                    queue.messages.pop_front(); // x-overflow: drop-head
                }
                queue.messages.push_back(Stored {
                    event,
                    expires_at: now + ttl,
                });
                queue.arrivals.notify_waiters();
                routed = true;
            }
            receipts.push(Receipt::new(outgoing.id.clone(), routed));
        }
        Ok(receipts)
    }
}

#[async_trait]
impl Poll for MemoryBroker {
    async fn wait_for_events(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        self.wait_until(subscriber, budget, |queue, now| queue.take_batch(now))
            .await
    }

    async fn wait_with_cursor(
        &self,
        subscriber: &Subscriber,
        acked: &str,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        // The acknowledged prefix goes on the first look only.
        let mut acked = Some(acked);
        self.wait_until(subscriber, budget, |queue, now| {
            queue.ack_and_peek(acked.take(), now)
        })
        .await
    }
}

#[async_trait]
impl Presence for MemoryBroker {
    async fn mark_online(
        &self,
        user: UserId,
        college: Option<CollegeId>,
        _budget: &PollBudget,
    ) -> Result<(), BrokerError> {
        let now = Instant::now();
        let lapses = now + self.presence_ttl;
        self.state().presence.insert(user, (lapses, college));
        Ok(())
    }

    async fn mark_offline(&self, user: UserId) -> Result<(), BrokerError> {
        self.state().presence.remove(&user);
        Ok(())
    }

    async fn is_online(
        &self,
        users: &[UserId],
        within: Option<CollegeId>,
    ) -> Result<Vec<bool>, BrokerError> {
        let now = Instant::now();
        let state = self.state();
        Ok(users
            .iter()
            .map(|user| {
                state.presence.get(user).is_some_and(|(lapses, college)| {
                    *lapses > now && (within.is_none() || *college == within)
                })
            })
            .collect())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn claim_shard(&self, record: &ShardRecord) -> Result<(), BrokerError> {
        let claimed = record.as_argument();
        let mut state = self.state();
        match &state.shard_record {
            Some(current) if *current != claimed => Err(BrokerError::Refused {
                operation: "shard record",
                reason: format!(
                    "inequivalent arg 'alternate-exchange': received '{claimed}' but current is '{current}'"
                ),
            }),
            Some(_) => Ok(()),
            None => {
                state.shard_record = Some(claimed);
                Ok(())
            }
        }
    }
}
