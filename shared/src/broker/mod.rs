//! Where events wait: the capabilities the handlers use ([`Publish`], [`Poll`],
//! [`Presence`]; [`Broker`] is all three), and their implementations.
//!
//! - [`RabbitBroker`] talks AMQP 0-9-1 to RabbitMQ (or Amazon MQ) through lapin, one
//!   consumer per poll (Lambda's shape); [`LingeringBroker`] wraps it for a
//!   long-running server, keeping each user's consumer between polls.
//! - [`MemoryBroker`] keeps the same queues in process, with the same rules, for the
//!   zero-setup local run and fast handler tests.
//!
//! - [`ShardedBroker`] spreads users over several brokers (`AMQP_URLS`), each of them
//!   one of the above.
//!
//! [`check`] is the operator's probe of a broker (`longpoll check-rabbitmq`).
//!
//! Both pass one conformance suite (`tests/conformance.rs`), so a handler cannot tell
//! them apart except by speed.

pub mod check;
mod devices;
mod memory;
mod rabbit;
mod sharded;

pub use memory::MemoryBroker;
pub use rabbit::{LingeringBroker, RabbitBroker, Tail, user_queue_table};
pub use sharded::{ShardedBroker, StaleShard, open};

use async_trait::async_trait;

use crate::{
    budget::PollBudget,
    event::{Event, OutgoingEvent},
    shard::ShardRecord,
    topology::{Audience, CollegeId, Subscriber, UserId},
};

/// Seconds a client should wait before retrying when the broker is unavailable: what
/// the 503's `Retry-After` says, and what presence refreshes allow for.
pub const RETRY_AFTER_SECS: u64 = 2;
/// Seconds a client should wait after the broker refused its request: a limit that was
/// reached is not lifted in two seconds.
pub const REFUSED_RETRY_AFTER_SECS: u64 = 30;

/// The broker could not do what was asked. Handlers answer 503 with `Retry-After`:
/// every variant is worth retrying once the broker is back (or, for a refusal, once an
/// operator has raised the limit that was reached).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach the broker: {0}")]
    Unreachable(String),
    #[error("the broker did not answer {0} in time")]
    Timeout(&'static str),
    /// The broker answered, and said no to this request alone (a vhost queue limit, a
    /// queue whose arguments differ, a permission): retrying at once would not help,
    /// and nothing else on the connection is affected.
    #[error("the broker refused {operation}: {reason}")]
    Refused {
        operation: &'static str,
        reason: String,
    },
    /// The queue exists but is out of reach: its node is down (a cluster node restarting
    /// for maintenance, RabbitMQ's 404 "home node ... is down or inaccessible"), or the
    /// broker took an event for it and then said it could not keep it. Worth a retry
    /// within seconds, once the node is back or the client has moved to a live one.
    #[error("the broker cannot reach a queue for {operation}: {reason}")]
    QueueUnavailable {
        operation: &'static str,
        reason: String,
    },
    #[error("the broker failed during {operation}: {reason}")]
    Failed {
        operation: &'static str,
        reason: String,
    },
}

impl BrokerError {
    /// The failure's kind, as the metrics label it (`cause`).
    pub fn cause(&self) -> &'static str {
        match self {
            BrokerError::Unreachable(_) => "unreachable",
            BrokerError::Timeout(_) => "timeout",
            BrokerError::Refused { .. } => "refused",
            BrokerError::QueueUnavailable { .. } => "queue_unavailable",
            BrokerError::Failed { .. } => "failed",
        }
    }
}

/// One event for one audience.
#[derive(Debug, Clone)]
pub struct Publication {
    pub audience: Audience,
    pub event: OutgoingEvent,
}

/// What became of a published event; serializes as the publish endpoint's reply item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Receipt {
    pub id: String,
    /// False when no queue took the event: nobody of that audience is polling.
    pub routed: bool,
    /// With users on several brokers: the brokers (numbered as `AMQP_URLS` lists them) a
    /// college event did not reach because they were down; their members did not get
    /// it. Empty, and left out of the answer, otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreached_shards: Vec<usize>,
}

impl Receipt {
    /// The receipt of an event that reached every broker it was sent to.
    pub fn new(id: String, routed: bool) -> Self {
        Self {
            id,
            routed,
            unreached_shards: Vec::new(),
        }
    }
}

/// Publishing: what the publish endpoint needs.
#[async_trait]
pub trait Publish: Send + Sync + 'static {
    /// Publishes each event persistently and returns once the broker has confirmed all
    /// of them, in order.
    async fn publish(&self, batch: &[Publication]) -> Result<Vec<Receipt>, BrokerError>;
}

/// Waiting for a subscriber's events: what the poll endpoint needs besides presence.
#[async_trait]
pub trait Poll: Send + Sync + 'static {
    /// Makes sure the subscriber's queue exists and is bound, then returns the events
    /// waiting in it (at once, up to [`crate::topology::MAX_BATCH`], oldest first), or
    /// waits for the first one to arrive and returns it with whatever else is there by
    /// then, or returns nothing when the hold of `budget` ends. Returned events are
    /// removed.
    async fn wait_for_events(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError>;

    /// Cursor mode (`?ack=`): first removes the queued events up to and including the
    /// one whose id is `acked`, the last event the client received (nothing when no
    /// queued event has that id, e.g. on the first poll, where it is empty); then
    /// answers as [`Poll::wait_for_events`] does, except that the returned events
    /// stay queued, in order, until a later poll acknowledges them. A response that is
    /// lost therefore costs nothing: the next poll names an older id and gets the same
    /// events again. All the state is in the queue, so consecutive polls may be served
    /// by different processes.
    async fn wait_with_cursor(
        &self,
        subscriber: &Subscriber,
        acked: &str,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError>;
}

/// Who is online: the poll endpoint marks, disconnect unmarks, the lookup asks.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Marks the user, a member of `college` if their token names one, online for the
    /// presence TTL from now: the first step of a poll's set-up. Under load it waits
    /// its turn for the broker until the set-up of `budget` must end.
    async fn mark_online(
        &self,
        user: UserId,
        college: Option<CollegeId>,
        budget: &PollBudget,
    ) -> Result<(), BrokerError>;

    /// Marks the user offline at once.
    async fn mark_offline(&self, user: UserId) -> Result<(), BrokerError>;

    /// Whether each user is online (polled within the presence TTL, not disconnected
    /// since), in the order given. With `within`, only that college's members can be:
    /// a caller who belongs to a college sees the presence of its members alone.
    /// With no users it still reaches the broker: a health check.
    async fn is_online(
        &self,
        users: &[UserId],
        within: Option<CollegeId>,
    ) -> Result<Vec<bool>, BrokerError>;
}

/// A whole broker: every capability, and the connection behind them.
#[async_trait]
pub trait Broker: Publish + Poll + Presence {
    /// Makes sure this broker serves the part of the slot table `record` names: records
    /// it if the broker holds no record yet, and refuses ([`BrokerError::Refused`],
    /// naming both records) if it holds another. A deployment that lists several
    /// brokers checks each before using it (see [`ShardedBroker`]).
    async fn claim_shard(&self, record: &ShardRecord) -> Result<(), BrokerError>;

    /// Releases the broker connection (graceful shutdown of a long-running server).
    async fn close(&self) {}
}
