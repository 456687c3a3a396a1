//! One `poll-events` process serving many invocations at once, as on Lambda Managed
//! Instances: the binary runs with `AWS_LAMBDA_MAX_CONCURRENCY=N` against a
//! [`RuntimeApi`] on loopback, every user's poll is held at once, then each user gets one
//! event. Used by poll-events' `tests/managed_instances.rs` (which checks the outcome) and
//! `longpoll-bench managed` (which prints the process's memory and CPU).

use std::{
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::ready::wait_until;
use longpoll::{
    Config, RabbitBroker,
    broker::{Broker, Publication, Publish},
    config::DEV_JWT_SECRET,
    lambda::INITIALIZATION_TYPE,
    token::TokenIssuer,
    topology::{Audience, UserId},
};
use serde_json::Value;

use crate::{
    Fixture, message,
    private_node::ctl,
    process::{cpu_time, status_kib},
    runtime_api::{Outcome, RuntimeApi},
    unique_user,
};

/// The function timeout of the template: each invocation's deadline.
pub const INVOCATION_TIMEOUT: Duration = Duration::from_secs(7);
/// The name the function's AMQP connection carries.
const FUNCTION_NAME: &str = "poll-events-managed";

/// What one process did with `polls` users.
pub struct HeldPolls {
    /// Per user, in order: the function's answer (an API Gateway response) to the poll
    /// that was held when the user's event was published, and how long it took from the
    /// invocation.
    pub answers: Vec<(Value, Duration)>,
    /// AMQP connections the process had open while every poll was held.
    pub connections: usize,
    /// The process's resident memory while every poll was held, and its peak, in KiB.
    pub rss_kib: usize,
    pub peak_rss_kib: usize,
    /// CPU time the process used from the first invocation of the held round until every
    /// poll was held, and over the whole round.
    pub cpu_setting_up: Duration,
    pub cpu_round: Duration,
    /// With [`IdleRound::Measure`]: CPU time over one more round, every user polling
    /// with nothing queued until each poll answers empty at the end of its hold.
    pub cpu_idle_round: Option<Duration>,
}

/// Whether [`hold_in_one_process`] ends with a round of idle polls, to measure what an
/// idle poll costs beside one answered with an event (it takes a whole hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleRound {
    Skip,
    Measure,
}

/// A function process; killed when dropped.
pub struct Function(pub Child);

/// What Lambda says in `AWS_LAMBDA_INITIALIZATION_TYPE` for a function serving
/// `concurrency` invocations at once.
fn initialization_type(concurrency: usize) -> &'static str {
    if concurrency > 1 {
        "lambda-managed-instances"
    } else {
        "on-demand"
    }
}

