//! The baseline: the design guide's own algorithm, for the benchmark only.
//!
//! The guide's server checks the user's queue every 0.3 s (`basic_get`) until an event
//! is there or 5.5 s have passed. [`GuideBaseline`] does exactly that inside the real
//! `poll-events` handler and HTTP server (`longpoll-bench guide-server`), so the only
//! difference the benchmark measures is the wait itself: a check every 0.3 s against a
//! consumer the broker pushes to. It implements polling alone ([`Poll`]): publishing and
//! presence are the real broker's.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use longpoll::{
    BrokerError, Config, RabbitBroker,
    broker::{Poll, user_queue_table},
    budget::PollBudget,
    event::Event,
    topology::{MAX_BATCH, QueueType, Subscriber},
};
use longpoll_local::{BrokerKind, Functions, cors};
use tokio::{sync::Mutex, time::Instant};

/// How often the guide checks the queue ("Check Interval: 0.3 seconds").
pub const CHECK_INTERVAL: Duration = Duration::from_millis(300);

pub struct GuideBaseline {
    /// Cursor mode, which the guide does not have: the real broker.
    inner: RabbitBroker,
    url: String,
    exchange: String,
    /// A few connections, each opened on first use and replaced when it dies, taken in
    /// turn: a held poll keeps a channel open and one connection has at most 2,047.
    connections: Vec<Mutex<Option<Arc<Connection>>>>,
    next: AtomicUsize,
}

/// Connections of the baseline: room for 8 × 2,047 polls checking at once.
const CONNECTIONS: usize = 8;

impl GuideBaseline {
    pub fn new(config: &Config) -> Self {
        Self {
            inner: RabbitBroker::new(config),
            url: config.amqp_url.clone(),
            exchange: config.exchange.clone(),
            connections: (0..CONNECTIONS).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % CONNECTIONS;
        let connection = {
            let mut slot = self.connections[turn].lock().await;
            if !slot.as_ref().is_some_and(|open| open.status().connected()) {
                let properties = ConnectionProperties::default()
                    .with_connection_name("longpoll-guide-baseline".into());
                let opened = Connection::connect(&self.url, properties)
                    .await
                    .map_err(unreachable)?;
                *slot = Some(Arc::new(opened));
            }
            slot.clone().expect("just opened")
        };
        connection.create_channel().await.map_err(unreachable)
    }

    /// The guide's poll: declare and bind the queue, then `basic_get` every 0.3 s.
    async fn check_every_interval(
        &self,
        channel: &Channel,
        subscriber: &Subscriber,
        deadline: Instant,
    ) -> Result<Vec<Event>, lapin::Error> {
        let queue = subscriber.queue_name();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(
                queue.as_str().into(),
                durable,
                user_queue_table(QueueType::Classic),
            )
            .await?;
        for key in subscriber.routing_keys() {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        loop {
            let mut events = Vec::new();
            while events.len() < MAX_BATCH {
                let options = BasicGetOptions { no_ack: true };
                let Some(message) = channel.basic_get(queue.as_str().into(), options).await? else {
                    break;
                };
                let properties = &message.delivery.properties;
                let id = properties.message_id().as_ref().map(|id| id.as_str());
                if let Ok(event) =
                    Event::from_message(&message.delivery.data, id, *properties.timestamp())
                {
                    events.push(event);
                }
            }
            if !events.is_empty() || Instant::now() + CHECK_INTERVAL > deadline {
                return Ok(events);
            }
            tokio::time::sleep(CHECK_INTERVAL).await;
        }
    }
}

#[async_trait]
impl Poll for GuideBaseline {
    async fn wait_for_events(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        let channel = self.channel().await?;
        let events = self
            .check_every_interval(&channel, subscriber, budget.hold_until())
            .await;
        let _ = channel.close(200, "poll done".into()).await;
        events.map_err(unreachable)
    }

    /// The guide has no cursor mode: the real broker's.
    async fn wait_with_cursor(
        &self,
        subscriber: &Subscriber,
        acked: &str,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        self.inner.wait_with_cursor(subscriber, acked, budget).await
    }
}

fn unreachable(error: lapin::Error) -> BrokerError {
    BrokerError::Unreachable(error.to_string())
}

/// `longpoll-bench guide-server`: the local server on the design guide's algorithm, for
/// comparison; listens on LISTEN_ADDR (default 127.0.0.1:9100), uses AMQP_URL.
pub async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    longpoll::telemetry::init();
    let config = Config::from_env("longpoll-guide-baseline")?;
    let guide = Arc::new(GuideBaseline::new(&config));
    let broker = Arc::new(RabbitBroker::new(&config));
    let mut functions = Functions::with_broker(config, broker, BrokerKind::RabbitMq)?;
    functions.app = functions.app.with_poll(guide);
    let functions = Arc::new(functions);
    let address = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:9100".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("guide baseline listening on http://{address}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    longpoll_local::serve(listener, functions, cors(&["*".to_owned()]), shutdown).await?;
    Ok(())
}
