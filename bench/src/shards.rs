//! `longpoll-bench shards`: users spread over three brokers (three private single-node
//! RabbitMQs as shards, `AMQP_URLS`) beside the same users on one node, in one run, both
//! through a release local server over HTTP:
//!
//! 1. **Spread**: a herd of new users on each; the user queues each broker holds, each
//!    shard's departure from an even share, and the broker memory per online user
//!    (`erlang:memory(total)` before and after, the queues of the herd's users alive).
//! 2. **Latency**: the compare load (users in cursor mode, events through the publish
//!    endpoint) at the same users and rate on each: p50 and p99.
//! 3. **New users**: a herd on the three shards: until every user is held, and until
//!    every user has an answer.
//! 4. **Most users**: a larger herd on the three shards, every user held and answered.
//!
//! Everything shares one machine (2 cores here): the three brokers, the server and the
//! load generator compete for it, so the figures are this machine's, not a ceiling of
//! the design.

use std::{path::PathBuf, time::Duration};

use longpoll::{config::DEV_PUBLISH_KEY, shard::SlotTable};
use longpoll_testkit::private_node::{PrivateNode, ctl};
use plotters::prelude::*;

use crate::{
    herd::{HerdReport, STEADY, herd},
    load::{self, Contender, LoadOptions, LoadReport, PollMode, ServerPublish},
    server::{Server, sibling},
    stats,
};

#[derive(clap::Args)]
pub struct Options {
    /// Users of the spread and memory herd.
    #[arg(long, default_value_t = 3_000)]
    spread_users: usize,
    /// Users and events per second of the latency load.
    #[arg(long, default_value_t = 2_000)]
    users: usize,
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of publishing in the latency load.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// New users of the herd whose hold time is reported.
    #[arg(long, default_value_t = 10_000)]
    herd: usize,
    /// Users of the largest herd on the three shards.
    #[arg(long, default_value_t = 20_000)]
    most: usize,
    /// Where the picture goes.
    #[arg(long, default_value = "bench")]
    out: PathBuf,
}

/// One deployment under test: its server and the nodes behind it.
struct Site<'a> {
    name: &'static str,
    nodes: Vec<&'a PrivateNode>,
    server: Server,
}

impl<'a> Site<'a> {
    /// A server on `nodes`, one broker each.
    async fn start(name: &'static str, nodes: Vec<&'a PrivateNode>) -> Self {
        let urls: Vec<String> = nodes.iter().map(|node| node.url()).collect();
        Self::on(name, nodes, urls).await
    }

    /// A server on the brokers at `urls`, which live on `nodes`.
    async fn on(name: &'static str, nodes: Vec<&'a PrivateNode>, urls: Vec<String>) -> Self {
        let (var, value) = match urls.len() {
            1 => ("AMQP_URL", urls[0].clone()),
            _ => ("AMQP_URLS", urls.join(",")),
        };
        let env = [(var, value.as_str()), ("METRICS_ADDR", "off")];
        // Room for the largest herd's connections (the default cap is 16,384).
        let args = ["--max-connections", "60000"];
        let server = Server::start(sibling("longpoll-local"), &args, &env).await;
        Self {
            name,
            nodes,
            server,
        }
    }

    fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.name()).collect()
    }

    /// Each node's queues: the users' event queues, and every kind in all.
    fn queue_counts(&self) -> (Vec<usize>, Vec<usize>) {
        self.nodes
            .iter()
            .map(|node| {
                let names = node.ctl(&["list_queues", "name", "--no-table-headers"]);
                let users = names
                    .lines()
                    .filter(|name| name.starts_with("event_queue:user:"))
                    .count();
                (users, names.lines().count())
            })
            .unzip()
    }

    /// The nodes' memory in all, in bytes.
    fn memory(&self) -> u64 {
        self.nodes
            .iter()
            .map(|node| {
                ctl(&node.name(), &["eval", "erlang:memory(total)."])
                    .trim()
                    .parse::<u64>()
                    .expect("a byte count")
            })
            .sum()
    }

    async fn herd(&self, users: usize) -> HerdReport {
        herd(&self.server.url, &self.node_names(), users, users).await
    }

    /// A herd of `users` too many for one process here: each process may open 20,000
    /// descriptors (the machine's hard limit), and a held poll takes one in the server and
    /// one in the load generator. So a second server on the same brokers takes half the
    /// users, and each half is a herd of its own process (`longpoll-bench herd`), both
    /// waiting until all `users` are held.
    async fn split_herd(&self, users: usize) -> HerdReport {
        let urls: Vec<String> = self.nodes.iter().map(|node| node.url()).collect();
        let env = [
            ("AMQP_URLS", urls.join(",")),
            ("METRICS_ADDR", "off".to_owned()),
        ];
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let args = ["--max-connections", "60000"];
        let second = Server::start(sibling("longpoll-local"), &args, &env).await;
        let nodes = self.node_names().join(",");
        let halves = [&self.server.url, &second.url].map(|url| {
            let (url, nodes) = (url.clone(), nodes.clone());
            let users = users / 2;
            tokio::task::spawn_blocking(move || {
                let output = std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "herd",
                        "--url",
                        &url,
                        "--node",
                        &nodes,
                        "--lookups",
                        "0",
                        "--json",
                    ])
                    .args([
                        "--users",
                        &users.to_string(),
                        "--expect-held",
                        &(users * 2).to_string(),
                    ])
                    .output()
                    .expect("longpoll-bench herd runs");
                let stdout = String::from_utf8_lossy(&output.stdout);
                let line = stdout
                    .lines()
                    .find(|line| line.starts_with('{'))
                    .unwrap_or_else(|| {
                        panic!(
                            "a herd's report: {stdout}{}",
                            String::from_utf8_lossy(&output.stderr)
                        )
                    });
                HerdReport::from_json(&serde_json::from_str(line).unwrap()).expect("a herd report")
            })
        });
        let mut reports = Vec::new();
        for half in halves {
            reports.push(half.await.unwrap());
        }
        drop(second);
        HerdReport::together(reports)
    }

    async fn load(&self, options: &Options) -> LoadReport {
        load::run(LoadOptions {
            contender: Contender::Server {
                url: self.server.url.clone(),
                mode: PollMode::Cursor,
                via: ServerPublish::Endpoint {
                    api_key: DEV_PUBLISH_KEY.to_owned(),
                },
            },
            users: options.users,
            ramp_per_second: 500,
            publish_rate: options.rate,
            warm_up: Duration::from_secs(5),
            seconds: options.seconds,
            drain: Duration::from_secs(20),
            server_pid: Some(self.server.pid),
            broker_pid: None,
        })
        .await
    }
}

/// What the spread herd left on a site.
struct Spread {
    user_queues: Vec<usize>,
    queues: Vec<usize>,
    memory_per_user_kib: f64,
    herd: HerdReport,
}

async fn spread(site: &Site<'_>, users: usize) -> Spread {
    let before = site.memory();
    let herd = site.herd(users).await;
    let after = site.memory();
    let (user_queues, queues) = site.queue_counts();
    Spread {
        user_queues,
        queues,
        memory_per_user_kib: after.saturating_sub(before) as f64 / 1024.0 / users as f64,
        herd,
    }
}

/// The worst departure from an even share, in per cent.
fn worst(counts: &[usize]) -> f64 {
    let even = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|count| (*count as f64 - even).abs() / even * 100.0)
        .fold(0.0, f64::max)
}

fn held(report: &HerdReport) -> String {
    let held = report
        .all_held_after
        .map_or("not all held".to_owned(), |after| {
            format!("{:.1} s", after.as_secs_f64())
        });
    let answered = match report.all_answered_after {
        Duration::MAX => "not all answered".to_owned(),
        after => format!("{:.1} s", after.as_secs_f64()),
    };
    format!(
        "{held} | {answered} | {} | {} | {} of {}",
        report.failures(),
        report.retried,
        report.steady_not_200,
        report.steady_polls
    )
}

