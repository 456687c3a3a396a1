//! What every handler needs around the broker: JSON responses, the one mapping from
//! outcomes to status codes, method checks, the query string and the poll's deadline.

use std::time::{Duration, SystemTime};

use lambda_http::{
    Body, Request, RequestExt, Response,
    http::{HeaderValue, Method, StatusCode, header},
};
use serde::Serialize;
use serde_json::json;
use tracing::warn;

use crate::{
    broker::{BrokerError, REFUSED_RETRY_AFTER_SECS, RETRY_AFTER_SECS},
    budget::PollBudget,
    metrics,
    routes::POLL_HOLD_HEADER,
    telemetry::Throttle,
    token::AuthError,
};

/// Every way a request can fail, each with its status. Handlers return it and
/// [`ApiError::into_response`] answers it; `Err` from a handler is kept for the truly
/// unexpected, so the Lambda error metric stays honest.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{method} is not allowed here; use {allow}")]
    MethodNotAllowed { method: Method, allow: Method },
    /// A backend's credential (publish key, IAM) missing or wrong: 401, as for a user's
    /// token, with its own codes.
    #[error("{message}")]
    ServiceUnauthorized { code: &'static str, message: String },
    #[error("too large: {what}")]
    PayloadTooLarge { what: String },
    #[error("this user already holds {max} polls at once; wait for one to answer")]
    TooManyPolls { max: usize },
    #[error(transparent)]
    Unavailable(#[from] BrokerError),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ServiceUnauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyPolls { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(auth) => auth.code(),
            ApiError::BadRequest { code, .. } | ApiError::ServiceUnauthorized { code, .. } => code,
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::TooManyPolls { .. } => "too_many_polls",
            ApiError::Unavailable(BrokerError::Refused { .. }) => "broker_refused",
            ApiError::Unavailable(_) => "broker_unavailable",
        }
    }

    /// `{"error": code, "message": text}` with the status, plus `Allow` on 405 and
    /// `Retry-After` on 503.
    pub fn into_response(self) -> Response<Body> {
        metrics::error_answered(self.code());
        let message = match &self {
            // The detail (host, AMQP reply) is for the logs, not for browsers.
            ApiError::Unavailable(cause @ BrokerError::Refused { .. }) => {
                static REFUSED: Throttle = Throttle::per_second();
                if let Some(suppressed) = REFUSED.allow() {
                    warn!(error = %cause, suppressed, "answering 503: the broker refused this request");
                }
                format!(
                    "the event broker refused this request (one of its limits was reached); retry in {REFUSED_RETRY_AFTER_SECS} s"
                )
            }
            ApiError::Unavailable(cause) => {
                static UNAVAILABLE: Throttle = Throttle::per_second();
                if let Some(suppressed) = UNAVAILABLE.allow() {
                    warn!(error = %cause, suppressed, "answering 503: broker unavailable");
                }
                format!("the event broker is unavailable; retry in {RETRY_AFTER_SECS} s")
            }
            other => other.to_string(),
        };
        let mut response = json_response(
            self.status(),
            &json!({"error": self.code(), "message": message}),
        );
        let headers = response.headers_mut();
        match &self {
            ApiError::MethodNotAllowed { allow, .. } => {
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_str(allow.as_str()).expect("a method is a valid header"),
                );
            }
            ApiError::TooManyPolls { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            ApiError::Unavailable(BrokerError::Refused { .. }) => {
                let after = HeaderValue::from(REFUSED_RETRY_AFTER_SECS);
                headers.insert(header::RETRY_AFTER, after);
            }
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            _ => {}
        }
        response
    }
}

/// A JSON response that no proxy or browser caches: every poll answer is fresh.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_string(body).expect("response bodies always serialize");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::Text(body))
        .expect("a response from a status, two static headers and a body is valid")
}

/// Names the poll's `hold` on `response` ([`POLL_HOLD_HEADER`]).
pub fn with_poll_hold(mut response: Response<Body>, hold: Duration) -> Response<Body> {
    response
        .headers_mut()
        .insert(POLL_HOLD_HEADER, HeaderValue::from(hold.as_millis() as u64));
    response
}

/// Answers `outcome`, turning an [`ApiError`] into its JSON error response.
pub fn respond(
    outcome: Result<Response<Body>, ApiError>,
) -> Result<Response<Body>, lambda_http::Error> {
    Ok(outcome.unwrap_or_else(ApiError::into_response))
}

/// 405 unless the request uses `allowed`.
pub fn require_method(request: &Request, allowed: Method) -> Result<(), ApiError> {
    if request.method() == allowed {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed {
            method: request.method().clone(),
            allow: allowed,
        })
    }
}

/// The first value of a query parameter. API Gateway and `cargo lambda watch` hand the
/// parameters over parsed; a plain HTTP server (the local one) leaves them in the URI.
pub fn query_param(request: &Request, name: &str) -> Option<String> {
    if let Some(parameters) = request.query_string_parameters_ref() {
        return parameters.first(name).map(str::to_owned);
    }
    let query = request.uri().query()?;
    let parameters: lambda_http::aws_lambda_events::query_map::QueryMap = query.parse().ok()?;
    parameters.first(name).map(str::to_owned)
}

/// The poll's [`PollBudget`]: `hold`, within the Lambda deadline of `request` (none
/// outside Lambda; the budget ignores the duration `cargo lambda watch` passes there).
pub fn poll_budget(request: &Request, hold: Duration) -> PollBudget {
    PollBudget::new(
        hold,
        request.lambda_context_ref().map(|context| context.deadline),
    )
}

/// Now, in epoch seconds with a fraction: the `timestamp` of every answer.
pub fn now_seconds() -> f64 {
    crate::event::epoch_seconds(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_their_status_and_headers() {
        let response = ApiError::MethodNotAllowed {
            method: Method::POST,
            allow: Method::GET,
        }
        .into_response();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[header::ALLOW], "GET");
        let response = ApiError::Unavailable(BrokerError::Timeout("connect")).into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn a_queue_on_a_down_node_is_a_short_outage_not_a_refusal() {
        let error = ApiError::Unavailable(BrokerError::QueueUnavailable {
            operation: "publish",
            reason: "home node is down or inaccessible".to_owned(),
        });
        assert_eq!(error.code(), "broker_unavailable");
        let response = error.into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(
            response.headers()[header::RETRY_AFTER],
            RETRY_AFTER_SECS.to_string().as_str()
        );
    }

    #[test]
    fn query_parameters_come_from_the_uri_when_not_parsed() {
        let request: Request = lambda_http::http::Request::builder()
            .uri("http://localhost/api/v1/communication/poll/events/?token=a%2Bb&x=1")
            .body(Body::Empty)
            .unwrap();
        assert_eq!(query_param(&request, "token").as_deref(), Some("a+b"));
        assert_eq!(query_param(&request, "missing"), None);
    }
}
