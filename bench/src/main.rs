//! `longpoll-bench`: the benchmark suite, its parts, the soak, and the guide-algorithm
//! baseline server. Run `scripts/bench` for the whole suite on a private broker.

use std::{sync::Arc, time::Duration};

use clap::{Parser, Subcommand, builder::PossibleValuesParser};
use longpoll::{Config, RabbitBroker};
use longpoll_bench::{
    cluster, compare, curve, guide::GuideBaseline, held, herd, hold, latency, managed, results,
    soak, suite,
};
use longpoll_local::{BrokerKind, Functions, cors, serve};

#[derive(Parser)]
#[command(name = "longpoll-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every figure, as Markdown tables (starts its own servers on AMQP_URL).
    Suite(suite::Options),
    /// Publish→response latency under load: the local server (both modes) and the
    /// guide's algorithm on AMQP_URL, beside Nchan, as ratios to it.
    Compare {
        /// Runs of each load (0: only the breakdown).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds of publishing in each run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The loads as USERS:RATE, comma-separated (default: 200:100,2000:500).
        #[arg(long, value_delimiter = ',', value_parser = compare::parse_load)]
        loads: Vec<(usize, u64)>,
        /// Only these contenders, comma-separated: nchan, floor, longpoll, metrics-off
        /// (longpoll without its metrics recorder), cursor, guide (default: all).
        #[arg(long, value_delimiter = ',', value_parser = PossibleValuesParser::new(compare::CONTENDERS.map(|(short, _)| short)))]
        only: Vec<String>,
        /// Leave out the step-by-step breakdown that follows the table.
        #[arg(long)]
        no_breakdown: bool,
    },
    /// Delivery and the recovery from a lost answer at holds of 5.5 s and 25 s, with the
    /// browser client (Node) behind a proxy, on AMQP_URL.
    Hold(hold::Options),
    /// p50 and p99 against the event rate and against users for Nchan, the broker alone
    /// and longpoll, drawn as SVG files, with each one's capacity.
    Curve(curve::Options),
    /// Immediate return and publish-to-response latency through the handler, in-process.
    Latency {
        #[arg(default_value_t = 5)]
        runs: usize,
        #[arg(default_value_t = 200)]
        samples: usize,
    },
    /// Many concurrent held polls against a running local server.
    Held(held::Options),
    /// Reconnect herds (new users polling at once) and offline presence lookups against
    /// a running local server on the broker node `--node`.
    Herd {
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        url: String,
        /// The broker node (`rabbitmqctl -n`): a private one.
        #[arg(long)]
        node: String,
        /// Herd sizes, one herd each.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        users: Vec<usize>,
        /// Presence lookups of 100 offline users after the herds.
        #[arg(long, default_value_t = 1000)]
        lookups: usize,
    },
    /// Lambda Managed Instances: one poll-events process (`--binary`, run against a Runtime
    /// API on loopback) holding `--polls` polls at once on AMQP_URL, whose node is
    /// `--node`; prints its memory and CPU per thousand held polls.
    Managed {
        #[arg(long)]
        binary: std::path::PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        polls: Vec<usize>,
    },
    /// The cluster fire drill: a single node at AMQP_URL (`--node`) beside a private
    /// 3-node cluster behind HAProxy, steady and through a rolling restart and a crash.
    Cluster(cluster::Options),
    /// Pollers in cursor mode while the broker's connections are killed periodically;
    /// exits 1 if an event was lost or duplicated, or a 5xx other than 503 came back.
    Soak {
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        url: String,
        #[arg(long, default_value_t = 1000)]
        pollers: usize,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        publish_rate: u64,
        /// Seconds between connection kills.
        #[arg(long, default_value_t = 30)]
        kill_every: u64,
        /// The broker node (`rabbitmqctl -n`); a private one, never the shared broker.
        #[arg(long)]
        node: String,
        #[arg(long)]
        server_pid: Option<u32>,
        /// Poll as the guide does instead of in cursor mode.
        #[arg(long)]
        guide_mode: bool,
    },
    /// Broker requests per idle poll on the Lambda path: the poll-events `--binary`, one
    /// invocation at a time, against a Runtime API on loopback, on AMQP_URL whose node is
    /// `--node`, from the broker's own counters.
    Trips {
        #[arg(long)]
        binary: std::path::PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long, default_value_t = 20)]
        polls: usize,
    },
    /// Puts OUTPUT (a command's figures) into section SECTION of the results file, with
    /// the date, machine and versions; `scripts/bench` runs it after each command.
    Record {
        section: String,
        output: std::path::PathBuf,
        #[arg(long, default_value = "bench/RESULTS.md")]
        results: std::path::PathBuf,
    },
    /// The local server on the design guide's algorithm (basic_get every 0.3 s), for
    /// comparison; listens on LISTEN_ADDR, uses AMQP_URL.
    GuideServer,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Suite(options) => suite::run(options).await,
        Command::Compare {
            runs,
            seconds,
            loads,
            only,
            no_breakdown,
        } => {
            let loads = if loads.is_empty() {
                compare::LOADS.to_vec()
            } else {
                loads
            };
            compare::standalone(&loads, &only, runs, seconds, !no_breakdown).await
        }
        Command::Curve(options) => curve::run(options).await?,
        Command::Hold(options) => hold::run(options).await,
        Command::Latency { runs, samples } => latency::run(runs, samples).await,
        Command::Held(options) => held::run(options).await,
        Command::Herd {
            url,
            node,
            users,
            lookups,
        } => herd::run(&url, &node, &users, lookups).await,
        Command::Cluster(options) => {
            let amqp_url = std::env::var("AMQP_URL")
                .unwrap_or_else(|_| longpoll::config::DEFAULT_AMQP_URL.to_owned());
            cluster::run(&amqp_url, &options).await
        }
        Command::Managed {
            binary,
            node,
            polls,
        } => managed::run(&binary, &node, &polls).await?,
        Command::Soak {
            url,
            pollers,
            seconds,
            publish_rate,
            kill_every,
            node,
            server_pid,
            guide_mode,
        } => {
            let report = soak::run(soak::SoakOptions {
                url,
                pollers,
                seconds,
                publish_rate,
                kill_every: Duration::from_secs(kill_every),
                node,
                server_pid,
                cursor: !guide_mode,
            })
            .await;
            report.print();
            if !report.passed() {
                std::process::exit(1);
            }
        }
        Command::Trips {
            binary,
            node,
            polls,
        } => trips(&binary, &node, polls).await,
        Command::Record {
            section,
            output,
            results,
        } => results::record(&results, &section, &std::fs::read_to_string(output)?)?,
        Command::GuideServer => guide_server().await?,
    }
    Ok(())
}

