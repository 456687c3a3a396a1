//! Benchmarks that print figures (never pass/fail tests: the machine is shared and noisy).
//!
//! - `longpoll-bench latency [RUNS SAMPLES]`: immediate return and publish-to-response
//!   latency through the real `poll-events` handler on a warm broker connection.
//! - `longpoll-bench held --url URL --polls N --seconds S`: N users each holding a poll
//!   against a running local server, re-polling as soon as answered, while events are
//!   published to random users; prints held polls, latency, the server's RSS and its
//!   AMQP connections and channels.

mod held;
mod latency;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "longpoll-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Immediate return and publish-to-response latency (median of runs).
    Latency {
        #[arg(default_value_t = 5)]
        runs: usize,
        #[arg(default_value_t = 200)]
        samples: usize,
    },
    /// Many concurrent held polls against a running local server.
    Held(held::Options),
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Command::Latency { runs, samples } => latency::run(runs, samples).await,
        Command::Held(options) => held::run(options).await,
    }
}
