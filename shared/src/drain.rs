//! Draining: once a function process is asked to stop (SIGTERM), every poll it holds
//! ends its hold at once and answers with what it has, so its browser polls again at
//! once and lands on a live process, instead of the poll being cut off with no answer.
//! Polls that come meanwhile answer at once too.
//!
//! One [`Drain`] per process ([`PROCESS`]), started by [`crate::lambda::serve`]; a
//! [`crate::budget::PollBudget`] watches it during the hold.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// The function process's drain.
pub static PROCESS: Drain = Drain::new();

/// Whether draining has begun, and a wake-up for the holds waiting when it does.
#[derive(Debug)]
pub struct Drain {
    begun: AtomicBool,
    wake: Notify,
}

impl Drain {
    pub const fn new() -> Self {
        Self {
            begun: AtomicBool::new(false),
            wake: Notify::const_new(),
        }
    }

    /// Ends every hold now and from now on.
    pub fn begin(&self) {
        self.begun.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    pub fn begun(&self) -> bool {
        self.begun.load(Ordering::SeqCst)
    }

    /// Resolves once draining has begun.
    pub async fn begins(&self) {
        loop {
            // Registered before the check, so a `begin` in between still wakes us.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.begun() {
                return;
            }
            woken.await;
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_draining_begins_and_later_ones_do_not_wait() {
        let drain: &'static Drain = Box::leak(Box::new(Drain::new()));
        let waiter = tokio::spawn(drain.begins());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drain.begin();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
        tokio::time::timeout(Duration::from_millis(10), drain.begins())
            .await
            .expect("no wait once begun");
    }
}
