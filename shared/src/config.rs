//! Settings from the environment. Names and defaults follow the contract (the table
//! in docs/operations.md, "Configuration").

use std::{env, fmt, time::Duration};

use crate::{
    secrets::SecretError,
    shard::{MAX_BROKERS, SlotTable},
    topology::QueueType,
};

pub use crate::held::DEFAULT_MAX_POLLS_PER_USER;

/// Default broker: the local RabbitMQ with its stock credentials.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default cap on one user's device queues (`MAX_DEVICES_PER_USER`).
pub const DEFAULT_MAX_DEVICES_PER_USER: usize = 10;
/// Default topic exchange every event is published to.
pub const DEFAULT_EXCHANGE: &str = "longpoll.events";
/// How long a poll is held open when no event arrives (the guide's 5.5 s).
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_millis(5_500);
/// How long a user counts as online after their last poll (the guide's 5 minutes).
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(300);
/// How long to wait for the broker before answering 503: long enough for a TLS
/// handshake to Amazon MQ, short enough to leave room in a 5.5 s hold.
pub const DEFAULT_AMQP_TIMEOUT: Duration = Duration::from_millis(2_000);

/// The JWT secret of local development (the local server and `cargo lambda watch`
/// use it when `JWT_SECRET` is not set). Never for a deployment.
pub const DEV_JWT_SECRET: &str = "longpoll-local-dev-secret";
/// Shortest `JWT_SECRET` accepted (bar [`DEV_JWT_SECRET`]): an HS256 key shorter than
/// the hash's 32 bytes can be guessed offline from any one token.
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// The publish key of local development, likewise.
pub const DEV_PUBLISH_KEY: &str = "local-publish-key";

