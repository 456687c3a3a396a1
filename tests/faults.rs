//! Faults injected on a private RabbitMQ node each test starts itself (never the shared
//! broker): a broker restart with confirmed events queued, a broker that is down at
//! start-up and for 30 s, and a user who does not poll while 1,000 events arrive.
//! (A connection killed mid-hold is `tests/reconnect.rs`.)

use std::time::Duration;

use longpoll::topology::Audience;
use longpoll_testkit::{private_node::PrivateNode, *};
use tokio::time::Instant;

fn node_config(node: &PrivateNode) -> longpoll::Config {
    longpoll::Config::new(&node.url(), Some(JWT_SECRET), &unique_name("faults"))
}

/// Events confirmed before a broker restart are all delivered after it, once each, and
/// the function reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_events_survive_a_broker_restart() {
    let node = PrivateNode::start(None);
    let config = node_config(&node);
    let broker = rabbit(&config);
    let user = subscriber(unique_user(), None);
    declare(&*broker, &user).await;
    let bodies: Vec<_> = (1..=50).map(message).collect();
    let receipts = publish_all(&*broker, Audience::User(user.user_id), &bodies).await;
    assert!(receipts.iter().all(|receipt| receipt.routed));

    node.stop_app();
    node.start_app();

    let mut got = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(30);
    while got.len() < 50 && Instant::now() < give_up {
        // The first poll may meet the dead connection (503) before the next reconnects.
        if let Ok(events) = broker
            .wait_for_events(
                &user,
                &PollBudget::until(Instant::now() + Duration::from_secs(2)),
            )
            .await
        {
            got.extend(events.iter().map(message_data_id));
        }
    }
    assert_eq!(got, (1..=50).collect::<Vec<_>>(), "all, in order, once");
    let more = broker
        .wait_for_events(
            &user,
            &PollBudget::until(Instant::now() + Duration::from_millis(500)),
        )
        .await
        .unwrap();
    assert!(more.is_empty(), "none twice");
}

/// A broker that is down when the function starts and stays down for 30 s: every poll
/// answers 503 with `Retry-After` within the AMQP timeout, and once it is back the
/// next poll works, with no restart of the function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_at_start_up_then_back_needs_no_restart() {
    let node = PrivateNode::start(None);
    node.stop_app();
    let config = node_config(&node);
    let app = app(config.clone(), rabbit(&config), Duration::from_secs(1));
    let token = token(unique_user(), None);
    let poll = || {
        let request = Fixture::new("poll-events")
            .authorization(&format!("Bearer {token}"))
            .request();
        poll_events::handle(&app, request)
    };

    let down_since = Instant::now();
    let mut answers = 0;
    while down_since.elapsed() < Duration::from_secs(30) {
        let started = Instant::now();
        let response = poll().await.unwrap();
        assert_error(&response, 503, "broker_unavailable");
        assert_eq!(response.headers()["retry-after"], "2");
        assert!(
            started.elapsed() < config.amqp_timeout + Duration::from_millis(500),
            "answered in {:?}",
            started.elapsed()
        );
        answers += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(answers >= 10);

    node.start_app();
    let response = poll().await.unwrap();
    assert_eq!(response.status(), 200, "{:?}", json_of(&response));
}

/// A user who does not poll while 1,000 events arrive keeps the newest 100: the broker
/// holds 100 messages for them, not 1,000, and the next poll returns 901 to 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_does_not_poll_keeps_the_newest_hundred() {
    let node = PrivateNode::start(None);
    let broker = rabbit(&node_config(&node));
    let user = subscriber(unique_user(), None);
    declare(&*broker, &user).await;
    for chunk in (1..=1000).collect::<Vec<_>>().chunks(100) {
        let bodies: Vec<_> = chunk.iter().map(|&n| message(n)).collect();
        publish_all(&*broker, Audience::User(user.user_id), &bodies).await;
    }
    let queued = node.ctl(&["list_queues", "name", "messages"]);
    let line = queued
        .lines()
        .find(|line| line.starts_with(&user.queue_name()))
        .expect("the user queue");
    assert_eq!(line.split('\t').nth(1), Some("100"), "{line}");

    assert_eq!(
        polled_ids(&*broker, &user, Duration::from_secs(5)).await,
        (901..=1000).collect::<Vec<_>>()
    );
}
