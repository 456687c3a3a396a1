//! Latency against load, as pictures: p50 and p99 of Nchan (the yardstick), the broker
//! alone (the floor) and longpoll, against the event rate at a fixed number of users and
//! against the number of users at a fixed rate, drawn with plotters as SVG files that
//! bench/RESULTS.md shows; and each contender's capacity, the highest rate measured at
//! which its p99 stays under [`CAPACITY_P99_MS`] (every lower rate too).
//!
//! Each point is one run of [`compare::run`]'s load, the contenders interleaved at each
//! point as there, so a slow minute of the machine falls on all three alike.

use std::{error::Error, path::Path};

use plotters::prelude::*;

use crate::{
    compare::{self, FLOOR, LONGPOLL, LatencyRow, NCHAN},
    server::Servers,
    stats::ms,
};

/// The p99 under which a contender is said to keep up with a load.
pub const CAPACITY_P99_MS: f64 = 50.0;

/// What `longpoll-bench curve` measures.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Users for the curve against the event rate.
    #[arg(long, default_value_t = 2000)]
    pub users: usize,
    /// Event rates (a second) of the curve against the rate.
    #[arg(long, value_delimiter = ',', default_value = "100,250,500,1000,1500")]
    pub rates: Vec<u64>,
    /// User counts of the curve against users.
    #[arg(long, value_delimiter = ',', default_value = "200,500,1000,2000")]
    pub user_counts: Vec<usize>,
    /// Event rate of the curve against users.
    #[arg(long, default_value_t = 200)]
    pub rate_for_users: u64,
    /// Seconds of publishing at each point.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Where the SVG files go.
    #[arg(long, default_value = "bench")]
    pub out: std::path::PathBuf,
}

/// The contenders drawn, with their colours.
const DRAWN: [(&str, &str, RGBColor); 3] = [
    ("nchan", NCHAN, RGBColor(31, 119, 180)),
    ("floor", FLOOR, RGBColor(44, 160, 44)),
    ("longpoll", LONGPOLL, RGBColor(214, 39, 40)),
];

/// Runs both curves, prints their tables and the capacities, and draws the pictures.
pub async fn run(options: Options) -> Result<(), Box<dyn Error>> {
    let servers = Servers::start().await;
    let only: Vec<String> = DRAWN.iter().map(|(short, ..)| short.to_string()).collect();
    let by_rate_loads: Vec<_> = options
        .rates
        .iter()
        .map(|&rate| (options.users, rate))
        .collect();
    let by_rate = compare::run(&servers, &by_rate_loads, &only, 1, options.seconds).await;
    let by_users_loads: Vec<_> = options
        .user_counts
        .iter()
        .map(|&users| (users, options.rate_for_users))
        .collect();
    let by_users = compare::run(&servers, &by_users_loads, &only, 1, options.seconds).await;
    servers.library.close().await;

    let users = options.users;
    let rate_file = options.out.join("latency-by-rate.svg");
    draw(
        &by_rate,
        |row| row.rate as f64,
        &format!("events a second, {users} users"),
        Some(CAPACITY_P99_MS),
        &rate_file,
    )?;
    let users_file = options.out.join("latency-by-users.svg");
    draw(
        &by_users,
        |row| row.users as f64,
        &format!("users, {} events a second", options.rate_for_users),
        None,
        &users_file,
    )?;

    println!("### Against the event rate, {users} users\n");
    println!("![p50 and p99 against the event rate](latency-by-rate.svg)\n");
    compare::print(&by_rate);
    println!();
    for (_, server, _) in DRAWN {
        println!("- {}", capacity(&by_rate, server));
    }
    println!(
        "\n### Against users, {} events a second\n",
        options.rate_for_users
    );
    println!("![p50 and p99 against users](latency-by-users.svg)\n");
    compare::print(&by_users);
    Ok(())
}

