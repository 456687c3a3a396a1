//! # longpoll — the queue crate
//!
//! Everything the long-polling functions share: how they are configured, what an event
//! is, who the caller is, how events are laid out on RabbitMQ, and how a poll waits for
//! them. The function binaries under `functions/` are thin: they parse nothing and build
//! no AMQP frames themselves.
//!
//! ## Layout
//!
//! The modules stand in layers, lowest first; a module imports only from its own layer
//! or a lower one, never in a circle (`docs/architecture.md`, checked by
//! `tests/layout.rs`):
//!
//! 1. Foundations.
//!    - [`event`]: the four event types with typed `data` ([`event::EventBody`]), the
//!      wire body producers publish, and the envelope (`id`, `timestamp`) a poll returns.
//!    - [`routes`]: the [`routes::Route`] (method, path, function) each function crate
//!      exports beside its handler; the local server, the `cargo lambda watch` router and
//!      the SAM template all follow them. And the poll's hold header.
//!    - [`topology`]: queue and exchange names, routing keys and queue arguments: the one
//!      place the contract's AMQP layout is written down.
//!    - [`shard`]: placement, which of several brokers (`AMQP_URLS`) holds a user: a
//!      slot from the user id, and the table of each slot's broker.
//!    - [`drain`]: a stopping function process ends every hold at once, so its polls
//!      answer instead of being cut off.
//!    - [`metrics`]: what the service measures, one set of names for the local server's
//!      Prometheus text and the functions' CloudWatch embedded metric format; recorded
//!      from plain values.
//!    - [`telemetry`]: `tracing` set-up: JSON on AWS Lambda, readable text locally.
//! 2. Settings and the rules of one request.
//!    - [`config`]: settings from the environment, with defaults from the contract; a
//!      missing required setting is an error that names the variable.
//!    - [`secrets`]: `AMQP_URL` (or `AMQP_URLS`, a secret per broker), `JWT_SECRET` and
//!      `PUBLISH_API_KEY` from AWS Secrets Manager when their ARNs are set (read once per
//!      cold start through `aws-config`, feature `secrets-manager`, on in the Lambda
//!      functions).
//!    - [`token`]: finding the user token in a request (query, `Token`, `Bearer`) and
//!      verifying it (HS256 JWT); minting tokens for tests and local use.
//!    - [`budget`]: [`budget::PollBudget`], how long a poll's set-up, hold and clean-up
//!      may take, computed once per poll from the hold and the Lambda deadline.
//!    - [`held`]: the cap on the polls one user holds at once in a process.
//! 3. [`broker`]: the capabilities the handlers use ([`broker::Publish`],
//!    [`broker::Poll`], [`broker::Presence`]; [`broker::Broker`] is all three), with
//!    [`broker::RabbitBroker`] (lapin; one connection per process, reconnects on demand),
//!    [`broker::LingeringBroker`] (wraps it for the local server) and
//!    [`broker::MemoryBroker`] (same semantics, in process, for the zero-setup local run
//!    and fast tests).
//! 4. Around the broker.
//!    - [`http`]: what every handler needs: JSON responses, the error to status mapping,
//!      method checks, the query string, and the poll's budget.
//!    - [`cors`]: the CORS policy of the local server, and of the functions behind a
//!      front door that does no CORS (`CORS_ORIGINS`).
//! 5. What handlers receive.
//!    - [`publish`]: the publish endpoint's rules: its caller check (API key or IAM) and
//!      the request body (one event or a batch, each validated, errors naming the field).
//!    - [`app`]: [`app::App`], the dependencies a handler receives (config, token
//!      verifier, the broker's poll and presence), built once per process.
//! 6. [`lambda`]: [`lambda::serve`], how each function's `main` runs its handler on the
//!    Lambda Runtime API (one invocation at a time, or many on Managed Instances), and
//!    [`lambda::emf`], the metrics exporter it flushes.

pub mod app;
pub mod broker;
pub mod budget;
pub mod config;
pub mod cors;
pub mod drain;
pub mod event;
pub mod held;
pub mod http;
pub mod lambda;
pub mod metrics;
pub mod publish;
pub mod routes;
pub mod secrets;
pub mod shard;
pub mod telemetry;
pub mod token;
pub mod topology;

pub use app::App;
pub use broker::{Broker, BrokerError, MemoryBroker, RabbitBroker};
pub use config::Config;
