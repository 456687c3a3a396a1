//! The brokers a test runs on: RabbitMQ at `AMQP_URL` (plain, or with lingering
//! consumers as the local server runs it) and the in-memory broker, and
//! [`on_every_broker!`](crate::on_every_broker), which runs a behaviour on each.

use std::{sync::Arc, time::Duration};

use longpoll::{Broker, Config, MemoryBroker, RabbitBroker, broker::LingeringBroker};

use crate::JWT_SECRET;

/// The broker under test: `AMQP_URL`, or the local RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| longpoll::config::DEFAULT_AMQP_URL.to_owned())
}

/// A configuration naming the test's connection, so a test can find and close it.
pub fn config(connection_name: &str) -> Config {
    Config::new(&amqp_url(), Some(JWT_SECRET), connection_name)
}

pub fn rabbit(config: &Config) -> Arc<dyn Broker> {
    Arc::new(RabbitBroker::new(config))
}

/// RabbitMQ with quorum user queues, the cluster's model (`QUEUE_TYPE=quorum`): on the
/// single node each is a Raft group of one, which behaves as on three.
pub fn rabbit_quorum(config: &Config) -> Arc<dyn Broker> {
    let config = Config {
        queue_type: longpoll::topology::QueueType::Quorum,
        ..config.clone()
    };
    Arc::new(RabbitBroker::new(&config))
}

/// RabbitMQ with consumers that outlive their polls, as the local server runs it.
pub fn rabbit_lingering(config: &Config) -> Arc<dyn Broker> {
    Arc::new(LingeringBroker::new(
        RabbitBroker::new(config),
        Duration::from_secs(15),
    ))
}

pub fn memory(config: &Config) -> Arc<dyn Broker> {
    Arc::new(
        MemoryBroker::new(config.presence_ttl)
            .with_max_devices_per_user(config.max_devices_per_user),
    )
}

/// Makes the broker a behaviour test runs on: [`rabbit`] or [`memory`].
pub type MakeBroker = fn(&Config) -> Arc<dyn Broker>;

/// Runs each named `async fn(MakeBroker)` on every broker, three times: on RabbitMQ (module `rabbitmq`),
/// on RabbitMQ with lingering consumers as the local server runs it (module
/// `rabbitmq_lingering`), and on the in-memory broker (module `memory`).
#[macro_export]
macro_rules! on_every_broker {
    ($($behaviour:ident),* $(,)?) => {
        mod rabbitmq {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() { super::$behaviour($crate::rabbit).await })*
        }
        mod rabbitmq_quorum {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() { super::$behaviour($crate::rabbit_quorum).await })*
        }
        mod rabbitmq_lingering {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() { super::$behaviour($crate::rabbit_lingering).await })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() { super::$behaviour($crate::memory).await })*
        }
    };
}
