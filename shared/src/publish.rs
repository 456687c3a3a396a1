//! The publish endpoint's rules: who may publish, and what a valid request is.
//!
//! A request is one event or `{"events": [...]}` with up to 100, each naming exactly one
//! of `user_id` and `college_id`, and an `event` whose `data` has that type's shape.
//! Errors name the offending field (`events[3].data.sender_id: missing field ...`), and
//! a request with any bad event publishes none of them.

use lambda_http::{Request, RequestExt, http::HeaderMap, request::RequestContext};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    broker::Publication,
    config::{Config, ConfigError},
    event::{EventBody, EventType, MAX_EVENT_ID_LENGTH},
    http::ApiError,
    topology::{Audience, CollegeId, UserId},
};

/// Largest request body accepted (413 past it).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Most events in one request (413 past it).
pub const MAX_EVENTS: usize = 100;
/// The header producers send the publish key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// How the publish endpoint knows its caller is a trusted backend.
pub enum PublishAuth {
    /// `X-Api-Key` must match `PUBLISH_API_KEY` (the local server, or any deployment
    /// that prefers a key). Only the key's SHA-256 is kept, and compared in constant
    /// time.
    ApiKey { sha256: [u8; 32] },
    /// API Gateway authorised the route with IAM (`AWS_IAM`); the function checks the
    /// request really carries an IAM caller, in case the route was left open.
    Iam,
}

impl PublishAuth {
    /// Refuses to run open: one of `PUBLISH_API_KEY` or `PUBLISH_TRUST_IAM=true` is
    /// required. With both, the key is required too.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        match (&config.publish_api_key, config.publish_trust_iam) {
            (Some(key), _) => Ok(PublishAuth::ApiKey { sha256: Sha256::digest(key.as_bytes()).into() }),
            (None, true) => Ok(PublishAuth::Iam),
            (None, false) => Err(ConfigError::Invalid {
                var: "PUBLISH_API_KEY",
                reason: "not set, and PUBLISH_TRUST_IAM is not true: the publish endpoint will not run open".to_owned(),
            }),
        }
    }

    /// 401 unless the caller is authorised.
    pub fn check(&self, request: &Request) -> Result<(), ApiError> {
        match self {
            PublishAuth::ApiKey { sha256 } => {
                let given =
                    api_key(request.headers()).ok_or_else(|| ApiError::ServiceUnauthorized {
                        code: "missing_api_key",
                        message: "send the publish key as `X-Api-Key`".to_owned(),
                    })?;
                let given: [u8; 32] = Sha256::digest(given).into();
                if bool::from(given.ct_eq(sha256)) {
                    Ok(())
                } else {
                    Err(ApiError::ServiceUnauthorized {
                        code: "invalid_api_key",
                        message: "the publish key is not valid".to_owned(),
                    })
                }
            }
            PublishAuth::Iam => match request.request_context_ref() {
                Some(RequestContext::ApiGatewayV2(context))
                    if context
                        .authorizer
                        .as_ref()
                        .is_some_and(|authorizer| authorizer.iam.is_some()) =>
                {
                    Ok(())
                }
                _ => Err(ApiError::ServiceUnauthorized {
                    code: "iam_required",
                    message: "this route must be authorised with IAM (SigV4) by API Gateway"
                        .to_owned(),
                }),
            },
        }
    }
}

fn api_key(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(API_KEY_HEADER)
        .map(|value| value.as_bytes())
        .filter(|key| !key.is_empty())
}

/// Reads a publish request body into publications, each with a fresh id.
pub fn parse_publish_body(body: &[u8]) -> Result<Vec<Publication>, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge {
            what: format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        });
    }
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body is not valid JSON: {error}"),
        )
    })?;
    let Value::Object(mut object) = value else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be an event object or {\"events\": [...]}",
        ));
    };
    let (items, batch) = match object.remove("events") {
        Some(Value::Array(items)) => (items, true),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "`events` must be a list",
            ));
        }
        None => (vec![Value::Object(object)], false),
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("invalid_body", "`events` is empty"));
    }
    if items.len() > MAX_EVENTS {
        return Err(ApiError::PayloadTooLarge {
            what: format!("{} events; at most {MAX_EVENTS} a request", items.len()),
        });
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let at = if batch {
                format!("events[{index}]")
            } else {
                String::new()
            };
            parse_item(item, &at)
        })
        .collect()
}

