//! The local RabbitMQ node as an operator sees it, through `rabbitmqctl`.

use std::process::Command;

use serde_json::Value;

/// Runs `rabbitmqctl` against the local node and returns its stdout.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The queue's properties as the broker reports them: (arguments, durable, auto_delete).
pub fn queue_on_broker(name: &str) -> Option<(Value, bool, bool)> {
    let listing: Value = serde_json::from_str(&rabbitmqctl(&[
        "list_queues",
        "-q",
        "name",
        "arguments",
        "durable",
        "auto_delete",
        "--formatter",
        "json",
    ]))
    .expect("JSON from rabbitmqctl");
    listing
        .as_array()?
        .iter()
        .find(|queue| queue["name"] == name)
        .map(|queue| {
            // rabbitmqctl lists arguments as [name, type, value] triples.
            let arguments: serde_json::Map<String, Value> = queue["arguments"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|triple| {
                    (
                        triple[0].as_str().unwrap_or_default().to_owned(),
                        triple[2].clone(),
                    )
                })
                .collect();
            (
                Value::Object(arguments),
                queue["durable"] == true,
                queue["auto_delete"] == true,
            )
        })
}

/// Closes the broker connection that carries `connection_name`, as an operator (or a
/// broker restart) would.
pub fn close_connection(connection_name: &str) {
    // Plain output: the JSON formatter prints pids in a form close_connection refuses.
    let listing = rabbitmqctl(&["list_connections", "-q", "pid", "client_properties"]);
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(connection_name))
        .filter_map(|line| line.split('\t').next())
        .collect();
    assert_eq!(
        pids.len(),
        1,
        "exactly one connection named {connection_name}"
    );
    rabbitmqctl(&["close_connection", pids[0], "closed by the reconnect test"]);
}
