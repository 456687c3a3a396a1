//! The files under `infra/` that users run: the compose file's RabbitMQ definitions load
//! into a real node (a private one this test starts, never the shared broker) and give
//! the exchange and the policies mirroring the queue limits.

use longpoll_testkit::private_node::PrivateNode;
use serde_json::Value;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

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

    let node = PrivateNode::start(Some(&format!(
        "{WORKSPACE}/infra/rabbitmq/definitions.json"
    )));
    let json = |args: &[&str]| -> Value {
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--formatter", "json"])
            .collect();
        serde_json::from_str(&node.ctl(&args)).expect("JSON from rabbitmqctl")
    };
    let exchanges = json(&["list_exchanges", "name", "type", "durable"]);
    assert!(
        exchanges.as_array().unwrap().iter().any(|exchange| {
            exchange["name"] == "longpoll.events"
                && exchange["type"] == "topic"
                && exchange["durable"] == true
        }),
        "{exchanges}"
    );
    let policies = json(&["list_policies"]);
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
