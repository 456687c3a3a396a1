//! `cargo run --release -p longpoll-bench -- latency [RUNS SAMPLES]`
//!
//! Measures, through the real `poll-events` handler and a warm broker connection:
//! - immediate return: a poll that finds an event already queued, request to answer;
//! - publish to response: a poll is held, an event is published (with its confirm),
//!   time from the start of the publish to the poll's answer.
//!
//! Both in the guide's mode and in cursor mode (`?device=bench&ack=<last id>`), where
//! each poll first acknowledges what the previous one returned.
//!
//! Each run takes SAMPLES of each and prints p50/p90/p99; the summary is the median of
//! the runs' figures, since the machine is shared and noisy. `AMQP_URL` picks the broker
//! (default the local RabbitMQ); `BROKER=memory` measures the in-memory broker instead,
//! `BROKER=lingering` RabbitMQ with the local server's lingering consumers.

use std::{sync::Arc, time::Duration};

use lambda_http::{Body, Request};
use longpoll::{
    App, Broker, Config, MemoryBroker, RabbitBroker,
    broker::{LingeringBroker, Publication},
    event::EventBody,
    token::TokenIssuer,
    topology::{Audience, UserId},
};
use tokio::time::Instant;

use crate::stats;

const SECRET: &str = "bench-secret";

/// `longpoll-bench latency`.
#[derive(clap::Args)]
pub struct Options {
    #[arg(default_value_t = 5)]
    pub runs: usize,
    #[arg(default_value_t = 200)]
    pub samples: usize,
}

pub async fn run(Options { runs, samples }: Options) {
    let url =
        std::env::var("AMQP_URL").unwrap_or_else(|_| longpoll::config::DEFAULT_AMQP_URL.to_owned());
    let mut config = Config::new(&url, Some(SECRET), "longpoll-bench");
    config.poll_timeout = Duration::from_secs(5);
    let kind = std::env::var("BROKER").unwrap_or_default();
    let memory = kind == "memory";
    let broker: Arc<dyn Broker> = match kind.as_str() {
        "memory" => Arc::new(MemoryBroker::new(config.presence_ttl)),
        // As the local server runs it: consumers that outlive their polls.
        "lingering" => Arc::new(LingeringBroker::new(
            RabbitBroker::new(&config),
            Duration::from_secs(15),
        )),
        _ => Arc::new(RabbitBroker::new(&config)),
    };
    let app = App::new(config, broker.clone()).expect("a JWT secret is set");
    println!(
        "broker: {}",
        if memory {
            "memory".to_owned()
        } else {
            longpoll::config::redact_url(&url)
        }
    );
    println!("{runs} runs x {samples} samples\n");
    println!(
        "{:<28} {:>9} {:>9} {:>9}",
        "run", "p50 ms", "p90 ms", "p99 ms"
    );

    let mut summary = Vec::new();
    for mode in [Mode::Guide, Mode::Cursor] {
        let (mut immediate_p50s, mut pushed_p50s, mut immediate_p99s, mut pushed_p99s) =
            (vec![], vec![], vec![], vec![]);
        for run in 1..=runs {
            let (immediate, pushed) = measure(&app, &*broker, mode, samples).await;
            for (name, figures) in [("immediate", immediate), ("publish to response", pushed)] {
                println!(
                    "{:<34} {:>9.3} {:>9.3} {:>9.3}",
                    format!("#{run} {} {name}", mode.name()),
                    figures.0,
                    figures.1,
                    figures.2
                );
            }
            immediate_p50s.push(immediate.0);
            immediate_p99s.push(immediate.2);
            pushed_p50s.push(pushed.0);
            pushed_p99s.push(pushed.2);
        }
        summary.push(format!(
            "  {:<6} immediate return     p50 {:.3} ms, p99 {:.3} ms\n  {:<6} publish to response  p50 {:.3} ms, p99 {:.3} ms",
            mode.name(),
            stats::median(&immediate_p50s),
            stats::median(&immediate_p99s),
            mode.name(),
            stats::median(&pushed_p50s),
            stats::median(&pushed_p99s)
        ));
    }
    println!("\nmedian of {runs} runs:");
    for line in summary {
        println!("{line}");
    }
}

