//! A 3-node cluster behind HAProxy (`scripts/private-cluster`), as Amazon MQ's
//! `CLUSTER_MULTI_AZ` broker runs, with `QUEUE_TYPE=quorum`: a rolling restart and a
//! crash under load lose no event that was answered `routed: true`, no publish is told
//! `routed: false` while its user polls, and no user goes without a successful poll for
//! longer than a hold plus a reconnect. And the honest answers when a queue's node is
//! down: 503 (a `QueueUnavailable`) for a queue that exists, `routed: false` only for one
//! that does not, and polls that carry on without a binding record or presence queue
//! that is out of reach.
//!
//! Needs HAProxy (Debian's package; `scripts/test` installs it). With
//! `LONGPOLL_SKIP_CLUSTER=1` (no root to install it), these tests say so and pass.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use longpoll::{
    Broker, Config, RabbitBroker,
    broker::{BrokerError, Poll, Presence, Publication, Publish},
    topology::{Audience, QueueType, Subscriber, UserId},
};
use longpoll_testkit::{
    JWT_SECRET, PollBudget, cluster::PrivateCluster, declare, message, subscriber, unique_name,
    unique_user,
};
use tokio::time::{Instant, sleep};

/// Users polling through the faults, spread over [`INSTANCES`] processes.
const USERS: usize = 40;
/// Broker connections the users poll through, as that many Lambda instances would.
const INSTANCES: usize = 4;
/// Events per second the backend publishes, each to one user in turn.
const RATE: u64 = 20;
/// The hold of each poll.
const HOLD: Duration = Duration::from_secs(2);
/// How long a client waits after a failed poll or publish (the 503's `Retry-After`,
/// shortened for the test).
const RETRY: Duration = Duration::from_millis(500);
/// How long a node stays down in the rolling restart and after the crash.
const DOWN: Duration = Duration::from_secs(8);
/// The longest a user may go without a successful poll: the bound, a hold plus
/// a reconnect.
const LONGEST_GAP: Duration = Duration::from_secs(10);

fn skipped() -> bool {
    let skip = std::env::var("LONGPOLL_SKIP_CLUSTER").is_ok_and(|value| value == "1");
    if skip {
        eprintln!("cluster test skipped: LONGPOLL_SKIP_CLUSTER=1 (no HAProxy)");
    }
    skip
}

fn quorum_broker(url: &str) -> Arc<RabbitBroker> {
    let config = Config {
        queue_type: QueueType::Quorum,
        ..Config::new(url, Some(JWT_SECRET), &unique_name("cluster"))
    };
    Arc::new(RabbitBroker::new(&config))
}

/// What the users received, and how long each went without a successful poll.
#[derive(Default)]
struct Received {
    ids: Mutex<HashMap<UserId, HashSet<String>>>,
    longest_gap: Mutex<Duration>,
    failed_polls: AtomicUsize,
}

/// One user's browser in cursor mode: polls, keeps what arrives, acknowledges it with
/// the next poll, and retries after [`RETRY`] when a poll fails.
async fn poll_until(
    broker: Arc<RabbitBroker>,
    user: Subscriber,
    received: Arc<Received>,
    stop: Arc<AtomicBool>,
) {
    let mut cursor = String::new();
    let mut last_success = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let budget = PollBudget::until(Instant::now() + HOLD);
        match broker.wait_with_cursor(&user, &cursor, &budget).await {
            Ok(events) => {
                let gap = last_success.elapsed();
                let mut longest = received.longest_gap.lock().unwrap();
                *longest = (*longest).max(gap);
                drop(longest);
                last_success = Instant::now();
                if let Some(last) = events.last() {
                    cursor = last.id.clone();
                }
                let mut ids = received.ids.lock().unwrap();
                let mine = ids.entry(user.user_id).or_default();
                mine.extend(events.into_iter().map(|event| event.id));
            }
            Err(_) => {
                received.failed_polls.fetch_add(1, Ordering::Relaxed);
                sleep(RETRY).await;
            }
        }
    }
}

/// What the backend was told.
#[derive(Default)]
struct Published {
    /// Event id → user, for every publish answered `routed: true`.
    routed: Mutex<HashMap<String, UserId>>,
    /// Publishes answered `routed: false` although their user was polling.
    wrongly_unrouted: AtomicUsize,
    /// Publishes that failed (503) and were retried with the same id.
    retried: AtomicUsize,
}

