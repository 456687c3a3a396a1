//! Real API Gateway HTTP API (payload 2.0) events, from `fixtures/`, as requests.

use lambda_http::Request;
use serde_json::Value;

/// A request to a handler, built from a real API Gateway HTTP API (payload 2.0) event in
/// `fixtures/<route>.json`, with the parts a test varies filled in.
pub struct Fixture {
    event: Value,
}

impl Fixture {
    pub fn new(route: &str) -> Self {
        let path = format!("{}/fixtures/{route}.json", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
        let mut event: Value =
            serde_json::from_str(&text).unwrap_or_else(|error| panic!("{path}: {error}"));
        event["headers"]
            .as_object_mut()
            .expect("headers")
            .remove("authorization");
        Self { event }
    }

    /// Sets the `Authorization` header, e.g. `Bearer <jwt>`.
    pub fn authorization(mut self, value: &str) -> Self {
        self.event["headers"]["authorization"] = Value::from(value);
        self
    }

    /// Sets the raw query string, e.g. `token=<jwt>`.
    pub fn query(mut self, query: &str) -> Self {
        self.event["rawQueryString"] = Value::from(query);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.event["headers"][name] = Value::from(value);
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.event["body"] = Value::from(body);
        self
    }

    pub fn method(mut self, method: &str) -> Self {
        self.event["requestContext"]["http"]["method"] = Value::from(method);
        self
    }

    /// Sets the path, as `cargo lambda watch` (`/lambda-url/<function>/`) would.
    pub fn path(mut self, path: &str) -> Self {
        self.event["rawPath"] = Value::from(path);
        self.event["requestContext"]["http"]["path"] = Value::from(path);
        self
    }

    pub fn request(&self) -> Request {
        lambda_http::request::from_str(&self.event()).expect("a valid API Gateway event")
    }

    /// The event as API Gateway sends it to Lambda (JSON), for a Runtime API.
    pub fn event(&self) -> String {
        self.event.to_string()
    }
}