#[derive(Clone, Copy)]
enum Mode {
    /// The design guide's: events are removed when returned.
    Guide,
    /// `?device=bench&ack=<last id>`: each poll acknowledges the previous answer.
    Cursor,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Guide => "guide",
            Mode::Cursor => "cursor",
        }
    }
}

/// One run: SAMPLES immediate returns, then SAMPLES held polls answered by a publish;
/// each as (p50, p90, p99) in milliseconds.
async fn measure(
    app: &App,
    broker: &dyn Broker,
    mode: Mode,
    samples: usize,
) -> ((f64, f64, f64), (f64, f64, f64)) {
    let user = UserId(uuid::Uuid::new_v4().as_u128() as u64 % 1_000_000_000_000 + 1);
    let token =
        TokenIssuer::new(SECRET.as_bytes()).mint(user, None, None, Duration::from_secs(3600));
    let mut poller = Poller {
        app: app.clone(),
        token,
        cursor: matches!(mode, Mode::Cursor).then(String::new),
    };
    // Declare the queue (and warm the connection) with one empty poll.
    poller.poll(Some(Duration::from_millis(50))).await;

    let mut immediate = Vec::with_capacity(samples);
    for n in 0..samples {
        publish(broker, user, n).await;
        let started = Instant::now();
        let events = poller.poll(None).await;
        immediate.push(started.elapsed());
        assert_eq!(events, 1);
    }
    let mut pushed = Vec::with_capacity(samples);
    for n in 0..samples {
        let held = {
            let mut poller = poller.clone();
            tokio::spawn(async move {
                let events = poller.poll(None).await;
                (Instant::now(), events, poller)
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await; // let the poll start waiting
        let started = Instant::now();
        publish(broker, user, n).await;
        let (answered, events, advanced) = held.await.unwrap();
        assert_eq!(events, 1);
        poller = advanced;
        pushed.push(answered - started);
    }
    (percentiles(&mut immediate), percentiles(&mut pushed))
}

/// A client of the poll handler; in cursor mode it remembers the last id it got.
#[derive(Clone)]
struct Poller {
    app: App,
    token: String,
    cursor: Option<String>,
}

impl Poller {
    /// One poll through the handler; returns how many events it answered.
    async fn poll(&mut self, hold: Option<Duration>) -> usize {
        let mut app = self.app.clone();
        if let Some(hold) = hold {
            app.config.poll_timeout = hold;
        }
        let uri = match &self.cursor {
            None => "/api/v1/communication/poll/events/".to_owned(),
            Some(acked) => format!("/api/v1/communication/poll/events/?device=bench&ack={acked}"),
        };
        let request: Request = lambda_http::http::Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {}", self.token))
            .body(Body::Empty)
            .unwrap();
        let response = poll_events::handle(&app, request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = serde_json::from_slice(response.body().as_ref()).unwrap();
        let events = body["events"].as_array().unwrap();
        if let (Some(cursor), Some(last)) = (&mut self.cursor, events.last()) {
            *cursor = last["id"].as_str().unwrap().to_owned();
        }
        events.len()
    }
}

async fn publish(broker: &dyn Broker, user: UserId, n: usize) {
    let body: EventBody = EventBody::Typing(longpoll::event::TypingData {
        sender_id: n as i64,
        sender_name: None,
        is_typing: true,
        extra: Default::default(),
    });
    broker
        .publish(&[Publication {
            audience: Audience::User(user),
            event: body.prepare(),
        }])
        .await
        .unwrap();
}

/// (p50, p90, p99) in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let at = |q| stats::percentile_ms(samples, q);
    (at(0.5), at(0.9), at(0.99))
}
