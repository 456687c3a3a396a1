//! Ids no other test uses: every test has its own users, colleges and connection
//! names, so tests run in parallel on the one shared broker without seeing each other.

use longpoll::topology::{CollegeId, Subscriber, UserId};

/// A connection name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A user id no other test (or earlier run) is likely to use.
pub fn unique_user() -> UserId {
    UserId(random_id())
}

pub fn unique_college() -> CollegeId {
    CollegeId(random_id())
}

fn random_id() -> u64 {
    // Large but below 2^53, so JavaScript clients could hold it too.
    (uuid::Uuid::new_v4().as_u128() as u64) % 9_000_000_000_000 + 1_000_000_000
}

pub fn subscriber(user: UserId, college: Option<CollegeId>) -> Subscriber {
    Subscriber {
        user_id: user,
        college_id: college,
        device: None,
    }
}
