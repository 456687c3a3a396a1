//! Users spread over several brokers (`AMQP_URLS`), through the local server over HTTP as
//! users and a backend drive it, and through the functions on a Lambda Runtime API, on
//! three private single-node RabbitMQs as the shards:
//! each user's queues live on the broker the contract's placement names; a college's
//! events reach members on every shard; one broker down fails its own users alone (503,
//! never `routed: false`) and loses nothing of theirs; a server whose table disagrees
//! with what the brokers record refuses to start.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use longpoll::{
    config::{DEV_JWT_SECRET, DEV_PUBLISH_KEY},
    event::{EventBody, OutgoingEvent},
    shard::SlotTable,
    token::TokenIssuer,
    topology::{CollegeId, DeviceId, QueueType, Subscriber, UserId},
};
use longpoll_testkit::{
    drill::{Failure, Product, User, functions::Functions},
    private_node::PrivateNode,
    server::{Server, built, free_port},
    unique_college, unique_user,
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// The servers' hold, short for the test.
const HOLD_MS: &str = "1000";

/// A fresh user whose slot `table` places on `broker`.
fn user_on(table: &SlotTable, broker: usize) -> UserId {
    std::iter::repeat_with(unique_user)
        .find(|user| table.broker_of(*user) == broker)
        .unwrap()
}

struct Site {
    server: Server,
    metrics: String,
    client: Client,
}

impl Site {
    async fn start(urls: &str) -> Self {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut env = server_env(urls);
        env.push(("METRICS_ADDR", metrics_addr.clone()));
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let server = Server::start(built("longpoll-local"), &[], &env).await;
        Self {
            server,
            metrics: format!("http://{metrics_addr}/metrics"),
            client: Client::new(),
        }
    }

    /// The server's metrics, as Prometheus text.
    async fn metrics(&self) -> String {
        let answer = self.client.get(&self.metrics).send().await.unwrap();
        answer.text().await.unwrap()
    }

    /// One cursor-mode poll: the status, `Retry-After`, and the body.
    async fn poll(
        &self,
        user: UserId,
        college: Option<CollegeId>,
        ack: &str,
    ) -> (StatusCode, Option<String>, Value) {
        let answer = self
            .client
            .get(format!(
                "{}/api/v1/communication/poll/events/?ack={ack}",
                self.server.url
            ))
            .bearer_auth(token(user, college))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let retry_after = answer
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().to_owned());
        (status, retry_after, answer.json().await.unwrap())
    }

    /// The ids a successful poll returned.
    async fn poll_ids(&self, user: UserId, college: Option<CollegeId>, ack: &str) -> Vec<String> {
        let (status, _, body) = self.poll(user, college, ack).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["id"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn publish(&self, body: Value) -> (StatusCode, Value) {
        let answer = self
            .client
            .post(format!("{}/api/v1/communication/events/", self.server.url))
            .header("X-Api-Key", DEV_PUBLISH_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        (answer.status(), answer.json().await.unwrap())
    }

    async fn online(&self, users: &[UserId]) -> (StatusCode, Value) {
        let ids: Vec<String> = users.iter().map(UserId::to_string).collect();
        let answer = self
            .client
            .get(format!(
                "{}/api/v1/communication/poll/online/?user_ids={}",
                self.server.url,
                ids.join(",")
            ))
            .bearer_auth(token(users[0], None))
            .send()
            .await
            .unwrap();
        (answer.status(), answer.json().await.unwrap())
    }
}

fn server_env(urls: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AMQP_URLS", urls.to_owned()),
        ("POLL_TIMEOUT_MS", HOLD_MS.to_owned()),
    ]
}

/// A token the servers take: they run with the development secret.
fn token(user: UserId, college: Option<CollegeId>) -> String {
    TokenIssuer::new(DEV_JWT_SECRET.as_bytes()).mint(user, college, None, Duration::from_secs(600))
}

fn message(user: UserId, id: &str) -> Value {
    json!({"user_id": user.0, "id": id, "event": "message",
           "data": {"id": 1, "sender_id": 7, "message": id}})
}

fn notice(college: CollegeId, id: &str) -> Value {
    json!({"college_id": college.0, "id": id, "event": "notification",
           "data": {"title": "Notice", "message": id}})
}

/// The user queues a node holds.
fn user_queues(node: &PrivateNode) -> String {
    node.ctl(&["list_queues", "name", "--no-table-headers"])
}

#[tokio::test(flavor = "multi_thread")]
async fn three_brokers_as_shards_through_the_local_server() {
    let nodes = tokio::task::spawn_blocking(|| PrivateNode::start_several(3))
        .await
        .unwrap();
    let urls: Vec<String> = nodes.iter().map(PrivateNode::url).collect();
    let site = Site::start(&urls.join(",")).await;
    let table = SlotTable::even(3).unwrap();
    let college = unique_college();
    let users: Vec<UserId> = (0..3).map(|broker| user_on(&table, broker)).collect();

    // Each user's first poll declares their queue on their own broker, and only there.
    for user in &users {
        assert!(site.poll_ids(*user, Some(college), "").await.is_empty());
    }
    for (broker, node) in nodes.iter().enumerate() {
        let queues = user_queues(node);
        for (placed, user) in users.iter().enumerate() {
            let name = format!("event_queue:user:{user}\n");
            assert_eq!(
                queues.contains(&name),
                placed == broker,
                "{user} on {broker}: {queues}"
            );
        }
    }

    // A user's event reaches them; a college's reaches members on every shard.
    for (index, user) in users.iter().enumerate() {
        let id = format!("direct-{index}");
        let (status, body) = site.publish(message(*user, &id)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["published"][0], json!({"id": id, "routed": true}));
    }
    let (status, body) = site.publish(notice(college, "notice-1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["published"][0],
        json!({"id": "notice-1", "routed": true})
    );
    for (index, user) in users.iter().enumerate() {
        assert_eq!(
            site.poll_ids(*user, Some(college), "").await,
            [format!("direct-{index}"), "notice-1".to_owned()]
        );
        // Acknowledged: the queue is empty again.
        assert!(
            site.poll_ids(*user, Some(college), "notice-1")
                .await
                .is_empty()
        );
    }

    // One answer from every shard.
    let stranger = unique_user();
    let (status, body) = site.online(&[users[0], users[1], users[2], stranger]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for user in &users {
        assert_eq!(body["online"][user.to_string()], true, "{body}");
    }
    assert_eq!(body["online"][stranger.to_string()], false);

    // An event for the second shard's user, confirmed before their broker goes down.
    let (status, body) = site.publish(message(users[1], "before-down")).await;
    assert_eq!(
        (status, &body["published"][0]["routed"]),
        (StatusCode::OK, &json!(true))
    );

    nodes[1].stop_app();
    // Their polls and publishes to them: 503 with Retry-After, never `routed: false`.
    let (status, retry_after, body) = site.poll(users[1], Some(college), "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "broker_unavailable");
    assert_eq!(retry_after.as_deref(), Some("2"));
    let (status, body) = site.publish(message(users[1], "while-down")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // Everyone else carries on, college events included; the answer names the shard
    // the event missed.
    let (status, body) = site.publish(notice(college, "notice-2")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["published"][0],
        json!({"id": "notice-2", "routed": true, "unreached_shards": [1]})
    );
    for user in [users[0], users[2]] {
        let (status, body) = site.publish(message(user, &format!("up-{user}"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            site.poll_ids(user, Some(college), "notice-1").await,
            ["notice-2".to_owned(), format!("up-{user}")]
        );
    }
    let (status, _) = site.online(&[users[0], users[2]]).await;
    assert_eq!(status, StatusCode::OK, "a lookup of the live shards' users");
    // The operator sees which broker failed.
    let metrics = site.metrics().await;
    let failures: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("longpoll_broker_failures_total{"))
        .collect();
    assert!(!failures.is_empty(), "{metrics}");
    assert!(
        failures.iter().all(|line| line.contains("shard=\"1\"")),
        "{failures:?}"
    );
    for shard in 0..3 {
        let connects = format!("longpoll_broker_connects_total{{shard=\"{shard}\"}}");
        assert!(metrics.contains(&connects), "{connects}: {metrics}");
    }

    // Back up: nothing confirmed was lost.
    nodes[1].start_app();
    let mut delivered = Vec::new();
    for _ in 0..20 {
        let (status, _, body) = site.poll(users[1], Some(college), "notice-1").await;
        if status == StatusCode::OK {
            delivered = body["events"].as_array().unwrap().clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ids: Vec<&str> = delivered
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["before-down"]);

    // Disconnect goes to the user's shard.
    let answer = site
        .client
        .post(format!(
            "{}/api/v1/communication/poll/disconnect/",
            site.server.url
        ))
        .bearer_auth(token(users[2], Some(college)))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let (_, body) = site.online(&[users[0], users[2]]).await;
    assert_eq!(body["online"][users[2].to_string()], false, "{body}");
    assert_eq!(body["online"][users[0].to_string()], true, "{body}");

    // A deploy that lists the brokers in another order would put users where they do not
    // poll: the brokers' records refuse it, and the server does not start.
    let reordered = [&urls[1], &urls[0], &urls[2]].map(String::as_str).join(",");
    let refused = Command::new(built("longpoll-local"))
        .envs(server_env(&reordered))
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("longpoll-local: AMQP_URLS is invalid: broker 0 of AMQP_URLS is refused"),
        "{stderr}"
    );
    assert!(
        stderr.contains("broker-1-of-3"),
        "the broker's own record is named: {stderr}"
    );
}

/// The functions as Lambda runs them (`poll-events` and `publish-event` on a Runtime
/// API) on three shards: every user is served on their own broker, in cursor mode on
/// their own queue and in the guide's mode on a device queue, and a broker down fails its
/// own users alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_functions_on_three_shards() {
    let nodes = tokio::task::spawn_blocking(|| PrivateNode::start_several(3))
        .await
        .unwrap();
    let urls: Vec<String> = nodes.iter().map(PrivateNode::url).collect();
    let urls = urls.join(",");
    let hold = Duration::from_millis(800);
    let env = [("AMQP_URL", ""), ("AMQP_URLS", urls.as_str())];
    let functions = Functions::start_with(8, "", QueueType::Classic, hold, &env).await;
    let table = SlotTable::even(3).unwrap();
    let users: Vec<User> = (0..6)
        .map(|index| {
            let user_id = user_on(&table, index % 3);
            User {
                index,
                subscriber: Subscriber {
                    user_id,
                    college_id: None,
                    device: (index >= 3).then(|| DeviceId::parse("tablet").unwrap()),
                },
                token: token(user_id, None),
            }
        })
        .collect();
    // Cursor mode for the first three, the guide's mode (no cursor) on a device queue for
    // the rest.
    let cursor = |user: &User, acked: &str| (user.index < 3).then(|| acked.to_owned());
    for user in &users {
        let first = functions
            .poll(user, cursor(user, "").as_deref(), hold)
            .await;
        assert!(first.outcome.unwrap().is_empty());
    }
    for user in &users {
        let event = message_event(user.index);
        let published = functions.publish(user, &event, 0).await.outcome.unwrap();
        assert!(published, "routed to {}", user.subscriber.user_id);
        let ids = functions
            .poll(user, cursor(user, "").as_deref(), hold)
            .await;
        assert_eq!(ids.outcome.unwrap(), std::slice::from_ref(&event.id));
        let next = functions
            .poll(user, cursor(user, &event.id).as_deref(), hold)
            .await;
        assert!(next.outcome.unwrap().is_empty());
        let queues = user_queues(&nodes[table.broker_of(user.subscriber.user_id)]);
        assert!(queues.contains(&user.subscriber.queue_name()), "{queues}");
    }

    nodes[2].stop_app();
    for user in &users {
        let down = table.broker_of(user.subscriber.user_id) == 2;
        let poll = functions
            .poll(user, cursor(user, "").as_deref(), hold)
            .await;
        assert_eq!(
            poll.outcome.is_err(),
            down,
            "{}: {:?}",
            user.index,
            poll.outcome
        );
        if let Err(Failure::Error(answer)) = &poll.outcome {
            assert!(answer.starts_with("503"), "{answer}");
        }
        let publish = functions.publish(user, &message_event(user.index), 0).await;
        assert_eq!(publish.outcome.is_err(), down, "{:?}", publish.outcome);
    }
}

fn message_event(n: usize) -> OutgoingEvent {
    let body: EventBody = serde_json::from_value(json!({
        "event": "message", "data": {"id": n, "sender_id": 7, "message": "hi"}
    }))
    .unwrap();
    body.prepare()
}
