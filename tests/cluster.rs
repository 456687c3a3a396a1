//! A 3-node cluster behind HAProxy (`scripts/private-cluster`), as Amazon MQ's
//! `CLUSTER_MULTI_AZ` broker runs, with `QUEUE_TYPE=quorum`: a rolling restart and a
//! crash under load lose no event that was answered `routed: true`, no publish
//! is told `routed: false` while its user polls, and no user goes without a successful
//! poll for longer than a hold plus a reconnect; through the product as users run it
//! (two local servers over HTTP, the functions on a Lambda Runtime API; half the users
//! on `device=` queues) and through the library alone. And the honest answers when a queue's node is
//! down: 503 (a `QueueUnavailable`) for a queue that exists, `routed: false` only for one
//! that does not, and polls that carry on without a binding record or presence queue
//! that is out of reach.
//!
//! Needs HAProxy (Debian's package; `scripts/test` installs it). With
//! `LONGPOLL_SKIP_CLUSTER=1` (no root to install it), these tests say so and pass.

use std::{sync::Arc, time::Duration};

use longpoll::{
    Broker, Config, RabbitBroker,
    broker::{BrokerError, Poll, Presence, Publication, Publish},
    topology::{Audience, QueueType},
};
use longpoll_testkit::{
    JWT_SECRET, PollBudget,
    cluster::PrivateCluster,
    declare,
    drill::{
        self, Devices, Load, Marks, Product, functions::Functions, library::Library,
        servers::Servers,
    },
    message, subscriber, unique_name, unique_user,
};
use tokio::time::{Instant, sleep};

/// The load: 40 users, 20 events a second.
fn load() -> Load {
    Load {
        users: 40,
        rate: 20,
        hold: Duration::from_secs(2),
        // The 503's `Retry-After`, shortened for the test.
        retry: Duration::from_millis(500),
        cursor: true,
        devices: Devices::None,
    }
}

/// [`load`] with every other user on a `device=` queue: both kinds of queue in a drill
/// through the product.
fn half_on_devices() -> Load {
    Load {
        devices: Devices::Half,
        ..load()
    }
}

/// How long a node stays down in the rolling restart and after the crash.
const DOWN: Duration = Duration::from_secs(8);
/// The longest a user may go without an answered poll: a hold plus a reconnect.
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

/// Runs a blocking cluster operation (a `rabbitmqctl` call) off the test's runtime.
async fn fault(cluster: &Arc<PrivateCluster>, operation: fn(&PrivateCluster, u16), node: u16) {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || operation(&cluster, node))
        .await
        .unwrap();
}

/// A maintenance window (each node in turn leaves for [`DOWN`] and comes back), then a
/// crash (`kill -9` of a node, back after [`DOWN`]); each fault marked as it starts. (The
/// bench adds a node that hangs: here no poll may go 10 s unanswered, which a hung
/// node's connections do not meet yet; see docs/operations.md.)
async fn rolling_restart_and_crash(cluster: Arc<PrivateCluster>, marks: Marks) {
    sleep(Duration::from_secs(3)).await;
    for node in 1..=3 {
        marks.mark();
        fault(&cluster, PrivateCluster::stop_node, node).await;
        sleep(DOWN).await;
        fault(&cluster, PrivateCluster::start_node, node).await;
        sleep(Duration::from_secs(3)).await;
    }
    marks.mark();
    fault(&cluster, PrivateCluster::kill_node, 2).await;
    sleep(DOWN).await;
    fault(&cluster, PrivateCluster::start_node, 2).await;
    sleep(Duration::from_secs(3)).await;
}

/// The drill of `load` through `product` on a fresh cluster under
/// [`rolling_restart_and_crash`], held to the goals: nothing answered `routed: true`
/// lost, nothing answered `routed: false` while its user polled, no user without an
/// answered poll for longer than [`LONGEST_GAP`].
async fn drill_through<P: Product>(cluster: Arc<PrivateCluster>, product: Arc<P>, load: Load) {
    let report = drill::run(product, &load, Duration::from_secs(20), |marks| {
        rolling_restart_and_crash(cluster.clone(), marks)
    })
    .await;
    eprintln!("{report}");
    assert!(
        report.routed > 500,
        "the backend kept publishing: {}",
        report.routed
    );
    assert_eq!(
        report.missing, 0,
        "events answered routed: true were lost:\n{report}"
    );
    assert_eq!(
        report.wrongly_unrouted, 0,
        "publishes answered routed: false while their user polled"
    );
    assert!(
        report.longest_gap <= LONGEST_GAP,
        "a user went {:?} without an answered poll",
        report.longest_gap
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_and_a_crash_lose_nothing_through_the_library() {
    if skipped() {
        return;
    }
    let cluster = Arc::new(PrivateCluster::start());
    let library = Arc::new(Library::new(&cluster.url(), 4, QueueType::Quorum));
    drill_through(cluster, library.clone(), load()).await;
    library.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_and_a_crash_lose_nothing_through_two_local_servers() {
    if skipped() {
        return;
    }
    let cluster = Arc::new(PrivateCluster::start());
    let load = half_on_devices();
    let servers = Servers::start(2, &cluster.url(), QueueType::Quorum, load.hold, &[]).await;
    drill_through(cluster, Arc::new(servers), load).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_and_a_crash_lose_nothing_through_the_functions() {
    if skipped() {
        return;
    }
    let cluster = Arc::new(PrivateCluster::start());
    let load = half_on_devices();
    let functions =
        Functions::start(load.users, &cluster.url(), QueueType::Quorum, load.hold).await;
    drill_through(cluster, Arc::new(functions), load).await;
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
        std::slice::from_ref(&event.event.id)
    );
    cluster.start_node(1);
}
