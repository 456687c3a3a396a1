//! `longpoll-bench`: the benchmark suite, its parts, the soak, and the guide-algorithm
//! baseline server. Run `scripts/bench` for the whole suite on a private broker.

use std::{sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use longpoll::{Config, RabbitBroker};
use longpoll_bench::{guide::GuideBaseline, held, herd, latency, managed, soak, suite};
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
    /// The local server on the design guide's algorithm (basic_get every 0.3 s), for
    /// comparison; listens on LISTEN_ADDR, uses AMQP_URL.
    GuideServer,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Suite(options) => suite::run(options).await,
        Command::Latency { runs, samples } => latency::run(runs, samples).await,
        Command::Held(options) => held::run(options).await,
        Command::Herd {
            url,
            node,
            users,
            lookups,
        } => herd::run(&url, &node, &users, lookups).await,
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
        Command::GuideServer => guide_server().await?,
    }
    Ok(())
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
