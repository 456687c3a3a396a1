//! Bursty and hostile load against a running local server: a reconnect herd (N new users
//! polling at once, as after a deploy, a restart or a network blip) and presence lookups
//! of offline users.
//!
//! The herd reports the ramp: how long from the N simultaneous first polls until the
//! server's connection carries a consumer for every one of them (the channels' consumer
//! counts, read with `rabbitmqctl` twice a second; a private node carries nothing
//! else), and how many polls did not answer 200. Each user behaves as the browser
//! client does: re-polls at once after an answer, and after `Retry-After` plus up to a
//! second after an error, until the herd is over.

use std::{
    collections::BTreeMap,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use longpoll::{
    config::{DEV_JWT_SECRET, DEV_PUBLISH_KEY},
    token::TokenIssuer,
    topology::UserId,
};
use tokio::time::Instant;

use crate::{load, stats};

/// What a herd did.
pub struct HerdReport {
    pub users: usize,
    /// First polls that did not answer 200, by status (0: no answer).
    pub failed: BTreeMap<u16, usize>,
    /// Answers other than 200 in all, retries included.
    pub retried: usize,
    /// From the first poll until every user's queue had a consumer.
    pub all_held_after: Option<Duration>,
    /// From the first poll until every user had an answer of 200.
    pub all_answered_after: Duration,
    /// Polls sent once every user was held, over [`STEADY`]: whether the users stay held
    /// and answered once the herd is in.
    pub steady_polls: usize,
    /// Those that did not answer 200.
    pub steady_not_200: usize,
}

/// How long the users go on polling once all are held: three holds, so every user's
/// poll is answered and renewed at least twice.
pub const STEADY: Duration = Duration::from_millis(3 * 5_500 + 1_000);

impl HerdReport {
    /// The report as one JSON line ([`HerdReport::from_json`] reads it back); seconds as
    /// numbers, `null` for never.
    pub fn to_json(&self) -> serde_json::Value {
        let seconds = |after: Duration| (after != Duration::MAX).then_some(after.as_secs_f64());
        serde_json::json!({
            "users": self.users,
            "failed": self.failed,
            "retried": self.retried,
            "all_held_after": self.all_held_after.map(|after| after.as_secs_f64()),
            "all_answered_after": seconds(self.all_answered_after),
            "steady_polls": self.steady_polls,
            "steady_not_200": self.steady_not_200,
        })
    }

    pub fn from_json(json: &serde_json::Value) -> Option<Self> {
        let seconds = |key: &str| json[key].as_f64().map(Duration::from_secs_f64);
        Some(Self {
            users: json["users"].as_u64()? as usize,
            failed: serde_json::from_value(json["failed"].clone()).ok()?,
            retried: json["retried"].as_u64()? as usize,
            all_held_after: seconds("all_held_after"),
            all_answered_after: seconds("all_answered_after").unwrap_or(Duration::MAX),
            steady_polls: json["steady_polls"].as_u64()? as usize,
            steady_not_200: json["steady_not_200"].as_u64()? as usize,
        })
    }

    /// Herds that ran side by side, as one: every user held and answered once the last
    /// of them was.
    pub fn together(reports: Vec<HerdReport>) -> Self {
        let mut failed = BTreeMap::new();
        for report in &reports {
            for (status, count) in &report.failed {
                *failed.entry(*status).or_default() += count;
            }
        }
        Self {
            users: reports.iter().map(|report| report.users).sum(),
            failed,
            retried: reports.iter().map(|report| report.retried).sum(),
            all_held_after: reports
                .iter()
                .map(|report| report.all_held_after)
                .collect::<Option<Vec<_>>>()
                .and_then(|afters| afters.into_iter().max()),
            all_answered_after: reports
                .iter()
                .map(|report| report.all_answered_after)
                .max()
                .unwrap_or(Duration::MAX),
            steady_polls: reports.iter().map(|report| report.steady_polls).sum(),
            steady_not_200: reports.iter().map(|report| report.steady_not_200).sum(),
        }
    }

    pub fn failures(&self) -> usize {
        self.failed.values().sum()
    }

    pub fn print(&self) {
        let held = self
            .all_held_after
            .map_or("not all held".to_owned(), |after| {
                format!("all held after {:.1} s", after.as_secs_f64())
            });
        let answered = if self.all_answered_after == Duration::MAX {
            "some users never answered 200".to_owned()
        } else {
            format!(
                "every user answered 200 after {:.1} s",
                self.all_answered_after.as_secs_f64()
            )
        };
        println!(
            "herd of {} new users at once: {held}; first polls not 200: {} {:?}; answers not 200 in all: {}; {answered}; once all held, {} of {} polls not 200",
            self.users,
            self.failures(),
            self.failed,
            self.retried,
            self.steady_not_200,
            self.steady_polls,
        );
    }
}

/// `users` new users poll `url` at once; `nodes` are the broker nodes it uses
/// (`rabbitmqctl -n`; several when users are spread over brokers). All are held once the
/// nodes carry `held` consumers: `users`, or more when other herds run beside this one.
pub async fn herd(url: &str, nodes: &[String], users: usize, held: usize) -> HerdReport {
    let base = load::fresh_user_base();
    let ids: Vec<u64> = (0..users as u64).map(|n| base + n).collect();
    let issuer = TokenIssuer::new(DEV_JWT_SECRET.as_bytes());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = Instant::now();
    let over = Arc::new(AtomicBool::new(false));
    let polls: Vec<_> = ids
        .iter()
        .map(|&id| {
            let token = issuer.mint(UserId(id), None, None, Duration::from_secs(3600));
            let (client, url) = (
                client.clone(),
                format!("{url}/api/v1/communication/poll/events/"),
            );
            let over = over.clone();
            tokio::spawn(async move {
                let (mut statuses, mut answered) = (Vec::new(), None);
                while !over.load(Ordering::Relaxed) {
                    let sent = started.elapsed();
                    let status = match client.get(&url).bearer_auth(&token).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    statuses.push((sent, status));
                    if status == 200 {
                        answered.get_or_insert(started.elapsed());
                    } else {
                        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u64;
                        tokio::time::sleep(Duration::from_millis(2_000 + jitter)).await;
                    }
                }
                (statuses, answered)
            })
        })
        .collect();
    let nodes = nodes.to_vec();
    let all_held_after = tokio::task::spawn_blocking(move || {
        while started.elapsed() < Duration::from_secs(240) {
            if nodes.iter().map(|node| consumers_on(node)).sum::<usize>() >= held {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        None
    })
    .await
    .unwrap();
    // Everyone polls on through the steady window, after which the herd is over.
    tokio::time::sleep(STEADY).await;
    over.store(true, Ordering::Relaxed);
    let steady_from = all_held_after.unwrap_or(Duration::MAX);
    let (mut failed, mut retried, mut all_answered_after) = (BTreeMap::new(), 0, Duration::ZERO);
    let (mut steady_polls, mut steady_not_200) = (0, 0);
    for poll in polls {
        let (statuses, answered) = poll.await.unwrap();
        if statuses[0].1 != 200 {
            *failed.entry(statuses[0].1).or_default() += 1;
        }
        retried += statuses.iter().filter(|(_, status)| *status != 200).count();
        all_answered_after = all_answered_after.max(answered.unwrap_or(Duration::MAX));
        for (_, status) in statuses.iter().filter(|(sent, _)| *sent >= steady_from) {
            steady_polls += 1;
            steady_not_200 += usize::from(*status != 200);
        }
    }
    HerdReport {
        users,
        failed,
        retried,
        all_held_after,
        all_answered_after,
        steady_polls,
        steady_not_200,
    }
}

/// Consumers on every channel of the node, as the broker counts them.
fn consumers_on(node: &str) -> usize {
    let Ok(output) = Command::new("rabbitmqctl")
        .args(["-n", node, "-q", "list_channels", "consumer_count"])
        .output()
    else {
        return 0;
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.trim().parse::<usize>().ok())
        .sum()
}

/// `lookups` presence lookups of 100 offline users each through the endpoint; the
/// time of each, sorted.
pub async fn offline_lookups(url: &str, lookups: usize) -> Vec<Duration> {
    let base = load::fresh_user_base();
    let ids: Vec<String> = (0..100).map(|n| (base + n).to_string()).collect();
    let token = TokenIssuer::new(DEV_JWT_SECRET.as_bytes()).mint(
        UserId(base + 1_000),
        None,
        None,
        Duration::from_secs(3600),
    );
    let client = reqwest::Client::new();
    let lookup = format!(
        "{url}/api/v1/communication/poll/online/?user_ids={}",
        ids.join(",")
    );
    let mut times = Vec::with_capacity(lookups);
    for _ in 0..lookups {
        let started = Instant::now();
        let response = client
            .get(&lookup)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "a presence lookup failed");
        response.bytes().await.unwrap();
        times.push(started.elapsed());
    }
    // The publish endpoint still works after them (it needs fresh channels too).
    let published = client
        .post(format!("{url}/api/v1/communication/events/"))
        .header("X-Api-Key", DEV_PUBLISH_KEY)
        .json(&serde_json::json!({"user_id": base, "event": "message", "data": {"id": 1, "sender_id": 2, "sender_name": "b", "message": "m"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        published.status(),
        200,
        "a publish after the lookups failed"
    );
    times.sort();
    times
}

/// `longpoll-bench herd`: reconnect herds (new users polling at once) and offline
/// presence lookups against a running local server on the broker node `--node`.
#[derive(clap::Args)]
pub struct Options {
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    pub url: String,
    /// The broker nodes (`rabbitmqctl -n`), private ones: one, or each shard's.
    #[arg(long = "node", value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// Herd sizes, one herd each.
    #[arg(long = "users", value_delimiter = ',', default_value = "1000,10000")]
    pub herds: Vec<usize>,
    /// Consumers that mean every user is held, when other herds run beside this one
    /// (default: the herd's own users).
    #[arg(long)]
    pub expect_held: Option<usize>,
    /// Print each herd's report as one JSON line (for a parent process to read).
    #[arg(long)]
    pub json: bool,
    /// Presence lookups of 100 offline users after the herds.
    #[arg(long, default_value_t = 1000)]
    pub lookups: usize,
}

/// The whole hostile run, printed: herds of each size, then the lookups.
pub async fn run(options: &Options) {
    let (url, herds, lookups) = (options.url.as_str(), &options.herds, options.lookups);
    for &users in herds {
        let held = options.expect_held.unwrap_or(users);
        let report = herd(url, &options.nodes, users, held).await;
        match options.json {
            true => println!("{}", report.to_json()),
            false => report.print(),
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
    if lookups > 0 {
        let times = offline_lookups(url, lookups).await;
        println!(
            "{} presence lookups of 100 offline users ({} ids): p50 {} ms, p99 {} ms; a publish afterwards answered 200",
            lookups,
            lookups * 100,
            stats::ms(stats::percentile_ms(&times, 0.5)),
            stats::ms(stats::percentile_ms(&times, 0.99)),
        );
    }
}
