//! A fire drill for a broker: users polling as browsers do, in cursor mode or the
//! guide's, a backend publishing at a steady rate and retrying failures with the same
//! event, and whatever faults the caller brings; then what the users and the backend saw.
//!
//! The users and the backend reach the broker through a [`Product`]:
//! - [`library::Library`]: the queue crate's `RabbitBroker` driven directly, one
//!   connection per simulated Lambda instance;
//! - [`servers::Servers`]: local servers (`longpoll-local` processes) over HTTP, as a
//!   deployment in containers runs;
//! - [`functions::Functions`]: the `poll-events` and `publish-event` binaries on a
//!   Lambda Runtime API, as Lambda runs them.
//!
//! [`overlap`] is a smaller scene through the same products: two polls of one queue held
//! at once, one of them abandoned by its client.
//!
//! The cluster tests run it small, and `scripts/bench cluster` at production size. Every
//! poll and publish attempt is kept, so a lost event can be followed: [`Report::traces`]
//! tells, for the first few, what was published when and what the user's polls asked
//! for and got (`report`).

pub mod functions;
pub mod library;
pub mod overlap;
mod report;
pub mod servers;

use std::{
    collections::{HashMap, hash_map::Entry},
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use longpoll::{
    config::DEV_JWT_SECRET,
    event::OutgoingEvent,
    token::TokenIssuer,
    topology::{DeviceId, Subscriber},
};
use tokio::time::{Instant, sleep};

pub use self::report::Report;
use self::report::{missing, report};
use crate::{message, unique_user};

/// Users whose first poll (which declares their queue) runs at once before a drill starts.
const DECLARES_AT_ONCE: usize = 100;

/// The load of a drill.
#[derive(Debug, Clone)]
pub struct Load {
    pub users: usize,
    /// Events per second the backend publishes, each to the next user in turn.
    pub rate: u64,
    /// The hold of each poll.
    pub hold: Duration,
    /// How long a client waits after a failed poll or publish (the 503's `Retry-After`).
    pub retry: Duration,
    /// Cursor mode (events stay queued until the next poll acknowledges them), or the
    /// guide's (a poll acknowledges what it returns before answering).
    pub cursor: bool,
    /// Which users poll as one browser tab with a `device=` queue of its own, rather
    /// than on the user's queue.
    pub devices: Devices,
}

/// Which of a drill's users have a device queue of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Devices {
    None,
    /// Every other user: both kinds of queue in one drill.
    Half,
    All,
}

impl Devices {
    fn has(self, index: usize) -> bool {
        match self {
            Devices::None => false,
            Devices::Half => index % 2 == 1,
            Devices::All => true,
        }
    }
}

/// A drill's user: who they are to the broker, and their token for the HTTP products.
#[derive(Debug, Clone)]
pub struct User {
    /// The user's place in the drill: products spread users over instances by it.
    pub index: usize,
    pub subscriber: Subscriber,
    /// A token signed with the development secret, which the servers and functions of
    /// the drill run with.
    pub token: String,
}

impl User {
    /// The poll's query string: `ack=` in cursor mode, `device=` when the user has one.
    pub fn query(&self, cursor: Option<&str>) -> String {
        let mut query = Vec::new();
        if let Some(device) = &self.subscriber.device {
            query.push(format!("device={}", device.as_str()));
        }
        if let Some(cursor) = cursor {
            query.push(format!("ack={cursor}"));
        }
        query.join("&")
    }
}

/// One poll's or publish's outcome, and through which instance (a server, a connection,
/// a function process) it went, for the traces.
pub struct Attempt<T> {
    pub via: String,
    pub outcome: Result<T, Failure>,
}

/// Why a poll or publish got no result.
#[derive(Debug, Clone)]
pub enum Failure {
    /// An error answer (a 503), or an error from the library.
    Error(String),
    /// No answer within the client's patience: the client gave up, and the server may
    /// still be working on it.
    Unanswered(String),
}

