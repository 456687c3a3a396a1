//! How many polls one user may hold at once in a process: a client that opens poll after
//! poll with one token gets `429` past the cap instead of taking the broker's consumers
//! and the server's connections from everyone else.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::{metrics, shard::SlotTable, topology::UserId};

/// Default cap on one user's polls held at once (`MAX_POLLS_PER_USER`): a tab or device
/// holds one, so this leaves room for several of each.
pub const DEFAULT_MAX_POLLS_PER_USER: usize = 8;

/// The polls held now, by user.
#[derive(Debug)]
pub struct HeldPolls {
    max_per_user: usize,
    by_user: Arc<Mutex<HashMap<UserId, usize>>>,
    /// With users on several brokers, their placement: the held-polls gauge is kept per
    /// broker.
    placement: Option<SlotTable>,
}

/// One held poll; counted until dropped.
#[derive(Debug)]
pub struct Held {
    user: UserId,
    by_user: Arc<Mutex<HashMap<UserId, usize>>>,
    shard: Option<usize>,
}

impl HeldPolls {
    pub fn new(max_per_user: usize) -> Self {
        Self {
            max_per_user,
            by_user: Arc::default(),
            placement: None,
        }
    }

    /// The same cap, with the gauge labelled by the broker `placement` puts each user on.
    pub fn placed_by(self, placement: SlotTable) -> Self {
        Self {
            placement: Some(placement),
            ..self
        }
    }

    pub fn max_per_user(&self) -> usize {
        self.max_per_user
    }

    /// Counts a poll of `user` in, unless they already hold the most allowed.
    pub fn hold(&self, user: UserId) -> Option<Held> {
        let mut by_user = lock(&self.by_user);
        let count = by_user.entry(user).or_default();
        if *count >= self.max_per_user {
            return None;
        }
        *count += 1;
        let shard = self.placement.as_ref().map(|table| table.broker_of(user));
        metrics::poll_held(shard);
        Some(Held {
            user,
            by_user: self.by_user.clone(),
            shard,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics::poll_released(self.shard);
        let mut by_user = lock(&self.by_user);
        if let Some(count) = by_user.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                by_user.remove(&self.user);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_the_cap_and_others_are_not_counted() {
        let held = HeldPolls::new(2);
        let (alice, bob) = (UserId(1), UserId(2));
        let first = held.hold(alice).unwrap();
        let _second = held.hold(alice).unwrap();
        assert!(held.hold(alice).is_none());
        assert!(held.hold(bob).is_some(), "another user is not affected");
        drop(first);
        assert!(
            held.hold(alice).is_some(),
            "a finished poll frees its place"
        );
    }
}
