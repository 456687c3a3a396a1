//! The load's events: published at a steady rate to random users, by whichever way the
//! contender takes them (the publish endpoint, the library over AMQP, Nchan's `/pub/`).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use longpoll::{
    Broker,
    broker::Publication,
    event::EventBody,
    topology::{Audience, UserId},
};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::ledger::Ledger;
use crate::stats;

/// Where a load's events are published: what a [`super::Contender`] implies.
#[derive(Clone)]
pub(super) enum Publisher {
    /// `POST /api/v1/communication/events/` on the server at `url`.
    Endpoint { url: String, api_key: String },
    /// Straight to the broker through the library (persistent, confirmed), as a
    /// backend publishing over AMQP does.
    Library(Arc<dyn Broker>),
    /// `POST /pub/<user>` on Nchan at `url`.
    Nchan { url: String },
}

/// Publishes `rate` events a second for `window`, each to a random user of
/// `base..base + users`, each in a task of its own so a slow publish does not slow the
/// rate. A failed publish is retried (same sequence number) until the window ends.
/// Returns the failed attempts by status.
pub(super) async fn publish_steadily(
    client: reqwest::Client,
    via: Publisher,
    ledger: Arc<Mutex<Ledger>>,
    (base, users): (u64, u64),
    rate: u64,
    window: Duration,
) -> BTreeMap<u16, usize> {
    let failures = Arc::new(Mutex::new(BTreeMap::new()));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let mut tasks = Vec::new();
    let mut seq = 0u64;
    while started.elapsed() < window {
        tick.tick().await;
        let user = UserId(base + (stats::fraction(seq) * users as f64) as u64 % users);
        let (client, via, ledger, failures) = (
            client.clone(),
            via.clone(),
            ledger.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            ledger.lock().unwrap().publishing(seq);
            loop {
                // The same id on every attempt: an attempt that failed after the broker
                // took the event (its confirm lost with the connection) and its retry
                // reach the user as one event once de-duplicated by id.
                let id = format!("bench-{base}-{seq}");
                match publish_one(&client, &via, user, seq, &id).await {
                    Ok(routed) => {
                        ledger.lock().unwrap().published(seq, routed);
                        return;
                    }
                    Err(status) => {
                        *failures.lock().unwrap().entry(status).or_default() += 1;
                        if started.elapsed() >= window {
                            ledger.lock().unwrap().abandoned(seq);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
        seq += 1;
    }
    for task in tasks {
        let _ = task.await;
    }
    Arc::try_unwrap(failures).unwrap().into_inner().unwrap()
}

/// One event; whether it was routed, or the failed attempt's status (0: no response).
async fn publish_one(
    client: &reqwest::Client,
    via: &Publisher,
    user: UserId,
    seq: u64,
    id: &str,
) -> Result<bool, u16> {
    match via {
        Publisher::Endpoint { url, api_key } => {
            let mut body = message_json(seq);
            body["user_id"] = json!(user.0);
            body["id"] = json!(id);
            let response = client
                .post(format!("{url}/api/v1/communication/events/"))
                .header("x-api-key", api_key)
                .json(&body)
                .send()
                .await
                .map_err(|_| 0u16)?;
            if response.status() != 200 {
                return Err(response.status().as_u16());
            }
            let reply: Value = response.json().await.map_err(|_| 0u16)?;
            Ok(reply["published"][0]["routed"] == true)
        }
        Publisher::Nchan { url } => {
            let mut body = message_json(seq);
            body["id"] = json!(id);
            let response = client
                .post(format!("{url}/pub/{}", user.0))
                .json(&body)
                .send()
                .await
                .map_err(|_| 0u16)?;
            // 201: a subscriber was waiting; 202: the message was queued for one.
            match response.status().as_u16() {
                201 | 202 => Ok(true),
                status => Err(status),
            }
        }
        Publisher::Library(broker) => {
            let mut event = message(seq).prepare();
            event.id = id.to_owned();
            let publication = Publication {
                audience: Audience::User(user),
                event,
            };
            let receipts = broker.publish(&[publication]).await.map_err(|_| 503u16)?;
            Ok(receipts[0].routed)
        }
    }
}

/// The benchmark's event: a chat message whose `sender_id` is its sequence number.
pub fn message(seq: u64) -> EventBody {
    serde_json::from_value(message_json(seq)).expect("a valid message event")
}

/// The benchmark's event as a producer's JSON (the publish endpoint's body item).
pub fn message_json(seq: u64) -> Value {
    json!({"event": "message", "data": {"id": seq, "sender_id": seq, "sender_name": "bench", "message": "hello"}})
}
