//! The load every HTTP benchmark shares: N users each holding a poll against a server
//! and re-polling as soon as answered, while events are published at R a second to
//! random users; every event is followed from its publish to the poll that returns it.
//!
//! Events carry their sequence number as `data.sender_id`, so a response names the
//! publishes it answers. An event is *lost* when its publish was confirmed but no poll
//! returned it by the end (the pollers keep polling for a drain period after the last
//! publish); *duplicated* when it reached a user under two different ids (the same id
//! twice is cursor mode's documented redelivery, which clients de-duplicate).
//!
//! The same load runs against the yardstick, Nchan ([`crate::nchan`]), with its own
//! protocol: events published by HTTP to the user's channel, long-poll subscribers
//! resuming from the previous answer's `Last-Modified` and `Etag`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use longpoll::{
    Broker,
    broker::Publication,
    config::DEV_JWT_SECRET,
    event::EventBody,
    token::TokenIssuer,
    topology::{Audience, UserId},
};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{consumers, nchan, stats};

/// Where the load's events are published.
#[derive(Clone)]
pub enum PublishVia {
    /// `POST /api/v1/communication/events/` on the server, with this API key.
    Endpoint { api_key: String },
    /// Straight to the broker through the library (persistent, confirmed), as a
    /// backend publishing over AMQP does.
    Library(Arc<dyn Broker>),
    /// `POST /pub/<user>` on Nchan.
    Nchan,
}

/// How the simulated users poll.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PollMode {
    /// The guide's plain poll: `GET poll/events/`.
    Guide,
    /// Cursor mode (`?device=…&ack=<last id>`) with de-duplication by id, as the
    /// browser client polls.
    Cursor,
    /// Nchan's long-poll subscriber, `GET /sub/<user>`.
    Nchan,
    /// No HTTP: each user an AMQP consumer of their own queue, the floor
    /// ([`crate::consumers`]); the load's `url` is then the AMQP URL.
    Consumer,
}

pub struct LoadOptions {
    /// The server's base URL.
    pub url: String,
    pub users: usize,
    /// New users per second while ramping up.
    pub ramp_per_second: usize,
    /// Events per second, to random users.
    pub publish_rate: u64,
    /// How long the users poll with nothing published once the ramp has settled, so
    /// that the window measures steady state rather than the ramp's set-ups.
    pub warm_up: Duration,
    /// How long events are published, after the ramp and the warm-up.
    pub seconds: u64,
    /// At most how long the polls go on after the last publish, until every confirmed
    /// event has arrived; an event still missing then counts as lost.
    pub drain: Duration,
    pub publish: PublishVia,
    pub mode: PollMode,
    /// The server's process, for its RSS once a second.
    pub server_pid: Option<u32>,
}

/// What a load run saw.
#[derive(Default)]
pub struct LoadReport {
    /// Polls in flight, sampled once a second while publishing.
    pub held: Vec<usize>,
    /// Polls answered with 200 while publishing.
    pub answered: usize,
    /// Failed polls and publish attempts by HTTP status (0: no response at all; 200: a
    /// poll's body that could not be read).
    pub poll_failures: BTreeMap<u16, usize>,
    pub publish_failures: BTreeMap<u16, usize>,
    /// Events whose publish was confirmed and routed to the user's queue.
    pub published: usize,
    /// Publishes the broker confirmed but routed to no queue (not counted above).
    pub unrouted: usize,
    /// Of those, how many a poll returned all the same (a misreported `routed`).
    pub unrouted_but_delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Publish (first attempt) to the response that returned the event, per event.
    pub latencies: Vec<Duration>,
    /// The server's RSS in KiB, once a second while publishing.
    pub rss_kib: Vec<usize>,
    /// How long the publishing window lasted.
    pub window: Duration,
}