/// One event of a request; `at` is its place (`events[3]`), empty for a lone event.
fn parse_item(item: Value, at: &str) -> Result<Publication, ApiError> {
    let field = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    let Value::Object(mut object) = item else {
        return Err(invalid(format!(
            "{} must be an object",
            if at.is_empty() { "the event" } else { at }
        )));
    };
    let user = take_id(&mut object, "user_id", &field)?;
    let college = take_id(&mut object, "college_id", &field)?;
    let audience = match (user, college) {
        (Some(user), None) => Audience::User(UserId(user)),
        (None, Some(college)) => Audience::College(CollegeId(college)),
        _ => {
            let place = if at.is_empty() {
                "the event".to_owned()
            } else {
                at.to_owned()
            };
            return Err(invalid(format!(
                "{place} must name exactly one of `user_id` and `college_id`"
            )));
        }
    };
    let event_type: EventType = match object.remove("event") {
        Some(name) => serde_json::from_value(name)
            .map_err(|error| invalid(format!("{}: {error}", field("event"))))?,
        None => return Err(invalid(format!("{}: missing", field("event")))),
    };
    let data = object
        .remove("data")
        .ok_or_else(|| invalid(format!("{}: missing", field("data"))))?;
    let at_data = field("data");
    // Each type's data on its own, so an error's path reaches into `data` (a tagged
    // enum would buffer it and lose the path).
    let body = match event_type {
        EventType::Message => EventBody::Message(typed(data, &at_data)?),
        EventType::Typing => EventBody::Typing(typed(data, &at_data)?),
        EventType::ReadReceipt => EventBody::ReadReceipt(typed(data, &at_data)?),
        EventType::Notification => EventBody::Notification(typed(data, &at_data)?),
    };
    let mut event = body.prepare();
    if let Some(id) = take_event_id(&mut object, &field)? {
        event.id = id;
    }
    Ok(Publication { audience, event })
}

/// `data` as the type `T`; errors say where inside it they are.
fn typed<T: DeserializeOwned>(data: Value, at: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(data).map_err(|error| {
        let inner = error.path().to_string();
        let path = if inner == "." {
            at.to_owned()
        } else {
            format!("{at}.{inner}")
        };
        invalid(format!("{path}: {}", error.inner()))
    })
}

fn take_id(
    object: &mut Map<String, Value>,
    name: &str,
    field: &impl Fn(&str) -> String,
) -> Result<Option<u64>, ApiError> {
    match object.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|id| *id > 0)
            .map(Some)
            .ok_or_else(|| invalid(format!("{} must be a positive integer", field(name)))),
    }
}

