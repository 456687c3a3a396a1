//! How long a poll may take, and how it spends that time: one [`PollBudget`], computed
//! once when the poll starts, from the configured hold and the Lambda deadline.
//!
//! ```text
//! start ── set-up (presence, declare, consume) ──┐
//!       ── hold: wait for the first event ───────┴─ hold_until ── clean-up ── answer
//!                                                   (or set_up_until,  ≤ CLEAN_UP
//!                                                    if later)
//! ```
//!
//! - The hold ends `hold` after the start (5.5 s by default), or [`DEADLINE_MARGIN`]
//!   before the Lambda deadline if that comes first.
//! - The set-up may run past a short hold, up to [`LEAST_SET_UP`] after the start (a
//!   busy broker would otherwise turn a set-up that was about to succeed into a 503);
//!   never past the Lambda deadline's margin.
//! - Once the wait is over, stopping the consumer, collecting what raced with the stop
//!   and settling the batch share one [`CLEAN_UP`].
//!
//! So a poll answers within [`PollBudget::longest`] of its start, and the template's
//! function timeout is checked against that by a test.

use std::{
    future::Future,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::{Instant, sleep_until};

use crate::drain::{self, Drain};

/// The least time a poll's set-up gets, even when the hold is shorter.
pub const LEAST_SET_UP: Duration = Duration::from_millis(1500);
/// Stopping a consumer and acking its deliveries once the wait is over. It takes a
/// millisecond on a healthy broker; past this the channel is abandoned (which gives the
/// deliveries back to the queue) and the poll answers 503.
pub const CLEAN_UP: Duration = Duration::from_millis(1000);
/// Time kept back from the Lambda deadline: the clean-up, plus a quarter second to
/// serialise and send the answer, so the function never runs into its timeout.
pub const DEADLINE_MARGIN: Duration = CLEAN_UP.saturating_add(Duration::from_millis(250));
/// A deadline further off than this is not a Lambda deadline (functions run for 15
/// minutes at most); `cargo lambda watch` passes a duration there, not a time.
const LONGEST_LAMBDA_RUN: Duration = Duration::from_secs(15 * 60);

/// When a poll's stages must end; see the module note.
#[derive(Debug, Clone, Copy)]
pub struct PollBudget {
    hold_until: Instant,
    set_up_until: Instant,
    /// Ends the hold early when the process stops ([`drain`]).
    drain: &'static Drain,
}

impl PollBudget {
    /// A poll starting now that holds for `hold`, within the Lambda deadline
    /// `lambda_deadline_ms` (epoch milliseconds). A deadline that is already past or
    /// absurdly far (`cargo lambda watch` sends a duration there) is ignored.
    pub fn new(hold: Duration, lambda_deadline_ms: Option<u64>) -> Self {
        let now = Instant::now();
        let left = lambda_deadline_ms
            .and_then(|deadline_ms| deadline_ms.checked_sub(epoch_ms()))
            .map(Duration::from_millis)
            .filter(|left| *left <= LONGEST_LAMBDA_RUN)
            .map(|left| left.saturating_sub(DEADLINE_MARGIN));
        let limit = |wanted: Duration| now + left.map_or(wanted, |left| wanted.min(left));
        Self {
            hold_until: limit(hold),
            set_up_until: limit(hold.max(LEAST_SET_UP)),
            drain: &drain::PROCESS,
        }
    }

    /// A poll whose hold ends at `hold_until`, with no Lambda deadline: for callers of
    /// the broker outside a request (tests, benchmarks, tools).
    pub fn until(hold_until: Instant) -> Self {
        Self {
            hold_until,
            set_up_until: hold_until.max(Instant::now() + LEAST_SET_UP),
            drain: &drain::PROCESS,
        }
    }

    /// This budget, its hold ended early by `drain` instead of the process's.
    pub fn drained_by(self, drain: &'static Drain) -> Self {
        Self { drain, ..self }
    }

    /// When the wait for events ends; the poll answers with what it has then.
    pub fn hold_until(&self) -> Instant {
        self.hold_until
    }

    /// Runs `wait` until the hold ends (its time is up, or the process drains); `None`
    /// if the hold ended first.
    pub async fn within_hold<F: Future>(&self, wait: F) -> Option<F::Output> {
        tokio::select! {
            // What is ready is answered, even when the hold ended meanwhile.
            biased;
            output = wait => Some(output),
            () = sleep_until(self.hold_until) => None,
            () = self.drain.begins() => None,
        }
    }

    /// Whether the hold has ended (its time is up, or the process drains).
    pub fn hold_over(&self) -> bool {
        Instant::now() >= self.hold_until || self.drain.begun()
    }

    /// When presence, the declare and the consume must be done by.
    pub fn set_up_until(&self) -> Instant {
        self.set_up_until
    }

    /// The longest a poll holding for `hold` runs, from its start to its answer, when no
    /// Lambda deadline shortens it: what a function timeout must cover.
    pub fn longest(hold: Duration) -> Duration {
        hold.max(LEAST_SET_UP) + CLEAN_UP
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_millis(5500);

    fn left(until: Instant) -> Duration {
        until - Instant::now()
    }

    #[test]
    fn the_hold_ends_a_margin_before_the_lambda_deadline() {
        let budget = PollBudget::new(HOLD, Some(epoch_ms() + 3000));
        let hold = left(budget.hold_until());
        assert!(
            hold <= Duration::from_millis(1750) && hold > Duration::from_millis(1500),
            "{hold:?}"
        );
        // The set-up floor gives way to the deadline too.
        assert_eq!(budget.set_up_until(), budget.hold_until());
    }

    #[test]
    fn a_far_deadline_leaves_the_configured_hold() {
        let budget = PollBudget::new(HOLD, Some(epoch_ms() + 60_000));
        assert!(left(budget.hold_until()) > Duration::from_millis(5400));
        assert_eq!(budget.set_up_until(), budget.hold_until());
    }

    #[test]
    fn past_absurd_or_missing_deadlines_are_ignored() {
        // `cargo lambda watch` sends 600000: a duration, read as a time long past.
        for deadline in [Some(600_000), Some(epoch_ms() + 3_600_000), None] {
            let hold = left(PollBudget::new(HOLD, deadline).hold_until());
            assert!(hold > Duration::from_millis(5400), "{deadline:?}: {hold:?}");
        }
    }

    #[test]
    fn a_short_hold_still_gets_the_least_set_up() {
        let budget = PollBudget::new(Duration::from_millis(200), None);
        assert!(left(budget.hold_until()) <= Duration::from_millis(200));
        assert!(left(budget.set_up_until()) > Duration::from_millis(1400));
        assert_eq!(
            PollBudget::longest(Duration::from_millis(200)),
            LEAST_SET_UP + CLEAN_UP
        );
        assert_eq!(PollBudget::longest(HOLD), HOLD + CLEAN_UP);
    }

    #[tokio::test]
    async fn draining_ends_the_hold_at_once() {
        let drain: &'static Drain = Box::leak(Box::new(Drain::new()));
        let budget = PollBudget::new(HOLD, None).drained_by(drain);
        assert!(!budget.hold_over());
        let started = Instant::now();
        let held =
            tokio::spawn(async move { budget.within_hold(std::future::pending::<()>()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drain.begin();
        assert_eq!(held.await.unwrap(), None);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(budget.hold_over());
        // What is already there is still answered.
        assert_eq!(budget.within_hold(async { 7 }).await, Some(7));
    }
}
