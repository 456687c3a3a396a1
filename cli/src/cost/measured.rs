//! The CPU a poll and an event cost, as `scripts/bench` measured them: what the managed
//! instances' and the containers' compute lines are sized from. Each figure names the
//! run it came from, and a test holds it to that run's table in `bench/RESULTS.md`, so a
//! new run that changes the figures fails the test until they are copied here.

/// What serving costs one process in CPU time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuCost {
    /// µs per poll that ends empty at the end of its hold.
    pub idle_poll_us: f64,
    /// µs per delivered event, beyond the idle polls.
    pub event_us: f64,
}

impl CpuCost {
    /// The vCPUs `users` online users keep busy, each polling every `hold_seconds` and
    /// receiving `events_per_user_hour` events an hour.
    pub fn vcpus(&self, users: f64, hold_seconds: f64, events_per_user_hour: f64) -> f64 {
        let us_per_user_second =
            self.idle_poll_us / hold_seconds + self.event_us * events_per_user_hour / 3600.0;
        users * us_per_user_second / 1e6
    }
}

/// A [`CpuCost`] and the bench run it was read from.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub cpu: CpuCost,
    pub run: &'static str,
}

/// The local server (containers): `scripts/bench cpu`, longpoll at 2,000 users and 500
/// events/s (below the knee, where a fixed cost weighs most on each event).
pub const LOCAL_SERVER: Measured = Measured {
    cpu: CpuCost {
        idle_poll_us: 54.0,
        event_us: 280.0,
    },
    run: "scripts/bench cpu, 2026-12-07",
};

/// `poll-events` on managed instances: `scripts/bench managed`, one process holding
/// 1,000 polls (a consumer set up and cancelled for every poll).
pub const FUNCTION: Measured = Measured {
    cpu: CpuCost {
        idle_poll_us: 130.0,
        event_us: 180.0,
    },
    run: "scripts/bench managed, 2026-12-07",
};

#[cfg(test)]
mod tests {
    use super::{CpuCost, FUNCTION, LOCAL_SERVER, Measured};

    const RESULTS: &str = include_str!("../../../bench/RESULTS.md");

    /// The text between `<!-- bench:NAME -->` and its end marker.
    fn section(name: &str) -> &'static str {
        let start = RESULTS
            .find(&format!("<!-- bench:{name} -->"))
            .unwrap_or_else(|| panic!("bench/RESULTS.md has no {name} section"));
        let rest = &RESULTS[start..];
        &rest[..rest.find(&format!("<!-- /bench:{name} -->")).unwrap()]
    }

    /// The cells of the table row in `section` whose first cell is `label` and which has
    /// `cells` cells (a section's tables may share their row labels).
    fn row(section: &str, label: &str, cells: usize) -> Vec<String> {
        section
            .lines()
            .map(|line| {
                line.trim_matches('|')
                    .split('|')
                    .map(|cell| cell.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .find(|row| row.len() == cells && row[0] == label)
            .unwrap_or_else(|| panic!("no row {label:?} of {cells} cells"))
    }

    fn number(cell: &str) -> f64 {
        cell.parse()
            .unwrap_or_else(|_| panic!("{cell:?} is not a number"))
    }

    /// The figures name their run's date, the date its section was measured on.
    fn check_date(measured: &Measured, section: &str) {
        let date = section
            .split("Measured ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("a section says when it was measured");
        assert!(
            measured.run.ends_with(&format!(", {date}")),
            "{} is not the run of {date}",
            measured.run
        );
    }

    #[test]
    fn the_local_servers_figures_are_those_of_the_cpu_bench() {
        let cpu = section("cpu");
        let cells = row(cpu, "N=2000, R=500/s: longpoll", 4);
        let measured = CpuCost {
            event_us: number(&cells[1]),
            idle_poll_us: number(&cells[2]),
        };
        assert_eq!(
            LOCAL_SERVER.cpu, measured,
            "copy them from bench/RESULTS.md"
        );
        check_date(&LOCAL_SERVER, cpu);
    }

    #[test]
    fn the_functions_figures_are_those_of_the_managed_bench() {
        let managed = section("managed");
        let cells = row(managed, "1000", 10);
        let measured = CpuCost {
            idle_poll_us: number(&cells[8]),
            event_us: number(&cells[9]),
        };
        assert_eq!(FUNCTION.cpu, measured, "copy them from bench/RESULTS.md");
        check_date(&FUNCTION, managed);
    }

    #[test]
    fn vcpus_are_the_cpu_of_every_users_polls_and_events() {
        let cpu = CpuCost {
            idle_poll_us: 55.0,
            event_us: 360.0,
        };
        // 1,000 users: 1,000 / 5.5 idle polls a second at 55 µs (10 ms), and 1,000 × 10
        // / 3,600 events a second at 360 µs (1 ms).
        let vcpus = cpu.vcpus(1000.0, 5.5, 10.0);
        assert!((vcpus - 0.011).abs() < 1e-12, "{vcpus}");
    }
}