/// How the drill's users and backend reach the broker.
pub trait Product: Send + Sync + 'static {
    /// One poll of `user`: in cursor mode with `cursor` (the last id received, empty on
    /// the first poll), the guide's without; the ids of the events answered, in order.
    fn poll(
        &self,
        user: &User,
        cursor: Option<&str>,
        hold: Duration,
    ) -> impl Future<Output = Attempt<Vec<String>>> + Send;

    /// The `attempt`th try (0 first) at publishing `event` to `user`: whether it was
    /// routed.
    fn publish(
        &self,
        user: &User,
        event: &OutgoingEvent,
        attempt: usize,
    ) -> impl Future<Output = Attempt<bool>> + Send;

    /// What the product's own metrics say failed, by operation and cause (empty when it
    /// exports none): the server side of the users' failed polls.
    fn broker_failures(&self) -> impl Future<Output = String> + Send {
        async { String::new() }
    }
}

/// One poll as its user saw it.
struct PollRecord {
    started: Instant,
    ended: Instant,
    via: String,
    cursor: Option<String>,
    outcome: Result<Vec<String>, Failure>,
}

/// One publish attempt as the backend saw it.
struct PublishRecord {
    started: Instant,
    ended: Instant,
    via: String,
    outcome: Result<bool, Failure>,
}

/// The shared state of a running drill.
#[derive(Default)]
struct Ledger {
    /// Event id → (user index, when its publish started), for events answered
    /// `routed: true`.
    routed: Mutex<HashMap<String, (usize, Instant)>>,
    /// Event id → when a user first received it.
    received: Mutex<HashMap<String, Instant>>,
    /// Each user's polls, in order.
    polls: Mutex<HashMap<usize, Vec<PollRecord>>>,
    /// Each event's publish attempts, in order.
    publishes: Mutex<HashMap<String, Vec<PublishRecord>>>,
    wrongly_unrouted: Mutex<usize>,
    redelivered: Mutex<usize>,
}

/// Faults are marked with [`Marks::mark`] as they happen; see [`Report::recoveries`].
#[derive(Clone, Default)]
pub struct Marks(Arc<Mutex<Vec<Instant>>>);

impl Marks {
    pub fn mark(&self) {
        self.0.lock().unwrap().push(Instant::now());
    }
}

/// `count` new users, each with a token and, as `devices` says, a tab of their own.
pub fn users(count: usize, devices: Devices) -> Vec<User> {
    let tokens = TokenIssuer::new(DEV_JWT_SECRET.as_bytes());
    (0..count)
        .map(|index| {
            let user_id = unique_user();
            let device = devices.has(index).then(|| {
                let tab = uuid::Uuid::new_v4().simple().to_string();
                DeviceId::parse(&format!("tab-{}", &tab[..12])).expect("a valid device id")
            });
            User {
                index,
                subscriber: Subscriber {
                    user_id,
                    college_id: None,
                    device,
                },
                token: tokens.mint(user_id, None, None, Duration::from_secs(24 * 3600)),
            }
        })
        .collect()
}

/// Runs `load` through `product` while `faults` runs, then stops publishing and lets
/// the users poll until every routed event has arrived (at most `drain`).
pub async fn run<P, F, Fut>(product: Arc<P>, load: &Load, drain: Duration, faults: F) -> Report
where
    P: Product,
    F: FnOnce(Marks) -> Fut,
    Fut: Future<Output = ()>,
{
    let users = users(load.users, load.devices);
    // Every user's first poll, many at a time: it declares their queue.
    let declaring_since = Instant::now();
    let declares = Arc::new(tokio::sync::Semaphore::new(DECLARES_AT_ONCE));
    let declaring: Vec<_> = users
        .iter()
        .map(|user| {
            let (product, user, declares) = (product.clone(), user.clone(), declares.clone());
            let load = load.clone();
            tokio::spawn(async move {
                let _turn = declares.acquire().await.expect("never closed");
                let cursor = load.cursor.then_some("");
                while product
                    .poll(&user, cursor, load.hold)
                    .await
                    .outcome
                    .is_err()
                {
                    sleep(load.retry).await;
                }
            })
        })
        .collect();
    for declared in declaring {
        declared.await.expect("a user's queue was declared");
    }
    let declared_in = declaring_since.elapsed();

    let ledger = Arc::new(Ledger::default());
    let polling = Arc::new(AtomicBool::new(true));
    let pollers: Vec<_> = users
        .iter()
        .map(|user| {
            tokio::spawn(poll_while(
                product.clone(),
                user.clone(),
                load.clone(),
                ledger.clone(),
                polling.clone(),
            ))
        })
        .collect();
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = tokio::spawn(publish_while(
        product.clone(),
        users.clone(),
        load.clone(),
        ledger.clone(),
        publishing.clone(),
    ));

    let marks = Marks::default();
    faults(marks.clone()).await;

    publishing.store(false, Ordering::Relaxed);
    publisher.await.expect("the publisher ran");
    let drained_by = Instant::now() + drain;
    while !missing(&ledger).is_empty() && Instant::now() < drained_by {
        sleep(Duration::from_millis(200)).await;
    }
    polling.store(false, Ordering::Relaxed);
    for poller in pollers {
        poller.await.expect("a poller ran");
    }
    let marks = marks.0.lock().unwrap().clone();
    Report {
        broker_failures: product.broker_failures().await,
        ..report(&ledger, &users, &marks, declared_in, load.hold)
    }
}

