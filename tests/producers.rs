//! The producer side: the publish endpoint and the online lookup, fed real API Gateway
//! events, on RabbitMQ and on the memory broker.

use std::{sync::Arc, time::Duration};

use lambda_http::{Body, Response};
use longpoll::{Broker, topology::Audience};
use longpoll_testkit::*;
use serde_json::{Value, json};
use tokio::time::Instant;

const HOLD: Duration = Duration::from_secs(3);

struct Setup {
    broker: Arc<dyn Broker>,
    publisher: publish_event::Publisher,
}

fn setup(make: MakeBroker) -> Setup {
    let config = config(&unique_name("producers"));
    let broker = make(&config);
    let publisher = publisher(&config, broker.clone());
    Setup { broker, publisher }
}

async fn post(publisher: &publish_event::Publisher, body: &Value) -> Response<Body> {
    let fixture = Fixture::new("publish-event")
        .header("x-api-key", PUBLISH_KEY)
        .body(&body.to_string());
    publish_event::handle(publisher, fixture.request())
        .await
        .unwrap()
}

fn typing_for(user: u64) -> Value {
    json!({"user_id": user, "event": "typing", "data": {"sender_id": 9, "sender_name": "Ann", "is_typing": true}})
}

/// One event in, its id and `routed` out, and the poll gets exactly what was sent.
async fn publishes_a_single_event(make: MakeBroker) {
    let setup = setup(make);
    let user = subscriber(unique_user(), None);
    declare(&*setup.broker, &user).await;
    let response = post(&setup.publisher, &typing_for(user.user_id.0)).await;
    assert_eq!(response.status(), 200);
    let published = json_of(&response)["published"].clone();
    assert_eq!(published.as_array().unwrap().len(), 1);
    assert_eq!(published[0]["routed"], true);
    let events = setup
        .broker
        .wait_for_events(&user, &PollBudget::until(Instant::now() + HOLD))
        .await
        .unwrap();
    assert_eq!(events[0].id, published[0]["id"].as_str().unwrap());
    assert_eq!(events[0].event, "typing");
    assert_eq!(events[0].data, typing_for(0)["data"]);
}

