//! `tracing` set-up, one call from each `main`.

use tracing_subscriber::EnvFilter;

/// `info`, but lapin only for errors: it warns about every returned (unroutable) message,
/// which here is an expected outcome ("nobody is polling"), reported in the publish reply.
const DEFAULT_FILTER: &str = "info,lapin=error";

/// Logs as JSON on AWS Lambda (one object per line, which CloudWatch Logs Insights
/// queries by field) and as readable text elsewhere. `LOG_FORMAT=json|text` overrides
/// the guess; `RUST_LOG` (or Lambda's `AWS_LAMBDA_LOG_LEVEL`) sets the level, `info` by
/// default. Nothing in this crate logs a token or a password.
pub fn init() {
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .map(|level| EnvFilter::new(format!("{},lapin=error", level.to_lowercase())))
        .unwrap_or_else(|| {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if wants_json() {
        // Lambda stamps each line itself.
        builder.json().without_time().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // A second call (tests that build several apps) keeps the first subscriber.
    drop(result);
}

fn wants_json() -> bool {
    let setting = |name| std::env::var(name).unwrap_or_default().to_lowercase();
    match setting("LOG_FORMAT").as_str() {
        "json" => return true,
        "text" => return false,
        _ => {}
    }
    setting("AWS_LAMBDA_LOG_FORMAT") == "json"
        || setting("AWS_EXECUTION_ENV").starts_with("aws_lambda")
}
