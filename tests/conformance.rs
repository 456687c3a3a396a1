//! The broker conformance suite: every behaviour the contract promises, run against
//! RabbitMQ (over a real connection to `AMQP_URL`) and against the in-memory broker.
//! A behaviour that holds on one and not the other fails here.

use std::time::Duration;

use longpoll::{
    broker::{Publication, user_queue_table},
    topology::{
        Audience, QUORUM_DELIVERY_LIMIT, QueueType, SINGLE_ACTIVE_CONSUMER, Subscriber,
        binding_record_queue_name, presence_queue_name,
    },
};
use longpoll_testkit::*;
use tokio::time::Instant;

const HOLD: Duration = Duration::from_secs(5);

/// Waiting events come back at once, oldest first, with the contract's envelope.
async fn returns_waiting_events_at_once(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let user = subscriber(unique_user(), None);
    declare(&*broker, &user).await;
    let receipts = publish_all(
        &*broker,
        Audience::User(user.user_id),
        &[message(1), message(2), message(3)],
    )
    .await;
    assert!(receipts.iter().all(|receipt| receipt.routed));

    let started = Instant::now();
    let events = broker
        .wait_for_events(&user, &PollBudget::until(Instant::now() + HOLD))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?} with events waiting",
        started.elapsed()
    );
    assert_eq!(
        events.iter().map(message_data_id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for (event, receipt) in events.iter().zip(&receipts) {
        assert_eq!(event.id, receipt.id);
        assert_eq!(event.event, "message");
        let age = longpoll::http::now_seconds() - event.timestamp.expect("a publish time");
        assert!((0.0..60.0).contains(&age), "timestamp {age} s old");
    }
    assert_eq!(
        events[0].data,
        serde_json::to_value(message(1)).unwrap()["data"],
        "data passes unchanged"
    );
}

/// A waiting poll wakes when an event arrives, long before the hold is over.
async fn wakes_when_an_event_arrives(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let user = subscriber(unique_user(), None);
    declare(&*broker, &user).await;
    let waiter = {
        let (broker, user) = (broker.clone(), user.clone());
        tokio::spawn(async move {
            broker
                .wait_for_events(&user, &PollBudget::until(Instant::now() + HOLD))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let published = Instant::now();
    publish(&*broker, Audience::User(user.user_id), &message(7)).await;
    let events = waiter.await.unwrap().unwrap();
    let latency = published.elapsed();
    assert_eq!(events.iter().map(message_data_id).collect::<Vec<_>>(), [7]);
    assert!(
        latency < Duration::from_secs(1),
        "woke {latency:?} after the publish"
    );
}

/// No event: an empty answer when the hold is over, not before and not much after.
async fn answers_empty_when_the_hold_runs_out(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let user = subscriber(unique_user(), None);
    let started = Instant::now();
    let events = broker
        .wait_for_events(
            &user,
            &PollBudget::until(Instant::now() + Duration::from_millis(1200)),
        )
        .await
        .unwrap();
    let held = started.elapsed();
    assert!(events.is_empty());
    assert!(
        held >= Duration::from_millis(1150) && held < Duration::from_millis(2000),
        "held {held:?}"
    );
}

/// A full queue returns one batch of 100 in publish order; the 101st publish drops the
/// oldest.
async fn caps_batches_and_drops_the_oldest(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let user = subscriber(unique_user(), None);
    declare(&*broker, &user).await;
    let bodies: Vec<_> = (1..=101).map(message).collect();
    publish_all(&*broker, Audience::User(user.user_id), &bodies).await;

    let events = broker
        .wait_for_events(&user, &PollBudget::until(Instant::now() + HOLD))
        .await
        .unwrap();
    let ids: Vec<i64> = events.iter().map(message_data_id).collect();
    assert_eq!(
        ids,
        (2..=101).collect::<Vec<_>>(),
        "100 events, oldest dropped, in order"
    );
    let after = broker
        .wait_for_events(
            &user,
            &PollBudget::until(Instant::now() + Duration::from_millis(200)),
        )
        .await
        .unwrap();
    assert!(
        after.is_empty(),
        "the batch was removed from the queue, yet came: {:?}",
        after.iter().map(message_data_id).collect::<Vec<_>>()
    );
}

/// More than a batch never comes back at once, and nothing is lost across batches.
async fn returns_at_most_a_batch_per_poll(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let user = subscriber(unique_user(), None);
    declare(&*broker, &user).await;
    let first: Vec<_> = (1..=60).map(message).collect();
    publish_all(&*broker, Audience::User(user.user_id), &first).await;
    let events = broker
        .wait_for_events(&user, &PollBudget::until(Instant::now() + HOLD))
        .await
        .unwrap();
    assert_eq!(events.len(), 60);
    let second: Vec<_> = (61..=160).map(message).collect();
    publish_all(&*broker, Audience::User(user.user_id), &second).await;
    // A poll answers at once with what has reached it: a lingering consumer may still
    // be receiving the rest of a confirmed batch, which the next poll then returns.
    let mut received = Vec::new();
    while received.len() < 100 {
        let events = broker
            .wait_for_events(&user, &PollBudget::until(Instant::now() + HOLD))
            .await
            .unwrap();
        assert!(!events.is_empty(), "lost: {} of 100 came", received.len());
        assert!(events.len() <= 100, "{} at once", events.len());
        received.extend(events.iter().map(message_data_id));
    }
    assert_eq!(received, (61..=160).collect::<Vec<_>>());
}

/// `typing` events expire after 10 s; a message published with them survives.
async fn typing_events_expire_after_ten_seconds(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let user = subscriber(unique_user(), None);
    declare(&*broker, &user).await;
    publish(&*broker, Audience::User(user.user_id), &typing(5)).await;
    publish(&*broker, Audience::User(user.user_id), &message(1)).await;
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let events = broker
        .wait_for_events(
            &user,
            &PollBudget::until(Instant::now() + Duration::from_millis(500)),
        )
        .await
        .unwrap();
    let types: Vec<&str> = events.iter().map(|event| event.event.as_str()).collect();
    assert_eq!(types, ["message"]);
}

/// A fresh `typing` event is delivered like any other.
async fn fresh_typing_events_arrive(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let user = subscriber(unique_user(), None);
    declare(&*broker, &user).await;
    publish(&*broker, Audience::User(user.user_id), &typing(5)).await;
    let events = broker
        .wait_for_events(&user, &PollBudget::until(Instant::now() + HOLD))
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "typing");
    assert_eq!(events[0].data["sender_id"], 5);
}

/// A college event reaches each polling member exactly once, and nobody else.
async fn college_events_reach_every_member_once(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let college = unique_college();
    let alice = subscriber(unique_user(), Some(college));
    let bob = subscriber(unique_user(), Some(college));
    let outsider = subscriber(unique_user(), Some(unique_college()));
    for user in [&alice, &bob, &outsider] {
        declare(&*broker, user).await;
    }
    let receipt = publish(&*broker, Audience::College(college), &notice("Exams")).await;
    assert!(receipt.routed);
    for member in [&alice, &bob] {
        let events = broker
            .wait_for_events(member, &PollBudget::until(Instant::now() + HOLD))
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "exactly once each");
        assert_eq!(events[0].id, receipt.id);
        assert_eq!(events[0].data["title"], "Exams");
        let again = broker
            .wait_for_events(
                member,
                &PollBudget::until(Instant::now() + Duration::from_millis(200)),
            )
            .await
            .unwrap();
        assert!(again.is_empty(), "delivered once, not twice");
    }
    let events = broker
        .wait_for_events(
            &outsider,
            &PollBudget::until(Instant::now() + Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(events.is_empty(), "another college's member gets nothing");
}

/// A user event reaches only that user, and a college member's user events are theirs.
async fn user_events_reach_only_that_user(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let college = unique_college();
    let alice = subscriber(unique_user(), Some(college));
    let bob = subscriber(unique_user(), Some(college));
    declare(&*broker, &alice).await;
    declare(&*broker, &bob).await;
    publish(&*broker, Audience::User(alice.user_id), &message(1)).await;
    let bobs = broker
        .wait_for_events(
            &bob,
            &PollBudget::until(Instant::now() + Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(bobs.is_empty(), "bob sees nothing of alice's");
    let alices = broker
        .wait_for_events(&alice, &PollBudget::until(Instant::now() + HOLD))
        .await
        .unwrap();
    assert_eq!(alices.iter().map(message_data_id).collect::<Vec<_>>(), [1]);
}

/// Nobody polling: the publish is confirmed but reported as not routed.
async fn reports_unrouted_events(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let user = subscriber(unique_user(), None);
    let receipt = publish(&*broker, Audience::User(user.user_id), &message(1)).await;
    assert!(!receipt.routed, "no queue yet");
    declare(&*broker, &user).await;
    let receipt = publish(&*broker, Audience::User(user.user_id), &message(2)).await;
    assert!(receipt.routed);
    let receipt = publish(
        &*broker,
        Audience::College(unique_college()),
        &notice("nobody"),
    )
    .await;
    assert!(!receipt.routed, "a college nobody polls for");
}

/// Publishes in flight together each learn whether *their* event was routed: a
/// `basic.return` belongs to the publish that sent the returned event, never to another
/// one that happened to share its channel.
async fn concurrent_publishes_report_their_own_routing(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let listener = subscriber(unique_user(), None);
    declare(&*broker, &listener).await;
    let nobody = unique_user();
    let publishes = (0..200).map(|n| {
        let broker = broker.clone();
        let (to, bound) = if n % 2 == 0 {
            (listener.user_id, true)
        } else {
            (nobody, false)
        };
        tokio::spawn(async move {
            let receipt = publish(&*broker, Audience::User(to), &message(n)).await;
            (receipt.routed, bound)
        })
    });
    for publish in publishes.collect::<Vec<_>>() {
        let (routed, bound) = publish.await.unwrap();
        assert_eq!(routed, bound, "a receipt reported another event's routing");
    }
}

/// One event (one id) sent to several users in one batch, as a backend's "to these
/// users" does: each receipt says whether *that user* had an inbox, whatever the order.
async fn one_event_to_several_users_reports_each_users_routing(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let listener = subscriber(unique_user(), None);
    declare(&*broker, &listener).await;
    let event = message(1).prepare();
    let batch: Vec<Publication> = [unique_user(), listener.user_id, unique_user()]
        .into_iter()
        .map(|user| Publication {
            audience: Audience::User(user),
            event: event.clone(),
        })
        .collect();
    let receipts = broker.publish(&batch).await.expect("publish");
    let routed: Vec<bool> = receipts.iter().map(|receipt| receipt.routed).collect();
    assert_eq!(routed, [false, true, false]);
    assert!(receipts.iter().all(|receipt| receipt.id == event.id));
}

/// Presence: online after `mark_online`, offline after `mark_offline`, offline again
/// once the TTL lapses without a poll.
async fn presence_follows_polls_and_disconnects(make: MakeBroker) {
    let mut config = config(&unique_name("conformance"));
    config.presence_ttl = Duration::from_millis(2000);
    let broker = make(&config);
    let (alice, bob) = (unique_user(), unique_user());
    assert_eq!(
        broker.is_online(&[alice, bob], None).await.unwrap(),
        [false, false]
    );
    broker
        .mark_online(alice, None, &PollBudget::until(in_a_while()))
        .await
        .unwrap();
    broker
        .mark_online(bob, None, &PollBudget::until(in_a_while()))
        .await
        .unwrap();
    assert_eq!(
        broker.is_online(&[alice, bob], None).await.unwrap(),
        [true, true]
    );
    broker.mark_offline(alice).await.unwrap();
    assert_eq!(
        broker.is_online(&[alice, bob], None).await.unwrap(),
        [false, true]
    );
    broker
        .mark_offline(alice)
        .await
        .expect("disconnecting twice is fine");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        broker.is_online(&[bob], None).await.unwrap(),
        [false],
        "presence lapses after its TTL"
    );
}

/// A lookup scoped to a college sees that college's online members only; an unscoped
/// one sees everyone online.
async fn presence_lookups_scoped_to_a_college_see_its_members_only(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let (college, other) = (unique_college(), unique_college());
    let (member, outsider, loner) = (unique_user(), unique_user(), unique_user());
    broker
        .mark_online(member, Some(college), &PollBudget::until(in_a_while()))
        .await
        .unwrap();
    broker
        .mark_online(outsider, Some(other), &PollBudget::until(in_a_while()))
        .await
        .unwrap();
    broker
        .mark_online(loner, None, &PollBudget::until(in_a_while()))
        .await
        .unwrap();
    let everyone = [member, outsider, loner];
    assert_eq!(
        broker.is_online(&everyone, Some(college)).await.unwrap(),
        [true, false, false]
    );
    assert_eq!(
        broker.is_online(&everyone, Some(other)).await.unwrap(),
        [false, true, false]
    );
    assert_eq!(
        broker.is_online(&everyone, None).await.unwrap(),
        [true, true, true]
    );
    broker.mark_offline(member).await.unwrap();
    assert_eq!(
        broker.is_online(&[member], Some(college)).await.unwrap(),
        [false]
    );
}

/// Past the per-user device cap, the least recently polled device's queue is deleted:
/// the devices polled since keep every event, the evicted one gets none until it polls
/// again.
async fn past_the_device_cap_the_least_recently_polled_device_goes(make: MakeBroker) {
    let mut config = config(&unique_name("conformance"));
    config.max_devices_per_user = 3;
    let broker = make(&config);
    let user = unique_user();
    let tab = |name: &str| Subscriber {
        device: longpoll::topology::DeviceId::parse(name),
        ..subscriber(user, None)
    };
    for name in ["a", "b", "c", "b", "d"] {
        declare(&*broker, &tab(name)).await;
    }
    // "a" was polled least recently: its queue made room for "d".
    let receipt = publish(&*broker, Audience::User(user), &message(1)).await;
    assert!(receipt.routed);
    for name in ["b", "c", "d"] {
        let events = broker
            .wait_for_events(&tab(name), &PollBudget::until(Instant::now() + HOLD))
            .await
            .unwrap();
        assert_eq!(
            events.iter().map(message_data_id).collect::<Vec<_>>(),
            [1],
            "{name}"
        );
    }
    let evicted = broker
        .wait_for_events(
            &tab("a"),
            &PollBudget::until(Instant::now() + Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(
        evicted.is_empty(),
        "the evicted device's queue went with its events"
    );
}

/// Two polls of the same user share the guide's single queue: each event goes to one of
/// them, none is lost or duplicated.
async fn concurrent_polls_of_one_user_share_the_queue(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let user = subscriber(unique_user(), None);
    declare(&*broker, &user).await;
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let (broker, user) = (broker.clone(), user.clone());
            tokio::spawn(async move {
                broker
                    .wait_for_events(
                        &user,
                        &PollBudget::until(Instant::now() + Duration::from_secs(2)),
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_all(
        &*broker,
        Audience::User(user.user_id),
        &(1..=10).map(message).collect::<Vec<_>>(),
    )
    .await;
    let mut seen = Vec::new();
    for waiter in waiters {
        seen.extend(waiter.await.unwrap().unwrap().iter().map(message_data_id));
    }
    seen.extend(
        broker
            .wait_for_events(
                &user,
                &PollBudget::until(Instant::now() + Duration::from_millis(300)),
            )
            .await
            .unwrap()
            .iter()
            .map(message_data_id),
    );
    seen.sort();
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
}

/// A token moved to another college: on the next poll the queue is bound to the new
/// college only, so the old college's notices no longer reach the user.
async fn a_poll_rebinds_a_user_who_changed_college(make: MakeBroker) {
    let broker = make(&config(&unique_name("conformance")));
    let (old, new) = (unique_college(), unique_college());
    let user = unique_user();
    declare(&*broker, &subscriber(user, Some(old))).await;
    declare(&*broker, &subscriber(user, Some(new))).await;

    let stale = publish(&*broker, Audience::College(old), &notice("old college")).await;
    assert!(
        !stale.routed,
        "no queue is bound to the old college any more"
    );
    publish(&*broker, Audience::College(new), &notice("new college")).await;
    let events = broker
        .wait_for_events(
            &subscriber(user, Some(new)),
            &PollBudget::until(Instant::now() + HOLD),
        )
        .await
        .unwrap();
    let titles: Vec<_> = events
        .iter()
        .map(|event| event.data["title"].clone())
        .collect();
    assert_eq!(titles, ["new college"]);

    // Losing the college unbinds it too.
    declare(&*broker, &subscriber(user, None)).await;
    let gone = publish(&*broker, Audience::College(new), &notice("left college")).await;
    assert!(!gone.routed);
}

longpoll_testkit::on_every_broker!(
    returns_waiting_events_at_once,
    wakes_when_an_event_arrives,
    answers_empty_when_the_hold_runs_out,
    caps_batches_and_drops_the_oldest,
    returns_at_most_a_batch_per_poll,
    typing_events_expire_after_ten_seconds,
    fresh_typing_events_arrive,
    college_events_reach_every_member_once,
    user_events_reach_only_that_user,
    reports_unrouted_events,
    concurrent_publishes_report_their_own_routing,
    one_event_to_several_users_reports_each_users_routing,
    presence_follows_polls_and_disconnects,
    concurrent_polls_of_one_user_share_the_queue,
    a_poll_rebinds_a_user_who_changed_college,
    presence_lookups_scoped_to_a_college_see_its_members_only,
    past_the_device_cap_the_least_recently_polled_device_goes,
);

/// The rebinding holds across processes (Lambda instances), which share nothing but the
/// broker: the old college's binding is found on the broker, not in a process's memory.
#[tokio::test]
async fn rabbitmq_rebinds_a_user_whose_old_college_another_process_bound() {
    let (old, new) = (unique_college(), unique_college());
    let user = unique_user();
    let first = rabbit(&config(&unique_name("conformance")));
    declare(&*first, &subscriber(user, Some(old))).await;
    let second = rabbit(&config(&unique_name("conformance")));
    declare(&*second, &subscriber(user, Some(new))).await;
    let stale = publish(&*second, Audience::College(old), &notice("old college")).await;
    assert!(!stale.routed, "the old college was unbound");
    let fresh = publish(&*second, Audience::College(new), &notice("new college")).await;
    assert!(fresh.routed);
}

/// The queues RabbitMQ holds carry exactly the contract's properties, for either kind of
/// user queue. A quorum user queue (the cluster's model) adds a delivery limit that no
/// cursor client reaches and a single active consumer; its binding record and the
/// presence queue stay classic (one Raft group per user, not three).
async fn queues_carry_the_contract_arguments(queue_type: QueueType) {
    let config = config(&unique_name("conformance"));
    let broker = match queue_type {
        QueueType::Classic => rabbit(&config),
        QueueType::Quorum => rabbit_quorum(&config),
    };
    let user = subscriber(unique_user(), Some(unique_college()));
    declare(&*broker, &user).await;
    broker
        .mark_online(user.user_id, None, &PollBudget::until(in_a_while()))
        .await
        .unwrap();

    let (arguments, durable, auto_delete) =
        queue_on_broker(&user.queue_name()).expect("the user queue exists");
    assert!(durable && !auto_delete);
    assert_eq!(arguments["x-queue-type"], queue_type.as_str());
    assert_eq!(arguments["x-max-length"], 100);
    assert_eq!(arguments["x-overflow"], "drop-head");
    assert_eq!(arguments["x-message-ttl"], 1_800_000);
    assert_eq!(arguments["x-expires"], 1_800_000);
    match queue_type {
        QueueType::Classic => {
            assert!(arguments.get("x-delivery-limit").is_none());
            assert!(arguments.get(SINGLE_ACTIVE_CONSUMER).is_none());
        }
        QueueType::Quorum => {
            assert_eq!(arguments["x-delivery-limit"], QUORUM_DELIVERY_LIMIT);
            assert_eq!(arguments[SINGLE_ACTIVE_CONSUMER], true);
        }
    }

    let record = binding_record_queue_name(&user.queue_name());
    let (arguments, _, _) = queue_on_broker(&record).expect("the binding record exists");
    assert_eq!(arguments["x-queue-type"], "classic");
    let presence = presence_queue_name(user.user_id);
    let (arguments, durable, auto_delete) =
        queue_on_broker(&presence).expect("the presence queue exists");
    assert!(durable && auto_delete);
    assert_eq!(arguments["x-queue-type"], "classic");
    assert_eq!(arguments["x-expires"], 300_000);

    let bindings = rabbitmqctl(&[
        "list_bindings",
        "-q",
        "source_name",
        "destination_name",
        "routing_key",
    ]);
    for key in user.routing_keys() {
        assert!(
            bindings
                .lines()
                .any(|line| line.starts_with("longpoll.events\t")
                    && line.contains(&user.queue_name())
                    && line.ends_with(&key)),
            "{} is bound to {key}",
            user.queue_name()
        );
    }

    // The broker itself enforces the arguments: a declare that differs is refused.
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut different = user_queue_table(queue_type);
    different.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(99),
    );
    let refused = channel
        .queue_declare(
            user.queue_name().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            different,
        )
        .await;
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("PRECONDITION_FAILED")
    );
    connection.close(200, "done".into()).await.ok();
}

#[tokio::test]
async fn rabbitmq_classic_queues_carry_the_contract_arguments() {
    queues_carry_the_contract_arguments(QueueType::Classic).await;
}

#[tokio::test]
async fn rabbitmq_quorum_queues_carry_the_contract_arguments() {
    queues_carry_the_contract_arguments(QueueType::Quorum).await;
}

/// A message a producer published with no `message_id` gets an id that is the same on
/// every delivery, derived from the message itself.
#[tokio::test]
async fn rabbitmq_messages_without_an_id_get_a_stable_one() {
    let config = config(&unique_name("conformance"));
    let broker = rabbit(&config);
    let user = subscriber(unique_user(), None);
    declare(&*broker, &user).await;
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let body =
        br#"{"event":"notification","data":{"title":"t","message":"m","custom":[1,{"a":null}]}}"#;
    channel
        .basic_publish(
            "longpoll.events".into(),
            format!("user.{}", user.user_id).into(),
            Default::default(),
            body,
            lapin::BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let events = broker
        .wait_for_events(&user, &PollBudget::until(Instant::now() + HOLD))
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert!(events[0].id.starts_with("sha256-"));
    assert_eq!(events[0].timestamp, None, "the producer set no timestamp");
    assert_eq!(
        events[0].data,
        serde_json::json!({"title": "t", "message": "m", "custom": [1, {"a": null}]})
    );
    connection.close(200, "done".into()).await.ok();
}