impl LoadReport {
    /// 5xx responses to polls and publishes (transport errors not included).
    pub fn server_errors(&self) -> usize {
        self.poll_failures
            .iter()
            .chain(&self.publish_failures)
            .filter(|(status, _)| **status >= 500)
            .map(|(_, count)| count)
            .sum()
    }

    /// One line: latency, events, failures.
    pub fn summary(&self) -> String {
        format!(
            "{}; events {} (unrouted {}, of which delivered {}), lost {}, duplicated {}; failed polls {:?}, failed publishes {:?}",
            self.latency_line(),
            self.published,
            self.unrouted,
            self.unrouted_but_delivered,
            self.lost,
            self.duplicated,
            self.poll_failures,
            self.publish_failures
        )
    }

    /// "publish→response p50 … ms, p90 …, p99 …, max …".
    pub fn latency_line(&self) -> String {
        let [p50, p90, p99, max] = self.latency_ms().map(stats::ms);
        format!("publish→response p50 {p50} ms, p90 {p90} ms, p99 {p99} ms, max {max} ms")
    }

    /// (p50, p90, p99, max) publish-to-response latency in milliseconds.
    pub fn latency_ms(&self) -> [f64; 4] {
        let mut latencies = self.latencies.clone();
        latencies.sort();
        [0.5, 0.9, 0.99, 1.0].map(|q| stats::percentile_ms(&latencies, q))
    }
}

/// The bookkeeping shared by pollers and publisher.
#[derive(Default)]
pub(crate) struct Ledger {
    /// Sequence number → when its first publish attempt started (until delivered).
    pending: HashMap<u64, Instant>,
    /// Sequence numbers whose publish was confirmed and routed.
    confirmed: HashSet<u64>,
    /// Sequence numbers the broker reported routed to no queue.
    unrouted: HashSet<u64>,
    /// Sequence number → the event id it was first delivered under.
    delivered: HashMap<u64, String>,
    duplicated: usize,
    latencies: Vec<Duration>,
}

impl Ledger {
    fn all_delivered(&self) -> bool {
        self.confirmed
            .iter()
            .all(|seq| self.delivered.contains_key(seq))
    }

    /// Event `seq` reached its user under `id` at `at`.
    pub(crate) fn delivered(&mut self, seq: u64, id: &str, at: Instant) {
        match self.delivered.get(&seq) {
            Some(first_id) if first_id != id => self.duplicated += 1,
            Some(_) => {}
            None => {
                self.delivered.insert(seq, id.to_owned());
                if let Some(published) = self.pending.remove(&seq) {
                    self.latencies.push(at - published);
                }
            }
        }
    }
}

#[derive(Default)]
struct Counters {
    in_flight: AtomicUsize,
    answered: AtomicUsize,
    stop: AtomicBool,
    failures: Mutex<BTreeMap<u16, usize>>,
    last_failure: Mutex<Option<Instant>>,
}

