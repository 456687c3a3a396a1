//! A private RabbitMQ node (`scripts/private-rabbitmq`) for tests that stop, restart or
//! overload a broker: never the shared one on 5672.

use std::process::Command;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A node on its own port, data dir and node name; stopped (data removed) when dropped.
pub struct PrivateNode {
    pub port: u16,
    /// The management API's port, if the node runs it.
    pub management_port: Option<u16>,
}

impl PrivateNode {
    /// Starts a node on a free port, loading `definitions` if given.
    pub fn start(definitions: Option<&str>) -> Self {
        Self::start_with(definitions, None)
    }

    /// Starts `count` nodes side by side (each takes seconds to boot): several brokers,
    /// such as the shards of one deployment.
    pub fn start_several(count: usize) -> Vec<Self> {
        let starting: Vec<_> = (0..count)
            .map(|_| std::thread::spawn(|| Self::start(None)))
            .collect();
        starting
            .into_iter()
            .map(|node| node.join().expect("a private node started"))
            .collect()
    }

    /// Starts a node that also serves RabbitMQ's management API (HTTP, loopback).
    pub fn start_with_management() -> Self {
        Self::start_with(None, Some(crate::server::free_port()))
    }

    fn start_with(definitions: Option<&str>, management_port: Option<u16>) -> Self {
        let port = crate::server::free_port();
        // Its Erlang distribution port, free too (the script's default, PORT + 20000,
        // may be taken or past 65535 for a port the system handed out).
        let dist_port = crate::server::free_port();
        let mut command = Command::new(format!("{WORKSPACE}/scripts/private-rabbitmq"));
        command
            .args(["start", &port.to_string()])
            .env("DIST_PORT", dist_port.to_string());
        if let Some(definitions) = definitions {
            command.env("DEFINITIONS", definitions);
        }
        if let Some(management_port) = management_port {
            command.env("MANAGEMENT_PORT", management_port.to_string());
        }
        // The script prints the node's URL; `url` gives it to whoever needs it.
        let status = command
            .stdout(std::process::Stdio::null())
            .status()
            .expect("scripts/private-rabbitmq runs");
        assert!(status.success(), "the private node on {port} started");
        Self {
            port,
            management_port,
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The node's name, for `rabbitmqctl -n`.
    pub fn name(&self) -> String {
        format!("longpoll-{}@localhost", self.port)
    }

    /// `rabbitmqctl` against this node; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        ctl(&self.name(), args)
    }

    /// Stops the broker application (connections close, the port refuses), keeping the
    /// node and its data.
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    pub fn start_app(&self) {
        self.ctl(&["start_app"]);
        self.ctl(&["await_startup"]);
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let _ = Command::new(format!("{WORKSPACE}/scripts/private-rabbitmq"))
            .args(["stop", &self.port.to_string()])
            .status();
    }
}

/// `rabbitmqctl -n node` with `args`; its stdout. Panics if the command fails.
pub fn ctl(node: &str, args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(["-n", node, "-q"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