impl Function {
    /// `binary` (a function) against `runtime`, serving up to `concurrency` invocations
    /// at once, on the broker at `amqp_url` with the development JWT secret; its AMQP
    /// connection is named after `name`. `env` adds to (or overrides) that environment.
    pub fn start(
        binary: &Path,
        runtime: &RuntimeApi,
        concurrency: usize,
        name: &str,
        amqp_url: &str,
        env: &[(&str, &str)],
    ) -> Function {
        Self::command(binary, runtime, concurrency, name, amqp_url, env)
            .stdout(Stdio::null())
            .spawn()
            .map(Function)
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()))
    }

    /// [`Function::start`], keeping what the process writes to stdout (its log, and its
    /// metrics in embedded metric format), line by line, in the returned list.
    pub fn start_logged(
        binary: &Path,
        runtime: &RuntimeApi,
        concurrency: usize,
        name: &str,
        amqp_url: &str,
        env: &[(&str, &str)],
    ) -> (Function, Arc<Mutex<Vec<String>>>) {
        let mut child = Self::command(binary, runtime, concurrency, name, amqp_url, env)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let mut stdout = child.stdout.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        // The lines of one read go in together: a flush is one write of under a pipe's
        // atomic size, so a reader of the list sees all of a flush or none of it.
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut chunk = vec![0; 1 << 16];
            while let Ok(read @ 1..) = stdout.read(&mut chunk) {
                pending.extend_from_slice(&chunk[..read]);
                let Some(end) = pending.iter().rposition(|&byte| byte == b'\n') else {
                    continue;
                };
                let complete: Vec<u8> = pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&complete);
                sink.lock().unwrap().extend(text.lines().map(str::to_owned));
            }
        });
        (Function(child), lines)
    }

    fn command(
        binary: &Path,
        runtime: &RuntimeApi,
        concurrency: usize,
        name: &str,
        amqp_url: &str,
        env: &[(&str, &str)],
    ) -> Command {
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", &runtime.address)
            .env("AWS_LAMBDA_MAX_CONCURRENCY", concurrency.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(INITIALIZATION_TYPE, initialization_type(concurrency))
            .env("AMQP_URL", amqp_url)
            .env("JWT_SECRET", DEV_JWT_SECRET)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied());
        command
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `binary` (poll-events) with room for `polls` invocations at once on the broker at
/// `amqp_url` (whose node `rabbitmqctl -n node` reaches), holds a poll for each of
/// `polls` new users, and publishes each one event once all are held; then, with
/// [`IdleRound::Measure`], polls once more for every user with nothing queued.
pub async fn hold_in_one_process(
    binary: &Path,
    amqp_url: &str,
    node: &str,
    polls: usize,
    idle_round: IdleRound,
) -> HeldPolls {
    let runtime = RuntimeApi::start().await;
    let function = Function::start(binary, &runtime, polls, FUNCTION_NAME, amqp_url, &[]);
    let pid = function.0.id();
    let users: Vec<UserId> = (0..polls).map(|_| unique_user()).collect();
    let tokens = TokenIssuer::new(DEV_JWT_SECRET.as_bytes());
    let events: Vec<String> = users
        .iter()
        .map(|user| {
            let token = tokens.mint(*user, None, None, Duration::from_secs(3600));
            Fixture::new("poll-events")
                .authorization(&format!("Bearer {token}"))
                .event()
        })
        .collect();

    // First polls declare every user's queue (a herd of new users at once); with nothing
    // queued they answer empty after the hold. A poll whose set-up did not fit its hold
    // answers 503 and polls again, as a client would.
    let mut waiting: Vec<usize> = (0..polls).collect();
    for _ in 0..5 {
        let round: Vec<String> = waiting.iter().map(|&i| events[i].clone()).collect();
        let answers = poll_all(&runtime, &round).await;
        waiting = waiting
            .into_iter()
            .zip(&answers)
            .filter(|(_, (answer, _))| status(answer) != 200)
            .map(|(i, _)| i)
            .collect();
        if waiting.is_empty() {
            break;
        }
    }
    assert!(
        waiting.is_empty(),
        "{} users never got a queue",
        waiting.len()
    );

    // Every user's poll held at once; once every consumer is on the node, each user gets
    // one event of their own.
    let cpu_before = cpu_time(pid);
    let held = poll_all(&runtime, &events);
    // One batch of every user's event, confirmed together: on a busy machine that may
    // take longer than the default operation timeout.
    let mut publishing = Config::new(amqp_url, None, "managed-publisher");
    publishing.amqp_timeout = Duration::from_secs(30);
    let publisher = RabbitBroker::new(&publishing);
    let publish = async {
        let what = format!("not every one of {polls} polls held");
        wait_until(
            what,
            Duration::from_secs(10),
            Duration::from_millis(200),
            || std::future::ready(user_queue_consumers(node) >= polls),
        )
        .await;
        let cpu_setting_up = cpu_time(pid) - cpu_before;
        let rss_kib = status_kib(pid, "VmRSS").unwrap_or_default();
        let connections = ctl(node, &["list_connections", "client_properties"])
            .matches(FUNCTION_NAME)
            .count();
        let batch: Vec<Publication> = users
            .iter()
            .enumerate()
            .map(|(i, user)| Publication {
                audience: Audience::User(*user),
                event: message(i as i64).prepare(),
            })
            .collect();
        let receipts = publisher.publish(&batch).await.expect("publish");
        assert!(receipts.iter().all(|receipt| receipt.routed));
        (cpu_setting_up, rss_kib, connections)
    };
    let (answers, (cpu_setting_up, rss_kib, connections)) = tokio::join!(held, publish);
    publisher.close().await;
    let cpu_round = cpu_time(pid) - cpu_before;
    let peak_rss_kib = status_kib(pid, "VmHWM").unwrap_or_default();

    let cpu_idle_round = match idle_round {
        IdleRound::Skip => None,
        IdleRound::Measure => {
            let cpu_before = cpu_time(pid);
            let idle = poll_all(&runtime, &events).await;
            let answered_empty = idle
                .iter()
                .filter(|(answer, _)| status(answer) == 200 && events_of(answer).is_empty())
                .count();
            assert_eq!(answered_empty, polls, "every idle poll answers empty");
            Some(cpu_time(pid) - cpu_before)
        }
    };
    HeldPolls {
        answers,
        connections,
        rss_kib,
        peak_rss_kib,
        cpu_setting_up,
        cpu_round,
        cpu_idle_round,
    }
}

/// Polls once for each event at the same time; each answer and how long it took. All of
/// them are served at once or the process is not serving invocations concurrently: they
/// must all answer within two invocation timeouts.
async fn poll_all(runtime: &RuntimeApi, events: &[String]) -> Vec<(Value, Duration)> {
    let invocations: Vec<_> = events
        .iter()
        .map(|event| runtime.invoke(event.clone(), INVOCATION_TIMEOUT))
        .collect();
    let all = async {
        let mut answers = Vec::with_capacity(invocations.len());
        for invocation in invocations {
            let asked = invocation.queued_at;
            match invocation.outcome().await {
                Some(Outcome::Response { body, at }) => answers.push((body, at - asked)),
                Some(Outcome::Error(error)) => panic!("the function failed an invocation: {error}"),
                None => panic!("the Runtime API stopped"),
            }
        }
        answers
    };
    tokio::time::timeout(2 * INVOCATION_TIMEOUT, all)
        .await
        .expect("every invocation is served at once, within two invocation timeouts")
}

/// The HTTP status of a function's answer.
pub fn status(answer: &Value) -> u64 {
    answer["statusCode"].as_u64().unwrap_or_default()
}

/// The events of a poll's answer.
pub fn events_of(answer: &Value) -> Vec<Value> {
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("{}")).unwrap();
    body["events"].as_array().cloned().unwrap_or_default()
}

/// Consumers on users' queues, as the node counts them.
fn user_queue_consumers(node: &str) -> usize {
    ctl(node, &["list_consumers", "queue_name"])
        .lines()
        .filter(|line| line.starts_with("event_queue:user:"))
        .count()
}
