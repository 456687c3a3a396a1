//! A private 3-node RabbitMQ cluster behind HAProxy (`scripts/private-cluster`), as
//! Amazon MQ's cluster broker is, for the tests of a node's loss: never the shared
//! broker. One at a time per test binary: its ports are fixed.

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The tests' cluster: HAProxy's port; the nodes listen on the next three.
pub const TEST_PORT: u16 = 5790;

/// Whether a test of this binary has a cluster: one at a time, on the same ports.
static IN_USE: AtomicBool = AtomicBool::new(false);

/// A running cluster, stopped (its data removed) when dropped.
pub struct PrivateCluster {
    /// HAProxy's port; node `n` listens on `port + n`.
    port: u16,
}

impl PrivateCluster {
    /// Starts the three nodes on [`TEST_PORT`], joins them and starts HAProxy in front.
    pub fn start() -> Self {
        Self::start_on(TEST_PORT)
    }

    /// Starts a cluster whose HAProxy listens on `port` (the nodes on the next three).
    pub fn start_on(port: u16) -> Self {
        while IN_USE.swap(true, Ordering::AcqRel) {
            std::thread::sleep(Duration::from_millis(200));
        }
        // From here a panic stops the cluster and lets the next test have it.
        let cluster = Self { port };
        // A cluster left by an interrupted run would hold the ports.
        cluster.quietly(&["stop"]);
        assert!(cluster.script(&["start"]), "the private cluster started");
        cluster
    }

    /// Node `n`'s name, for `rabbitmqctl -n`.
    pub fn node_name(&self, n: u16) -> String {
        format!("longpoll-{}@localhost", self.port + n)
    }

    /// The load-balanced endpoint, as clients use it.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Node `n`'s own listener (1 to 3), bypassing HAProxy: to put a queue on that node.
    pub fn node_url(&self, n: u16) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port + n)
    }

    /// Node `n` leaves for maintenance (`stop_app`: connections close, data kept).
    pub fn stop_node(&self, n: u16) {
        assert!(
            self.script(&["stop-node", &n.to_string()]),
            "node {n} stopped"
        );
    }

    /// Node `n` crashes (`kill -9` of its VM).
    pub fn kill_node(&self, n: u16) {
        assert!(
            self.script(&["kill-node", &n.to_string()]),
            "node {n} killed"
        );
    }

    /// Node `n` hangs (`SIGSTOP` of its VM): its sockets stay open and it answers
    /// nothing, as a node stuck in a long `stop_app` does; [`Self::thaw_node`] ends it.
    pub fn freeze_node(&self, n: u16) {
        assert!(
            self.script(&["freeze-node", &n.to_string()]),
            "node {n} frozen"
        );
    }

    pub fn thaw_node(&self, n: u16) {
        assert!(
            self.script(&["thaw-node", &n.to_string()]),
            "node {n} thawed"
        );
    }

    /// Node `n` comes back, after a stop or a kill.
    pub fn start_node(&self, n: u16) {
        assert!(
            self.script(&["start-node", &n.to_string()]),
            "node {n} started"
        );
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.quietly(&["stop"]);
        IN_USE.store(false, Ordering::Release);
    }
}

impl PrivateCluster {
    /// [`Self::script`] without its output: the stop of a cluster that is not running complains.
    fn quietly(&self, args: &[&str]) -> bool {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("scripts/private-cluster runs")
            .success()
    }

    fn script(&self, args: &[&str]) -> bool {
        // Its stdout is the URL, which the callers build themselves.
        self.command(args)
            .stdout(Stdio::null())
            .status()
            .expect("scripts/private-cluster runs")
            .success()
    }

    fn command(&self, args: &[&str]) -> Command {
        let port = self.port.to_string();
        let (command, rest) = args.split_first().expect("a command");
        let mut command_line = Command::new(format!("{WORKSPACE}/scripts/private-cluster"));
        command_line.arg(command).arg(&port).args(rest);
        command_line
    }
}
