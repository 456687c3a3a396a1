//! What the service measures, under one set of names whichever way the figures leave
//! the process: the local server renders them as Prometheus text at `/metrics`
//! (`longpoll-local`), the functions write them to CloudWatch in embedded metric format
//! ([`crate::lambda::emf`]): a JSON log line per flush that CloudWatch Logs turns into
//! metrics, with no API call on the hot path.
//!
//! This module is a foundation: it imports nothing from the crate, and its record
//! functions take plain values (a count, a cause, publish times), so every layer above
//! may record. Everything records through the `metrics` facade. Until an exporter is installed (unit
//! tests, `cargo lambda watch`), a record is a no-op: a load and a branch.
//! `docs/operations.md` lists the metrics and what to watch on each.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::metrics::{
    Label, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

/// Polls held now (gauge).
pub const POLLS_HELD: &str = "longpoll_polls_held";
/// Polls answered, by `outcome`: `events`, `empty` or `error`.
pub const POLLS_ANSWERED: &str = "longpoll_polls_answered_total";
/// Events handed to a poll's answer.
pub const EVENTS_DELIVERED: &str = "longpoll_events_delivered_total";
/// From an event's publish time (its `timestamp`) to the answer that carries it.
pub const DELIVERY_LATENCY: &str = "longpoll_delivery_latency_seconds";
/// Events the publish endpoint was given, by `result`: `routed` (some inbox took it),
/// `unrouted` (nobody of that audience has an inbox) or `refused` (the broker could not
/// take the batch: answered 503, the backend retries).
pub const EVENTS_PUBLISHED: &str = "longpoll_events_published_total";
/// Error answers of every endpoint, by `code` (the body's `error` field).
pub const ERRORS: &str = "longpoll_errors_total";
/// How long a broker operation took when it succeeded, by `operation`.
pub const BROKER_OPERATION_LATENCY: &str = "longpoll_broker_operation_seconds";
/// Broker operations that failed, by `operation` and `cause` (`BrokerError::cause`).
pub const BROKER_FAILURES: &str = "longpoll_broker_failures_total";
/// Broker connections opened: one per process, then one per reconnect.
pub const BROKER_CONNECTS: &str = "longpoll_broker_connects_total";
/// Requests turned away by a cap, by `cap`: `polls_per_user`, `devices_per_user`
/// (the oldest device's queue was deleted) or `connections` (the local server's).
pub const CAPS_HIT: &str = "longpoll_caps_hit_total";

/// Every metric's name, in the order [`describe`] gives them.
pub const NAMES: [&str; 10] = [
    POLLS_HELD,
    POLLS_ANSWERED,
    EVENTS_DELIVERED,
    DELIVERY_LATENCY,
    EVENTS_PUBLISHED,
    ERRORS,
    BROKER_OPERATION_LATENCY,
    BROKER_FAILURES,
    BROKER_CONNECTS,
    CAPS_HIT,
];

/// Gives each metric its unit and help text (Prometheus prints the help; CloudWatch
/// takes the unit). Call once the exporter is installed.
pub fn describe() {
    describe_gauge!(POLLS_HELD, Unit::Count, "Polls held now");
    describe_counter!(POLLS_ANSWERED, Unit::Count, "Polls answered, by outcome");
    describe_counter!(
        EVENTS_DELIVERED,
        Unit::Count,
        "Events handed to a poll's answer"
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "From an event's publish time to the answer that carries it"
    );
    describe_counter!(
        EVENTS_PUBLISHED,
        Unit::Count,
        "Events given to the publish endpoint, by result"
    );
    describe_counter!(ERRORS, Unit::Count, "Error answers, by code");
    describe_histogram!(
        BROKER_OPERATION_LATENCY,
        Unit::Seconds,
        "Successful broker operations, by operation"
    );
    describe_counter!(
        BROKER_FAILURES,
        Unit::Count,
        "Failed broker operations, by operation and cause"
    );
    describe_counter!(BROKER_CONNECTS, Unit::Count, "Broker connections opened");
    describe_counter!(
        CAPS_HIT,
        Unit::Count,
        "Requests turned away by a cap, by cap"
    );
}