/// Runs the load; returns when the drain period after the last publish is over.
pub async fn run(options: LoadOptions) -> LoadReport {
    if options.mode == PollMode::Consumer {
        return consumers::run(options).await;
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.users + 100)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let counters = Arc::new(Counters::default());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let base_user = fresh_user_base();
    let issuer = TokenIssuer::new(DEV_JWT_SECRET.as_bytes());

    let ramp_started = Instant::now();
    let mut pollers = Vec::with_capacity(options.users);
    for n in 0..options.users {
        let token = issuer.mint(
            UserId(base_user + n as u64),
            None,
            None,
            Duration::from_secs(3600),
        );
        let user = base_user + n as u64;
        let (url, resume) = match options.mode {
            PollMode::Nchan => (format!("{}/sub/{user}", options.url), Resume::Nchan(None)),
            mode => (
                format!("{}/api/v1/communication/poll/events/", options.url),
                if mode == PollMode::Cursor {
                    Resume::Cursor(String::new(), HashSet::new())
                } else {
                    Resume::Guide
                },
            ),
        };
        let poller = Poller {
            client: client.clone(),
            url,
            token,
            resume,
            jitter_seed: n as u64,
        };
        pollers.push(tokio::spawn(poller.run(counters.clone(), ledger.clone())));
        if (n + 1) % options.ramp_per_second.max(1) == 0 {
            let due = ramp_started
                + Duration::from_secs_f64((n + 1) as f64 / options.ramp_per_second as f64);
            tokio::time::sleep_until(due).await;
        }
    }
    // Publishing starts once 99 % of the users hold a poll (the others are between two
    // polls) and no poll has failed for two seconds, or after a minute; then a second
    // more for the last ones' queues to be declared. An event to a user without a queue
    // is not routed, and one to a user still backing off after a 503 of the ramp would
    // measure the back-off.
    let settled_by = Instant::now() + Duration::from_secs(60);
    let settled = options.users - options.users / 100;
    let quiet_for = Duration::from_secs(2);
    loop {
        let holding = counters.in_flight.load(Ordering::Relaxed) >= settled;
        let quiet = counters
            .last_failure
            .lock()
            .unwrap()
            .is_none_or(|at| at.elapsed() >= quiet_for);
        if (holding && quiet) || Instant::now() >= settled_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1) + options.warm_up).await;

    let answered_before = counters.answered.load(Ordering::Relaxed);
    counters.failures.lock().unwrap().clear();
    let mut report = publish_window(&options, &ledger, base_user, |report| {
        report.held.push(counters.in_flight.load(Ordering::Relaxed));
        report.answered = counters.answered.load(Ordering::Relaxed) - answered_before;
        if let Some(rss) = options.server_pid.and_then(stats::rss_kib) {
            report.rss_kib.push(rss);
        }
    })
    .await;
    counters.stop.store(true, Ordering::Relaxed);
    for poller in pollers {
        poller.abort();
    }
    report.poll_failures = counters.failures.lock().unwrap().clone();
    report
}

/// The measured part of a load, whoever the users are: publishes for the window
/// (calling `each_second` once a second meanwhile), then waits until every confirmed
/// event has arrived or the drain period is over, and reports what the ledger saw.
pub(crate) async fn publish_window(
    options: &LoadOptions,
    ledger: &Arc<Mutex<Ledger>>,
    base_user: u64,
    mut each_second: impl FnMut(&mut LoadReport),
) -> LoadReport {
    let window_started = Instant::now();
    let publisher = tokio::spawn(publish_steadily(
        reqwest::Client::new(),
        options.url.clone(),
        options.publish.clone(),
        ledger.clone(),
        (base_user, options.users as u64),
        options.publish_rate,
        Duration::from_secs(options.seconds),
    ));
    let mut report = LoadReport::default();
    while window_started.elapsed() < Duration::from_secs(options.seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        each_second(&mut report);
    }
    report.window = window_started.elapsed();
    report.publish_failures = publisher.await.unwrap();
    // The drain: the users go on receiving until every confirmed event has arrived, or
    // for `drain`.
    let drained_by = Instant::now() + options.drain;
    while Instant::now() < drained_by && !ledger.lock().unwrap().all_delivered() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ledger = ledger.lock().unwrap();
    report.published = ledger.confirmed.len();
    report.unrouted = ledger.unrouted.len();
    report.unrouted_but_delivered = ledger
        .unrouted
        .iter()
        .filter(|seq| ledger.delivered.contains_key(seq))
        .count();
    report.lost = ledger
        .confirmed
        .iter()
        .filter(|seq| !ledger.delivered.contains_key(seq))
        .count();
    report.duplicated = ledger.duplicated;
    report.latencies = ledger.latencies.clone();
    report
}

/// One simulated user.
struct Poller {
    client: reqwest::Client,
    url: String,
    token: String,
    resume: Resume,
    jitter_seed: u64,
}

/// Where a user's next poll resumes from.
enum Resume {
    Guide,
    /// Cursor mode: the id of the last event received, and every id received so far
    /// (for de-duplication).
    Cursor(String, HashSet<String>),
    /// Nchan: the `Last-Modified` and `Etag` of the last message received.
    Nchan(Option<(String, String)>),
}

