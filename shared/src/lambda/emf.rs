//! The functions' metrics exporter: CloudWatch embedded metric format on stdout, which
//! Lambda sends to CloudWatch Logs, under the names of [`crate::metrics`]. It lives
//! beside the runtime that flushes it, as the local server's Prometheus exporter lives
//! beside that server.

use std::{io::Write, time::Duration};

use metrics_cloudwatch_embedded::Collector;

use super::INITIALIZATION_TYPE;
use crate::metrics::describe;

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
    /// [`INITIALIZATION_TYPE`]; emulators such as `cargo lambda watch` do
    /// not) or asked with `METRICS=emf`; `METRICS=off` keeps metrics off.
    pub fn install() -> Option<Emf> {
        let wanted = match std::env::var("METRICS").as_deref() {
            Ok("emf") => true,
            Ok("off") => false,
            _ => std::env::var_os(INITIALIZATION_TYPE).is_some(),
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