/// "`server`: keeps p99 under 50 ms up to R events/s (next measured: R2, p99 X ms)".
fn capacity(rows: &[LatencyRow], server: &str) -> String {
    let mut points: Vec<&LatencyRow> = rows.iter().filter(|row| row.server == server).collect();
    points.sort_by_key(|row| row.rate);
    let kept = points
        .iter()
        .take_while(|row| row.p99 < CAPACITY_P99_MS && row.lost == 0)
        .last();
    let next = points.get(
        points
            .iter()
            .take_while(|row| row.p99 < CAPACITY_P99_MS && row.lost == 0)
            .count(),
    );
    let users = points.first().map_or(0, |row| row.users);
    match (kept, next) {
        (Some(kept), Some(next)) => format!(
            "{server}: capacity {} events/s with {users} users (p99 {} ms); at {} events/s p99 is {} ms",
            kept.rate,
            ms(kept.p99),
            next.rate,
            ms(next.p99)
        ),
        (Some(kept), None) => format!(
            "{server}: capacity at least {} events/s with {users} users, the highest rate measured (p99 {} ms)",
            kept.rate,
            ms(kept.p99)
        ),
        (None, Some(first)) => format!(
            "{server}: p99 over {CAPACITY_P99_MS} ms already at {} events/s with {users} users ({} ms)",
            first.rate,
            ms(first.p99)
        ),
        (None, None) => format!("{server}: not measured"),
    }
}

/// A panel's quantile: its name and how a row gives it.
type Quantile = (&'static str, fn(&LatencyRow) -> f64);

/// Two panels, p50 and p99 (log scale), one line per contender of [`DRAWN`], `x` from
/// each row; a dashed `threshold` on the p99 panel when given.
fn draw(
    rows: &[LatencyRow],
    x: fn(&LatencyRow) -> f64,
    x_label: &str,
    threshold: Option<f64>,
    path: &Path,
) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let xs: Vec<f64> = rows.iter().map(x).collect();
    let (x_min, x_max) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(0.0, f64::max),
    );
    let latencies = rows.iter().flat_map(|row| [row.p50, row.p99]);
    let y_min = latencies.clone().fold(f64::INFINITY, f64::min).max(0.01) / 1.5;
    let y_max = latencies.fold(0.0, f64::max).max(threshold.unwrap_or(0.0)) * 1.5;
    let pick: [Quantile; 2] = [("p50", |row| row.p50), ("p99", |row| row.p99)];
    for (panel, (quantile, value)) in panels.iter().zip(pick) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{quantile} publish → answer"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x_min..x_max, (y_min..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("ms (log scale)")
            .x_label_formatter(&|value| format!("{value:.0}"))
            .y_label_formatter(&|value| ms(*value))
            .draw()?;
        for (short, server, colour) in DRAWN {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|row| row.server == server)
                .map(|row| (x(row), value(row)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                .label(short)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|point| Circle::new(point, 3, colour.filled())),
            )?;
        }
        if let (Some(limit), "p99") = (threshold, quantile) {
            chart
                .draw_series(DashedLineSeries::new(
                    [(x_min, limit), (x_max, limit)],
                    6,
                    4,
                    BLACK.stroke_width(1),
                ))?
                .label(format!("{limit} ms"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(users: usize, rate: u64, server: &'static str, p50: f64, p99: f64) -> LatencyRow {
        LatencyRow {
            users,
            rate,
            server,
            p50,
            p90: p99,
            p99,
            max: p99,
            published: 100,
            lost: 0,
            failed_polls: 0,
            server_us_per_event: f64::NAN,
            server_us_per_idle_poll: f64::NAN,
            broker_us_per_event: f64::NAN,
        }
    }

    fn rows() -> Vec<LatencyRow> {
        [(100, 1.0, 5.0), (500, 2.0, 40.0), (1000, 3.0, 80.0)]
            .into_iter()
            .flat_map(|(rate, p50, p99)| {
                [
                    row(2000, rate, NCHAN, p50 / 4.0, p99 / 10.0),
                    row(2000, rate, FLOOR, p50, p99),
                    row(2000, rate, LONGPOLL, p50 + 0.3, p99 * 1.2),
                ]
            })
            .collect()
    }

    #[test]
    fn capacity_is_the_last_rate_under_the_p99_limit() {
        let rows = rows();
        // longpoll: p99 6, 48, 96 ms.
        assert!(capacity(&rows, LONGPOLL).contains("capacity 500 events/s"));
        assert!(capacity(&rows, NCHAN).contains("at least 1000 events/s"));
    }

    #[test]
    fn the_picture_has_both_panels_every_contender_and_the_limit() {
        let path = std::env::temp_dir().join(format!("curve-{}.svg", std::process::id()));
        draw(
            &rows(),
            |row| row.rate as f64,
            "events a second",
            Some(50.0),
            &path,
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        for text in [
            "p50 publish",
            "p99 publish",
            "nchan",
            "floor",
            "longpoll",
            "50 ms",
        ] {
            assert!(svg.contains(text), "{text} is drawn");
        }
    }
}
