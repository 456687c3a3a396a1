//! The shared connection: opened on demand, replaced when it dies; its channels are in
//! `lanes`.
//!
//! One connection per process, shared by every invocation. When it dies, one caller
//! reconnects while the others wait for that attempt, which runs to its end whoever
//! waits for it (see [`Attempt`]).

use std::sync::{Arc, Mutex as SyncMutex};

use lapin::{Connection, ConnectionProperties};
use tokio::{
    sync::Mutex,
    time::{Duration, Instant, timeout_at},
};
use tracing::info;

use super::lanes::{Borrow, Lanes};
use crate::{broker::BrokerError, config::Config};

/// Channels the broker may close over refused requests before the connection is
/// replaced. lapin never frees the id of a channel the broker closed, so each refusal
/// uses up one of the connection's 2,047; well before they run out, new operations move
/// to a fresh connection and the old one closes once its last held poll lets go.
const REFUSALS_PER_CONNECTION: usize = 1000;

/// Opens the connection on demand and replaces it when it dies.
pub(super) struct Connector {
    pub url: String,
    pub connection_name: String,
    pub exchange: String,
    presence_exchange: String,
    pub op_timeout: Duration,
    /// The shard this broker is, with users on several brokers: its metrics say so.
    pub shard: Option<usize>,
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
    lanes: Arc<Lanes>,
}

impl Connector {
    /// The connector of `config`'s broker (its `amqp_url`).
    pub fn new(config: &Config) -> Self {
        Self {
            url: config.amqp_url.clone(),
            connection_name: config.connection_name.clone(),
            presence_exchange: format!("{}.presence", config.exchange),
            exchange: config.exchange.clone(),
            op_timeout: config.amqp_timeout,
            shard: config.shard,
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
                && session.lanes.refusals() < REFUSALS_PER_CONNECTION
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
        };
        // The first lane also declares the exchanges, once per connection.
        let exchanges = [&self.exchange, &self.presence_exchange];
        let first = session.lanes.open_first(&session.connection, exchanges);
        timeout_at(deadline, first)
            .await
            .map_err(|_| BrokerError::Timeout("channel set-up"))?
            .map_err(|error| BrokerError::Failed {
                operation: "channel set-up",
                reason: error.to_string(),
            })?;
        info!(connection = %self.connection_name, "connected to the broker");
        crate::metrics::broker_connected(self.shard);
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
    /// Borrows what `L` runs on: a shared [`Lane`](super::lanes::Lane) or an
    /// [`OwnLane`](super::lanes::OwnLane).
    pub async fn borrow<L: Borrow>(&self) -> lapin::Result<L> {
        L::borrow(&self.lanes, &self.connection).await
    }

    /// The broker closed a channel of this connection over a refused request.
    pub fn note_refusal(&self) {
        self.lanes.note_refusal();
    }

    /// Operations in progress on this connection, held polls included.
    pub fn load(&self) -> usize {
        self.lanes.load()
    }
}
