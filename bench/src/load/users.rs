//! The load's HTTP users: each holds a poll and re-polls as soon as answered (guide
//! mode, cursor mode with de-duplication by id, or Nchan's subscriber), backing off as
//! a real client does after a failure, and records what each answer brought.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use longpoll::{config::DEV_JWT_SECRET, token::TokenIssuer, topology::UserId};
use serde_json::Value;
use tokio::time::Instant;

use super::{
    LoadOptions, LoadReport,
    ledger::Ledger,
    report::CpuSample,
    window::{fresh_user_base, publish_window},
};
use crate::{nchan, stats};

#[derive(Default)]
struct Counters {
    in_flight: AtomicUsize,
    answered: AtomicUsize,
    stop: AtomicBool,
    failures: Mutex<BTreeMap<u16, usize>>,
    last_failure: Mutex<Option<Instant>>,
}

/// Runs the load with HTTP users, polling `poll_url` and resuming as `resume` says;
/// returns when the drain period after the last publish is over.
pub(super) async fn run(
    options: &LoadOptions,
    poll_url: &dyn Fn(u64) -> String,
    resume: Resume,
) -> LoadReport {
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
        let poller = Poller {
            client: client.clone(),
            url: poll_url(base_user + n as u64),
            token,
            resume: resume.clone(),
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
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sample = || {
        let answered = counters.answered.load(Ordering::Relaxed);
        CpuSample::take(options.server_pid, options.broker_pid, answered)
    };
    let idle_started = sample();
    tokio::time::sleep(options.warm_up).await;
    let window_started = sample();
    let idle_cpu = idle_started.until(&window_started);

    let answered_before = counters.answered.load(Ordering::Relaxed);
    counters.failures.lock().unwrap().clear();
    let mut report = publish_window(options, &ledger, base_user, |report| {
        report.held.push(counters.in_flight.load(Ordering::Relaxed));
        report.answered = counters.answered.load(Ordering::Relaxed) - answered_before;
        if let Some(rss) = options.server_pid.and_then(stats::rss_kib) {
            report.rss_kib.push(rss);
        }
        report.window_cpu = Some(window_started.until(&sample()));
    })
    .await;
    report.idle_cpu = Some(idle_cpu);
    counters.stop.store(true, Ordering::Relaxed);
    for poller in pollers {
        poller.abort();
    }
    report.poll_failures = counters.failures.lock().unwrap().clone();
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
#[derive(Clone)]
pub(super) enum Resume {
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
            if let Resume::Nchan(resume) = &mut self.resume {
                *resume = nchan::resume_after(&response);
            }
            // Timed when the body has arrived, before it is parsed, as the floor's
            // consumers time a delivery before parsing it.
            let body = response.bytes().await;
            let now = Instant::now();
            let events = body
                .ok()
                .and_then(|body| serde_json::from_slice(&body).ok());
            let events = match (&self.resume, events) {
                (Resume::Nchan(_), Some(message)) => Some(vec![message]),
                (_, Some(Value::Object(mut body))) => match body.remove("events") {
                    Some(Value::Array(events)) => Some(events),
                    _ => Some(vec![]),
                },
                (_, Some(_)) => Some(vec![]),
                (_, None) => None,
            };
            let Some(events) = events else {
                // A 200 whose body did not arrive whole: its events never reached us.
                *counters.failures.lock().unwrap().entry(200).or_default() += 1;
                continue;
            };
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
