//! `cargo run -p longpoll-local`: every endpoint on its real path on 127.0.0.1:9000.

use std::{net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;
use longpoll::{
    Config,
    token::TokenIssuer,
    topology::{CollegeId, UserId},
};
use longpoll_local::{
    BrokerKind, DEV_JWT_SECRET, DEV_PUBLISH_KEY, Functions, cors, demo, edge, metrics, serve_within,
};

/// Every long-polling endpoint on its real path, in one process: in-memory events by
/// default, RabbitMQ when AMQP_URL is set.
#[derive(Parser)]
#[command(name = "longpoll-local", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:9000")]
    addr: SocketAddr,
    /// Origins allowed to call the API from a browser, comma-separated; `*` for any.
    #[arg(long, env = "CORS_ORIGINS", default_value = "*", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Most connections open at once (lowered to fit the file-descriptor limit); past
    /// it, new connections get 503.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = edge::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds a client gets to send a request's headers (10 at most).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=10))]
    header_read_timeout_secs: u64,
    /// Where to serve `GET /metrics` (Prometheus text), apart from the API; `off` for
    /// nowhere. Keep it on loopback or a private interface: it is not authenticated.
    /// [default: 127.0.0.1:9464, skipped with a warning when taken]
    #[arg(long, env = "METRICS_ADDR")]
    metrics_addr: Option<MetricsAddr>,
    /// Threads that run the handlers. One keeps a delivery, the poll it wakes and the
    /// answer on one thread, with no hand-over between threads on the way, and leaves
    /// the other cores to the broker; raise it when the server's CPU nears one core.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: u16,
}

/// `--metrics-addr`: an address, or `off`.
#[derive(Clone, Copy)]
enum MetricsAddr {
    On(SocketAddr),
    Off,
}

impl std::str::FromStr for MetricsAddr {
    type Err = std::net::AddrParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "off" => Ok(MetricsAddr::Off),
            address => address.parse().map(MetricsAddr::On),
        }
    }
}

fn main() -> ExitCode {
    longpoll::telemetry::init();
    let args = Args::parse();
    let ran = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads.into())
        .enable_all()
        .build()
        .map_err(Box::from)
        .and_then(|runtime| runtime.block_on(run(args)));
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        // Said as a sentence (a configuration error names the variable), not as a
        // debug dump.
        Err(error) => {
            eprintln!("longpoll-local: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load("longpoll-local").await?;
    let kind = if config.amqp_url_given {
        BrokerKind::RabbitMq
    } else {
        BrokerKind::Memory
    };
    // What the banner says of the metrics: their URL, or why there are none. Installed
    // before the broker is built, so its first connections (the shard checks) count.
    let metrics = match args.metrics_addr {
        Some(MetricsAddr::On(address)) => serve_metrics(address).await?,
        // The default port may be taken by a second server on the same machine: that one
        // runs without metrics rather than not at all, and its banner says so.
        None => serve_metrics(metrics::DEFAULT_METRICS_ADDR)
            .await
            .unwrap_or_else(|error| {
                format!(
                    "off (cannot listen on {}: {error})",
                    metrics::DEFAULT_METRICS_ADDR
                )
            }),
        Some(MetricsAddr::Off) => "off".to_owned(),
    };
    let using_dev_secret = config.jwt_secret.is_none();
    let functions = Arc::new(Functions::new(config, kind).await?);
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let base = format!("http://{}", listener.local_addr()?);
    print_banner(&functions, &base, &metrics, using_dev_secret).await;
    let limits = edge::Limits {
        max_connections: args.max_connections,
        header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
        ..edge::Limits::for_hold(functions.app.config.poll_timeout)
    }
    .fitted_to_descriptors();
    serve_within(
        listener,
        functions,
        cors(&args.cors_origins),
        limits,
        shutdown_signal(),
    )
    .await?;
    println!("stopped");
    Ok(())
}

/// Serves `/metrics` on `address`; its URL.
async fn serve_metrics(address: SocketAddr) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let url = format!("http://{}/metrics", listener.local_addr()?);
    let handle = metrics::install().expect("the first recorder of the process");
    tokio::spawn(metrics::serve(listener, handle));
    Ok(url)
}