/// A batch for users and a college: each event reaches its audience, in order;
/// `routed` is false where nobody polls.
async fn publishes_a_batch_with_college_fan_out(make: MakeBroker) {
    let setup = setup(make);
    let college = unique_college();
    let alice = subscriber(unique_user(), Some(college));
    let bob = subscriber(unique_user(), Some(college));
    let absent = unique_user();
    declare(&*setup.broker, &alice).await;
    declare(&*setup.broker, &bob).await;
    let batch = json!({"events": [
        {"user_id": alice.user_id.0, "event": "message", "data": {"id": 1, "sender_id": bob.user_id.0, "message": "hi"}},
        {"college_id": college.0, "event": "notification", "data": {"title": "Exams", "message": "Timetable out"}},
        {"user_id": absent.0, "event": "read_receipt", "data": {"message_id": 1, "reader_id": 3}},
    ]});
    let response = post(&setup.publisher, &batch).await;
    assert_eq!(response.status(), 200);
    let routed: Vec<bool> = json_of(&response)["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["routed"].as_bool().unwrap())
        .collect();
    assert_eq!(routed, [true, true, false]);
    let alices = setup
        .broker
        .wait_for_events(&alice, &PollBudget::until(Instant::now() + HOLD))
        .await
        .unwrap();
    assert_eq!(
        alices.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["message", "notification"]
    );
    let bobs = setup
        .broker
        .wait_for_events(&bob, &PollBudget::until(Instant::now() + HOLD))
        .await
        .unwrap();
    assert_eq!(
        bobs.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["notification"]
    );
    assert_eq!(alices[1].id, bobs[0].id, "one college event, one id");
}

/// Every 4xx of the endpoint, and none of them publishes anything.
async fn refuses_bad_requests_and_publishes_nothing(make: MakeBroker) {
    let setup = setup(make);
    let user = subscriber(unique_user(), None);
    declare(&*setup.broker, &user).await;
    let id = user.user_id.0;

    let message = assert_error(
        &post(&setup.publisher, &json!({"events": [typing_for(id), {"user_id": id, "event": "typing", "data": {"is_typing": true}}]})).await,
        400,
        "invalid_event",
    );
    assert!(
        message.starts_with("events[1].data: missing field `sender_id`"),
        "{message}"
    );
    let message = assert_error(
        &post(
            &setup.publisher,
            &json!({"user_id": id, "event": "wave", "data": {}}),
        )
        .await,
        400,
        "invalid_event",
    );
    assert!(
        message.starts_with("event: unknown variant `wave`"),
        "{message}"
    );
    let message = assert_error(
        &post(
            &setup.publisher,
            &json!({"user_id": id, "college_id": 1, "event": "typing", "data": {}}),
        )
        .await,
        400,
        "invalid_event",
    );
    assert!(
        message.contains("exactly one of `user_id` and `college_id`"),
        "{message}"
    );

    let raw = |body: &str| {
        let fixture = Fixture::new("publish-event")
            .header("x-api-key", PUBLISH_KEY)
            .body(body);
        publish_event::handle(&setup.publisher, fixture.request())
    };
    assert_error(&raw("{\"user_id\": 1,").await.unwrap(), 400, "invalid_json");
    let padding = "x".repeat(256 * 1024);
    let huge = json!({"user_id": id, "event": "message", "data": {"id": 1, "sender_id": 1, "message": padding}});
    assert_error(
        &post(&setup.publisher, &huge).await,
        413,
        "payload_too_large",
    );
    let many: Vec<Value> = (0..101).map(|_| typing_for(id)).collect();
    assert_error(
        &post(&setup.publisher, &json!({ "events": many })).await,
        413,
        "payload_too_large",
    );

    let no_key = Fixture::new("publish-event").body(&typing_for(id).to_string());
    assert_error(
        &publish_event::handle(&setup.publisher, no_key.request())
            .await
            .unwrap(),
        401,
        "missing_api_key",
    );
    let wrong_key = Fixture::new("publish-event")
        .header("x-api-key", "guess")
        .body(&typing_for(id).to_string());
    assert_error(
        &publish_event::handle(&setup.publisher, wrong_key.request())
            .await
            .unwrap(),
        401,
        "invalid_api_key",
    );
    let get = Fixture::new("publish-event")
        .method("GET")
        .header("x-api-key", PUBLISH_KEY);
    let response = publish_event::handle(&setup.publisher, get.request())
        .await
        .unwrap();
    assert_error(&response, 405, "method_not_allowed");
    assert_eq!(response.headers()["allow"], "POST");

    let events = setup
        .broker
        .wait_for_events(
            &user,
            &PollBudget::until(Instant::now() + Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(
        events.is_empty(),
        "refused requests published nothing: {events:?}"
    );
}

/// With IAM trusted, requests API Gateway signed through are accepted and unsigned ones
/// (a route left open by mistake) are not.
async fn trusts_iam_callers_only(make: MakeBroker) {
    let mut config = config(&unique_name("producers"));
    config.publish_trust_iam = true;
    let broker = make(&config);
    let publisher = publish_event::Publisher::new(&config, broker.clone()).unwrap();
    let body = typing_for(unique_user().0).to_string();
    let signed = Fixture::new("publish-event-iam").body(&body);
    let response = publish_event::handle(&publisher, signed.request())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let unsigned = Fixture::new("publish-event")
        .header("x-api-key", "anything")
        .body(&body);
    assert_error(
        &publish_event::handle(&publisher, unsigned.request())
            .await
            .unwrap(),
        401,
        "iam_required",
    );
}

/// Online lookup: true after a poll, false for strangers, false after disconnect and
/// after the presence TTL; junk and missing tokens refused.
async fn looks_up_presence(make: MakeBroker) {
    let mut config = config(&unique_name("producers"));
    config.presence_ttl = Duration::from_millis(3000);
    let broker = make(&config);
    let app = app(config, broker.clone(), Duration::from_millis(200));
    let (alice, bob, carol) = (unique_user(), unique_user(), unique_user());
    let bearer = format!("Bearer {}", token(carol, None));
    let lookup = |query: String| {
        let fixture = Fixture::new("poll-online")
            .authorization(&bearer)
            .query(&query);
        poll_online::handle(&app, fixture.request())
    };
    // Alice and Bob poll (through the real handler), which marks them online.
    for user in [alice, bob] {
        let poll =
            Fixture::new("poll-events").authorization(&format!("Bearer {}", token(user, None)));
        assert_eq!(
            poll_events::handle(&app, poll.request())
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let stranger = unique_user();
    let response = lookup(format!("user_ids={alice},{bob},{stranger}"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = json_of(&response);
    assert_eq!(
        body["online"],
        json!({alice.to_string(): true, bob.to_string(): true, stranger.to_string(): false})
    );
    assert!(body["timestamp"].is_f64());

    let disconnect =
        Fixture::new("poll-disconnect").authorization(&format!("Bearer {}", token(alice, None)));
    assert_eq!(
        poll_disconnect::handle(&app, disconnect.request())
            .await
            .unwrap()
            .status(),
        200
    );
    let body = json_of(&lookup(format!("user_ids={alice},{bob}")).await.unwrap());
    assert_eq!(
        body["online"],
        json!({alice.to_string(): false, bob.to_string(): true})
    );

    tokio::time::sleep(Duration::from_millis(4000)).await;
    let body = json_of(&lookup(format!("user_ids={bob}")).await.unwrap());
    assert_eq!(
        body["online"],
        json!({bob.to_string(): false}),
        "presence lapsed"
    );

    assert_error(
        &lookup("user_ids=1,abc".to_owned()).await.unwrap(),
        400,
        "invalid_user_ids",
    );
    assert_error(
        &lookup(String::new()).await.unwrap(),
        400,
        "invalid_user_ids",
    );
    let ids: Vec<String> = (1..=101).map(|n| n.to_string()).collect();
    assert_error(
        &lookup(format!("user_ids={}", ids.join(","))).await.unwrap(),
        400,
        "invalid_user_ids",
    );
    let anonymous = Fixture::new("poll-online").query("user_ids=1");
    assert_error(
        &poll_online::handle(&app, anonymous.request())
            .await
            .unwrap(),
        401,
        "missing_token",
    );
    let post = Fixture::new("poll-online")
        .method("POST")
        .authorization(&bearer)
        .query("user_ids=1");
    assert_error(
        &poll_online::handle(&app, post.request()).await.unwrap(),
        405,
        "method_not_allowed",
    );
}

longpoll_testkit::on_every_broker!(
    publishes_a_single_event,
    publishes_a_batch_with_college_fan_out,
    refuses_bad_requests_and_publishes_nothing,
    trusts_iam_callers_only,
    looks_up_presence,
);

#[test]
fn the_publish_endpoint_refuses_to_run_open() {
    let config = config("unused");
    let error = publish_event::Publisher::new(&config, memory(&config))
        .err()
        .expect("no key, no IAM: refused");
    assert!(error.to_string().contains("PUBLISH_API_KEY"), "{error}");
}

/// The online lookup's passive declares never disturb a poll held on the same
/// connection (a 404 closes the channel it happens on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_online_lookups_leave_held_polls_alone() {
    let setup = setup(rabbit);
    let user = subscriber(unique_user(), None);
    declare(&*setup.broker, &user).await;
    let held = {
        let (broker, user) = (setup.broker.clone(), user.clone());
        tokio::spawn(async move {
            broker
                .wait_for_events(&user, &PollBudget::until(Instant::now() + HOLD))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let strangers: Vec<_> = (0..20).map(|_| unique_user()).collect();
    assert!(
        setup
            .broker
            .is_online(&strangers, None)
            .await
            .unwrap()
            .iter()
            .all(|online| !online)
    );
    publish(&*setup.broker, Audience::User(user.user_id), &message(5)).await;
    let events = held
        .await
        .unwrap()
        .expect("the held poll survived the lookups");
    assert_eq!(events.iter().map(message_data_id).collect::<Vec<_>>(), [5]);
}
