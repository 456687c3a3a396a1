//! Settings kept in AWS Secrets Manager: the broker credentials (`AMQP_SECRET_ARN`, or
//! `AMQP_SECRET_ARNS` with one secret per broker in `AMQP_URLS`), the JWT signing key
//! (`JWT_SECRET_ARN`) and the publish key (`PUBLISH_API_KEY_SECRET_ARN`, behind an ALB,
//! which has no IAM check).
//!
//! Read once per cold start, through `aws-config` (region, credentials and
//! `AWS_ENDPOINT_URL` from the environment, as every AWS SDK does) and the Secrets
//! Manager client. Without the ARNs nothing is fetched and the plain variables
//! (`AMQP_URL`, `JWT_SECRET`) apply, as they do locally.
//!
//! What a secret may hold:
//! - broker: a whole URL (`amqps://user:pass@host:5671`), or JSON with `url`, or JSON with
//!   `username` and `password` (what Amazon MQ's own secrets hold), which are put into
//!   `AMQP_URL` (the broker's endpoint without credentials, e.g. from the template);
//!   with several brokers, `AMQP_SECRET_ARNS` lists one such secret per broker, in the
//!   order of `AMQP_URLS`, and each fills in its own broker's endpoint;
//! - JWT, publish key: the key itself, as plain text.
//!
//! Which variables a secret may stand in for ([`SECRET_BACKED`]) and how a secret fails
//! ([`SecretError`]) hold in every build; the reading itself, through the AWS SDK, is
//! `aws` (feature `secrets-manager`, on in the Lambda functions). A build without the
//! feature refuses an ARN with a message instead of ignoring it.

/// The variables a secret in AWS Secrets Manager may stand in for, each with the variable
/// naming its ARN.
pub const SECRET_BACKED: [(&str, &str); 4] = [
    ("AMQP_URL", "AMQP_SECRET_ARN"),
    ("AMQP_URLS", "AMQP_SECRET_ARNS"),
    ("JWT_SECRET", "JWT_SECRET_ARN"),
    ("PUBLISH_API_KEY", "PUBLISH_API_KEY_SECRET_ARN"),
];

/// A secret that could not be read or made sense of: `var` is the `_ARN` setting that
/// names it. The configuration reports it as that setting being invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var} is invalid: {reason}")]
pub struct SecretError {
    pub var: &'static str,
    pub reason: String,
}

#[cfg(feature = "secrets-manager")]
mod aws;

#[cfg(feature = "secrets-manager")]
pub use aws::fetch;

/// Without the `secrets-manager` feature: nothing to fetch, and an ARN that is set is an
/// error that says this build cannot read it.
#[cfg(not(feature = "secrets-manager"))]
pub async fn fetch(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<std::collections::HashMap<&'static str, String>, SecretError> {
    for (_, var) in SECRET_BACKED {
        if lookup(var).is_some_and(|arn| !arn.trim().is_empty()) {
            return Err(SecretError {
                var,
                reason:
                    "this build has no Secrets Manager support (cargo feature `secrets-manager`)"
                        .to_owned(),
            });
        }
    }
    Ok(std::collections::HashMap::new())
}
