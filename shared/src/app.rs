//! The dependencies a handler receives, built once per process and shared by every
//! invocation (the broker connection inside them is what makes warm polls fast).

use std::sync::Arc;

use lambda_http::{Request, http::header};

use crate::{
    broker::{self, Broker, Poll, Presence, RabbitBroker},
    config::{Config, ConfigError},
    held::HeldPolls,
    http::{ApiError, query_param},
    token::{AuthError, Identity, TokenVerifier, extract_token},
};

/// Config, token verifier and the broker's capabilities: everything a user-facing
/// handler uses. Each handler reaches for the capability it needs: the poll for
/// [`App::poll`] and [`App::presence`], disconnect and the online lookup for
/// [`App::presence`] alone (publishing has a handler of its own, with its own caller
/// check).
#[derive(Clone)]
pub struct App {
    pub config: Config,
    pub tokens: TokenVerifier,
    /// Waiting for a subscriber's events.
    pub poll: Arc<dyn Poll>,
    /// Marking users online and offline, and looking them up.
    pub presence: Arc<dyn Presence>,
    /// The polls each user holds now, against `config.max_polls_per_user`.
    pub held_polls: Arc<HeldPolls>,
}

/// The RabbitMQ broker of a function: one [`RabbitBroker`], or one per broker of
/// `AMQP_URLS` behind a [`crate::broker::ShardedBroker`]. A broker that records another
/// place in the slot table is a configuration error: the process must not start.
pub async fn open_rabbitmq(config: &Config) -> Result<Arc<dyn Broker>, ConfigError> {
    broker::open(config, |config| Arc::new(RabbitBroker::new(config)))
        .await
        .map_err(|stale| ConfigError::Invalid {
            var: "AMQP_URLS",
            reason: stale.to_string(),
        })
}

impl App {
    /// Fails when `JWT_SECRET` is missing: every user-facing function needs it.
    pub fn new(config: Config, broker: Arc<dyn Broker>) -> Result<Self, ConfigError> {
        let tokens = TokenVerifier::new(config.require_jwt_secret()?)
            .requiring(config.jwt_issuer.as_deref(), config.jwt_audience.as_deref());
        Ok(Self {
            held_polls: Arc::new(match config.sharded() {
                true => HeldPolls::new(config.max_polls_per_user).placed_by(config.slots.clone()),
                false => HeldPolls::new(config.max_polls_per_user),
            }),
            config,
            tokens,
            poll: broker.clone(),
            presence: broker,
        })
    }

    /// The same app with polls answered by `poll` instead (the benchmark's baseline of
    /// the guide's algorithm, which implements polling alone).
    pub fn with_poll(self, poll: Arc<dyn Poll>) -> Self {
        Self { poll, ..self }
    }

    /// The Lambda set-up: configuration from the environment (and Secrets Manager, see
    /// [`Config::load`]) and RabbitMQ, connected lazily on the first request (so a cold
    /// start never waits for the broker, and a broker outage is a 503 rather than a
    /// crash loop). With several brokers, each one's shard record is checked first (see
    /// [`open_rabbitmq`]).
    pub async fn load(function: &str) -> Result<Self, ConfigError> {
        let config = Config::load(function).await?;
        let broker = open_rabbitmq(&config).await?;
        Self::new(config, broker)
    }

    /// The caller, from the token in the `Authorization` header or `?token=`.
    pub fn authenticate(&self, request: &Request) -> Result<Identity, ApiError> {
        let authorization = match request.headers().get(header::AUTHORIZATION) {
            Some(value) => Some(value.to_str().map_err(|_| AuthError::BadScheme)?),
            None => None,
        };
        let query_token = query_param(request, "token");
        let token = extract_token(authorization, query_token.as_deref())?;
        Ok(self.tokens.verify(token)?)
    }
}