impl Poller {
    async fn run(mut self, counters: Arc<Counters>, ledger: Arc<Mutex<Ledger>>) {
        while !counters.stop.load(Ordering::Relaxed) {
            let request = match &self.resume {
                Resume::Guide => self.client.get(&self.url).bearer_auth(&self.token),
                Resume::Cursor(acked, _) => self
                    .client
                    .get(format!("{}?device=bench&ack={acked}", self.url))
                    .bearer_auth(&self.token),
                Resume::Nchan(resume) => nchan::subscribe(&self.client, &self.url, resume.as_ref()),
            };
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let outcome = request.send().await;
            counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            let response = match outcome {
                Ok(response) if response.status() == 200 => response,
                // Nchan's answer to a hold that ran out.
                Ok(response)
                    if response.status() == 408 && matches!(self.resume, Resume::Nchan(_)) =>
                {
                    counters.answered.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                other => {
                    let status = other
                        .as_ref()
                        .map_or(0, |response| response.status().as_u16());
                    *counters.failures.lock().unwrap().entry(status).or_default() += 1;
                    *counters.last_failure.lock().unwrap() = Some(Instant::now());
                    let retry_after = other.ok().and_then(|response| retry_after(&response));
                    self.back_off(retry_after).await;
                    continue;
                }
            };
            let events = match &mut self.resume {
                Resume::Nchan(resume) => {
                    *resume = nchan::resume_after(&response);
                    response.json::<Value>().await.map(|message| vec![message])
                }
                _ => response.json::<Value>().await.map(|body| match body {
                    Value::Object(mut body) => match body.remove("events") {
                        Some(Value::Array(events)) => events,
                        _ => vec![],
                    },
                    _ => vec![],
                }),
            };
            let Ok(events) = events else {
                // A 200 whose body did not arrive whole: its events never reached us.
                *counters.failures.lock().unwrap().entry(200).or_default() += 1;
                continue;
            };
            let now = Instant::now();
            counters.answered.fetch_add(1, Ordering::Relaxed);
            let mut ledger = ledger.lock().unwrap();
            for event in &events {
                let id = event["id"].as_str().unwrap_or_default();
                if let Resume::Cursor(cursor, seen) = &mut self.resume {
                    cursor.clear();
                    cursor.push_str(id);
                    if !seen.insert(id.to_owned()) {
                        continue; // redelivered after a lost answer: already have it
                    }
                }
                if let Some(seq) = event["data"]["sender_id"].as_u64() {
                    ledger.delivered(seq, id, now);
                }
            }
        }
    }

    /// Waits as a real client does: as long as `Retry-After` asks (the 503 of a broker
    /// outage), else half a second, with jitter so that users who failed together do
    /// not retry together.
    async fn back_off(&mut self, retry_after: Option<Duration>) {
        self.jitter_seed = self.jitter_seed.wrapping_add(0x9E37_79B9);
        let wait = retry_after.unwrap_or(Duration::from_millis(500));
        tokio::time::sleep(wait.mul_f64(0.5 + stats::fraction(self.jitter_seed))).await;
    }
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds = response.headers().get("retry-after")?.to_str().ok()?;
    seconds.parse().ok().map(Duration::from_secs)
}

/// Publishes `rate` events a second for `window`, each to a random user of
/// `base..base + users`, each in a task of its own so a slow publish does not slow the
/// rate. A failed publish is retried (same sequence number) until the window ends.
/// Returns the failed attempts by status.
async fn publish_steadily(
    client: reqwest::Client,
    url: String,
    via: PublishVia,
    ledger: Arc<Mutex<Ledger>>,
    (base, users): (u64, u64),
    rate: u64,
    window: Duration,
) -> BTreeMap<u16, usize> {
    let failures = Arc::new(Mutex::new(BTreeMap::new()));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let mut tasks = Vec::new();
    let mut seq = 0u64;
    while started.elapsed() < window {
        tick.tick().await;
        let user = UserId(base + (stats::fraction(seq) * users as f64) as u64 % users);
        let (client, url, via, ledger, failures) = (
            client.clone(),
            url.clone(),
            via.clone(),
            ledger.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            ledger.lock().unwrap().pending.insert(seq, Instant::now());
            loop {
                // The same id on every attempt: an attempt that failed after the broker
                // took the event (its confirm lost with the connection) and its retry
                // reach the user as one event once de-duplicated by id.
                let id = format!("bench-{base}-{seq}");
                match publish_one(&client, &url, &via, user, seq, &id).await {
                    Ok(routed) => {
                        let mut ledger = ledger.lock().unwrap();
                        if routed {
                            ledger.confirmed.insert(seq);
                        } else {
                            ledger.pending.remove(&seq);
                            ledger.unrouted.insert(seq);
                        }
                        return;
                    }
                    Err(status) => {
                        *failures.lock().unwrap().entry(status).or_default() += 1;
                        if started.elapsed() >= window {
                            ledger.lock().unwrap().pending.remove(&seq);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
        seq += 1;
    }
    for task in tasks {
        let _ = task.await;
    }
    Arc::try_unwrap(failures).unwrap().into_inner().unwrap()
}

/// One event; whether it was routed, or the failed attempt's status (0: no response).
async fn publish_one(
    client: &reqwest::Client,
    url: &str,
    via: &PublishVia,
    user: UserId,
    seq: u64,
    id: &str,
) -> Result<bool, u16> {
    match via {
        PublishVia::Endpoint { api_key } => {
            let mut body = message_json(seq);
            body["user_id"] = json!(user.0);
            body["id"] = json!(id);
            let response = client
                .post(format!("{url}/api/v1/communication/events/"))
                .header("x-api-key", api_key)
                .json(&body)
                .send()
                .await
                .map_err(|_| 0u16)?;
            if response.status() != 200 {
                return Err(response.status().as_u16());
            }
            let reply: Value = response.json().await.map_err(|_| 0u16)?;
            Ok(reply["published"][0]["routed"] == true)
        }
        PublishVia::Nchan => {
            let mut body = message_json(seq);
            body["id"] = json!(id);
            let response = client
                .post(format!("{url}/pub/{}", user.0))
                .json(&body)
                .send()
                .await
                .map_err(|_| 0u16)?;
            // 201: a subscriber was waiting; 202: the message was queued for one.
            match response.status().as_u16() {
                201 | 202 => Ok(true),
                status => Err(status),
            }
        }
        PublishVia::Library(broker) => {
            let mut event = message(seq).prepare();
            event.id = id.to_owned();
            let publication = Publication {
                audience: Audience::User(user),
                event,
            };
            let receipts = broker.publish(&[publication]).await.map_err(|_| 503u16)?;
            Ok(receipts[0].routed)
        }
    }
}

/// The benchmark's event: a chat message whose `sender_id` is its sequence number.
pub fn message(seq: u64) -> EventBody {
    serde_json::from_value(message_json(seq)).expect("a valid message event")
}

/// The benchmark's event as a producer's JSON (the publish endpoint's body item).
pub fn message_json(seq: u64) -> Value {
    json!({"event": "message", "data": {"id": seq, "sender_id": seq, "sender_name": "bench", "message": "hello"}})
}

/// The first of a range of user ids no earlier run used: 20 ids per millisecond of the
/// wall clock, so runs a second apart get ranges 20,000 apart (more users than any run
/// has), and leftover events of an earlier run never reach this one.
pub fn fresh_user_base() -> u64 {
    static OFFSET: AtomicUsize = AtomicUsize::new(0);
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    millis * 20 + OFFSET.fetch_add(20_000, Ordering::Relaxed) as u64
}