/// A setting that is missing or unusable. The message names the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is not set (required)")]
    Missing(&'static str),
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

/// A secret that could not be read is its `_ARN` setting being invalid.
impl From<SecretError> for ConfigError {
    fn from(SecretError { var, reason }: SecretError) -> Self {
        ConfigError::Invalid { var, reason }
    }
}

/// Everything a function needs to know about its surroundings.
#[derive(Clone)]
pub struct Config {
    /// Broker URL (`amqp://` or `amqps://`); holds a password, so never printed whole.
    pub amqp_url: String,
    /// Whether a broker was configured (`AMQP_URL`, `AMQP_URLS` or a secret) rather than
    /// defaulted: the local server then runs on RabbitMQ instead of in memory.
    pub amqp_url_given: bool,
    /// Every broker, in the order of `AMQP_URLS` (each a shard: a single node or a
    /// cluster's endpoint); just `amqp_url` when one broker is configured. The first is
    /// `amqp_url`.
    pub amqp_urls: Vec<String>,
    /// Which of `amqp_urls` holds each user (`AMQP_SLOTS`; even ranges by default).
    pub slots: SlotTable,
    /// In one shard's configuration ([`Config::shard`]), its number in `amqp_urls` of
    /// the deployment: metrics carry it as the `shard` label.
    pub shard: Option<usize>,
    /// Shared secret for HS256 user tokens; required by the functions that take a user
    /// token (see [`Config::require_jwt_secret`]).
    pub jwt_secret: Option<Vec<u8>>,
    /// The `iss` every user token must carry (`JWT_ISSUER`); unchecked when unset.
    pub jwt_issuer: Option<String>,
    /// An `aud` every user token must name (`JWT_AUDIENCE`); unchecked when unset.
    pub jwt_audience: Option<String>,
    /// Topic exchange events are published to and user queues are bound to.
    pub exchange: String,
    /// The hold of a poll that finds nothing (`POLL_TIMEOUT_MS`).
    pub poll_timeout: Duration,
    /// Lifetime of a presence queue after the last poll (`PRESENCE_TTL_MS`).
    pub presence_ttl: Duration,
    /// Bound on connecting and on each broker round trip (`AMQP_TIMEOUT_MS`).
    pub amqp_timeout: Duration,
    /// The key producers send as `X-Api-Key` to the publish endpoint (`PUBLISH_API_KEY`).
    pub publish_api_key: Option<String>,
    /// `PUBLISH_TRUST_IAM=true`: API Gateway authorises the publish route with IAM
    /// (`AWS_IAM`), so the function accepts requests that carry an IAM caller.
    pub publish_trust_iam: bool,
    /// Most polls one user may hold at once in this process (`MAX_POLLS_PER_USER`).
    pub max_polls_per_user: usize,
    /// Most device queues one user keeps (`MAX_DEVICES_PER_USER`); see
    /// [`DEFAULT_MAX_DEVICES_PER_USER`].
    pub max_devices_per_user: usize,
    /// What kind of queue holds each user's events (`QUEUE_TYPE`: `classic`, the
    /// default, for a single node; `quorum` for a cluster).
    pub queue_type: QueueType,
    /// The name this process's AMQP connection shows in the management UI and
    /// `rabbitmqctl list_connections`, so an operator can tell functions apart.
    pub connection_name: String,
}

impl Config {
    /// Reads the configuration from the process environment. `function` names the
    /// connection unless `AWS_LAMBDA_FUNCTION_NAME` gives a more specific name.
    pub fn from_env(function: &str) -> Result<Self, ConfigError> {
        Self::from_lookup(function, |name| env::var(name).ok())
    }

    /// The configuration of a deployed function: the environment, with `AMQP_URL` and
    /// `JWT_SECRET` taken from AWS Secrets Manager when `AMQP_SECRET_ARN` /
    /// `JWT_SECRET_ARN` are set (with the `secrets-manager` feature; without it, either
    /// set is an error that says so). Call once per cold start.
    pub async fn load(function: &str) -> Result<Self, ConfigError> {
        let environment = |name: &str| env::var(name).ok();
        let from_secrets = crate::secrets::fetch(&environment).await?;
        Self::from_lookup(function, |name| {
            from_secrets
                .get(name)
                .cloned()
                .or_else(|| environment(name))
        })
    }

    /// Reads the configuration through `lookup`, so tests need not touch the process
    /// environment.
    pub fn from_lookup(
        function: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let millis = |var: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(text) => match text.trim().parse::<u64>() {
                    Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                    _ => Err(ConfigError::Invalid {
                        var,
                        reason: format!("expected a positive number of milliseconds, got {text:?}"),
                    }),
                },
            }
        };
        let count = |var: &'static str, default: usize| -> Result<usize, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(text) => text.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ConfigError::Invalid {
                        var,
                        reason: format!("expected a positive whole number, got {text:?}"),
                    }
                }),
            }
        };
        let (amqp_urls, amqp_url_given) = broker_urls(get("AMQP_URL"), get("AMQP_URLS"))?;
        let slots = match get("AMQP_SLOTS") {
            None => SlotTable::even(amqp_urls.len()),
            Some(text) => SlotTable::parse(&text, amqp_urls.len()),
        }
        .map_err(|error| ConfigError::Invalid {
            var: "AMQP_SLOTS",
            reason: error.to_string(),
        })?;
        let jwt_secret = get("JWT_SECRET");
        if let Some(secret) = &jwt_secret
            && secret.len() < MIN_JWT_SECRET_BYTES
            && secret != DEV_JWT_SECRET
        {
            return Err(ConfigError::Invalid {
                var: "JWT_SECRET",
                reason: format!(
                    "{} bytes is too short to sign tokens safely; use at least {MIN_JWT_SECRET_BYTES} random bytes",
                    secret.len()
                ),
            });
        }
        Ok(Self {
            amqp_url: amqp_urls[0].clone(),
            amqp_url_given,
            amqp_urls,
            slots,
            shard: None,
            jwt_secret: jwt_secret.map(String::into_bytes),
            jwt_issuer: get("JWT_ISSUER"),
            jwt_audience: get("JWT_AUDIENCE"),
            exchange: get("EVENTS_EXCHANGE").unwrap_or_else(|| DEFAULT_EXCHANGE.to_owned()),
            poll_timeout: millis("POLL_TIMEOUT_MS", DEFAULT_POLL_TIMEOUT)?,
            presence_ttl: millis("PRESENCE_TTL_MS", DEFAULT_PRESENCE_TTL)?,
            amqp_timeout: millis("AMQP_TIMEOUT_MS", DEFAULT_AMQP_TIMEOUT)?,
            publish_api_key: get("PUBLISH_API_KEY"),
            publish_trust_iam: match get("PUBLISH_TRUST_IAM").as_deref().map(str::trim) {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        var: "PUBLISH_TRUST_IAM",
                        reason: format!("expected true or false, got {other:?}"),
                    });
                }
            },
            max_polls_per_user: count("MAX_POLLS_PER_USER", DEFAULT_MAX_POLLS_PER_USER)?,
            max_devices_per_user: count("MAX_DEVICES_PER_USER", DEFAULT_MAX_DEVICES_PER_USER)?,
            queue_type: match get("QUEUE_TYPE") {
                None => QueueType::default(),
                Some(text) => {
                    QueueType::parse(text.trim()).ok_or_else(|| ConfigError::Invalid {
                        var: "QUEUE_TYPE",
                        reason: format!("expected classic or quorum, got {text:?}"),
                    })?
                }
            },
            connection_name: get("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| function.to_owned()),
        })
    }

    /// A configuration for tools and tests: the given broker and secret, contract
    /// defaults for the rest.
    pub fn new(amqp_url: &str, jwt_secret: Option<&str>, connection_name: &str) -> Self {
        Self {
            amqp_url: amqp_url.to_owned(),
            amqp_url_given: true,
            amqp_urls: vec![amqp_url.to_owned()],
            slots: SlotTable::even(1).expect("one broker"),
            shard: None,
            jwt_secret: jwt_secret.map(|secret| secret.as_bytes().to_vec()),
            jwt_issuer: None,
            jwt_audience: None,
            exchange: DEFAULT_EXCHANGE.to_owned(),
            poll_timeout: DEFAULT_POLL_TIMEOUT,
            presence_ttl: DEFAULT_PRESENCE_TTL,
            amqp_timeout: DEFAULT_AMQP_TIMEOUT,
            publish_api_key: None,
            publish_trust_iam: false,
            max_polls_per_user: DEFAULT_MAX_POLLS_PER_USER,
            max_devices_per_user: DEFAULT_MAX_DEVICES_PER_USER,
            queue_type: QueueType::default(),
            connection_name: connection_name.to_owned(),
        }
    }

    /// The token secret, for the functions that verify user tokens.
    pub fn require_jwt_secret(&self) -> Result<&[u8], ConfigError> {
        self.jwt_secret
            .as_deref()
            .ok_or(ConfigError::Missing("JWT_SECRET"))
    }

    /// The broker URL with any password replaced, fit for logs and error messages.
    pub fn redacted_amqp_url(&self) -> String {
        redact_url(&self.amqp_url)
    }

    /// Whether users are spread over several brokers.
    pub fn sharded(&self) -> bool {
        self.amqp_urls.len() > 1
    }

    /// The configuration of one shard's broker: its URL alone, and a connection name that
    /// says which shard it is (`poll-events#shard-1`).
    pub fn shard(&self, index: usize) -> Config {
        let url = self.amqp_urls[index].clone();
        Config {
            amqp_url: url.clone(),
            amqp_urls: vec![url],
            slots: SlotTable::even(1).expect("one broker"),
            shard: Some(index),
            connection_name: format!("{}#shard-{index}", self.connection_name),
            ..self.clone()
        }
    }
}