/// One user's browser: polls, keeps what arrives, acknowledges it with the next poll
/// in cursor mode, and waits `retry` after a failed poll.
async fn poll_while<P: Product>(
    product: Arc<P>,
    user: User,
    load: Load,
    ledger: Arc<Ledger>,
    polling: Arc<AtomicBool>,
) {
    let mut cursor = String::new();
    while polling.load(Ordering::Relaxed) {
        let started = Instant::now();
        let sent = load.cursor.then(|| cursor.clone());
        let answer = product.poll(&user, sent.as_deref(), load.hold).await;
        let ended = Instant::now();
        if let Ok(ids) = &answer.outcome {
            if let Some(last) = ids.last() {
                cursor = last.clone();
            }
            let mut received = ledger.received.lock().unwrap();
            let mut redelivered = ledger.redelivered.lock().unwrap();
            for id in ids {
                match received.entry(id.clone()) {
                    Entry::Occupied(_) => *redelivered += 1,
                    Entry::Vacant(first) => {
                        first.insert(ended);
                    }
                }
            }
        }
        let failed = answer.outcome.is_err();
        ledger
            .polls
            .lock()
            .unwrap()
            .entry(user.index)
            .or_default()
            .push(PollRecord {
                started,
                ended,
                via: answer.via,
                cursor: sent,
                outcome: answer.outcome,
            });
        if failed {
            sleep(load.retry).await;
        }
    }
}

/// The backend: `rate` events a second, one user after another, each publish retried
/// with the same event (and so the same id) until it is answered.
async fn publish_while<P: Product>(
    product: Arc<P>,
    users: Vec<User>,
    load: Load,
    ledger: Arc<Ledger>,
    publishing: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / load.rate.max(1) as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = Vec::new();
    for n in 0.. {
        tick.tick().await;
        if !publishing.load(Ordering::Relaxed) {
            break;
        }
        let user = users[n % users.len()].clone();
        let (product, ledger, retry) = (product.clone(), ledger.clone(), load.retry);
        // Each event on its own: a retrying publish does not hold up the next ones.
        in_flight.push(tokio::spawn(async move {
            let event = message(n as i64).prepare();
            let first_started = Instant::now();
            for attempt in 0.. {
                let started = Instant::now();
                let answer = product.publish(&user, &event, attempt).await;
                ledger
                    .publishes
                    .lock()
                    .unwrap()
                    .entry(event.id.clone())
                    .or_default()
                    .push(PublishRecord {
                        started,
                        ended: Instant::now(),
                        via: answer.via,
                        outcome: answer.outcome.clone(),
                    });
                match answer.outcome {
                    Ok(true) => {
                        let mut routed = ledger.routed.lock().unwrap();
                        routed.insert(event.id.clone(), (user.index, first_started));
                        return;
                    }
                    Ok(false) => {
                        *ledger.wrongly_unrouted.lock().unwrap() += 1;
                        return;
                    }
                    Err(_) => sleep(retry).await,
                }
            }
        }));
        in_flight.retain(|task| !task.is_finished());
    }
    for task in in_flight {
        task.await.expect("a publish ran");
    }
}
