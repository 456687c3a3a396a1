//! What a load run saw, and its one-line summary.

use std::{collections::BTreeMap, time::Duration};

use crate::stats;

/// What a load run saw.
#[derive(Default)]
pub struct LoadReport {
    /// Polls in flight, sampled once a second while publishing.
    pub held: Vec<usize>,
    /// Polls answered with 200 while publishing.
    pub answered: usize,
    /// Failed polls and publish attempts by HTTP status (0: no response at all; 200: a
    /// poll's body that could not be read).
    pub poll_failures: BTreeMap<u16, usize>,
    pub publish_failures: BTreeMap<u16, usize>,
    /// Events whose publish was confirmed and routed to the user's queue.
    pub published: usize,
    /// Publishes the broker confirmed but routed to no queue (not counted above).
    pub unrouted: usize,
    /// Of those, how many a poll returned all the same (a misreported `routed`).
    pub unrouted_but_delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Publish (first attempt) to the response that returned the event, per event.
    pub latencies: Vec<Duration>,
    /// The server's RSS in KiB, once a second while publishing.
    pub rss_kib: Vec<usize>,
    /// How long the publishing window lasted.
    pub window: Duration,
}

impl LoadReport {
    /// One line: latency, events, failures.
    pub fn summary(&self) -> String {
        format!(
            "{}; events {} (unrouted {}, of which delivered {}), lost {}, duplicated {}; failed polls {:?}, failed publishes {:?}",
            self.latency_line(),
            self.published,
            self.unrouted,
            self.unrouted_but_delivered,
            self.lost,
            self.duplicated,
            self.poll_failures,
            self.publish_failures
        )
    }

    /// "publish→response p50 … ms, p90 …, p99 …, max …".
    pub fn latency_line(&self) -> String {
        let [p50, p90, p99, max] = self.latency_ms().map(stats::ms);
        format!("publish→response p50 {p50} ms, p90 {p90} ms, p99 {p99} ms, max {max} ms")
    }

    /// (p50, p90, p99, max) publish-to-response latency in milliseconds.
    pub fn latency_ms(&self) -> [f64; 4] {
        let mut latencies = self.latencies.clone();
        latencies.sort();
        [0.5, 0.9, 0.99, 1.0].map(|q| stats::percentile_ms(&latencies, q))
    }
}
