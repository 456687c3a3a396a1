//! The channels of the shared connection.
//!
//! Its channels are *lanes*: an operation borrows the least loaded one for as long as it
//! needs it (a held poll, for the whole hold, since its consumer lives there). RabbitMQ
//! runs each channel as one process, so spreading many held polls over a few channels
//! spreads the broker's work over its cores, and a channel error (which closes the
//! channel) only touches the polls on that lane. A Lambda instance runs one poll at a
//! time and so only ever opens one channel.
//!
//! Declares, presence, publishes and lookups take a channel of their own ([`OwnLane`])
//! instead, from a pool of idle ones, so a refusal never reaches another request: and
//! lapin hands a `basic.return` to whichever confirm of the channel settles next, so on
//! a shared channel one publish's unroutable event could be reported as another's.

use std::{
    future::Future,
    sync::{
        Arc, Mutex as SyncMutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use lapin::{
    Channel, Connection, ExchangeKind,
    options::{BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::FieldTable,
};
use tokio::{
    sync::{Mutex, OwnedSemaphorePermit, Semaphore},
    time::Duration,
};

use crate::topology::MAX_BATCH;

/// Borrowers a lane takes before another channel is opened.
const LOAD_PER_CHANNEL: usize = 256;
/// Most shared lanes per connection (RabbitMQ's default `channel_max` is 2047).
const MAX_CHANNELS: usize = 64;
/// Most channels of their own (see [`OwnLane`]) per connection, open, idle or still
/// closing: with the shared lanes and the refusals below, well inside RabbitMQ's 2,047.
/// An operation that finds them all taken waits for one within its deadline.
const MAX_OWN_CHANNELS: usize = 512;
/// Unacked deliveries a consumer may hold (`basic.qos`, per consumer): a batch.
pub(super) const PREFETCH: u16 = MAX_BATCH as u16;

/// The channels of one connection: its shared lanes, and the channels of their own.
pub(super) struct Lanes {
    slots: Mutex<Vec<Slot>>,
    /// Own channels not in use, each with its place among [`MAX_OWN_CHANNELS`]; each
    /// [`OwnLane`] comes from here or is new.
    idle_own: Arc<SyncMutex<Vec<(Channel, OwnedSemaphorePermit)>>>,
    /// Places for own channels: one is held by each own channel from its opening until
    /// its close completes, so channels closing under load cannot pile up.
    own_places: Arc<Semaphore>,
    /// Own lanes borrowed now.
    own_in_use: Arc<AtomicUsize>,
    /// Channels the broker closed over a refused request.
    refusals: AtomicUsize,
}

impl Default for Lanes {
    fn default() -> Self {
        Self {
            slots: Mutex::default(),
            idle_own: Arc::default(),
            own_places: Arc::new(Semaphore::new(MAX_OWN_CHANNELS)),
            own_in_use: Arc::default(),
            refusals: AtomicUsize::default(),
        }
    }
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

/// What an operation borrows to run on: a shared [`Lane`] or an [`OwnLane`].
pub(super) trait Borrow: Sized + Send {
    fn borrow(
        lanes: &Lanes,
        connection: &Arc<Connection>,
    ) -> impl Future<Output = lapin::Result<Self>> + Send;
}

impl Borrow for Lane {
    fn borrow(
        lanes: &Lanes,
        connection: &Arc<Connection>,
    ) -> impl Future<Output = lapin::Result<Self>> + Send {
        lanes.lane(connection)
    }
}

impl Borrow for OwnLane {
    fn borrow(
        lanes: &Lanes,
        connection: &Arc<Connection>,
    ) -> impl Future<Output = lapin::Result<Self>> + Send {
        lanes.own_lane(connection)
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

impl Lanes {
    /// Borrows the least loaded open channel, opening another when all are busy.
    pub async fn lane(&self, connection: &Arc<Connection>) -> lapin::Result<Lane> {
        let mut lanes = self.slots.lock().await;
        lanes.retain(|slot| slot.channel.status().connected());
        let least = lanes
            .iter()
            .min_by_key(|slot| slot.load.load(Ordering::Relaxed));
        let crowded =
            least.is_none_or(|slot| slot.load.load(Ordering::Relaxed) >= LOAD_PER_CHANNEL);
        if crowded && lanes.len() < MAX_CHANNELS {
            let slot = open_slot(connection, None).await?;
            lanes.push(slot);
        }
        let slot = lanes
            .iter()
            .min_by_key(|slot| slot.load.load(Ordering::Relaxed))
            .expect("at least one lane");
        slot.load.fetch_add(1, Ordering::Relaxed);
        Ok(Lane {
            channel: slot.channel.clone(),
            connection: connection.clone(),
            load: slot.load.clone(),
        })
    }

    /// A channel for this operation alone: an idle one, or a new one. Their number
    /// stays below the operations in flight at once, which the broker bounds.
    pub async fn own_lane(&self, connection: &Arc<Connection>) -> lapin::Result<OwnLane> {
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
                (open_slot(connection, None).await?.channel, place)
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

    /// Channels the broker closed over refused requests so far.
    pub fn refusals(&self) -> usize {
        self.refusals.load(Ordering::Relaxed)
    }

    /// The first shared lane of a new connection, which also declares the `exchanges`
    /// (events, presence), once per connection.
    pub async fn open_first(
        &self,
        connection: &Connection,
        exchanges: [&String; 2],
    ) -> lapin::Result<()> {
        let first = open_slot(connection, Some(exchanges)).await?;
        self.slots.lock().await.push(first);
        Ok(())
    }

    /// Operations in progress on this connection, held polls included.
    pub fn load(&self) -> usize {
        match self.slots.try_lock() {
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
}

/// A new channel with publisher confirms and the per-consumer prefetch, which declares
/// the `exchanges` first if given.
async fn open_slot(
    connection: &Connection,
    exchanges: Option<[&String; 2]>,
) -> lapin::Result<Slot> {
    let channel = connection.create_channel().await?;
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
