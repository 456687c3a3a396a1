//! Publish→response latency under load, every server in one run: the yardstick (Nchan,
//! in memory), the floor (the broker alone, AMQP consumers and no HTTP server:
//! [`crate::load::consumers`]), the local server in the guide's mode and in cursor mode, and
//! the guide's algorithm, at N=200 users / R=100 events/s and N=2000 / R=500. Each row
//! is also given as a ratio to Nchan's figure of the same run, since the machine is
//! shared and noisy: only figures taken side by side compare.
//!
//! Each HTTP load ramps its users up at 200 a second, lets them poll idle for 25 s, then
//! publishes for the window (the floor's consumers are set up, then wait as long); the runs of a load are interleaved (Nchan, the floor, longpoll, cursor
//! mode, guide; then again), so a slow minute of the machine falls on every server
//! alike.

use std::time::Duration;

use crate::{
    breakdown,
    load::{self, Contender, LoadOptions, LoadReport, PollMode, ServerPublish},
    probes,
    server::Servers,
    stats::{self, median, ms},
};

/// New users a second while a load ramps up: what a 2-core broker sets up without a
/// herd (`scripts/bench herd` measures herds).
const RAMP_PER_SECOND: usize = 200;
/// Idle polling between the ramp and the measured window: every user has re-polled a
/// few times, so the window sees steady state.
const WARM_UP: Duration = Duration::from_secs(25);

/// The loads, as (users, events per second): what `scripts/bench compare` records.
pub const LOADS: [(usize, u64); 2] = [(200, 100), (2000, 500)];

/// A load given on the command line as `USERS:RATE`, such as `2000:500`.
pub fn parse_load(text: &str) -> Result<(usize, u64), String> {
    let (users, rate) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected USERS:RATE, such as 2000:500"))?;
    let users = users
        .parse()
        .map_err(|_| format!("{users:?}: not a user count"))?;
    let rate = rate.parse().map_err(|_| format!("{rate:?}: not a rate"))?;
    Ok((users, rate))
}

/// One row of the latency table: medians over runs.
pub struct LatencyRow {
    pub users: usize,
    pub rate: u64,
    pub server: &'static str,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub published: usize,
    pub lost: usize,
    pub failed_polls: usize,
    /// CPU in µs, medians over runs: the server's per delivered event (above its idle
    /// rate) and per idle poll, the broker's per delivered event.
    pub server_us_per_event: f64,
    pub server_us_per_idle_poll: f64,
    pub broker_us_per_event: f64,
}

impl LatencyRow {
    pub fn label(&self) -> String {
        format!("N={}, R={}/s: {}", self.users, self.rate, self.server)
    }

    pub fn of(users: usize, rate: u64, server: &'static str, reports: &[LoadReport]) -> LatencyRow {
        let figures: Vec<[f64; 4]> = reports.iter().map(LoadReport::latency_ms).collect();
        let column = |i: usize| median(&figures.iter().map(|f| f[i]).collect::<Vec<_>>());
        let cpu = |figure: &dyn Fn(&LoadReport) -> Option<f64>| {
            median(&reports.iter().filter_map(figure).collect::<Vec<_>>())
        };
        LatencyRow {
            users,
            rate,
            server,
            p50: column(0),
            p90: column(1),
            p99: column(2),
            max: column(3),
            published: reports.iter().map(|r| r.published).sum(),
            lost: reports.iter().map(|r| r.lost).sum(),
            failed_polls: reports
                .iter()
                .map(|r| r.poll_failures.values().sum::<usize>())
                .sum(),
            server_us_per_event: cpu(&|r| r.us_per_event().0),
            server_us_per_idle_poll: cpu(&|r| r.server_us_per_idle_poll()),
            broker_us_per_event: cpu(&|r| r.us_per_event().1),
        }
    }
}

pub const NCHAN: &str = "Nchan (in memory, the yardstick)";
pub const LONGPOLL: &str = "longpoll";
pub const CURSOR: &str = "longpoll, cursor mode";
pub const WITHOUT_METRICS: &str = "longpoll, metrics off";
pub const GUIDE: &str = "guide's algorithm (basic_get every 0.3 s)";
pub const FLOOR: &str = "the broker alone (AMQP consumers, no HTTP: the floor)";

/// `longpoll-bench compare`.
#[derive(clap::Args)]
pub struct Options {
    /// Runs of each load (0: only the breakdown).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds of publishing in each run.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// The loads as USERS:RATE, comma-separated (default: 200:100,2000:500).
    #[arg(long, value_delimiter = ',', value_parser = parse_load)]
    pub loads: Vec<(usize, u64)>,
    /// Only these contenders, comma-separated: nchan, floor, longpoll, metrics-off
    /// (longpoll without its metrics recorder), cursor, guide (default: all).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(CONTENDERS.map(|(short, _)| short)))]
    pub only: Vec<String>,
    /// Leave out the step-by-step breakdown that follows the table.
    #[arg(long)]
    pub no_breakdown: bool,
}

