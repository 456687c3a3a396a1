//! `longpoll-bench managed`: one poll-events process serving many invocations at once,
//! as on Lambda Managed Instances (`longpoll_testkit::managed` drives it), and what that
//! costs the process: resident memory and CPU, per thousand held polls.

use std::path::PathBuf;

use longpoll_testkit::managed::{HeldPolls, IdleRound, hold_in_one_process, status};

/// `longpoll-bench managed`: one poll-events process (`--binary`, run against a
/// Runtime API on loopback) holding `--polls` polls at once on AMQP_URL, whose node is
/// `--node`.
#[derive(clap::Args)]
pub struct Options {
    #[arg(long)]
    pub binary: PathBuf,
    #[arg(long)]
    pub node: String,
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub polls: Vec<usize>,
}

/// One run per count in `polls`, each with fresh users, on the broker at AMQP_URL.
pub async fn run(options: &Options) -> Result<(), Box<dyn std::error::Error>> {
    let (binary, node, polls) = (&options.binary, options.node.as_str(), &options.polls);
    let amqp_url = std::env::var("AMQP_URL")?;
    println!(
        "| held polls in one process | AMQP connections | answered 200 with their event | RSS held | RSS per 1,000 held | peak RSS | CPU to hold them all | CPU for the round, per 1,000 | CPU µs per idle poll | CPU µs per event |"
    );
    println!("|---|---|---|---|---|---|---|---|---:|---:|");
    let mut rss = Vec::new();
    for &count in polls {
        let held = hold_in_one_process(binary, &amqp_url, node, count, IdleRound::Measure).await;
        let delivered = held
            .answers
            .iter()
            .filter(|(answer, _)| status(answer) == 200)
            .count();
        let per_thousand = 1000.0 / count as f64;
        let mib = |kib: usize| kib as f64 / 1024.0;
        let (idle_poll_us, event_us) = per_poll_cpu(&held, count);
        println!(
            "| {count} | {} | {delivered} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} s | {:.2} s | {idle_poll_us:.0} | {event_us:.0} |",
            held.connections,
            mib(held.rss_kib),
            mib(held.rss_kib) * per_thousand,
            mib(held.peak_rss_kib),
            held.cpu_setting_up.as_secs_f64(),
            held.cpu_round.as_secs_f64() * per_thousand,
        );
        rss.push((count, held.rss_kib));
    }
    // What each further held poll costs, beyond the process's own footprint.
    if let (Some(&(fewest, low)), Some(&(most, high))) = (rss.first(), rss.last())
        && most > fewest
    {
        let per_thousand = (high as f64 - low as f64) / 1024.0 / (most - fewest) as f64 * 1000.0;
        println!(
            "\nFrom {fewest} to {most} held polls: {per_thousand:.1} MiB more per 1,000 held polls."
        );
    }
    Ok(())
}

/// CPU µs per idle poll (the idle round over its polls) and per event (what a poll
/// answered with an event cost beyond an idle one): the figures `longpoll cost` sizes
/// managed instances from.
fn per_poll_cpu(held: &HeldPolls, polls: usize) -> (f64, f64) {
    let micros = |cpu: std::time::Duration| cpu.as_secs_f64() * 1e6 / polls as f64;
    let idle = held.cpu_idle_round.map_or(f64::NAN, micros);
    (idle, (micros(held.cpu_round) - idle).max(0.0))
}
