//! Hostile and bursty clients, each test on a private RabbitMQ node of its own (they load
//! or break the broker): no one client's requests may hurt the others.

use std::time::Duration;

use longpoll::topology::{Audience, presence_queue_name};
use longpoll_tests::{private_node::PrivateNode, *};
use tokio::time::Instant;

fn node_config(node: &PrivateNode) -> longpoll::Config {
    longpoll::Config::new(&node.url(), Some(JWT_SECRET), &unique_name("hostile"))
}

/// Channels open on the node, by `rabbitmqctl`.
fn channels_on(node: &PrivateNode) -> usize {
    node.ctl(&["list_channels", "name"]).lines().count()
}

/// 100,000 lookups of offline users in a row: lookups and publishes still work, the
/// connection's channels stay few, and a 100-user lookup stays fast. (Each miss used to
/// be a passive declare whose 404 closed a channel whose id lapin never frees: after
/// about 2,000 misses every lookup and new publish channel failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_lookups_never_use_up_the_connection() {
    let node = PrivateNode::start(None);
    let broker = rabbit(&node_config(&node));
    let online = unique_user();
    broker.mark_online(online, None).await.unwrap();
    let offline: Vec<_> = (0..100).map(|_| unique_user()).collect();

    let mut times = Vec::new();
    for _ in 0..1_000 {
        let started = Instant::now();
        let answer = broker.is_online(&offline, None).await.expect("a lookup");
        times.push(started.elapsed());
        assert!(answer.iter().all(|online| !online));
    }
    times.sort();
    eprintln!(
        "100-user presence lookup after 100,000 offline ids: median {:?}, slowest {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert!(times[times.len() / 2] < Duration::from_millis(250));

    let mut mixed = offline.clone();
    mixed[57] = online;
    let answer = broker.is_online(&mixed, None).await.unwrap();
    assert_eq!(answer.iter().filter(|online| **online).count(), 1);
    assert!(answer[57]);
    let receipt = publish(&*broker, Audience::User(online), &message(1)).await;
    assert!(!receipt.routed, "nobody polls, but the publish answers");
    assert!(
        channels_on(&node) <= 8,
        "channels: {}",
        node.ctl(&["list_channels", "name"])
    );
    assert!(
        node.ctl(&["list_queues", "name", "messages"])
            .lines()
            .any(|line| line == format!("{}\t0", presence_queue_name(online))),
        "probes never stay in a presence queue"
    );
}

/// With the vhost's queue limit reached, a new user's poll is refused with a clear error
/// and 100 other users' held polls carry on and get their events. (Declares used to go
/// out unanswered on channels shared with held polls: the refusal closed the channel
/// and all 100 answered 503.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_declare_fails_only_its_own_poll() {
    let node = PrivateNode::start(None);
    let config = node_config(&node);
    let broker = rabbit(&config);
    let users: Vec<_> = (0..100).map(|_| subscriber(unique_user(), None)).collect();
    for user in &users {
        declare(&*broker, user).await;
    }
    let queues = node.ctl(&["list_queues", "name"]).lines().count();
    node.ctl(&[
        "set_vhost_limits",
        "-p",
        "/",
        &format!("{{\"max-queues\": {queues}}}"),
    ]);

    let holds: Vec<_> = users
        .iter()
        .map(|user| {
            let (broker, user) = (broker.clone(), user.clone());
            tokio::spawn(async move {
                broker
                    .wait_for_events(&user, Instant::now() + Duration::from_secs(8))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let app = app(config, broker.clone(), Duration::from_secs(1));
    let attacker = token(unique_user(), None);
    let request = Fixture::new("poll-events")
        .authorization(&format!("Bearer {attacker}"))
        .request();
    let response = poll_events::handle(&app, request).await.unwrap();
    let text = assert_error(&response, 503, "broker_refused");
    assert!(text.contains("refused"), "{text}");
    assert_eq!(response.headers()["retry-after"], "30");

    for user in &users {
        publish(&*broker, Audience::User(user.user_id), &message(9)).await;
    }
    for hold in holds {
        let events = hold.await.unwrap().expect("a held poll is not hurt");
        assert_eq!(events.iter().map(message_data_id).collect::<Vec<_>>(), [9]);
    }
}