/// `longpoll-bench compare`: starts the servers (the local server and the guide's on the
/// broker at `AMQP_URL`, and Nchan), runs the loads and prints the table.
/// The step-by-step breakdown follows unless `--no-breakdown`.
pub async fn standalone(options: Options) {
    let loads: &[(usize, u64)] = if options.loads.is_empty() {
        &LOADS
    } else {
        &options.loads
    };
    let (only, runs, seconds) = (&options.only, options.runs, options.seconds);
    let breakdown = !options.no_breakdown;
    let servers = Servers::start().await;
    // `--runs 0`: the breakdown alone.
    let rows = if runs > 0 {
        run(&servers, loads, only, runs, seconds).await
    } else {
        Vec::new()
    };
    if !rows.is_empty() {
        println!("### Publish→response latency under load, beside Nchan\n");
        print(&rows);
    }
    if breakdown {
        let steps = breakdown::measure(
            &servers.amqp_url,
            servers.library.clone(),
            &servers.longpoll.url,
            servers.nchan.as_ref().map(|nchan| nchan.url.as_str()),
        )
        .await;
        println!("\n### Where the time goes\n");
        breakdown::print(&steps);
    }
    servers.library.close().await;
}

/// The short names of the contenders, for `--only`.
pub const CONTENDERS: [(&str, &str); 6] = [
    ("nchan", NCHAN),
    ("floor", FLOOR),
    ("longpoll", LONGPOLL),
    ("metrics-off", WITHOUT_METRICS),
    ("cursor", CURSOR),
    ("guide", GUIDE),
];

/// Runs every load `runs` times against every server (or those `only` names, by their
/// short names in [`CONTENDERS`]); one row per load and server.
pub async fn run(
    servers: &Servers,
    loads: &[(usize, u64)],
    only: &[String],
    runs: usize,
    seconds: u64,
) -> Vec<LatencyRow> {
    let mut rows = Vec::new();
    let broker_pid = stats::broker_pid(&servers.amqp_url);
    for &(users, rate) in loads {
        let mut variants: Vec<(&'static str, Contender, Option<u32>)> = vec![];
        if let Some(nchan) = &servers.nchan {
            variants.push((
                NCHAN,
                Contender::Nchan {
                    url: nchan.url.clone(),
                },
                Some(nchan.pid),
            ));
        }
        variants.push((
            FLOOR,
            Contender::Consumers {
                amqp_url: servers.amqp_url.clone(),
                broker: servers.library.clone(),
            },
            None,
        ));
        let amqp = ServerPublish::Library(servers.library.clone());
        let server = |url: &str, mode| Contender::Server {
            url: url.to_owned(),
            mode,
            via: amqp.clone(),
        };
        let longpoll = &servers.longpoll;
        variants.push((
            LONGPOLL,
            server(&longpoll.url, PollMode::Guide),
            Some(longpoll.pid),
        ));
        let quiet = &servers.longpoll_without_metrics;
        variants.push((
            WITHOUT_METRICS,
            server(&quiet.url, PollMode::Guide),
            Some(quiet.pid),
        ));
        variants.push((
            CURSOR,
            server(&longpoll.url, PollMode::Cursor),
            Some(longpoll.pid),
        ));
        let guide = &servers.guide;
        variants.push((GUIDE, server(&guide.url, PollMode::Guide), Some(guide.pid)));

        variants.retain(|(server, ..)| {
            only.is_empty()
                || CONTENDERS
                    .iter()
                    .any(|(short, name)| name == server && only.iter().any(|o| o == short))
        });
        let mut reports: Vec<Vec<LoadReport>> = variants.iter().map(|_| Vec::new()).collect();
        for run in 1..=runs.max(1) {
            for ((server, contender, pid), reports) in variants.iter().zip(&mut reports) {
                let report = load::run(LoadOptions {
                    contender: contender.clone(),
                    users,
                    ramp_per_second: RAMP_PER_SECOND,
                    publish_rate: rate,
                    warm_up: WARM_UP,
                    seconds,
                    drain: Duration::from_secs(30),
                    server_pid: *pid,
                    broker_pid,
                })
                .await;
                eprintln!(
                    "  N={users}, R={rate}/s: {server} #{run}: {}; {}",
                    report.summary(),
                    report.cpu_line()
                );
                reports.push(report);
                cool_down().await;
            }
        }
        for ((server, ..), reports) in variants.iter().zip(&reports) {
            rows.push(LatencyRow::of(users, rate, server, reports));
        }
    }
    rows
}

/// Lets the polls a finished run left behind end (the server holds them to the end of
/// their hold even though the client is gone) before the next measurement.
pub async fn cool_down() {
    tokio::time::sleep(probes::HOLD + Duration::from_secs(2)).await;
}

/// The latency table, each row with its ratio to Nchan's row of the same load.
pub fn print(rows: &[LatencyRow]) {
    println!(
        "| N users, R events/s: server | p50 ms | p90 ms | p99 ms | max ms | p50 / p99 × Nchan | events | lost | failed polls |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let yardstick = rows.iter().find(|other| {
            other.users == row.users && other.rate == row.rate && other.server == NCHAN
        });
        let ratio = yardstick.map_or("–".to_owned(), |nchan| {
            format!(
                "{} / {}",
                times(row.p50 / nchan.p50),
                times(row.p99 / nchan.p99)
            )
        });
        println!(
            "| {} | {} | {} | {} | {} | {ratio} | {} | {} | {} |",
            row.label(),
            ms(row.p50),
            ms(row.p90),
            ms(row.p99),
            ms(row.max),
            row.published,
            row.lost,
            row.failed_polls
        );
    }
    print_guide_ratios(rows);
    print_share_above_the_floor(rows);
    print_cpu(rows);
}

