//! `longpoll-bench`: the benchmark suite, its parts, the soak, and the guide-algorithm
//! baseline server. Run `scripts/bench` for the whole suite on a private broker. This
//! file only parses the command line and hands each command to its module.

use clap::{Parser, Subcommand};
use longpoll_bench::{
    cluster, compare, curve, guide, held, herd, hold, latency, managed, placement, results, shards,
    soak, suite, trips,
};

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
    Compare(compare::Options),
    /// Delivery and the recovery from a lost answer at holds of 5.5 s and 25 s, with the
    /// browser client (Node) behind a proxy, on AMQP_URL.
    Hold(hold::Options),
    /// p50 and p99 against the event rate and against users for Nchan, the broker alone
    /// and longpoll, drawn as SVG files, with each one's capacity.
    Curve(curve::Options),
    /// Immediate return and publish-to-response latency through the handler, in-process.
    Latency(latency::Options),
    /// Many concurrent held polls against a running local server.
    Held(held::Options),
    /// Reconnect herds (new users polling at once) and offline presence lookups against
    /// a running local server on the broker node `--node`.
    Herd(herd::Options),
    /// Lambda Managed Instances: one poll-events process holding many polls at once;
    /// prints its memory and CPU per thousand held polls.
    Managed(managed::Options),
    /// The cluster fire drill: a single node at AMQP_URL (`--node`) beside a private
    /// 3-node cluster behind HAProxy, steady and through a rolling restart and a crash.
    Cluster(cluster::Options),
    /// Pollers in cursor mode while the broker's connections are killed periodically;
    /// exits 1 if an event was lost or duplicated, or a 5xx other than 503 came back.
    Soak(soak::Options),
    /// The two candidate placements of users over brokers (slot table, jump hash): how
    /// even, how many users move when a broker is added or retired, how fast.
    Placement(placement::Options),
    /// Users over three brokers (private nodes as shards) beside one node, through the
    /// local server: spread, memory per user, latency, new users held, the most held.
    Shards(shards::Options),
    /// Broker requests per idle poll on the Lambda path, from the broker's own counters.
    Trips(trips::Options),
    /// Puts OUTPUT (a command's figures) into section SECTION of the results file, with
    /// the date, machine and versions; `scripts/bench` runs it after each command.
    Record(results::Options),
    /// The local server on the design guide's algorithm (basic_get every 0.3 s), for
    /// comparison; listens on LISTEN_ADDR, uses AMQP_URL.
    GuideServer,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Suite(options) => suite::run(options).await,
        Command::Compare(options) => compare::standalone(options).await,
        Command::Curve(options) => curve::run(options).await?,
        Command::Hold(options) => hold::run(options).await,
        Command::Latency(options) => latency::run(options).await,
        Command::Held(options) => held::run(options).await,
        Command::Herd(options) => herd::run(&options).await,
        Command::Cluster(options) => cluster::run(&options).await,
        Command::Managed(options) => managed::run(&options).await?,
        Command::Soak(options) => {
            if !soak::judged(options).await {
                std::process::exit(1);
            }
        }
        Command::Trips(options) => trips::run(&options).await,
        Command::Placement(options) => placement::run(&options),
        Command::Shards(options) => shards::run(&options).await,
        Command::Record(options) => results::record_file(&options)?,
        Command::GuideServer => guide::serve().await?,
    }
    Ok(())
}
