//! Delivery guarantees beyond the guide (contract, "Delivery guarantees"): a queue per
//! device (`?device=`), and cursor mode (`?ack=`), where returned events stay queued
//! until the client names the last one it got. On RabbitMQ and on the memory broker;
//! the cross-process test on RabbitMQ, where two connections stand for two Lambda
//! instances.

use std::{collections::HashSet, sync::Arc, time::Duration};

use lambda_http::{Body, Response};
use longpoll::{
    App, Broker,
    event::Event,
    topology::{Audience, DeviceId, Subscriber},
};
use longpoll_testkit::*;
use tokio::time::Instant;

const HOLD: Duration = Duration::from_secs(5);
/// A hold that is expected to run out: long enough for a busy broker to set it up.
const SHORT_HOLD: Duration = Duration::from_millis(600);

fn device(subscriber: &Subscriber, name: &str) -> Subscriber {
    Subscriber {
        device: Some(DeviceId::parse(name).expect("a valid device id")),
        ..subscriber.clone()
    }
}

fn ids(events: &[Event]) -> Vec<i64> {
    events.iter().map(message_data_id).collect()
}

async fn cursor_poll(
    broker: &dyn Broker,
    who: &Subscriber,
    acked: &str,
    hold: Duration,
) -> Vec<Event> {
    broker
        .wait_with_cursor(who, acked, &PollBudget::until(Instant::now() + hold))
        .await
        .expect("a cursor poll")
}

/// Creates the device's queue with an empty cursor-mode poll.
async fn declare_cursor(broker: &dyn Broker, who: &Subscriber) {
    broker
        .mark_online(who.user_id, None, &PollBudget::until(in_a_while()))
        .await
        .expect("mark online");
    assert!(cursor_poll(broker, who, "", SHORT_HOLD).await.is_empty());
}

/// Two devices of one user each get every event, user and college alike, in order,
/// exactly once; the user's own (device-less) queue is a third, separate reader.
async fn every_device_gets_every_event(make: MakeBroker) {
    let broker = make(&config(&unique_name("delivery")));
    let user = subscriber(unique_user(), Some(unique_college()));
    let (laptop, phone) = (device(&user, "laptop"), device(&user, "phone-2_b"));
    declare(&*broker, &laptop).await;
    declare(&*broker, &phone).await;

    let bodies: Vec<_> = (1..=20).map(message).collect();
    publish_all(&*broker, Audience::User(user.user_id), &bodies).await;
    publish(
        &*broker,
        Audience::College(user.college_id.unwrap()),
        &message(21),
    )
    .await;

    for who in [&laptop, &phone] {
        let mut got = Vec::new();
        while got.len() < 21 {
            let events = broker
                .wait_for_events(who, &PollBudget::until(Instant::now() + HOLD))
                .await
                .unwrap();
            assert!(!events.is_empty(), "{:?} is missing events", who.device);
            got.extend(ids(&events));
        }
        assert_eq!(got, (1..=21).collect::<Vec<_>>(), "{:?}", who.device);
        let more = broker
            .wait_for_events(who, &PollBudget::until(Instant::now() + SHORT_HOLD))
            .await
            .unwrap();
        assert!(more.is_empty(), "each event once");
    }
}

/// A response that never reached the client costs nothing: the next poll, naming the
/// same old cursor, gets the same events with the same ids; acknowledging the last one
/// removes them all and the poll after holds.
async fn a_lost_response_is_served_again(make: MakeBroker) {
    let broker = make(&config(&unique_name("delivery")));
    let tab = device(&subscriber(unique_user(), None), "tab");
    declare_cursor(&*broker, &tab).await;
    let bodies: Vec<_> = (1..=3).map(message).collect();
    publish_all(&*broker, Audience::User(tab.user_id), &bodies).await;

    let lost = cursor_poll(&*broker, &tab, "", HOLD).await;
    assert_eq!(ids(&lost), [1, 2, 3]);
    let again = cursor_poll(&*broker, &tab, "", HOLD).await;
    assert_eq!(ids(&again), [1, 2, 3]);
    let event_ids = |events: &[Event]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        event_ids(&again),
        event_ids(&lost),
        "ids are stable across redeliveries"
    );

    let started = Instant::now();
    let after_ack = cursor_poll(&*broker, &tab, &again[2].id, SHORT_HOLD).await;
    assert!(after_ack.is_empty(), "acknowledged events are gone");
    assert!(
        started.elapsed() >= SHORT_HOLD - Duration::from_millis(50),
        "it held"
    );
}

