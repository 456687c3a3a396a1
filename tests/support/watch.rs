//! `cargo lambda watch` as a test fixture: started on a free port in its own process
//! group, stopped (with the functions it runs) however the test ends.

use std::{
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::time::Instant;

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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Watch {
    /// Starts watch in the workspace with extra `--env-var`s for the functions, waits
    /// until it answers `poll/test/`, then starts each of `warm` (function paths under
    /// `/api/v1/communication/`) once, so a test measures answers, not builds.
    pub async fn start(env: &[(&str, &str)], warm: &[&str]) -> Watch {
        let port = free_port();
        let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
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
        for (name, value) in env {
            command.args(["--env-var", &format!("{name}={value}")]);
        }
        let child = command
            .current_dir(workspace)
            .env("RUST_LOG", "warn")
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

        // The first request builds and starts the function; allow for a cold build.
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let answer = client
                .get(watch.url("poll/test/"))
                .timeout(Duration::from_secs(300))
                .send()
                .await;
            if answer.is_ok_and(|response| response.status() == 200) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "cargo lambda watch did not come up; see {}",
                log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
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
