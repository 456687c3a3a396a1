//! The drill's users and backend on the functions as Lambda runs them: `poll-events`
//! and `publish-event` processes on a [`RuntimeApi`] each, fed API Gateway events. Two
//! processes take each function's invocations, as two Lambda Managed Instances
//! would, every poll and publish going to whichever asks first. A poll's invocation has
//! the template's function timeout (the hold plus 1.5 s) as its deadline, and the
//! browser waits for the answer as long as it would over HTTP.

use std::time::Duration;

use longpoll::{config::DEV_PUBLISH_KEY, event::OutgoingEvent, topology::QueueType};
use serde_json::Value;

use super::{
    Attempt, Failure, Product, User,
    servers::{BROWSER_MARGIN, event_ids, publish_body, routed},
};
use crate::{
    Fixture,
    managed::Function,
    runtime_api::{Outcome, RuntimeApi},
    server::built,
};

/// Processes per function.
const PROCESSES: usize = 2;
/// Publishes one `publish-event` process serves at once.
const PUBLISH_CONCURRENCY: usize = 64;
/// The function timeout beyond the hold (the template's: 7 s for 5.5 s).
const TIMEOUT_BEYOND_HOLD: Duration = Duration::from_millis(1500);
/// A publish's function timeout (the template's).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(7);

/// The two functions' processes and their Runtime APIs.
pub struct Functions {
    /// First, so that they stop before their Runtime APIs do.
    _processes: Vec<Function>,
    polls: RuntimeApi,
    publishes: RuntimeApi,
}

impl Functions {
    /// Starts two `poll-events` processes (each serving up to `users` polls at once) and
    /// two `publish-event` processes on the broker at `amqp_url`, with `queue_type` user
    /// queues and polls held for `hold`.
    pub async fn start(
        users: usize,
        amqp_url: &str,
        queue_type: QueueType,
        hold: Duration,
    ) -> Self {
        Self::start_with(users, amqp_url, queue_type, hold, &[]).await
    }

    /// [`Functions::start`] with `extra` added to the processes' environment (it wins;
    /// a variable set to blank counts as unset, so `("AMQP_URL", "")` beside
    /// `("AMQP_URLS", …)` runs them on several brokers).
    pub async fn start_with(
        users: usize,
        amqp_url: &str,
        queue_type: QueueType,
        hold: Duration,
        extra: &[(&str, &str)],
    ) -> Self {
        let (poll_events, publish_event) = (built("poll-events"), built("publish-event"));
        let (polls, publishes) = (RuntimeApi::start().await, RuntimeApi::start().await);
        let hold_ms = hold.as_millis().to_string();
        let mut env = vec![
            ("QUEUE_TYPE", queue_type.as_str()),
            ("POLL_TIMEOUT_MS", hold_ms.as_str()),
            ("PUBLISH_API_KEY", DEV_PUBLISH_KEY),
            ("METRICS", "off"),
        ];
        env.extend_from_slice(extra);
        let mut processes = Vec::new();
        for n in 0..PROCESSES {
            let name = format!("poll-events-drill-{n}");
            processes.push(Function::start(
                &poll_events,
                &polls,
                users,
                &name,
                amqp_url,
                &env,
            ));
            let name = format!("publish-event-drill-{n}");
            processes.push(Function::start(
                &publish_event,
                &publishes,
                PUBLISH_CONCURRENCY,
                &name,
                amqp_url,
                &env,
            ));
        }
        Self {
            polls,
            publishes,
            _processes: processes,
        }
    }
}

/// The function's answer (an API Gateway response) to `event`, within `patience`.
async fn invoke(
    runtime: &RuntimeApi,
    event: String,
    timeout: Duration,
    patience: Duration,
) -> Result<Value, Failure> {
    let invocation = runtime.invoke(event, timeout);
    match tokio::time::timeout(patience, invocation.outcome()).await {
        Err(_) => Err(Failure::Unanswered(format!(
            "no answer within {patience:?}"
        ))),
        Ok(None) => Err(Failure::Error("the Runtime API stopped".to_owned())),
        Ok(Some(Outcome::Error(error))) => {
            Err(Failure::Error(format!("invocation error: {error}")))
        }
        Ok(Some(Outcome::Response { body, .. })) => {
            let status = body["statusCode"].as_u64().unwrap_or_default();
            let text = body["body"].as_str().unwrap_or_default();
            if status != 200 {
                return Err(Failure::Error(format!("{status}: {text}")));
            }
            serde_json::from_str(text).map_err(|error| Failure::Error(format!("{error}: {text}")))
        }
    }
}

impl Product for Functions {
    async fn poll(
        &self,
        user: &User,
        cursor: Option<&str>,
        hold: Duration,
    ) -> Attempt<Vec<String>> {
        let event = Fixture::new("poll-events")
            .authorization(&format!("Bearer {}", user.token))
            .query(&user.query(cursor))
            .event();
        let timeout = hold + TIMEOUT_BEYOND_HOLD;
        let answer = invoke(&self.polls, event, timeout, hold + BROWSER_MARGIN).await;
        Attempt {
            via: "poll-events".to_owned(),
            outcome: answer.map(|body| event_ids(&body)),
        }
    }

    async fn publish(&self, user: &User, event: &OutgoingEvent, _attempt: usize) -> Attempt<bool> {
        let event = Fixture::new("publish-event")
            .header("x-api-key", DEV_PUBLISH_KEY)
            .body(&publish_body(user, event).to_string())
            .event();
        let answer = invoke(&self.publishes, event, PUBLISH_TIMEOUT, PUBLISH_TIMEOUT).await;
        Attempt {
            via: "publish-event".to_owned(),
            outcome: answer.map(|body| routed(&body)),
        }
    }
}
