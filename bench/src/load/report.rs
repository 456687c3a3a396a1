//! What a load run saw, and its one-line summary.

use std::{collections::BTreeMap, time::Duration};

use crate::stats;

/// What a load run saw.
#[derive(Default)]
pub struct LoadReport {
    /// Polls in flight, sampled once a second while publishing.
    pub held: Vec<usize>,
    /// Polls answered with 200 while publishing.
    pub answered: usize,
    /// Failed polls and publish attempts by HTTP status (0: no response at all; 200: a
    /// poll's body that could not be read).
    pub poll_failures: BTreeMap<u16, usize>,
    pub publish_failures: BTreeMap<u16, usize>,
    /// Events whose publish was confirmed and routed to the user's queue.
    pub published: usize,
    /// Publishes the broker confirmed but routed to no queue (not counted above).
    pub unrouted: usize,
    /// Of those, how many a poll returned all the same (a misreported `routed`).
    pub unrouted_but_delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Publish (first attempt) to the response that returned the event, per event.
    pub latencies: Vec<Duration>,
    /// The server's RSS in KiB, once a second while publishing.
    pub rss_kib: Vec<usize>,
    /// How long the publishing window lasted.
    pub window: Duration,
    /// CPU while the users polled with nothing published (the warm-up), and while
    /// publishing.
    pub idle_cpu: Option<Cpu>,
    pub window_cpu: Option<Cpu>,
}

/// CPU time the server and the broker spent over a stretch of a run, and the polls
/// answered meanwhile.
#[derive(Clone, Copy, Default, Debug)]
pub struct Cpu {
    pub elapsed: Duration,
    pub server: Option<Duration>,
    pub broker: Option<Duration>,
    pub polls: usize,
}

/// A process's CPU over a stretch, from samples at its start and end.
#[derive(Clone, Copy)]
pub struct CpuSample {
    pub at: tokio::time::Instant,
    pub server: Option<Duration>,
    pub broker: Option<Duration>,
    pub answered: usize,
}

impl CpuSample {
    pub fn take(server_pid: Option<u32>, broker_pid: Option<u32>, answered: usize) -> Self {
        Self {
            at: tokio::time::Instant::now(),
            server: server_pid.map(stats::cpu_of_tree),
            broker: broker_pid.map(stats::cpu_time),
            answered,
        }
    }

    /// What was spent from `self` to `later`.
    pub fn until(&self, later: &CpuSample) -> Cpu {
        let spent = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
        Cpu {
            elapsed: later.at - self.at,
            server: spent(self.server, later.server),
            broker: spent(self.broker, later.broker),
            polls: later.answered.saturating_sub(self.answered),
        }
    }
}

impl LoadReport {
    /// One line: latency, events, failures.
    pub fn summary(&self) -> String {
        format!(
            "{}; events {} (unrouted {}, of which delivered {}), lost {}, duplicated {}; failed polls {:?}, failed publishes {:?}",
            self.latency_line(),
            self.published,
            self.unrouted,
            self.unrouted_but_delivered,
            self.lost,
            self.duplicated,
            self.poll_failures,
            self.publish_failures
        )
    }

    /// "publish→response p50 … ms, p90 …, p99 …, max …".
    pub fn latency_line(&self) -> String {
        let [p50, p90, p99, max] = self.latency_ms().map(stats::ms);
        format!("publish→response p50 {p50} ms, p90 {p90} ms, p99 {p99} ms, max {max} ms")
    }

    /// Server CPU per poll answered empty, in µs: the warm-up's CPU over its polls.
    pub fn server_us_per_idle_poll(&self) -> Option<f64> {
        let idle = self.idle_cpu?;
        Some(idle.server?.as_secs_f64() * 1e6 / idle.polls.max(1) as f64)
    }

    /// CPU per delivered event in µs, for the server and the broker: what the window
    /// spent above the idle rate (the same users polling with nothing published), over
    /// the events delivered.
    pub fn us_per_event(&self) -> (Option<f64>, Option<f64>) {
        let (Some(idle), Some(window)) = (self.idle_cpu, self.window_cpu) else {
            return (None, None);
        };
        let events = self.published.saturating_sub(self.lost).max(1) as f64;
        let net = |spent: Option<Duration>, busy: Option<Duration>| {
            let rate = spent?.as_secs_f64() / idle.elapsed.as_secs_f64().max(1e-3);
            let above = busy?.as_secs_f64() - rate * window.elapsed.as_secs_f64();
            Some(above.max(0.0) * 1e6 / events)
        };
        (
            net(idle.server, window.server),
            net(idle.broker, window.broker),
        )
    }

    /// "server 41 µs per event, 12 µs per idle poll; broker 30 µs per event".
    pub fn cpu_line(&self) -> String {
        let us = |value: Option<f64>| value.map_or("–".to_owned(), |us| format!("{us:.0}"));
        let (server, broker) = self.us_per_event();
        format!(
            "CPU: server {} µs per event, {} µs per idle poll; broker {} µs per event",
            us(server),
            us(self.server_us_per_idle_poll()),
            us(broker)
        )
    }

    /// (p50, p90, p99, max) publish-to-response latency in milliseconds.
    pub fn latency_ms(&self) -> [f64; 4] {
        let mut latencies = self.latencies.clone();
        latencies.sort();
        [0.5, 0.9, 0.99, 1.0].map(|q| stats::percentile_ms(&latencies, q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(seconds: u64, server_ms: u64, broker_ms: u64, polls: usize) -> Option<Cpu> {
        Some(Cpu {
            elapsed: Duration::from_secs(seconds),
            server: Some(Duration::from_millis(server_ms)),
            broker: Some(Duration::from_millis(broker_ms)),
            polls,
        })
    }

    /// An event costs what the window spent above the idle rate, over the events
    /// delivered; an idle poll, the idle stretch's CPU over its polls.
    #[test]
    fn cpu_per_event_is_above_the_idle_rate() {
        let report = LoadReport {
            published: 1_010,
            lost: 10,
            // Idle: 0.1 of a core for the server, 0.2 for the broker, 2,000 polls.
            idle_cpu: cpu(10, 1_000, 2_000, 2_000),
            // Busy for 10 s: 2 s of server CPU, 4 s of broker CPU.
            window_cpu: cpu(10, 2_000, 4_000, 0),
            ..LoadReport::default()
        };
        let (server, broker) = report.us_per_event();
        assert_eq!(server.map(f64::round), Some(1_000.0));
        assert_eq!(broker.map(f64::round), Some(2_000.0));
        assert_eq!(
            report.server_us_per_idle_poll().map(f64::round),
            Some(500.0)
        );
        let unmeasured = LoadReport::default();
        assert_eq!(unmeasured.us_per_event(), (None, None));
    }
}
