//! The functions' least-privilege broker user (`infra/broker-user/index.py`, the
//! template's `FunctionBrokerUser` custom resource) against a real node: the handler,
//! run as CloudFormation would, creates the user through RabbitMQ's management API; the
//! functions then do all they do as that user (the end-to-end scenario, device queues,
//! cursor polls, a college move, a shard record), and the user is refused everything else; Delete
//! removes it. A private node: the test adds and removes users.

use std::{process::Command, time::Duration};

use lapin::{
    Connection, ConnectionProperties,
    options::{BasicGetOptions, ExchangeDeclareOptions, QueueDeclareOptions},
    types::FieldTable,
};
use longpoll::{
    Broker, Config, RabbitBroker,
    broker::BrokerError,
    shard::{ShardRecord, SlotTable},
    topology::CollegeId,
};
mod common;

use longpoll_local::{BrokerKind, DEV_JWT_SECRET, DEV_PUBLISH_KEY};
use longpoll_testkit::{
    moto::{AWS_ENVIRONMENT, Moto, python},
    private_node::PrivateNode,
    scenario::{self, Target},
    unique_college, unique_name, unique_user,
};
use reqwest::Client;
use serde_json::{Value, json};

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const USER: &str = "longpoll-functions";

/// Runs the custom resource's handler for `request_type`; the response it sent.
fn custom_resource(request_type: &str, node: &PrivateNode, moto: &Moto, password: &str) -> Value {
    let management = format!("http://127.0.0.1:{}", node.management_port.unwrap());
    let output = Command::new(python())
        .arg(format!("{WORKSPACE}/tests/infra/broker_user.py"))
        .args([
            request_type,
            &management,
            longpoll::config::DEFAULT_EXCHANGE,
        ])
        .arg(r#"{"username": "guest", "password": "guest"}"#)
        .arg(json!({"username": USER, "password": password}).to_string())
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .envs(AWS_ENVIRONMENT)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "broker_user.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the response, as JSON")
}

