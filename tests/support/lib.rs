//! Helpers shared by the integration tests.
//!
//! [`scenario`] is the end-to-end walk over real HTTP that the local server (on both
//! brokers) and `cargo lambda watch` must all pass; [`watch`] starts `cargo lambda watch`.
//!
//! Every test uses its own random user and college ids, so tests run in parallel on the
//! one shared broker without seeing each other's events, and leave only queues that
//! expire on their own.

pub mod managed;
pub mod moto;
pub mod private_node;
pub mod process;
pub mod round_trips;
pub mod runtime_api;
pub mod scenario;
pub mod watch;

use std::{process::Command, sync::Arc, time::Duration};

use lambda_http::{Body, Request, Response};
use longpoll::{
    App, Broker, Config, MemoryBroker, RabbitBroker,
    broker::{LingeringBroker, Publication, Receipt},
    budget,
    event::{EventBody, NotificationData, TypingData},
    token::TokenIssuer,
    topology::{Audience, CollegeId, Subscriber, UserId},
};
use serde_json::Value;

/// Every test builds poll budgets: a hold that ends at a given instant.
pub use budget::PollBudget;
use tokio::time::Instant;

pub const JWT_SECRET: &str = "integration-test-secret";

/// The broker under test: `AMQP_URL`, or the local RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| longpoll::config::DEFAULT_AMQP_URL.to_owned())
}

/// A configuration naming the test's connection, so a test can find and close it.
pub fn config(connection_name: &str) -> Config {
    Config::new(&amqp_url(), Some(JWT_SECRET), connection_name)
}

/// A connection name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn rabbit(config: &Config) -> Arc<dyn Broker> {
    Arc::new(RabbitBroker::new(config))
}

/// RabbitMQ with consumers that outlive their polls, as the local server runs it.
pub fn rabbit_lingering(config: &Config) -> Arc<dyn Broker> {
    Arc::new(LingeringBroker::new(
        RabbitBroker::new(config),
        Duration::from_secs(15),
    ))
}

pub fn memory(config: &Config) -> Arc<dyn Broker> {
    Arc::new(
        MemoryBroker::new(config.presence_ttl)
            .with_max_devices_per_user(config.max_devices_per_user),
    )
}

/// A deadline for operations that should not wait long.
pub fn in_a_while() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// A user id no other test (or earlier run) is likely to use.
pub fn unique_user() -> UserId {
    UserId(random_id())
}

pub fn unique_college() -> CollegeId {
    CollegeId(random_id())
}

fn random_id() -> u64 {
    // Large but below 2^53, so JavaScript clients could hold it too.
    (uuid::Uuid::new_v4().as_u128() as u64) % 9_000_000_000_000 + 1_000_000_000
}

pub fn subscriber(user: UserId, college: Option<CollegeId>) -> Subscriber {
    Subscriber {
        user_id: user,
        college_id: college,
        device: None,
    }
}

/// A chat message whose `data.id` is `n`, so tests can check order.
pub fn message(n: i64) -> EventBody {
    serde_json::from_value(serde_json::json!({"event": "message", "data": {
        "id": n, "sender_id": 1, "sender_name": "Tester", "message": format!("message {n}")}}))
    .expect("a valid message")
}

pub fn typing(sender: i64) -> EventBody {
    EventBody::Typing(TypingData {
        sender_id: sender,
        sender_name: None,
        is_typing: true,
        extra: Default::default(),
    })
}

pub fn notice(title: &str) -> EventBody {
    EventBody::Notification(NotificationData {
        title: title.to_owned(),
        message: "body".to_owned(),
        notification_type: Some("notice".to_owned()),
        timestamp: None,
        extra: Default::default(),
    })
}

pub fn message_data_id(event: &longpoll::event::Event) -> i64 {
    event.data["id"]
        .as_i64()
        .expect("a message event with an id")
}