/// A backend publishing [`RATE`] events a second, one user after another, retrying a
/// failed publish with the same event (and so the same id) until it is answered.
async fn publish_until(
    broker: Arc<RabbitBroker>,
    users: Vec<UserId>,
    published: Arc<Published>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    for n in 0.. {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let user = users[n % users.len()];
        let publication = Publication {
            audience: Audience::User(user),
            event: message(n as i64).prepare(),
        };
        let receipt = loop {
            match broker.publish(std::slice::from_ref(&publication)).await {
                Ok(receipts) => break receipts.into_iter().next().expect("one receipt"),
                Err(_) => {
                    published.retried.fetch_add(1, Ordering::Relaxed);
                    sleep(RETRY).await;
                }
            }
        };
        if receipt.routed {
            published.routed.lock().unwrap().insert(receipt.id, user);
        } else {
            published.wrongly_unrouted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs a blocking cluster operation (a `rabbitmqctl` call) off the test's runtime.
async fn fault(cluster: &Arc<PrivateCluster>, operation: fn(&PrivateCluster, u16), node: u16) {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || operation(&cluster, node))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_and_a_crash_lose_nothing_in_cursor_mode() {
    if skipped() {
        return;
    }
    let cluster = Arc::new(PrivateCluster::start());
    let instances: Vec<Arc<RabbitBroker>> = (0..INSTANCES)
        .map(|_| quorum_broker(&cluster.url()))
        .collect();
    let users: Vec<Subscriber> = (0..USERS)
        .map(|_| subscriber(unique_user(), None))
        .collect();
    for (index, user) in users.iter().enumerate() {
        declare(&*instances[index % INSTANCES], user).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(Received::default());
    let pollers: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(index, user)| {
            tokio::spawn(poll_until(
                instances[index % INSTANCES].clone(),
                user.clone(),
                received.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let published = Arc::new(Published::default());
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish_until(
        quorum_broker(&cluster.url()),
        users.iter().map(|user| user.user_id).collect(),
        published.clone(),
        stop_publishing.clone(),
    ));

    // A maintenance window: each node in turn leaves and comes back. Then a crash.
    sleep(Duration::from_secs(3)).await;
    for node in 1..=3 {
        fault(&cluster, PrivateCluster::stop_node, node).await;
        sleep(DOWN).await;
        fault(&cluster, PrivateCluster::start_node, node).await;
        sleep(Duration::from_secs(3)).await;
    }
    fault(&cluster, PrivateCluster::kill_node, 2).await;
    sleep(DOWN).await;
    fault(&cluster, PrivateCluster::start_node, 2).await;
    sleep(Duration::from_secs(3)).await;

    // The backend stops; the users poll until every routed event has arrived.
    stop_publishing.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let routed = published.routed.lock().unwrap().clone();
    let missing = || {
        let ids = received.ids.lock().unwrap();
        routed
            .iter()
            .filter(|(id, user)| !ids.get(user).is_some_and(|mine| mine.contains(*id)))
            .count()
    };
    let drained_by = Instant::now() + Duration::from_secs(20);
    while missing() > 0 && Instant::now() < drained_by {
        sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for poller in pollers {
        poller.await.unwrap();
    }

    let longest_gap = *received.longest_gap.lock().unwrap();
    eprintln!(
        "{} events routed, {} retried publishes, {} failed polls, longest gap {longest_gap:?}",
        routed.len(),
        published.retried.load(Ordering::Relaxed),
        received.failed_polls.load(Ordering::Relaxed),
    );
    assert!(
        routed.len() > 500,
        "the backend kept publishing: {}",
        routed.len()
    );
    assert_eq!(missing(), 0, "events answered routed: true were lost");
    assert_eq!(
        published.wrongly_unrouted.load(Ordering::Relaxed),
        0,
        "publishes answered routed: false while their user polled"
    );
    assert!(
        longest_gap <= LONGEST_GAP,
        "a user went {longest_gap:?} without a successful poll"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_node_gets_honest_answers() {
    if skipped() {
        return;
    }
    let cluster = PrivateCluster::start();
    // Queues that live on node 1: a classic user queue (a deployment that ran classic
    // queues), and a quorum user's binding record and presence queue.
    let on_node_one = quorum_broker(&cluster.node_url(1));
    let classic_user = subscriber(unique_user(), None);
    let classic = Config::new(&cluster.node_url(1), Some(JWT_SECRET), "classic");
    declare(&RabbitBroker::new(&classic), &classic_user).await;
    let quorum_user = subscriber(unique_user(), None);
    declare(&*on_node_one, &quorum_user).await;
    on_node_one.close().await;

    cluster.stop_node(1);
    // HAProxy takes the node out within two health checks.
    sleep(Duration::from_secs(3)).await;
    let broker = quorum_broker(&cluster.url());

    // The classic queue exists but is out of reach: 503, not "nobody is listening".
    let event = Publication {
        audience: Audience::User(classic_user.user_id),
        event: message(1).prepare(),
    };
    let answer = broker.publish(std::slice::from_ref(&event)).await;
    assert!(
        matches!(answer, Err(BrokerError::QueueUnavailable { .. })),
        "{answer:?}"
    );
    // A user with no queue at all is still `routed: false`.
    let nobody = Publication {
        audience: Audience::User(unique_user()),
        event: message(2).prepare(),
    };
    let receipts = broker.publish(&[nobody]).await.unwrap();
    assert!(!receipts[0].routed);

    // The quorum user polls on (presence and binding record out of reach) and gets
    // what is published to them.
    let budget = PollBudget::until(Instant::now() + Duration::from_secs(2));
    broker
        .mark_online(quorum_user.user_id, None, &budget)
        .await
        .expect("a poll goes on without its presence queue");
    let event = Publication {
        audience: Audience::User(quorum_user.user_id),
        event: message(3).prepare(),
    };
    let polled = {
        let broker = broker.clone();
        let user = quorum_user.clone();
        tokio::spawn(async move {
            let budget = PollBudget::until(Instant::now() + Duration::from_secs(4));
            broker.wait_with_cursor(&user, "", &budget).await
        })
    };
    sleep(Duration::from_millis(500)).await;
    let receipts = broker.publish(std::slice::from_ref(&event)).await.unwrap();
    assert!(receipts[0].routed);
    let events = polled.await.unwrap().expect("the poll answers");
    assert_eq!(
        events.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        [event.event.id.clone()]
    );
    cluster.start_node(1);
}
