//! The functions under `cargo lambda watch`, on the contract's paths (the router in the
//! root `Cargo.toml`), against the real broker: the same end-to-end scenario the local
//! server passes.
//!
//! Needs `cargo lambda` (`pip install cargo-lambda`; `scripts/test` installs it).

use std::{
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::Duration,
};

use longpoll::config::{DEV_JWT_SECRET, DEV_PUBLISH_KEY};
use longpoll_tests::scenario::{self, Target};
use tokio::time::Instant;

/// The watch process group, stopped however the test ends.
struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_functions_answer_on_their_routes_under_cargo_lambda_watch() {
    let port = free_port();
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("longpoll-watch-{port}.log")))
            .unwrap();
    let _watch = Watch(
        Command::new("cargo")
            .args([
                "lambda",
                "watch",
                "--ignore-changes",
                "--invoke-port",
                &port.to_string(),
            ])
            .current_dir(workspace)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("cargo lambda is installed (pip install cargo-lambda)"),
    );
    let base = format!("http://127.0.0.1:{port}");

    // The first request builds and starts the function; allow for a cold build.
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let answer = client
            .get(format!("{base}/api/v1/communication/poll/test/"))
            .timeout(Duration::from_secs(300))
            .send()
            .await;
        if answer.is_ok_and(|response| response.status() == 200) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "cargo lambda watch did not come up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Start every function once, so the scenario measures answers, not builds.
    for path in [
        "poll/events/",
        "poll/disconnect/",
        "events/",
        "poll/online/",
    ] {
        let _ = client
            .delete(format!("{base}/api/v1/communication/{path}"))
            .timeout(Duration::from_secs(300))
            .send()
            .await;
    }

    // The router's `env` in Cargo.toml sets the development secret and key.
    scenario::run(&Target {
        base: &base,
        jwt_secret: DEV_JWT_SECRET,
        publish_key: DEV_PUBLISH_KEY,
    })
    .await;
}
