//! Property tests (proptest) of the parsers that face the network: token extraction
//! and verification, the publish body, and queued messages. Arbitrary input never
//! panics and never gets past them; well-formed input always does. Each property runs
//! 256 cases in the test command; `PROPTEST_CASES=100000 cargo test --release -p longpoll
//! --test properties` runs a longer campaign.

use std::time::Duration;

use longpoll::{
    event::Event,
    publish::parse_publish_body,
    token::{TokenIssuer, TokenVerifier, extract_token},
    topology::{Audience, CollegeId, UserId},
};
use proptest::prelude::*;
use serde_json::json;

const SECRET: &[u8] = b"property-secret";

proptest! {
    /// Any header and query: an answer, never a panic; a token only from a Bearer or
    /// Token header or a non-empty query.
    #[test]
    fn token_extraction_never_panics(header in proptest::option::of(".*"), query in proptest::option::of(".*")) {
        if let Ok(token) = extract_token(header.as_deref(), query.as_deref()) {
            prop_assert!(!token.is_empty());
            match &header {
                Some(header) => {
                    let scheme = header.trim().split(' ').next().unwrap().to_ascii_lowercase();
                    prop_assert!(scheme == "bearer" || scheme == "token");
                }
                None => prop_assert_eq!(Some(token), query.as_deref()),
            }
        }
    }

    /// A well-formed header always yields its token.
    #[test]
    fn bearer_headers_yield_their_token(token in "[A-Za-z0-9._-]{1,200}", scheme in "(Bearer|Token|bearer|TOKEN)") {
        let header = format!("{scheme} {token}");
        prop_assert_eq!(extract_token(Some(&header), None).ok(), Some(token.as_str()));
    }

    /// Arbitrary text is never a valid token.
    #[test]
    fn arbitrary_tokens_are_refused(token in ".*") {
        prop_assert!(TokenVerifier::new(SECRET).verify(&token).is_err());
    }

    /// Any token this project mints is accepted with the claims it carries, and one
    /// changed character anywhere is refused.
    #[test]
    fn minted_tokens_verify_and_tampered_ones_do_not(user in 1u64..(1 << 53), college in proptest::option::of(1u64..1_000_000), at in any::<prop::sample::Index>()) {
        let token = TokenIssuer::new(SECRET).mint(UserId(user), college.map(CollegeId), Some("P"), Duration::from_secs(60));
        let identity = TokenVerifier::new(SECRET).verify(&token).unwrap();
        prop_assert_eq!(identity.user_id, UserId(user));
        prop_assert_eq!(identity.college_id, college.map(CollegeId));
        let mut bytes = token.into_bytes();
        let index = at.index(bytes.len());
        bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        prop_assert!(TokenVerifier::new(SECRET).verify(&tampered).is_err());
    }

    /// Arbitrary bytes as a publish body: an answer (almost always a 400), never a panic.
    #[test]
    fn publish_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_publish_body(&body);
    }

    /// Arbitrary JSON values as a publish body: never a panic, and what is accepted is
    /// one to 100 events.
    #[test]
    fn publish_json_never_panics(value in json_value()) {
        if let Ok(batch) = parse_publish_body(value.to_string().as_bytes()) {
            prop_assert!(!batch.is_empty() && batch.len() <= 100);
        }
    }

    /// A well-formed message event for a user or a college is always accepted, routed to
    /// that audience, with its data unchanged.
    #[test]
    fn valid_publish_bodies_are_accepted(id in any::<i64>(), to in 1u64..(1 << 53), college in any::<bool>(), text in ".{0,100}") {
        let data = json!({"id": id, "sender_id": 1, "message": text});
        let mut body = json!({"event": "message", "data": data});
        let key = if college { "college_id" } else { "user_id" };
        body[key] = json!(to);
        let batch = parse_publish_body(body.to_string().as_bytes()).unwrap();
        prop_assert_eq!(batch.len(), 1);
        let expected = if college { Audience::College(CollegeId(to)) } else { Audience::User(UserId(to)) };
        prop_assert_eq!(batch[0].audience, expected);
        let wire: serde_json::Value = serde_json::from_slice(&batch[0].event.body).unwrap();
        prop_assert_eq!(&wire["data"], &data);
    }

    /// Arbitrary bytes in a queue: an event or a refusal, never a panic; the id is the
    /// message id when given, else the same derived id every time.
    #[test]
    fn queued_messages_never_panic(body in proptest::collection::vec(any::<u8>(), 0..1024), id in proptest::option::of("[a-z0-9-]{1,40}"), timestamp in proptest::option::of(any::<u64>())) {
        if let Ok(event) = Event::from_message(&body, id.as_deref(), timestamp) {
            match &id {
                Some(id) => prop_assert_eq!(&event.id, id),
                None => prop_assert_eq!(event.id, Event::from_message(&body, None, timestamp).unwrap().id),
            }
        }
    }
}

/// JSON values shaped like publish requests often enough to reach the deeper checks.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|n| json!(n)),
        "(message|typing|read_receipt|notification|user_id|college_id|event|data|events|.{0,8})"
            .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                "(user_id|college_id|event|data|events|id|sender_id|message|is_typing|title|.{0,6})",
                inner,
                0..6
            )
            .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}
