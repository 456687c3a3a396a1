//! A fire drill for a broker: users polling as browsers do, in cursor mode or the guide's
//! (through
//! brokers standing for Lambda instances), a backend publishing at a steady rate and
//! retrying failures with the same event, and whatever faults the caller brings; then
//! what the users and the backend saw. The cluster test runs it small, and
//! `scripts/bench cluster` at 2,000 users.

use std::{
    collections::{HashMap, hash_map::Entry},
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use longpoll::{
    Config, RabbitBroker,
    broker::{Poll, Presence, Publication, Publish},
    topology::{Audience, QueueType, Subscriber, UserId},
};
use tokio::time::{Instant, sleep};

use crate::{JWT_SECRET, message, subscriber, unique_name, unique_user};

/// Users whose queues are declared at once before a drill starts.
const DECLARES_AT_ONCE: usize = 100;

/// The load of a drill.
#[derive(Debug, Clone)]
pub struct Load {
    pub users: usize,
    /// Broker connections the users poll through, as that many Lambda instances would.
    pub instances: usize,
    /// Events per second the backend publishes, each to the next user in turn.
    pub rate: u64,
    /// The hold of each poll.
    pub hold: Duration,
    /// How long a client waits after a failed poll or publish (the 503's `Retry-After`).
    pub retry: Duration,
    pub queue_type: QueueType,
    /// Cursor mode (events stay queued until the next poll acknowledges them), or the
    /// guide's (a poll acknowledges what it returns before answering).
    pub cursor: bool,
}

/// What a drill saw.
#[derive(Debug, Default)]
pub struct Report {
    /// How long declaring every user's queue took, before the drill proper.
    pub declared_in: Duration,
    /// Publishes answered `routed: true`.
    pub routed: usize,
    /// Of those, events no user received by the end of the drain.
    pub missing: usize,
    /// Events received again after a user had them (cursor mode's redelivery of what
    /// was not yet acknowledged; a client drops them by id).
    pub redelivered: usize,
    /// Publishes answered `routed: false`, though every user was polling.
    pub wrongly_unrouted: usize,
    /// Publishes that failed (a 503) and were tried again with the same event.
    pub retried_publishes: usize,
    /// Polls that failed (a 503).
    pub failed_polls: usize,
    /// Polls answered.
    pub answered_polls: usize,
    /// Of those, answered with nothing before half the hold was over: a browser polls
    /// again at once, so many of them would be a request storm.
    pub early_empty_polls: usize,
    /// The longest any user went between two answered polls.
    pub longest_gap: Duration,
    /// Publish (start) to first receipt, for each routed event received, sorted.
    pub latencies: Vec<Duration>,
    /// For each fault the caller marked: from the mark until every user whose polls
    /// failed after it had one answered again (zero when none failed).
    pub recoveries: Vec<Duration>,
}

impl Report {
    /// The `q` quantile (0.0–1.0) of the delivery latencies, zero when none arrived.
    pub fn latency(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index]
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "users declared in {:?}, {} routed, {} missing, {} wrongly unrouted, {} publishes retried, \
             {} of {} polls failed, {} answered early and empty, longest gap {:?}, \
             latency p50 {:?} p99 {:?}, recoveries {:?}",
            self.declared_in,
            self.routed,
            self.missing,
            self.wrongly_unrouted,
            self.retried_publishes,
            self.failed_polls,
            self.failed_polls + self.answered_polls,
            self.early_empty_polls,
            self.longest_gap,
            self.latency(0.5),
            self.latency(0.99),
            self.recoveries,
        )
    }
}

/// The shared state of a running drill.
#[derive(Default)]
struct Ledger {
    /// Event id → (user, when its publish started), for events answered `routed: true`.
    routed: Mutex<HashMap<String, (UserId, Instant)>>,
    /// Event id → when a user first received it.
    received: Mutex<HashMap<String, Instant>>,
    /// Each user's poll outcomes: (when, answered).
    polls: Mutex<HashMap<UserId, Vec<(Instant, bool)>>>,
    wrongly_unrouted: AtomicUsize,
    retried_publishes: AtomicUsize,
    early_empty_polls: AtomicUsize,
    redelivered: AtomicUsize,
}

