//! Function cold start and memory, measured on the real bootstraps (host release
//! builds) against a minimal Lambda Runtime API on loopback: the same endpoints the
//! function's runtime client calls on AWS (`invocation/next`, `…/response`, `…/error`).
//!
//! For each start: the process is spawned, and the clock reads
//! - *ready*: its first `invocation/next` (runtime and configuration initialised; the
//!   broker is not connected yet: the functions connect on first use);
//! - *answered*: its first response, to a poll that finds an event queued (so the
//!   broker connection, the queue declare and the consume are included).
//!
//! Then one process answers many such polls and its peak RSS (`VmHWM`) is read.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use longpoll::{
    Broker,
    broker::Publication,
    config::DEV_JWT_SECRET,
    token::TokenIssuer,
    topology::{Audience, Subscriber, UserId},
};
use longpoll_testkit::runtime_api::{Outcome, RuntimeApi};
use serde_json::Value;
use tokio::time::Instant;

use crate::{load, probes, stats};

/// An API Gateway HTTP API (payload 2.0) request for `poll/events/`, as the tests use.
const POLL_EVENT: &str = include_str!("../../testkit/fixtures/poll-events.json");

/// One cold start's figures, in milliseconds.
pub struct ColdStart {
    pub ready_ms: f64,
    pub answered_ms: f64,
}

/// Figures of one function binary.
pub struct FunctionFigures {
    pub starts: Vec<ColdStart>,
    /// Peak RSS (KiB) of one process after `invocations` polls.
    pub peak_rss_kib: Option<usize>,
    pub invocations: usize,
}

/// Starts `bootstrap` `starts` times, each answering one poll with a queued event, then
/// once more for `invocations` polls and its peak RSS.
pub async fn measure(
    bootstrap: &Path,
    amqp_url: &str,
    broker: &dyn Broker,
    starts: usize,
    invocations: usize,
) -> FunctionFigures {
    let runtime = RuntimeApi::start().await;
    let user = UserId(load::fresh_user_base());
    let subscriber = Subscriber {
        user_id: user,
        college_id: None,
        device: None,
    };
    let token = TokenIssuer::new(DEV_JWT_SECRET.as_bytes()).mint(
        user,
        None,
        None,
        Duration::from_secs(3600),
    );
    let mut event: Value = serde_json::from_str(POLL_EVENT).unwrap();
    event["headers"]["authorization"] = format!("Bearer {token}").into();
    let event = event.to_string();
    // The user's queue, so that each poll finds the event published before it.
    probes::declare(broker, &subscriber).await;

    let mut figures = FunctionFigures {
        starts: Vec::new(),
        peak_rss_kib: None,
        invocations,
    };
    for _ in 0..starts {
        // A Runtime API per start, so its first `invocation/next` is this process's.
        let runtime = RuntimeApi::start().await;
        publish(broker, user).await;
        let invocation = runtime.invoke(event.clone(), INVOCATION_TIMEOUT);
        let spawned = Instant::now();
        let mut child = spawn(bootstrap, &runtime.address, amqp_url);
        let (body, answered) = answer(invocation).await;
        let _ = child.kill();
        let _ = child.wait();
        check_answer(&body);
        let ready = runtime.first_next().expect("invocation/next came first");
        figures.starts.push(ColdStart {
            ready_ms: (ready - spawned).as_secs_f64() * 1e3,
            answered_ms: (answered - spawned).as_secs_f64() * 1e3,
        });
    }

    let mut child = spawn(bootstrap, &runtime.address, amqp_url);
    for _ in 0..invocations {
        publish(broker, user).await;
        let (body, _) = answer(runtime.invoke(event.clone(), INVOCATION_TIMEOUT)).await;
        check_answer(&body);
    }
    figures.peak_rss_kib = stats::status_kib(child.id(), "VmHWM");
    let _ = child.kill();
    let _ = child.wait();
    figures
}

/// Each invocation's deadline, as the template's function timeout sets it.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(7);

/// The function's answer to `invocation` and when it came, within 30 s.
async fn answer(invocation: longpoll_testkit::runtime_api::Invocation) -> (Value, Instant) {
    match tokio::time::timeout(Duration::from_secs(30), invocation.outcome()).await {
        Ok(Some(Outcome::Response { body, at })) => (body, at),
        Ok(Some(Outcome::Error(error))) => panic!("the function failed: {error}"),
        Ok(None) | Err(_) => panic!("the function did not answer within 30 s"),
    }
}

fn spawn(bootstrap: &Path, runtime_api: &str, amqp_url: &str) -> std::process::Child {
    Command::new(bootstrap)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env(longpoll::lambda::INITIALIZATION_TYPE, "on-demand")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
        .env("AMQP_URL", amqp_url)
        .env("JWT_SECRET", DEV_JWT_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", bootstrap.display()))
}

async fn publish(broker: &dyn Broker, user: UserId) {
    let publication = Publication {
        audience: Audience::User(user),
        event: load::message(1).prepare(),
    };
    let receipts = broker.publish(&[publication]).await.unwrap();
    assert!(receipts[0].routed, "the user's queue exists");
}

/// The function's answer (an API Gateway response) is a 200 with the queued event.
fn check_answer(response: &Value) {
    assert_eq!(response["statusCode"], 200, "poll answered 200: {response}");
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap_or("{}")).unwrap();
    assert_eq!(
        body["events"].as_array().map(Vec::len),
        Some(1),
        "the poll returned the queued event: {body}"
    );
}
