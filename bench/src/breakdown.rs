//! Where publish→response time goes, one event at a time on an otherwise idle machine
//! (no load, so each step is seen alone), each step timed by its own probe:
//!
//! - **AMQP publish → confirm**: `Broker::publish` of one event (persistent, mandatory,
//!   confirmed) to a queue shaped like a user's (durable, the same arguments), the
//!   publisher's wait;
//! - **AMQP publish → delivery**: the same publish, to the delivery reaching that
//!   queue's consumer (lapin, manual acks, prefetch 100) in this process: the broker's
//!   routing, enqueue and delivery, both socket hops; and the same to a non-durable
//!   queue, where the broker writes nothing;
//! - **HTTP round trip**: `GET poll/test/` on the local server, which answers at once:
//!   client, loopback and hyper both ways, no broker;
//! - **publish → poll answered**: a poll held on the local server (guide mode) and one
//!   event published to its user;
//! - **Nchan: publish → poll answered** and **Nchan: HTTP publish**, the same on the
//!   yardstick.
//!
//! The server's own share (delivery to its consumer's buffer, the held poll's wake-up,
//! acks, serialisation, the response's write) is what remains of "publish → poll
//! answered" after the delivery and half an HTTP round trip (the response's leg).

use std::{sync::Arc, time::Duration};

use futures_lite::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use longpoll::{
    Broker, Config,
    broker::{Publication, user_queue_table},
    topology::{Audience, QueueType, UserId},
};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    load, nchan, probes,
    stats::{self, ms},
};

/// Samples of each step (after a few unmeasured ones).
const SAMPLES: usize = 200;
/// How long a poll is given to be held before the event is published.
const SETTLE: Duration = Duration::from_millis(20);

/// One row: a step and its samples, sorted.
pub struct Step {
    pub name: &'static str,
    pub samples: Vec<Duration>,
}

impl Step {
    fn new(name: &'static str, mut samples: Vec<Duration>) -> Step {
        samples.sort();
        Step { name, samples }
    }

    pub fn p50(&self) -> f64 {
        stats::percentile_ms(&self.samples, 0.5)
    }

    pub fn p99(&self) -> f64 {
        stats::percentile_ms(&self.samples, 0.99)
    }
}

/// Every step, in the order above, by name.
pub struct Breakdown {
    confirm: Step,
    delivery: Step,
    transient: Step,
    http: Step,
    answered: Step,
    /// Publish → poll answered, and the HTTP publish, on Nchan.
    nchan: Option<(Step, Step)>,
}

impl Breakdown {
    fn steps(&self) -> impl Iterator<Item = &Step> {
        let nchan = self
            .nchan
            .iter()
            .flat_map(|(answered, published)| [answered, published]);
        [
            &self.confirm,
            &self.delivery,
            &self.transient,
            &self.http,
            &self.answered,
        ]
        .into_iter()
        .chain(nchan)
    }
}

/// Measures every step.
pub async fn measure(
    amqp_url: &str,
    library: Arc<dyn Broker>,
    longpoll: &str,
    nchan: Option<&str>,
) -> Breakdown {
    let (confirm, delivery) = publish_steps(amqp_url, &*library, Shape::LikeAUsers).await;
    let (_, transient) = publish_steps(amqp_url, &*library, Shape::Transient).await;
    let nchan = match nchan {
        Some(nchan) => {
            let (answered, published) = nchan_steps(nchan).await;
            Some((
                Step::new("Nchan: publish → poll answered", answered),
                Step::new("Nchan: HTTP publish → 201", published),
            ))
        }
        None => None,
    };
    Breakdown {
        confirm: Step::new(
            "AMQP publish → confirm (persistent message, durable queue: written to disk)",
            confirm,
        ),
        delivery: Step::new(
            "AMQP publish → delivery to a consumer (routing, the persistent message's enqueue, delivery)",
            delivery,
        ),
        transient: Step::new(
            "AMQP publish → delivery, to a non-durable queue (nothing written)",
            transient,
        ),
        http: Step::new(
            "HTTP round trip, nothing held (`poll/test/`: client, loopback, hyper)",
            http_round_trips(longpoll).await,
        ),
        answered: Step::new(
            "publish → poll answered (local server, guide mode)",
            held_poll_answers(longpoll, &*library).await,
        ),
        nchan,
    }
}

/// Prints the steps as a table, with the server's share worked out at the median.
pub fn print(breakdown: &Breakdown) {
    println!("| step (one event at a time, no load) | p50 ms | p99 ms |");
    println!("|---|---|---|");
    for step in breakdown.steps() {
        println!(
            "| {} | {} | {} |",
            step.name,
            ms(step.p50()),
            ms(step.p99())
        );
    }
    let Breakdown {
        delivery,
        http,
        answered,
        ..
    } = breakdown;
    let server = answered.p50() - delivery.p50() - http.p50() / 2.0;
    println!(
        "\nAt the median, of publish → poll answered ({} ms): the broker's routing and delivery {} ms, the response's HTTP leg about {} ms, the server's own share about {} ms (wake-up, acks, serialisation).",
        ms(answered.p50()),
        ms(delivery.p50()),
        ms(http.p50() / 2.0),
        ms(server.max(0.0))
    );
}

