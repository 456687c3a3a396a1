//! [`ShardedBroker`]: users spread over several brokers (`AMQP_URLS`), each operation
//! sent to the broker the slot table places its user on.
//!
//! Each shard is a whole [`Broker`] of its own (one connection, today's caps), so a
//! shard that is down fails only its own users' operations: their polls, presence and
//! publishes answer 503, everyone else's go on. A college's events go to every shard,
//! since its members are spread over all of them.
//!
//! Before a process uses a shard it checks the shard's record on that broker
//! ([`Broker::claim_shard`]): a broker that records another place in another table (a
//! stale deploy, `AMQP_URLS` reordered, two URLs that reach one broker) is refused, so no
//! event is ever published to a broker its user does not poll.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;
use tokio::sync::OnceCell;
use tracing::{error, warn};

use super::{Broker, BrokerError, Poll, Presence, Publication, Publish, Receipt};
use crate::{
    budget::PollBudget,
    config::Config,
    event::Event,
    shard::{SHARD_RECORD_EXCHANGE, ShardRecord, SlotTable},
    topology::{Audience, CollegeId, Subscriber, UserId},
};

/// Several brokers behind the [`Broker`] traits, users placed by a [`SlotTable`].
pub struct ShardedBroker {
    shards: Vec<Shard>,
    table: SlotTable,
}

struct Shard {
    broker: Arc<dyn Broker>,
    /// What this broker must record about itself.
    record: ShardRecord,
    /// Set once the broker has confirmed the record; until then every operation on the
    /// shard checks it first (one round trip per process and shard).
    claimed: OnceCell<()>,
}

/// A broker that records another place in the slot table than this process gives it.
#[derive(Debug, thiserror::Error)]
#[error("broker {broker} of AMQP_URLS is refused: {reason}")]
pub struct StaleShard {
    pub broker: usize,
    pub reason: String,
}

/// The broker a process runs on: `each(config)` for a single broker, or a
/// [`ShardedBroker`] of `each(config.shard(i))` for every broker `AMQP_URLS` lists,
/// whose records are checked before it is handed out ([`ShardedBroker::verify`]).
pub async fn open(
    config: &Config,
    each: impl Fn(&Config) -> Arc<dyn Broker>,
) -> Result<Arc<dyn Broker>, StaleShard> {
    if !config.sharded() {
        return Ok(each(config));
    }
    let brokers = (0..config.amqp_urls.len())
        .map(|index| each(&config.shard(index)))
        .collect();
    let sharded = ShardedBroker::new(brokers, config.slots.clone());
    sharded.verify().await?;
    Ok(Arc::new(sharded))
}

impl ShardedBroker {
    /// `brokers` in shard order (as `AMQP_URLS` lists them), placed by `table`.
    ///
    /// Panics unless there is one broker per broker of the table: the configuration
    /// checks that before any broker is built.
    pub fn new(brokers: Vec<Arc<dyn Broker>>, table: SlotTable) -> Self {
        assert_eq!(brokers.len(), table.brokers(), "one broker per table entry");
        let shards = brokers
            .into_iter()
            .enumerate()
            .map(|(index, broker)| Shard {
                broker,
                record: ShardRecord::of(&table, index),
                claimed: OnceCell::new(),
            })
            .collect();
        Self { shards, table }
    }

    /// The slot table users are placed by.
    pub fn table(&self) -> &SlotTable {
        &self.table
    }

    /// Checks every shard's record at start, concurrently: a broker with another record
    /// is an error (the process should not start); a broker out of reach is checked on
    /// its first operation instead, so a process starts while one shard is down.
    pub async fn verify(&self) -> Result<(), StaleShard> {
        let checks =
            (0..self.shards.len()).map(|index| async move { (index, self.ready(index).await) });
        for (index, result) in join_all(checks).await {
            match result {
                Ok(()) => {}
                Err(BrokerError::Refused { reason, .. }) => {
                    return Err(StaleShard {
                        broker: index,
                        reason,
                    });
                }
                Err(cause) => {
                    warn!(shard = index, %cause, "shard out of reach at start; checked on first use")
                }
            }
        }
        Ok(())
    }

