//! The shared connection and its channels.
//!
//! One connection per process. Its channels are *lanes*: an operation borrows the least
//! loaded one for as long as it needs it (a held poll, for the whole hold, since its
//! consumer lives there). RabbitMQ runs each channel as one process, so spreading many
//! held polls over a few channels spreads the broker's work over its cores, and a
//! channel error (which closes the channel) only touches the polls on that lane. A
//! Lambda instance runs one poll at a time and so only ever opens one channel.
//!
//! A publish takes a channel of its own instead, from a pool of idle ones: lapin hands
//! a `basic.return` to whichever confirm of the channel settles next, so on a shared
//! channel one publish's unroutable event could be reported as another's.

use std::sync::{
    Arc, Mutex as SyncMutex,
    atomic::{AtomicUsize, Ordering},
};

use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::FieldTable,
};
use tokio::{
    sync::{Mutex, OwnedSemaphorePermit, Semaphore},
    time::{Duration, Instant, timeout_at},
};
use tracing::info;

use crate::{broker::BrokerError, topology::MAX_BATCH};

/// Borrowers a lane takes before another channel is opened.
const LOAD_PER_CHANNEL: usize = 256;
/// Most shared lanes per connection (RabbitMQ's default `channel_max` is 2047).
const MAX_CHANNELS: usize = 64;
/// Most channels of their own (see [`OwnLane`]) per connection, open, idle or still
/// closing: with the shared lanes and the refusals below, well inside RabbitMQ's 2,047.
/// An operation that finds them all taken waits for one within its deadline.
const MAX_OWN_CHANNELS: usize = 512;
/// Channels the broker may close over refused requests before the connection is
/// replaced. lapin never frees the id of a channel the broker closed, so each refusal
/// uses up one of the connection's 2,047; well before they run out, new operations move
/// to a fresh connection and the old one closes once its last held poll lets go.
const REFUSALS_PER_CONNECTION: usize = 1000;

/// Unacked deliveries a consumer may hold (`basic.qos`, per consumer): a batch.
pub(super) const PREFETCH: u16 = MAX_BATCH as u16;

/// Opens the connection on demand and replaces it when it dies.
pub(super) struct Connector {
    pub url: String,
    pub connection_name: String,
    pub exchange: String,
    presence_exchange: String,
    pub op_timeout: Duration,
    /// The shared session. A mutex (not a lock-free cell) so that when it dies, one
    /// caller reconnects while the others wait for the result instead of racing to open
    /// connections of their own.
    current: Mutex<Option<Session>>,
    /// The connection being opened, if a caller's deadline passed before it was: the
    /// next caller waits for the same attempt. Only touched under `current`'s lock.
    opening: SyncMutex<Option<Attempt>>,
}

/// How long one connection attempt may go on, across callers, before a new one
/// replaces it: longer than RabbitMQ's own handshake timeout (10 s), after which the
/// broker has closed a handshake it never finished.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(15);

/// A connection being opened, in a task of its own so that it runs to its end whoever
/// waits for it. Dropping lapin's connect future midway does not stop it: its I/O
/// thread goes on with the handshake for a connection nobody holds. On a busy cluster
/// (a node restarting, the others catching up) handshakes outlast a caller's deadline,
/// and a caller per deadline starting a fresh one piled up thousands of such
/// connections and threads, which slowed the broker further.
struct Attempt {
    started: Instant,
    task: tokio::task::JoinHandle<lapin::Result<Connection>>,
}

impl Attempt {
    fn start(url: &str, properties: ConnectionProperties) -> Self {
        let url = url.to_owned();
        Attempt {
            started: Instant::now(),
            task: tokio::spawn(async move { Connection::connect(&url, properties).await }),
        }
    }
}

/// A live connection and its lanes.
#[derive(Clone)]
pub(super) struct Session {
    pub connection: Arc<Connection>,
    lanes: Arc<Mutex<Vec<Slot>>>,
    /// Own channels not in use, each with its place among [`MAX_OWN_CHANNELS`]; each
    /// [`OwnLane`] comes from here or is new.
    idle_own: Arc<SyncMutex<Vec<(Channel, OwnedSemaphorePermit)>>>,
    /// Places for own channels: one is held by each own channel from its opening until
    /// its close completes, so channels closing under load cannot pile up.
    own_places: Arc<Semaphore>,
    /// Own lanes borrowed now.
    own_in_use: Arc<AtomicUsize>,
    /// Channels the broker closed over a refused request (see [`REFUSALS_PER_CONNECTION`]).
    refusals: Arc<AtomicUsize>,
}

struct Slot {
    channel: Channel,
    load: Arc<AtomicUsize>,
}

