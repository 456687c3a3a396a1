//! `tracing` set-up, one call from each `main`, and [`Throttle`] for lines that a
//! broker outage would otherwise repeat thousands of times a second.

use std::{
    io::IsTerminal,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tracing_subscriber::EnvFilter;

/// `info`, and nothing from lapin: it warns about every returned (unroutable) message,
/// an expected outcome here ("nobody is polling", reported in the publish reply), and
/// logs an error for every channel the broker closes over a refused request, which a
/// hostile client could repeat at will. Every lapin failure that matters reaches this
/// crate as the failure of an operation, logged (throttled) there.
///
/// Nor from metrics_cloudwatch_embedded: it logs an error for every histogram value past
/// the 100 a flush keeps (see [`crate::lambda::emf::Emf`]), thousands a second under load.
const DEFAULT_FILTER: &str = "info,lapin=off,metrics_cloudwatch_embedded=off";
/// The crates kept quiet unless named (see [`DEFAULT_FILTER`]).
const QUIET: &str = "lapin=off,metrics_cloudwatch_embedded=off";

/// Logs as JSON on AWS Lambda (one object per line, which CloudWatch Logs Insights
/// queries by field) and as readable text elsewhere. `LOG_FORMAT=json|text` overrides
/// the guess; `RUST_LOG` (or Lambda's `AWS_LAMBDA_LOG_LEVEL`) sets the level, `info` by
/// default. Nothing in this crate logs a token or a password.
pub fn init() {
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .map(|level| EnvFilter::new(format!("{},{QUIET}", level.to_lowercase())))
        .unwrap_or_else(|| match std::env::var("RUST_LOG") {
            // lapin and the EMF exporter stay off unless named: see DEFAULT_FILTER.
            Ok(directives) if !directives.contains("lapin") => {
                EnvFilter::new(format!("{directives},{QUIET}"))
            }
            Ok(directives) => EnvFilter::new(directives),
            Err(_) => EnvFilter::new(DEFAULT_FILTER),
        });
    // Colour codes only for a terminal: a log file or CloudWatch gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
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

/// Lets one log line through per period and counts the ones it holds back, so a burst
/// of the same failure (every request during a broker outage) logs one line a second
/// that says how many it stands for.
///
/// ```
/// use longpoll::telemetry::Throttle;
/// static OUTAGE: Throttle = Throttle::per_second();
/// if let Some(suppressed) = OUTAGE.allow() {
///     tracing::warn!(suppressed, "answering 503: broker unavailable");
/// }
/// ```
pub struct Throttle {
    period_ms: u64,
    /// Milliseconds since the process's first throttled line when the next may go out.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn per_second() -> Self {
        Self::every(Duration::from_secs(1))
    }

    pub const fn every(period: Duration) -> Self {
        Self {
            period_ms: period.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may go out now.
    pub fn allow(&self) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_one_line_that_counts_the_rest() {
        let throttle = Throttle::every(Duration::from_millis(200));
        assert_eq!(throttle.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(throttle.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(throttle.allow(), Some(1000));
    }
}
