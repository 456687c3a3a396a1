//! The load every latency benchmark shares: N users each holding a poll against a server
//! and re-polling as soon as answered, while events are published at R a second to
//! random users; every event is followed from its publish to the poll that returns it.
//!
//! Events carry their sequence number as `data.sender_id`, so a response names the
//! publishes it answers. An event is *lost* when its publish was confirmed but no poll
//! returned it by the end (the pollers keep polling for a drain period after the last
//! publish); *duplicated* when it reached a user under two different ids (the same id
//! twice is cursor mode's documented redelivery, which clients de-duplicate).
//!
//! The same load runs against the yardstick, Nchan ([`crate::nchan`]), with its own
//! protocol: events published by HTTP to the user's channel, long-poll subscribers
//! resuming from the previous answer's `Last-Modified` and `Etag`; and against the
//! floor, no server at all ([`consumers`]).
//!
//! Layout, one job per file: [`Contender`] and [`LoadOptions`] here; `users` (the HTTP
//! users), [`consumers`] (the floor's AMQP consumers), `publisher` (the events),
//! `ledger` (each event from its publish to its user), `window` (the publishing window
//! and its drain, shared by both kinds of users), [`report`] (what a run saw).

use std::{sync::Arc, time::Duration};

use longpoll::Broker;

pub mod consumers;
mod ledger;
mod publisher;
pub mod report;
mod users;
mod window;

pub use publisher::{message, message_json};
pub use report::LoadReport;
pub use window::fresh_user_base;

use publisher::Publisher;
use users::Resume;

/// Who the simulated users are and how the load's events reach them. Each variant is a
/// pair that works together (Nchan's subscribers only ever see Nchan's publishes, the
/// floor's consumers only the broker's), so an impossible pair cannot be built.
#[derive(Clone)]
pub enum Contender {
    /// Users poll a longpoll server (this project's, or the guide's baseline) at `url`,
    /// in `mode`; events are published `via` the endpoint or the library.
    Server {
        url: String,
        mode: PollMode,
        via: ServerPublish,
    },
    /// Nchan at `url`: subscribers on `/sub/<user>`, events on `/pub/<user>`.
    Nchan { url: String },
    /// The floor: no server, each user an AMQP consumer of their own queue on the broker
    /// at `amqp_url`; events published through `broker`, the library.
    Consumers {
        amqp_url: String,
        broker: Arc<dyn Broker>,
    },
}

/// How the users of a longpoll server poll.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PollMode {
    /// The guide's plain poll: `GET poll/events/`.
    Guide,
    /// Cursor mode (`?device=…&ack=<last id>`) with de-duplication by id, as the
    /// browser client polls.
    Cursor,
}

/// How events reach a longpoll server's users.
#[derive(Clone)]
pub enum ServerPublish {
    /// `POST /api/v1/communication/events/` on the server, with this API key.
    Endpoint { api_key: String },
    /// Straight to the broker through the library (persistent, confirmed), as a
    /// backend publishing over AMQP does.
    Library(Arc<dyn Broker>),
}

impl Contender {
    /// Where this contender's events are published.
    fn publisher(&self) -> Publisher {
        match self {
            Contender::Server {
                url,
                via: ServerPublish::Endpoint { api_key },
                ..
            } => Publisher::Endpoint {
                url: url.clone(),
                api_key: api_key.clone(),
            },
            Contender::Server {
                via: ServerPublish::Library(broker),
                ..
            }
            | Contender::Consumers { broker, .. } => Publisher::Library(broker.clone()),
            Contender::Nchan { url } => Publisher::Nchan { url: url.clone() },
        }
    }
}

pub struct LoadOptions {
    /// Who the users are and how events reach them.
    pub contender: Contender,
    pub users: usize,
    /// New users per second while ramping up.
    pub ramp_per_second: usize,
    /// Events per second, to random users.
    pub publish_rate: u64,
    /// How long the users poll with nothing published once the ramp has settled, so
    /// that the window measures steady state rather than the ramp's set-ups.
    pub warm_up: Duration,
    /// How long events are published, after the ramp and the warm-up.
    pub seconds: u64,
    /// At most how long the polls go on after the last publish, until every confirmed
    /// event has arrived; an event still missing then counts as lost.
    pub drain: Duration,
    /// The server's process, for its RSS once a second and its CPU (with its children:
    /// nginx's worker) while idle and while publishing.
    pub server_pid: Option<u32>,
    /// The broker's process (the Erlang VM), for its CPU the same way.
    pub broker_pid: Option<u32>,
}

/// Runs the load; returns when the drain period after the last publish is over.
pub async fn run(options: LoadOptions) -> LoadReport {
    match &options.contender {
        Contender::Server { url, mode, .. } => {
            let poll = format!("{url}/api/v1/communication/poll/events/");
            let resume = match mode {
                PollMode::Guide => Resume::Guide,
                PollMode::Cursor => Resume::Cursor(String::new(), Default::default()),
            };
            users::run(&options, &|_| poll.clone(), resume).await
        }
        Contender::Nchan { url } => {
            users::run(
                &options,
                &|user| format!("{url}/sub/{user}"),
                Resume::Nchan(None),
            )
            .await
        }
        Contender::Consumers { amqp_url, .. } => consumers::run(&options, amqp_url).await,
    }
}
