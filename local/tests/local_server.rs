//! The one-command local server: the end-to-end scenario over HTTP on the memory broker
//! and on RabbitMQ, CORS, the binary's start-up banner and its graceful shutdown.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

mod common;

use longpoll_local::{BrokerKind, DEV_JWT_SECRET, DEV_PUBLISH_KEY, Functions, cors, serve};
use longpoll_testkit::{
    config,
    scenario::{self, Target},
    unique_name,
};

/// Starts the server in process on a free port; returns its base URL.
async fn start(kind: BrokerKind) -> String {
    let mut config = config(&unique_name("local"));
    config.jwt_secret = None; // as a fresh clone runs it: the development secret
    common::start(config, kind).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_passes_on_the_memory_broker() {
    let base = start(BrokerKind::Memory).await;
    scenario::run(&Target {
        base: &base,
        jwt_secret: DEV_JWT_SECRET,
        publish_key: DEV_PUBLISH_KEY,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_passes_on_rabbitmq() {
    let base = start(BrokerKind::RabbitMq).await;
    scenario::run(&Target {
        base: &base,
        jwt_secret: DEV_JWT_SECRET,
        publish_key: DEV_PUBLISH_KEY,
    })
    .await;
}

#[tokio::test]
async fn browsers_on_other_origins_may_poll() {
    let base = start(BrokerKind::Memory).await;
    let client = reqwest::Client::new();
    let preflight = client
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/api/v1/communication/poll/events/"),
        )
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    assert!(
        preflight.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let missing = client.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );
}

#[test]
fn origins_can_be_restricted() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let functions = Arc::new(
            Functions::new(config("cors"), BrokerKind::Memory)
                .await
                .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(serve(
            listener,
            functions,
            cors(&["http://app.local:3000".to_owned()]),
            std::future::pending(),
        ));
        let client = reqwest::Client::new();
        let url = format!("{base}/api/v1/communication/poll/test/");
        let allowed = client
            .get(&url)
            .header("origin", "http://app.local:3000")
            .send()
            .await
            .unwrap();
        assert_eq!(
            allowed.headers()["access-control-allow-origin"],
            "http://app.local:3000"
        );
        // A script on that origin may read the hold and a 503's `Retry-After`.
        let exposed = allowed.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            exposed.contains("retry-after") && exposed.contains("x-poll-hold-ms"),
            "{exposed}"
        );
        let other = client
            .get(&url)
            .header("origin", "http://evil.example")
            .send()
            .await
            .unwrap();
        assert!(other.headers().get("access-control-allow-origin").is_none());
    });
}

/// The banner the binary prints at start, up to its last line.
fn read_banner(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> String {
    let mut banner = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("the first one answers at once");
        banner.push(line);
        if done {
            break;
        }
    }
    banner.join("\n")
}

/// With a real secret and publish key, the banner prints neither, nor any token signed
/// with the secret: banners end up in logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_never_prints_real_secrets() {
    let secret = "a-real-deployment-secret-of-40-bytes-xyz";
    let key = "a-real-publish-key";
    let mut server = Command::new(env!("CARGO_BIN_EXE_longpoll-local"))
        .args(["--addr", "127.0.0.1:0"])
        .env("AMQP_URL", longpoll_testkit::amqp_url())
        .env("JWT_SECRET", secret)
        .env("PUBLISH_API_KEY", key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let banner = read_banner(&mut lines);
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(banner.contains("broker: RabbitMQ"), "{banner}");
    assert!(
        !banner.contains(secret) && !banner.contains(key),
        "{banner}"
    );
    assert!(!banner.contains("eyJ"), "no token is printed: {banner}");
    assert!(banner.contains("<TOKEN>") && banner.contains("<PUBLISH_API_KEY>"));
}

