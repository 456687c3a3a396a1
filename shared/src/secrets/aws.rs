//! Reading the secrets through the AWS SDK (feature `secrets-manager`).

use std::collections::HashMap;

use aws_config::BehaviorVersion;
use aws_sdk_secretsmanager::Client;
use aws_smithy_http_client::{
    Builder,
    tls::{Provider, rustls_provider::CryptoMode},
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::{SECRET_BACKED, SecretError};

/// Fetches the secrets whose ARNs `lookup` names and returns the settings they give,
/// by variable name (`AMQP_URL`, `JWT_SECRET`). Empty when no ARN is set.
pub async fn fetch(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<HashMap<&'static str, String>, SecretError> {
    let wanted: Vec<(&'static str, &'static str, String)> = SECRET_BACKED
        .iter()
        .filter_map(|&(var, arn_var)| {
            let arn = lookup(arn_var).filter(|arn| !arn.trim().is_empty())?;
            Some((var, arn_var, arn))
        })
        .collect();
    let mut settings = HashMap::new();
    if wanted.is_empty() {
        return Ok(settings);
    }
    let client = client().await;
    for (var, arn_var, arn) in wanted {
        let value = read(&client, arn_var, &arn).await?;
        let setting = match var {
            "AMQP_URL" => {
                broker_url(&value, lookup("AMQP_URL").as_deref()).map_err(|reason| SecretError {
                    var: arn_var,
                    reason,
                })?
            }
            _ => value,
        };
        settings.insert(var, setting);
    }
    Ok(settings)
}

async fn client() -> Client {
    // The SDK's HTTPS client, on rustls with ring (see the workspace Cargo.toml).
    let http_client = Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .load()
        .await;
    Client::new(&config)
}

async fn read(client: &Client, arn_var: &'static str, arn: &str) -> Result<String, SecretError> {
    let output = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|error| SecretError {
            var: arn_var,
            // The SDK's error chain names the cause (access denied, not found,
            // unreachable endpoint); it never includes the secret.
            reason: format!(
                "cannot read the secret: {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(&error)
            ),
        })?;
    output
        .secret_string()
        .map(str::to_owned)
        .ok_or_else(|| SecretError {
            var: arn_var,
            reason: "the secret has no string value".to_owned(),
        })
}

#[derive(Deserialize)]
struct BrokerSecret {
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Userinfo may not hold these unescaped (RFC 3986); encode all but unreserved characters.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The broker URL a secret gives, with `endpoint` (`AMQP_URL` from the environment) as
/// the host when the secret holds only credentials.
fn broker_url(secret: &str, endpoint: Option<&str>) -> Result<String, String> {
    let secret = secret.trim();
    if secret.starts_with("amqp://") || secret.starts_with("amqps://") {
        return Ok(secret.to_owned());
    }
    let parsed: BrokerSecret = serde_json::from_str(secret).map_err(|_| {
        "expected an amqp(s):// URL, or JSON with `url` or with `username` and `password`"
            .to_owned()
    })?;
    if let Some(url) = parsed.url {
        return Ok(url);
    }
    let (Some(username), Some(password)) = (parsed.username, parsed.password) else {
        return Err("the JSON secret has neither `url` nor `username` and `password`".to_owned());
    };
    let endpoint = endpoint.ok_or_else(|| {
        "the secret holds credentials only: set AMQP_URL to the broker endpoint (amqps://host:5671)"
            .to_owned()
    })?;
    let (scheme, rest) = endpoint
        .split_once("://")
        .ok_or_else(|| format!("AMQP_URL {endpoint:?} is not a URL"))?;
    // Any credentials already in the endpoint are replaced by the secret's.
    let host_and_path = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    Ok(format!(
        "{scheme}://{}:{}@{host_and_path}",
        utf8_percent_encode(&username, USERINFO),
        utf8_percent_encode(&password, USERINFO)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_secret_may_be_a_url_or_json() {
        let url = "amqps://u:p@b-1.mq.eu-west-1.amazonaws.com:5671";
        assert_eq!(broker_url(url, None).unwrap(), url);
        assert_eq!(
            broker_url(&format!(r#"{{"url": "{url}"}}"#), None).unwrap(),
            url
        );
        assert_eq!(
            broker_url(
                r#"{"username": "longpoll", "password": "p@ss/w:rd"}"#,
                Some("amqps://b-1.mq.eu-west-1.amazonaws.com:5671")
            )
            .unwrap(),
            "amqps://longpoll:p%40ss%2Fw%3Ard@b-1.mq.eu-west-1.amazonaws.com:5671"
        );
        assert_eq!(
            broker_url(
                r#"{"username": "a", "password": "b"}"#,
                Some("amqp://guest:guest@127.0.0.1:5672/%2f")
            )
            .unwrap(),
            "amqp://a:b@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn a_broker_secret_without_what_it_needs_is_refused() {
        assert!(broker_url("hunter2", None).is_err());
        assert!(broker_url(r#"{"username": "a"}"#, Some("amqp://h")).is_err());
        let needs_endpoint = broker_url(r#"{"username": "a", "password": "b"}"#, None);
        assert!(needs_endpoint.unwrap_err().contains("AMQP_URL"));
    }

    #[tokio::test]
    async fn nothing_is_fetched_without_arns() {
        let settings = fetch(&|name: &str| (name == "AMQP_URL").then(|| "amqp://h".to_owned()))
            .await
            .unwrap();
        assert!(settings.is_empty());
    }
}