/// The brokers: `AMQP_URL` (one), or `AMQP_URLS` (comma-separated, one per shard), or
/// the local default; and whether any was given. Each must be an AMQP URL, none empty
/// and none twice (the same host, port and vhost, whatever the credentials).
fn broker_urls(
    single: Option<String>,
    list: Option<String>,
) -> Result<(Vec<String>, bool), ConfigError> {
    let invalid = |var, reason: String| ConfigError::Invalid { var, reason };
    let (var, urls) = match (single, list) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "AMQP_URLS",
                "set AMQP_URL (one broker) or AMQP_URLS (several), not both".to_owned(),
            ));
        }
        (Some(url), None) => ("AMQP_URL", vec![url.trim().to_owned()]),
        (None, Some(list)) => (
            "AMQP_URLS",
            list.split(',').map(|url| url.trim().to_owned()).collect(),
        ),
        (None, None) => return Ok((vec![DEFAULT_AMQP_URL.to_owned()], false)),
    };
    if urls.len() > MAX_BROKERS {
        return Err(invalid(
            var,
            format!("{} brokers: at most {MAX_BROKERS}", urls.len()),
        ));
    }
    let mut seen: Vec<String> = Vec::with_capacity(urls.len());
    for (index, url) in urls.iter().enumerate() {
        let which = match var {
            "AMQP_URLS" => format!("broker {index} ({})", redact_url(url)),
            _ => "it".to_owned(),
        };
        if url.is_empty() {
            return Err(invalid(var, format!("broker {index} is empty")));
        }
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(invalid(
                var,
                format!("{which}: expected an amqp:// or amqps:// URL"),
            ));
        }
        let place = broker_place(url);
        if let Some(first) = seen.iter().position(|other| *other == place) {
            return Err(invalid(
                var,
                format!("{which} is broker {first} again: each broker is listed once"),
            ));
        }
        seen.push(place);
    }
    Ok((urls, true))
}

