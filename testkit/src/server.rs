//! Programs of the workspace run as processes of their own: [`built`] finds (and first
//! builds) a binary of the running executable's profile, [`Server`] runs one that
//! serves HTTP (`longpoll-local`, the bench's guide server) on a free loopback port.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::ready::{answers, wait_until};

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The workspace binary `name`, built with its own features (`cargo build --bin NAME`
/// from the workspace's manifest, as `cargo run` would) in the profile and target
/// directory of the running executable (a test's in `target/debug/deps`, a bench's in
/// `target/release`). Fast when it is up to date.
pub fn built(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("the running executable's path");
    let mut dir = me.parent().expect("an executable's folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let mut command = Command::new("cargo");
    command
        .args([
            "build",
            "--quiet",
            "--manifest-path",
            "Cargo.toml",
            "--bin",
            name,
        ])
        .current_dir(WORKSPACE)
        .stdin(Stdio::null());
    if dir.ends_with("release") {
        command.arg("--release");
    }
    // The binary goes where this executable is, whatever CARGO_TARGET_DIR says.
    if let Some(target) = dir.parent() {
        command.env("CARGO_TARGET_DIR", target);
    }
    let status = command.status().expect("cargo runs");
    assert!(status.success(), "cargo build --bin {name} failed");
    dir.join(name)
}

/// A loopback port free now (the OS picks it; a race with another process is unlikely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process on a free loopback port; killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    pub pid: u32,
}

impl Server {
    /// Starts `program args` with `LISTEN_ADDR` set to a free port and waits until it
    /// answers `poll/test/`.
    pub async fn start(program: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let child = Command::new(&program)
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", program.display()));
        let server = Server {
            pid: child.id(),
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let probe = format!("{}/api/v1/communication/poll/test/", server.url);
        let what = format!("{} did not start", program.display());
        wait_until(
            what,
            Duration::from_secs(30),
            Duration::from_millis(50),
            || answers(&client, &probe),
        )
        .await;
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
