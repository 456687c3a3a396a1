//! The end-to-end scenario over real HTTP: what a browser and a backend do, against any
//! server that mounts the functions on the contract's routes.

use std::time::Duration;

use longpoll::{
    token::TokenIssuer,
    topology::{CollegeId, UserId},
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{unique_college, unique_user};

/// A server under test: where it listens, the secret its tokens are signed with and its
/// publish key.
pub struct Target<'a> {
    pub base: &'a str,
    pub jwt_secret: &'a str,
    pub publish_key: &'a str,
}

impl Target<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/communication/{path}", self.base)
    }

    fn token(&self, user: UserId, college: Option<CollegeId>) -> String {
        TokenIssuer::new(self.jwt_secret.as_bytes()).mint(
            user,
            college,
            None,
            Duration::from_secs(600),
        )
    }

    /// Publishes `body` until a queue takes it (the held poll that declares the queue
    /// may still be starting); returns the routed event's id and when it was published.
    async fn publish_until_routed(&self, client: &Client, body: Value) -> (Value, Instant) {
        for _ in 0..50 {
            let published_at = Instant::now();
            let reply = self.publish(client, body.clone()).await;
            if reply["published"][0]["routed"] == true {
                return (reply["published"][0]["id"].clone(), published_at);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no queue took {body} within 5 s");
    }

    async fn publish(&self, client: &Client, body: Value) -> Value {
        let response = client
            .post(self.url("events/"))
            .header("x-api-key", self.publish_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

/// The walk: test endpoint; held polls answered by publishes; college fan-out to two
/// users; the online lookup; disconnect; a 401 and a 405.
pub async fn run(target: &Target<'_>) {
    let client = Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();

    let (status, body) = json_of(client.get(target.url("poll/test/")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["message"], "Long polling is working");

    let college = unique_college();
    let (alice, bob, stranger) = (unique_user(), unique_user(), unique_user());
    let (alice_token, bob_token) = (
        target.token(alice, Some(college)),
        target.token(bob, Some(college)),
    );

    // A held poll is answered by a publish. One poll at a time per user: `cargo lambda
    // watch` runs one instance per function, so a second held poll would queue behind.
    for (user, token, body) in [
        (
            alice,
            &alice_token,
            json!({"event": "message", "data": {"id": 1, "sender_id": bob.0, "sender_name": "Bob", "message": "Hello Alice"}}),
        ),
        (
            bob,
            &bob_token,
            json!({"event": "typing", "data": {"sender_id": alice.0, "is_typing": true}}),
        ),
    ] {
        let held = {
            let (client, url, token) = (client.clone(), target.url("poll/events/"), token.clone());
            tokio::spawn(async move {
                let response = client.get(url).bearer_auth(token).send().await.unwrap();
                (json_of(response).await, Instant::now())
            })
        };
        let mut body = body;
        body["user_id"] = json!(user.0);
        let (id, published_at) = target.publish_until_routed(&client, body.clone()).await;
        let ((status, answer), answered_at) = held.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(answer["events"].as_array().unwrap().len(), 1, "{answer}");
        assert_eq!(answer["events"][0]["id"], id);
        assert_eq!(
            answer["events"][0]["data"], body["data"],
            "delivered unchanged"
        );
        let latency = answered_at.duration_since(published_at);
        assert!(
            latency < Duration::from_secs(2),
            "answered {latency:?} after the publish, not at the timeout"
        );
    }

    // Both have queues now: a college notice reaches both, once each.
    let notice = target.publish(&client, json!({"college_id": college.0, "event": "notification", "data": {"title": "Exams", "message": "Timetable out"}})).await;
    assert_eq!(notice["published"][0]["routed"], true);
    for token in [&alice_token, &bob_token] {
        let (status, body) = json_of(
            client
                .get(target.url("poll/events/"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["events"].as_array().unwrap().len(), 1, "{body}");
        assert_eq!(body["events"][0]["id"], notice["published"][0]["id"]);
    }

    // Online lookup, then disconnect.
    let online = |ids: String| {
        client
            .get(target.url("poll/online/"))
            .bearer_auth(&bob_token)
            .query(&[("user_ids", ids)])
            .send()
    };
    let (status, body) = json_of(online(format!("{alice},{stranger}")).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["online"],
        json!({alice.to_string(): true, stranger.to_string(): false})
    );
    let (status, body) = json_of(
        client
            .post(target.url("poll/disconnect/"))
            .bearer_auth(&alice_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"status": "disconnected", "user_id": alice.0}));
    let (_, body) = json_of(online(alice.to_string()).await.unwrap()).await;
    assert_eq!(body["online"][alice.to_string()], false);

    // 401 and 405.
    let (status, body) =
        json_of(client.get(target.url("poll/events/")).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "missing_token");
    let response = client
        .delete(target.url("poll/test/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET");
    let (status, body) = json_of(
        client
            .post(target.url("events/"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "missing_api_key");
}
