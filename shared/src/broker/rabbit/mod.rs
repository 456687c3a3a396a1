//! The RabbitMQ broker (lapin).
//!
//! One AMQP connection per process, opened on first use and shared by every
//! invocation; its channels are lanes that operations borrow (`lanes`). A
//! connection that died (broker restart, a thawed Lambda whose heartbeats lapsed) is
//! replaced on the next operation, which is retried once on the fresh connection.
//!
//! A poll is a consumer, not a sleep-and-check loop: `basic.consume` with a prefetch of
//! 100 and manual acks; the first delivery ends the wait, `basic.cancel` stops the flow
//! (deliveries that raced with it arrive before `cancel-ok` and are kept), `basic.get`
//! tops the batch up with what else is queued, and each returned message is acked.
//! If anything fails before the acks, the broker requeues the unacked messages when
//! the channel closes: a failed poll loses nothing.
//!
//! Layout, one job per file:
//! - [`session`]: the connection, opened on demand and replaced when it dies;
//! - `lanes`: its channels: shared lanes, and channels of an operation's own;
//! - `runner`: every operation runs through [`RabbitBroker::run_on`] (a turn, a bounded
//!   wait, one retry on a fresh connection) and lapin's errors become [`BrokerError`]s;
//! - `declare`: a subscriber's queue, its bindings and binding record, the device cap;
//! - `consume`: a poll's consumer, from set-up to the batch it takes;
//! - `settle`: a taken batch acked or given back, in queue order;
//! - `poll`: [`crate::broker::Poll`], the guide's mode and cursor mode, from the two;
//! - `publish`: mandatory, confirmed publishing ([`crate::broker::Publish`]);
//! - `presence`: presence queues and lookups ([`crate::broker::Presence`]);
//! - `record`: the shard record a broker keeps of itself, when users are spread over
//!   several brokers;
//! - `tail`: a live copy of some routing keys' events, for debugging;
//! - `codec`: deliveries as events, queue arguments as field tables;
//! - `linger`: [`LingeringBroker`], which wraps this broker for a long-running server.

mod codec;
mod consume;
mod declare;
mod lanes;
mod linger;
mod poll;
mod presence;
mod publish;
mod record;
mod runner;
mod session;
mod settle;
mod tail;

use std::time::Duration;

use async_trait::async_trait;

pub use self::{codec::user_queue_table, linger::LingeringBroker, tail::Tail};
use self::{declare::Declared, presence::Refreshes, runner::Turns, session::Connector};
use super::{Broker, BrokerError, devices::Devices};
use crate::{config::Config, shard::ShardRecord, topology::QueueType};

/// RabbitMQ behind the [`Broker`] traits: one consumer per poll, the shape Lambda needs.
pub struct RabbitBroker {
    connector: Connector,
    presence_ttl: Duration,
    /// Whose presence this process declared lately, so their next polls skip it.
    presence_refreshes: Refreshes,
    /// The queues this process declared lately, so a user's next polls skip the declare.
    declared: Declared,
    /// Bounds the operations in flight on the connection (held polls are not counted
    /// once set up), one queue of turns per stage of a poll's set-up and one for the
    /// rest (publishes, lookups). Each queue is first come, first served, so under a
    /// herd a poll through presence goes on to its declare at once instead of waiting
    /// behind every other newcomer's presence: set-ups finish in the order they came, at
    /// the rate the broker sustains, and a publish never waits behind a herd.
    turns: Turns,
    /// The cap on each user's device queues.
    devices: Devices,
    /// Classic or quorum user queues (see [`QueueType`]).
    queue_type: QueueType,
}

impl RabbitBroker {
    /// A broker for `config`. Connects lazily, on the first operation, so a function
    /// starts (and answers 503) even while the broker is down.
    pub fn new(config: &Config) -> Self {
        Self {
            connector: Connector::new(config),
            presence_ttl: config.presence_ttl,
            presence_refreshes: Refreshes::default(),
            declared: Declared::default(),
            turns: Turns::default(),
            devices: Devices::new(config.max_devices_per_user),
            queue_type: config.queue_type,
        }
    }

    fn exchange(&self) -> &str {
        &self.connector.exchange
    }
}

#[async_trait]
impl Broker for RabbitBroker {
    async fn claim_shard(&self, record: &ShardRecord) -> Result<(), BrokerError> {
        self.record_shard(record).await
    }

    async fn close(&self) {
        self.connector.close().await;
    }
}