/// CPU per unit of work, beside each other: the server's per delivered event and per
/// idle poll, the broker's per delivered event (medians of the runs).
pub fn print_cpu(rows: &[LatencyRow]) {
    let us = |value: f64| {
        if value.is_nan() {
            "–".to_owned()
        } else {
            format!("{value:.0}")
        }
    };
    println!(
        "\nCPU per unit of work, from each process's user and system time (`/proc/<pid>/stat`, 10 ms ticks): an event's cost is what the publishing window spent above the idle rate of the same users polling with nothing published (the warm-up), over the events delivered; an idle poll's is the warm-up's CPU over its polls (all empty). Nchan's figure includes its master and worker; the broker is the Erlang VM.\n"
    );
    println!(
        "| N users, R events/s: server | server µs per event | server µs per idle poll | broker µs per event |"
    );
    println!("|---|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.label(),
            us(row.server_us_per_event),
            us(row.server_us_per_idle_poll),
            us(row.broker_us_per_event)
        );
    }
}

/// The server's own share, as the goal states it: longpoll's p50 at most
/// [`GOAL_P50_ABOVE_FLOOR_MS`] above the floor's, its p99 within [`GOAL_P99_OVER_FLOOR`]
/// of the floor's; and what recording metrics costs, beside the same server without.
fn print_share_above_the_floor(rows: &[LatencyRow]) {
    let find = |like: &LatencyRow, server| {
        rows.iter()
            .find(|row| (row.users, row.rate, row.server) == (like.users, like.rate, server))
    };
    for ours in rows.iter().filter(|row| row.server == LONGPOLL) {
        if let Some(floor) = find(ours, FLOOR).filter(|_| (ours.users, ours.rate) == GOAL_LOAD) {
            let above = ours.p50 - floor.p50;
            let over = ours.p99 / floor.p99;
            let met = above <= GOAL_P50_ABOVE_FLOOR_MS && over <= GOAL_P99_OVER_FLOOR;
            println!(
                "\nN={}, R={}/s: longpoll's p50 is {above:.2} ms above the floor's (goal: at most {GOAL_P50_ABOVE_FLOOR_MS} ms), its p99 {over:.2}× the floor's (goal: at most {GOAL_P99_OVER_FLOOR}×): {}.",
                ours.users,
                ours.rate,
                if met { "met" } else { "not met" }
            );
        }
        if let Some(quiet) = find(ours, WITHOUT_METRICS) {
            println!(
                "\nN={}, R={}/s: with metrics recorded, longpoll's p50 is {} ms against {} ms without ({:+.0} %), its p99 {} ms against {} ms.",
                ours.users,
                ours.rate,
                ms(ours.p50),
                ms(quiet.p50),
                (ours.p50 / quiet.p50 - 1.0) * 100.0,
                ms(ours.p99),
                ms(quiet.p99)
            );
        }
    }
}

/// The goal for the server's own share of the latency (see
/// [`print_share_above_the_floor`]).
pub const GOAL_P50_ABOVE_FLOOR_MS: f64 = 0.2;
/// The load the goal is stated at: 2,000 users, 500 events/s.
pub const GOAL_LOAD: (usize, u64) = (2000, 500);
pub const GOAL_P99_OVER_FLOOR: f64 = 1.1;

/// How many times as long the guide's algorithm takes as the local server, per load.
fn print_guide_ratios(rows: &[LatencyRow]) {
    for guide in rows.iter().filter(|row| row.server == GUIDE) {
        let ours = rows
            .iter()
            .find(|row| (row.users, row.rate, row.server) == (guide.users, guide.rate, LONGPOLL));
        if let Some(ours) = ours {
            println!(
                "\nN={}, R={}/s: the guide's algorithm takes {:.0}× as long as longpoll at p50, {:.0}× at p99.",
                guide.users,
                guide.rate,
                guide.p50 / ours.p50,
                guide.p99 / ours.p99
            );
        }
    }
}

/// A ratio such as `1.8×` (`1×` for the yardstick itself, `–` without a figure).
fn times(ratio: f64) -> String {
    if ratio.is_nan() {
        "–".to_owned()
    } else if ratio >= 10.0 {
        format!("{ratio:.0}×")
    } else {
        format!("{ratio:.1}×")
    }
}

#[cfg(test)]
mod tests {
    use super::parse_load;

    #[test]
    fn a_load_is_users_colon_rate() {
        assert_eq!(parse_load("2000:500"), Ok((2000, 500)));
        assert!(parse_load("2000").is_err());
        assert!(parse_load("many:500").is_err());
        assert!(parse_load("2000:-1").is_err());
    }
}
