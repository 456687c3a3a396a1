//! The load's floor: the same users and events with no HTTP server at all, each user an
//! AMQP consumer of their own queue in this process. What it measures (publish start →
//! delivery at the consumer) is what the broker takes under that load, as a plain
//! consumer sees it; a server answering polls adds its own work and an HTTP hop on top,
//! so the rows of the HTTP servers are read against it. It is an estimate, not a strict
//! bound: the consumers share this process with the publisher and the clock, so under a
//! heavy load they compete for it where a server's would not.
//!
//! The queues are the users' own (`event_queue:user:<id>`, the contract's arguments,
//! bound to `user.<id>`), the consumers take manual acks with the server's prefetch and
//! share channels as its lanes do (256 consumers a channel), and every delivery is acked
//! once recorded, as the server acks after answering. The queues are deleted afterwards.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_lite::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use longpoll::{
    Config,
    broker::user_queue_table,
    topology::{Audience, QueueType, Subscriber, UserId},
};
use serde_json::Value;
use tokio::{sync::Semaphore, time::Instant};

use super::{
    LoadOptions, LoadReport,
    ledger::Ledger,
    report::CpuSample,
    window::{fresh_user_base, publish_window},
};

/// Consumers per channel, as the server's lanes take them.
const CONSUMERS_PER_CHANNEL: usize = 256;
/// Queue set-ups in flight at once.
const SET_UPS_AT_ONCE: usize = 32;

/// Runs the load with AMQP consumers of the broker at `amqp_url` in place of HTTP
/// pollers.
pub(super) async fn run(options: &LoadOptions, amqp_url: &str) -> LoadReport {
    let exchange = Config::new(amqp_url, None, "longpoll-bench").exchange;
    let connection = Connection::connect(
        amqp_url,
        ConnectionProperties::default().with_connection_name("longpoll-bench floor".into()),
    )
    .await
    .expect("a connection for the floor's consumers");
    let mut channels = Vec::new();
    for _ in 0..options.users.div_ceil(CONSUMERS_PER_CHANNEL) {
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .basic_qos(100, BasicQosOptions { global: false })
            .await
            .expect("the consumers' prefetch");
        channels.push(channel);
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let base_user = fresh_user_base();
    let users: Vec<UserId> = (0..options.users as u64)
        .map(|n| UserId(base_user + n))
        .collect();
    let set_ups = Arc::new(Semaphore::new(SET_UPS_AT_ONCE));
    let mut consumers = Vec::new();
    for (n, user) in users.iter().enumerate() {
        let channel = channels[n / CONSUMERS_PER_CHANNEL].clone();
        let permit = set_ups.clone().acquire_owned().await.expect("never closed");
        let (exchange, ledger) = (exchange.clone(), ledger.clone());
        let user = *user;
        consumers.push(tokio::spawn(async move {
            let consumer = set_up(&channel, &exchange, user).await;
            drop(permit);
            consume(consumer, ledger).await;
        }));
    }
    // Every queue is bound once every set-up has finished; then the same idle time as
    // the HTTP loads' warm-up, so the broker is in the same state when the window opens.
    let _ = set_ups
        .acquire_many(SET_UPS_AT_ONCE as u32)
        .await
        .expect("never closed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sample = || CpuSample::take(None, options.broker_pid, 0);
    let idle_started = sample();
    tokio::time::sleep(options.warm_up).await;
    let window_started = sample();
    let idle_cpu = idle_started.until(&window_started);

    let mut report = publish_window(options, &ledger, base_user, |report| {
        report.window_cpu = Some(window_started.until(&sample()));
    })
    .await;
    report.idle_cpu = Some(idle_cpu);
    for consumer in consumers {
        consumer.abort();
    }
    let channel = &channels[0];
    for user in users {
        let _ = channel
            .queue_delete(
                queue_name(user).as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
    report
}

fn queue_name(user: UserId) -> String {
    Subscriber {
        user_id: user,
        college_id: None,
        device: None,
    }
    .queue_name()
}

/// Declares the user's queue as the server does, binds it and starts its consumer.
async fn set_up(channel: &Channel, exchange: &str, user: UserId) -> lapin::Consumer {
    let queue = queue_name(user);
    let arguments = user_queue_table(QueueType::Classic);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, arguments)
        .await
        .expect("the user's queue");
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            Audience::User(user).routing_key().as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the user's binding");
    channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the user's consumer")
}

/// Records every delivery in the ledger, then acks it.
async fn consume(mut consumer: lapin::Consumer, ledger: Arc<Mutex<Ledger>>) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let now = Instant::now();
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let seq = serde_json::from_slice::<Value>(&delivery.data)
            .ok()
            .and_then(|body| body["data"]["sender_id"].as_u64());
        if let Some(seq) = seq {
            ledger.lock().unwrap().delivered(seq, &id, now);
        }
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
    }
}
