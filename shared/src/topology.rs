//! The AMQP layout from the contract, written down once: names, routing keys and queue
//! arguments. Brokers turn these into frames (RabbitMQ) or into rules (memory); nothing
//! else spells a queue name.

use std::{fmt, time::Duration};

use crate::event::EVENT_TTL;

/// Most events a user queue keeps; past it the oldest is dropped (`x-overflow: drop-head`).
pub const MAX_QUEUE_LENGTH: usize = 100;
/// Most events one poll returns.
pub const MAX_BATCH: usize = 100;
/// An unused user queue is deleted after this (`x-expires`), as are its events.
pub const USER_QUEUE_EXPIRES: Duration = Duration::from_secs(30 * 60);
/// Time to live of an event in a user queue (`x-message-ttl`).
pub const QUEUE_MESSAGE_TTL: Duration = EVENT_TTL;

/// A user, as the `sub` claim of their token names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub u64);

/// A college: its events reach every polling member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollegeId(pub u64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for CollegeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who an event is for; decides its routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Audience {
    User(UserId),
    College(CollegeId),
}

impl Audience {
    /// `user.<id>` or `college.<id>`.
    pub fn routing_key(self) -> String {
        match self {
            Audience::User(user) => format!("user.{user}"),
            Audience::College(college) => format!("college.{college}"),
        }
    }
}

/// One tab or device of a user (`?device=`): 1 to 64 of `A-Za-z0-9_-`, so it is safe in a
/// queue name and cannot make one user's queue look like another's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(String);

/// Longest device id.
pub const MAX_DEVICE_ID_LENGTH: usize = 64;

impl DeviceId {
    /// The device id in `text`, if it is a valid one.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = (1..=MAX_DEVICE_ID_LENGTH).contains(&text.len())
            && text
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
        valid.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A polling user (or one of their devices): whose queue to read and which routing keys
/// feed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub user_id: UserId,
    pub college_id: Option<CollegeId>,
    /// `None`: the guide's one queue per user, shared by all their tabs. `Some`: a queue
    /// of the device's own, bound to the same keys, so every device gets every event.
    pub device: Option<DeviceId>,
}

impl Subscriber {
    /// `event_queue:user:<id>`, or `event_queue:user:<id>:<device>`.
    pub fn queue_name(&self) -> String {
        match &self.device {
            None => format!("event_queue:user:{}", self.user_id),
            Some(device) => format!("event_queue:user:{}:{}", self.user_id, device.as_str()),
        }
    }

    /// The routing keys bound to the queue: the user's own and, for a member of a
    /// college, the college's, so a college event reaches each member once.
    pub fn routing_keys(&self) -> Vec<String> {
        let mut keys = vec![Audience::User(self.user_id).routing_key()];
        if let Some(college) = self.college_id {
            keys.push(Audience::College(college).routing_key());
        }
        keys
    }
}

/// `online_status:user:<id>`: exists while the user is online.
pub fn presence_queue_name(user: UserId) -> String {
    format!("online_status:user:{user}")
}

/// `college.<college>.user.<user>`: the key a college member's presence queue is bound
/// under on the presence exchange, so a lookup scoped to the college finds only members.
pub fn college_presence_key(college: CollegeId, user: UserId) -> String {
    format!("college.{college}.user.{user}")
}

/// What kind of RabbitMQ queue holds each user's events (`QUEUE_TYPE`); see
/// docs/decisions/0001-cluster-queue-model.md for the figures behind the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// One copy on one node: the cheapest, and right for a single-node broker. On a
    /// cluster the queue is out of reach while its node is down.
    #[default]
    Classic,
    /// A Raft group replicated on three nodes: survives losing any one of them. For a
    /// cluster (RabbitMQ 3.10 or later; 3.13 or later on Amazon MQ).
    Quorum,
}

/// Most times a quorum queue hands out one event before dropping it. Cursor polls
/// return every event they answer with to the queue until it is acknowledged, and
/// RabbitMQ 4.0–4.2 count each return (their default limit, 20, would drop the events
/// of a client whose answers keep getting lost); the 30-minute TTL ends them long before
/// this. Explicit because -1, which disables the limit on 4.x, drops an event at its first
/// return on 3.10 (checked here).
pub const QUORUM_DELIVERY_LIMIT: u64 = 1_000_000;

impl QueueType {
    /// `classic` or `quorum`, as `x-queue-type` and `QUEUE_TYPE` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "classic" => Some(QueueType::Classic),
            "quorum" => Some(QueueType::Quorum),
            _ => None,
        }
    }
}

/// The arguments of every user queue, in the contract's words. `x-queue-type` is
/// explicit because Amazon MQ on RabbitMQ 4 would otherwise make a quorum queue.
pub fn user_queue_arguments(queue_type: QueueType) -> Vec<(&'static str, QueueArgument)> {
    let mut arguments = vec![
        ("x-queue-type", QueueArgument::Text(queue_type.as_str())),
        (
            "x-max-length",
            QueueArgument::Number(MAX_QUEUE_LENGTH as u64),
        ),
        ("x-overflow", QueueArgument::Text("drop-head")),
        (
            "x-message-ttl",
            QueueArgument::Number(millis(QUEUE_MESSAGE_TTL)),
        ),
        (
            "x-expires",
            QueueArgument::Number(millis(USER_QUEUE_EXPIRES)),
        ),
    ];
    if queue_type == QueueType::Quorum {
        arguments.push((
            "x-delivery-limit",
            QueueArgument::Number(QUORUM_DELIVERY_LIMIT),
        ));
        arguments.push((SINGLE_ACTIVE_CONSUMER, QueueArgument::Flag(true)));
    }
    arguments
}