/// The local server on `url`, holding polls for `hold`; its base URL.
async fn serve_as(url: &str, hold: Duration) -> String {
    let mut config = Config::new(url, None, &unique_name("broker-user"));
    config.poll_timeout = hold;
    config.max_devices_per_user = 2;
    common::start(config, BrokerKind::RabbitMq).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_functions_broker_user_may_do_what_they_do_and_nothing_else() {
    let node = PrivateNode::start_with_management();
    let moto = Moto::start().await;
    let password = unique_name("pw");

    let created = custom_resource("Create", &node, &moto, &password);
    assert_eq!(created["Status"], "SUCCESS", "{created}");
    assert_eq!(created["Data"]["Username"], USER);
    let users = node.ctl(&["list_users"]);
    assert!(users.contains(USER), "{users}");
    assert!(
        !users.contains(&format!("{USER}\t[administrator")),
        "{users}"
    );
    // Update puts the same again: idempotent.
    let updated = custom_resource("Update", &node, &moto, &password);
    assert_eq!(updated["Status"], "SUCCESS", "{updated}");

    let url = format!("amqp://{USER}:{password}@127.0.0.1:{}/%2f", node.port);
    // Everything a browser and a backend do, on the default 5.5 s hold.
    let base = serve_as(&url, Duration::from_millis(5500)).await;
    scenario::run(&Target {
        base: &base,
        jwt_secret: DEV_JWT_SECRET,
        publish_key: DEV_PUBLISH_KEY,
    })
    .await;

    // The rest on short holds.
    let base = serve_as(&url, Duration::from_millis(300)).await;
    let client = Client::new();
    let issuer = longpoll::token::TokenIssuer::new(DEV_JWT_SECRET.as_bytes());
    let poll = |token: String, query: Vec<(&'static str, String)>| {
        let request = client
            .get(format!("{base}/api/v1/communication/poll/events/"))
            .bearer_auth(token)
            .query(&query);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let publish = |body: Value| {
        let request = client
            .post(format!("{base}/api/v1/communication/events/"))
            .header("x-api-key", DEV_PUBLISH_KEY)
            .json(&body);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let token = |user, college: Option<CollegeId>| {
        issuer.mint(user, college, None, Duration::from_secs(600))
    };

    // A third device's queue makes room by deleting the least recent one (configure).
    let user = unique_user();
    for device in ["a", "b", "c"] {
        poll(token(user, None), vec![("device", device.to_owned())]).await;
    }
    let queues = node.ctl(&["list_queues", "name"]);
    let devices: Vec<&str> = queues
        .lines()
        .filter(|name| name.starts_with(&format!("event_queue:user:{user}:")))
        .collect();
    assert_eq!(devices.len(), 2, "{queues}");

    // Cursor mode: the acknowledged event goes, through the same permissions.
    let user = unique_user();
    poll(token(user, None), vec![]).await;
    let sent = publish(
        json!({"user_id": user.0, "event": "typing", "data": {"sender_id": 1, "is_typing": true}}),
    )
    .await;
    let id = sent["published"][0]["id"].as_str().unwrap().to_owned();
    let first = poll(token(user, None), vec![("ack", "none-yet".to_owned())]).await;
    assert_eq!(first["events"][0]["id"], id.as_str(), "{first}");
    let after = poll(token(user, None), vec![("ack", id)]).await;
    assert_eq!(after["events"], json!([]), "{after}");

    // A user who moved college: the old binding is removed (the binding record).
    let (user, old, new) = (unique_user(), unique_college(), unique_college());
    poll(token(user, Some(old)), vec![]).await;
    poll(token(user, Some(new)), vec![]).await;
    let notice = |college: CollegeId| json!({"college_id": college.0, "event": "notification", "data": {"title": "t", "message": "m"}});
    assert_eq!(publish(notice(old)).await["published"][0]["routed"], false);
    assert_eq!(publish(notice(new)).await["published"][0]["routed"], true);

    // With users on several brokers, it records this broker's place among them (the shard
    // record), and the broker holds it to that record.
    let shard = RabbitBroker::new(&Config::new(&url, None, &unique_name("shard-record")));
    let table = SlotTable::even(2).unwrap();
    let record = ShardRecord::of(&table, 1);
    shard
        .claim_shard(&record)
        .await
        .expect("the user may record the shard");
    shard.claim_shard(&record).await.expect("and find it again");
    let other = shard.claim_shard(&ShardRecord::of(&table, 0)).await;
    assert!(
        matches!(&other, Err(BrokerError::Refused { reason, .. }) if reason.contains("inequivalent arg")),
        "{other:?}"
    );

    // Nothing else: another queue or exchange, or another's queue.
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let refused = async |what: &str, result: lapin::Result<()>| {
        let error = result.expect_err(what).to_string();
        assert!(error.contains("ACCESS_REFUSED"), "{what}: {error}");
    };
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            "not_longpoll".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    refused("declare another queue", declared.map(drop)).await;
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .exchange_declare(
            "not.longpoll".into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    refused("declare another exchange", declared).await;
    let admin = Connection::connect(&node.url(), ConnectionProperties::default())
        .await
        .unwrap();
    admin
        .create_channel()
        .await
        .unwrap()
        .queue_declare(
            "someone_else".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let got = channel
        .basic_get("someone_else".into(), BasicGetOptions::default())
        .await;
    refused("read another's queue", got.map(drop)).await;

    // Delete removes the user; a second Delete (a rollback after it) still succeeds.
    let deleted = custom_resource("Delete", &node, &moto, &password);
    assert_eq!(deleted["Status"], "SUCCESS", "{deleted}");
    assert!(!node.ctl(&["list_users"]).contains(USER));
    let again = custom_resource("Delete", &node, &moto, &password);
    assert_eq!(again["Status"], "SUCCESS", "{again}");
}
