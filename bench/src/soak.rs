//! The soak: many browsers polling for a long while (cursor mode with de-duplication,
//! as the JavaScript client polls), events published steadily through the publish
//! endpoint, and every so often every connection to the broker killed
//! (`rabbitmqctl close_all_connections`, on a private node). Passing means no event
//! lost, none duplicated after de-duplication by id, and no 5xx other than the 503 that
//! tells clients to retry while the connection is re-established.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use longpoll::config::DEV_PUBLISH_KEY;

use crate::{
    load::{self, Contender, LoadOptions, LoadReport, PollMode, ServerPublish},
    stats,
};

/// `longpoll-bench soak`: pollers in cursor mode while the broker's connections are
/// killed periodically.
#[derive(clap::Args)]
pub struct Options {
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    pub url: String,
    #[arg(long, default_value_t = 1000)]
    pub pollers: usize,
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    #[arg(long, default_value_t = 100)]
    pub publish_rate: u64,
    /// Seconds between connection kills.
    #[arg(long, default_value_t = 30)]
    pub kill_every: u64,
    /// The broker node (`rabbitmqctl -n`); a private one, never the shared broker.
    #[arg(long)]
    pub node: String,
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Poll as the guide does instead of in cursor mode.
    #[arg(long)]
    pub guide_mode: bool,
}

/// The soak of `options`, printed: whether it passed (nothing lost or duplicated, no
/// 5xx other than 503).
pub async fn judged(options: Options) -> bool {
    let report = run(SoakOptions {
        url: options.url,
        pollers: options.pollers,
        seconds: options.seconds,
        publish_rate: options.publish_rate,
        kill_every: Duration::from_secs(options.kill_every),
        node: options.node,
        server_pid: options.server_pid,
        cursor: !options.guide_mode,
    })
    .await;
    report.print();
    report.passed()
}

pub struct SoakOptions {
    pub url: String,
    pub pollers: usize,
    pub seconds: u64,
    pub publish_rate: u64,
    pub kill_every: Duration,
    /// The broker node whose connections are killed (`rabbitmqctl -n NODE`).
    pub node: String,
    /// The server's process, for its RSS.
    pub server_pid: Option<u32>,
    /// Cursor mode (`?device=&ack=`, as the browser client polls) or the guide's poll.
    pub cursor: bool,
}

pub struct SoakReport {
    pub load: LoadReport,
    pub kills: usize,
}

pub async fn run(options: SoakOptions) -> SoakReport {
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (kills, node, every) = (kills.clone(), options.node.clone(), options.kill_every);
        tokio::spawn(async move {
            // The first kill comes after the ramp, then one every `every`.
            loop {
                tokio::time::sleep(every).await;
                let closed = tokio::task::spawn_blocking({
                    let node = node.clone();
                    move || {
                        Command::new("rabbitmqctl")
                            .args([
                                "-n",
                                &node,
                                "-q",
                                "close_all_connections",
                                "soak: periodic kill",
                            ])
                            .status()
                            .is_ok_and(|status| status.success())
                    }
                })
                .await
                .unwrap_or(false);
                assert!(closed, "rabbitmqctl -n {node} close_all_connections failed");
                kills.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let load = load::run(LoadOptions {
        contender: Contender::Server {
            url: options.url,
            mode: if options.cursor {
                PollMode::Cursor
            } else {
                PollMode::Guide
            },
            via: ServerPublish::Endpoint {
                api_key: DEV_PUBLISH_KEY.to_owned(),
            },
        },
        users: options.pollers,
        ramp_per_second: 500,
        publish_rate: options.publish_rate,
        warm_up: Duration::ZERO,
        seconds: options.seconds,
        drain: Duration::from_secs(60),
        server_pid: options.server_pid,
        broker_pid: None,
    })
    .await;
    killer.abort();
    SoakReport {
        load,
        kills: kills.load(Ordering::Relaxed),
    }
}

impl SoakReport {
    /// 5xx answers other than 503 (which is the contract's "retry later").
    pub fn unexpected_server_errors(&self) -> usize {
        self.load
            .poll_failures
            .iter()
            .chain(&self.load.publish_failures)
            .filter(|(status, _)| **status >= 500 && **status != 503)
            .map(|(_, count)| count)
            .sum()
    }

    pub fn passed(&self) -> bool {
        self.load.lost == 0 && self.load.duplicated == 0 && self.unexpected_server_errors() == 0
    }

    /// RSS at the start and the end of the window (medians of its first and last tenth),
    /// and the peak, in MiB.
    pub fn rss_mib(&self) -> Option<(f64, f64, f64)> {
        let samples: Vec<f64> = self
            .load
            .rss_kib
            .iter()
            .map(|&kib| kib as f64 / 1024.0)
            .collect();
        if samples.len() < 2 {
            return None;
        }
        let tenth = (samples.len() / 10).max(1);
        let peak = samples.iter().copied().fold(0.0, f64::max);
        Some((
            stats::median(&samples[..tenth]),
            stats::median(&samples[samples.len() - tenth..]),
            peak,
        ))
    }

    pub fn print(&self) {
        let load = &self.load;
        println!(
            "window {:.0} s, connection kills {}, polls answered {}",
            load.window.as_secs_f64(),
            self.kills,
            load.answered
        );
        println!(
            "events published {}, lost {}, duplicated after de-duplication by id {}",
            load.published, load.lost, load.duplicated
        );
        println!(
            "poll failures by status (0 = no response): {:?}",
            load.poll_failures
        );
        println!("publish failures by status: {:?}", load.publish_failures);
        println!(
            "5xx other than 503: {}; {}",
            self.unexpected_server_errors(),
            load.latency_line()
        );
        if let Some((start, end, peak)) = self.rss_mib() {
            println!(
                "server RSS: {start:.1} MiB at the start, {end:.1} MiB at the end ({:+.1} MiB), peak {peak:.1} MiB",
                end - start
            );
        }
        println!(
            "{}",
            if self.passed() {
                "soak: PASSED"
            } else {
                "soak: FAILED"
            }
        );
    }
}
