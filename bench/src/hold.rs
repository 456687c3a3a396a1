//! What a longer hold costs, measured with the real browser client: a local server per
//! hold (`POLL_TIMEOUT_MS`), the client of `clients/js` running in Node
//! (`bench/clients/hold-client.mjs`, cursor mode, its own device), and between them a
//! proxy that can swallow one answer and leave the connection open and silent: what a
//! proxy losing a response, or a connection dying without a reset, looks like to a
//! browser.
//!
//! - *Delivery*: events published (through the library, as a backend does) at random
//!   moments of a held poll, timed from the publish to the client's handler.
//! - *A lost answer*: while a poll is held, the proxy is armed and an event published;
//!   the server answers it, the client never sees the answer. The client notices when
//!   its health timeout (the hold the server named, plus 4.5 s) ends the poll, polls
//!   again without acknowledging the event, and the server hands it over again. Timed:
//!   from the publish to the client's next request, and to the event in its handler.
//!
//! In the guide's mode (no `ack`) the swallowed event is gone whatever the hold; the
//! client polls in cursor mode by default, as measured here.

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use longpoll::{
    Broker, Config, RabbitBroker, config::DEV_JWT_SECRET, token::TokenIssuer, topology::Audience,
};
use longpoll_testkit::{message, publish, unique_user};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::Instant,
};

use crate::{
    server::{Server, sibling},
    stats::{fraction, median, ms},
};

/// What `longpoll-bench hold` measures.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// The holds compared, seconds.
    #[arg(long, value_delimiter = ',', default_value = "5.5,25")]
    pub holds: Vec<f64>,
    /// Events timed for delivery at each hold.
    #[arg(long, default_value_t = 20)]
    pub deliveries: usize,
    /// Answers swallowed at each hold.
    #[arg(long, default_value_t = 3)]
    pub lost: usize,
}

/// One hold's figures, in ms.
struct Figures {
    hold: f64,
    delivery: Vec<f64>,
    noticed: Vec<f64>,
    recovered: Vec<f64>,
}

pub async fn run(options: Options) {
    let amqp_url =
        std::env::var("AMQP_URL").unwrap_or_else(|_| longpoll::config::DEFAULT_AMQP_URL.to_owned());
    let library: Arc<dyn Broker> = Arc::new(RabbitBroker::new(&Config::new(
        &amqp_url,
        None,
        "longpoll-bench hold",
    )));
    let mut all = Vec::new();
    for &hold in &options.holds {
        all.push(measure(&amqp_url, library.as_ref(), hold, &options).await);
    }
    library.close().await;
    print(&all);
}

async fn measure(amqp_url: &str, library: &dyn Broker, hold: f64, options: &Options) -> Figures {
    let hold_ms = (hold * 1000.0).round() as u64;
    let env = [
        ("AMQP_URL", amqp_url),
        ("POLL_TIMEOUT_MS", &hold_ms.to_string()),
        ("METRICS_ADDR", "off"),
    ];
    let server = Server::start(sibling("longpoll-local"), &[], &env).await;
    let proxy = Proxy::start(server.url.trim_start_matches("http://")).await;
    let user = unique_user();
    let token = TokenIssuer::new(DEV_JWT_SECRET.as_bytes()).mint(
        user,
        None,
        None,
        Duration::from_secs(3600),
    );
    let mut client = Client::start(&format!("{}/api/v1/communication", proxy.url), &token);
    client.live().await;
    let mut sequence = 0;
    let mut next_event = || {
        sequence += 1;
        sequence
    };

    let mut delivery = Vec::new();
    for i in 0..options.deliveries {
        // Somewhere in the held poll (the first 5 s of it: every hold has them).
        let into_hold = fraction(i as u64) * hold.min(5.0);
        tokio::time::sleep(Duration::from_secs_f64(0.2 + into_hold)).await;
        let n = next_event();
        let published = epoch_ms();
        publish(library, Audience::User(user), &message(n)).await;
        delivery.push(client.received(n).await - published);
    }

    let (mut noticed, mut recovered) = (Vec::new(), Vec::new());
    for _ in 0..options.lost {
        // A poll is held (the last answer went out a moment ago).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = next_event();
        proxy.swallow_next_answer();
        let started = Instant::now();
        let published = epoch_ms();
        publish(library, Audience::User(user), &message(n)).await;
        let requests = proxy.requests_after(started);
        recovered.push(client.received(n).await - published);
        noticed.push(proxy.first_request_after(started, requests).await);
    }
    drop(client);
    Figures {
        hold,
        delivery,
        noticed,
        recovered,
    }
}

