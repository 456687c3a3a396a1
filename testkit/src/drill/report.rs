//! What a drill saw: the [`Report`] built from the ledger of every poll and publish,
//! with the traces of lost events and of the longest gap.

use std::{fmt::Write as _, time::Duration};

use longpoll::topology::DeviceId;
use tokio::time::Instant;

use super::{Failure, Ledger, PollRecord, User};

/// How many lost events [`Report::traces`] follows.
const TRACED: usize = 5;

/// What a drill saw.
#[derive(Debug, Default)]
pub struct Report {
    /// How long every user's first poll (which declares their queue) took, before the
    /// drill proper.
    pub declared_in: Duration,
    /// Publishes answered `routed: true`.
    pub routed: usize,
    /// Of those, events no user received by the end of the drain.
    pub missing: usize,
    /// Events received again after a user had them (cursor mode's redelivery of what
    /// was not yet acknowledged; a client drops them by id).
    pub redelivered: usize,
    /// Publishes answered `routed: false`, though every user was polling.
    pub wrongly_unrouted: usize,
    /// Publishes that failed (a 503) and were tried again with the same event.
    pub retried_publishes: usize,
    /// Polls that failed (a 503, or no answer within the hold plus the browser client's
    /// margin).
    pub failed_polls: usize,
    /// Of those, polls the client gave up waiting for.
    pub unanswered_polls: usize,
    /// Polls answered.
    pub answered_polls: usize,
    /// Of those, answered with nothing before half the hold was over: a browser polls
    /// again at once, so many of them would be a request storm.
    pub early_empty_polls: usize,
    /// The longest any user went between two answered polls.
    pub longest_gap: Duration,
    /// That user's polls over the gap: what kept them waiting.
    pub gap_trace: String,
    /// The product's failed broker operations, by operation and cause, where it exports
    /// them ([`super::Product::broker_failures`]).
    pub broker_failures: String,
    /// Publish (start) to first receipt, for each routed event received, sorted.
    pub latencies: Vec<Duration>,
    /// For each fault the caller marked: from the mark until every user whose polls
    /// failed before the next mark had one answered again (zero when none failed).
    pub recoveries: Vec<Duration>,
    /// For the first few missing events: their publish attempts and their user's polls.
    pub traces: Vec<String>,
}

impl Report {
    /// The `q` quantile (0.0–1.0) of the delivery latencies, zero when none arrived.
    pub fn latency(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index]
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "users declared in {:?}, {} routed, {} missing, {} wrongly unrouted, {} publishes retried, \
             {} of {} polls failed ({} unanswered), {} answered early and empty, longest gap {:?}, \
             latency p50 {:?} p99 {:?}, recoveries {:?}",
            self.declared_in,
            self.routed,
            self.missing,
            self.wrongly_unrouted,
            self.retried_publishes,
            self.failed_polls,
            self.failed_polls + self.answered_polls,
            self.unanswered_polls,
            self.early_empty_polls,
            self.longest_gap,
            self.latency(0.5),
            self.latency(0.99),
            self.recoveries,
        )?;
        for trace in &self.traces {
            write!(f, "\n{trace}")?;
        }
        if !self.gap_trace.is_empty() {
            write!(f, "\n{}", self.gap_trace)?;
        }
        if !self.broker_failures.is_empty() {
            write!(f, "\nbroker failures:\n{}", self.broker_failures)?;
        }
        Ok(())
    }
}

/// The events answered `routed: true` that no user has received yet.
pub(super) fn missing(ledger: &Ledger) -> Vec<String> {
    let received = ledger.received.lock().unwrap();
    let routed = ledger.routed.lock().unwrap();
    routed
        .keys()
        .filter(|id| !received.contains_key(*id))
        .cloned()
        .collect()
}

