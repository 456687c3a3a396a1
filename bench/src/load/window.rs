//! The measured part of every load, whoever the users are: the ledger that follows each
//! event from its publish to the user it reaches, the publishing window and its drain,
//! and the users' fresh ids.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::{LoadOptions, LoadReport, publisher::publish_steadily};

/// The bookkeeping shared by pollers and publisher.
#[derive(Default)]
pub(super) struct Ledger {
    /// Sequence number → when its first publish attempt started (until delivered).
    pub(super) pending: HashMap<u64, Instant>,
    /// Sequence numbers whose publish was confirmed and routed.
    pub(super) confirmed: HashSet<u64>,
    /// Sequence numbers the broker reported routed to no queue.
    pub(super) unrouted: HashSet<u64>,
    /// Sequence number → the event id it was first delivered under.
    delivered: HashMap<u64, String>,
    duplicated: usize,
    latencies: Vec<Duration>,
}

impl Ledger {
    fn all_delivered(&self) -> bool {
        self.confirmed
            .iter()
            .all(|seq| self.delivered.contains_key(seq))
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
}

/// The measured part of a load, whoever the users are: publishes for the window
/// (calling `each_second` once a second meanwhile), then waits until every confirmed
/// event has arrived or the drain period is over, and reports what the ledger saw.
pub(super) async fn publish_window(
    options: &LoadOptions,
    ledger: &Arc<Mutex<Ledger>>,
    base_user: u64,
    mut each_second: impl FnMut(&mut LoadReport),
) -> LoadReport {
    let window_started = Instant::now();
    let publisher = tokio::spawn(publish_steadily(
        reqwest::Client::new(),
        options.contender.publisher(),
        ledger.clone(),
        (base_user, options.users as u64),
        options.publish_rate,
        Duration::from_secs(options.seconds),
    ));
    let mut report = LoadReport::default();
    while window_started.elapsed() < Duration::from_secs(options.seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        each_second(&mut report);
    }
    report.window = window_started.elapsed();
    report.publish_failures = publisher.await.unwrap();
    // The drain: the users go on receiving until every confirmed event has arrived, or
    // for `drain`.
    let drained_by = Instant::now() + options.drain;
    while Instant::now() < drained_by && !ledger.lock().unwrap().all_delivered() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ledger = ledger.lock().unwrap();
    report.published = ledger.confirmed.len();
    report.unrouted = ledger.unrouted.len();
    report.unrouted_but_delivered = ledger
        .unrouted
        .iter()
        .filter(|seq| ledger.delivered.contains_key(seq))
        .count();
    report.lost = ledger
        .confirmed
        .iter()
        .filter(|seq| !ledger.delivered.contains_key(seq))
        .count();
    report.duplicated = ledger.duplicated;
    report.latencies = ledger.latencies.clone();
    report
}

/// The first of a range of user ids no earlier run used: 20 ids per millisecond of the
/// wall clock, so runs a second apart get ranges 20,000 apart (more users than any run
/// has), and leftover events of an earlier run never reach this one.
pub fn fresh_user_base() -> u64 {
    static OFFSET: AtomicUsize = AtomicUsize::new(0);
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    millis * 20 + OFFSET.fetch_add(20_000, Ordering::Relaxed) as u64
}
