//! The drill's users and backend over HTTP, on local servers (`longpoll-local`
//! processes) as an operator runs them in containers: each user long-polls one server,
//! the backend publishes through `POST events/` to the servers in turn, and a browser's
//! patience bounds each poll (the server's hold plus the browser client's 4.5 s margin).

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use longpoll::{config::DEV_PUBLISH_KEY, event::OutgoingEvent, topology::QueueType};
use serde_json::{Value, json};

use super::{Attempt, Failure, Product, User};
use crate::server::{Server, built, free_port};

/// How much longer than its hold a browser waits for a poll's answer (the browser
/// client's `HEALTH_MARGIN_MS`).
pub const BROWSER_MARGIN: Duration = Duration::from_millis(4500);
/// How long the backend waits for a publish's answer.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Local servers, all on one broker.
pub struct Servers {
    servers: Vec<Server>,
    /// Each server's `/metrics`.
    metrics: Vec<String>,
    client: reqwest::Client,
    /// The next server the backend publishes through.
    next: AtomicUsize,
}

impl Servers {
    /// Starts `count` local servers on the broker at `amqp_url` with `queue_type` user
    /// queues and polls held for `hold`; `env` adds to their environment.
    pub async fn start(
        count: usize,
        amqp_url: &str,
        queue_type: QueueType,
        hold: Duration,
        env: &[(&str, &str)],
    ) -> Self {
        let program = built("longpoll-local");
        let hold_ms = hold.as_millis().to_string();
        let mut servers = Vec::with_capacity(count);
        let mut metrics = Vec::with_capacity(count);
        for _ in 0..count {
            let metrics_addr = format!("127.0.0.1:{}", free_port());
            let mut server_env = vec![
                ("AMQP_URL", amqp_url),
                ("QUEUE_TYPE", queue_type.as_str()),
                ("POLL_TIMEOUT_MS", hold_ms.as_str()),
                ("METRICS_ADDR", metrics_addr.as_str()),
            ];
            server_env.extend_from_slice(env);
            servers.push(Server::start(program.clone(), &[], &server_env).await);
            metrics.push(format!("http://{metrics_addr}/metrics"));
        }
        Self {
            servers,
            metrics,
            client: reqwest::Client::new(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Product for Servers {
    async fn poll(
        &self,
        user: &User,
        cursor: Option<&str>,
        hold: Duration,
    ) -> Attempt<Vec<String>> {
        let index = user.index % self.servers.len();
        let url = format!(
            "{}{}?{}",
            self.servers[index].url,
            poll_events::ROUTE.path,
            user.query(cursor)
        );
        let answer = self
            .client
            .get(url)
            .bearer_auth(&user.token)
            .timeout(hold + BROWSER_MARGIN)
            .send()
            .await;
        Attempt {
            via: format!("server {index}"),
            outcome: json_answer(answer).await.map(|body| event_ids(&body)),
        }
    }

    async fn publish(&self, user: &User, event: &OutgoingEvent, _attempt: usize) -> Attempt<bool> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len();
        let answer = self
            .client
            .post(format!(
                "{}{}",
                self.servers[index].url,
                publish_event::ROUTE.path
            ))
            .header("X-Api-Key", DEV_PUBLISH_KEY)
            .json(&publish_body(user, event))
            .timeout(PUBLISH_TIMEOUT)
            .send()
            .await;
        Attempt {
            via: format!("server {index}"),
            outcome: json_answer(answer).await.map(|body| routed(&body)),
        }
    }

    /// `longpoll_broker_failures_total` of each server, as its `/metrics` gives it.
    async fn broker_failures(&self) -> String {
        let mut failures = String::new();
        for (index, url) in self.metrics.iter().enumerate() {
            let text = match self.client.get(url).send().await {
                Ok(answer) => answer.text().await.unwrap_or_default(),
                Err(error) => format!("unreadable: {error}"),
            };
            for line in text
                .lines()
                .filter(|line| line.starts_with(longpoll::metrics::BROKER_FAILURES))
            {
                failures.push_str(&format!("  server {}: {line}\n", index + 1));
            }
        }
        failures
    }
}

/// A `200`'s JSON body, or what went wrong.
async fn json_answer(answer: reqwest::Result<reqwest::Response>) -> Result<Value, Failure> {
    let unanswered = |error: reqwest::Error| {
        if error.is_timeout() {
            Failure::Unanswered(error.to_string())
        } else {
            Failure::Error(error.to_string())
        }
    };
    let response = answer.map_err(unanswered)?;
    let status = response.status();
    let body = response.text().await.map_err(unanswered)?;
    if status != 200 {
        return Err(Failure::Error(format!("{status}: {body}")));
    }
    serde_json::from_str(&body).map_err(|error| Failure::Error(format!("{error}: {body}")))
}

/// The publish endpoint's body for one event to `user`, with the event's own id, so a
/// retry is the same event.
pub fn publish_body(user: &User, event: &OutgoingEvent) -> Value {
    let mut body: Value = serde_json::from_slice(&event.body).expect("an event body is JSON");
    body["user_id"] = json!(user.subscriber.user_id.0);
    body["id"] = json!(event.id);
    body
}

/// The ids of a poll answer's events, in order.
pub fn event_ids(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|event| event["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a publish answer says every event was routed.
pub fn routed(body: &Value) -> bool {
    body["published"]
        .as_array()
        .is_some_and(|published| published.iter().all(|receipt| receipt["routed"] == true))
}
