//! The local server: every function's handler — the very code the Lambda binaries run —
//! mounted on its real route, in one process.
//!
//! - [`Functions`]: the handlers' dependencies, on the in-memory broker by default or on
//!   RabbitMQ when `AMQP_URL` is set.
//! - [`MOUNTS`]: each function's route (exported by its crate beside its handler) and
//!   the handler; [`router`] mounts them as an axum router, with CORS for front ends on
//!   other local ports.
//! - [`demo`]: the demo page at `/demo/` (two users chatting through the browser client);
//!   the OpenAPI description is at `/openapi.yaml`.
//! - [`serve`]: runs the router until `shutdown` resolves; held polls answer before it
//!   returns (their hold ends), new connections are refused meanwhile.
//! - [`edge`]: the connection cap, the header-read timeout and the bounded shutdown that
//!   keep one client's sockets from tying the server up.
//! - [`metrics`]: `GET /metrics` in Prometheus text, on a listener of its own.
//!
//! Each request becomes a `lambda_http::Request` (method, URI, headers, body), exactly
//! what the handler sees under API Gateway bar the Lambda context, so the poll holds for
//! `POLL_TIMEOUT_MS`.

pub mod demo;
pub mod edge;
pub mod metrics;

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    body::{Body as AxumBody, to_bytes},
    extract::{Request as AxumRequest, State},
    http::{StatusCode, header},
    response::Response as AxumResponse,
    routing::any,
};
use futures_lite::future::Boxed;
use lambda_http::{Body, Request, Response};
use longpoll::{
    App, Broker, Config, MemoryBroker, RabbitBroker,
    broker::{self, LingeringBroker},
    config::ConfigError,
    http::{ApiError, json_response},
    publish::MAX_BODY_BYTES,
    routes::Route,
    topology::QueueType,
};
use publish_event::Publisher;

/// The OpenAPI 3 description of the routes, served at `/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

/// How long a user's consumer outlives their poll on RabbitMQ: longer than the gap
/// between one poll's answer and the next poll (a few milliseconds for a live client,
/// up to the client's back-off after an error).
pub const CONSUMER_LINGER: std::time::Duration = std::time::Duration::from_secs(15);
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::cors::CorsLayer;

pub use longpoll::config::{DEV_JWT_SECRET, DEV_PUBLISH_KEY};
/// The CORS policy the local server takes (`--cors-origins`), shared with the functions.
pub use longpoll::cors::layer as cors;

/// Which broker the server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Memory,
    RabbitMq,
}

/// The handlers' dependencies, shared by every request.
pub struct Functions {
    pub app: App,
    pub publisher: Publisher,
    /// The whole broker, for the health check and the graceful close.
    pub broker: Arc<dyn Broker>,
    pub kind: BrokerKind,
}

impl Functions {
    /// Builds the functions on `kind`, filling in development secrets where the
    /// configuration has none.
    ///
    /// With several brokers (`AMQP_URLS`), one of each per broker behind a
    /// [`longpoll::broker::ShardedBroker`], whose shard records are checked first: a
    /// broker that records another place in the slot table is an error.
    pub async fn new(config: Config, kind: BrokerKind) -> Result<Self, ConfigError> {
        let broker: Arc<dyn Broker> =
            match kind {
                BrokerKind::Memory => Arc::new(
                    MemoryBroker::new(config.presence_ttl)
                        .with_max_devices_per_user(config.max_devices_per_user),
                ),
                BrokerKind::RabbitMq => broker::open(&config, rabbitmq_for_a_server)
                    .await
                    .map_err(|stale| ConfigError::Invalid {
                        var: "AMQP_URLS",
                        reason: stale.to_string(),
                    })?,
            };
        Self::with_broker(config, broker, kind)
    }

    /// Builds the functions on a broker of the caller's, filling in development secrets
    /// as [`Functions::new`] does.
    pub fn with_broker(
        mut config: Config,
        broker: Arc<dyn Broker>,
        kind: BrokerKind,
    ) -> Result<Self, ConfigError> {
        if config.jwt_secret.is_none() {
            config.jwt_secret = Some(DEV_JWT_SECRET.as_bytes().to_vec());
        }
        if config.publish_api_key.is_none() && !config.publish_trust_iam {
            config.publish_api_key = Some(DEV_PUBLISH_KEY.to_owned());
        }
        let publisher = Publisher::new(&config, broker.clone())?;
        let app = App::new(config, broker.clone())?;
        Ok(Self {
            app,
            publisher,
            broker,
            kind,
        })
    }
}

