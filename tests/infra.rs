//! The files under `infra/` that users run: the compose file's RabbitMQ definitions load
//! into a real node (a private one this test starts, never the shared broker) and give
//! the exchange and the policies mirroring the queue limits.

use std::process::Command;

use serde_json::Value;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A private node on `port`, stopped (and its data removed) when dropped.
struct PrivateNode(u16);

impl PrivateNode {
    fn start(port: u16, definitions: &str) -> Self {
        let status = Command::new(format!("{WORKSPACE}/scripts/private-rabbitmq"))
            .args(["start", &port.to_string()])
            .env("DEFINITIONS", definitions)
            .status()
            .expect("scripts/private-rabbitmq runs");
        assert!(status.success(), "the private node started");
        Self(port)
    }

    fn ctl(&self, args: &[&str]) -> Value {
        let node = format!("longpoll-{}@localhost", self.0);
        let output = Command::new("rabbitmqctl")
            .args(["-n", &node, "-q"])
            .args(args)
            .args(["--formatter", "json"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON from rabbitmqctl")
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let _ = Command::new(format!("{WORKSPACE}/scripts/private-rabbitmq"))
            .args(["stop", &self.0.to_string()])
            .status();
    }
}

#[test]
fn the_compose_definitions_load_into_rabbitmq() {
    let compose: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(format!("{WORKSPACE}/infra/compose.yaml")).unwrap(),
    )
    .unwrap();
    let rabbitmq = &compose["services"]["rabbitmq"];
    assert!(rabbitmq["image"].as_str().unwrap().ends_with("-management"));
    // Every file the compose file mounts exists.
    for volume in rabbitmq["volumes"].as_sequence().unwrap() {
        let source = volume.as_str().unwrap().split(':').next().unwrap();
        if source.starts_with("./") {
            let path = format!("{WORKSPACE}/infra/{source}");
            assert!(std::path::Path::new(&path).exists(), "{path}");
        }
    }

    let port = longpoll_tests::watch::free_port();
    let node = PrivateNode::start(
        port,
        &format!("{WORKSPACE}/infra/rabbitmq/definitions.json"),
    );
    let exchanges = node.ctl(&["list_exchanges", "name", "type", "durable"]);
    assert!(
        exchanges.as_array().unwrap().iter().any(|exchange| {
            exchange["name"] == "longpoll.events"
                && exchange["type"] == "topic"
                && exchange["durable"] == true
        }),
        "{exchanges}"
    );
    let policies = node.ctl(&["list_policies"]);
    let policy = |name: &str| -> Value {
        let found = policies
            .as_array()
            .unwrap()
            .iter()
            .find(|policy| policy["name"] == name)
            .unwrap_or_else(|| panic!("policy {name} in {policies}"));
        // rabbitmqctl prints the definition as a JSON string.
        match &found["definition"] {
            Value::String(text) => serde_json::from_str(text).unwrap(),
            other => other.clone(),
        }
    };
    let user = policy("longpoll-user-queues");
    assert_eq!(user["max-length"], 100);
    assert_eq!(user["overflow"], "drop-head");
    assert_eq!(user["message-ttl"], 1_800_000);
    assert_eq!(user["expires"], 1_800_000);
    assert_eq!(policy("longpoll-presence-queues")["expires"], 300_000);
}
