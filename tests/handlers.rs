//! The handlers, fed real API Gateway HTTP API (payload 2.0) events from `fixtures/`:
//! every route, every status the contract names, on RabbitMQ and on the memory broker.

use std::time::Duration;

use lambda_http::{Body, Context, RequestExt, Response};
use longpoll::{App, token::TokenIssuer, topology::Audience};
use longpoll_testkit::*;
use serde_json::{Value, json};
use tokio::time::Instant;

const HOLD: Duration = Duration::from_millis(1500);

fn test_app(make: MakeBroker) -> TestApp {
    let config = config(&unique_name("handlers"));
    let broker = make(&config);
    app(config, broker, HOLD)
}

async fn poll(app: &App, fixture: Fixture) -> Response<Body> {
    poll_events::handle(app, fixture.request())
        .await
        .expect("the handler never fails outright")
}

/// Each way of sending the token works, and the answer has the contract's shape.
async fn poll_accepts_all_three_token_forms(make: MakeBroker) {
    let app = test_app(make);
    let user = subscriber(unique_user(), None);
    let token = token(user.user_id, None);
    declare(&*app.broker, &user).await;
    let forms = [
        Fixture::new("poll-events").authorization(&format!("Bearer {token}")),
        Fixture::new("poll-events").authorization(&format!("Token {token}")),
        Fixture::new("poll-events").query(&format!("token={token}")),
    ];
    for (n, fixture) in forms.into_iter().enumerate() {
        publish(
            &*app.broker,
            Audience::User(user.user_id),
            &message(n as i64),
        )
        .await;
        let response = poll(&app, fixture).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body = json_of(&response);
        assert!(body["timestamp"].is_f64());
        let events = body["events"].as_array().unwrap();
        assert_eq!(events.len(), 1);
        let event = events[0].as_object().unwrap();
        let mut keys: Vec<&str> = event.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["data", "event", "id", "timestamp"]);
        assert_eq!(event["event"], "message");
        assert_eq!(event["data"]["id"], n as i64);
        assert!(event["id"].is_string() && event["timestamp"].is_f64());
    }
}

/// Nothing to say: `{"events": []}` once the hold is over.
async fn poll_answers_empty_after_the_hold(make: MakeBroker) {
    let app = test_app(make);
    let user = unique_user();
    let started = Instant::now();
    let response = poll(
        &app,
        Fixture::new("poll-events").authorization(&format!("Bearer {}", token(user, None))),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(&response)["events"], json!([]));
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "held {:?}",
        started.elapsed()
    );
    assert_eq!(
        app.broker.is_online(&[user], None).await.unwrap(),
        [true],
        "the poll marked the user online"
    );
}

/// The Lambda deadline shortens the hold; it is never overrun.
async fn poll_stops_before_the_lambda_deadline(make: MakeBroker) {
    let mut app = test_app(make);
    app.config.poll_timeout = Duration::from_secs(5);
    let user = unique_user();
    let mut context = Context::default();
    let epoch_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    context.deadline = epoch_ms + 1500;
    let request = Fixture::new("poll-events")
        .authorization(&format!("Bearer {}", token(user, None)))
        .request()
        .with_lambda_context(context);
    let started = Instant::now();
    let response = poll_events::handle(&app, request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "answered after {:?}",
        started.elapsed()
    );
}

/// What the query says about users never changes whose queue is read.
async fn poll_reads_only_the_token_owners_queue(make: MakeBroker) {
    let app = test_app(make);
    let alice = subscriber(unique_user(), None);
    let bob = unique_user();
    declare(&*app.broker, &alice).await;
    publish(&*app.broker, Audience::User(alice.user_id), &message(1)).await;
    let sneaky = format!(
        "user_id={0}&user={0}&sub={0}&queue=event_queue:user:{0}",
        alice.user_id
    );
    let response = poll(
        &app,
        Fixture::new("poll-events")
            .authorization(&format!("Bearer {}", token(bob, None)))
            .query(&sneaky),
    )
    .await;
    assert_eq!(json_of(&response)["events"], json!([]));
    let events = app
        .broker
        .wait_for_events(&alice, &PollBudget::until(Instant::now() + HOLD))
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "alice's event is still hers");
}