/// One broker's RabbitMQ, as a long-running server uses it.
fn rabbitmq_for_a_server(config: &Config) -> Arc<dyn Broker> {
    match config.queue_type {
        // One long-running process serves every user here, so each user's consumer may
        // outlive their poll: an idle re-poll then costs the broker nothing.
        QueueType::Classic => Arc::new(LingeringBroker::new(
            RabbitBroker::new(config),
            CONSUMER_LINGER,
        )),
        // Quorum queues (a cluster): a consumer per poll, as on Lambda; see
        // `LingeringBroker::new`.
        QueueType::Quorum => Arc::new(RabbitBroker::new(config)),
    }
}

/// A function's handler, as the local server calls it.
pub type Handler = fn(Arc<Functions>, Request) -> Boxed<Result<Response<Body>, lambda_http::Error>>;

/// Every function: its route, as its crate exports it, and its handler. What the local
/// server serves, and what the watch router and the template must mirror.
pub const MOUNTS: [(Route, Handler); 5] = [
    (poll_events::ROUTE, |functions, request| {
        Box::pin(async move { poll_events::handle(&functions.app, request).await })
    }),
    (poll_test::ROUTE, |_, request| {
        Box::pin(poll_test::handle(request))
    }),
    (poll_disconnect::ROUTE, |functions, request| {
        Box::pin(async move { poll_disconnect::handle(&functions.app, request).await })
    }),
    (publish_event::ROUTE, |functions, request| {
        Box::pin(async move { publish_event::handle(&functions.publisher, request).await })
    }),
    (poll_online::ROUTE, |functions, request| {
        Box::pin(async move { poll_online::handle(&functions.app, request).await })
    }),
];

/// Every mounted route, each to its function for every method (the function answers a
/// wrong one with 405), CORS around them, JSON 404 elsewhere.
pub fn router(functions: Arc<Functions>, cors: CorsLayer) -> Router {
    let mut router = Router::new();
    for (route, handler) in MOUNTS {
        router = router.route(
            route.path,
            any(move |State(functions), request| {
                invoke(functions, route.function, handler, request)
            }),
        );
    }
    router
        .merge(demo::routes())
        .route(
            "/openapi.yaml",
            axum::routing::get(|| async {
                ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI)
            }),
        )
        .fallback(|request: AxumRequest| async move {
            let body = json!({"error": "not_found", "message": format!("no route for {}", request.uri().path())});
            to_axum(json_response(StatusCode::NOT_FOUND, &body))
        })
        .layer(cors)
        .with_state(functions)
}

/// Serves the router on `listener` within the default [`edge::Limits`] until `shutdown`
/// resolves, then lets held polls answer (for their hold plus 2 s at most), then closes
/// the broker connection.
pub async fn serve(
    listener: TcpListener,
    functions: Arc<Functions>,
    cors: CorsLayer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = edge::Limits::for_hold(functions.app.config.poll_timeout);
    serve_within(listener, functions, cors, limits, shutdown).await
}

/// [`serve`] within `limits`.
pub async fn serve_within(
    listener: TcpListener,
    functions: Arc<Functions>,
    cors: CorsLayer,
    limits: edge::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(functions.clone(), cors);
    edge::serve(listener, app, limits, shutdown).await;
    // A broker that does not answer the close must not hold the exit up.
    let close = functions.broker.close();
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), close).await;
    Ok(())
}

async fn invoke(
    functions: Arc<Functions>,
    function: &'static str,
    handler: Handler,
    request: AxumRequest,
) -> AxumResponse {
    let (parts, body) = request.into_parts();
    // Read one byte past the publish limit, so the handler still sees (and refuses)
    // an oversized body.
    let bytes = match to_bytes(body, MAX_BODY_BYTES + 1).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let too_large = ApiError::PayloadTooLarge {
                what: format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            };
            return to_axum(too_large.into_response());
        }
    };
    let body = if bytes.is_empty() {
        Body::Empty
    } else {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => Body::Text(text),
            Err(binary) => Body::Binary(binary.into_bytes()),
        }
    };
    // The handler runs in a task of its own, to completion, even if the client goes
    // away: as on Lambda, a poll is never cut off between taking events from the
    // broker and answering.
    let request = Request::from_parts(parts, body);
    match tokio::spawn(handler(functions, request))
        .await
        .unwrap_or_else(|panic| Err(panic.to_string().into()))
    {
        Ok(response) => to_axum(response),
        Err(error) => {
            tracing::error!(function, %error, "handler failed");
            let body = json!({"error": "internal_error", "message": "the function failed; see the server log"});
            to_axum(json_response(StatusCode::INTERNAL_SERVER_ERROR, &body))
        }
    }
}

fn to_axum(response: Response<Body>) -> AxumResponse {
    response.map(|body| match body {
        Body::Empty => AxumBody::empty(),
        Body::Text(text) => AxumBody::from(text),
        Body::Binary(bytes) => AxumBody::from(bytes),
        _ => AxumBody::empty(),
    })
}
