//! The function's metrics as CloudWatch receives them: the real `poll-events` binary on a
//! Lambda Runtime API on loopback, on RabbitMQ, writes embedded metric format documents
//! to its log that follow the format's rules and count exactly what it answered. On
//! standard Lambda they are written by the end of each invocation; serving many at once
//! (Managed Instances), within a second or two.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use longpoll::{
    RabbitBroker,
    config::DEV_JWT_SECRET,
    lambda::emf::EMF_BYTES_PER_POLL,
    metrics::{
        BROKER_OPERATION_LATENCY, DELIVERY_LATENCY, ERRORS, EVENTS_DELIVERED, POLLS_ANSWERED,
        POLLS_HELD,
    },
    token::TokenIssuer,
    topology::Audience,
};
use longpoll_testkit::{
    Fixture, amqp_url, config,
    emf::{self, Datum},
    managed::{Function, INVOCATION_TIMEOUT, events_of, status},
    message, publish,
    runtime_api::{Outcome, RuntimeApi},
    unique_user,
};

const NAMESPACE: &str = "LongpollTest";

async fn answer(runtime: &RuntimeApi, fixture: Fixture) -> serde_json::Value {
    let invocation = runtime.invoke(fixture.event(), INVOCATION_TIMEOUT);
    match tokio::time::timeout(Duration::from_secs(10), invocation.outcome()).await {
        Ok(Some(Outcome::Response { body, .. })) => body,
        other => panic!("no answer: {other:?}"),
    }
}

/// The metrics in `log` once `ready` holds for them, within `limit`.
async fn metrics_when(
    log: &Arc<Mutex<Vec<String>>>,
    limit: Duration,
    ready: impl Fn(&[Datum]) -> bool,
) -> Vec<Datum> {
    let started = tokio::time::Instant::now();
    loop {
        let lines = log.lock().unwrap().clone();
        let data = emf::data(&lines).unwrap_or_else(|rule| panic!("not valid EMF: {rule}"));
        if ready(&data) || started.elapsed() > limit {
            return data;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invocation_writes_valid_emf_that_counts_what_it_answered() {
    let runtime = RuntimeApi::start().await;
    let binary = Path::new(env!("CARGO_BIN_EXE_poll-events"));
    let env = [("POLL_TIMEOUT_MS", "300"), ("METRICS_NAMESPACE", NAMESPACE)];
    let (_function, log) = Function::start_logged(binary, &runtime, 1, "emf", &amqp_url(), &env);
    let user = unique_user();
    let token = TokenIssuer::new(DEV_JWT_SECRET.as_bytes()).mint(
        user,
        None,
        None,
        Duration::from_secs(600),
    );
    let poll = || Fixture::new("poll-events").authorization(&format!("Bearer {token}"));

    // No token: 401, flushed by the invocation itself. Standard mode has no timer, so
    // a document that shows up while no other invocation runs was written by this one;
    // the wait is only for the pipe to carry it (it is written before the answer is
    // posted, but read by another thread here).
    assert_eq!(
        status(&answer(&runtime, Fixture::new("poll-events")).await),
        401
    );
    let after_error = metrics_when(&log, Duration::from_secs(2), |data| {
        emf::total(data, ERRORS, &[]) >= 1.0
    })
    .await;
    assert_eq!(
        emf::total(&after_error, ERRORS, &[("code", "missing_token")]),
        1.0,
        "flushed by the end of the invocation: {after_error:#?}"
    );

    // Nothing waiting: an empty answer after the hold.
    assert!(events_of(&answer(&runtime, poll()).await).is_empty());
    // One event waiting: answered at once.
    let broker = RabbitBroker::new(&config("emf-publisher"));
    publish(&broker, Audience::User(user), &message(1)).await;
    assert_eq!(events_of(&answer(&runtime, poll()).await).len(), 1);

    let data = metrics_when(&log, Duration::from_secs(2), |data| {
        emf::total(data, POLLS_ANSWERED, &[]) >= 3.0
    })
    .await;
    assert!(data.iter().all(|datum| datum.namespace == NAMESPACE));
    let answered = |outcome| emf::total(&data, POLLS_ANSWERED, &[("outcome", outcome)]);
    assert_eq!(
        (answered("error"), answered("empty"), answered("events")),
        (1.0, 1.0, 1.0),
        "{data:#?}"
    );
    assert_eq!(emf::total(&data, EVENTS_DELIVERED, &[]), 1.0);
    let latency = emf::values(&data, DELIVERY_LATENCY, &[]);
    assert!(
        latency.len() == 1 && (0.0..5.0).contains(&latency[0]),
        "one delivery, in seconds: {latency:?}"
    );
    let unit_of = |name| {
        data.iter()
            .find(|datum| datum.name == name)
            .unwrap()
            .unit
            .clone()
    };
    assert_eq!(unit_of(DELIVERY_LATENCY).as_deref(), Some("Seconds"));
    assert!(
        !emf::values(
            &data,
            BROKER_OPERATION_LATENCY,
            &[("operation", "presence")]
        )
        .is_empty(),
        "broker operations are timed: {data:#?}"
    );
    // The gauge as each invocation left it: nothing held once it answered.
    assert_eq!(emf::values(&data, POLLS_HELD, &[]).last(), Some(&0.0));

    // A steady idle poll's metrics: what the cost model prices per poll.
    let before = log.lock().unwrap().len();
    assert!(events_of(&answer(&runtime, poll()).await).is_empty());
    metrics_when(&log, Duration::from_secs(2), |data| {
        emf::total(data, POLLS_ANSWERED, &[]) >= 4.0
    })
    .await;
    // The flush came in whole (see `Function::start_logged`), and nothing else ran.
    let lines = log.lock().unwrap()[before..].to_vec();
    let bytes: usize = lines
        .iter()
        .filter(|line| line.starts_with(r#"{"_aws""#))
        .map(|line| line.len() + 1)
        .sum();
    assert!(
        bytes > 0 && bytes <= EMF_BYTES_PER_POLL,
        "{bytes} bytes of metrics for an idle poll, over the {EMF_BYTES_PER_POLL} the cost model assumes:\n{}",
        lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_many_at_once_it_flushes_every_second() {
    let runtime = RuntimeApi::start().await;
    let binary = Path::new(env!("CARGO_BIN_EXE_poll-events"));
    let env = [("METRICS_NAMESPACE", NAMESPACE)];
    let (_function, log) = Function::start_logged(binary, &runtime, 4, "emf", &amqp_url(), &env);
    assert_eq!(
        status(&answer(&runtime, Fixture::new("poll-events")).await),
        401
    );
    let data = metrics_when(&log, Duration::from_secs(3), |data| {
        emf::total(data, ERRORS, &[]) >= 1.0
    })
    .await;
    assert_eq!(
        emf::total(&data, ERRORS, &[("code", "missing_token")]),
        1.0,
        "{data:#?}"
    );
}