/// Faults are marked with [`Marks::mark`] as they happen; see [`Report::recoveries`].
#[derive(Clone, Default)]
pub struct Marks(Arc<Mutex<Vec<Instant>>>);

impl Marks {
    pub fn mark(&self) {
        self.0.lock().unwrap().push(Instant::now());
    }
}

/// Runs `load` against the broker at `url` while `faults` runs, then stops publishing
/// and lets the users poll until every routed event has arrived (at most `drain`).
pub async fn run<F, Fut>(url: &str, load: &Load, drain: Duration, faults: F) -> Report
where
    F: FnOnce(Marks) -> Fut,
    Fut: Future<Output = ()>,
{
    let broker = |name: &str| {
        let config = Config {
            queue_type: load.queue_type,
            ..Config::new(url, Some(JWT_SECRET), &unique_name(name))
        };
        Arc::new(RabbitBroker::new(&config))
    };
    let instances: Vec<_> = (0..load.instances).map(|_| broker("drill")).collect();
    let users: Vec<Subscriber> = (0..load.users)
        .map(|_| subscriber(unique_user(), None))
        .collect();
    // Every user's queue first, many at a time (each declare holds a short poll).
    let declaring_since = Instant::now();
    let declares = Arc::new(tokio::sync::Semaphore::new(DECLARES_AT_ONCE));
    let declaring: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(index, user)| {
            let (broker, user) = (instances[index % load.instances].clone(), user.clone());
            let declares = declares.clone();
            let retry = load.retry;
            tokio::spawn(async move {
                let _turn = declares.acquire().await.expect("never closed");
                declare_until_done(&broker, &user, retry).await;
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
        .enumerate()
        .map(|(index, user)| {
            let broker = instances[index % load.instances].clone();
            tokio::spawn(poll_while(
                broker,
                user.clone(),
                load.clone(),
                ledger.clone(),
                polling.clone(),
            ))
        })
        .collect();
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = tokio::spawn(publish_while(
        broker("drill-backend"),
        users.iter().map(|user| user.user_id).collect(),
        load.clone(),
        ledger.clone(),
        publishing.clone(),
    ));

    let marks = Marks::default();
    faults(marks.clone()).await;

    publishing.store(false, Ordering::Relaxed);
    publisher.await.expect("the publisher ran");
    let missing = || {
        let received = ledger.received.lock().unwrap();
        let routed = ledger.routed.lock().unwrap();
        routed
            .keys()
            .filter(|id| !received.contains_key(*id))
            .count()
    };
    let drained_by = Instant::now() + drain;
    while missing() > 0 && Instant::now() < drained_by {
        sleep(Duration::from_millis(200)).await;
    }
    polling.store(false, Ordering::Relaxed);
    for poller in pollers {
        poller.await.expect("a poller ran");
    }
    for instance in &instances {
        longpoll::Broker::close(&**instance).await;
    }
    let marks = marks.0.lock().unwrap().clone();
    report(&ledger, missing(), &marks, declared_in)
}

/// A user's first poll, declaring their queue, retried after `retry` as a browser
/// retries a 503: a cluster creates quorum queues (a Raft group each) slower than one
/// broker round trip's timeout when many come at once.
async fn declare_until_done(broker: &RabbitBroker, user: &Subscriber, retry: Duration) {
    loop {
        let budget = crate::PollBudget::until(Instant::now() + Duration::from_millis(300));
        let online = broker
            .mark_online(user.user_id, user.college_id, &budget)
            .await;
        if online.is_ok() && broker.wait_for_events(user, &budget).await.is_ok() {
            return;
        }
        sleep(retry).await;
    }
}

fn report(ledger: &Ledger, missing: usize, marks: &[Instant], declared_in: Duration) -> Report {
    let routed = ledger.routed.lock().unwrap();
    let received = ledger.received.lock().unwrap();
    let polls = ledger.polls.lock().unwrap();
    let mut latencies: Vec<Duration> = routed
        .iter()
        .filter_map(|(id, (_, published))| received.get(id).map(|at| *at - *published))
        .collect();
    latencies.sort();
    let longest_gap = polls
        .values()
        .flat_map(|outcomes| {
            let answered: Vec<Instant> = outcomes
                .iter()
                .filter(|(_, ok)| *ok)
                .map(|(at, _)| *at)
                .collect();
            answered
                .windows(2)
                .map(|pair| pair[1] - pair[0])
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap_or_default();
    let recoveries = marks
        .iter()
        .map(|mark| {
            polls
                .values()
                .filter_map(|outcomes| {
                    let failed = outcomes.iter().position(|(at, ok)| at >= mark && !ok)?;
                    let back = outcomes[failed..].iter().find(|(_, ok)| *ok)?;
                    Some(back.0 - *mark)
                })
                .max()
                .unwrap_or_default()
        })
        .collect();
    let all: Vec<&(Instant, bool)> = polls.values().flatten().collect();
    Report {
        declared_in,
        routed: routed.len(),
        missing,
        redelivered: ledger.redelivered.load(Ordering::Relaxed),
        wrongly_unrouted: ledger.wrongly_unrouted.load(Ordering::Relaxed),
        retried_publishes: ledger.retried_publishes.load(Ordering::Relaxed),
        early_empty_polls: ledger.early_empty_polls.load(Ordering::Relaxed),
        failed_polls: all.iter().filter(|(_, ok)| !ok).count(),
        answered_polls: all.iter().filter(|(_, ok)| *ok).count(),
        longest_gap,
        latencies,
        recoveries,
    }
}

/// One user's browser in cursor mode: polls, keeps what arrives, acknowledges it with
/// the next poll, and waits `retry` after a failed poll.
async fn poll_while(
    broker: Arc<RabbitBroker>,
    user: Subscriber,
    load: Load,
    ledger: Arc<Ledger>,
    polling: Arc<AtomicBool>,
) {
    let mut cursor = String::new();
    while polling.load(Ordering::Relaxed) {
        let started = Instant::now();
        let budget = crate::PollBudget::until(started + load.hold);
        let answer = if load.cursor {
            broker.wait_with_cursor(&user, &cursor, &budget).await
        } else {
            broker.wait_for_events(&user, &budget).await
        };
        let now = Instant::now();
        let answered = answer.is_ok();
        if answer.as_ref().is_ok_and(Vec::is_empty) && now - started < load.hold / 2 {
            ledger.early_empty_polls.fetch_add(1, Ordering::Relaxed);
        }
        ledger
            .polls
            .lock()
            .unwrap()
            .entry(user.user_id)
            .or_default()
            .push((now, answered));
        match answer {
            Ok(events) => {
                if let Some(last) = events.last() {
                    cursor = last.id.clone();
                }
                let mut received = ledger.received.lock().unwrap();
                for event in events {
                    match received.entry(event.id) {
                        Entry::Occupied(_) => {
                            ledger.redelivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Entry::Vacant(first) => {
                            first.insert(now);
                        }
                    }
                }
            }
            Err(_) => sleep(load.retry).await,
        }
    }
}

/// The backend: `rate` events a second, one user after another, each publish retried
/// with the same event (and so the same id) until it is answered.
async fn publish_while(
    broker: Arc<RabbitBroker>,
    users: Vec<UserId>,
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
        let user = users[n % users.len()];
        let (broker, ledger, retry) = (broker.clone(), ledger.clone(), load.retry);
        // Each event on its own: a retrying publish does not hold up the next ones.
        in_flight.push(tokio::spawn(async move {
            let publication = Publication {
                audience: Audience::User(user),
                event: message(n as i64).prepare(),
            };
            let started = Instant::now();
            let receipt = loop {
                match broker.publish(std::slice::from_ref(&publication)).await {
                    Ok(receipts) => break receipts.into_iter().next().expect("one receipt"),
                    Err(_) => {
                        ledger.retried_publishes.fetch_add(1, Ordering::Relaxed);
                        sleep(retry).await;
                    }
                }
            };
            if receipt.routed {
                let mut routed = ledger.routed.lock().unwrap();
                routed.insert(receipt.id, (user, started));
            } else {
                ledger.wrongly_unrouted.fetch_add(1, Ordering::Relaxed);
            }
        }));
        in_flight.retain(|task| !task.is_finished());
    }
    for task in in_flight {
        task.await.expect("a publish ran");
    }
}