/// An acknowledgement in the middle removes exactly the prefix it names.
async fn acking_removes_only_what_the_client_got(make: MakeBroker) {
    let broker = make(&config(&unique_name("delivery")));
    let tab = device(&subscriber(unique_user(), None), "tab");
    declare_cursor(&*broker, &tab).await;
    let bodies: Vec<_> = (1..=5).map(message).collect();
    publish_all(&*broker, Audience::User(tab.user_id), &bodies).await;

    let first = cursor_poll(&*broker, &tab, "", HOLD).await;
    assert_eq!(ids(&first), [1, 2, 3, 4, 5]);
    let started = Instant::now();
    let rest = cursor_poll(&*broker, &tab, &first[1].id, HOLD).await;
    assert_eq!(ids(&rest), [3, 4, 5]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered at once"
    );
}

/// A cursor that names no queued event (made up, or already gone) removes nothing and
/// returns everything still queued, once.
async fn an_unknown_cursor_loses_nothing(make: MakeBroker) {
    let broker = make(&config(&unique_name("delivery")));
    let tab = device(&subscriber(unique_user(), None), "tab");
    declare_cursor(&*broker, &tab).await;
    let bodies: Vec<_> = (1..=3).map(message).collect();
    publish_all(&*broker, Audience::User(tab.user_id), &bodies).await;

    let first = cursor_poll(&*broker, &tab, "", HOLD).await;
    let unknown = cursor_poll(&*broker, &tab, "no-such-event", HOLD).await;
    assert_eq!(ids(&unknown), [1, 2, 3]);

    // The acknowledged event falls off the head of a full queue: that cursor is now
    // unknown too, and the 100 newest events are all there, none removed.
    let newer: Vec<_> = (4..=103).map(message).collect();
    publish_all(&*broker, Audience::User(tab.user_id), &newer).await;
    let expired = poll_until(&*broker, &tab, &first[2].id, 100).await;
    assert_eq!(ids(&expired), (4..=103).collect::<Vec<_>>());
    let again = poll_until(&*broker, &tab, &first[2].id, 100).await;
    assert_eq!(ids(&again), (4..=103).collect::<Vec<_>>());
}

/// Cursor polls naming `acked` until one answers with `count` events (or the hold
/// is over): a lingering consumer answers with what has reached it so far, and a
/// poll that repeats the cursor gets the same events again with what came since.
async fn poll_until(
    broker: &dyn Broker,
    who: &Subscriber,
    acked: &str,
    count: usize,
) -> Vec<Event> {
    let started = Instant::now();
    loop {
        let events = cursor_poll(broker, who, acked, HOLD).await;
        if events.len() >= count || started.elapsed() > HOLD {
            return events;
        }
    }
}

