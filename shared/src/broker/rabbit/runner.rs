//! The retry runner: every broker operation goes through [`RabbitBroker::run_on`], which
//! borrows a lane, waits its turn, bounds the wait and retries once on a fresh
//! connection; and the mapping of lapin's errors to [`BrokerError`].

use std::future::Future;

use lapin::protocol::AMQPErrorKind;
use tokio::{
    sync::Semaphore,
    time::{Instant, timeout_at},
};
use tracing::warn;

use super::{RabbitBroker, lanes::Borrow};
use crate::{broker::BrokerError, metrics, telemetry::Throttle};

/// Most broker operations of one stage in flight at once per process. Enough to keep
/// the broker busy; more only lengthens every answer until they all time out together.
const MAX_OPERATIONS_IN_FLIGHT: usize = 64;

impl RabbitBroker {
    /// Runs `operation` on a borrowed channel (a shared [`Lane`](super::lanes::Lane) or an
    /// [`super::lanes::OwnLane`], as `operation` takes), within one round-trip timeout
    /// and the caller's deadline; on failure tries once more (on a fresh connection if the
    /// old one died).
    pub(super) async fn run_on<L, T, F, Fut>(
        &self,
        name: &'static str,
        deadline: Instant,
        operation: F,
    ) -> Result<T, BrokerError>
    where
        L: Borrow,
        F: Fn(L) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        let started = Instant::now();
        let mut attempts_left = 2;
        loop {
            attempts_left -= 1;
            let session = match self.connector.session(deadline).await {
                Ok(session) => session,
                Err(error) => {
                    metrics::broker_failure(name, error.cause(), self.connector.shard);
                    return Err(error);
                }
            };
            // Wait for a turn before talking to the broker: a burst of polls queues here
            // instead of flooding it, where every answer would slow down together.
            let Ok(turn) = timeout_at(deadline, self.turns.of(name).acquire()).await else {
                let error = BrokerError::Timeout(name);
                metrics::broker_failure(name, error.cause(), self.connector.shard);
                return Err(error);
            };
            let _turn = turn.expect("the semaphore is never closed");
            // One round trip's time, when this is the only operation on the connection:
            // no answer then means a dead socket (a frozen Lambda thawed), worth a retry
            // on a fresh connection. Under load a slow answer says nothing about the
            // connection (heartbeats watch it), so the operation may take until its
            // deadline: a herd's set-ups wait for the broker within their polls' hold
            // instead of failing at the first slow step.
            let alone = session.load() == 0;
            let step_deadline = if alone {
                deadline.min(Instant::now() + self.connector.op_timeout)
            } else {
                deadline
            };
            let error = match timeout_at(step_deadline, session.borrow::<L>()).await {
                Err(_) => BrokerError::Timeout(name),
                Ok(Err(error)) => failed(name, error),
                Ok(Ok(lane)) => {
                    match timeout_at(step_deadline, operation(lane)).await {
                        Ok(Ok(value)) => {
                            metrics::broker_operation(name, started.elapsed());
                            return Ok(value);
                        }
                        Ok(Err(error)) => failed(name, error),
                        Err(_) => {
                            // Abandoned midway. A late reply is harmless (a consume
                            // gives its consumer back by itself, see start_consumer);
                            // closing the lane would end every poll held on it.
                            // Alone yet no answer: the socket is likely half-open.
                            if alone && step_deadline < deadline && session.load() == 0 {
                                self.connector.discard(&session).await;
                            }
                            BrokerError::Timeout(name)
                        }
                    }
                }
            };
            // Either way the broker closed the channel, and retrying at once would meet
            // the same answer.
            let refused = matches!(
                error,
                BrokerError::Refused { .. } | BrokerError::QueueUnavailable { .. }
            );
            if refused {
                session.note_refusal();
            }
            if refused || attempts_left == 0 || Instant::now() >= deadline {
                metrics::broker_failure(name, error.cause(), self.connector.shard);
                return Err(error);
            }
            static RETRYING: Throttle = Throttle::per_second();
            if let Some(suppressed) = RETRYING.allow() {
                warn!(operation = name, %error, suppressed, "broker operation failed; retrying");
            }
        }
    }
}

/// How RabbitMQ's 404 ends when a queue exists on a node that is down: "home node
/// 'rabbit@b-2' of durable queue 'q' in vhost '/' is down or inaccessible".
pub(super) const HOME_NODE_DOWN: &str = "is down or inaccessible";

/// How RabbitMQ's 404 for a queue that does not exist begins: "NOT_FOUND - no queue
/// 'q' in vhost '/'" (3.x and 4.x alike).
const NO_QUEUE: &str = "NOT_FOUND - no queue";

/// Whether `error` is the broker saying a queue does not exist (as opposed to one whose
/// node is down, a [`BrokerError::QueueUnavailable`]).
pub(super) fn is_missing_queue(error: &BrokerError) -> bool {
    matches!(error, BrokerError::Refused { reason, .. } if reason.contains(NO_QUEUE))
}

/// The queues of turns of [`RabbitBroker::turns`].
pub(super) struct Turns {
    presence: Semaphore,
    declare: Semaphore,
    consume: Semaphore,
    other: Semaphore,
}

impl Default for Turns {
    fn default() -> Self {
        let turns = || Semaphore::new(MAX_OPERATIONS_IN_FLIGHT);
        Self {
            presence: turns(),
            declare: turns(),
            consume: turns(),
            other: turns(),
        }
    }
}

impl Turns {
    /// The queue an operation named `name` waits in.
    fn of(&self, name: &str) -> &Semaphore {
        match name {
            "presence" => &self.presence,
            "queue declare" => &self.declare,
            "poll set-up" => &self.consume,
            _ => &self.other,
        }
    }
}

pub(super) fn failed(operation: &'static str, error: lapin::Error) -> BrokerError {
    let reason = error.to_string();
    match error.kind() {
        // A classic queue whose node is down (RabbitMQ 3.x and 4.x word it alike): not a
        // limit an operator must raise, a node that is coming back.
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(_))
                && amqp.get_message().as_str().contains(HOME_NODE_DOWN) =>
        {
            BrokerError::QueueUnavailable { operation, reason }
        }
        // A soft error is the broker closing one channel over one request it refused
        // (403, 404, 405, 406); the connection and its other channels carry on.
        lapin::ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)) => {
            BrokerError::Refused { operation, reason }
        }
        _ => BrokerError::Failed { operation, reason },
    }
}
