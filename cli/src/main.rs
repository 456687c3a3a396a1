//! `longpoll`: the operator's command line.
//!
//! - `check-rabbitmq`: the guide's `check_rabbitmq` management command.
//! - `publish`: publish one event to a user or a college.
//! - `tail`: follow a user's (or college's) events live, without consuming them.
//! - `token`: mint a user token for local testing.
//! - `cost`: the monthly cost and broker size of a deployment, by compute mode ([`cost`]).
//!
//! Settings come from the same environment as the functions (`AMQP_URL`,
//! `EVENTS_EXCHANGE`, `JWT_SECRET`), with flags to override them.

mod cost;

use std::{process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use longpoll::{
    Config, RabbitBroker,
    broker::Publish,
    broker::check::check_rabbitmq,
    config::{DEFAULT_AMQP_URL, DEFAULT_EXCHANGE},
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
    /// Broker URL (amqp:// or amqps://).
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true, hide_default_value = true)]
    url: String,
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
    fn broker(&self) -> RabbitBroker {
        let mut config = Config::new(&self.url, None, "longpoll-cli");
        config.exchange = self.exchange.clone();
        RabbitBroker::new(&config)
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
            println!("Checking {}", longpoll::config::redact_url(&broker.url));
            let report = check_rabbitmq(
                &broker.url,
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
            if report.passed() {
                println!("RabbitMQ is ready for long polling.");
                Ok(())
            } else {
                Err("the broker check failed (see above)".to_owned())
            }
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
                .publish(&batch)
                .await
                .map_err(|error| error.to_string())?;
            for receipt in receipts {
                let routed = if receipt.routed {
                    "routed"
                } else {
                    "not routed: nobody of that audience is polling"
                };
                println!("{} {routed}", receipt.id);
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
                .broker()
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
        Command::Cost(args) => {
            print!("{}", cost::report(&args)?);
            Ok(())
        }
    }
}
