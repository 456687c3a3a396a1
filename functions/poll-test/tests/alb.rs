//! The function behind an Application Load Balancer (`FrontDoor=alb`), as Lambda runs it:
//! the real binary on a Runtime API on loopback, handed an ALB's event. It answers in the
//! ALB's response shape, and, since an ALB does no CORS, adds the CORS headers itself
//! when `CORS_ORIGINS` is set (as the template sets it in that mode), preflights
//! included; behind API Gateway (unset) it leaves CORS to the HTTP API.

use std::{path::Path, time::Duration};

use longpoll_testkit::{
    Fixture,
    managed::Function,
    runtime_api::{Outcome, RuntimeApi},
};
use serde_json::Value;

const ROUTE: &str = "/api/v1/communication/poll/test/";
const ORIGIN: &str = "https://app.example.edu";

/// The function's answers to `events`, started with `env`.
async fn answers(env: &[(&str, &str)], events: Vec<Fixture>) -> Vec<Value> {
    let runtime = RuntimeApi::start().await;
    let binary = Path::new(env!("CARGO_BIN_EXE_poll-test"));
    // poll-test never opens the broker.
    let _function = Function::start(binary, &runtime, 1, "alb", "amqp://127.0.0.1:1", env);
    let mut answers = Vec::new();
    for fixture in events {
        let invocation = runtime.invoke(fixture.event(), Duration::from_secs(3));
        match tokio::time::timeout(Duration::from_secs(10), invocation.outcome()).await {
            Ok(Some(Outcome::Response { body, .. })) => answers.push(body),
            other => panic!("no answer: {other:?}"),
        }
    }
    answers
}

fn header<'a>(answer: &'a Value, name: &str) -> Option<&'a str> {
    answer["headers"][name].as_str()
}

#[tokio::test]
async fn behind_an_alb_it_answers_in_the_albs_shape_with_cors() {
    let preflight = Fixture::alb(ROUTE)
        .method("OPTIONS")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization");
    let [get, preflight]: [Value; 2] = answers(
        &[(
            "CORS_ORIGINS",
            &format!("{ORIGIN},https://admin.example.edu"),
        )],
        vec![Fixture::alb(ROUTE), preflight],
    )
    .await
    .try_into()
    .unwrap();

    assert_eq!(get["statusCode"], 200, "{get}");
    assert_eq!(get["statusDescription"], "200 OK", "the ALB's shape: {get}");
    let body: Value = serde_json::from_str(get["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(header(&get, "access-control-allow-origin"), Some(ORIGIN));
    let exposed = header(&get, "access-control-expose-headers").unwrap();
    assert!(exposed.contains("retry-after") && exposed.contains("x-poll-hold-ms"));

    assert!(
        preflight["statusCode"].as_u64().unwrap() < 300,
        "{preflight}"
    );
    assert_eq!(
        header(&preflight, "access-control-allow-origin"),
        Some(ORIGIN)
    );
    assert!(
        header(&preflight, "access-control-allow-methods")
            .unwrap()
            .contains("GET")
    );
    assert!(
        header(&preflight, "access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
}

#[tokio::test]
async fn behind_api_gateway_it_leaves_cors_to_the_api() {
    let [get]: [Value; 1] = answers(&[], vec![Fixture::new("poll-test")])
        .await
        .try_into()
        .unwrap();
    assert_eq!(get["statusCode"], 200, "{get}");
    assert!(
        header(&get, "access-control-allow-origin").is_none(),
        "{get}"
    );
}
