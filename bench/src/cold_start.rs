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
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    routing::{get, post},
};
use longpoll::{
    Broker,
    broker::Publication,
    config::DEV_JWT_SECRET,
    token::TokenIssuer,
    topology::{Audience, Subscriber, UserId},
};
use serde_json::Value;
use tokio::{
    net::TcpListener,
    sync::{Mutex, mpsc},
    time::Instant,
};

use crate::{load, probes, stats};

/// An API Gateway HTTP API (payload 2.0) request for `poll/events/`, as the tests use.
const POLL_EVENT: &str = include_str!("../../tests/fixtures/poll-events.json");

/// What the runtime API saw of the function.
enum Seen {
    /// Its first (or a later) `invocation/next`.
    Next(Instant),
    /// A response (status code of the HTTP response inside, and its body).
    Response(Instant, Value),
    Error(String),
}

struct Runtime {
    invocations: Mutex<mpsc::Receiver<String>>,
    seen: mpsc::UnboundedSender<Seen>,
}

/// The Runtime API on a loopback port: hands out queued invocations, reports what the
/// function does.
pub struct RuntimeApi {
    pub address: String,
    invoke: mpsc::Sender<String>,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl RuntimeApi {
    pub async fn start() -> RuntimeApi {
        let (invoke, invocations) = mpsc::channel(16);
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let state = Arc::new(Runtime {
            invocations: Mutex::new(invocations),
            seen: seen_tx,
        });
        let router = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, router).await });
        RuntimeApi {
            address,
            invoke,
            seen,
        }
    }

    /// Queues one invocation with this event.
    pub async fn invoke(&self, event: String) {
        self.invoke.send(event).await.unwrap();
    }

    /// The next thing the function did that is not an `invocation/next`, and the time
    /// of the first `invocation/next` before it, if any.
    async fn outcome(&mut self) -> (Option<Instant>, Instant, Value) {
        let mut ready = None;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.seen.recv()).await {
                Ok(Some(Seen::Next(at))) => {
                    ready.get_or_insert(at);
                }
                Ok(Some(Seen::Response(at, body))) => return (ready, at, body),
                Ok(Some(Seen::Error(error))) => panic!("the function failed: {error}"),
                Ok(None) | Err(_) => panic!("the function did not answer within 30 s"),
            }
        }
    }
}

async fn next(State(runtime): State<Arc<Runtime>>) -> (HeaderMap, String) {
    let _ = runtime.seen.send(Seen::Next(Instant::now()));
    let event = runtime
        .invocations
        .lock()
        .await
        .recv()
        .await
        .unwrap_or_default();
    let deadline = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        + Duration::from_secs(7);
    let mut headers = HeaderMap::new();
    let id = uuid::Uuid::new_v4().to_string();
    headers.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_str(&id).unwrap(),
    );
    headers.insert(
        "lambda-runtime-deadline-ms",
        HeaderValue::from_str(&deadline.as_millis().to_string()).unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:eu-west-1:123456789012:function:bench"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        HeaderValue::from_static("Root=1-00000000-000000000000000000000000;Sampled=0"),
    );
    (headers, event)
}

async fn response(
    State(runtime): State<Arc<Runtime>>,
    UrlPath(_id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    let body = serde_json::from_slice(&body).unwrap_or_default();
    let _ = runtime.seen.send(Seen::Response(Instant::now(), body));
    StatusCode::ACCEPTED
}

async fn error(State(runtime): State<Arc<Runtime>>, body: Bytes) -> StatusCode {
    let _ = runtime
        .seen
        .send(Seen::Error(String::from_utf8_lossy(&body).into_owned()));
    StatusCode::ACCEPTED
}

async fn init_error(state: State<Arc<Runtime>>, body: Bytes) -> StatusCode {
    error(state, body).await
}

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
    let mut runtime = RuntimeApi::start().await;
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
        publish(broker, user).await;
        runtime.invoke(event.clone()).await;
        let spawned = Instant::now();
        let mut child = spawn(bootstrap, &runtime.address, amqp_url);
        let (ready, answered, body) = runtime.outcome().await;
        let _ = child.kill();
        let _ = child.wait();
        check_answer(&body);
        figures.starts.push(ColdStart {
            ready_ms: (ready.expect("invocation/next came first") - spawned).as_secs_f64() * 1e3,
            answered_ms: (answered - spawned).as_secs_f64() * 1e3,
        });
    }

    let mut child = spawn(bootstrap, &runtime.address, amqp_url);
    for _ in 0..invocations {
        publish(broker, user).await;
        runtime.invoke(event.clone()).await;
        let (_, _, body) = runtime.outcome().await;
        check_answer(&body);
    }
    figures.peak_rss_kib = stats::status_kib(child.id(), "VmHWM");
    let _ = child.kill();
    let _ = child.wait();
    figures
}

fn spawn(bootstrap: &Path, runtime_api: &str, amqp_url: &str) -> std::process::Child {
    Command::new(bootstrap)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
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
