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

pub use longpoll_testkit::process::status_kib;

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
