//! The local server's metrics: every metric of [`longpoll::metrics`] as Prometheus text
//! at `GET /metrics`, on a listener of its own (`--metrics-addr`, loopback by default),
//! so that the public port never shows them. Exposing them further is a deliberate
//! act: bind a private interface that only the scraper reaches.

use std::{future, net::SocketAddr, time::Duration};

use axum::{Router, http::header, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::edge;

/// Where `/metrics` is served unless `--metrics-addr` says otherwise (`off` for nowhere).
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// Histogram buckets, in seconds: a delivery or a broker round trip takes milliseconds;
/// the top buckets catch a poll's set-up waiting out a broker outage.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Scrapers connected at once: a handful of Prometheus servers, not browsers.
const MAX_SCRAPERS: usize = 16;

/// How often recorded histogram values are folded into their buckets when nobody
/// scrapes, so that memory stays bounded between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder for the whole process; its handle renders the text.
/// A second call (tests) keeps the first recorder and answers `None`.
pub fn install() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .expect("the buckets are not empty")
        .build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).ok()?;
    longpoll::metrics::describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Some(handle)
}

/// Serves `GET /metrics` from `handle` on `listener` for as long as the process runs.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let text = handle.render();
            async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
        }),
    );
    let limits = edge::Limits {
        max_connections: MAX_SCRAPERS,
        ..edge::Limits::for_hold(Duration::ZERO)
    };
    edge::serve(listener, router, limits, future::pending()).await;
}
