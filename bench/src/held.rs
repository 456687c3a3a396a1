//! Many concurrent held polls against a running local server (`longpoll-local`): the
//! shared load ([`crate::load`]) with events published through the publish endpoint.
//! At the end: held polls (the minimum over the window, after the ramp), answered polls,
//! errors, publish-to-response latency, the server's RSS, and its AMQP connections and
//! channels (from `rabbitmqctl`, when the server runs on RabbitMQ).

use std::{process::Command, time::Duration};

use crate::{
    load::{self, Contender, LoadOptions, LoadReport, PollMode, ServerPublish},
    stats,
};

#[derive(clap::Args)]
pub struct Options {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    url: String,
    /// Concurrent users, each holding one poll.
    #[arg(long, default_value_t = 10_000)]
    polls: usize,
    /// How long to keep them held, after the ramp.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// How many new polls to open per second while ramping up.
    #[arg(long, default_value_t = 2_000)]
    ramp_per_second: usize,
    /// Events published per second to random users during the steady window.
    #[arg(long, default_value_t = 50)]
    publish_rate: u64,
    /// The server's process id, for its RSS (default: `pgrep -n longpoll-local`).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's publish key.
    #[arg(long, default_value = longpoll::config::DEV_PUBLISH_KEY)]
    publish_key: String,
}

/// Runs the load against the server and prints what it held.
pub async fn run(options: Options) {
    println!(
        "ramping up {} held polls against {} ...",
        options.polls, options.url
    );
    let pid = options.server_pid.or_else(server_pid);
    let report = load::run(LoadOptions {
        contender: Contender::Server {
            url: options.url.clone(),
            mode: PollMode::Guide,
            via: ServerPublish::Endpoint {
                api_key: options.publish_key.clone(),
            },
        },
        users: options.polls,
        ramp_per_second: options.ramp_per_second,
        publish_rate: options.publish_rate,
        warm_up: Duration::ZERO,
        seconds: options.seconds,
        drain: Duration::from_secs(30),
        server_pid: pid,
        broker_pid: None,
    })
    .await;
    print(&report, pid, amqp_usage(None));
}

/// Prints a held-polls report: polls in flight, errors, latency, the server's memory
/// and broker usage.
pub fn print(
    report: &LoadReport,
    pid: Option<u32>,
    (connections, channels): (Option<usize>, Option<usize>),
) {
    let held = &report.held;
    let window = report.window.as_secs_f64();
    println!(
        "held polls (min / median / max over the window): {} / {} / {}",
        held.iter().min().unwrap_or(&0),
        stats::median(&held.iter().map(|&n| n as f64).collect::<Vec<_>>()),
        held.iter().max().unwrap_or(&0),
    );
    println!(
        "polls answered: {} ({:.0}/s), failed polls by status: {:?}",
        report.answered,
        report.answered as f64 / window,
        report.poll_failures
    );
    println!(
        "events published: {}, lost: {}, duplicated: {}",
        report.published, report.lost, report.duplicated
    );
    println!("{}", report.latency_line());
    match (pid, report.rss_kib.last()) {
        (Some(pid), Some(last)) => println!(
            "server (pid {pid}) RSS: {:.1} MiB at the end, {:.1} MiB peak",
            *last as f64 / 1024.0,
            *report.rss_kib.iter().max().unwrap() as f64 / 1024.0
        ),
        _ => println!("server RSS: unknown (pass --server-pid)"),
    }
    match (connections, channels) {
        (Some(connections), Some(channels)) => {
            println!("AMQP connections of longpoll-local: {connections}, channels: {channels}")
        }
        _ => println!("AMQP connections: none seen (memory broker, or rabbitmqctl unavailable)"),
    }
}

fn server_pid() -> Option<u32> {
    let output = Command::new("pgrep")
        .args(["-n", "longpoll-local"])
        .output()
        .ok()?;
    String::from_utf8(output.stdout).ok()?.trim().parse().ok()
}

/// AMQP connections named longpoll-local and their channels, when known.
pub type AmqpUsage = (Option<usize>, Option<usize>);

/// (connections named longpoll-local, their channels), from `rabbitmqctl` (against
/// `node`, else `RABBITMQ_NODENAME` or the default node).
pub fn amqp_usage(node: Option<&str>) -> AmqpUsage {
    let mut command = Command::new("rabbitmqctl");
    if let Some(node) = node {
        command.args(["-n", node]);
    }
    let Ok(output) = command
        .args(["list_connections", "-q", "channels", "client_properties"])
        .output()
    else {
        return (None, None);
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let ours: Vec<usize> = text
        .lines()
        .filter(|line| line.contains("\"longpoll-local\""))
        .filter_map(|line| line.split('\t').next()?.trim().parse().ok())
        .collect();
    if ours.is_empty() {
        (None, None)
    } else {
        (Some(ours.len()), Some(ours.iter().sum()))
    }
}
