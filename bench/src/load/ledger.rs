//! The ledger that follows each event from its publish to the user it reaches, shared by
//! the publisher and the users; it reports what it saw into a [`LoadReport`].

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use tokio::time::Instant;

use super::LoadReport;

/// The bookkeeping shared by pollers and publisher.
#[derive(Default)]
pub(super) struct Ledger {
    /// Sequence number → when its first publish attempt started (until delivered).
    pending: HashMap<u64, Instant>,
    /// Sequence numbers whose publish was confirmed and routed.
    confirmed: HashSet<u64>,
    /// Sequence numbers the broker reported routed to no queue.
    unrouted: HashSet<u64>,
    /// Sequence number → the event id it was first delivered under.
    delivered: HashMap<u64, String>,
    duplicated: usize,
    latencies: Vec<Duration>,
}

impl Ledger {
    /// Event `seq`'s first publish attempt starts now.
    pub(super) fn publishing(&mut self, seq: u64) {
        self.pending.insert(seq, Instant::now());
    }

    /// Event `seq`'s publish was answered: routed to its user's queue, or to none.
    pub(super) fn published(&mut self, seq: u64, routed: bool) {
        if routed {
            self.confirmed.insert(seq);
        } else {
            self.pending.remove(&seq);
            self.unrouted.insert(seq);
        }
    }

    /// Event `seq` was never published: the window closed while it was retried.
    pub(super) fn abandoned(&mut self, seq: u64) {
        self.pending.remove(&seq);
    }

    /// Event `seq` reached its user under `id` at `at`.
    pub(super) fn delivered(&mut self, seq: u64, id: &str, at: Instant) {
        match self.delivered.get(&seq) {
            Some(first_id) if first_id != id => self.duplicated += 1,
            Some(_) => {}
            None => {
                self.delivered.insert(seq, id.to_owned());
                if let Some(published) = self.pending.remove(&seq) {
                    self.latencies.push(at - published);
                }
            }
        }
    }

    /// Whether every confirmed event has reached its user.
    pub(super) fn all_delivered(&self) -> bool {
        self.confirmed
            .iter()
            .all(|seq| self.delivered.contains_key(seq))
    }

    /// Puts what the ledger saw into `report`: published, unrouted, lost, duplicated and
    /// each delivery's latency.
    pub(super) fn fill(&self, report: &mut LoadReport) {
        report.published = self.confirmed.len();
        report.unrouted = self.unrouted.len();
        report.unrouted_but_delivered = self
            .unrouted
            .iter()
            .filter(|seq| self.delivered.contains_key(seq))
            .count();
        report.lost = self
            .confirmed
            .iter()
            .filter(|seq| !self.delivered.contains_key(seq))
            .count();
        report.duplicated = self.duplicated;
        report.latencies = self.latencies.clone();
    }
}