/// The binary as the README runs it: the banner names the broker and prints a working
/// token and curl pair; SIGTERM lets a held poll answer, then the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_what_to_do_and_shuts_down_cleanly() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_longpoll-local"))
        .args(["--addr", "127.0.0.1:0"])
        .env_remove("AMQP_URL")
        .env_remove("JWT_SECRET")
        .env("POLL_TIMEOUT_MS", "3000")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let banner = read_banner(&mut lines);
    assert!(banner.contains("broker: in memory"), "{banner}");
    let base = banner
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    let token = banner
        .lines()
        .find(|line| line.starts_with("user 1 "))
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    assert!(banner.contains(&format!(
        "curl -s '{base}/api/v1/communication/poll/events/' -H 'Authorization: Bearer {token}'"
    )));

    let client = reqwest::Client::new();
    let held = {
        let (client, url, token) = (
            client.clone(),
            format!("{base}/api/v1/communication/poll/events/"),
            token.clone(),
        );
        tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let response = held.await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "the held poll answered during shutdown"
    );
    // The answer names the hold it was served with, for the client's own timeout.
    assert_eq!(response.headers()["x-poll-hold-ms"], "3000");
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["events"],
        serde_json::json!([])
    );
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map(|line| line.unwrap()).collect();
    assert!(rest.iter().any(|line| line == "stopped"), "{rest:?}");
}

/// The demo page and its files, and the OpenAPI document, are served; the demo's config
/// hands out working tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_is_served_with_working_tokens() {
    let base = start(BrokerKind::Memory).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(root.status(), 307);
    assert_eq!(root.headers()["location"], "/demo/");
    for (path, content_type, contains) in [
        ("/demo/", "text/html", "pane.html?user=2"),
        ("/demo/pane.js", "text/javascript", "LongPollingClient"),
        (
            "/demo/longpoll.js",
            "text/javascript",
            "export class LongPollingClient",
        ),
    ] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        assert!(response.text().await.unwrap().contains(contains), "{path}");
    }
    let openapi = client
        .get(format!("{base}/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(openapi.status(), 200);
    assert_eq!(
        openapi.text().await.unwrap(),
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml")).unwrap()
    );
    let config: serde_json::Value = client
        .get(format!("{base}/demo/config.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["publish_key"], DEV_PUBLISH_KEY);
    let bob = &config["users"][1];
    assert_eq!(bob["name"], "Bob");
    let online = client
        .get(format!(
            "{base}/api/v1/communication/poll/online/?user_ids=1"
        ))
        .bearer_auth(bob["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(online.status(), 200, "the demo token is accepted");
}

/// The handlers' threads: one by default, `WORKER_THREADS` of them when set, and a count
/// out of range refused at start with the setting named.
#[test]
fn the_binary_runs_as_many_worker_threads_as_asked() {
    let workers = |threads: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_longpoll-local"));
        command
            .args(["--addr", "127.0.0.1:0", "--metrics-addr", "off"])
            .env_remove("AMQP_URL")
            .env_remove("WORKER_THREADS")
            .stdout(Stdio::piped());
        if let Some(threads) = threads {
            command.env("WORKER_THREADS", threads);
        }
        let mut server = command.spawn().unwrap();
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        read_banner(&mut lines);
        // tokio names its worker threads `tokio-rt-worker`; a thread names itself once
        // it runs, and until then it bears the process's name, as the main thread does.
        let names = || -> Vec<String> {
            let tasks = std::fs::read_dir(format!("/proc/{}/task", server.id())).unwrap();
            tasks
                .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        };
        let started = std::time::Instant::now();
        let mut seen = names();
        while seen.iter().filter(|name| *name == "longpoll-local").count() > 1
            && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(10));
            seen = names();
        }
        let count = seen
            .iter()
            .filter(|name| *name == "tokio-rt-worker")
            .count();
        server.kill().unwrap();
        server.wait().unwrap();
        count
    };
    assert_eq!(workers(None), 1);
    assert_eq!(workers(Some("3")), 3);

    let refused = Command::new(env!("CARGO_BIN_EXE_longpoll-local"))
        .args(["--addr", "127.0.0.1:0"])
        .env("WORKER_THREADS", "0")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("worker-threads"), "{message}");
}
