//! Benchmarks that print figures (never pass/fail timing tests: the machine is shared
//! and noisy), and the soak, which does pass or fail, on what it counts.
//!
//! - [`suite`]: single polls, throughput, capacity, watch and cold start, as tables;
//!   starts its own servers.
//! - [`breakdown`]: where publish→response time goes, step by step, one event at a time.
//! - [`compare`]: publish→response latency under load, every server side by side,
//!   as ratios to Nchan.
//! - [`curve`]: latency against the event rate and against users, drawn as SVG, and
//!   each contender's capacity.
//! - [`load`]: the load the latency benchmarks share: users holding polls while events
//!   are published to random users, each event followed to the poll that returns it;
//!   against a longpoll server, Nchan, or no server at all (AMQP consumers: the floor).
//! - [`held`]: that load against a running server, reporting capacity.
//! - [`hold`]: what a longer hold costs: delivery, and the recovery from a lost answer,
//!   with the browser client in Node behind a proxy that swallows an answer.
//! - [`herd`]: a reconnect herd (N new users at once) and offline presence lookups
//!   against a running server.
//! - [`cluster`]: the cluster fire drill: a rolling restart and a crash under 2,000
//!   users, quorum against classic queues, beside a single node.
//! - [`shards`]: users over three brokers beside one node: spread, memory per user,
//!   latency, new users held, the most users held.
//! - [`soak`]: that load in cursor mode with the broker connections killed periodically.
//! - [`probes`]: queued-event answers, idle holds, publish throughput.
//! - [`cold_start`]: the function binaries under a loopback Lambda Runtime API.
//! - [`managed`]: one poll-events process holding many polls, as on Lambda Managed
//!   Instances: its memory and CPU per thousand held polls.
//! - [`latency`]: the poll handler called in-process, no HTTP.
//! - [`guide`]: the baseline, the design guide's `basic_get` every 0.3 s.
//! - [`nchan`]: the yardstick, nginx with Nchan, an in-memory long-poll server.
//! - [`placement`]: users over several brokers, the slot table beside jump hash: spread,
//!   users moved by a broker added or retired, time per placement.
//! - [`results`]: writes a command's output into its section of bench/RESULTS.md, dated.
//! - [`server`], [`stats`]: child server processes; percentiles, medians, RSS.

pub mod breakdown;
pub mod cluster;
pub mod cold_start;
pub mod compare;
pub mod curve;
pub mod guide;
pub mod held;
pub mod herd;
pub mod hold;
pub mod latency;
pub mod load;
pub mod managed;
pub mod nchan;
pub mod placement;
pub mod probes;
pub mod results;
pub mod server;
pub mod shards;
pub mod soak;
pub mod stats;
pub mod suite;
pub mod trips;