/// Publishes one event and returns its receipt.
pub async fn publish(broker: &dyn Broker, audience: Audience, body: &EventBody) -> Receipt {
    let receipts = broker
        .publish(&[Publication {
            audience,
            event: body.prepare(),
        }])
        .await
        .expect("publish");
    receipts.into_iter().next().expect("one receipt")
}

/// Publishes many events to one audience, in order, confirmed together.
pub async fn publish_all(
    broker: &dyn Broker,
    audience: Audience,
    bodies: &[EventBody],
) -> Vec<Receipt> {
    let batch: Vec<Publication> = bodies
        .iter()
        .map(|body| Publication {
            audience,
            event: body.prepare(),
        })
        .collect();
    broker.publish(&batch).await.expect("publish")
}

/// A poll with a short hold, used to create and bind a subscriber's queue. It marks the
/// user online first, which also opens the broker connection outside the short hold;
/// the hold still bounds the queue's creation, so it leaves room for a busy broker.
pub async fn declare(broker: &dyn Broker, subscriber: &Subscriber) {
    broker
        .mark_online(
            subscriber.user_id,
            subscriber.college_id,
            &PollBudget::until(in_a_while()),
        )
        .await
        .expect("mark online");
    let events = broker
        .wait_for_events(
            subscriber,
            &PollBudget::until(Instant::now() + Duration::from_millis(300)),
        )
        .await
        .expect("declare by polling");
    assert!(events.is_empty(), "a fresh queue has no events");
}

pub fn token(user: UserId, college: Option<CollegeId>) -> String {
    TokenIssuer::new(JWT_SECRET.as_bytes()).mint(
        user,
        college,
        Some("Tester"),
        Duration::from_secs(600),
    )
}

/// The publish key the tests configure.
pub const PUBLISH_KEY: &str = "integration-test-publish-key";

/// A publish handler on `broker` that accepts [`PUBLISH_KEY`].
pub fn publisher(config: &Config, broker: Arc<dyn Broker>) -> publish_event::Publisher {
    let mut config = config.clone();
    config.publish_api_key = Some(PUBLISH_KEY.to_owned());
    publish_event::Publisher::new(&config, broker).expect("a publish key is set")
}

/// An app on `broker` whose polls hold for `hold`, with the broker beside it for the
/// test's own publishing and declaring.
pub fn app(config: Config, broker: Arc<dyn Broker>, hold: Duration) -> TestApp {
    let mut config = config;
    config.poll_timeout = hold;
    let app = App::new(config, broker.clone()).expect("the test config has a JWT secret");
    TestApp { app, broker }
}

/// An [`App`] (it derefs to one) and the whole broker under it.
#[derive(Clone)]
pub struct TestApp {
    pub app: App,
    pub broker: Arc<dyn Broker>,
}

impl std::ops::Deref for TestApp {
    type Target = App;

    fn deref(&self) -> &App {
        &self.app
    }
}

impl std::ops::DerefMut for TestApp {
    fn deref_mut(&mut self) -> &mut App {
        &mut self.app
    }
}

/// A request to a handler, built from a real API Gateway HTTP API (payload 2.0) event in
/// `fixtures/<route>.json`, with the parts a test varies filled in.
pub struct Fixture {
    event: Value,
}

