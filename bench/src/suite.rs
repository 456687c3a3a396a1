//! `longpoll-bench suite`: the figures of single polls, throughput, capacity, the
//! functions under `cargo lambda watch` and their cold start, in one run, as Markdown
//! tables (latency under load beside Nchan is [`crate::compare`]). It starts its own
//! servers (`longpoll-local`, and the guide's algorithm as a baseline) on the broker at
//! `AMQP_URL`, runs each measurement several times and prints medians; `scripts/bench`
//! runs it on a private RabbitMQ node.

use std::{path::PathBuf, time::Duration};

use longpoll_testkit::watch::Watch;

use crate::{
    cold_start,
    compare::{self, LatencyRow, cool_down},
    held,
    load::{self, Contender, LoadOptions, LoadReport, PollMode, ServerPublish},
    probes::{self, Throughput},
    results,
    server::{Server, Servers, sibling},
    stats::{self, median, ms},
};

#[derive(clap::Args)]
pub struct Options {
    /// Runs of each measurement; the tables show the medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of publishing in each latency run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Held polls for the capacity run (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    held_polls: usize,
    /// Seconds the held polls are kept, after their ramp.
    #[arg(long, default_value_t = 60)]
    held_seconds: u64,
    /// Leave out the run under `cargo lambda watch`.
    #[arg(long)]
    no_watch: bool,
    /// The broker's node name for `rabbitmqctl -n` (connections and channels).
    #[arg(long, env = "RABBITMQ_NODENAME")]
    node: Option<String>,
}

pub async fn run(options: Options) {
    let Servers {
        amqp_url,
        library,
        longpoll: ours,
        guide,
        ..
    } = Servers::start().await;
    describe_machine(&amqp_url);
    let env = [("AMQP_URL", amqp_url.as_str())];
    let runs = options.runs.max(1);

    // Events already queued; idle hold.
    let mut queued = Vec::new();
    let mut idle = Vec::new();
    for (name, server) in [("longpoll", &ours), ("guide's algorithm", &guide)] {
        let (mut p50s, mut p99s, mut over_medians, mut over_maxes) =
            (vec![], vec![], vec![], vec![]);
        for _ in 0..runs {
            let latencies = probes::queued_answer(&server.url, &*library, 200).await;
            p50s.push(stats::percentile_ms(&latencies, 0.5));
            p99s.push(stats::percentile_ms(&latencies, 0.99));
            let (over_median, over_max) =
                probes::median_and_max_ms(&probes::idle_hold(&server.url, 50).await);
            over_medians.push(over_median);
            over_maxes.push(over_max);
        }
        queued.push((name, median(&p50s), median(&p99s)));
        idle.push((name, median(&over_medians), median(&over_maxes)));
    }

    // Publish throughput, batches of 100, 4 publishers.
    let (mut endpoint, mut direct) = (vec![], vec![]);
    for _ in 0..runs {
        endpoint.push(
            probes::publish_throughput(Throughput::Endpoint(&ours.url), library.clone(), 4, 5.0)
                .await,
        );
        direct.push(probes::publish_throughput(Throughput::Library, library.clone(), 4, 5.0).await);
    }
    // Publish→response under load is `longpoll-bench compare` (`scripts/bench compare`).
    let mut rows = Vec::new();
    drop(guide);

    // Capacity: held polls in one server process.
    let capacity = if options.held_polls > 0 {
        // A fresh server, so its memory is the held polls' alone.
        drop(ours);
        let fresh = Server::start(sibling("longpoll-local"), &[], &env).await;
        eprintln!("  ramping up {} held polls ...", options.held_polls);
        let report = load::run(LoadOptions {
            contender: Contender::Server {
                url: fresh.url.clone(),
                mode: PollMode::Guide,
                via: ServerPublish::Endpoint {
                    api_key: longpoll::config::DEV_PUBLISH_KEY.to_owned(),
                },
            },
            users: options.held_polls,
            ramp_per_second: 200,
            publish_rate: 50,
            warm_up: Duration::ZERO,
            seconds: options.held_seconds,
            drain: Duration::from_secs(30),
            server_pid: Some(fresh.pid),
            broker_pid: None,
        })
        .await;
        let usage = held::amqp_usage(options.node.as_deref());
        Some((report, usage))
    } else {
        None
    };

    // The functions under `cargo lambda watch` (debug builds, 8 instances of each), if
    // cargo-lambda is installed: as many users as instances.
    if !options.no_watch && cargo_lambda_installed() {
        eprintln!("  starting cargo lambda watch (builds the functions on first use) ...");
        let watch = Watch::start(&env, &["poll/events/"]).await;
        let mut reports = Vec::new();
        for _ in 0..runs {
            reports.push(
                load::run(LoadOptions {
                    contender: Contender::Server {
                        url: watch.base.clone(),
                        mode: PollMode::Guide,
                        via: ServerPublish::Library(library.clone()),
                    },
                    users: 8,
                    ramp_per_second: 8,
                    publish_rate: 10,
                    warm_up: Duration::ZERO,
                    seconds: options.seconds,
                    drain: Duration::from_secs(30),
                    server_pid: None,
                    broker_pid: None,
                })
                .await,
            );
            cool_down().await;
        }
        rows.push(LatencyRow::of(
            8,
            10,
            "the functions under cargo lambda watch",
            &reports,
        ));
    }

    // Function cold start and memory.
    let poll_events = sibling("poll-events");
    let functions = cold_start::measure(&poll_events, &amqp_url, &*library, 10, 1000).await;

    print_tables(
        &rows,
        &queued,
        &idle,
        (&endpoint, &direct),
        capacity.as_ref(),
        &functions,
    );
    library.close().await;
}

