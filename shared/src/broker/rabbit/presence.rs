//! Presence on RabbitMQ: a user is online while their presence queue exists (declared
//! by their polls with a TTL, deleted by disconnect); a lookup probes for those queues.
//!
//! A user polling without pause through one process re-declares the queue only every
//! tenth to fifth of its TTL ([`Refreshes`]), so a steady idle poll costs the broker its
//! consume and its cancel alone.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use lapin::{
    BasicProperties,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use tokio::time::Instant;
use tracing::warn;

use super::{
    RabbitBroker,
    codec::field_table,
    lanes::OwnLane,
    publish::{DEFAULT_EXCHANGE, Outgoing},
};
use crate::{
    broker::{BrokerError, Presence, RETRY_AFTER_SECS},
    budget::PollBudget,
    telemetry::Throttle,
    topology::{
        CollegeId, UserId, college_presence_key, presence_queue_arguments, presence_queue_name,
    },
};

/// Most users whose presence refresh a process remembers before it drops the ones
/// already due.
const MAX_REMEMBERED: usize = 100_000;

/// How soon after this process answered a user's poll their next one must come for the
/// presence declare to be skipped. A browser re-polls at once; a longer pause may be a
/// disconnect served by another process (a page reload), after which the queue must
/// be declared again.
const CHAIN_GAP: Duration = Duration::from_secs(3);

/// After a poll that failed, the client was told to wait `Retry-After` first: its retry
/// still continues the chain. Without this a reconnect herd's retries would each declare
/// their presence again, adding to the very load that failed them.
const RETRY_GAP: Duration = CHAIN_GAP.saturating_add(Duration::from_secs(RETRY_AFTER_SECS));

/// When this process last declared each user's presence queue, and by when the user's
/// next poll must come to continue their chain of polls. The declare is skipped while
/// both hold: declared within a tenth to a fifth of the TTL (at random, so users who
/// came together do not refresh together; the queue then lapses 80 to 100 % of the TTL
/// after the last poll), and the next poll within [`CHAIN_GAP`] of the previous answer
/// ([`RETRY_GAP`] after a failed one).
#[derive(Default)]
pub(super) struct Refreshes(Mutex<HashMap<UserId, Refresh>>);

struct Refresh {
    due: Instant,
    college: Option<CollegeId>,
    chain_until: Option<Instant>,
}

impl Refreshes {
    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, Refresh>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `user`'s presence (in `college`) needs no declare now.
    fn fresh(&self, user: UserId, college: Option<CollegeId>) -> bool {
        let now = Instant::now();
        self.lock().get(&user).is_some_and(|refresh| {
            refresh.due > now
                && refresh.college == college
                && refresh.chain_until.is_some_and(|until| now < until)
        })
    }

    fn declared(&self, user: UserId, college: Option<CollegeId>, ttl: Duration) {
        let mut refreshes = self.lock();
        let now = Instant::now();
        if refreshes.len() >= MAX_REMEMBERED {
            refreshes.retain(|_, refresh| refresh.due > now);
            // As for declared queues: rather forget all than scan on every insert.
            if refreshes.len() >= MAX_REMEMBERED * 3 / 4 {
                refreshes.clear();
            }
        }
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1_000) as f64 / 1_000.0;
        let chain_until = refreshes.get(&user).and_then(|r| r.chain_until);
        let due = now + ttl.mul_f64(0.1 + 0.1 * jitter);
        refreshes.insert(
            user,
            Refresh {
                due,
                college,
                chain_until,
            },
        );
    }

    /// Runs `poll`, a poll of `user`, and notes when it was answered and whether it
    /// failed, which is when the user's next poll must come to skip the declare. A poll
    /// dropped unfinished (its client went away) counts as answered.
    pub async fn answering<T>(
        &self,
        user: UserId,
        poll: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let mut answering = Answering {
            refreshes: self,
            user,
            failed: false,
        };
        let answer = poll.await;
        answering.failed = answer.is_err();
        answer
    }

    fn forget(&self, user: UserId) {
        self.lock().remove(&user);
    }
}

/// A poll in progress; see [`Refreshes::answering`].
struct Answering<'a> {
    refreshes: &'a Refreshes,
    user: UserId,
    failed: bool,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        let gap = if self.failed { RETRY_GAP } else { CHAIN_GAP };
        if let Some(refresh) = self.refreshes.lock().get_mut(&self.user) {
            refresh.chain_until = Some(Instant::now() + gap);
        }
    }
}

#[async_trait]
impl Presence for RabbitBroker {
    async fn mark_online(
        &self,
        user: UserId,
        college: Option<CollegeId>,
        budget: &PollBudget,
    ) -> Result<(), BrokerError> {
        if self.presence_refreshes.fresh(user, college) {
            return Ok(());
        }
        match self.declare_presence(user, college, budget).await {
            Ok(()) => {}
            // The presence queue is on a node that is down (a cluster's maintenance
            // window): the user reads as offline until it is back, and their events,
            // which do not depend on it, keep flowing. The declare comes again at the
            // next refresh, not at every poll, which would only add refusals to the
            // herd a node's restart already makes.
            Err(error @ BrokerError::QueueUnavailable { .. }) => {
                static AWAY: Throttle = Throttle::per_second();
                if let Some(suppressed) = AWAY.allow() {
                    warn!(%error, suppressed, "presence queue out of reach; polling on without it");
                }
            }
            Err(error) => return Err(error),
        }
        self.presence_refreshes
            .declared(user, college, self.presence_ttl);
        Ok(())
    }

