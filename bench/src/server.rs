//! Servers the benchmark starts as processes of their own (so their memory is theirs):
//! `longpoll-local`, `longpoll-bench guide-server` (the same server on the guide's
//! algorithm), and Nchan where it is installed. The first two are expected next to this
//! executable (`cargo build --release -p longpoll-local -p longpoll-bench`;
//! `scripts/bench` does). [`Servers::start`] is the one place they are started.

use std::{path::PathBuf, sync::Arc};

use longpoll::{Broker, Config, RabbitBroker};
pub use longpoll_testkit::server::Server;

use crate::nchan::Nchan;

/// What the suite, the comparison and the curves measure, on the broker at `AMQP_URL`:
/// the library itself (which also publishes the loads' events), the local server (with
/// its metrics recorded and served, as it runs by default, and without), the guide's,
/// and Nchan.
pub struct Servers {
    /// The broker both servers use, for the floor's consumers.
    pub amqp_url: String,
    /// Events to the local server and the guide's are published through it (AMQP,
    /// persistent, confirmed), as a backend does.
    pub library: Arc<dyn Broker>,
    pub longpoll: Server,
    /// The local server with no metrics recorder: what the metrics cost.
    pub longpoll_without_metrics: Server,
    pub guide: Server,
    /// `None` where nginx with Nchan is not installed: the rows have no ratio.
    pub nchan: Option<Nchan>,
}

impl Servers {
    /// Starts every server, each answering by the time this returns.
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
        let nchan = match Nchan::unavailable() {
            None => Some(Nchan::start().await),
            Some(why) => {
                eprintln!("  no yardstick: {why}");
                None
            }
        };
        Self {
            amqp_url,
            library,
            longpoll,
            longpoll_without_metrics,
            guide,
            nchan,
        }
    }
}

/// A program built next to this executable (the same target directory and profile).
pub fn sibling(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("the running executable's path");
    me.with_file_name(name)
}