/// A channel borrowed for one operation or one held poll; returned when dropped.
pub(super) struct Lane {
    pub channel: Channel,
    pub connection: Arc<Connection>,
    load: Arc<AtomicUsize>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The AMQP reply code of a channel closed in good order.
pub(super) const REPLY_SUCCESS: u16 = 200;

/// A borrowed channel, whichever kind.
pub(super) trait Channelled {
    fn channel(&self) -> &Channel;
}

impl Channelled for Lane {
    fn channel(&self) -> &Channel {
        &self.channel
    }
}

impl Channelled for OwnLane {
    fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// What an operation borrows from the session to run on: a shared [`Lane`] or an
/// [`OwnLane`].
pub(super) trait Borrow: Sized + Send {
    fn borrow(session: &Session) -> impl Future<Output = lapin::Result<Self>> + Send;
}

impl Borrow for Lane {
    fn borrow(session: &Session) -> impl Future<Output = lapin::Result<Self>> + Send {
        session.lane()
    }
}

impl Borrow for OwnLane {
    fn borrow(session: &Session) -> impl Future<Output = lapin::Result<Self>> + Send {
        session.own_lane()
    }
}

/// A channel used by one operation alone, returned to the idle ones when dropped if
/// [`OwnLane::finished`] says nothing is outstanding on it; closed otherwise, so a late
/// confirm or return of an abandoned publish cannot reach the next one.
pub(super) struct OwnLane {
    pub channel: Channel,
    finished: bool,
    place: Option<OwnedSemaphorePermit>,
    idle: Arc<SyncMutex<Vec<(Channel, OwnedSemaphorePermit)>>>,
    in_use: Arc<AtomicUsize>,
}

impl OwnLane {
    /// Every reply the operation expected has arrived: the channel can serve another.
    pub fn finished(mut self) {
        self.finished = true;
    }
}

impl Drop for OwnLane {
    fn drop(&mut self) {
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        let place = self
            .place
            .take()
            .expect("an own lane holds its place until dropped");
        if self.finished && self.channel.status().connected() {
            self.idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push((self.channel.clone(), place));
        } else {
            close_then_release(self.channel.clone(), place);
        }
    }
}

/// Closes `channel` in the background. Used when an operation on it was abandoned
/// midway (a timeout): whatever the broker delivered there and nobody acked is
/// requeued, and a consumer registered after we stopped waiting cannot hold messages
/// hostage.
/// Closes `channel` in the background like [`poison`], keeping `place` taken until the
/// close is done.
fn close_then_release(channel: Channel, place: OwnedSemaphorePermit) {
    tokio::spawn(async move {
        // The place is free once the broker has confirmed the close (an overloaded
        // broker may take seconds): until then the channel still counts.
        if channel.status().connected() {
            let _ = tokio::time::timeout(
                Duration::from_secs(60),
                channel.close(406, "abandoned operation".into()),
            )
            .await;
        }
        drop(place);
    });
}

pub(super) fn poison(channel: Channel) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            channel.close(406, "abandoned operation".into()),
        )
        .await;
    });
}

impl Connector {
    pub fn new(
        url: String,
        connection_name: String,
        exchange: String,
        op_timeout: Duration,
    ) -> Self {
        Self {
            url,
            connection_name,
            presence_exchange: format!("{exchange}.presence"),
            exchange,
            op_timeout,
            current: Mutex::new(None),
            opening: SyncMutex::new(None),
        }
    }

    /// The shared session, reconnected if missing or dead, within `deadline`.
    pub async fn session(&self, deadline: Instant) -> Result<Session, BrokerError> {
        let mut current = timeout_at(deadline, self.current.lock())
            .await
            .map_err(|_| BrokerError::Timeout("connect"))?;
        if let Some(session) = current.as_ref().filter(|session| {
            session.connection.status().connected()
                && session.refusals.load(Ordering::Relaxed) < REFUSALS_PER_CONNECTION
        }) {
            return Ok(session.clone());
        }
        // A live session with too many refusals is only forgotten: dropping the last
        // handle on a lapin connection closes it, so its held polls finish first.
        *current = None;
        let deadline = deadline.min(Instant::now() + self.op_timeout);
        let mut attempt = self
            .opening
            .lock()
            .unwrap()
            .take()
            .filter(|attempt| attempt.started.elapsed() < ATTEMPT_LIMIT)
            .unwrap_or_else(|| {
                let properties = ConnectionProperties::default()
                    .with_connection_name(self.connection_name.clone().into());
                Attempt::start(&self.url, properties)
            });
        let connection = match timeout_at(deadline, &mut attempt.task).await {
            Ok(joined) => joined
                .map_err(|error| BrokerError::Unreachable(error.to_string()))?
                .map_err(|error| BrokerError::Unreachable(error.to_string()))?,
            Err(_) => {
                // Left running for the next caller (see [`Attempt`]).
                *self.opening.lock().unwrap() = Some(attempt);
                return Err(BrokerError::Timeout("connect"));
            }
        };
        let session = Session {
            connection: Arc::new(connection),
            lanes: Arc::default(),
            idle_own: Arc::default(),
            own_places: Arc::new(Semaphore::new(MAX_OWN_CHANNELS)),
            own_in_use: Arc::default(),
            refusals: Arc::default(),
        };
        // The first lane also declares the exchanges, once per connection.
        let exchanges = [&self.exchange, &self.presence_exchange];
        let first = timeout_at(deadline, session.open_slot(Some(exchanges)))
            .await
            .map_err(|_| BrokerError::Timeout("channel set-up"))?
            .map_err(|error| BrokerError::Failed {
                operation: "channel set-up",
                reason: error.to_string(),
            })?;
        session.lanes.lock().await.push(first);
        info!(connection = %self.connection_name, "connected to the broker");
        crate::metrics::broker_connected();
        *current = Some(session.clone());
        Ok(session)
    }

