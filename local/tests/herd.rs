//! A reconnect herd on a fresh private RabbitMQ node: every client of a deploy, restart
//! or network blip polls at once, as a new user (no queue, no presence yet).

use std::{sync::Arc, time::Duration};

use longpoll::{config::DEV_JWT_SECRET, token::TokenIssuer};
use longpoll_local::{BrokerKind, Functions, cors, serve};
use longpoll_tests::{private_node::PrivateNode, unique_name, unique_user};
use tokio::time::Instant;

const POLL: &str = "/api/v1/communication/poll/events/";

/// 1,000 new users polling at once are all held: no 503 (at most a handful), since
/// set-ups queue within the poll's hold for the broker instead of failing at the first
/// per-step timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_a_thousand_new_users_is_held() {
    let node = PrivateNode::start(None);
    let config = longpoll::Config::new(&node.url(), None, &unique_name("herd"));
    let functions = Arc::new(Functions::new(config, BrokerKind::RabbitMq).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        functions,
        cors(&["*".to_owned()]),
        std::future::pending(),
    ));

    let issuer = TokenIssuer::new(DEV_JWT_SECRET.as_bytes());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let polls: Vec<_> = (0..1_000)
        .map(|_| {
            let token = issuer.mint(unique_user(), None, None, Duration::from_secs(600));
            let (client, url) = (client.clone(), format!("{base}{POLL}"));
            tokio::spawn(async move {
                let response = client.get(url).bearer_auth(token).send().await.unwrap();
                let status = response.status().as_u16();
                (status, response.text().await.unwrap())
            })
        })
        .collect();
    let mut failed = Vec::new();
    for poll in polls {
        let (status, body) = poll.await.unwrap();
        if status != 200 {
            failed.push(format!("{status} {body}"));
        }
    }
    eprintln!(
        "herd of 1,000: {} not 200, all answered after {:?}",
        failed.len(),
        started.elapsed()
    );
    assert!(
        failed.len() <= 5,
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}
