//! Bursty and hostile load against a running local server: a reconnect herd (N new users
//! polling at once, as after a deploy, a restart or a network blip) and presence lookups
//! of offline users.
//!
//! The herd reports the ramp: how long from the N simultaneous first polls until the
//! broker shows a consumer on every one of their queues (read with `rabbitmqctl` once a
//! second, so to within a second or two), and how many polls did not answer 200. Each
//! user retries as the browser client does: after `Retry-After` plus up to a second.

use std::{
    collections::{BTreeMap, HashSet},
    process::Command,
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
    /// From the first poll until the last answered.
    pub all_answered_after: Duration,
}

impl HerdReport {
    pub fn failures(&self) -> usize {
        self.failed.values().sum()
    }

    pub fn print(&self) {
        let held = self
            .all_held_after
            .map_or("not all held".to_owned(), |after| {
                format!("all held after {:.1} s", after.as_secs_f64())
            });
        println!(
            "herd of {} new users at once: {held}; first polls not 200: {} {:?}; retries: {}; every user answered 200 after {:.1} s",
            self.users,
            self.failures(),
            self.failed,
            self.retried,
            self.all_answered_after.as_secs_f64()
        );
    }
}

/// `users` new users poll `url` at once; `node` is the broker's node (`rabbitmqctl -n`).
pub async fn herd(url: &str, node: &str, users: usize) -> HerdReport {
    let base = load::fresh_user_base();
    let ids: Vec<u64> = (0..users as u64).map(|n| base + n).collect();
    let issuer = TokenIssuer::new(DEV_JWT_SECRET.as_bytes());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = Instant::now();
    let polls: Vec<_> = ids
        .iter()
        .map(|&id| {
            let token = issuer.mint(UserId(id), None, None, Duration::from_secs(3600));
            let (client, url) = (
                client.clone(),
                format!("{url}/api/v1/communication/poll/events/"),
            );
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                loop {
                    let status = match client.get(&url).bearer_auth(&token).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    statuses.push(status);
                    if status == 200 || started.elapsed() > Duration::from_secs(120) {
                        return statuses;
                    }
                    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u64;
                    tokio::time::sleep(Duration::from_millis(2_000 + jitter)).await;
                }
            })
        })
        .collect();
    let watching: HashSet<u64> = ids.iter().copied().collect();
    let node = node.to_owned();
    let held = tokio::task::spawn_blocking(move || {
        while started.elapsed() < Duration::from_secs(120) {
            if consumers_of(&node, &watching) >= watching.len() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        None
    });
    let (mut failed, mut retried) = (BTreeMap::new(), 0);
    for poll in polls {
        let statuses = poll.await.unwrap();
        if statuses[0] != 200 {
            *failed.entry(statuses[0]).or_default() += 1;
        }
        retried += statuses.iter().filter(|status| **status != 200).count();
    }
    let all_answered_after = started.elapsed();
    let all_held_after = held.await.unwrap();
    HerdReport {
        users,
        failed,
        retried,
        all_held_after,
        all_answered_after,
    }
}

/// Consumers on the queues of `users`, as the broker lists them.
fn consumers_of(node: &str, users: &HashSet<u64>) -> usize {
    let Ok(output) = Command::new("rabbitmqctl")
        .args(["-n", node, "-q", "list_queues", "name", "consumers"])
        .output()
    else {
        return 0;
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, consumers) = line.split_once('\t')?;
            let user: u64 = name.strip_prefix("event_queue:user:")?.parse().ok()?;
            users
                .contains(&user)
                .then(|| consumers.trim().parse::<usize>().ok())?
        })
        .filter(|consumers| *consumers > 0)
        .count()
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

/// The whole hostile run, printed: herds of each size, then the lookups.
pub async fn run(url: &str, node: &str, herds: &[usize], lookups: usize) {
    for &users in herds {
        herd(url, node, users).await.print();
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