/// Every way a token can be wrong is a 401 with a JSON body that never echoes it, and
/// costs no event.
async fn poll_refuses_bad_tokens(make: MakeBroker) {
    let app = test_app(make);
    let user = subscriber(unique_user(), None);
    declare(&*app.broker, &user).await;
    publish(&*app.broker, Audience::User(user.user_id), &message(1)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = TokenIssuer::new(JWT_SECRET.as_bytes()).mint_expiring_at(
        user.user_id,
        None,
        None,
        now - 60,
    );
    let forged =
        TokenIssuer::new(b"not-the-secret").mint(user.user_id, None, None, Duration::from_secs(60));
    let cases = [
        (Fixture::new("poll-events"), "missing_token"),
        (
            Fixture::new("poll-events").authorization(&format!("Bearer {expired}")),
            "token_expired",
        ),
        (
            Fixture::new("poll-events").query(&format!("token={forged}")),
            "invalid_token",
        ),
        (
            Fixture::new("poll-events").authorization("Bearer not.a.jwt"),
            "invalid_token",
        ),
        (
            Fixture::new("poll-events")
                .authorization(&format!("Basic {}", token(user.user_id, None))),
            "bad_authorization_scheme",
        ),
    ];
    for (fixture, code) in cases {
        let response = poll(&app, fixture).await;
        assert_error(&response, 401, code);
        let text = String::from_utf8_lossy(response.body().as_ref()).to_string();
        assert!(
            !text.contains(&expired) && !text.contains(&forged),
            "a token was echoed: {text}"
        );
    }
    let events = app
        .broker
        .wait_for_events(&user, &PollBudget::until(Instant::now() + HOLD))
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "refused polls took nothing");
}

