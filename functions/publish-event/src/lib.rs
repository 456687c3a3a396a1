//! `POST /api/v1/communication/events/` — backends publish events.
//!
//! One event or a batch of up to 100, each for one user or one college, validated
//! whole before anything is published; each is published persistent, mandatory and
//! confirmed, and the reply says per event whether any queue took it (`routed`: false
//! means nobody of that audience is polling, so the caller may fall back to e-mail or
//! push). Callers are backends: authorised by IAM on AWS, by `X-Api-Key` elsewhere.

use std::sync::Arc;

use lambda_http::{
    Body, Error, Request, Response,
    http::{Method, StatusCode},
};
use longpoll::{
    Config,
    app::open_rabbitmq,
    broker::Publish,
    config::ConfigError,
    http::{ApiError, json_response, require_method, respond},
    metrics,
    publish::{PublishAuth, parse_publish_body},
    routes::Route,
};
use serde_json::json;
use tracing::info;

/// What the publish handler needs: the caller check and the broker's publishing.
pub struct Publisher {
    pub auth: PublishAuth,
    pub broker: Arc<dyn Publish>,
}

impl Publisher {
    /// Fails unless the endpoint can authorise callers (it never runs open).
    pub fn new(config: &Config, broker: Arc<dyn Publish>) -> Result<Self, ConfigError> {
        Ok(Self {
            auth: PublishAuth::from_config(config)?,
            broker,
        })
    }

    /// The Lambda set-up: configuration from the environment (and Secrets Manager, see
    /// [`Config::load`]), RabbitMQ connected lazily.
    pub async fn load() -> Result<Self, ConfigError> {
        let config = Config::load("publish-event").await?;
        Self::new(&config, open_rabbitmq(&config).await?)
    }
}

/// Where this function is served.
pub const ROUTE: Route = Route {
    method: Method::POST,
    path: "/api/v1/communication/events/",
    function: "publish-event",
};

/// The Lambda handler; also mounted by the local server.
pub async fn handle(publisher: &Publisher, request: Request) -> Result<Response<Body>, Error> {
    respond(publish(publisher, &request).await)
}

async fn publish(publisher: &Publisher, request: &Request) -> Result<Response<Body>, ApiError> {
    require_method(request, ROUTE.method)?;
    publisher.auth.check(request)?;
    let batch = parse_publish_body(request.body().as_ref())?;
    let receipts = publisher.broker.publish(&batch).await.inspect_err(|_| {
        metrics::events_refused(batch.len());
    })?;
    let routed = receipts.iter().filter(|receipt| receipt.routed).count();
    metrics::events_published(routed, receipts.len() - routed);
    info!(events = receipts.len(), routed, "published");
    Ok(json_response(
        StatusCode::OK,
        &json!({ "published": receipts }),
    ))
}