/// A held cursor poll wakes for an event that arrives during the hold; events that
/// arrive around it are each delivered, and acknowledged, exactly once.
async fn events_arriving_during_the_hold(make: MakeBroker) {
    let broker = make(&config(&unique_name("delivery")));
    let tab = device(&subscriber(unique_user(), None), "tab");
    declare_cursor(&*broker, &tab).await;
    publish(&*broker, Audience::User(tab.user_id), &message(1)).await;
    let first = cursor_poll(&*broker, &tab, "", HOLD).await;
    assert_eq!(ids(&first), [1]);

    let waiter = {
        let (broker, tab, acked) = (broker.clone(), tab.clone(), first[0].id.clone());
        tokio::spawn(async move { cursor_poll(&*broker, &tab, &acked, HOLD).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let published = Instant::now();
    for n in 2..=4 {
        publish(&*broker, Audience::User(tab.user_id), &message(n)).await;
    }
    let woke = waiter.await.unwrap();
    assert!(
        published.elapsed() < Duration::from_secs(1),
        "woke on arrival"
    );
    assert!(
        !woke.is_empty() && ids(&woke)[0] == 2,
        "got {:?}",
        ids(&woke)
    );

    let mut got = ids(&woke);
    let mut cursor = woke.last().unwrap().id.clone();
    while got.len() < 3 {
        let events = cursor_poll(&*broker, &tab, &cursor, HOLD).await;
        assert!(!events.is_empty());
        got.extend(ids(&events));
        cursor = events.last().unwrap().id.clone();
    }
    assert_eq!(got, [2, 3, 4]);
    assert!(
        cursor_poll(&*broker, &tab, &cursor, SHORT_HOLD)
            .await
            .is_empty()
    );
}

/// Through the handler: `device` and `ack` reach the broker; bad ones get a 400.
async fn the_poll_handler_takes_device_and_ack(make: MakeBroker) {
    let config = config(&unique_name("delivery"));
    let broker = make(&config);
    let app = app(config, broker, SHORT_HOLD);
    let user = unique_user();
    let token = token(user, None);
    let tab = device(&subscriber(user, None), "tab-1");
    let poll = |query: String| {
        let fixture = Fixture::new("poll-events").query(&format!("token={token}&{query}"));
        poll_events::handle(&app, fixture.request())
    };
    let declared = json_of(&poll("device=tab-1&ack=".into()).await.unwrap());
    assert_eq!(declared["events"], serde_json::json!([]));
    publish(&*app.broker, Audience::User(user), &message(1)).await;

    let events_of = |response: Response<Body>| json_of(&response)["events"].clone();
    let first = events_of(poll("device=tab-1&ack=".into()).await.unwrap());
    assert_eq!(first[0]["data"]["id"], 1);
    let again = events_of(poll("device=tab-1&ack=".into()).await.unwrap());
    assert_eq!(again, first, "cursor mode keeps the events");
    let id = first[0]["id"].as_str().unwrap();
    let acked = events_of(poll(format!("device=tab-1&ack={id}")).await.unwrap());
    assert_eq!(acked, serde_json::json!([]));
    assert!(
        app.broker
            .wait_for_events(&tab, &PollBudget::until(Instant::now() + SHORT_HOLD))
            .await
            .unwrap()
            .is_empty()
    );

    for bad in [
        "device=",
        "device=a:b",
        "device=%C3%A9",
        &format!("device={}", "x".repeat(65)),
    ] {
        let response = poll(bad.to_owned()).await.unwrap();
        assert_error(&response, 400, "invalid_device");
    }
    let response = poll(format!("ack={}", "x".repeat(256))).await.unwrap();
    assert_error(&response, 400, "invalid_ack");
}

on_every_broker!(
    every_device_gets_every_event,
    a_lost_response_is_served_again,
    acking_removes_only_what_the_client_got,
    an_unknown_cursor_loses_nothing,
    events_arriving_during_the_hold,
    the_poll_handler_takes_device_and_ack,
);

/// Two function instances, each with its own connection (as two Lambda processes would
/// have), take turns serving one client's cursor-mode polls while events are published
/// throughout, and every third response is lost on the way. Nothing lives in either
/// process between polls; after de-duplication by id the client has every event
/// exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_take_turns_serving_one_cursor() {
    const EVENTS: i64 = 150;
    let instances: Vec<TestApp> = (0..2)
        .map(|_| {
            let config = config(&unique_name("delivery-instance"));
            let broker = rabbit(&config);
            app(config, broker, Duration::from_secs(2))
        })
        .collect();
    let producer_broker: Arc<dyn Broker> = rabbit(&config(&unique_name("delivery-producer")));
    let user = unique_user();
    let token = token(user, None);
    let poll = |instance: usize, acked: &str| {
        let fixture =
            Fixture::new("poll-events").query(&format!("token={token}&device=phone&ack={acked}"));
        cursor_poll_through(&instances[instance], fixture)
    };
    assert!(poll(0, "").await.is_empty(), "declares the queue");

    let producer = tokio::spawn(async move {
        for n in 1..=EVENTS {
            publish(&*producer_broker, Audience::User(user), &message(n)).await;
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let mut seen = HashSet::new();
    let mut got = Vec::new();
    let (mut cursor, mut polls, mut lost, mut duplicates) = (String::new(), 0, 0, 0);
    let give_up = Instant::now() + Duration::from_secs(60);
    while got.len() < EVENTS as usize && Instant::now() < give_up {
        let events = poll(polls % 2, &cursor).await;
        polls += 1;
        if polls % 3 == 0 {
            lost += events.len();
            continue; // the response was lost: the client saw nothing of it
        }
        for event in &events {
            if seen.insert(event["id"].as_str().unwrap().to_owned()) {
                got.push(event["data"]["id"].as_i64().unwrap());
            } else {
                duplicates += 1;
            }
        }
        if let Some(last) = events.last() {
            cursor = last["id"].as_str().unwrap().to_owned();
        }
    }
    producer.await.unwrap();
    assert_eq!(
        got,
        (1..=EVENTS).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(polls >= 4, "several polls on both instances");
    assert!(lost > 0, "some events were in lost responses");
    println!("{polls} polls, {lost} events in lost responses, {duplicates} duplicates dropped");
}

async fn cursor_poll_through(instance: &App, fixture: Fixture) -> Vec<serde_json::Value> {
    let response = poll_events::handle(instance, fixture.request())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    json_of(&response)["events"].as_array().unwrap().clone()
}

/// A device's queue on RabbitMQ carries the user queue's arguments and bindings, so it
/// keeps 100 events, drops the oldest and expires 30 minutes after its device stops
/// polling, as the guide's queue does.
#[tokio::test]
async fn a_device_queue_is_declared_like_the_user_queue() {
    let broker = rabbit(&config(&unique_name("delivery")));
    let user = subscriber(unique_user(), Some(unique_college()));
    let tablet = device(&user, "tablet");
    declare(&*broker, &user).await;
    declare(&*broker, &tablet).await;
    let (shared, _, _) = queue_on_broker(&user.queue_name()).expect("the user queue");
    let (own, durable, auto_delete) =
        queue_on_broker(&tablet.queue_name()).expect("the device queue");
    assert_eq!(own, shared);
    assert_eq!(own["x-expires"], 1_800_000);
    assert!(durable && !auto_delete);
    let bindings = rabbitmqctl(&["list_bindings", "-q", "destination_name", "routing_key"]);
    for key in tablet.routing_keys() {
        assert!(
            bindings.contains(&format!("{}\t{key}", tablet.queue_name())),
            "{key} is bound to the device queue"
        );
    }
}

/// A process skips the presence declare for a user polling through it without pause. A
/// user who disconnects through another process (a page closing) and comes back after a
/// pause (the page reloaded) to the first one is online again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_comes_back_after_a_disconnect_served_elsewhere() {
    let polling = rabbit(&config(&unique_name("delivery-presence-poll")));
    let disconnecting = rabbit(&config(&unique_name("delivery-presence-disconnect")));
    let user = unique_user();
    let subscriber = Subscriber {
        user_id: user,
        college_id: None,
        device: None,
    };
    let budget = || PollBudget::until(Instant::now() + SHORT_HOLD);
    for _ in 0..2 {
        polling.mark_online(user, None, &budget()).await.unwrap();
        polling
            .wait_for_events(&subscriber, &budget())
            .await
            .unwrap();
    }
    disconnecting.mark_offline(user).await.unwrap();
    assert_eq!(
        disconnecting.is_online(&[user], None).await.unwrap(),
        [false]
    );
    tokio::time::sleep(Duration::from_millis(3200)).await;
    polling.mark_online(user, None, &budget()).await.unwrap();
    assert_eq!(
        disconnecting.is_online(&[user], None).await.unwrap(),
        [true],
        "online again after a pause, though the polling process declared lately"
    );
}

/// Two polls of one queue held at once, the first one's answer lost on its way (a
/// browser that gave up on it, a page reload keeping its tab's id and cursor), lose
/// nothing: 20 users, half of them on `device=` queues, through the local server over
/// HTTP and through the functions on a Lambda Runtime API, with quorum user queues (a
/// cluster's kind), on a private node (they run on one node as well).
mod overlapping_polls {
    use longpoll::topology::QueueType;
    use longpoll_testkit::{
        drill::{self, Devices, functions::Functions, overlap, servers::Servers},
        private_node::PrivateNode,
    };

    use super::*;

    const USERS: usize = 20;

    fn assert_none_lost(lost: &[String]) {
        assert!(
            lost.is_empty(),
            "{} events answered routed: true never reached their client: {lost:?}",
            lost.len()
        );
    }

    /// A quorum user queue an earlier version declared, without single active consumer
    /// (RabbitMQ refuses a declare that changes a queue's arguments), is polled as it is:
    /// its events are answered, not refused with a 503 until it expires.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quorum_queue_from_an_earlier_version_is_used_as_it_is() {
        use lapin::{
            Connection, ConnectionProperties,
            options::QueueDeclareOptions,
            types::{AMQPValue, FieldTable},
        };
        use longpoll::{
            Config, RabbitBroker,
            topology::{SINGLE_ACTIVE_CONSUMER, user_queue_arguments},
        };

        let node = PrivateNode::start(None);
        let user = subscriber(unique_user(), None);
        let mut earlier = FieldTable::default();
        for (name, value) in user_queue_arguments(QueueType::Quorum) {
            if name != SINGLE_ACTIVE_CONSUMER {
                earlier.insert(name.into(), AMQPValue::from(value));
            }
        }
        let connection = Connection::connect(&node.url(), ConnectionProperties::default())
            .await
            .unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_declare(user.queue_name().as_str().into(), durable, earlier)
            .await
            .expect("the queue as an earlier version declared it");

        let config = Config {
            queue_type: QueueType::Quorum,
            ..Config::new(&node.url(), Some(JWT_SECRET), &unique_name("legacy"))
        };
        let broker: Arc<dyn Broker> = Arc::new(RabbitBroker::new(&config));
        declare(&*broker, &user).await;
        let sent = publish(&*broker, Audience::User(user.user_id), &message(7)).await;
        assert!(sent.routed, "the earlier queue is bound and takes events");
        let events = cursor_poll(&*broker, &user, "", HOLD).await;
        assert_eq!(ids(&events), [7]);
        connection.close(200, "done".into()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lose_nothing_through_the_local_server() {
        let node = PrivateNode::start(None);
        let hold = Duration::from_secs(2);
        let servers = Servers::start(1, &node.url(), QueueType::Quorum, hold, &[]).await;
        let users = drill::users(USERS, Devices::Half);
        assert_none_lost(&overlap::run(Arc::new(servers), users, hold).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lose_nothing_through_the_functions() {
        let node = PrivateNode::start(None);
        let hold = Duration::from_secs(2);
        let functions = Functions::start(USERS, &node.url(), QueueType::Quorum, hold).await;
        let users = drill::users(USERS, Devices::Half);
        assert_none_lost(&overlap::run(Arc::new(functions), users, hold).await);
    }
}
