//! Hostile and bursty clients, each test on a private RabbitMQ node of its own (they load
//! or break the broker): no one client's requests may hurt the others.

use std::time::Duration;

use longpoll::topology::{Audience, DeviceId, Subscriber, presence_queue_name};
use longpoll_testkit::{private_node::PrivateNode, *};
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
    broker
        .mark_online(online, None, &PollBudget::until(in_a_while()))
        .await
        .unwrap();
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
                    .wait_for_events(
                        &user,
                        &PollBudget::until(Instant::now() + Duration::from_secs(8)),
                    )
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

/// One user polling from 500 device ids keeps at most the cap of device queues (each
/// with its binding record), so a 100 KB college notice is copied a handful of times
/// rather than 500; another user's events arrive as fast meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_spray_keeps_the_cap_and_slows_no_one() {
    let node = PrivateNode::start(None);
    let config = node_config(&node);
    let cap = config.max_devices_per_user;
    let broker = rabbit(&config);
    let college = unique_college();
    let sprayer = unique_user();
    let spray = {
        let broker = broker.clone();
        tokio::spawn(async move {
            for n in 0..500 {
                let tab = Subscriber {
                    device: DeviceId::parse(&format!("tab-{n}")),
                    ..subscriber(sprayer, Some(college))
                };
                broker
                    .wait_for_events(
                        &tab,
                        &PollBudget::until(Instant::now() + Duration::from_millis(10)),
                    )
                    .await
                    .expect("a device poll");
            }
        })
    };
    let bystander = subscriber(unique_user(), None);
    declare(&*broker, &bystander).await;
    let mut slowest = Duration::ZERO;
    while !spray.is_finished() {
        let waiter = {
            let (broker, user) = (broker.clone(), bystander.clone());
            tokio::spawn(async move {
                broker
                    .wait_for_events(
                        &user,
                        &PollBudget::until(Instant::now() + Duration::from_secs(5)),
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let published = Instant::now();
        publish(&*broker, Audience::User(bystander.user_id), &message(1)).await;
        let events = waiter.await.unwrap().unwrap();
        slowest = slowest.max(published.elapsed());
        assert_eq!(events.len(), 1);
    }
    spray.await.unwrap();
    eprintln!("bystander's slowest publish-to-answer during a 500-device spray: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");

    let prefix = format!("event_queue:user:{sprayer}:");
    let queues = node.ctl(&["list_queues", "name"]);
    let devices = queues
        .lines()
        .filter(|name| name.starts_with(&prefix))
        .count();
    let records = queues
        .lines()
        .filter(|name| name.starts_with(&format!("bindings:{prefix}")))
        .count();
    assert_eq!((devices, records), (cap, cap), "{queues}");

    let big = notice(&"x".repeat(100_000));
    publish(&*broker, Audience::College(college), &big).await;
    let copies: usize = node
        .ctl(&["list_queues", "name", "messages"])
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .map(|line| line.rsplit('\t').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(copies, cap, "one copy per device queue kept");
}

/// The memory broker under the same spray, 5,000 devices: the cap holds, and the college
/// notice is published in moments instead of stalling the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_spray_on_the_memory_broker_keeps_the_cap() {
    let config = config(&unique_name("hostile"));
    let broker = memory(&config);
    let college = unique_college();
    let sprayer = unique_user();
    for n in 0..5_000 {
        let tab = Subscriber {
            device: DeviceId::parse(&format!("tab-{n}")),
            ..subscriber(sprayer, Some(college))
        };
        broker
            .wait_for_events(&tab, &PollBudget::until(Instant::now()))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let big = notice(&"x".repeat(100_000));
    let receipt = publish(&*broker, Audience::College(college), &big).await;
    assert!(receipt.routed);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    let mut copies = 0;
    for n in 0..5_000 {
        let tab = Subscriber {
            device: DeviceId::parse(&format!("tab-{n}")),
            ..subscriber(sprayer, Some(college))
        };
        if n < 5_000 - config.max_devices_per_user {
            continue;
        }
        copies += broker
            .wait_for_events(&tab, &PollBudget::until(Instant::now()))
            .await
            .unwrap()
            .len();
    }
    assert_eq!(copies, config.max_devices_per_user);
}