/// The probe queue's shape.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// Durable, with a user queue's arguments, consumed with manual acks and a prefetch
    /// of 100: the path of a real event, whose persistent message the broker writes.
    LikeAUsers,
    /// Exclusive and not durable, no acks: the broker writes nothing to disk.
    Transient,
}

/// Publishes one event at a time to a user whose only queue is a probe consumer's of
/// this process; (publish → confirm, publish → delivery) per event.
async fn publish_steps(
    amqp_url: &str,
    library: &dyn Broker,
    shape: Shape,
) -> (Vec<Duration>, Vec<Duration>) {
    let exchange = Config::new(amqp_url, None, "longpoll-bench").exchange;
    let user = UserId(load::fresh_user_base());
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .expect("a connection for the probe consumer");
    let channel = connection.create_channel().await.expect("a channel");
    let (options, arguments) = match shape {
        Shape::LikeAUsers => {
            let arguments = user_queue_table(QueueType::Classic);
            let options = QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            };
            (options, arguments)
        }
        Shape::Transient => {
            let options = QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            };
            (options, FieldTable::default())
        }
    };
    channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("the probe's prefetch");
    let queue = channel
        .queue_declare("".into(), options, arguments)
        .await
        .expect("the probe's queue");
    channel
        .queue_bind(
            queue.name().as_str().into(),
            exchange.as_str().into(),
            Audience::User(user).routing_key().as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the probe's binding");
    let mut consumer = channel
        .basic_consume(
            queue.name().as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: shape == Shape::Transient,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the probe's consumer");
    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let _ = arrived.send(Instant::now());
            if shape == Shape::LikeAUsers {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        }
    });
    let (mut confirms, mut deliveries) = (Vec::new(), Vec::new());
    for seq in 0..(SAMPLES + 10) as u64 {
        let publication = Publication {
            audience: Audience::User(user),
            event: load::message(seq).prepare(),
        };
        let started = Instant::now();
        let receipts = library.publish(&[publication]).await.expect("publish");
        let confirmed = Instant::now();
        assert!(receipts[0].routed, "the probe's queue is bound");
        let delivered = arrivals.recv().await.expect("the delivery");
        if seq >= 10 {
            confirms.push(confirmed - started);
            deliveries.push(delivered - started);
        }
    }
    reader.abort();
    let _ = channel
        .queue_delete(queue.name().as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(0, "done".into()).await;
    (confirms, deliveries)
}

async fn http_round_trips(server: &str) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let url = format!("{server}/api/v1/communication/poll/test/");
    let mut samples = Vec::new();
    for n in 0..SAMPLES + 10 {
        let started = Instant::now();
        let response = client.get(&url).send().await.expect("poll/test/");
        let _ = response.bytes().await;
        if n >= 10 {
            samples.push(started.elapsed());
        }
    }
    samples
}

/// A poll held for one user, then one event published to them (through the library, as
/// the load does): publish → answer, per event.
async fn held_poll_answers(server: &str, library: &dyn Broker) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let user = UserId(load::fresh_user_base());
    let token = probes::token(user);
    let url = format!("{server}/api/v1/communication/poll/events/");
    let mut samples = Vec::new();
    for seq in 0..(SAMPLES + 10) as u64 {
        let poll = tokio::spawn({
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            async move {
                let response = client.get(url).bearer_auth(token).send().await.unwrap();
                let body = response.bytes().await.unwrap();
                (Instant::now(), body)
            }
        });
        // The first polls declare the queue; later ones attach at once.
        tokio::time::sleep(if seq == 0 { 10 * SETTLE } else { SETTLE }).await;
        let started = Instant::now();
        let publication = Publication {
            audience: Audience::User(user),
            event: load::message(seq).prepare(),
        };
        library.publish(&[publication]).await.expect("publish");
        let (answered, _) = poll.await.unwrap();
        if seq >= 10 {
            samples.push(answered - started);
        }
    }
    samples
}

/// The same on Nchan: (publish → answer, publish → 201), per event.
async fn nchan_steps(nchan: &str) -> (Vec<Duration>, Vec<Duration>) {
    let client = reqwest::Client::new();
    let channel = load::fresh_user_base();
    let (sub, publish) = (
        format!("{nchan}/sub/{channel}"),
        format!("{nchan}/pub/{channel}"),
    );
    let mut resume: Option<(String, String)> = None;
    let (mut answers, mut publishes) = (Vec::new(), Vec::new());
    for seq in 0..(SAMPLES + 10) as u64 {
        let request = nchan::subscribe(&client, &sub, resume.as_ref());
        let poll = tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let next = nchan::resume_after(&response);
            let _ = response.bytes().await;
            (Instant::now(), next)
        });
        tokio::time::sleep(SETTLE).await;
        let started = Instant::now();
        let response = client
            .post(&publish)
            .json(&load::message_json(seq))
            .send()
            .await
            .unwrap();
        let published = Instant::now();
        let _ = response.bytes().await;
        let (answered, next) = poll.await.unwrap();
        resume = next;
        if seq >= 10 {
            answers.push(answered - started);
            publishes.push(published - started);
        }
    }
    (answers, publishes)
}