/// One reader at a time on a quorum user queue. Cursor mode removes everything up to
/// the id a client names, which is only what the client saw if each poll read the
/// queue from its head, alone. On a cluster two polls of one queue overlap: one that
/// outlived the browser's patience (a node restarting under it) while the next is
/// held, or a process's poll on a dying connection. The other takes events, never
/// answers them and gives them back to the head later, behind newer events the client
/// has since acknowledged, and the next acknowledgement removed them unseen (issue 32's
/// drill: 7–11 % of confirmed events). With this a second consumer waits until the
/// first one's channel is gone and what it held is back at the head, in order. Not on
/// classic queues: exclusive consume is refused with a channel error (which would end a
/// shared lane's other polls), and the local server's lingering consumers would make
/// another server's polls wait out the linger.
pub const SINGLE_ACTIVE_CONSUMER: &str = "x-single-active-consumer";

/// `bindings:<queue>`: holds one message, the routing keys `queue` was last bound to
/// (space-separated). AMQP cannot list a queue's bindings, so this record is how a poll
/// whose token moved to another college finds the old college's binding to remove.
pub fn binding_record_queue_name(queue: &str) -> String {
    format!("bindings:{queue}")
}

/// The arguments of a binding record: the latest record only, gone with its queue.
pub fn binding_record_arguments() -> Vec<(&'static str, QueueArgument)> {
    vec![
        ("x-queue-type", QueueArgument::Text("classic")),
        ("x-max-length", QueueArgument::Number(1)),
        ("x-overflow", QueueArgument::Text("drop-head")),
        (
            "x-expires",
            QueueArgument::Number(millis(USER_QUEUE_EXPIRES)),
        ),
    ]
}

/// The arguments of a presence queue: it expires `ttl` after the last poll.
pub fn presence_queue_arguments(ttl: Duration) -> Vec<(&'static str, QueueArgument)> {
    vec![
        ("x-queue-type", QueueArgument::Text("classic")),
        ("x-expires", QueueArgument::Number(millis(ttl))),
    ]
}

/// A queue argument value: the contract uses strings, whole numbers and one flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueArgument {
    Text(&'static str),
    Number(u64),
    Flag(bool),
}

/// Milliseconds, as AMQP arguments and the `expiration` property count time.
pub fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys_follow_the_contract() {
        let subscriber = Subscriber {
            user_id: UserId(42),
            college_id: Some(CollegeId(5)),
            device: None,
        };
        assert_eq!(subscriber.queue_name(), "event_queue:user:42");
        assert_eq!(subscriber.routing_keys(), ["user.42", "college.5"]);
        assert_eq!(presence_queue_name(UserId(42)), "online_status:user:42");
        let loner = Subscriber {
            user_id: UserId(7),
            college_id: None,
            device: None,
        };
        assert_eq!(loner.routing_keys(), ["user.7"]);
        let tab = Subscriber {
            device: DeviceId::parse("tab-1_a"),
            ..subscriber
        };
        assert_eq!(tab.queue_name(), "event_queue:user:42:tab-1_a");
        assert_eq!(tab.routing_keys(), ["user.42", "college.5"]);
    }

    #[test]
    fn device_ids_are_short_and_plain() {
        assert!(DeviceId::parse("a").is_some());
        assert!(DeviceId::parse(&"x".repeat(64)).is_some());
        for bad in ["", "a:b", "a b", "é", "a.b", "a/b", &"x".repeat(65)] {
            assert!(DeviceId::parse(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn user_queue_arguments_are_the_contract_values() {
        for queue_type in [QueueType::Classic, QueueType::Quorum] {
            let args = user_queue_arguments(queue_type);
            let get = |name: &str| args.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
            assert_eq!(
                get("x-queue-type"),
                Some(QueueArgument::Text(queue_type.as_str()))
            );
            assert_eq!(get("x-max-length"), Some(QueueArgument::Number(100)));
            assert_eq!(get("x-overflow"), Some(QueueArgument::Text("drop-head")));
            assert_eq!(get("x-message-ttl"), Some(QueueArgument::Number(1_800_000)));
            assert_eq!(get("x-expires"), Some(QueueArgument::Number(1_800_000)));
            let limit = (queue_type == QueueType::Quorum)
                .then_some(QueueArgument::Number(QUORUM_DELIVERY_LIMIT));
            assert_eq!(get("x-delivery-limit"), limit);
            let single = (queue_type == QueueType::Quorum).then_some(QueueArgument::Flag(true));
            assert_eq!(get(SINGLE_ACTIVE_CONSUMER), single);
        }
        assert_eq!(QueueType::parse("quorum"), Some(QueueType::Quorum));
        assert_eq!(QueueType::parse("stream"), None);
    }
}
