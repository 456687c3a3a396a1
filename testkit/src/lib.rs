//! The test kit: what the integration tests, the local server's tests, the functions'
//! tests and the benchmarks share.
//!
//! - [`brokers`]: the brokers a behaviour runs on, and [`on_every_broker!`].
//! - [`ids`], [`events`]: unique users and colleges, events, publishing and declaring.
//! - [`app`](mod@app), [`fixture`], [`assertions`]: handlers fed real API Gateway events, and
//!   checks of their answers.
//! - [`rabbitmqctl`](mod@rabbitmqctl): the shared local node as an operator sees it;
//!   [`private_node`]: a node of the test's own, for anything that stops or loads one;
//!   [`cluster`]: three of them behind HAProxy, for a node's loss; [`drill`]: users and
//!   a backend under faults, through the library, the local server or the functions,
//!   and what they saw.
//! - [`server`]: a workspace binary built and run as a process (the local server).
//! - [`scenario`]: the end-to-end walk over real HTTP that the local server (on both
//!   brokers) and `cargo lambda watch` ([`watch`]) must all pass.
//! - [`runtime_api`], [`managed`], [`round_trips`]: a Lambda Runtime API on loopback
//!   and the real function binaries driven through it.
//! - [`moto`]: a local Secrets Manager; [`process`]: a process's memory and CPU time.
//! - [`emf`]: the metrics a function writes to its log, read and checked as CloudWatch
//!   reads them.
//!
//! Every test uses its own random user and college ids, so tests run in parallel on the
//! one shared broker without seeing each other's events, and leave only queues that
//! expire on their own.

pub mod app;
pub mod assertions;
pub mod brokers;
pub mod cluster;
pub mod drill;
pub mod emf;
pub mod events;
pub mod fixture;
pub mod ids;
pub mod managed;
pub mod moto;
pub mod private_node;
pub mod process;
pub mod rabbitmqctl;
pub mod ready;
pub mod round_trips;
pub mod runtime_api;
pub mod scenario;
pub mod server;
pub mod watch;

/// Every test builds poll budgets: a hold that ends at a given instant.
pub use longpoll::budget::PollBudget;

pub use app::*;
pub use assertions::*;
pub use brokers::*;
pub use events::*;
pub use fixture::*;
pub use ids::*;
pub use rabbitmqctl::*;

pub const JWT_SECRET: &str = "integration-test-secret";
