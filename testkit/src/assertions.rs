//! Assertions on the contract's answers.

use lambda_http::{Body, Response};
use serde_json::Value;

/// Asserts a contract error: `status`, a JSON body with `error` = `code` and a
/// non-empty `message`, which it returns.
pub fn assert_error(response: &Response<Body>, status: u16, code: &str) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = json_of(response);
    assert_eq!(body["error"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.is_empty(), "{body}");
    message
}

/// The response status and its JSON body.
pub fn json_of(response: &Response<Body>) -> Value {
    serde_json::from_slice(response.body().as_ref()).expect("a JSON body")
}