    async fn mark_offline(&self, user: UserId) -> Result<(), BrokerError> {
        self.presence_refreshes.forget(user);
        let queue = presence_queue_name(user);
        let deadline = Instant::now() + self.connector.op_timeout;
        self.run_on("presence", deadline, |lane: OwnLane| {
            let queue = queue.clone();
            // Deleting a queue that does not exist is not an error in RabbitMQ.
            async move {
                lane.channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await?;
                lane.finished();
                Ok(())
            }
        })
        .await
    }

    async fn is_online(
        &self,
        users: &[UserId],
        within: Option<CollegeId>,
    ) -> Result<Vec<bool>, BrokerError> {
        if users.is_empty() {
            // Still connects: the local server's banner uses this to check the broker.
            let deadline = Instant::now() + self.connector.op_timeout;
            return self.connector.session(deadline).await.map(|_| Vec::new());
        }
        // A passive declare of a missing queue is answered with a channel close (404),
        // and lapin never frees the id of a channel the broker closed: 2,047 offline
        // users would use up the connection. Instead, one mandatory probe per user to
        // the default exchange, which routes by queue name: a probe that comes back
        // (`basic.return`) found no presence queue. The probes expire at once
        // (`expiration` 0), so presence queues stay empty, and publishing does not count
        // as using a queue, so it does not extend the presence TTL. One round trip for
        // the whole lookup, and no channel is ever closed by the broker. Scoped to a
        // college, the probes go to the presence exchange instead, where a member's
        // presence queue is bound under the college and user (see `mark_online`).
        let (exchange, key): (&str, &dyn Fn(UserId) -> String) = match within {
            None => (DEFAULT_EXCHANGE, &presence_queue_name),
            Some(college) => (self.connector.presence_exchange(), &move |user| {
                college_presence_key(college, user)
            }),
        };
        let ids: Vec<String> = (0..users.len())
            .map(|index| format!("presence-{index}"))
            .collect();
        let probes: Vec<Outgoing> = users
            .iter()
            .zip(&ids)
            .map(|(user, id)| Outgoing {
                routing_key: key(*user),
                id,
                body: b"",
                properties: BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_expiration("0".into()),
            })
            .collect();
        self.publish_mandatory("presence lookup", exchange, &probes)
            .await
    }
}

impl RabbitBroker {
    /// Declares `user`'s presence queue (and binds it under their college).
    async fn declare_presence(
        &self,
        user: UserId,
        college: Option<CollegeId>,
        budget: &PollBudget,
    ) -> Result<(), BrokerError> {
        let queue = presence_queue_name(user);
        let presence_exchange = self.connector.presence_exchange();
        // A poll's presence waits its turn within the poll's set-up (a herd of new users
        // queues here instead of failing).
        let deadline = budget.set_up_until();
        // On a channel of its own: a refused declare (a queue limit) closes it, and must
        // not end the polls held on a shared lane.
        self.run_on("presence", deadline, |lane: OwnLane| {
            let queue = queue.clone();
            async move {
                let options = QueueDeclareOptions {
                    durable: true,
                    auto_delete: true,
                    nowait: college.is_some(),
                    ..Default::default()
                };
                let arguments = field_table(presence_queue_arguments(self.presence_ttl));
                lane.channel
                    .queue_declare(queue.as_str().into(), options, arguments)
                    .await?;
                // A member of a college is also found by the college's lookups: the
                // binding's reply vouches for the declare before it.
                if let Some(college) = college {
                    lane.channel
                        .queue_bind(
                            queue.as_str().into(),
                            presence_exchange.into(),
                            college_presence_key(college, user).into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                }
                lane.finished();
                Ok(())
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(300);
    const USER: UserId = UserId(7);

    async fn poll(refreshes: &Refreshes, failed: bool) {
        let answer = if failed {
            Err(BrokerError::Timeout("poll set-up"))
        } else {
            Ok(())
        };
        let _ = refreshes.answering(USER, async { answer }).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_re_poll_without_pause_skips_the_declare_and_a_pause_does_not() {
        let refreshes = Refreshes::default();
        assert!(!refreshes.fresh(USER, None), "never declared");
        refreshes.declared(USER, None, TTL);
        assert!(!refreshes.fresh(USER, None), "no poll answered yet");
        poll(&refreshes, false).await;
        tokio::time::advance(CHAIN_GAP - Duration::from_millis(100)).await;
        assert!(refreshes.fresh(USER, None));
        assert!(
            !refreshes.fresh(USER, Some(CollegeId(1))),
            "another college"
        );
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!refreshes.fresh(USER, None), "a pause past the chain gap");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_a_failed_poll_continues_the_chain() {
        let refreshes = Refreshes::default();
        refreshes.declared(USER, None, TTL);
        poll(&refreshes, true).await;
        // The client waits Retry-After, then some jitter.
        tokio::time::advance(Duration::from_secs(RETRY_AFTER_SECS) + Duration::from_secs(2)).await;
        assert!(refreshes.fresh(USER, None));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!refreshes.fresh(USER, None));
    }

    #[tokio::test(start_paused = true)]
    async fn the_declare_comes_again_within_a_fifth_of_the_ttl() {
        let refreshes = Refreshes::default();
        refreshes.declared(USER, None, TTL);
        for _ in 0..30 {
            poll(&refreshes, false).await;
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        assert!(!refreshes.fresh(USER, None), "60 s = a fifth of the TTL");
    }
}
