//! The measured part of every load, whoever the users are: the publishing window and its
//! drain, kept in the [`Ledger`], and the users' fresh ids.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::{LoadOptions, LoadReport, ledger::Ledger, publisher::publish_steadily};

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

    ledger.lock().unwrap().fill(&mut report);
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