fn print(all: &[Figures]) {
    println!(
        "The browser client (clients/js, in Node 20, cursor mode) polling a local server through a proxy, on a private broker; each hold on its own server. Delivery: {} events published at random moments of a held poll. Lost answer: {} times the proxy swallowed the answer carrying an event and left the connection silent.\n",
        all.first().map_or(0, |f| f.delivery.len()),
        all.first().map_or(0, |f| f.noticed.len())
    );
    println!(
        "| hold | delivery p50 / p99 ms | lost answer: client polls again after (median) | lost answer: event in the handler after (median) |"
    );
    println!("|---|---|---|---|");
    for figures in all {
        println!(
            "| {} s | {} / {} | {:.1} s | {:.1} s |",
            figures.hold,
            ms(quantile(&figures.delivery, 0.5)),
            ms(quantile(&figures.delivery, 0.99)),
            median(&figures.noticed) / 1000.0,
            median(&figures.recovered) / 1000.0,
        );
    }
    if let [short, .., long] = all {
        println!(
            "\nDelivery at {} s is {:.2}× its figure at {} s (p50); a lost answer is recovered {:.1} s later ({:.1}× as long).",
            long.hold,
            quantile(&long.delivery, 0.5) / quantile(&short.delivery, 0.5),
            short.hold,
            (median(&long.recovered) - median(&short.recovered)) / 1000.0,
            median(&long.recovered) / median(&short.recovered),
        );
    }
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
        * 1000.0
}

/// The `q` quantile (0..=1) of `values`; NaN when empty.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The client in Node; killed when dropped.
struct Client {
    child: Child,
    lines: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Client {
    fn start(base_url: &str, token: &str) -> Client {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/hold-client.mjs");
        let mut child = Command::new("node")
            .args([script, base_url, token])
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (Node.js 20) runs the browser client");
        let stdout = child.stdout.take().expect("piped");
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(value) = serde_json::from_str(&line) {
                    let _ = sender.send(value);
                }
            }
        });
        Client { child, lines }
    }

    /// Waits until the client's poll is held (status `live`).
    async fn live(&mut self) {
        while let Some(line) = self.lines.recv().await {
            if line["status"] == "live" {
                return;
            }
        }
        panic!("the client exited before it was live");
    }

    /// When (epoch ms) the client's handler got message `n`.
    async fn received(&mut self, n: i64) -> f64 {
        let wait = tokio::time::timeout(Duration::from_secs(90), async {
            while let Some(line) = self.lines.recv().await {
                if line["message"] == n {
                    return line["at"].as_f64().expect("a time");
                }
            }
            panic!("the client exited");
        });
        wait.await
            .unwrap_or_else(|_| panic!("message {n} never reached the client"))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of the server that records when each request starts and can
/// black-hole the next answer: its bytes are dropped and its connection left open.
struct Proxy {
    url: String,
    swallow: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Instant>>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let swallow = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (upstream, armed, seen) = (upstream.to_owned(), swallow.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.expect("the server");
                tokio::spawn(relay(client, server, armed.clone(), seen.clone()));
            }
        });
        Proxy {
            url,
            swallow,
            requests,
        }
    }

    fn swallow_next_answer(&self) {
        self.swallow.store(true, Ordering::SeqCst);
    }

    /// Requests started after `since`, so far.
    fn requests_after(&self, since: Instant) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|at| **at > since)
            .count()
    }

    /// Ms from `since` to the first request after it beyond the `already` counted then.
    async fn first_request_after(&self, since: Instant, already: usize) -> f64 {
        loop {
            let at = {
                let requests = self.requests.lock().unwrap();
                requests
                    .iter()
                    .filter(|at| **at > since)
                    .nth(already)
                    .copied()
            };
            if let Some(at) = at {
                return at.duration_since(since).as_secs_f64() * 1000.0;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Relays one connection both ways; an answer that arrives while `swallow` is armed
/// (and every byte after it on this connection) is dropped.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    swallow: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Instant>>>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let mut buffer = vec![0; 16 * 1024];
        while let Ok(read) = client_read.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            requests.lock().unwrap().push(Instant::now());
            if server_write.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
    });
    let mut buffer = vec![0; 16 * 1024];
    let mut dead = false;
    while let Ok(read) = server_read.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        dead = dead || swallow.swap(false, Ordering::SeqCst);
        if !dead && client_write.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    // A swallowed connection stays open and silent until the client gives up on it.
    let _ = upstream.await;
}
