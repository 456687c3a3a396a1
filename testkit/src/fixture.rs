//! Real Lambda events, from `fixtures/`, as requests: API Gateway HTTP API (payload 2.0)
//! events per route, and an Application Load Balancer's (`alb.json`), for the ALB front
//! door.

use lambda_http::Request;
use serde_json::Value;

/// A request to a handler, built from a real event in `fixtures/<name>.json` (API Gateway
/// or ALB, told apart by its `requestContext`), with the parts a test varies filled in.
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

    /// An ALB's event to the target group of `path` (`fixtures/alb.json`).
    pub fn alb(path: &str) -> Self {
        Self::new("alb").path(path)
    }

    fn is_alb(&self) -> bool {
        self.event["requestContext"]["elb"].is_object()
    }

    /// Sets the `Authorization` header, e.g. `Bearer <jwt>`.
    pub fn authorization(mut self, value: &str) -> Self {
        self.event["headers"]["authorization"] = Value::from(value);
        self
    }

    /// Sets the raw query string, e.g. `token=<jwt>`. An ALB passes the parameters as a
    /// map, their values still percent-encoded as the client sent them.
    pub fn query(mut self, query: &str) -> Self {
        if self.is_alb() {
            let parameters: serde_json::Map<String, Value> = query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (name.to_owned(), Value::from(value))
                })
                .collect();
            self.event["queryStringParameters"] = Value::Object(parameters);
        } else {
            self.event["rawQueryString"] = Value::from(query);
        }
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
        if self.is_alb() {
            self.event["httpMethod"] = Value::from(method);
        } else {
            self.event["requestContext"]["http"]["method"] = Value::from(method);
        }
        self
    }

    /// Sets the path, as `cargo lambda watch` (`/lambda-url/<function>/`) would.
    pub fn path(mut self, path: &str) -> Self {
        if self.is_alb() {
            self.event["path"] = Value::from(path);
        } else {
            self.event["rawPath"] = Value::from(path);
            self.event["requestContext"]["http"]["path"] = Value::from(path);
        }
        self
    }

    pub fn request(&self) -> Request {
        lambda_http::request::from_str(&self.event()).expect("a valid Lambda HTTP event")
    }

    /// The event as API Gateway or the ALB sends it to Lambda (JSON), for a Runtime API.
    pub fn event(&self) -> String {
        self.event.to_string()
    }
}
