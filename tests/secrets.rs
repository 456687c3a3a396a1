//! The Secrets Manager path end to end, as deployed: a local Secrets Manager API (moto's
//! server on loopback) holds the broker credentials, the JWT key and the publish key (as
//! behind an ALB); the functions run under `cargo lambda watch` with the ARNs and
//! `AWS_ENDPOINT_URL` set, and the environment's own `AMQP_URL` carries wrong
//! credentials, so a poll that succeeds proves the broker and JWT secrets were read, and
//! a publish accepted with the secret's key (the development key refused) the third.
//!
//! Needs moto and boto3 (`tests/infra/requirements.txt`, installed by `scripts/test`
//! into the venv `LONGPOLL_PYTHON` points at) and `cargo lambda`.

use std::{process::Command, time::Duration};

use longpoll::token::TokenIssuer;
use longpoll_testkit::{
    moto::{AWS_ENVIRONMENT, Moto, python},
    unique_name, unique_user,
    watch::Watch,
};
use serde_json::Value;

/// Creates the three secrets and returns their ARNs (broker, JWT, publish key).
fn seed_secrets(
    endpoint: &str,
    broker_secret: &str,
    jwt_secret: &str,
    publish_key: &str,
) -> (String, String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/seed_secrets.py");
    let output = Command::new(python())
        .args([
            script,
            &unique_name("longpoll"),
            broker_secret,
            jwt_secret,
            publish_key,
        ])
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
    (
        arns["amqp"].as_str().unwrap().to_owned(),
        arns["jwt"].as_str().unwrap().to_owned(),
        arns["publish"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_read_the_broker_and_jwt_secrets_from_secrets_manager() {
    let moto = Moto::start().await;
    let endpoint = moto.endpoint.clone();
    let jwt_secret = format!("from-secrets-manager-{}", unique_name("jwt"));
    // What Amazon MQ's generated secret holds: credentials, with the endpoint beside it.
    let publish_key = format!("publish-key-{}", unique_name("publish"));
    let (amqp_arn, jwt_arn, publish_arn) = seed_secrets(
        &endpoint,
        r#"{"username": "guest", "password": "guest"}"#,
        &jwt_secret,
        &publish_key,
    );

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
    let refused = poll(longpoll::config::DEV_JWT_SECRET).await.unwrap();
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
