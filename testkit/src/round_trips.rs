//! What one idle poll costs the broker on the Lambda path: the real `poll-events` binary,
//! serving one invocation at a time (`AWS_LAMBDA_MAX_CONCURRENCY=1`, as on standard
//! Lambda) against a [`RuntimeApi`] on loopback, polls for one user again and again with
//! nothing published; the broker's own counters for the function's connection say how
//! many times the broker received from it (`recv_cnt`: socket reads, one per request the
//! function sends and waits on, whatever its kind: declare, bind, consume, cancel, qos,
//! an ack) and sent to it (`send_cnt`). Used by poll-events' `tests/round_trips.rs`
//! (which checks the goal) and `longpoll-bench trips` (which prints the figures).

use std::{path::Path, time::Duration};

use longpoll::{config::DEV_JWT_SECRET, token::TokenIssuer};

use crate::{
    Fixture,
    managed::{Function, INVOCATION_TIMEOUT, status},
    private_node::ctl,
    runtime_api::{Outcome, RuntimeApi},
    unique_user,
};

/// The name the function's AMQP connection carries, to find its counters.
const FUNCTION_NAME: &str = "poll-events-round-trips";

/// The hold of each poll: shorter than the 5.5 s default so that the count takes
/// seconds; an idle poll does the same broker work whatever its hold.
const HOLD: Duration = Duration::from_millis(500);

/// The broker's counters for a run of idle polls.
#[derive(Debug)]
pub struct RoundTrips {
    /// Received from / sent to the function for its first poll (connect, presence,
    /// declare, consume, cancel).
    pub first_poll: (u64, u64),
    /// Idle polls counted after the first.
    pub idle_polls: usize,
    /// Received from / sent to the function over those polls.
    pub idle: (u64, u64),
}

impl RoundTrips {
    /// Requests the broker received per idle poll.
    pub fn per_idle_poll(&self) -> f64 {
        self.idle.0 as f64 / self.idle_polls as f64
    }
}

/// Starts `binary` (poll-events) on the broker at `amqp_url` (node `node`), polls once for
/// a new user, then `idle_polls` more times in a row, and reads the broker's counters of
/// the function's connection after the first poll and after the last.
pub async fn idle_polls(
    binary: &Path,
    amqp_url: &str,
    node: &str,
    idle_polls: usize,
) -> RoundTrips {
    let runtime = RuntimeApi::start().await;
    let hold = HOLD.as_millis().to_string();
    let _function = Function::start(
        binary,
        &runtime,
        1,
        FUNCTION_NAME,
        amqp_url,
        &[("POLL_TIMEOUT_MS", hold.as_str())],
    );
    let token = TokenIssuer::new(DEV_JWT_SECRET.as_bytes()).mint(
        unique_user(),
        None,
        None,
        Duration::from_secs(3600),
    );
    let event = Fixture::new("poll-events")
        .authorization(&format!("Bearer {token}"))
        .event();
    let poll = || async {
        match runtime
            .invoke(event.clone(), INVOCATION_TIMEOUT)
            .outcome()
            .await
        {
            Some(Outcome::Response { body, .. }) => {
                assert_eq!(status(&body), 200, "an idle poll answers 200: {body}");
            }
            other => panic!("the poll was not answered: {other:?}"),
        }
    };
    poll().await;
    let first_poll = counters(node);
    for _ in 0..idle_polls {
        poll().await;
    }
    let last = counters(node);
    RoundTrips {
        first_poll,
        idle_polls,
        idle: (last.0 - first_poll.0, last.1 - first_poll.1),
    }
}

/// (`recv_cnt`, `send_cnt`) of the function's connection, as the node counts them.
fn counters(node: &str) -> (u64, u64) {
    let listing = ctl(
        node,
        &[
            "list_connections",
            "client_properties",
            "recv_cnt",
            "send_cnt",
        ],
    );
    let line = listing
        .lines()
        .find(|line| line.contains(FUNCTION_NAME))
        .unwrap_or_else(|| panic!("the function's connection is on the node: {listing}"));
    let mut numbers = line.rsplit('\t').map(|field| field.trim().parse::<u64>());
    let sent = numbers.next().and_then(Result::ok).expect("send_cnt");
    let received = numbers.next().and_then(Result::ok).expect("recv_cnt");
    (received, sent)
}
