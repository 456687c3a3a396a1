//! `longpoll-bench record SECTION FILE`: puts a benchmark's output into bench/RESULTS.md,
//! replacing the section of the same name (between `<!-- bench:SECTION -->` and
//! `<!-- /bench:SECTION -->`), under a line that says when, on what machine and with
//! which versions it was measured. `scripts/bench` calls it after each command, so the
//! file holds the latest figures of each, never history.

use std::{path::Path, process::Command};

/// Replaces `section` of the results file `results` with `output`, dated.
/// `longpoll-bench record`: puts OUTPUT (a command's figures) into section SECTION of
/// the results file, with the date, machine and versions.
#[derive(clap::Args)]
pub struct Options {
    pub section: String,
    pub output: std::path::PathBuf,
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub results: std::path::PathBuf,
}

/// [`record`]s the file `options.output` names.
pub fn record_file(options: &Options) -> std::io::Result<()> {
    let output = std::fs::read_to_string(&options.output)?;
    record(&options.results, &options.section, &output)
}

pub fn record(results: &Path, section: &str, output: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(results)?;
    let (start, end) = (
        format!("<!-- bench:{section} -->"),
        format!("<!-- /bench:{section} -->"),
    );
    let body = format!("{start}\n{}\n\n{}\n{end}", measured_on(), output.trim());
    let updated = match (text.find(&start), text.find(&end)) {
        (Some(from), Some(to)) if from < to => {
            format!("{}{body}{}", &text[..from], &text[to + end.len()..])
        }
        _ => format!("{}\n\n{body}\n", text.trim_end()),
    };
    std::fs::write(results, updated)
}

/// "Measured 2026-11-30 on 2 cores (AMD EPYC …), 24 GiB; RabbitMQ …, Erlang …; nginx …
/// with Nchan …; rustc …."
pub fn measured_on() -> String {
    let date = first_line("date", &["-u", "+%Y-%m-%d"]).unwrap_or_default();
    let rabbitmq = std::env::var("RABBITMQ_NODENAME")
        .ok()
        .and_then(|node| first_line("rabbitmqctl", &["-n", &node, "-q", "version"]))
        .map_or_else(String::new, |version| format!("RabbitMQ {version}; "));
    let erlang = first_line(
        "erl",
        &[
            "-noshell",
            "-eval",
            "io:format(\"~s\", [erlang:system_info(otp_release)]), halt().",
        ],
    )
    .map_or_else(String::new, |otp| format!("Erlang/OTP {otp}; "));
    let nginx = Command::new("nginx")
        .arg("-v")
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stderr).trim().to_owned())
        .and_then(|line| line.rsplit(": ").next().map(str::to_owned))
        .map_or_else(String::new, |nginx| format!("{nginx}; "));
    let nchan = first_line(
        "dpkg-query",
        &["-W", "-f", "${Version}", "libnginx-mod-nchan"],
    )
    .map_or_else(String::new, |version| format!("Nchan {version}; "));
    let rustc = first_line("rustc", &["--version"]).unwrap_or_default();
    format!(
        "Measured {date} by `scripts/bench` on {}; {rabbitmq}{erlang}{nginx}{nchan}{rustc}; release builds; servers, broker and load generator on the same machine.",
        machine()
    )
}

/// "2 cores (AMD EPYC …), 24 GiB".
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or("?".to_owned(), |kib| {
            format!("{:.0} GiB", kib / 1024.0 / 1024.0)
        });
    format!("{cores} cores ({cpu}), {memory}")
}

fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_and_the_rest_kept() {
        let dir = std::env::temp_dir().join(format!("results-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("RESULTS.md");
        std::fs::write(
            &file,
            "# Results\n\nintro\n\n<!-- bench:compare -->\nold figures\n<!-- /bench:compare -->\n\nafter\n",
        )
        .unwrap();
        record(&file, "compare", "| new | table |\n").unwrap();
        record(&file, "herd", "herd figures").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("old figures"), "{text}");
        assert!(
            text.contains("| new | table |\n<!-- /bench:compare -->\n\nafter"),
            "{text}"
        );
        assert!(text.contains("Measured "), "{text}");
        assert!(
            text.trim_end()
                .ends_with("herd figures\n<!-- /bench:herd -->"),
            "{text}"
        );
        assert!(
            text.starts_with("# Results\n\nintro\n\n<!-- bench:compare -->"),
            "{text}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
