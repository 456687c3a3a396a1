//! The Secrets Manager path end to end, as deployed: a local Secrets Manager API (moto's
//! server on loopback) holds the broker credentials, the JWT key and the publish key (as
//! behind an ALB); the functions run under `cargo lambda watch` with the ARNs and
//! `AWS_ENDPOINT_URL` set, and the environment's own `AMQP_URL` carries wrong
//! credentials, so a poll that succeeds proves the broker and JWT secrets were read, and
//! a publish accepted with the secret's key (the development key refused) the third.
//! With several brokers, each broker's own secret (`AMQP_SECRET_ARNS`) completes its URL.
//!
//! Needs moto and boto3 (`tests/infra/requirements.txt`, installed by `scripts/test`
//! into the venv `LONGPOLL_PYTHON` points at) and `cargo lambda`.

use std::{process::Command, time::Duration};

use longpoll::{
    config::DEV_JWT_SECRET,
    event::EventBody,
    shard::SlotTable,
    token::TokenIssuer,
    topology::{QueueType, Subscriber},
};
use longpoll_testkit::{
    drill::{Product, User, functions::Functions},
    moto::{AWS_ENVIRONMENT, Moto, python},
    private_node::PrivateNode,
    unique_name, unique_user,
    watch::Watch,
};
use serde_json::Value;

/// Creates one secret per `(name, value)` and returns their ARNs, in the same order.
fn seed_secrets(endpoint: &str, secrets: &[(&str, &str)]) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/seed_secrets.py");
    let pairs = secrets
        .iter()
        .map(|(name, value)| format!("{name}={value}"));
    let output = Command::new(python())
        .arg(script)
        .arg(unique_name("longpoll"))
        .args(pairs)
        .env("AWS_ENDPOINT_URL", endpoint)
        .envs(AWS_ENVIRONMENT)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "seed_secrets.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let arns: Value = serde_json::from_slice(&output.stdout).expect("JSON ARNs");
    secrets
        .iter()
        .map(|(name, _)| arns[name].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_read_the_broker_and_jwt_secrets_from_secrets_manager() {
    let moto = Moto::start().await;
    let endpoint = moto.endpoint.clone();
    let jwt_secret = format!("from-secrets-manager-{}", unique_name("jwt"));
    // What Amazon MQ's generated secret holds: credentials, with the endpoint beside it.
    let publish_key = format!("publish-key-{}", unique_name("publish"));
    let [amqp_arn, jwt_arn, publish_arn] = seed_secrets(
        &endpoint,
        &[
            ("amqp", r#"{"username": "guest", "password": "guest"}"#),
            ("jwt", &jwt_secret),
            ("publish-key", &publish_key),
        ],
    )
    .try_into()
    .unwrap();

    let mut env = vec![
        ("AMQP_SECRET_ARN", amqp_arn.as_str()),
        ("JWT_SECRET_ARN", jwt_arn.as_str()),
        ("PUBLISH_API_KEY_SECRET_ARN", publish_arn.as_str()),
        // The endpoint, with credentials the broker refuses: only the secret's work.
        ("AMQP_URL", "amqp://nobody:wrong@127.0.0.1:5672/%2f"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    env.extend(AWS_ENVIRONMENT);
    let watch = Watch::start(&env, &[]).await;

    let user = unique_user();
    let client = reqwest::Client::new();
    let poll = |secret: &str| {
        let token =
            TokenIssuer::new(secret.as_bytes()).mint(user, None, None, Duration::from_secs(60));
        client
            .get(watch.url("poll/events/"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(300))
            .send()
    };
    // The first poll starts the function, which reads both secrets at its cold start.
    let response = poll(&jwt_secret).await.expect("an answer");
    let status = response.status();
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], serde_json::json!([]));

    // The development key the router's env sets is no longer the one in use.
    let refused = poll(DEV_JWT_SECRET).await.unwrap();
    assert_eq!(refused.status(), 401);

    let publish = |key: &str| {
        client
            .post(watch.url("events/"))
            .header("x-api-key", key)
            .json(&serde_json::json!({"user_id": user.0, "event": "typing",
                "data": {"sender_id": 2, "is_typing": true}}))
            .timeout(Duration::from_secs(300))
            .send()
    };
    let published = publish(&publish_key).await.expect("an answer");
    assert_eq!(
        published.status(),
        200,
        "{}",
        published.text().await.unwrap()
    );
    let refused = publish(longpoll::config::DEV_PUBLISH_KEY).await.unwrap();
    assert_eq!(refused.status(), 401);
}

/// Several brokers, each with its own credentials in its own secret (`AMQP_SECRET_ARNS`,
/// as the template sets it with further brokers): `poll-events` and `publish-event` on a
/// Runtime API, over two private nodes that each know only their own user, with wrong
/// credentials in `AMQP_URLS`. Each user is served on their own broker, so each secret
/// completed its own broker's URL, in order.
#[tokio::test(flavor = "multi_thread")]
async fn functions_read_one_broker_secret_per_shard() {
    let nodes = tokio::task::spawn_blocking(|| PrivateNode::start_several(2))
        .await
        .unwrap();
    let mut secrets = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let (user, password) = (format!("shard-{index}"), format!("password-{index}"));
        node.ctl(&["add_user", &user, &password]);
        node.ctl(&["set_permissions", &user, ".*", ".*", ".*"]);
        secrets.push(format!(
            r#"{{"username": "{user}", "password": "{password}"}}"#
        ));
    }
    let urls: Vec<String> = nodes
        .iter()
        .map(|node| format!("amqp://nobody:wrong@127.0.0.1:{}/%2f", node.port))
        .collect();
    let urls = urls.join(",");
    let moto = Moto::start().await;
    let arns = seed_secrets(
        &moto.endpoint,
        &[("shard-0", &secrets[0]), ("shard-1", &secrets[1])],
    )
    .join(",");

    let mut env = vec![
        ("AMQP_URL", ""),
        ("AMQP_URLS", urls.as_str()),
        ("AMQP_SECRET_ARNS", arns.as_str()),
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
    ];
    env.extend(AWS_ENVIRONMENT);
    let hold = Duration::from_millis(800);
    let functions = Functions::start_with(4, "", QueueType::Classic, hold, &env).await;

    let table = SlotTable::even(2).unwrap();
    for (index, node) in nodes.iter().enumerate() {
        let user_id = std::iter::repeat_with(unique_user)
            .find(|user| table.broker_of(*user) == index)
            .unwrap();
        let user = User {
            index,
            subscriber: Subscriber {
                user_id,
                college_id: None,
                device: None,
            },
            token: TokenIssuer::new(DEV_JWT_SECRET.as_bytes()).mint(
                user_id,
                None,
                None,
                Duration::from_secs(600),
            ),
        };
        let first = functions.poll(&user, Some(""), hold).await;
        assert!(first.outcome.expect("a poll on its shard").is_empty());
        let body: EventBody = serde_json::from_value(serde_json::json!({
            "event": "typing", "data": {"sender_id": 2, "is_typing": true}
        }))
        .unwrap();
        let event = body.prepare();
        let routed = functions.publish(&user, &event, 0).await.outcome;
        assert!(routed.expect("a publish on its shard"), "routed");
        let ids = functions.poll(&user, Some(""), hold).await.outcome.unwrap();
        assert_eq!(ids, std::slice::from_ref(&event.id));
        let queues = node.ctl(&["list_queues", "name", "--no-table-headers"]);
        assert!(queues.contains(&user.subscriber.queue_name()), "{queues}");
    }
}
