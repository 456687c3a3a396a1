//! Single-purpose measurements over HTTP: a poll that finds events queued, an idle
//! poll's hold, and publish throughput (endpoint and library).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use longpoll::{
    Broker,
    broker::Publication,
    budget::PollBudget,
    config::{DEV_JWT_SECRET, DEV_PUBLISH_KEY},
    token::TokenIssuer,
    topology::{Audience, Subscriber, UserId},
};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{load, stats};

/// The hold the servers run with (the contract's 5.5 s; `POLL_TIMEOUT_MS` unset).
pub const HOLD: Duration = Duration::from_millis(5500);

fn poll_url(server: &str) -> String {
    format!("{server}/api/v1/communication/poll/events/")
}

pub(crate) fn token(user: UserId) -> String {
    TokenIssuer::new(DEV_JWT_SECRET.as_bytes()).mint(user, None, None, Duration::from_secs(3600))
}

/// Declares the queues of `count` fresh users (through the library, with the
/// contract's arguments); returns them.
async fn users_with_queues(broker: &dyn Broker, count: usize) -> Vec<UserId> {
    let base = load::fresh_user_base();
    let users: Vec<UserId> = (0..count as u64).map(|n| UserId(base + n)).collect();
    for &user in &users {
        let subscriber = Subscriber {
            user_id: user,
            college_id: None,
            device: None,
        };
        declare(broker, &subscriber).await;
    }
    users
}

/// Declares the subscriber's queue, retrying for up to a minute while the broker is
/// still busy with the previous measurement's leftovers.
pub async fn declare(broker: &dyn Broker, subscriber: &Subscriber) {
    let give_up = Instant::now() + Duration::from_secs(60);
    // Connected first (any operation connects, with its own timeout): the declare below
    // is a poll that holds 50 ms, too short to wait for a connection.
    let _ = broker.is_online(&[], None).await;
    let hold = || Instant::now() + Duration::from_millis(50);
    while let Err(error) = broker
        .wait_for_events(subscriber, &PollBudget::until(hold()))
        .await
    {
        let _ = broker.is_online(&[], None).await;
        assert!(
            Instant::now() < give_up,
            "the broker did not answer for a minute: {error}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `samples` times: publish one event (confirmed), then poll; request to answer, sorted.
pub async fn queued_answer(server: &str, broker: &dyn Broker, samples: usize) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let user = users_with_queues(broker, 1).await[0];
    let token = token(user);
    let mut latencies = Vec::with_capacity(samples);
    for seq in 0..samples as u64 {
        let publication = Publication {
            audience: Audience::User(user),
            event: load::message(seq).prepare(),
        };
        broker.publish(&[publication]).await.unwrap();
        let started = Instant::now();
        let response = client
            .get(poll_url(server))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        latencies.push(started.elapsed());
        assert_eq!(body["events"].as_array().map(Vec::len), Some(1), "{body}");
    }
    latencies.sort();
    latencies
}

/// `polls` concurrent polls of users with nothing queued; how much longer than the
/// hold each took, sorted.
pub async fn idle_hold(server: &str, polls: usize) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let base = load::fresh_user_base();
    let tasks: Vec<_> = (0..polls as u64)
        .map(|n| {
            let (client, url, token) = (client.clone(), poll_url(server), token(UserId(base + n)));
            tokio::spawn(async move {
                let started = Instant::now();
                let response = client.get(url).bearer_auth(token).send().await.unwrap();
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["events"], json!([]));
                started.elapsed().saturating_sub(HOLD)
            })
        })
        .collect();
    let mut overshoots = Vec::with_capacity(polls);
    for task in tasks {
        overshoots.push(task.await.unwrap());
    }
    overshoots.sort();
    overshoots
}

/// How events are published in a throughput run.
pub enum Throughput<'a> {
    /// `POST events/` with `{"events": [100 events]}`.
    Endpoint(&'a str),
    /// `Broker::publish` with 100 events (persistent, confirmed).
    Library,
}

/// Events per second confirmed over `seconds`, `concurrency` publishers each sending
/// batches of 100 to users whose queues exist.
pub async fn publish_throughput(
    via: Throughput<'_>,
    broker: Arc<dyn Broker>,
    concurrency: usize,
    seconds: f64,
) -> f64 {
    let users = users_with_queues(&*broker, 100).await;
    let confirmed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    let endpoint = match via {
        Throughput::Endpoint(server) => Some(format!("{server}/api/v1/communication/events/")),
        Throughput::Library => None,
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (confirmed, stop, client, endpoint, broker, users) = (
                confirmed.clone(),
                stop.clone(),
                client.clone(),
                endpoint.clone(),
                broker.clone(),
                users.clone(),
            );
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let published = match &endpoint {
                        Some(url) => {
                            let events: Vec<Value> = users
                                .iter()
                                .map(|user| {
                                    seq += 1;
                                    let mut event = load::message_json(seq);
                                    event["user_id"] = json!(user.0);
                                    event
                                })
                                .collect();
                            let response = client
                                .post(url)
                                .header("x-api-key", DEV_PUBLISH_KEY)
                                .json(&json!({"events": events}))
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(response.status(), 200);
                            events.len()
                        }
                        None => {
                            let batch: Vec<Publication> = users
                                .iter()
                                .map(|&user| {
                                    seq += 1;
                                    Publication {
                                        audience: Audience::User(user),
                                        event: load::message(seq).prepare(),
                                    }
                                })
                                .collect();
                            broker.publish(&batch).await.unwrap().len()
                        }
                    };
                    confirmed.fetch_add(published, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    confirmed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Median and maximum of sorted durations, in milliseconds.
pub fn median_and_max_ms(sorted: &[Duration]) -> (f64, f64) {
    (
        stats::percentile_ms(sorted, 0.5),
        stats::percentile_ms(sorted, 1.0),
    )
}