fn print_tables(
    rows: &[LatencyRow],
    queued: &[(&str, f64, f64)],
    idle: &[(&str, f64, f64)],
    (endpoint, direct): (&[f64], &[f64]),
    capacity: Option<&(LoadReport, held::AmqpUsage)>,
    functions: &cold_start::FunctionFigures,
) {
    if !rows.is_empty() {
        println!("\n### Publish→response latency: the functions under `cargo lambda watch`\n");
        compare::print(rows);
    }

    println!("\n### Single polls\n");
    println!("| | longpoll | guide's algorithm |");
    println!("|---|---|---|");
    println!(
        "| events already queued: request→answer p50 / p99 | {} / {} ms | {} / {} ms |",
        ms(queued[0].1),
        ms(queued[0].2),
        ms(queued[1].1),
        ms(queued[1].2)
    );
    println!(
        "| idle poll: answered after the 5.5 s hold + median / max | {} / {} ms | {} / {} ms |",
        ms(idle[0].1),
        ms(idle[0].2),
        ms(idle[1].1),
        ms(idle[1].2)
    );

    println!("\n### Publish throughput (batches of 100, 4 publishers, persistent and confirmed)\n");
    println!("| through | events/s (median) |");
    println!("|---|---|");
    println!(
        "| the publish endpoint (`POST events/`) | {:.0} |",
        median(endpoint)
    );
    println!(
        "| the library (`Broker::publish`) | {:.0} |",
        median(direct)
    );

    if let Some((report, (connections, channels))) = capacity {
        let held: Vec<f64> = report.held.iter().map(|&n| n as f64).collect();
        let [p50, _, p99, _] = report.latency_ms();
        println!("\n### Held polls in one local-server process\n");
        println!(
            "| held (min / median in flight) | failed polls | events delivered | publish→response p50 / p99 | answered | RSS peak | AMQP connections / channels |"
        );
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| {:.0} / {:.0} | {} | {} of {} | {} / {} ms | {:.0} polls/s | {:.0} MiB | {} / {} |",
            held.iter().copied().fold(f64::INFINITY, f64::min),
            median(&held),
            report.poll_failures.values().sum::<usize>(),
            report.published - report.lost,
            report.published,
            ms(p50),
            ms(p99),
            report.answered as f64 / report.window.as_secs_f64(),
            report.rss_kib.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
            connections.map_or("–".to_owned(), |n| n.to_string()),
            channels.map_or("–".to_owned(), |n| n.to_string()),
        );
    }

    let ready: Vec<f64> = functions.starts.iter().map(|s| s.ready_ms).collect();
    let answered: Vec<f64> = functions.starts.iter().map(|s| s.answered_ms).collect();
    println!("\n### The poll-events function (host release build, Runtime API on loopback)\n");
    println!("| | median of {} starts |", functions.starts.len());
    println!("|---|---|");
    println!(
        "| process start → ready for its first invocation (broker connect excluded) | {} ms |",
        ms(median(&ready))
    );
    println!(
        "| process start → first poll answered (connect, declare, consume included) | {} ms |",
        ms(median(&answered))
    );
    if let Some(peak) = functions.peak_rss_kib {
        println!(
            "| peak RSS after {} invocations | {:.1} MiB |",
            functions.invocations,
            peak as f64 / 1024.0
        );
    }
    print_bootstrap_sizes();
}

/// The arm64 bootstraps `cargo lambda build --release --arm64` left, if any.
fn print_bootstrap_sizes() {
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| PathBuf::from("target"), PathBuf::from);
    let mut sizes = Vec::new();
    for function in [
        "poll-events",
        "poll-test",
        "poll-disconnect",
        "publish-event",
        "poll-online",
    ] {
        let bootstrap = target.join("lambda").join(function).join("bootstrap");
        if let Ok(metadata) = std::fs::metadata(&bootstrap) {
            sizes.push(format!(
                "{function} {:.1} MiB",
                metadata.len() as f64 / (1 << 20) as f64
            ));
        }
    }
    if sizes.is_empty() {
        println!("\nbootstrap sizes: none built (cargo lambda build --release --arm64)");
    } else {
        println!("\nrelease arm64 bootstraps: {}", sizes.join(", "));
    }
}

fn describe_machine(amqp_url: &str) {
    println!(
        "machine: {}; broker {}; servers, broker and load generator share it",
        results::machine(),
        longpoll::config::redact_url(amqp_url)
    );
}

fn cargo_lambda_installed() -> bool {
    std::process::Command::new("cargo")
        .args(["lambda", "--version"])
        .output()
        .is_ok_and(|output| output.status.success())
}
