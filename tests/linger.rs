//! Lingering consumers (the local server's RabbitMQ mode): a user's consumer outlives
//! their poll, and gives back what it holds when no poll comes for it; in cursor mode it
//! also keeps what it returned until the client acknowledges it.

use std::{sync::Arc, time::Duration};

use longpoll::{Broker, RabbitBroker, broker::LingeringBroker, topology::Audience};
use longpoll_testkit::*;
use tokio::time::Instant;

const LINGER: Duration = Duration::from_secs(1);

fn consumers_on(queue: &str) -> usize {
    rabbitmqctl(&["list_consumers", "-q", "queue_name"])
        .lines()
        .filter(|line| line.trim() == queue)
        .count()
}

/// Between polls the consumer stays (the re-poll costs no consume); an event that
/// arrives then is answered at once by the next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_outlives_the_poll() {
    let config = config(&unique_name("linger"));
    let broker: Arc<dyn Broker> = Arc::new(LingeringBroker::new(
        RabbitBroker::new(&config),
        Duration::from_secs(30),
    ));
    let user = subscriber(unique_user(), None);
    declare(&*broker, &user).await;
    assert_eq!(consumers_on(&user.queue_name()), 1, "kept after the poll");

    publish(&*broker, Audience::User(user.user_id), &message(1)).await;
    let started = Instant::now();
    assert_eq!(
        polled_ids(&*broker, &user, Duration::from_secs(5)).await,
        [1]
    );
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(consumers_on(&user.queue_name()), 1, "still one consumer");
    broker.close().await;
}

/// When no poll comes back within the linger, the consumer is cancelled and what it
/// held goes back to the queue, in order, for a poll from another process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingered_out_consumer_gives_its_events_back() {
    let config = config(&unique_name("linger"));
    let lingering: Arc<dyn Broker> =
        Arc::new(LingeringBroker::new(RabbitBroker::new(&config), LINGER));
    let user = subscriber(unique_user(), None);
    declare(&*lingering, &user).await;
    let bodies: Vec<_> = (1..=3).map(message).collect();
    publish_all(&*lingering, Audience::User(user.user_id), &bodies).await;

    // Held by the lingering consumer until it lingers out.
    tokio::time::sleep(LINGER * 3).await;
    assert_eq!(consumers_on(&user.queue_name()), 0, "cancelled");
    let other = rabbit(&longpoll_testkit::config(&unique_name("linger-other")));
    assert_eq!(
        polled_ids(&*other, &user, Duration::from_secs(5)).await,
        [1, 2, 3]
    );
    lingering.close().await;
}

/// Cursor mode keeps what it returned on the lingering consumer, unacked, until the
/// client acknowledges it: the re-poll costs no consume, and when the client stops
/// polling, the unacknowledged events (shown or not) go back to the queue in order,
/// for a cursor poll from another process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_polls_keep_unacknowledged_events_and_give_them_back() {
    let config = config(&unique_name("linger"));
    // Longer than LINGER: the consumer is counted between two polls, by rabbitmqctl,
    // which can take over a second to start on a loaded machine.
    let linger = 4 * LINGER;
    let lingering: Arc<dyn Broker> =
        Arc::new(LingeringBroker::new(RabbitBroker::new(&config), linger));
    let user = subscriber(unique_user(), None);
    let hold = || Instant::now() + Duration::from_secs(5);
    lingering
        .mark_online(user.user_id, None, &PollBudget::until(in_a_while()))
        .await
        .unwrap();
    let first = lingering
        .wait_with_cursor(
            &user,
            "",
            &PollBudget::until(Instant::now() + Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(first.is_empty());
    let bodies: Vec<_> = (1..=4).map(message).collect();
    publish_all(&*lingering, Audience::User(user.user_id), &bodies[..2]).await;

    let shown = lingering
        .wait_with_cursor(&user, "", &PollBudget::until(hold()))
        .await
        .unwrap();
    assert_eq!(
        shown.iter().map(message_data_id).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        consumers_on(&user.queue_name()),
        1,
        "one consumer throughout"
    );
    // The client got 1 and 2 but acknowledges only 1 (its answer with 2 was lost).
    let again = lingering
        .wait_with_cursor(&user, &shown[0].id, &PollBudget::until(hold()))
        .await
        .unwrap();
    assert_eq!(again.iter().map(message_data_id).collect::<Vec<_>>(), [2]);
    publish_all(&*lingering, Audience::User(user.user_id), &bodies[2..]).await;

    tokio::time::sleep(linger * 3).await;
    assert_eq!(consumers_on(&user.queue_name()), 0, "cancelled");
    let other = rabbit(&longpoll_testkit::config(&unique_name("linger-other")));
    let given_back = other
        .wait_with_cursor(&user, "", &PollBudget::until(hold()))
        .await
        .unwrap();
    assert_eq!(
        given_back.iter().map(message_data_id).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    lingering.close().await;
}
