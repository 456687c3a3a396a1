//! A reconnect herd on a fresh private RabbitMQ node: every client of a deploy, restart
//! or network blip polls at once, as a new user (no queue, no presence yet).

use std::time::Duration;

use longpoll::{config::DEV_JWT_SECRET, token::TokenIssuer};
mod common;

use longpoll_local::BrokerKind;
use longpoll_testkit::{private_node::PrivateNode, unique_name, unique_user};
use tokio::time::Instant;

const POLL: &str = "/api/v1/communication/poll/events/";

/// The hold a poll's set-up may use before it answers 503.
const HOLD: Duration = Duration::from_millis(5500);

/// 1,000 new users polling at once are all absorbed: set-ups queue within the poll's
/// hold for the broker instead of failing at the first per-step timeout, so a poll
/// answers 503 only once its hold ran out, and every user retrying as told (after
/// `Retry-After`, plus jitter) is then held. How many first polls fit the hold depends
/// on the machine's speed, so that is a figure for `scripts/bench herd`, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_a_thousand_new_users_is_held() {
    let node = PrivateNode::start(None);
    let config = longpoll::Config::new(&node.url(), None, &unique_name("herd"));
    let base = common::start(config, BrokerKind::RabbitMq).await;

    let issuer = TokenIssuer::new(DEV_JWT_SECRET.as_bytes());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let users: Vec<_> = (0..1_000u64)
        .map(|index| {
            let token = issuer.mint(unique_user(), None, None, Duration::from_secs(600));
            let (client, url) = (client.clone(), format!("{base}{POLL}"));
            tokio::spawn(async move {
                // Answers other than 200, each with how long it took.
                let mut failed = Vec::new();
                while started.elapsed() < Duration::from_secs(90) {
                    let sent = Instant::now();
                    let response = client.get(&url).bearer_auth(&token).send().await.unwrap();
                    let status = response.status().as_u16();
                    if status == 200 {
                        return Ok(failed);
                    }
                    let retry_after: Option<u64> = response
                        .headers()
                        .get("retry-after")
                        .and_then(|value| value.to_str().ok()?.parse().ok());
                    let body = response.text().await.unwrap();
                    failed.push((status, retry_after, sent.elapsed(), body));
                    // Spread over a second, as the browser client's jitter does.
                    let jitter = Duration::from_millis(index * 7_919 % 1_000);
                    let wait = Duration::from_secs(retry_after.unwrap_or(2)) + jitter;
                    tokio::time::sleep(wait).await;
                }
                Err(failed)
            })
        })
        .collect();
    let (mut first_failed, mut never_held, mut early) = (0, 0, Vec::new());
    for user in users {
        let failed = match user.await.unwrap() {
            Ok(failed) => failed,
            Err(failed) => {
                never_held += 1;
                failed
            }
        };
        first_failed += usize::from(!failed.is_empty());
        early.extend(
            failed
                .into_iter()
                .filter(|(status, retry_after, took, body)| {
                    *status != 503
                        || retry_after.is_none()
                        || !body.contains("\"broker_unavailable\"")
                        || *took < HOLD - Duration::from_millis(500)
                }),
        );
    }
    eprintln!(
        "herd of 1,000: {first_failed} first polls not 200, every user held after {:?}",
        started.elapsed()
    );
    assert!(
        early.is_empty(),
        "{} answers were not a 503 after the hold with Retry-After: {:?}",
        early.len(),
        &early[..early.len().min(5)]
    );
    assert_eq!(never_held, 0, "users never answered 200 within 90 s");
}