    /// The shard of `user`, its record checked.
    async fn of_user(&self, user: UserId) -> Result<&dyn Broker, BrokerError> {
        let index = self.table.broker_of(user);
        self.ready(index).await?;
        Ok(self.shards[index].broker.as_ref())
    }

    /// Checks shard `index`'s record on its broker, once.
    async fn ready(&self, index: usize) -> Result<(), BrokerError> {
        let shard = &self.shards[index];
        shard
            .claimed
            .get_or_try_init(|| async {
                shard
                    .broker
                    .claim_shard(&shard.record)
                    .await
                    .map_err(|cause| match cause {
                        BrokerError::Refused { reason, .. } => {
                            let reason = stale_reason(&shard.record, &reason);
                            error!(shard = index, %reason, "refusing a broker");
                            BrokerError::Refused {
                                operation: "shard record",
                                reason,
                            }
                        }
                        other => other,
                    })
            })
            .await
            .map(|_| ())
    }

    /// `publish` on shard `index`, its record checked.
    async fn publish_on(
        &self,
        index: usize,
        batch: Vec<Publication>,
    ) -> Result<Vec<Receipt>, BrokerError> {
        self.ready(index).await?;
        self.shards[index].broker.publish(&batch).await
    }
}

/// Why a broker that refused `expected` is refused in turn. RabbitMQ's 406 "received
/// '…' but current is '…'" means the broker holds another record (what usually causes
/// that is said); any other refusal (a 403: the broker user may not declare the record)
/// means the record cannot be checked, and says so.
fn stale_reason(expected: &ShardRecord, refusal: &str) -> String {
    let held = refusal
        .split_once("current is '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(held, _)| held);
    match held {
        Some(held) => format!(
            "it records itself as {held}, and this process's AMQP_URLS and AMQP_SLOTS make it {}: \
             they differ from the deployment that first used it (a stale deploy, a reordered list, \
             or two URLs that reach one broker)",
            expected.as_argument()
        ),
        None => format!(
            "its shard record cannot be checked ({refusal}): the broker user needs configure \
             and read on the exchange {SHARD_RECORD_EXCHANGE} and write on {SHARD_RECORD_EXCHANGE}.*"
        ),
    }
}

#[async_trait]
impl Publish for ShardedBroker {
    /// A user's event goes to their shard, a college's to every shard. A user's shard
    /// that fails fails the request (503: the caller retries with the same ids, which
    /// clients de-duplicate); a college's event is `routed` if any shard took it, and
    /// names the shards it did not reach, unless it reached none (503).
    async fn publish(&self, batch: &[Publication]) -> Result<Vec<Receipt>, BrokerError> {
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (position, publication) in batch.iter().enumerate() {
            match publication.audience {
                Audience::User(user) => parts[self.table.broker_of(user)].push(position),
                Audience::College(_) => parts.iter_mut().for_each(|part| part.push(position)),
            }
        }
        let sends = parts
            .iter()
            .enumerate()
            .filter(|(_, part)| !part.is_empty())
            .map(|(index, part)| {
                let sub_batch = part
                    .iter()
                    .map(|position| batch[*position].clone())
                    .collect();
                async move { (index, part, self.publish_on(index, sub_batch).await) }
            });
        let mut receipts: Vec<Receipt> = batch
            .iter()
            .map(|publication| Receipt::new(publication.event.id.clone(), false))
            .collect();
        let mut reached = vec![false; batch.len()];
        // A failure that fails the request (a user's shard), and any failure.
        let (mut users_failure, mut failure) = (None, None);
        for (index, part, result) in join_all(sends).await {
            match result {
                Ok(shard_receipts) => {
                    for (position, receipt) in part.iter().zip(shard_receipts) {
                        receipts[*position].routed |= receipt.routed;
                        reached[*position] = true;
                    }
                }
                Err(cause) => {
                    let mut users_failed = false;
                    for position in part {
                        match batch[*position].audience {
                            Audience::User(_) => users_failed = true,
                            Audience::College(_) => {
                                receipts[*position].unreached_shards.push(index)
                            }
                        }
                    }
                    match users_failed {
                        true => users_failure.get_or_insert(cause),
                        false => failure.get_or_insert(cause),
                    };
                }
            }
        }
        if let Some(cause) = users_failure {
            return Err(cause);
        }
        match failure {
            // A college event that no shard took.
            Some(cause) if reached.contains(&false) => Err(cause),
            _ => Ok(receipts),
        }
    }
}

#[async_trait]
impl Poll for ShardedBroker {
    async fn wait_for_events(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        self.of_user(subscriber.user_id)
            .await?
            .wait_for_events(subscriber, budget)
            .await
    }

    async fn wait_with_cursor(
        &self,
        subscriber: &Subscriber,
        acked: &str,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        self.of_user(subscriber.user_id)
            .await?
            .wait_with_cursor(subscriber, acked, budget)
            .await
    }
}

#[async_trait]
impl Presence for ShardedBroker {
    async fn mark_online(
        &self,
        user: UserId,
        college: Option<CollegeId>,
        budget: &PollBudget,
    ) -> Result<(), BrokerError> {
        self.of_user(user)
            .await?
            .mark_online(user, college, budget)
            .await
    }

    async fn mark_offline(&self, user: UserId) -> Result<(), BrokerError> {
        self.of_user(user).await?.mark_offline(user).await
    }

    /// Asks each shard about its own users, concurrently, and answers in the order
    /// given; with no users, asks every shard (a health check of all of them).
    async fn is_online(
        &self,
        users: &[UserId],
        within: Option<CollegeId>,
    ) -> Result<Vec<bool>, BrokerError> {
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (position, user) in users.iter().enumerate() {
            parts[self.table.broker_of(*user)].push(position);
        }
        let asks = parts
            .iter()
            .enumerate()
            .filter(|(_, part)| users.is_empty() || !part.is_empty())
            .map(|(index, part)| async move {
                let asked: Vec<UserId> = part.iter().map(|position| users[*position]).collect();
                self.ready(index).await?;
                let answers = self.shards[index].broker.is_online(&asked, within).await?;
                Ok::<_, BrokerError>((part, answers))
            });
        let mut online = vec![false; users.len()];
        for result in join_all(asks).await {
            let (part, answers) = result?;
            for (position, answer) in part.iter().zip(answers) {
                online[*position] = answer;
            }
        }
        Ok(online)
    }
}

#[async_trait]
impl Broker for ShardedBroker {
    /// A sharded broker is never itself a shard of another.
    async fn claim_shard(&self, record: &ShardRecord) -> Result<(), BrokerError> {
        Err(BrokerError::Refused {
            operation: "shard record",
            reason: format!(
                "{} would nest one sharded deployment in another",
                record.as_argument()
            ),
        })
    }

    async fn close(&self) {
        join_all(self.shards.iter().map(|shard| shard.broker.close())).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{broker::MemoryBroker, event::EventBody, topology::Subscriber};

    /// A shard whose broker is down: every operation fails as an unreachable broker does.
    struct Down;

    fn unreachable<T>() -> Result<T, BrokerError> {
        Err(BrokerError::Unreachable("connection refused".to_owned()))
    }

    #[async_trait]
    impl Publish for Down {
        async fn publish(&self, _: &[Publication]) -> Result<Vec<Receipt>, BrokerError> {
            unreachable()
        }
    }

    #[async_trait]
    impl Poll for Down {
        async fn wait_for_events(
            &self,
            _: &Subscriber,
            _: &PollBudget,
        ) -> Result<Vec<Event>, BrokerError> {
            unreachable()
        }
        async fn wait_with_cursor(
            &self,
            _: &Subscriber,
            _: &str,
            _: &PollBudget,
        ) -> Result<Vec<Event>, BrokerError> {
            unreachable()
        }
    }

    #[async_trait]
    impl Presence for Down {
        async fn mark_online(
            &self,
            _: UserId,
            _: Option<CollegeId>,
            _: &PollBudget,
        ) -> Result<(), BrokerError> {
            unreachable()
        }
        async fn mark_offline(&self, _: UserId) -> Result<(), BrokerError> {
            unreachable()
        }
        async fn is_online(
            &self,
            _: &[UserId],
            _: Option<CollegeId>,
        ) -> Result<Vec<bool>, BrokerError> {
            unreachable()
        }
    }

    #[async_trait]
    impl Broker for Down {
        async fn claim_shard(&self, _: &ShardRecord) -> Result<(), BrokerError> {
            unreachable()
        }
    }

    fn memory() -> Arc<MemoryBroker> {
        Arc::new(MemoryBroker::new(Duration::from_secs(60)))
    }

    /// The first user id, counting from 1, that `table` places on `broker`.
    fn user_on(table: &SlotTable, broker: usize) -> UserId {
        (1..)
            .map(UserId)
            .find(|user| table.broker_of(*user) == broker)
            .unwrap()
    }

    fn notice(audience: Audience) -> Publication {
        let body: EventBody = serde_json::from_str(
            r#"{"event": "notification", "data": {"title": "Notice", "message": "Exams"}}"#,
        )
        .unwrap();
        Publication {
            audience,
            event: body.prepare(),
        }
    }

    /// `user`'s own queue, as a member of `college`.
    fn member(user: UserId, college: CollegeId) -> Subscriber {
        Subscriber {
            user_id: user,
            college_id: Some(college),
            device: None,
        }
    }

    fn budget() -> PollBudget {
        PollBudget::new(Duration::from_millis(50), None)
    }

    #[tokio::test]
    async fn each_user_polls_and_is_published_to_on_their_shard() {
        let table = SlotTable::even(2).unwrap();
        let shards = [memory(), memory()];
        let sharded = ShardedBroker::new(
            shards
                .iter()
                .map(|shard| shard.clone() as Arc<dyn Broker>)
                .collect(),
            table.clone(),
        );
        let college = CollegeId(9);
        for broker in 0..2 {
            let user = user_on(&table, broker);
            let subscriber = member(user, college);
            assert!(
                sharded
                    .wait_for_events(&subscriber, &budget())
                    .await
                    .unwrap()
                    .is_empty()
            );
            sharded
                .mark_online(user, Some(college), &budget())
                .await
                .unwrap();
            assert_eq!(
                shards[broker].is_online(&[user], None).await.unwrap(),
                [true],
                "presence on the user's shard"
            );
            assert_eq!(
                shards[1 - broker].is_online(&[user], None).await.unwrap(),
                [false]
            );
            let receipts = sharded
                .publish(&[notice(Audience::User(user))])
                .await
                .unwrap();
            assert!(receipts[0].routed);
            assert_eq!(
                sharded
                    .wait_for_events(&subscriber, &budget())
                    .await
                    .unwrap()
                    .len(),
                1
            );
        }
        let (first, second) = (user_on(&table, 0), user_on(&table, 1));
        assert_eq!(
            sharded
                .is_online(&[second, UserId(u64::MAX), first], None)
                .await
                .unwrap(),
            [true, false, true],
            "one answer, in the order asked"
        );
        let receipts = sharded
            .publish(&[notice(Audience::College(college))])
            .await
            .unwrap();
        assert_eq!(receipts[0], Receipt::new(receipts[0].id.clone(), true));
        for user in [first, second] {
            let subscriber = member(user, college);
            assert_eq!(
                sharded
                    .wait_for_events(&subscriber, &budget())
                    .await
                    .unwrap()
                    .len(),
                1
            );
        }
    }

    #[tokio::test]
    async fn a_shard_down_fails_its_users_alone_and_college_events_say_where_they_missed() {
        let table = SlotTable::even(3).unwrap();
        let sharded = ShardedBroker::new(vec![memory(), Arc::new(Down), memory()], table.clone());
        let (up, down) = (user_on(&table, 0), user_on(&table, 1));
        let college = CollegeId(3);
        sharded
            .mark_online(up, Some(college), &budget())
            .await
            .unwrap();
        let subscriber = member(up, college);
        sharded
            .wait_for_events(&subscriber, &budget())
            .await
            .unwrap();
        assert!(matches!(
            sharded.mark_online(down, None, &budget()).await,
            Err(BrokerError::Unreachable(_))
        ));
        assert!(
            sharded
                .publish(&[notice(Audience::User(down))])
                .await
                .is_err(),
            "never routed: false"
        );
        assert!(
            sharded
                .publish(&[notice(Audience::User(up)), notice(Audience::User(down))])
                .await
                .is_err(),
            "a batch with a down user's event fails whole, to be retried with the same ids"
        );
        let receipts = sharded
            .publish(&[notice(Audience::College(college))])
            .await
            .unwrap();
        assert!(receipts[0].routed);
        assert_eq!(receipts[0].unreached_shards, [1]);
        assert_eq!(
            serde_json::to_value(&receipts[0]).unwrap()["unreached_shards"],
            serde_json::json!([1])
        );
        assert!(sharded.is_online(&[up], None).await.unwrap()[0]);
        assert!(sharded.is_online(&[up, down], None).await.is_err());
        assert!(
            sharded.is_online(&[], None).await.is_err(),
            "the health check asks every shard"
        );
    }

    #[tokio::test]
    async fn a_broker_with_another_record_is_refused() {
        let first = memory();
        let table = SlotTable::even(2).unwrap();
        let deployed = ShardedBroker::new(vec![first.clone(), memory()], table.clone());
        deployed.verify().await.unwrap();
        // A later deploy that lists the same brokers the other way round.
        let stale = ShardedBroker::new(vec![memory(), first.clone()], table);
        let error = stale.verify().await.unwrap_err();
        assert_eq!(error.broker, 1);
        assert!(error.to_string().contains("broker-1-of-2"), "{error}");
        assert!(error.to_string().contains("broker-0-of-2"), "{error}");
        let user = user_on(stale.table(), 1);
        assert!(matches!(
            stale.mark_offline(user).await,
            Err(BrokerError::Refused { .. })
        ));
        // Nor may a table with another split use it.
        let other = SlotTable::parse("0-99:0,100-16383:1", 2).unwrap();
        let resplit = ShardedBroker::new(vec![first, memory()], other);
        assert!(resplit.verify().await.is_err());
    }

    #[test]
    fn a_refusal_that_is_not_another_record_says_what_permission_is_missing() {
        let record = ShardRecord::of(&SlotTable::even(2).unwrap(), 0);
        let denied = stale_reason(
            &record,
            "ACCESS_REFUSED - access to exchange 'longpoll.shard' in vhost '/' refused for user 'fn'",
        );
        assert!(denied.contains("cannot be checked"), "{denied}");
        assert!(denied.contains("write on longpoll.shard.*"), "{denied}");
        let other = stale_reason(
            &record,
            "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'longpoll.shard' \
             in vhost '/': received 'x' but current is 'longpoll.shard.broker-1-of-2-table-0'",
        );
        assert!(
            other.starts_with("it records itself as longpoll.shard.broker-1-of-2-table-0"),
            "{other}"
        );
    }
}