pub async fn run(options: &Options) {
    eprintln!("starting four private nodes");
    let nodes = tokio::task::spawn_blocking(|| PrivateNode::start_several(4))
        .await
        .unwrap();
    let single = Site::start("one node", vec![&nodes[3]]).await;
    let shards = Site::start("three shards", nodes[..3].iter().collect()).await;
    // The control: three shards that are three vhosts of the one node, so that what
    // sharding itself costs shows apart from three brokers sharing this machine's cores.
    let vhosts: Vec<String> = (0..3)
        .map(|shard| {
            let vhost = format!("shard-{shard}");
            nodes[3].ctl(&["add_vhost", &vhost]);
            nodes[3].ctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
            nodes[3].url().replace("/%2f", &format!("/{vhost}"))
        })
        .collect();
    let same_node = Site::on("three shards on one node (vhosts)", vec![&nodes[3]], vhosts).await;
    let sites = [&single, &shards];

    eprintln!("spread: {} new users on each", options.spread_users);
    let mut spreads = Vec::new();
    for site in sites {
        spreads.push(spread(site, options.spread_users).await);
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let table = SlotTable::even(3).expect("three brokers");
    println!(
        "### Spread: {} new users on one node and on three shards\n",
        options.spread_users
    );
    println!(
        "| deployment | user queues per broker | worst departure from even | queues per broker | broker memory per online user |"
    );
    println!("|---|---|---:|---|---:|");
    for (site, spread) in sites.iter().zip(&spreads) {
        println!(
            "| {} | {:?} | {:.1} % | {:?} | {:.0} KiB |",
            site.name,
            spread.user_queues,
            worst(&spread.user_queues),
            spread.queues,
            spread.memory_per_user_kib
        );
    }
    let herd = |report: &HerdReport| {
        let after = |time: Option<Duration>| {
            time.filter(|time| *time != Duration::MAX)
                .map_or("never".to_owned(), |time| {
                    format!("{:.1} s", time.as_secs_f64())
                })
        };
        format!(
            "all held after {}, all answered 200 after {}, {} first polls not 200",
            after(report.all_held_after),
            after(Some(report.all_answered_after)),
            report.failures()
        )
    };
    println!(
        "\nThe slot table: `{}`. The herds: one node, {}; three shards, {}.",
        table.to_setting(),
        herd(&spreads[0].herd),
        herd(&spreads[1].herd)
    );

    eprintln!(
        "latency: {} users, {} events/s",
        options.users, options.rate
    );
    let mut loads = Vec::new();
    let latency_sites = [&single, &same_node, &shards];
    for site in latency_sites {
        let report = site.load(options).await;
        eprintln!("  {}: {}", site.name, report.summary());
        loads.push(report);
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    println!(
        "\n### Latency: {} users in cursor mode, {} events/s through the publish endpoint, {} s\n",
        options.users, options.rate, options.seconds
    );
    println!("| deployment | p50 | p99 | lost | failed polls | failed publishes |");
    println!("|---|---:|---:|---:|---|---|");
    let mut medians = Vec::new();
    for (site, report) in latency_sites.iter().zip(&loads) {
        let mut latencies = report.latencies.clone();
        latencies.sort();
        let (p50, p99) = (
            stats::percentile_ms(&latencies, 0.5),
            stats::percentile_ms(&latencies, 0.99),
        );
        medians.push(p50);
        println!(
            "| {} | {} ms | {} ms | {} | {:?} | {:?} |",
            site.name,
            stats::ms(p50),
            stats::ms(p99),
            report.lost,
            report.poll_failures,
            report.publish_failures
        );
    }
    println!(
        "\nSharding itself (three shards on the one node's vhosts) adds {} ms at p50 (goal: at most 0.1 ms); three brokers sharing this machine's cores add {} ms.",
        stats::ms(medians[1] - medians[0]),
        stats::ms(medians[2] - medians[0])
    );

    eprintln!(
        "herds on the three shards: {} and {}",
        options.herd, options.most
    );
    let new_users = shards.herd(options.herd).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let most = shards.split_herd(options.most).await;
    println!("\n### New users on the three shards\n");
    println!(
        "| new users at once | all held after | all answered 200 after | first polls not 200 | answers not 200 in all | once all held: polls not 200 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!("| {} | {} |", options.herd, held(&new_users));
    println!("| {} | {} |", options.most, held(&most));
    let holds = most.all_held_after.is_some() && most.steady_not_200 == 0;
    println!(
        "\nOnce all were held, every user went on polling for {:.1} s (three holds): {}. The most users held on three shards with every poll answered: {} (goal: at least 20,000): {}.",
        STEADY.as_secs_f64(),
        if holds {
            format!(
                "all {} polls of the {} users answered 200",
                most.steady_polls, options.most
            )
        } else {
            format!(
                "{} of {} polls did not answer 200",
                most.steady_not_200, most.steady_polls
            )
        },
        if holds {
            options.most.to_string()
        } else {
            "fewer".to_owned()
        },
        if holds && options.most >= 20_000 {
            "met"
        } else {
            "not met"
        },
    );

    let picture = options.out.join("shards.svg");
    match draw(&spreads, &picture) {
        Ok(()) => println!("\n![user queues per broker](shards.svg)"),
        Err(error) => eprintln!("no picture: {error}"),
    }
}

/// User queues per broker, one node beside three shards, as bars.
fn draw(spreads: &[Spread], path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (640, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let bars: Vec<(String, usize)> =
        std::iter::once(("one node".to_owned(), spreads[0].user_queues[0]))
            .chain(
                spreads[1]
                    .user_queues
                    .iter()
                    .enumerate()
                    .map(|(index, count)| (format!("shard {index}"), *count)),
            )
            .collect();
    let top = bars.iter().map(|(_, count)| *count).max().unwrap_or(1) as f64 * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("User queues per broker, same users", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..bars.len() as f64, 0.0..top)?;
    let names: Vec<String> = bars.iter().map(|(name, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() * 2)
        .x_label_formatter(&|x| {
            let index = x.floor() as usize;
            match (x.fract() - 0.5).abs() < 0.01 {
                true => names.get(index).cloned().unwrap_or_default(),
                false => String::new(),
            }
        })
        .y_desc("user queues")
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(index, (_, count))| {
        let colour = if index == 0 {
            RGBColor(120, 120, 120)
        } else {
            BLUE
        };
        Rectangle::new(
            [
                (index as f64 + 0.15, 0.0),
                (index as f64 + 0.85, *count as f64),
            ],
            colour.filled(),
        )
    }))?;
    root.present()?;
    Ok(())
}