    /// Forgets `dead` if it is still the shared session, so the next caller reconnects,
    /// and closes it in the background (a half-open socket may never answer).
    pub async fn discard(&self, dead: &Session) {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|session| Arc::ptr_eq(&session.connection, &dead.connection))
        {
            *current = None;
            let (connection, op_timeout) = (dead.connection.clone(), self.op_timeout);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(op_timeout, connection.close(320, "replaced".into()))
                    .await;
            });
        }
    }

    /// `<exchange>.presence`: a direct exchange where college members' presence queues
    /// are bound (see [`crate::topology::college_presence_key`]).
    pub fn presence_exchange(&self) -> &str {
        &self.presence_exchange
    }

    /// Closes the connection (graceful shutdown); the next operation would reopen it.
    pub async fn close(&self) {
        if let Some(session) = self.current.lock().await.take() {
            let _ = timeout_at(
                Instant::now() + self.op_timeout,
                session.connection.close(200, "shutdown".into()),
            )
            .await;
        }
    }
}

impl Session {
    /// Borrows the least loaded open channel, opening another when all are busy.
    pub async fn lane(&self) -> lapin::Result<Lane> {
        let mut lanes = self.lanes.lock().await;
        lanes.retain(|slot| slot.channel.status().connected());
        let least = lanes
            .iter()
            .min_by_key(|slot| slot.load.load(Ordering::Relaxed));
        let crowded =
            least.is_none_or(|slot| slot.load.load(Ordering::Relaxed) >= LOAD_PER_CHANNEL);
        if crowded && lanes.len() < MAX_CHANNELS {
            let slot = self.open_slot(None).await?;
            lanes.push(slot);
        }
        let slot = lanes
            .iter()
            .min_by_key(|slot| slot.load.load(Ordering::Relaxed))
            .expect("at least one lane");
        slot.load.fetch_add(1, Ordering::Relaxed);
        Ok(Lane {
            channel: slot.channel.clone(),
            connection: self.connection.clone(),
            load: slot.load.clone(),
        })
    }

    /// A channel for this operation alone: an idle one, or a new one. Their number
    /// stays below the operations in flight at once, which the broker bounds.
    pub async fn own_lane(&self) -> lapin::Result<OwnLane> {
        let idle = {
            let mut idle = self
                .idle_own
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // A channel closed while idle gives its place back as it goes.
            idle.retain(|(channel, _)| channel.status().connected());
            idle.pop()
        };
        let (channel, place) = match idle {
            Some(idle) => idle,
            None => {
                // The caller bounds this wait with its deadline.
                let place = self
                    .own_places
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                (self.open_slot(None).await?.channel, place)
            }
        };
        self.own_in_use.fetch_add(1, Ordering::Relaxed);
        Ok(OwnLane {
            channel,
            finished: false,
            place: Some(place),
            idle: self.idle_own.clone(),
            in_use: self.own_in_use.clone(),
        })
    }

    /// The broker closed a channel of this connection over a refused request.
    pub fn note_refusal(&self) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Operations in progress on this connection, held polls included.
    pub fn load(&self) -> usize {
        match self.lanes.try_lock() {
            Ok(lanes) => {
                lanes
                    .iter()
                    .map(|slot| slot.load.load(Ordering::Relaxed))
                    .sum::<usize>()
                    + self.own_in_use.load(Ordering::Relaxed)
            }
            // Someone is opening a channel: the connection is in use.
            Err(_) => usize::MAX,
        }
    }

    async fn open_slot(&self, exchanges: Option<[&String; 2]>) -> lapin::Result<Slot> {
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Per consumer (global: false): one poll never holds more than a batch.
        channel
            .basic_qos(PREFETCH, BasicQosOptions { global: false })
            .await?;
        if let Some([events, presence]) = exchanges {
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            for (exchange, kind) in [
                (events, ExchangeKind::Topic),
                (presence, ExchangeKind::Direct),
            ] {
                channel
                    .exchange_declare(
                        exchange.as_str().into(),
                        kind,
                        durable,
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        Ok(Slot {
            channel,
            load: Arc::default(),
        })
    }
}