impl Fixture {
    pub fn new(route: &str) -> Self {
        let path = format!("{}/fixtures/{route}.json", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
        let mut event: Value =
            serde_json::from_str(&text).unwrap_or_else(|error| panic!("{path}: {error}"));
        event["headers"]
            .as_object_mut()
            .expect("headers")
            .remove("authorization");
        Self { event }
    }

    /// Sets the `Authorization` header, e.g. `Bearer <jwt>`.
    pub fn authorization(mut self, value: &str) -> Self {
        self.event["headers"]["authorization"] = Value::from(value);
        self
    }

    /// Sets the raw query string, e.g. `token=<jwt>`.
    pub fn query(mut self, query: &str) -> Self {
        self.event["rawQueryString"] = Value::from(query);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.event["headers"][name] = Value::from(value);
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.event["body"] = Value::from(body);
        self
    }

    pub fn method(mut self, method: &str) -> Self {
        self.event["requestContext"]["http"]["method"] = Value::from(method);
        self
    }

    /// Sets the path, as `cargo lambda watch` (`/lambda-url/<function>/`) would.
    pub fn path(mut self, path: &str) -> Self {
        self.event["rawPath"] = Value::from(path);
        self.event["requestContext"]["http"]["path"] = Value::from(path);
        self
    }

    pub fn request(&self) -> Request {
        lambda_http::request::from_str(&self.event()).expect("a valid API Gateway event")
    }

    /// The event as API Gateway sends it to Lambda (JSON), for a Runtime API.
    pub fn event(&self) -> String {
        self.event.to_string()
    }
}

/// Makes the broker a behaviour test runs on: [`rabbit`] or [`memory`].
pub type MakeBroker = fn(&Config) -> Arc<dyn Broker>;

/// Runs each named `async fn(MakeBroker)` three times: on RabbitMQ (module `rabbitmq`),
/// on RabbitMQ with lingering consumers as the local server runs it (module
/// `rabbitmq_lingering`), and on the in-memory broker (module `memory`).
#[macro_export]
macro_rules! on_both_brokers {
    ($($behaviour:ident),* $(,)?) => {
        mod rabbitmq {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() { super::$behaviour(longpoll_tests::rabbit).await })*
        }
        mod rabbitmq_lingering {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() { super::$behaviour(longpoll_tests::rabbit_lingering).await })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() { super::$behaviour(longpoll_tests::memory).await })*
        }
    };
}

/// Asserts a contract error: `status`, a JSON body with `error` = `code` and a
/// non-empty `message`, which it returns.
pub fn assert_error(response: &Response<Body>, status: u16, code: &str) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = json_of(response);
    assert_eq!(body["error"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.is_empty(), "{body}");
    message
}

/// The response status and its JSON body.
pub fn json_of(response: &Response<Body>) -> Value {
    serde_json::from_slice(response.body().as_ref()).expect("a JSON body")
}

/// Runs `rabbitmqctl` against the local node and returns its stdout.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The queue's properties as the broker reports them: (arguments, durable, auto_delete).
pub fn queue_on_broker(name: &str) -> Option<(Value, bool, bool)> {
    let listing: Value = serde_json::from_str(&rabbitmqctl(&[
        "list_queues",
        "-q",
        "name",
        "arguments",
        "durable",
        "auto_delete",
        "--formatter",
        "json",
    ]))
    .expect("JSON from rabbitmqctl");
    listing
        .as_array()?
        .iter()
        .find(|queue| queue["name"] == name)
        .map(|queue| {
            // rabbitmqctl lists arguments as [name, type, value] triples.
            let arguments: serde_json::Map<String, Value> = queue["arguments"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|triple| {
                    (
                        triple[0].as_str().unwrap_or_default().to_owned(),
                        triple[2].clone(),
                    )
                })
                .collect();
            (
                Value::Object(arguments),
                queue["durable"] == true,
                queue["auto_delete"] == true,
            )
        })
}

/// Closes the broker connection that carries `connection_name`, as an operator (or a
/// broker restart) would.
pub fn close_connection(connection_name: &str) {
    // Plain output: the JSON formatter prints pids in a form close_connection refuses.
    let listing = rabbitmqctl(&["list_connections", "-q", "pid", "client_properties"]);
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(connection_name))
        .filter_map(|line| line.split('\t').next())
        .collect();
    assert_eq!(
        pids.len(),
        1,
        "exactly one connection named {connection_name}"
    );
    rabbitmqctl(&["close_connection", pids[0], "closed by the reconnect test"]);
}
