//! The operator CLI, run as a user would run it, against the local RabbitMQ.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    time::Duration,
};

use longpoll::token::TokenVerifier;
use longpoll_testkit::*;
use tokio::time::Instant;

fn longpoll(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_longpoll"))
        .args(args)
        .env_remove("AMQP_URL")
        .output()
        .expect("runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_rabbitmq_passes_against_the_local_broker() {
    // --declare-exchange: on a fresh broker no function has declared it yet.
    let output = longpoll(&["check-rabbitmq", "--url", &amqp_url(), "--declare-exchange"]);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("[ok] server       RabbitMQ"), "{stdout}");
    for step in ["connect", "round trip", "exchange", "probe queue"] {
        assert!(stdout.contains(&format!("[ok] {step}")), "{step}: {stdout}");
    }
}

#[test]
fn check_rabbitmq_fails_on_a_missing_exchange() {
    let exchange = unique_name("longpoll.missing");
    let output = longpoll(&[
        "check-rabbitmq",
        "--url",
        &amqp_url(),
        "--exchange",
        &exchange,
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stdout).contains("[FAIL] exchange"),
        "{}",
        text(&output.stdout)
    );
    assert!(text(&output.stderr).contains("--declare-exchange"));
}

#[test]
fn check_rabbitmq_explains_a_closed_port() {
    let output = longpoll(&[
        "check-rabbitmq",
        "--url",
        "amqp://guest:guest@127.0.0.1:1/%2f",
    ]);
    assert!(!output.status.success());
    assert!(text(&output.stdout).contains("[FAIL] server"));
    assert!(
        text(&output.stderr).contains("hint: nothing listens there"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn check_rabbitmq_explains_bad_credentials() {
    let output = longpoll(&[
        "check-rabbitmq",
        "--url",
        "amqp://guest:not-the-password@127.0.0.1:5672/%2f",
    ]);
    assert!(!output.status.success());
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("[FAIL] connect") && !stdout.contains("not-the-password"),
        "{stdout}"
    );
    assert!(
        text(&output.stderr).contains("hint: bad credentials"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn token_mints_a_token_the_functions_accept() {
    let output = Command::new(env!("CARGO_BIN_EXE_longpoll"))
        .args(["token", "--user", "42", "--college", "7", "--name", "Ann"])
        .env("JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = text(&output.stdout).trim().to_owned();
    let identity = TokenVerifier::new(JWT_SECRET.as_bytes())
        .verify(&token)
        .unwrap();
    assert_eq!(
        (identity.user_id.0, identity.college_id.map(|c| c.0)),
        (42, Some(7))
    );
    let missing_secret = Command::new(env!("CARGO_BIN_EXE_longpoll"))
        .args(["token", "--user", "1"])
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert!(!missing_secret.status.success());
    assert!(text(&missing_secret.stderr).contains("JWT_SECRET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_the_user_and_tail_sees_it_without_taking_it() {
    let config = config(&unique_name("cli"));
    let broker = rabbit(&config);
    let user = subscriber(unique_user(), None);
    declare(&*broker, &user).await;
    let id = user.user_id.to_string();

    let mut tail = Command::new(env!("CARGO_BIN_EXE_longpoll"))
        .args(["tail", "--url", &amqp_url(), "--user", &id, "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(tail.stderr.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with("Following user."), "{ready}");

    let output = longpoll(&[
        "publish",
        "--url",
        &amqp_url(),
        "--user",
        &id,
        "--event",
        "notification",
        "--data",
        r#"{"title": "Hi", "message": "from the CLI"}"#,
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let (event_id, routed) = stdout.trim().split_once(' ').unwrap();
    assert_eq!(routed, "routed");

    let tailed = tail.wait_with_output().unwrap();
    assert!(tailed.status.success());
    let line: serde_json::Value = serde_json::from_slice(&tailed.stdout).unwrap();
    assert_eq!(line["id"], event_id);
    assert_eq!(line["data"]["message"], "from the CLI");

    let events = broker
        .wait_for_events(
            &user,
            &PollBudget::until(Instant::now() + Duration::from_secs(3)),
        )
        .await
        .unwrap();
    assert_eq!(
        events.len(),
        1,
        "the tail took nothing from the user's queue"
    );
    assert_eq!(events[0].id, event_id);
    // A college publish to a college nobody polls is reported, not an error.
    let output = longpoll(&[
        "publish",
        "--url",
        &amqp_url(),
        "--college",
        &unique_college().to_string(),
        "--event",
        "notification",
        "--data",
        r#"{"title": "t", "message": "m"}"#,
    ]);
    assert!(text(&output.stdout).contains("not routed"));
}

#[test]
fn publish_refuses_bad_events_with_the_field_named() {
    let output = longpoll(&[
        "publish",
        "--user",
        "1",
        "--event",
        "typing",
        "--data",
        r#"{"is_typing": true}"#,
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("data: missing field `sender_id`"),
        "{}",
        text(&output.stderr)
    );
    let output = longpoll(&[
        "publish", "--user", "1", "--event", "typing", "--data", "{nope",
    ]);
    assert!(text(&output.stderr).contains("--data is not JSON"));
    let output = longpoll(&["publish", "--event", "typing", "--data", "{}"]);
    assert!(!output.status.success(), "an audience is required");
}

#[test]
fn every_subcommand_has_help() {
    for command in [
        "check-rabbitmq",
        "publish",
        "tail",
        "token",
        "shard",
        "cost",
    ] {
        let output = longpoll(&[command, "--help"]);
        assert!(output.status.success());
        assert!(
            text(&output.stdout).contains("Usage: longpoll"),
            "{command}"
        );
    }
}

/// Each cost table of the README and of docs/deploy.md (`<!-- longpoll cost ARGS -->`)
/// is `longpoll cost ARGS`'s output, verbatim.
#[test]
fn the_documented_cost_sections_are_the_cost_commands_output() {
    let mut sections = 0;
    for document in ["README.md", "docs/deploy.md"] {
        let path = format!("{}/../{document}", env!("CARGO_MANIFEST_DIR"));
        let text_of_document = std::fs::read_to_string(path).unwrap();
        for block in text_of_document.split("<!-- longpoll cost").skip(1) {
            let (args, rest) = block.split_once(" -->\n").expect("a marker ends its line");
            let section = rest
                .split_once("<!-- /longpoll cost -->")
                .expect("each section is closed")
                .0;
            let mut command = vec!["cost"];
            command.extend(args.split_whitespace());
            let output = longpoll(&command);
            assert!(output.status.success(), "{}", text(&output.stderr));
            assert_eq!(
                section,
                text(&output.stdout),
                "{document}: run `longpoll cost{args}` and paste its output"
            );
            sections += 1;
        }
    }
    assert!(
        sections >= 4,
        "the defaults, the cheapest configuration, and past one broker: {sections}"
    );
}
