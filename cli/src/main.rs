//! `longpoll`: the operator's command line.
//!
//! - `check-rabbitmq`: the guide's `check_rabbitmq` management command.
//! - `publish`: publish one event to a user or a college.
//! - `tail`: follow a user's (or college's) events live, without consuming them.
//! - `shard`: which broker holds a user, and the slot table ([`shard`]).
//! - `token`: mint a user token for local testing.
//! - `cost`: the monthly cost and broker size of a deployment, by compute mode ([`cost`]).
//!
//! Settings come from the same environment as the functions (`AMQP_URL` or `AMQP_URLS`
//! and `AMQP_SLOTS`, `EVENTS_EXCHANGE`, `JWT_SECRET`), with flags to override them; with
//! several brokers, each command works per shard.

mod cost;
mod shard;

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use longpoll::{
    Broker, Config, RabbitBroker,
    broker::{self, check::check_rabbitmq},
    config::{DEFAULT_EXCHANGE, redact_url},
    publish::parse_publish_body,
    token::TokenIssuer,
    topology::{Audience, CollegeId, Subscriber, UserId},
};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "longpoll",
    version,
    about = "Operate the long-polling event system: check the broker, publish, tail, mint tokens."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that the broker can serve the project: identity, login, round trip, the
    /// events exchange, and a probe queue declared, published to, consumed and deleted.
    /// Exits 0 only when every step works.
    CheckRabbitmq {
        #[command(flatten)]
        broker: BrokerArgs,
        /// Declare the events exchange if it is missing instead of failing.
        #[arg(long)]
        declare_exchange: bool,
        /// Bound on each step, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Publish one event (persistent, confirmed) to a user or a college, and print its
    /// id and whether any queue took it.
    Publish {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        audience: AudienceArgs,
        /// Event type: message, typing, read_receipt or notification.
        #[arg(long)]
        event: String,
        /// The event's data, as JSON, e.g. '{"title": "Hi", "message": "there"}'.
        #[arg(long)]
        data: String,
    },
    /// Print a user's (or college's) events as JSON lines as they are published. A
    /// private queue gets a copy of each: the user's own queue is not touched.
    Tail {
        #[command(flatten)]
        broker: BrokerArgs,
        /// The user whose events to follow.
        #[arg(long)]
        user: Option<u64>,
        /// Also (or only) follow this college's events.
        #[arg(long)]
        college: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Which broker (shard) holds each user, by the contract's placement; the slot
    /// table; or the table with one more broker.
    Shard(shard::ShardArgs),
    /// Mint a user token (HS256) with JWT_SECRET, for local testing.
    Token {
        #[arg(long)]
        user: u64,
        #[arg(long)]
        college: Option<u64>,
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The signing secret (default: JWT_SECRET).
        #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Print the monthly cost (compute, requests, API Gateway or load balancer, logs,
    /// broker) and the broker size for standard Lambda, Lambda Managed Instances and the
    /// local server in containers, and from how many online users each is cheaper.
    Cost(cost::CostArgs),
}

#[derive(Args)]
struct BrokerArgs {
    /// Broker URL (amqp:// or amqps://); the local RabbitMQ by default.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    url: Option<String>,
    /// Several brokers, comma-separated, one per shard, in the deployment's order
    /// (wins over `--url`).
    #[arg(long, env = "AMQP_URLS", hide_env_values = true)]
    urls: Option<String>,
    /// The slot table over `--urls` (default: even ranges).
    #[arg(long, env = "AMQP_SLOTS")]
    slots: Option<String>,
    /// The events exchange.
    #[arg(long, env = "EVENTS_EXCHANGE", default_value = DEFAULT_EXCHANGE)]
    exchange: String,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct AudienceArgs {
    /// Publish to this user.
    #[arg(long)]
    user: Option<u64>,
    /// Publish to every polling member of this college.
    #[arg(long)]
    college: Option<u64>,
}

impl BrokerArgs {
    /// The brokers and their slot table, checked as the functions check them.
    fn config(&self) -> Result<Config, String> {
        let lookup = |name: &str| match name {
            "AMQP_URL" if self.urls.is_none() => self.url.clone(),
            "AMQP_URLS" => self.urls.clone(),
            "AMQP_SLOTS" => self.slots.clone(),
            "EVENTS_EXCHANGE" => Some(self.exchange.clone()),
            _ => None,
        };
        Config::from_lookup("longpoll-cli", lookup).map_err(|error| error.to_string())
    }

    /// Publishing to every broker, each event to its user's shard.
    async fn broker(&self) -> Result<Arc<dyn Broker>, String> {
        broker::open(&self.config()?, |config| {
            Arc::new(RabbitBroker::new(config))
        })
        .await
        .map_err(|stale| stale.to_string())
    }

    /// The RabbitMQ of `user`'s shard (the first broker when no user is named: every
    /// shard gets every college event).
    fn broker_of(&self, user: Option<UserId>) -> Result<RabbitBroker, String> {
        let config = self.config()?;
        let shard = user.map_or(0, |user| config.slots.broker_of(user));
        Ok(RabbitBroker::new(&config.shard(shard)))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("longpoll: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::CheckRabbitmq {
            broker,
            declare_exchange,
            timeout_ms,
        } => {
            let config = broker.config()?;
            let mut failed = Vec::new();
            for (index, url) in config.amqp_urls.iter().enumerate() {
                match config.sharded() {
                    true => println!("Checking shard {index}: {}", redact_url(url)),
                    false => println!("Checking {}", redact_url(url)),
                }
                let report = check_rabbitmq(
                    url,
                    &broker.exchange,
                    declare_exchange,
                    Duration::from_millis(timeout_ms),
                )
                .await;
                for step in &report.steps {
                    println!(
                        "  [{}] {:<12} {}",
                        if step.ok { "ok" } else { "FAIL" },
                        step.name,
                        step.detail
                    );
                    if let Some(hint) = &step.hint {
                        eprintln!("         hint: {hint}");
                    }
                }
                if !report.passed() {
                    failed.push(index);
                }
            }
            match (failed.is_empty(), config.sharded()) {
                (true, false) => println!("RabbitMQ is ready for long polling."),
                (true, true) => println!("Every shard is ready for long polling."),
                (false, false) => return Err("the broker check failed (see above)".to_owned()),
                (false, true) => {
                    return Err(format!("the check failed on shards {failed:?} (see above)"));
                }
            }
            Ok(())
        }
        Command::Publish {
            broker,
            audience,
            event,
            data,
        } => {
            let data: serde_json::Value = serde_json::from_str(&data)
                .map_err(|error| format!("--data is not JSON: {error}"))?;
            let mut body = json!({"event": event, "data": data});
            match (audience.user, audience.college) {
                (Some(user), _) => body["user_id"] = json!(user),
                (_, Some(college)) => body["college_id"] = json!(college),
                _ => unreachable!("clap requires one of --user and --college"),
            }
            let batch = parse_publish_body(body.to_string().as_bytes())
                .map_err(|error| error.to_string())?;
            let receipts = broker
                .broker()
                .await?
                .publish(&batch)
                .await
                .map_err(|error| error.to_string())?;
            for receipt in receipts {
                let routed = if receipt.routed {
                    "routed"
                } else {
                    "not routed: nobody of that audience is polling"
                };
                match receipt.unreached_shards.as_slice() {
                    [] => println!("{} {routed}", receipt.id),
                    missed => println!(
                        "{} {routed}; shards {missed:?} were out of reach: their members missed it",
                        receipt.id
                    ),
                }
            }
            Ok(())
        }
        Command::Tail {
            broker,
            user,
            college,
            count,
        } => {
            let mut keys = Vec::new();
            if let Some(user) = user {
                keys = Subscriber {
                    user_id: UserId(user),
                    college_id: college.map(CollegeId),
                    device: None,
                }
                .routing_keys();
            } else if let Some(college) = college {
                keys.push(Audience::College(CollegeId(college)).routing_key());
            } else {
                return Err("give --user, --college or both".to_owned());
            }
            let mut tail = broker
                .broker_of(user.map(UserId))?
                .tail(&keys)
                .await
                .map_err(|error| error.to_string())?;
            eprintln!("Following {} (Ctrl-C to stop)", keys.join(", "));
            let mut seen = 0;
            while count.is_none_or(|count| seen < count) {
                match tail.next().await {
                    Some(Ok(event)) => {
                        println!(
                            "{}",
                            serde_json::to_string(&event).expect("events serialize")
                        );
                        seen += 1;
                    }
                    Some(Err(error)) => return Err(error.to_string()),
                    None => return Err("the broker ended the tail".to_owned()),
                }
            }
            Ok(())
        }
        Command::Token {
            user,
            college,
            name,
            ttl,
            secret,
        } => {
            if user == 0 {
                return Err("--user must be a positive user id".to_owned());
            }
            let secret = secret.ok_or("JWT_SECRET is not set (or pass --secret)")?;
            let issuer = TokenIssuer::new(secret.as_bytes());
            println!(
                "{}",
                issuer.mint(
                    UserId(user),
                    college.map(CollegeId),
                    name.as_deref(),
                    Duration::from_secs(ttl)
                )
            );
            Ok(())
        }
        Command::Shard(args) => {
            print!("{}", shard::report(&args)?);
            Ok(())
        }
        Command::Cost(args) => {
            print!("{}", cost::report(&args)?);
            Ok(())
        }
    }
}
