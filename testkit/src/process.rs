//! What Linux reports of a process: its memory and CPU time, for tests and benchmarks
//! that measure a child process.

use std::time::Duration;

/// A field of `/proc/<pid>/status` in KiB: `VmRSS` (now) or `VmHWM` (peak).
pub fn status_kib(pid: u32, field: &str) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| {
        line.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User plus system CPU time of the process so far (`/proc/<pid>/stat`, in clock ticks
/// of 10 ms).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime, fields 14 and 15 of stat: 11 and 12 counting from the state.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
