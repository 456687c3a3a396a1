//! `longpoll-bench trips`: broker requests per idle poll on the Lambda path, from the
//! broker's own counters for the function's connection.

use std::path::PathBuf;

/// The poll-events `--binary`, one invocation at a time, against a Runtime API on
/// loopback, on AMQP_URL whose node is `--node`.
#[derive(clap::Args)]
pub struct Options {
    #[arg(long)]
    pub binary: PathBuf,
    #[arg(long)]
    pub node: String,
    #[arg(long, default_value_t = 20)]
    pub polls: usize,
}

/// One user polling `polls` times in a row with nothing published, after a first poll;
/// prints the broker's `recv_cnt` and `send_cnt` for the function's connection.
pub async fn run(options: &Options) {
    let amqp_url =
        std::env::var("AMQP_URL").unwrap_or_else(|_| longpoll::config::DEFAULT_AMQP_URL.to_owned());
    let polls = options.polls;
    let trips =
        longpoll_testkit::round_trips::idle_polls(&options.binary, &amqp_url, &options.node, polls)
            .await;
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
