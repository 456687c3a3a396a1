//! The soak, one minute of it (`scripts/bench soak` runs ten): 1,000 pollers in cursor
//! mode against the local server on a private RabbitMQ node, events published through
//! the endpoint at 50 a second, and every broker connection killed every 15 s. No event
//! may be lost or duplicated (after de-duplication by id), and no 5xx but 503 may come
//! back.

use std::{sync::Arc, time::Duration};

use longpoll::Config;
use longpoll_bench::soak::{SoakOptions, run};
use longpoll_local::{BrokerKind, Functions, cors, serve};
use longpoll_testkit::private_node::PrivateNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_pollers_and_connection_kills_loses_and_duplicates_nothing() {
    let node = PrivateNode::start(None);
    let config = Config::new(&node.url(), None, "longpoll-local");
    let functions = Arc::new(Functions::new(config, BrokerKind::RabbitMq).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        functions,
        cors(&[]),
        std::future::pending(),
    ));

    let report = run(SoakOptions {
        url,
        pollers: 1000,
        seconds: 60,
        publish_rate: 50,
        kill_every: Duration::from_secs(15),
        node: node.name(),
        // The server runs in this process: its RSS includes the pollers'.
        server_pid: Some(std::process::id()),
        cursor: true,
    })
    .await;
    report.print();

    assert!(
        report.kills >= 3,
        "the connections were killed during the soak"
    );
    assert!(
        report.load.published >= 2000,
        "events were published throughout"
    );
    assert_eq!(report.load.lost, 0, "no event lost");
    assert_eq!(report.load.duplicated, 0, "no event duplicated");
    assert_eq!(report.unexpected_server_errors(), 0, "no 5xx but 503");
}