pub(super) fn report(
    ledger: &Ledger,
    users: &[User],
    marks: &[Instant],
    declared_in: Duration,
    hold: Duration,
) -> Report {
    let missing = missing(ledger);
    let traces = missing
        .iter()
        .take(TRACED)
        .map(|id| trace(ledger, users, id))
        .collect();
    let routed = ledger.routed.lock().unwrap();
    let received = ledger.received.lock().unwrap();
    let polls = ledger.polls.lock().unwrap();
    let mut latencies: Vec<Duration> = routed
        .iter()
        .filter_map(|(id, (_, published))| received.get(id).map(|at| *at - *published))
        .collect();
    latencies.sort();
    let answered_at = |records: &Vec<PollRecord>| -> Vec<Instant> {
        records
            .iter()
            .filter(|record| record.outcome.is_ok())
            .map(|record| record.ended)
            .collect()
    };
    // The longest any user went between two answered polls, and whose gap it was.
    let (longest_gap, gap) = polls
        .iter()
        .flat_map(|(user, records)| {
            let answered = answered_at(records);
            answered
                .windows(2)
                .map(|pair| (pair[1] - pair[0], (*user, pair[0], pair[1])))
                .collect::<Vec<_>>()
        })
        .max_by_key(|(gap, _)| *gap)
        .map_or((Duration::ZERO, None), |(gap, at)| (gap, Some(at)));
    let gap_trace = gap
        .map(|(user, from, to)| gap_trace(&polls[&user], from, to))
        .unwrap_or_default();
    // A fault's window runs from its mark to the next one: a failure in it is this
    // fault's doing, and its recovery lasts until that user has an answer again.
    let recoveries = marks
        .iter()
        .enumerate()
        .map(|(index, mark)| {
            let window_end = marks.get(index + 1).copied();
            polls
                .values()
                .filter_map(|records| {
                    let failed = records.iter().position(|r| {
                        r.ended >= *mark
                            && window_end.is_none_or(|end| r.ended < end)
                            && r.outcome.is_err()
                    })?;
                    let back = records[failed..].iter().find(|r| r.outcome.is_ok())?;
                    Some(back.ended - *mark)
                })
                .max()
                .unwrap_or_default()
        })
        .collect();
    let all: Vec<&PollRecord> = polls.values().flatten().collect();
    let publishes = ledger.publishes.lock().unwrap();
    let attempts: usize = publishes.values().map(Vec::len).sum();
    Report {
        declared_in,
        routed: routed.len(),
        missing: missing.len(),
        redelivered: *ledger.redelivered.lock().unwrap(),
        wrongly_unrouted: *ledger.wrongly_unrouted.lock().unwrap(),
        retried_publishes: attempts - publishes.len(),
        early_empty_polls: all
            .iter()
            .filter(|r| r.outcome.as_ref().is_ok_and(Vec::is_empty))
            .filter(|r| r.ended - r.started < hold / 2)
            .count(),
        failed_polls: all.iter().filter(|r| r.outcome.is_err()).count(),
        unanswered_polls: all
            .iter()
            .filter(|r| matches!(r.outcome, Err(Failure::Unanswered(_))))
            .count(),
        answered_polls: all.iter().filter(|r| r.outcome.is_ok()).count(),
        longest_gap,
        gap_trace,
        broker_failures: String::new(),
        latencies,
        recoveries,
        traces,
    }
}

/// The polls of the user with the longest gap, from the answer that opened it to the one
/// that closed it.
fn gap_trace(records: &[PollRecord], from: Instant, to: Instant) -> String {
    let mut text = format!("longest gap {:.1} s:", (to - from).as_secs_f64());
    for record in records.iter().filter(|r| r.ended >= from && r.ended <= to) {
        let outcome = match &record.outcome {
            Ok(ids) => format!("{} events", ids.len()),
            Err(failure) => format!("failed: {failure:?}"),
        };
        let _ = write!(
            text,
            "\n  poll +{:.3}s..+{:.3}s via {}: {outcome}",
            record.started.saturating_duration_since(from).as_secs_f64(),
            (record.ended - from).as_secs_f64(),
            record.via,
        );
    }
    text
}

/// A lost event's story: its publish attempts, then its user's polls from the first
/// attempt on (at most 20), each with the cursor it sent and what it got.
fn trace(ledger: &Ledger, users: &[User], id: &str) -> String {
    let routed = ledger.routed.lock().unwrap();
    let publishes = ledger.publishes.lock().unwrap();
    let polls = ledger.polls.lock().unwrap();
    let Some((user, _)) = routed.get(id) else {
        return format!("{id}: not routed");
    };
    let attempts = publishes.get(id).map(Vec::as_slice).unwrap_or_default();
    let Some(epoch) = attempts.first().map(|attempt| attempt.started) else {
        return format!("{id}: no publish recorded");
    };
    let at = |instant: Instant| {
        if instant >= epoch {
            format!("+{:.3}s", (instant - epoch).as_secs_f64())
        } else {
            format!("-{:.3}s", (epoch - instant).as_secs_f64())
        }
    };
    let mut text = format!(
        "lost {id} for user {} ({:?}):",
        users[*user].subscriber.user_id.0,
        users[*user]
            .subscriber
            .device
            .as_ref()
            .map(DeviceId::as_str)
    );
    for attempt in attempts {
        let _ = write!(
            text,
            "\n  publish {}..{} via {}: {:?}",
            at(attempt.started),
            at(attempt.ended),
            attempt.via,
            attempt.outcome
        );
    }
    let records = polls.get(user).map(Vec::as_slice).unwrap_or_default();
    for record in records
        .iter()
        .filter(|record| record.ended + Duration::from_secs(10) >= epoch)
        .take(20)
    {
        let outcome = match &record.outcome {
            Ok(ids) => format!("{ids:?}"),
            Err(failure) => format!("failed: {failure:?}"),
        };
        let _ = write!(
            text,
            "\n  poll {}..{} via {} ack={:?}: {outcome}",
            at(record.started),
            at(record.ended),
            record.via,
            record.cursor
        );
    }
    text
}