/// The producer's own event id, if it gives one: it becomes the AMQP `message_id`, so a
/// publish retried after an unclear failure (a 503 whose confirm was lost with the
/// connection) carries the same id and clients de-duplicate it.
fn take_event_id(
    object: &mut Map<String, Value>,
    field: &impl Fn(&str) -> String,
) -> Result<Option<String>, ApiError> {
    match object.remove("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id))
            if (1..=MAX_EVENT_ID_LENGTH).contains(&id.len())
                && id.bytes().all(|byte| byte.is_ascii_graphic()) =>
        {
            Ok(Some(id))
        }
        Some(_) => Err(invalid(format!(
            "{} must be 1 to {MAX_EVENT_ID_LENGTH} printable ASCII characters without spaces",
            field("id")
        ))),
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::bad_request("invalid_event", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_producer_may_name_the_event_id_so_retries_share_it() {
        let events = parse(json!({"user_id": 1, "id": "order-42:shipped", "event": "typing", "data": {"sender_id": 1, "is_typing": true}})).unwrap();
        assert_eq!(events[0].event.id, "order-42:shipped");
        let generated = parse(
            json!({"user_id": 1, "event": "typing", "data": {"sender_id": 1, "is_typing": true}}),
        )
        .unwrap();
        assert_eq!(generated[0].event.id.len(), 36, "a UUID when none is given");
        for bad in [
            json!(""),
            json!("has space"),
            json!(7),
            json!("x".repeat(256)),
        ] {
            let error = parse(json!({"events": [{"user_id": 1, "id": bad, "event": "typing", "data": {"sender_id": 1, "is_typing": true}}]})).unwrap_err();
            assert!(message_of(error).starts_with("events[0].id must be 1 to 255"));
        }
    }

    fn parse(body: Value) -> Result<Vec<Publication>, ApiError> {
        parse_publish_body(body.to_string().as_bytes())
    }

    fn message_of(error: ApiError) -> String {
        error.to_string()
    }

    #[test]
    fn a_lone_event_and_a_batch_are_both_accepted() {
        let one = parse(
            json!({"user_id": 789, "event": "typing", "data": {"sender_id": 1, "is_typing": true}}),
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].audience, Audience::User(UserId(789)));
        let batch = parse(json!({"events": [
            {"user_id": 789, "event": "message", "data": {"id": 1, "sender_id": 2, "message": "hi"}},
            {"college_id": 5, "event": "notification", "data": {"title": "t", "message": "m"}}]}))
        .unwrap();
        assert_eq!(batch[1].audience, Audience::College(CollegeId(5)));
        assert_ne!(batch[0].event.id, batch[1].event.id);
    }

    #[test]
    fn errors_name_the_field() {
        let error = parse(json!({"events": [
            {"user_id": 1, "event": "typing", "data": {"sender_id": 1, "is_typing": true}},
            {"user_id": 1, "event": "typing", "data": {"is_typing": true}}]}))
        .unwrap_err();
        assert_eq!(error.code(), "invalid_event");
        let text = message_of(error);
        assert!(
            text.starts_with("events[1].data: missing field `sender_id`"),
            "{text}"
        );
        let error = parse(json!({"user_id": 1, "event": "message", "data": {"id": "x", "sender_id": 1, "message": "m"}})).unwrap_err();
        assert!(
            message_of(error).starts_with("data.id: invalid type"),
            "names data.id"
        );
        let error = parse(json!({"user_id": 1, "event": "poke", "data": {}})).unwrap_err();
        assert!(message_of(error).contains("unknown variant `poke`"));
        let error = parse(
            json!({"events": [{"user_id": 1, "college_id": 2, "event": "typing", "data": {}}]}),
        )
        .unwrap_err();
        assert!(message_of(error).starts_with("events[0] must name exactly one"));
        let error = parse(json!({"event": "typing", "data": {"sender_id": 1, "is_typing": true}}))
            .unwrap_err();
        assert!(message_of(error).contains("exactly one of `user_id` and `college_id`"));
        let error = parse(json!({"user_id": -4, "event": "typing", "data": {}})).unwrap_err();
        assert!(message_of(error).starts_with("user_id must be a positive integer"));
    }

    #[test]
    fn limits_are_413_and_junk_is_400() {
        let too_many: Vec<Value> =
            (0..101).map(|_| json!({"user_id": 1, "event": "typing", "data": {"sender_id": 1, "is_typing": true}})).collect();
        assert_eq!(
            parse(json!({ "events": too_many })).unwrap_err().status(),
            413
        );
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(parse_publish_body(&huge).unwrap_err().status(), 413);
        assert_eq!(
            parse_publish_body(b"{not json").unwrap_err().code(),
            "invalid_json"
        );
        assert_eq!(parse(json!([1, 2])).unwrap_err().code(), "invalid_body");
        assert_eq!(
            parse(json!({"events": []})).unwrap_err().code(),
            "invalid_body"
        );
    }
}
