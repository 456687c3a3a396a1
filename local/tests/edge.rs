//! The local server's HTTP edge under hostile clients, on RabbitMQ: half-sent headers,
//! more sockets than it may hold, shutdown with sockets that never finish, one user
//! opening poll after poll, and the log during a broker outage.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use longpoll::{config::DEV_JWT_SECRET, token::TokenIssuer, topology::UserId};
use longpoll_local::{BrokerKind, Functions, cors, edge, serve_within};
use longpoll_testkit::{amqp_url, config, private_node::PrivateNode, unique_name, unique_user};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const POLL: &str = "/api/v1/communication/poll/events/";

fn dev_token(user: UserId) -> String {
    TokenIssuer::new(DEV_JWT_SECRET.as_bytes()).mint(user, None, None, Duration::from_secs(600))
}

/// The binary, with its output collected line by line.
struct Server {
    child: Child,
    base: String,
    output: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_longpoll-local"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env("AMQP_URL", amqp_url())
            .env_remove("JWT_SECRET")
            .env("LOG_FORMAT", "text")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let base = first.rsplit(' ').next().unwrap().to_owned();
        let output = Arc::new(Mutex::new(vec![first]));
        let sink = output.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            base,
            output,
        }
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    fn lines_with(&self, text: &str) -> usize {
        let output = self.output.lock().unwrap();
        output.iter().filter(|line| line.contains(text)).count()
    }

    fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Waits up to `limit` for the process to exit; how long it took.
    fn wait_exit(&mut self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.child.try_wait().unwrap().is_some() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headers that never finish are cut off at the header-read timeout; an idle
/// keep-alive connection too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_cut_off() {
    assert!(edge::HEADER_READ_TIMEOUT <= Duration::from_secs(10));
    let server = Server::start(&["--header-read-timeout-secs", "1"], &[]);
    let mut slow = TcpStream::connect(server.addr()).await.unwrap();
    slow.write_all(b"GET /api/v1/communication/poll/test/ HTTP/1.1\r\nHost: x\r\nX-Pad: aaaa")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "the socket was still open after 5 s");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let client = reqwest::Client::new();
    let ok = client
        .get(format!("{}/api/v1/communication/poll/test/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "the server still serves");
}

/// Past the connection cap, new connections get 503 at once and one log line says so;
/// once the idle sockets are cut off, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_new_connections_are_shed_with_one_log_line() {
    let server = Server::start(
        &["--max-connections", "20", "--header-read-timeout-secs", "2"],
        &[],
    );
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..50 {
        let mut shed = TcpStream::connect(server.addr()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(2), shed.read_to_string(&mut answer))
            .await
            .expect("answered at once")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("Retry-After: 2") && answer.contains("too_many_connections"));
    }
    assert_eq!(server.lines_with("connection cap reached"), 1);

    // The idle sockets are cut off by the header-read timeout; the server has room again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let client = reqwest::Client::new();
    let ok = client
        .get(format!("{}/api/v1/communication/poll/test/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    drop(idle);
}

/// SIGTERM with a socket that never finishes its headers and a held poll: the poll
/// answers, and the process exits within the hold plus 2 s. A second signal quits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_completes_within_the_hold_plus_two_seconds() {
    let hold = Duration::from_millis(1500);
    let mut server = Server::start(&[], &[("POLL_TIMEOUT_MS", "1500")]);
    let mut stuck = TcpStream::connect(server.addr()).await.unwrap();
    stuck
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let held = {
        let (client, url, token) = (
            client.clone(),
            format!("{}{POLL}", server.base),
            dev_token(unique_user()),
        );
        tokio::spawn(async move { client.get(url).bearer_auth(token).send().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("-TERM");
    let took = server
        .wait_exit(hold + Duration::from_secs(4))
        .expect("the process exited");
    assert!(
        took <= hold + Duration::from_secs(2),
        "exited after {took:?}"
    );
    assert_eq!(
        held.await.unwrap().unwrap().status(),
        200,
        "the held poll answered"
    );

    let mut server = Server::start(&[], &[("POLL_TIMEOUT_MS", "5000")]);
    let _stuck = TcpStream::connect(server.addr()).await.unwrap();
    server.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.signal("-TERM");
    let took = server
        .wait_exit(Duration::from_secs(3))
        .expect("a second SIGTERM quits");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// One user may hold `MAX_POLLS_PER_USER` polls at once; the next gets 429 with
/// `Retry-After`, and other users are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_holds_at_most_the_per_user_cap() {
    let mut config = config(&unique_name("edge"));
    config.jwt_secret = None;
    config.max_polls_per_user = 3;
    config.poll_timeout = Duration::from_secs(2);
    let functions = Arc::new(Functions::new(config, BrokerKind::RabbitMq).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let limits = edge::Limits::for_hold(Duration::from_secs(2));
    tokio::spawn(serve_within(
        listener,
        functions,
        cors(&["*".to_owned()]),
        limits,
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    let poll = |token: String| {
        let (client, url) = (client.clone(), format!("{base}{POLL}"));
        tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.unwrap() })
    };
    let greedy = dev_token(unique_user());
    let held: Vec<_> = (0..3).map(|_| poll(greedy.clone())).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = poll(greedy.clone()).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "2");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_polls");
    let other = poll(dev_token(unique_user())).await.unwrap();
    assert_eq!(other.status(), 200, "another user is not affected");
    for held in held {
        assert_eq!(held.await.unwrap().status(), 200);
    }
    assert_eq!(
        poll(greedy).await.unwrap().status(),
        200,
        "answered polls free their places"
    );
}

/// A broker outage fails every request, but the log gets about one line a second for
/// it, not one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_logs_a_line_a_second_not_one_per_request() {
    let node = PrivateNode::start(None);
    node.stop_app();
    let url = node.url();
    let server = Server::start(&[], &[("AMQP_URL", &url), ("AMQP_TIMEOUT_MS", "300")]);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut answers = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let batch: Vec<_> = (0..20)
            .map(|_| {
                let (client, url, token) = (
                    client.clone(),
                    format!("{}{POLL}", server.base),
                    dev_token(unique_user()),
                );
                tokio::spawn(
                    async move { client.get(url).bearer_auth(token).send().await.unwrap() },
                )
            })
            .collect();
        for response in batch {
            assert_eq!(response.await.unwrap().status(), 503);
            answers += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let warnings = server.lines_with("WARN");
    assert!(answers >= 100, "{answers} answers");
    assert!(
        warnings <= 12,
        "{warnings} warning lines for {answers} failed requests in 3 s"
    );
}