/// How a poll ended, for [`POLLS_ANSWERED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    Events,
    Empty,
    Error,
}

impl PollOutcome {
    fn label(self) -> &'static str {
        match self {
            PollOutcome::Events => "events",
            PollOutcome::Empty => "empty",
            PollOutcome::Error => "error",
        }
    }
}

/// A cap that turned a request away, for [`CAPS_HIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    PollsPerUser,
    DevicesPerUser,
    Connections,
}

impl Cap {
    fn label(self) -> &'static str {
        match self {
            Cap::PollsPerUser => "polls_per_user",
            Cap::DevicesPerUser => "devices_per_user",
            Cap::Connections => "connections",
        }
    }
}

/// `labels`, and the `shard` label (the broker's number in `AMQP_URLS`) when users are
/// spread over several brokers: a single-broker deployment keeps its series unlabelled.
fn with_shard(mut labels: Vec<Label>, shard: Option<usize>) -> Vec<Label> {
    if let Some(shard) = shard {
        labels.push(Label::new("shard", shard.to_string()));
    }
    labels
}

/// One more poll held ([`POLLS_HELD`]) on `shard`; [`poll_released`] when it ends.
pub fn poll_held(shard: Option<usize>) {
    gauge!(POLLS_HELD, with_shard(Vec::new(), shard)).increment(1.0);
}

pub fn poll_released(shard: Option<usize>) {
    gauge!(POLLS_HELD, with_shard(Vec::new(), shard)).decrement(1.0);
}

/// A poll answered with events, given by their publish times (epoch seconds; `None` for
/// an event without one), and each event's delivery latency.
pub fn poll_answered(published: impl ExactSizeIterator<Item = Option<f64>>) {
    let outcome = if published.len() == 0 {
        PollOutcome::Empty
    } else {
        PollOutcome::Events
    };
    counter!(POLLS_ANSWERED, "outcome" => outcome.label()).increment(1);
    counter!(EVENTS_DELIVERED).increment(published.len() as u64);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let latency = histogram!(DELIVERY_LATENCY);
    // An event without a publish time (a producer that set none) has no latency; a
    // clock that ran ahead of ours counts as zero.
    for published in published.flatten() {
        latency.record((now - published).max(0.0));
    }
}

/// A poll answered with an error.
pub fn poll_failed() {
    counter!(POLLS_ANSWERED, "outcome" => PollOutcome::Error.label()).increment(1);
}

/// What the publish endpoint did with a batch: `routed` events some inbox took,
/// `unrouted` ones nobody's did.
pub fn events_published(routed: usize, unrouted: usize) {
    counter!(EVENTS_PUBLISHED, "result" => "routed").increment(routed as u64);
    counter!(EVENTS_PUBLISHED, "result" => "unrouted").increment(unrouted as u64);
}

/// A batch of `events` the broker could not take (answered 503).
pub fn events_refused(events: usize) {
    counter!(EVENTS_PUBLISHED, "result" => "refused").increment(events as u64);
}

/// An error answer with the body's `code`.
pub fn error_answered(code: &'static str) {
    counter!(ERRORS, "code" => code).increment(1);
}

/// A broker operation that succeeded after `elapsed`.
pub fn broker_operation(operation: &'static str, elapsed: Duration) {
    histogram!(BROKER_OPERATION_LATENCY, "operation" => operation).record(elapsed.as_secs_f64());
}

/// A broker operation that failed on `shard`, and why (`BrokerError::cause`).
pub fn broker_failure(operation: &'static str, cause: &'static str, shard: Option<usize>) {
    let labels = vec![
        Label::new("operation", operation),
        Label::new("cause", cause),
    ];
    counter!(BROKER_FAILURES, with_shard(labels, shard)).increment(1);
}

/// A broker connection opened to `shard`.
pub fn broker_connected(shard: Option<usize>) {
    counter!(BROKER_CONNECTS, with_shard(Vec::new(), shard)).increment(1);
}

/// A request turned away by `cap`.
pub fn cap_hit(cap: Cap) {
    counter!(CAPS_HIT, "cap" => cap.label()).increment(1);
}
