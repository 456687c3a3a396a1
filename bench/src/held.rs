//! Many concurrent held polls against a running local server (`longpoll-local`).
//!
//! Each simulated user holds a poll and re-polls as soon as it is answered; events are
//! published to random users through the publish endpoint; every second the number of
//! polls in flight is sampled. At the end: held polls (the minimum over the steady
//! window, after the ramp), answered polls, errors, publish-to-response latency, the
//! server's RSS, and its AMQP connections and channels (from `rabbitmqctl`, when the
//! server runs on RabbitMQ).

use std::{
    collections::HashMap,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use longpoll::{config::DEV_JWT_SECRET, token::TokenIssuer, topology::UserId};
use serde_json::{Value, json};
use tokio::time::Instant;

#[derive(clap::Args)]
pub struct Options {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    url: String,
    /// Concurrent users, each holding one poll.
    #[arg(long, default_value_t = 10_000)]
    polls: usize,
    /// How long to keep them held, after the ramp.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// How many new polls to open per second while ramping up.
    #[arg(long, default_value_t = 2_000)]
    ramp_per_second: usize,
    /// Events published per second to random users during the steady window.
    #[arg(long, default_value_t = 50)]
    publish_rate: u64,
    /// The server's process id, for its RSS (default: `pgrep -n longpoll-local`).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's publish key.
    #[arg(long, default_value = longpoll::config::DEV_PUBLISH_KEY)]
    publish_key: String,
}

/// Event sequence number (its `data.sender_id`) → when its publish was sent; filled by
/// the publisher before sending (a poll may answer before the publish reply arrives)
/// and drained by the polls.
type Pending = Arc<Mutex<HashMap<u64, Instant>>>;

pub async fn run(options: Options) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.polls + 100)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let pending: Pending = Arc::default();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let issuer = TokenIssuer::new(DEV_JWT_SECRET.as_bytes());
    let base_user = 5_000_000_000u64 + (std::process::id() as u64) * 100_000;
    let stop_at = Arc::new(Mutex::new(None::<Instant>));

    println!(
        "ramping up {} held polls against {} ...",
        options.polls, options.url
    );
    let ramp_started = Instant::now();
    let mut pollers = Vec::with_capacity(options.polls);
    for n in 0..options.polls {
        let user = UserId(base_user + n as u64);
        let token = issuer.mint(user, None, None, Duration::from_secs(3600));
        let url = format!("{}/api/v1/communication/poll/events/", options.url);
        let (client, in_flight, answered, errors, pending, latencies, stop_at) = (
            client.clone(),
            in_flight.clone(),
            answered.clone(),
            errors.clone(),
            pending.clone(),
            latencies.clone(),
            stop_at.clone(),
        );
        pollers.push(tokio::spawn(async move {
            loop {
                if stop_at
                    .lock()
                    .unwrap()
                    .is_some_and(|at| Instant::now() >= at)
                {
                    return;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let outcome = client.get(&url).bearer_auth(&token).send().await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                match outcome {
                    Ok(response) if response.status() == 200 => {
                        answered.fetch_add(1, Ordering::Relaxed);
                        let body: Value = response.json().await.unwrap_or_default();
                        let now = Instant::now();
                        for event in body["events"].as_array().into_iter().flatten() {
                            if let Some(published) = event["data"]["sender_id"]
                                .as_u64()
                                .and_then(|seq| pending.lock().unwrap().remove(&seq))
                            {
                                latencies.lock().unwrap().push(now - published);
                            }
                        }
                    }
                    other => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        // Back off as a real client does: as long as `Retry-After` asks
                        // (the 503 of a busy broker), else half a second, with jitter so
                        // that users who failed together do not retry together.
                        let retry_after = other
                            .ok()
                            .and_then(|response| {
                                response
                                    .headers()
                                    .get("retry-after")?
                                    .to_str()
                                    .ok()?
                                    .parse()
                                    .ok()
                            })
                            .map_or(Duration::from_millis(500), Duration::from_secs);
                        let jitter =
                            rand_fraction(n as u64 + answered.load(Ordering::Relaxed) as u64);
                        tokio::time::sleep(retry_after.mul_f64(0.5 + jitter)).await;
                    }
                }
            }
        }));
        if (n + 1) % options.ramp_per_second == 0 {
            let due =
                ramp_started + Duration::from_secs(((n + 1) / options.ramp_per_second) as u64);
            tokio::time::sleep_until(due).await;
        }
    }
    // Let the last ones reach the server and every user declare its queue.
    tokio::time::sleep(Duration::from_secs(6)).await;
    println!(
        "ramp done in {:.1} s; steady window of {} s",
        ramp_started.elapsed().as_secs_f64(),
        options.seconds
    );

    let steady_started = Instant::now();
    *stop_at.lock().unwrap() = Some(steady_started + Duration::from_secs(options.seconds));
    let answered_before = answered.load(Ordering::Relaxed);
    let errors_before = errors.load(Ordering::Relaxed);
    let publisher = {
        let (client, pending, url, key) = (
            client.clone(),
            pending.clone(),
            format!("{}/api/v1/communication/events/", options.url),
            options.publish_key.clone(),
        );
        let (polls, rate, seconds) = (
            options.polls as u64,
            options.publish_rate.max(1),
            options.seconds,
        );
        tokio::spawn(async move {
            let mut published = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            while steady_started.elapsed() < Duration::from_secs(seconds.saturating_sub(6)) {
                tick.tick().await;
                let user = base_user + (published * 7919) % polls;
                let body = json!({"user_id": user, "event": "message", "data": {"id": published, "sender_id": published, "sender_name": "bench", "message": "hello"}});
                pending.lock().unwrap().insert(published, Instant::now());
                let routed = match client
                    .post(&url)
                    .header("x-api-key", &key)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(response) => {
                        response.json::<Value>().await.unwrap_or_default()["published"][0]["routed"]
                            == true
                    }
                    Err(_) => false,
                };
                if !routed {
                    // Refused or not routed: not an event any poll could get.
                    pending.lock().unwrap().remove(&published);
                }
                published += 1;
            }
            published
        })
    };
    let mut held_samples = Vec::new();
    let mut rss_samples = Vec::new();
    let pid = options.server_pid.or_else(server_pid);
    while steady_started.elapsed() < Duration::from_secs(options.seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        held_samples.push(in_flight.load(Ordering::Relaxed));
        if let Some(rss) = pid.and_then(rss_kib) {
            rss_samples.push(rss);
        }
    }
    let (connections, channels) = amqp_usage();
    let published = publisher.await.unwrap();
    for poller in &pollers {
        poller.abort();
    }
    let steady = steady_started.elapsed().as_secs_f64();
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let lost = pending.lock().unwrap().len();
    let at = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q) as usize)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };

    println!();
    println!(
        "held polls (min / median / max over the window): {} / {} / {}",
        min(&held_samples),
        median(&mut held_samples.clone()),
        max(&held_samples)
    );
    println!(
        "polls answered: {} ({:.0}/s), errors: {}",
        answered.load(Ordering::Relaxed) - answered_before,
        (answered.load(Ordering::Relaxed) - answered_before) as f64 / steady,
        errors.load(Ordering::Relaxed) - errors_before
    );
    println!(
        "events published: {published}, delivered: {}, not yet delivered at the end: {lost}",
        latencies.len()
    );
    println!(
        "publish-to-response latency: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    match (pid, rss_samples.last()) {
        (Some(pid), Some(last)) => println!(
            "server (pid {pid}) RSS: {:.1} MiB at the end, {:.1} MiB peak",
            *last as f64 / 1024.0,
            max(&rss_samples) as f64 / 1024.0
        ),
        _ => println!("server RSS: unknown (pass --server-pid)"),
    }
    match (connections, channels) {
        (Some(connections), Some(channels)) => {
            println!("AMQP connections of longpoll-local: {connections}, channels: {channels}")
        }
        _ => println!("AMQP connections: none seen (memory broker, or rabbitmqctl unavailable)"),
    }
}

fn server_pid() -> Option<u32> {
    let output = Command::new("pgrep")
        .args(["-n", "longpoll-local"])
        .output()
        .ok()?;
    String::from_utf8(output.stdout).ok()?.trim().parse().ok()
}

fn rss_kib(pid: u32) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (connections named longpoll-local, their channels), from `rabbitmqctl`.
fn amqp_usage() -> (Option<usize>, Option<usize>) {
    let Ok(output) = Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "channels", "client_properties"])
        .output()
    else {
        return (None, None);
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let ours: Vec<usize> = text
        .lines()
        .filter(|line| line.contains("\"longpoll-local\""))
        .filter_map(|line| line.split('\t').next()?.trim().parse().ok())
        .collect();
    if ours.is_empty() {
        (None, None)
    } else {
        (Some(ours.len()), Some(ours.iter().sum()))
    }
}

fn min(values: &[usize]) -> usize {
    values.iter().copied().min().unwrap_or(0)
}

fn max(values: &[usize]) -> usize {
    values.iter().copied().max().unwrap_or(0)
}

fn median(values: &mut [usize]) -> usize {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// A number in [0, 1) from `seed`, for jitter (SplitMix64; no dependency needed).
fn rand_fraction(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / u64::MAX as f64
}
