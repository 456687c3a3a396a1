//! Benchmarks that print figures (never pass/fail timing tests: the machine is shared
//! and noisy), and the soak, which does pass or fail, on what it counts.
//!
//! - [`suite`]: every figure of bench/RESULTS.md, as tables; starts its own servers.
//! - [`load`]: the load the HTTP benchmarks share: users holding polls while events
//!   are published to random users, each event followed to the poll that returns it.
//! - [`held`]: that load against a running server, reporting capacity.
//! - [`herd`]: a reconnect herd (N new users at once) and offline presence lookups
//!   against a running server.
//! - [`soak`]: that load in cursor mode with the broker connections killed periodically.
//! - [`probes`]: queued-event answers, idle holds, publish throughput.
//! - [`cold_start`]: the function binaries under a loopback Lambda Runtime API.
//! - [`managed`]: one poll-events process holding many polls, as on Lambda Managed
//!   Instances: its memory and CPU per thousand held polls.
//! - [`latency`]: the poll handler called in-process, no HTTP.
//! - [`guide`]: the baseline, the design guide's `basic_get` every 0.3 s.
//! - [`server`], [`stats`]: child server processes; percentiles, medians, RSS.

pub mod cold_start;
pub mod guide;
pub mod held;
pub mod herd;
pub mod latency;
pub mod load;
pub mod managed;
pub mod probes;
pub mod server;
pub mod soak;
pub mod stats;
pub mod suite;
