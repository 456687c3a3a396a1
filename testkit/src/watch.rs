//! `cargo lambda watch` as a test fixture: started on a free port in its own process
//! group, stopped (with the functions it runs) however the test ends.
//!
//! Watch (cargo-lambda 1.9) starts every instance of a function with its own file
//! watcher on the whole workspace, target directory included, and builds the function
//! there (`cargo run --bin NAME`) as the instance starts. A build's file events then
//! overflow the other instances' watchers ("sending into a full channel"), which restart
//! their functions mid-request (500s) and time out when stopped. So the fixture builds
//! the functions first, exactly as watch will run them: watch's own `cargo run` then
//! finds them fresh and writes nothing into the tree it watches, wherever the target
//! directory is.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::ready::wait_until;

/// A running `cargo lambda watch`; `base` is its invoke address.
pub struct Watch {
    child: Child,
    pub base: String,
    log_path: std::path::PathBuf,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.terminate();
    }
}

impl Watch {
    /// Starts watch in the workspace with extra `--env-var`s for the functions, waits
    /// until it answers `poll/test/`, then starts each of `warm` (function paths under
    /// `/api/v1/communication/`) once, so a test measures answers, not builds.
    pub async fn start(env: &[(&str, &str)], warm: &[&str]) -> Watch {
        let port = crate::server::free_port();
        build_functions();
        let log_path = std::env::temp_dir().join(format!("longpoll-watch-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new("cargo");
        command.args([
            "lambda",
            "watch",
            "--ignore-changes",
            "--invoke-port",
            &port.to_string(),
        ]);
        // The functions log from WARN up, so a test sees their every complaint. Watch
        // itself keeps its own default level: under RUST_LOG=warn it would also show
        // watchexec's "waiting on process group" errors at every stop, which watchexec
        // documents as harmless.
        for (name, value) in [("RUST_LOG", "warn")].iter().chain(env) {
            command.args(["--env-var", &format!("{name}={value}")]);
        }
        let child = command
            .current_dir(WORKSPACE)
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("cargo lambda is installed (pip install cargo-lambda)");
        let watch = Watch {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log_path: log_path.clone(),
        };

        // The first request starts the function (already built, so in seconds; the
        // generous limits are for a machine loaded by other tests).
        let client = reqwest::Client::new();
        let probe = watch.url("poll/test/");
        let what = format!(
            "cargo lambda watch did not come up; see {}",
            log_path.display()
        );
        wait_until(
            what,
            Duration::from_secs(600),
            Duration::from_millis(500),
            || async {
                let answer = client
                    .get(&probe)
                    .timeout(Duration::from_secs(300))
                    .send()
                    .await;
                answer.is_ok_and(|response| response.status() == 200)
            },
        )
        .await;
        for path in warm {
            let _ = client
                .delete(watch.url(path))
                .timeout(Duration::from_secs(300))
                .send()
                .await;
        }
        watch
    }

    /// Stops watch and its functions as Ctrl-C in its terminal would (SIGTERM to the whole
    /// process group) and returns everything they logged.
    ///
    /// A clean run logs nothing at `WARN` or `ERROR` (the functions run with
    /// `RUST_LOG=warn`, so anything at those levels shows): see [`complaints`].
    pub fn stop(mut self) -> String {
        self.terminate();
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn terminate(&mut self) {
        if self.child.try_wait().is_ok_and(|status| status.is_some()) {
            return;
        }
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1/communication/{path}", self.base)
    }
}

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// `[workspace.metadata.lambda.watch]` of the root `Cargo.toml`: watch's settings.
pub fn settings() -> toml::Table {
    let text = std::fs::read_to_string(format!("{WORKSPACE}/Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    manifest["workspace"]["metadata"]["lambda"]["watch"]
        .as_table()
        .expect("[workspace.metadata.lambda.watch]")
        .clone()
}

/// Watch's router: path → the function that serves it, for every method.
pub fn router() -> BTreeMap<String, String> {
    settings()["router"]
        .as_table()
        .expect("[workspace.metadata.lambda.watch.router]")
        .iter()
        .map(|(path, function)| {
            (
                path.clone(),
                function
                    .as_str()
                    .expect("one function for every method")
                    .to_owned(),
            )
        })
        .collect()
}

/// Builds each function as watch runs it (`cargo run --manifest-path Cargo.toml --bin
/// NAME`, so with that binary's own features), one at a time.
fn build_functions() {
    let functions: BTreeSet<String> = router().into_values().collect();
    for function in functions {
        crate::server::built(&function);
    }
}

/// The lines of a watch log that report a problem: a `WARN` or `ERROR` level wherever it
/// stands in the line (watch's own lines start with it, the functions' follow a
/// timestamp), an `Error:` a process printed as it ended, or watch's own complaints
/// about its file watcher and its shutdown.
pub fn complaints(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| {
            line.split_whitespace()
                .any(|word| matches!(word, "WARN" | "ERROR"))
                || line.contains("Error:")
                || line.contains("full channel")
                || line.contains("timed out")
                || line.contains("Subsystem cancelled")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::complaints;

    #[test]
    fn complaints_are_found_wherever_the_level_stands() {
        let log = "\
    Finished `dev` profile [unoptimized + debuginfo] target(s) in 2.68s
ERROR response failed classification=Status code: 500 Internal Server Error latency=0 ms
2026-12-05T07:24:24.477776Z  WARN poll_events: slow broker
2026-12-05T07:24:24.477776Z  INFO poll_events: a WARNING in a message is no level
Error: the runtime API hung up
Shutdown timed out!
cannot send event from fs watcher: sending into a full channel";
        assert_eq!(
            complaints(log),
            [
                "ERROR response failed classification=Status code: 500 Internal Server Error latency=0 ms",
                "2026-12-05T07:24:24.477776Z  WARN poll_events: slow broker",
                "Error: the runtime API hung up",
                "Shutdown timed out!",
                "cannot send event from fs watcher: sending into a full channel",
            ]
        );
    }
}