async fn trips(binary: &std::path::Path, node: &str, polls: usize) {
    let amqp_url =
        std::env::var("AMQP_URL").unwrap_or_else(|_| longpoll::config::DEFAULT_AMQP_URL.to_owned());
    let trips = longpoll_testkit::round_trips::idle_polls(binary, &amqp_url, node, polls).await;
    println!(
        "The poll-events function on the Lambda path (release build, one invocation at a time, Runtime API on loopback), one user polling {polls} times in a row with nothing published, after a first poll; the broker's `recv_cnt` and `send_cnt` for the function's connection (`rabbitmqctl list_connections`):\n"
    );
    println!("| | received by the broker | sent by the broker |");
    println!("|---|---|---|");
    println!(
        "| first poll (connect, presence, declare, bindings, consume, cancel) | {} | {} |",
        trips.first_poll.0, trips.first_poll.1
    );
    println!(
        "| per idle poll after it (consume, cancel) | {:.2} | {:.2} |",
        trips.per_idle_poll(),
        trips.idle.1 as f64 / polls as f64
    );
}

async fn guide_server() -> Result<(), Box<dyn std::error::Error>> {
    longpoll::telemetry::init();
    let config = Config::from_env("longpoll-guide-baseline")?;
    let guide = Arc::new(GuideBaseline::new(&config));
    let broker = Arc::new(RabbitBroker::new(&config));
    let mut functions = Functions::with_broker(config, broker, BrokerKind::RabbitMq)?;
    functions.app = functions.app.with_poll(guide);
    let functions = Arc::new(functions);
    let address = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:9100".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("guide baseline listening on http://{address}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(listener, functions, cors(&["*".to_owned()]), shutdown).await?;
    Ok(())
}
