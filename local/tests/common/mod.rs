//! What the local server's tests share.

use std::sync::Arc;

use longpoll::Config;
use longpoll_local::{BrokerKind, Functions, cors, serve};

/// Serves the functions for `config` on `kind` on a free loopback port, to any origin,
/// until the test ends; the base URL.
pub async fn start(config: Config, kind: BrokerKind) -> String {
    let functions = Arc::new(Functions::new(config, kind).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        functions,
        cors(&["*".to_owned()]),
        std::future::pending(),
    ));
    base
}