/// What names a broker in a URL, credentials left out: scheme, host and port (lower
/// case), and vhost.
fn broker_place(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let (host, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    format!("{scheme}://{}/{vhost}", host.to_ascii_lowercase())
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field(
                "amqp_urls",
                &self
                    .amqp_urls
                    .iter()
                    .map(|url| redact_url(url))
                    .collect::<Vec<_>>(),
            )
            .field("slots", &self.slots)
            .field("jwt_secret", &"<redacted>")
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("exchange", &self.exchange)
            .field("poll_timeout", &self.poll_timeout)
            .field("presence_ttl", &self.presence_ttl)
            .field("amqp_timeout", &self.amqp_timeout)
            .field(
                "publish_api_key",
                &self.publish_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("publish_trust_iam", &self.publish_trust_iam)
            .field("max_polls_per_user", &self.max_polls_per_user)
            .field("max_devices_per_user", &self.max_devices_per_user)
            .field("queue_type", &self.queue_type)
            .field("connection_name", &self.connection_name)
            .finish()
    }
}

/// `amqp://user:secret@host/` → `amqp://user:***@host/`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup("poll-events", |name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = config(&[("JWT_SECRET", "a-secret-of-thirty-two-bytes-xyz")]).unwrap();
        assert_eq!(config.amqp_url, DEFAULT_AMQP_URL);
        assert_eq!(config.exchange, "longpoll.events");
        assert_eq!(config.poll_timeout, Duration::from_millis(5500));
        assert_eq!(config.presence_ttl, Duration::from_secs(300));
        assert_eq!(config.connection_name, "poll-events");
        assert_eq!(config.queue_type, QueueType::Classic);
    }

    #[test]
    fn the_queue_type_is_classic_or_quorum() {
        let quorum = config(&[("QUEUE_TYPE", "quorum")]).unwrap();
        assert_eq!(quorum.queue_type, QueueType::Quorum);
        let error = config_error(&[("QUEUE_TYPE", "mirrored")]);
        assert!(
            error.to_string().starts_with("QUEUE_TYPE is invalid"),
            "{error}"
        );
    }

    #[test]
    fn a_short_jwt_secret_is_refused_unless_it_is_the_development_one() {
        let error = config_error(&[("JWT_SECRET", "only-twenty-bytes-xx")]);
        assert!(
            error.to_string().starts_with("JWT_SECRET is invalid"),
            "{error}"
        );
        assert!(error.to_string().contains("at least 32"));
        assert!(config(&[("JWT_SECRET", DEV_JWT_SECRET)]).is_ok());
        let issuer = config(&[
            ("JWT_SECRET", DEV_JWT_SECRET),
            ("JWT_ISSUER", "https://auth.example.edu"),
            ("JWT_AUDIENCE", "longpoll"),
        ])
        .unwrap();
        assert_eq!(
            issuer.jwt_issuer.as_deref(),
            Some("https://auth.example.edu")
        );
        assert_eq!(issuer.jwt_audience.as_deref(), Some("longpoll"));
    }

    #[test]
    fn a_missing_secret_names_the_variable() {
        let config = config(&[]).unwrap();
        let error = config.require_jwt_secret().unwrap_err();
        assert_eq!(error, ConfigError::Missing("JWT_SECRET"));
        assert!(error.to_string().contains("JWT_SECRET"));
    }

    #[test]
    fn publish_settings_are_read() {
        let config = config(&[("PUBLISH_API_KEY", "k"), ("PUBLISH_TRUST_IAM", "true")]).unwrap();
        assert_eq!(config.publish_api_key.as_deref(), Some("k"));
        assert!(config.publish_trust_iam);
        let error = config_error(&[("PUBLISH_TRUST_IAM", "yes")]);
        assert!(
            error
                .to_string()
                .starts_with("PUBLISH_TRUST_IAM is invalid")
        );
    }

    fn config_error(vars: &[(&str, &str)]) -> ConfigError {
        config(vars).unwrap_err()
    }

    #[test]
    fn bad_numbers_and_urls_name_the_variable() {
        let error = config(&[
            ("JWT_SECRET", "a-secret-of-thirty-two-bytes-xyz"),
            ("POLL_TIMEOUT_MS", "soon"),
        ])
        .unwrap_err();
        assert!(error.to_string().starts_with("POLL_TIMEOUT_MS is invalid"));
        let error = config(&[
            ("JWT_SECRET", "a-secret-of-thirty-two-bytes-xyz"),
            ("AMQP_URL", "http://x"),
        ])
        .unwrap_err();
        assert!(error.to_string().starts_with("AMQP_URL is invalid"));
    }

    #[test]
    fn several_brokers_are_listed_once_each() {
        let urls = "amqp://a:1@b-1.example:5671/%2f, amqp://a:2@B-2.example:5671/%2f";
        let sharded = config(&[("AMQP_URLS", urls)]).unwrap();
        assert!(sharded.sharded());
        assert_eq!(sharded.amqp_url, "amqp://a:1@b-1.example:5671/%2f");
        assert_eq!(sharded.amqp_urls.len(), 2);
        assert_eq!(
            sharded.slots.to_setting(),
            "0-8191:0,8192-16383:1",
            "even by default"
        );
        let second = sharded.shard(1);
        assert_eq!(second.amqp_url, "amqp://a:2@B-2.example:5671/%2f");
        assert!(!second.sharded());
        assert_eq!(second.connection_name, "poll-events#shard-1");
        assert!(!config(&[]).unwrap().sharded());
    }

    #[test]
    fn a_bad_broker_list_or_table_is_refused_at_start() {
        let refused = [
            (
                vec![("AMQP_URLS", " , ")],
                "AMQP_URLS is invalid: broker 0 is empty",
            ),
            (vec![("AMQP_URLS", "amqp://h1/,")], "broker 1 is empty"),
            (vec![("AMQP_URLS", "amqp://h1/,http://h2/")], "broker 1"),
            (
                vec![("AMQP_URLS", "amqp://u:p@h1:5672/%2f,amqp://v:q@H1:5672/%2f")],
                "broker 1 (amqp://v:***@H1:5672/%2f) is broker 0 again",
            ),
            (
                vec![("AMQP_URLS", "amqp://h1/"), ("AMQP_URL", "amqp://h1/")],
                "not both",
            ),
            (
                vec![
                    ("AMQP_URLS", "amqp://h1/,amqp://h2/"),
                    ("AMQP_SLOTS", "0-100:0"),
                ],
                "AMQP_SLOTS is invalid: slot 101 has no broker",
            ),
            (
                vec![
                    ("AMQP_URLS", "amqp://h1/,amqp://h2/"),
                    ("AMQP_SLOTS", "0-16383:0"),
                ],
                "broker 1 holds no slot",
            ),
        ];
        for (vars, expected) in refused {
            let error = config(&vars).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(expected), "{vars:?}: {error}");
        }
        // Vhosts tell brokers apart: one RabbitMQ may serve two shards.
        assert!(config(&[("AMQP_URLS", "amqp://h1/a,amqp://h1/b")]).is_ok());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = config(&[
            ("JWT_SECRET", "topsecret-topsecret-topsecret-top"),
            (
                "AMQP_URL",
                "amqps://user:hunter2@b-1.mq.amazonaws.com:5671/%2f",
            ),
        ])
        .unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("topsecret"),
            "{shown}"
        );
        assert!(shown.contains("amqps://user:***@b-1.mq.amazonaws.com:5671/%2f"));
    }
}
