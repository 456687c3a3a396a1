//! Draining: the real `poll-events` binary, against a Lambda Runtime API on loopback
//! and a private RabbitMQ node, holding polls, is sent SIGTERM (what Lambda sends before
//! it shuts an execution environment down): every held poll answers at once, 200 with
//! no events, instead of being cut off with no answer, and the process exits 0 within
//! the drain's grace. On Lambda Managed Instances (many polls in one process) and on
//! standard Lambda (one).

use std::{path::Path, process::Command, time::Duration};

use longpoll::{
    config::DEV_JWT_SECRET,
    lambda::{DRAIN_GRACE, SHUTDOWN_EXTENSION},
    token::TokenIssuer,
};
use longpoll_testkit::{
    Fixture,
    managed::{Function, INVOCATION_TIMEOUT, events_of, status},
    private_node::PrivateNode,
    runtime_api::{Outcome, RuntimeApi},
    unique_user,
};
use tokio::time::Instant;

async fn held_polls_answer_at_once_on_sigterm(polls: usize) {
    let node = PrivateNode::start(None);
    let runtime = RuntimeApi::start().await;
    let binary = Path::new(env!("CARGO_BIN_EXE_poll-events"));
    let mut function = Function::start(binary, &runtime, polls, "drain", &node.url(), &[]);
    let tokens = TokenIssuer::new(DEV_JWT_SECRET.as_bytes());
    let invocations: Vec<_> = (0..polls)
        .map(|_| {
            let token = tokens.mint(unique_user(), None, None, Duration::from_secs(600));
            let event = Fixture::new("poll-events")
                .authorization(&format!("Bearer {token}"))
                .event();
            runtime.invoke(event, INVOCATION_TIMEOUT)
        })
        .collect();

    // Every poll held (its consumer on the node), well inside the 5.5 s hold.
    let started = Instant::now();
    while held(&node) < polls {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{} of {polls} held after 4 s",
            held(&node)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What makes Lambda send the SIGTERM: an extension, asking for no events.
    assert_eq!(
        runtime.extensions(),
        [(SHUTDOWN_EXTENSION.to_owned(), serde_json::json!([]))]
    );
    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &function.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());

    for (i, invocation) in invocations.into_iter().enumerate() {
        // Unanswered, the invocation would wait for the Runtime API's timeout.
        let outcome = tokio::time::timeout(Duration::from_secs(3), invocation.outcome()).await;
        match outcome.ok().flatten() {
            Some(Outcome::Response { body, at }) => {
                assert_eq!(status(&body), 200, "poll {i}: {body}");
                assert!(events_of(&body).is_empty(), "poll {i}: {body}");
                let after = at - signalled;
                assert!(
                    after < Duration::from_secs(1),
                    "poll {i} answered {after:?} after SIGTERM"
                );
            }
            Some(Outcome::Error(error)) => panic!("poll {i} failed: {error}"),
            None => panic!("poll {i} was not answered within 3 s of SIGTERM"),
        }
    }
    let exit = loop {
        if let Some(exit) = function.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            signalled.elapsed() < DRAIN_GRACE + Duration::from_secs(2),
            "still running {:?} after SIGTERM",
            signalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit}");
}

/// Consumers on users' queues, as the node counts them.
fn held(node: &PrivateNode) -> usize {
    node.ctl(&["list_consumers", "queue_name"])
        .lines()
        .filter(|line| line.starts_with("event_queue:user:"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_holding_many_polls_answers_them_all_on_sigterm() {
    held_polls_answer_at_once_on_sigterm(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_lambda_process_answers_its_poll_on_sigterm() {
    held_polls_answer_at_once_on_sigterm(1).await;
}
