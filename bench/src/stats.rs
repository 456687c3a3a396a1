//! Small helpers for figures: percentiles, medians of runs, a process's memory.

use std::time::Duration;

/// The `q` quantile (0..=1) of `sorted`, in milliseconds; NaN when empty.
pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// The median of `values` (the upper one of an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

pub use longpoll_testkit::process::{cpu_time, status_kib};

/// The process's resident memory now, in KiB.
pub fn rss_kib(pid: u32) -> Option<usize> {
    status_kib(pid, "VmRSS")
}

/// A number in [0, 1) from `seed` (SplitMix64): random users and jitter, repeatable.
pub fn fraction(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

/// Milliseconds with three decimals, or `–` when there is no figure.
pub fn ms(value: f64) -> String {
    if value.is_nan() {
        "–".to_owned()
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// User plus system CPU time of `pid` and of its children so far: nginx's master and
/// its worker, or a process alone.
pub fn cpu_of_tree(pid: u32) -> Duration {
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| parent_of(*child) == Some(pid));
    cpu_time(pid) + children.map(cpu_time).sum::<Duration>()
}

/// The parent of `pid` (`/proc/<pid>/stat`, the field after the state).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The broker node's OS process (the Erlang VM), asked of the node with `rabbitmqctl`:
/// the private node on `amqp_url`'s port (`longpoll-<port>@localhost`), else the
/// machine's default node. `None` when neither answers.
pub fn broker_pid(amqp_url: &str) -> Option<u32> {
    let port = amqp_url
        .rsplit_once('@')
        .map_or(amqp_url, |(_, host)| host)
        .split(['/', '?'])
        .next()?
        .rsplit_once(':')
        .map(|(_, port)| port.to_owned());
    let nodes = port
        .map(|port| vec![vec!["-n".to_owned(), format!("longpoll-{port}@localhost")]])
        .unwrap_or_default()
        .into_iter()
        .chain([Vec::new()]);
    for node in nodes {
        let output = std::process::Command::new("rabbitmqctl")
            .args(&node)
            .args(["eval", "os:getpid()."])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        if let Ok(pid) = text.trim().trim_matches('"').parse() {
            return Some(pid);
        }
    }
    None
}
