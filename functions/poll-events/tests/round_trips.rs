//! Broker work per idle poll on the Lambda path (one invocation per process), from the
//! broker's own counters: in steady state a poll with nothing to return costs two
//! requests, its `basic.consume` and its `basic.cancel`. Presence and the queue's
//! declare and binds are skipped while recent (see `longpoll_testkit::round_trips`).

use std::path::Path;

use longpoll_testkit::{private_node::PrivateNode, round_trips::idle_polls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_idle_poll_costs_the_broker_two_requests() {
    let node = PrivateNode::start(None);
    let binary = Path::new(env!("CARGO_BIN_EXE_poll-events"));
    let trips = idle_polls(binary, &node.url(), &node.name(), 10).await;
    eprintln!("{trips:?}");

    // The first poll declares: presence, the queue, its bindings and binding record.
    assert!(
        trips.first_poll.0 > 4,
        "the first poll sets up (connect, declares): {trips:?}"
    );
    // A heartbeat may fall in the window: one request more at most.
    assert!(
        trips.idle.0 <= 2 * trips.idle_polls as u64 + 1,
        "at most two requests per idle poll: {trips:?} ({:.1} a poll)",
        trips.per_idle_poll()
    );
}
