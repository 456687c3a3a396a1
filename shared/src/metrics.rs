//! What the service measures, under one set of names whichever way the figures leave
//! the process: the local server renders them as Prometheus text at `/metrics`
//! (`longpoll-local`), the functions write them to CloudWatch in embedded metric format
//! ([`Emf`]): a JSON log line per flush that CloudWatch Logs turns into metrics, with no
//! API call on the hot path.
//!
//! Everything records through the `metrics` facade. Until an exporter is installed (unit
//! tests, `cargo lambda watch`), a record is a no-op: a load and a branch.
//! `docs/operations.md` lists the metrics and what to watch on each.

use std::{
    io::Write,
    time::{Duration, SystemTime},
};

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_cloudwatch_embedded::Collector;

use crate::{
    broker::{BrokerError, Receipt},
    event::{Event, epoch_seconds},
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
/// Broker operations that failed, by `operation` and `cause` ([`BrokerError::cause`]).
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

/// One more poll held ([`POLLS_HELD`]); [`poll_released`] when it ends.
pub fn poll_held() {
    gauge!(POLLS_HELD).increment(1.0);
}

pub fn poll_released() {
    gauge!(POLLS_HELD).decrement(1.0);
}

/// A poll answered with `events` (or with an error), and each event's delivery latency.
pub fn poll_answered(events: Result<&[Event], ()>) {
    let outcome = match events {
        Ok([]) => PollOutcome::Empty,
        Ok(_) => PollOutcome::Events,
        Err(()) => PollOutcome::Error,
    };
    counter!(POLLS_ANSWERED, "outcome" => outcome.label()).increment(1);
    let Ok(events) = events else { return };
    counter!(EVENTS_DELIVERED).increment(events.len() as u64);
    let now = epoch_seconds(SystemTime::now());
    let latency = histogram!(DELIVERY_LATENCY);
    // An event without a publish time (a producer that set none) has no latency; a
    // clock that ran ahead of ours counts as zero.
    for published in events.iter().filter_map(|event| event.timestamp) {
        latency.record((now - published).max(0.0));
    }
}

/// What the publish endpoint did with a batch: each event routed or not.
pub fn events_published(receipts: &[Receipt]) {
    let routed = receipts.iter().filter(|receipt| receipt.routed).count() as u64;
    counter!(EVENTS_PUBLISHED, "result" => "routed").increment(routed);
    counter!(EVENTS_PUBLISHED, "result" => "unrouted").increment(receipts.len() as u64 - routed);
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

/// A broker operation that failed with `error`.
pub fn broker_failure(operation: &'static str, error: &BrokerError) {
    counter!(BROKER_FAILURES, "operation" => operation, "cause" => error.cause()).increment(1);
}

/// A broker connection opened.
pub fn broker_connected() {
    counter!(BROKER_CONNECTS).increment(1);
}

/// A request turned away by `cap`.
pub fn cap_hit(cap: Cap) {
    counter!(CAPS_HIT, "cap" => cap.label()).increment(1);
}

/// The CloudWatch namespace unless `METRICS_NAMESPACE` names one (the template gives
/// each stack its own).
pub const DEFAULT_NAMESPACE: &str = "Longpoll";

/// The functions' exporter: the metrics as CloudWatch embedded metric format documents
/// on stdout, which Lambda sends to CloudWatch Logs. One document per set of labels per
/// flush; a flush leaves out counters that did not move and histograms with no value.
///
/// A histogram keeps at most 100 values between flushes (the format's limit per
/// document); past that, values are dropped until the next flush, so on Managed Instances
/// (flushed every [`MANAGED_FLUSH_INTERVAL`]) percentiles come from the first 100 values
/// of each second. Counters stay exact.
pub struct Emf(&'static Collector);

/// The most bytes of metrics one steady poll writes on standard Lambda (its answer, the
/// held-polls gauge, the consume's round trip; ~740 bytes measured), which
/// `longpoll cost` prices as log ingestion. poll-events' `tests/metrics.rs` checks it.
pub const EMF_BYTES_PER_POLL: usize = 800;

/// What a process serving many invocations at once writes per flush, at most, under
/// load: every document of a busy second (answers by outcome, deliveries and their
/// latency, each broker operation, the gauge), about 2 KB. `longpoll cost` prices one
/// flush per second per instance.
pub const EMF_BYTES_PER_FLUSH: usize = 2_000;

/// How often a process serving many invocations at once (Managed Instances) flushes:
/// often enough that a second's values fit the 100 a histogram keeps, seldom enough
/// that an idle instance writes one small line a second.
pub const MANAGED_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

impl Emf {
    /// Installs the exporter as the process's recorder, when on Lambda (which sets
    /// [`crate::lambda::INITIALIZATION_TYPE`]; emulators such as `cargo lambda watch` do
    /// not) or asked with `METRICS=emf`; `METRICS=off` keeps metrics off.
    pub fn install() -> Option<Emf> {
        let wanted = match std::env::var("METRICS").as_deref() {
            Ok("emf") => true,
            Ok("off") => false,
            _ => std::env::var_os(crate::lambda::INITIALIZATION_TYPE).is_some(),
        };
        if !wanted {
            return None;
        }
        let namespace =
            std::env::var("METRICS_NAMESPACE").unwrap_or_else(|_| DEFAULT_NAMESPACE.to_owned());
        let collector = metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace(namespace)
            .init()
            .inspect_err(|error| tracing::warn!(%error, "metrics off: no recorder installed"))
            .ok()?;
        describe();
        Some(Emf(collector))
    }

    /// Writes what was recorded since the last flush to stdout, in one write so that no
    /// log line lands inside a document.
    pub fn flush(&self) {
        let mut documents = Vec::new();
        if self.0.flush(&mut documents).is_ok() && !documents.is_empty() {
            let _ = std::io::stdout().lock().write_all(&documents);
        }
    }
}