/// `nbf` in the future is refused; with `JWT_ISSUER` and `JWT_AUDIENCE` set, a token
/// must carry that `iss` and name that `aud`. Refused polls cost no event.
async fn poll_honours_nbf_issuer_and_audience(make: MakeBroker) {
    let mut config = config(&unique_name("handlers"));
    config.jwt_issuer = Some("https://auth.example.edu".to_owned());
    config.jwt_audience = Some("longpoll".to_owned());
    let broker = make(&config);
    let app = app(config, broker, Duration::from_millis(300));
    let user = unique_user();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let issuer = TokenIssuer::new(JWT_SECRET.as_bytes());
    let claims = |extra: Value| {
        let mut claims = serde_json::json!({"sub": user.0.to_string(), "exp": now + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        issuer.mint_claims(&claims)
    };
    let good = serde_json::json!({"iss": "https://auth.example.edu", "aud": ["other", "longpoll"]});
    let cases = [
        (claims(good.clone()), 200, ""),
        (
            claims(
                serde_json::json!({"iss": "https://auth.example.edu", "aud": "longpoll", "nbf": now + 300}),
            ),
            401,
            "token_not_yet_valid",
        ),
        (
            claims(serde_json::json!({"aud": "longpoll"})),
            401,
            "invalid_token",
        ),
        (
            claims(serde_json::json!({"iss": "https://evil.example", "aud": "longpoll"})),
            401,
            "invalid_token",
        ),
        (
            claims(serde_json::json!({"iss": "https://auth.example.edu", "aud": "other"})),
            401,
            "invalid_token",
        ),
    ];
    for (token, status, code) in cases {
        let response = poll(
            &app,
            Fixture::new("poll-events").authorization(&format!("Bearer {token}")),
        )
        .await;
        assert_eq!(
            response.status(),
            status,
            "{code}: {:?}",
            json_of(&response)
        );
        if status != 200 {
            assert_error(&response, status, code);
        }
    }
}

/// Wrong methods are 405 with `Allow`, on every route.
async fn wrong_methods_are_405_with_allow(make: MakeBroker) {
    let app = test_app(make);
    let token = token(unique_user(), None);
    let bearer = format!("Bearer {token}");
    let response = poll(
        &app,
        Fixture::new("poll-events")
            .method("POST")
            .authorization(&bearer),
    )
    .await;
    assert_error(&response, 405, "method_not_allowed");
    assert_eq!(response.headers()["allow"], "GET");
    let response = poll_test::handle(Fixture::new("poll-test").method("DELETE").request())
        .await
        .unwrap();
    assert_error(&response, 405, "method_not_allowed");
    assert_eq!(response.headers()["allow"], "GET");
    let response = poll_disconnect::handle(
        &app,
        Fixture::new("poll-disconnect")
            .method("GET")
            .authorization(&bearer)
            .request(),
    )
    .await
    .unwrap();
    assert_error(&response, 405, "method_not_allowed");
    assert_eq!(response.headers()["allow"], "POST");
}

/// Disconnect answers the guide's JSON and the user is offline at once.
async fn disconnect_marks_the_user_offline(make: MakeBroker) {
    let app = test_app(make);
    let user = unique_user();
    let bearer = format!("Bearer {}", token(user, None));
    app.broker
        .mark_online(user, None, &PollBudget::until(in_a_while()))
        .await
        .unwrap();
    let response = poll_disconnect::handle(
        &app,
        Fixture::new("poll-disconnect")
            .authorization(&bearer)
            .request(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_of(&response),
        json!({"status": "disconnected", "user_id": user.0})
    );
    assert_eq!(app.broker.is_online(&[user], None).await.unwrap(), [false]);
    let response = poll_disconnect::handle(&app, Fixture::new("poll-disconnect").request())
        .await
        .unwrap();
    assert_error(&response, 401, "missing_token");
}

/// Handlers do not look at the path: the same binary answers under
/// `cargo lambda watch`'s `/lambda-url/<function>/` prefix.
async fn handlers_ignore_the_path(make: MakeBroker) {
    let app = test_app(make);
    let user = subscriber(unique_user(), None);
    declare(&*app.broker, &user).await;
    publish(&*app.broker, Audience::User(user.user_id), &message(1)).await;
    let fixture = Fixture::new("poll-events")
        .path("/lambda-url/poll-events/api/v1/communication/poll/events/")
        .query(&format!("token={}", token(user.user_id, None)));
    let response = poll(&app, fixture).await;
    assert_eq!(json_of(&response)["events"].as_array().unwrap().len(), 1);
}

longpoll_testkit::on_every_broker!(
    poll_accepts_all_three_token_forms,
    poll_answers_empty_after_the_hold,
    poll_stops_before_the_lambda_deadline,
    poll_reads_only_the_token_owners_queue,
    poll_refuses_bad_tokens,
    poll_honours_nbf_issuer_and_audience,
    wrong_methods_are_405_with_allow,
    disconnect_marks_the_user_offline,
    handlers_ignore_the_path,
);

#[tokio::test]
async fn test_endpoint_answers_the_guides_json() {
    let response = poll_test::handle(Fixture::new("poll-test").request())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = json_of(&response);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["message"], "Long polling is working");
    assert!(body["timestamp"].as_f64().is_some_and(|t| t > 1.7e9));
    assert_eq!(body.as_object().unwrap().len(), 3);
}

/// A broker that refuses connections: 503 with `Retry-After`, at once.
#[tokio::test]
async fn an_unreachable_broker_is_a_prompt_503() {
    let mut config = config(&unique_name("handlers"));
    config.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".to_owned();
    let app = app(config.clone(), rabbit(&config), Duration::from_secs(5));
    let bearer = format!("Bearer {}", token(unique_user(), None));
    for response in [
        poll(&app, Fixture::new("poll-events").authorization(&bearer)).await,
        poll_disconnect::handle(
            &app,
            Fixture::new("poll-disconnect")
                .authorization(&bearer)
                .request(),
        )
        .await
        .unwrap(),
    ] {
        assert_error(&response, 503, "broker_unavailable");
        assert_eq!(response.headers()["retry-after"], "2");
        let message = json_of(&response)["message"].as_str().unwrap().to_owned();
        assert!(!message.contains("guest"), "credentials leaked: {message}");
    }
}

/// A broker that accepts the TCP connection and then says nothing (a half-open path):
/// 503 within the AMQP timeout, never a hang.
#[tokio::test]
async fn a_silent_broker_is_a_503_within_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // keep it open, answer nothing
        }
    });
    let mut config = config(&unique_name("handlers"));
    config.amqp_url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    config.amqp_timeout = Duration::from_millis(700);
    let app = app(config.clone(), rabbit(&config), Duration::from_secs(5));
    let started = Instant::now();
    let response = poll(
        &app,
        Fixture::new("poll-events")
            .authorization(&format!("Bearer {}", token(unique_user(), None))),
    )
    .await;
    assert_error(&response, 503, "broker_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    silent.abort();
}

#[test]
fn error_bodies_are_the_contract_shape() {
    let response = longpoll::http::ApiError::bad_request("bad_input", "nope").into_response();
    let body: Value = json_of(&response);
    assert_eq!(body, json!({"error": "bad_input", "message": "nope"}));
}
