//! CORS for browsers on other origins: one policy for the local server and for the
//! functions behind a front door that does no CORS itself (an Application Load
//! Balancer). Behind API Gateway the HTTP API answers CORS and the functions leave it off.

use lambda_http::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::routes::POLL_HOLD_HEADER;

/// The origins allowed to call, comma-separated (`*` for any); unset or empty, the
/// functions add no CORS headers.
pub const ORIGINS_VAR: &str = "CORS_ORIGINS";

/// CORS for `origins` (`*` for any): the methods and headers the browser client sends,
/// and the response headers it reads (`Retry-After` on a 503 or 429, the poll's hold).
pub fn layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
        ])
        .expose_headers([
            header::RETRY_AFTER,
            HeaderName::from_static(POLL_HOLD_HEADER),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// The policy `CORS_ORIGINS` asks for, if it names any origin.
pub fn from_env() -> Option<CorsLayer> {
    let origins: Vec<String> = std::env::var(ORIGINS_VAR)
        .ok()?
        .split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(str::to_owned)
        .collect();
    (!origins.is_empty()).then(|| layer(&origins))
}