async fn print_banner(functions: &Functions, base: &str, metrics: &str, using_dev_secret: bool) {
    let config = &functions.app.config;
    println!("longpoll-local listening on {base}");
    match functions.kind {
        BrokerKind::Memory => println!("broker: in memory (set AMQP_URL to use RabbitMQ)"),
        BrokerKind::RabbitMq => {
            let url = match config.sharded() {
                false => config.redacted_amqp_url(),
                true => format!(
                    "{} brokers, users placed by slot ({}): {}",
                    config.amqp_urls.len(),
                    config.slots.to_setting(),
                    config
                        .amqp_urls
                        .iter()
                        .map(|url| longpoll::config::redact_url(url))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            // Any operation connects; an empty presence lookup is the cheapest one.
            match functions.broker.is_online(&[], None).await {
                Ok(_) => println!("broker: RabbitMQ at {url}"),
                Err(error) => println!(
                    "broker: RabbitMQ at {url} — not reachable yet ({error}); requests answer 503 until it is"
                ),
            }
        }
    }
    println!();
    // Tokens and the key are printed only while they are the development ones: with a
    // real secret or key, the banner (often kept in a log) must not leak either.
    let alice = if using_dev_secret {
        println!(
            "JWT_SECRET is not set: tokens are signed with the development secret {DEV_JWT_SECRET:?}"
        );
        let issuer = TokenIssuer::new(config.require_jwt_secret().expect("set by Functions::new"));
        let day = Duration::from_secs(24 * 3600);
        let [(alice_id, alice_name), (bob_id, bob_name)] = demo::DEMO_USERS;
        let college = Some(CollegeId(demo::DEMO_COLLEGE));
        let alice = issuer.mint(UserId(alice_id), college, Some(alice_name), day);
        let bob = issuer.mint(UserId(bob_id), college, Some(bob_name), day);
        println!("user 1 (Alice, college 1) token: {alice}");
        println!("user 2 (Bob, college 1) token:   {bob}");
        alice
    } else {
        println!(
            "JWT_SECRET is set: sign user tokens with it (HS256; claims sub, exp, college_id)."
        );
        "<TOKEN>".to_owned()
    };
    let key = match config.publish_api_key.as_deref() {
        Some(DEV_PUBLISH_KEY) => DEV_PUBLISH_KEY,
        Some(_) => "<PUBLISH_API_KEY>",
        None => "(IAM)",
    };
    println!("publish key (X-Api-Key):          {key}");
    println!("metrics (Prometheus text):        {metrics}");
    println!();
    println!("See it work: open {base}/demo/ (Alice and Bob chatting through the browser client).");
    println!();
    println!("Or with curl. In one terminal, poll as Alice (it waits up to 5.5 s):");
    println!(
        "  curl -s '{base}/api/v1/communication/poll/events/' -H 'Authorization: Bearer {alice}'"
    );
    println!("In another, publish her a message; the first one answers at once:");
    println!(
        "  curl -s -X POST '{base}/api/v1/communication/events/' -H 'X-Api-Key: {key}' -H 'Content-Type: application/json' \\\n    -d '{{\"user_id\": 1, \"event\": \"message\", \"data\": {{\"id\": 1, \"sender_id\": 2, \"sender_name\": \"Bob\", \"message\": \"Hello!\"}}}}'"
    );
    println!();
}

/// Ctrl-C or SIGTERM. Held polls then answer within their hold (5.5 s at most; the
/// server returns 2 s after that whatever the sockets do); a second signal of either
/// kind quits at once.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    println!("shutting down: held polls answer within their hold (signal again to quit now)");
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        println!("second signal: quitting now");
        std::process::exit(130);
    });
}
