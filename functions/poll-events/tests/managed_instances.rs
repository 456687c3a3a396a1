//! Lambda Managed Instances: one `poll-events` process serving many invocations at once.
//!
//! The real binary runs with `AWS_LAMBDA_MAX_CONCURRENCY=1000` against a Lambda Runtime
//! API on loopback, as it would on a managed instance, on a private RabbitMQ node
//! (`longpoll_testkit::managed`): 1,000 users' polls are held at once in that one process,
//! on one AMQP connection; an event published to each user reaches exactly that user's
//! poll, once; every answer comes before its invocation's deadline.

use std::path::Path;

use longpoll_testkit::{
    managed::{INVOCATION_TIMEOUT, IdleRound, events_of, hold_in_one_process, status},
    private_node::PrivateNode,
};

/// Held polls in one process: the goal of the managed-instances mode, and the template's
/// `PollsPerEnvironment` default.
const POLLS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_holds_a_thousand_polls_on_one_connection() {
    let node = PrivateNode::start(None);
    let binary = Path::new(env!("CARGO_BIN_EXE_poll-events"));
    let held = hold_in_one_process(binary, &node.url(), &node.name(), POLLS, IdleRound::Skip).await;

    assert_eq!(
        held.connections, 1,
        "one AMQP connection serves every held poll"
    );
    for (i, (answer, took)) in held.answers.iter().enumerate() {
        assert_eq!(status(answer), 200, "user {i}: {answer}");
        let events = events_of(answer);
        assert_eq!(
            events.len(),
            1,
            "user {i} got exactly one event: {events:?}"
        );
        assert_eq!(
            events[0]["data"]["id"], i as i64,
            "user {i} got their own event"
        );
        assert!(
            *took < INVOCATION_TIMEOUT,
            "user {i} answered after the deadline"
        );
    }
}
