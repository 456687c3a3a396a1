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
/// by variable name (`AMQP_URL`, `AMQP_URLS`, `JWT_SECRET`). Empty when no ARN is set.
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
    let given = |var: &str| lookup(var).is_some_and(|value| !value.trim().is_empty());
    if given("AMQP_SECRET_ARN") && (given("AMQP_SECRET_ARNS") || given("AMQP_URLS")) {
        return Err(SecretError {
            var: "AMQP_SECRET_ARN",
            reason: "it is for one broker (AMQP_URL); with several, set AMQP_SECRET_ARNS, \
                     one secret per broker in AMQP_URLS"
                .to_owned(),
        });
    }
    let client = client().await;
    for (var, arn_var, arn) in wanted {
        let invalid = |reason| SecretError {
            var: arn_var,
            reason,
        };
        let setting = match var {
            "AMQP_URL" => {
                let value = read(&client, arn_var, &arn).await?;
                broker_url(&value, lookup(var).as_deref(), var).map_err(invalid)?
            }
            "AMQP_URLS" => {
                let arns: Vec<&str> = arn.split(',').map(str::trim).collect();
                let values = futures_util::future::try_join_all(
                    arns.iter().map(|arn| read(&client, arn_var, arn)),
                )
                .await?;
                shard_urls(&values, lookup(var).as_deref()).map_err(invalid)?
            }
            _ => read(&client, arn_var, &arn).await?,
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

/// The broker URL a secret gives, with `endpoint` (from the variable `endpoint_var`) as
/// the host when the secret holds only credentials.
fn broker_url(secret: &str, endpoint: Option<&str>, endpoint_var: &str) -> Result<String, String> {
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
        format!(
            "the secret holds credentials only: set {endpoint_var} to the broker endpoint \
             (amqps://host:5671)"
        )
    })?;
    let (scheme, rest) = endpoint
        .split_once("://")
        .ok_or_else(|| format!("{endpoint_var} {endpoint:?} is not a URL"))?;
    // Any credentials already in the endpoint are replaced by the secret's.
    let host_and_path = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    Ok(format!(
        "{scheme}://{}:{}@{host_and_path}",
        utf8_percent_encode(&username, USERINFO),
        utf8_percent_encode(&password, USERINFO)
    ))
}

/// `AMQP_URLS` from one secret per broker (`secrets`, in the order of the ARNs), each
/// completing the broker at the same place in `endpoints` (`AMQP_URLS` from the
/// environment) when it holds only credentials. Without `endpoints` every secret must
/// hold a whole URL.
fn shard_urls(secrets: &[String], endpoints: Option<&str>) -> Result<String, String> {
    let endpoints: Option<Vec<&str>> =
        endpoints.map(|list| list.split(',').map(str::trim).collect());
    if let Some(endpoints) = &endpoints
        && endpoints.len() != secrets.len()
    {
        return Err(format!(
            "{} secrets for {} brokers in AMQP_URLS: give one per broker, in the same order",
            secrets.len(),
            endpoints.len()
        ));
    }
    let urls = secrets
        .iter()
        .enumerate()
        .map(|(index, secret)| {
            let endpoint = endpoints.as_ref().map(|endpoints| endpoints[index]);
            broker_url(secret, endpoint, &format!("broker {index} of AMQP_URLS"))
                .map_err(|reason| format!("secret {index}: {reason}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(urls.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_secret_may_be_a_url_or_json() {
        let url = "amqps://u:p@b-1.mq.eu-west-1.amazonaws.com:5671";
        assert_eq!(broker_url(url, None, "AMQP_URL").unwrap(), url);
        assert_eq!(
            broker_url(&format!(r#"{{"url": "{url}"}}"#), None, "AMQP_URL").unwrap(),
            url
        );
        assert_eq!(
            broker_url(
                r#"{"username": "longpoll", "password": "p@ss/w:rd"}"#,
                Some("amqps://b-1.mq.eu-west-1.amazonaws.com:5671"),
                "AMQP_URL"
            )
            .unwrap(),
            "amqps://longpoll:p%40ss%2Fw%3Ard@b-1.mq.eu-west-1.amazonaws.com:5671"
        );
        assert_eq!(
            broker_url(
                r#"{"username": "a", "password": "b"}"#,
                Some("amqp://guest:guest@127.0.0.1:5672/%2f"),
                "AMQP_URL"
            )
            .unwrap(),
            "amqp://a:b@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn a_broker_secret_without_what_it_needs_is_refused() {
        assert!(broker_url("hunter2", None, "AMQP_URL").is_err());
        assert!(broker_url(r#"{"username": "a"}"#, Some("amqp://h"), "AMQP_URL").is_err());
        let needs_endpoint = broker_url(r#"{"username": "a", "password": "b"}"#, None, "AMQP_URL");
        assert!(needs_endpoint.unwrap_err().contains("AMQP_URL"));
    }

    #[test]
    fn each_broker_takes_its_own_secret_in_order() {
        let secrets = [
            r#"{"username": "first", "password": "a,b"}"#.to_owned(),
            "amqps://second:pw@b-2.example:5671".to_owned(),
            r#"{"username": "third", "password": "c"}"#.to_owned(),
        ];
        let endpoints = "amqps://b-1.example:5671, amqps://old:creds@b-2.example:5671,amqps://nobody:wrong@b-3.example:5671/shard";
        assert_eq!(
            shard_urls(&secrets, Some(endpoints)).unwrap(),
            "amqps://first:a%2Cb@b-1.example:5671,amqps://second:pw@b-2.example:5671,\
             amqps://third:c@b-3.example:5671/shard"
        );
    }

    #[test]
    fn shard_secrets_that_do_not_match_the_brokers_are_refused() {
        let two = ["amqp://a@h1".to_owned(), "amqp://b@h2".to_owned()];
        let error = shard_urls(&two, Some("amqp://h1,amqp://h2,amqp://h3")).unwrap_err();
        assert!(error.starts_with("2 secrets for 3 brokers"), "{error}");
        // Whole URLs need no endpoints; credentials alone do, and name the broker.
        assert_eq!(shard_urls(&two, None).unwrap(), "amqp://a@h1,amqp://b@h2");
        let credentials = [r#"{"username": "a", "password": "b"}"#.to_owned()];
        let error = shard_urls(&credentials, None).unwrap_err();
        assert!(
            error.starts_with("secret 0: ") && error.contains("broker 0 of AMQP_URLS"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn nothing_is_fetched_without_arns() {
        let settings = fetch(&|name: &str| (name == "AMQP_URL").then(|| "amqp://h".to_owned()))
            .await
            .unwrap();
        assert!(settings.is_empty());
    }
}
