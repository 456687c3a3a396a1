//! The local server's `GET /metrics` after a scripted scenario on RabbitMQ: the binary,
//! run as an operator runs it, reports exactly what it answered, in Prometheus text
//! on its own listener, never on the API's port.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use longpoll::{
    config::{DEV_JWT_SECRET, DEV_PUBLISH_KEY},
    token::TokenIssuer,
    topology::UserId,
};
use longpoll_testkit::{amqp_url, unique_user};
use serde_json::{Value, json};

const POLL: &str = "/api/v1/communication/poll/events/";
const PUBLISH: &str = "/api/v1/communication/events/";

/// The binary on RabbitMQ with one poll per user, holding 1 s; killed when dropped.
struct Server {
    child: Child,
    api: String,
    metrics: String,
}

impl Server {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_longpoll-local"))
            .args(["--addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
            .env("AMQP_URL", amqp_url())
            .env_remove("JWT_SECRET")
            .env_remove("PUBLISH_API_KEY")
            .env("POLL_TIMEOUT_MS", "1000")
            .env("MAX_POLLS_PER_USER", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut api, mut metrics) = (None, None);
        for line in lines.by_ref() {
            let line = line.unwrap();
            let last = line.rsplit(' ').next().unwrap().to_owned();
            if line.starts_with("longpoll-local listening on") {
                api = Some(last);
            } else if line.starts_with("metrics (Prometheus text):") {
                metrics = Some(last);
                break;
            }
        }
        // The rest of the banner (and the shutdown's line) still has to go somewhere: a
        // closed pipe would fail the server's next print, and with it the server.
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            api: api.expect("the banner names the API's address"),
            metrics: metrics.expect("the banner names the metrics' address"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token the server takes: it runs with the development secret.
fn dev_token(user: UserId) -> String {
    TokenIssuer::new(DEV_JWT_SECRET.as_bytes()).mint(user, None, None, Duration::from_secs(600))
}

/// The value of the sample `series` (name and labels as Prometheus prints them).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a sample value is a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_the_server_answered() {
    let server = Server::start();
    let client = reqwest::Client::new();
    let (alice, bob) = (unique_user(), unique_user());
    let poll = |user| {
        client
            .get(format!("{}{POLL}", server.api))
            .bearer_auth(dev_token(user))
            .send()
    };
    let publish = |key: &str, body: Value| {
        client
            .post(format!("{}{PUBLISH}", server.api))
            .header("x-api-key", key)
            .json(&body)
            .send()
    };
    let message = |user| json!({"user_id": user, "event": "message", "data": {"id": 1, "sender_id": 2, "sender_name": "Bob", "message": "hi"}});

    // No token.
    let anonymous = client
        .get(format!("{}{POLL}", server.api))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // Alice's poll is held (nothing waits) while a second one of hers hits the cap.
    let held = tokio::spawn(poll(alice));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(poll(alice).await.unwrap().status(), 429);
    let empty: Value = held.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(empty["events"], json!([]));
    // Two events for Alice (her queue exists), one for Bob (who never polled), one
    // refused for a wrong key.
    let batch = json!({"events": [message(alice.0), message(alice.0), message(bob.0)]});
    let published: Value = publish(DEV_PUBLISH_KEY, batch)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(published["published"].as_array().unwrap().len(), 3);
    assert_eq!(
        publish("wrong", message(alice.0)).await.unwrap().status(),
        401
    );
    let delivered: Value = poll(alice).await.unwrap().json().await.unwrap();
    assert_eq!(delivered["events"].as_array().unwrap().len(), 2);

    let scrape = client.get(&server.metrics).send().await.unwrap();
    assert_eq!(
        scrape.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    let text = scrape.text().await.unwrap();
    let expected = [
        (r#"longpoll_polls_answered_total{outcome="error"}"#, 2.0),
        (r#"longpoll_polls_answered_total{outcome="empty"}"#, 1.0),
        (r#"longpoll_polls_answered_total{outcome="events"}"#, 1.0),
        (r#"longpoll_errors_total{code="missing_token"}"#, 1.0),
        (r#"longpoll_errors_total{code="too_many_polls"}"#, 1.0),
        (r#"longpoll_errors_total{code="invalid_api_key"}"#, 1.0),
        (r#"longpoll_caps_hit_total{cap="polls_per_user"}"#, 1.0),
        (r#"longpoll_events_published_total{result="routed"}"#, 2.0),
        (r#"longpoll_events_published_total{result="unrouted"}"#, 1.0),
        ("longpoll_events_delivered_total", 2.0),
        ("longpoll_delivery_latency_seconds_count", 2.0),
        ("longpoll_polls_held", 0.0),
        ("longpoll_broker_connects_total", 1.0),
    ];
    for (series, value) in expected {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    // Delivered within the test's few seconds, and measured to the millisecond.
    let latency = sample(&text, "longpoll_delivery_latency_seconds_sum").unwrap();
    assert!(latency > 0.0 && latency < 10.0, "{latency}");
    assert!(
        sample(
            &text,
            r#"longpoll_broker_operation_seconds_count{operation="publish"}"#
        ) >= Some(1.0),
        "{text}"
    );
    // Typed as Prometheus expects.
    assert!(text.contains("# TYPE longpoll_polls_held gauge"), "{text}");
    assert!(
        text.contains("# TYPE longpoll_delivery_latency_seconds histogram"),
        "{text}"
    );

    // Not on the API's port.
    let public = client
        .get(format!("{}/metrics", server.api))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
}
