//! The Lambda Runtime API on a loopback port: what a function's runtime client talks to
//! on AWS (`invocation/next`, `…/response`, `…/error`, `init/error`), with the request-id
//! and deadline headers. It serves any number of `next` calls at once, so a function
//! started with `AWS_LAMBDA_MAX_CONCURRENCY=N` (Lambda Managed Instances) can hold N
//! invocations in one process, and it matches each answer to its invocation. Of the
//! Extensions API it serves `register` and `event/next` (which, with no events to send
//! before a shutdown, never answers), and records who registered.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex as SyncMutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    routing::{get, post},
};
use serde_json::Value;
use tokio::{
    net::TcpListener,
    sync::{Mutex, mpsc, oneshot},
    time::Instant,
};

/// How one invocation ended.
#[derive(Debug)]
pub enum Outcome {
    /// The function's answer (an API Gateway response), when it came.
    Response { body: Value, at: Instant },
    /// The function reported an error for the invocation (or for its start-up).
    Error(String),
}

/// An invocation waiting for a `next`, with where to report its outcome.
struct Pending {
    event: String,
    timeout: Duration,
    outcome: oneshot::Sender<Outcome>,
}

struct Shared {
    queued: Mutex<mpsc::UnboundedReceiver<Pending>>,
    /// Request id → where its outcome goes.
    in_flight: SyncMutex<HashMap<String, oneshot::Sender<Outcome>>>,
    /// When the function first asked for an invocation (its start-up is over).
    first_next: SyncMutex<Option<Instant>>,
    /// Start-up errors (`init/error`).
    init_errors: mpsc::UnboundedSender<String>,
    /// The names of the extensions registered, and the events each asked for.
    extensions: SyncMutex<Vec<(String, Value)>>,
}

/// The Runtime API; `address` goes into the function's `AWS_LAMBDA_RUNTIME_API`.
pub struct RuntimeApi {
    pub address: String,
    queue: mpsc::UnboundedSender<Pending>,
    shared: Arc<Shared>,
    init_errors: mpsc::UnboundedReceiver<String>,
}

/// An invocation handed to the Runtime API; resolves to its outcome.
pub struct Invocation {
    /// When the invocation was queued.
    pub queued_at: Instant,
    outcome: oneshot::Receiver<Outcome>,
}

impl Invocation {
    /// The outcome, or `None` if the Runtime API went away first.
    pub async fn outcome(self) -> Option<Outcome> {
        self.outcome.await.ok()
    }
}

impl RuntimeApi {
    pub async fn start() -> RuntimeApi {
        let (queue, queued) = mpsc::unbounded_channel();
        let (init_errors_tx, init_errors) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queued: Mutex::new(queued),
            in_flight: SyncMutex::default(),
            first_next: SyncMutex::default(),
            init_errors: init_errors_tx,
            extensions: SyncMutex::default(),
        });
        let router = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .route("/2020-01-01/extension/register", post(register_extension))
            .route("/2020-01-01/extension/event/next", get(extension_event))
            .with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, router).await });
        RuntimeApi {
            address,
            queue,
            shared,
            init_errors,
        }
    }

    /// Queues an invocation with this event (an API Gateway request) and a deadline
    /// `timeout` after the function picks it up, as Lambda counts a function timeout.
    pub fn invoke(&self, event: String, timeout: Duration) -> Invocation {
        let (outcome, receiver) = oneshot::channel();
        let pending = Pending {
            event,
            timeout,
            outcome,
        };
        let _ = self.queue.send(pending);
        Invocation {
            queued_at: Instant::now(),
            outcome: receiver,
        }
    }

    /// When the function first asked for an invocation, if it has.
    pub fn first_next(&self) -> Option<Instant> {
        *self.shared.first_next.lock().unwrap()
    }

    /// The extensions registered by now: name, and the events asked for.
    pub fn extensions(&self) -> Vec<(String, Value)> {
        self.shared.extensions.lock().unwrap().clone()
    }

    /// A start-up error the function reported, if any came by now.
    pub fn init_error(&mut self) -> Option<String> {
        self.init_errors.try_recv().ok()
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> (HeaderMap, String) {
    shared
        .first_next
        .lock()
        .unwrap()
        .get_or_insert_with(Instant::now);
    // One `next` at a time takes from the queue; the others wait their turn here, as
    // concurrent `next` calls wait on Lambda.
    let pending = shared.queued.lock().await.recv().await;
    let Some(pending) = pending else {
        return (HeaderMap::new(), String::new());
    };
    let id = uuid::Uuid::new_v4().to_string();
    let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + pending.timeout;
    shared
        .in_flight
        .lock()
        .unwrap()
        .insert(id.clone(), pending.outcome);
    let mut headers = HeaderMap::new();
    let header = |value: &str| HeaderValue::from_str(value).unwrap();
    headers.insert("lambda-runtime-aws-request-id", header(&id));
    headers.insert(
        "lambda-runtime-deadline-ms",
        header(&deadline.as_millis().to_string()),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        header("arn:aws:lambda:eu-west-1:123456789012:function:longpoll-test"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        header("Root=1-00000000-000000000000000000000000;Sampled=0"),
    );
    (headers, pending.event)
}

fn settle(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    match shared.in_flight.lock().unwrap().remove(id) {
        Some(waiting) => {
            let _ = waiting.send(outcome);
            StatusCode::ACCEPTED
        }
        // Lambda refuses a second answer to one invocation.
        None => StatusCode::BAD_REQUEST,
    }
}

async fn response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let body = serde_json::from_slice(&body).unwrap_or_default();
    let at = Instant::now();
    settle(&shared, &id, Outcome::Response { body, at })
}

async fn error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let text = String::from_utf8_lossy(&body).into_owned();
    settle(&shared, &id, Outcome::Error(text))
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let _ = shared
        .init_errors
        .send(String::from_utf8_lossy(&body).into_owned());
    StatusCode::ACCEPTED
}

async fn register_extension(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (HeaderMap, String) {
    let name = headers
        .get("lambda-extension-name")
        .and_then(|name| name.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let events = serde_json::from_slice::<Value>(&body).unwrap_or_default()["events"].clone();
    shared.extensions.lock().unwrap().push((name, events));
    let mut reply = HeaderMap::new();
    let id = uuid::Uuid::new_v4().to_string();
    reply.insert(
        "lambda-extension-identifier",
        HeaderValue::from_str(&id).unwrap(),
    );
    (
        reply,
        r#"{"functionName":"longpoll-test","functionVersion":"$LATEST","handler":"bootstrap"}"#
            .to_owned(),
    )
}

/// No event ever comes before the environment shuts down (this one never does).
async fn extension_event() -> String {
    std::future::pending().await
}
