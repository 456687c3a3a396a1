//! Servers the benchmark starts as processes of their own (so their memory is theirs):
//! `longpoll-local`, and `longpoll-bench guide-server`, the same server on the guide's
//! algorithm. Both are expected next to this executable (`cargo build --release -p
//! longpoll-local -p longpoll-bench`; `scripts/bench` does).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use longpoll::{Broker, Config, RabbitBroker};
use longpoll_testkit::watch::free_port;
use tokio::time::Instant;

/// What the suite and the comparison measure, on the broker at `AMQP_URL`: the library
/// itself (which also publishes the loads' events), the local server (with its metrics
/// recorded and served, as it runs by default, and without) and the guide's.
pub struct Contenders {
    pub amqp_url: String,
    pub library: Arc<dyn Broker>,
    pub longpoll: Server,
    pub longpoll_without_metrics: Server,
    pub guide: Server,
}

impl Contenders {
    pub async fn start() -> Self {
        let amqp_url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| longpoll::config::DEFAULT_AMQP_URL.to_owned());
        let library: Arc<dyn Broker> = Arc::new(RabbitBroker::new(&Config::new(
            &amqp_url,
            None,
            "longpoll-bench",
        )));
        let env = [("AMQP_URL", amqp_url.as_str())];
        let with_metrics = [("METRICS_ADDR", "127.0.0.1:0"), env[0]];
        let longpoll = Server::start(sibling("longpoll-local"), &[], &with_metrics).await;
        let without = [("METRICS_ADDR", "off"), env[0]];
        let longpoll_without_metrics =
            Server::start(sibling("longpoll-local"), &[], &without).await;
        let me = std::env::current_exe().expect("the running executable's path");
        let guide = Server::start(me, &["guide-server"], &env).await;
        Self {
            amqp_url,
            library,
            longpoll,
            longpoll_without_metrics,
            guide,
        }
    }
}

/// A server process on a free loopback port; killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    pub pid: u32,
}

impl Server {
    /// Starts `program args` with `LISTEN_ADDR` set to a free port and waits until it
    /// answers `poll/test/`.
    pub async fn start(program: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let child = Command::new(&program)
            .args(args)
            .envs(env.iter().copied())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", program.display()));
        let server = Server {
            pid: child.id(),
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let started = Instant::now();
        let probe = format!("{}/api/v1/communication/poll/test/", server.url);
        while !client
            .get(&probe)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} did not start",
                program.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program built next to this executable (the same target directory and profile).
pub fn sibling(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("the running executable's path");
    me.with_file_name(name)
}
