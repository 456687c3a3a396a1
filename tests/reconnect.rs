//! The shared connection survives the broker closing it: a held poll reconnects within
//! its hold, and the next request finds the fresh connection.
//! Each test closes only its own connection (found by its client-provided name), so
//! the other tests on the shared broker are untouched.

use std::time::Duration;

use longpoll::topology::Audience;
use longpoll_testkit::*;
use serde_json::json;
use tokio::time::Instant;

/// Polls `user` through the handler, as the Lambda would.
async fn poll_as(app: &longpoll::App, token: &str) -> lambda_http::Response<lambda_http::Body> {
    poll_events::handle(
        app,
        Fixture::new("poll-events")
            .authorization(&format!("Bearer {token}"))
            .request(),
    )
    .await
    .unwrap()
}

/// Waits until the broker no longer lists a connection named `name`.
async fn wait_until_closed(name: &str) {
    for _ in 0..50 {
        let listing = rabbitmqctl(&["list_connections", "-q", "client_properties"]);
        if !listing.contains(name) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("connection {name} is still open");
}

async fn the_next_poll_after_a_closed_connection_works(make: MakeBroker) {
    let name = unique_name("reconnect");
    let config = config(&name);
    let app = app(config.clone(), make(&config), Duration::from_millis(500));
    let producer = rabbit(&longpoll_testkit::config(&unique_name(
        "reconnect-producer",
    )));
    let user = subscriber(unique_user(), None);
    let token = token(user.user_id, None);

    assert_eq!(
        poll_as(&app, &token).await.status(),
        200,
        "first poll declares the queue"
    );
    close_connection(&name);
    wait_until_closed(&name).await;

    let receipt = publish(&*producer, Audience::User(user.user_id), &message(1)).await;
    assert!(receipt.routed, "the queue outlived the connection");
    let response = poll_as(&app, &token).await;
    assert_eq!(response.status(), 200);
    let body = json_of(&response);
    assert_eq!(body["events"][0]["id"], json!(receipt.id));
    // And the fresh connection is reused from then on: still exactly one of ours.
    assert_eq!(poll_as(&app, &token).await.status(), 200);
    let listing = rabbitmqctl(&["list_connections", "-q", "client_properties"]);
    assert_eq!(listing.matches(&name).count(), 1);
}

async fn a_connection_closed_mid_hold_reconnects_within_the_hold(make: MakeBroker) {
    let name = unique_name("reconnect");
    let config = config(&name);
    let app = app(config.clone(), make(&config), Duration::from_secs(5));
    let producer = rabbit(&longpoll_testkit::config(&unique_name(
        "reconnect-producer",
    )));
    let user = subscriber(unique_user(), None);
    let token = token(user.user_id, None);
    declare(&*app.broker, &user).await;

    let held = {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            (poll_as(&app, &token).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    close_connection(&name);
    // Published while the poll's connection is gone: the durable queue keeps it, and the
    // held poll, reconnected (as it would be to a live cluster node), delivers it.
    publish(&*producer, Audience::User(user.user_id), &message(2)).await;
    let (response, took) = held.await.unwrap();
    assert!(
        took < Duration::from_secs(5),
        "the held poll answered within its hold ({took:?})"
    );
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(&response)["events"][0]["data"]["id"], 2);
}

/// The broker closing the connection only concerns RabbitMQ: with one consumer per poll
/// and with lingering consumers (the local server's), whose buffered events the broker
/// must requeue.
mod rabbitmq {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_poll_after_a_closed_connection_works() {
        super::the_next_poll_after_a_closed_connection_works(longpoll_testkit::rabbit).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_closed_mid_hold_reconnects_within_the_hold() {
        super::a_connection_closed_mid_hold_reconnects_within_the_hold(longpoll_testkit::rabbit)
            .await
    }
}

mod rabbitmq_lingering {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_poll_after_a_closed_connection_works() {
        super::the_next_poll_after_a_closed_connection_works(longpoll_testkit::rabbit_lingering)
            .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_closed_mid_hold_reconnects_within_the_hold() {
        super::a_connection_closed_mid_hold_reconnects_within_the_hold(
            longpoll_testkit::rabbit_lingering,
        )
        .await
    }
}
