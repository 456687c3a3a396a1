//! One route table, four mirrors: each function crate exports its `ROUTE` beside its
//! handler, and [`MOUNTS`] collects them; the local server serves exactly those (each
//! function answering its own method), the `cargo lambda watch` router in the root
//! `Cargo.toml` and the API Gateway routes in `template.yaml` say the same, path for
//! path, function for function, and `openapi.yaml` documents them, method for method.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use longpoll::{routes::Route, topology::QueueType};
use longpoll_local::{
    BrokerKind, DEV_JWT_SECRET, DEV_PUBLISH_KEY, Functions, MOUNTS, cors, router,
};
use longpoll_testkit::watch;
use serde_norway::Value;
use tower::ServiceExt;

/// The routes the local server mounts.
fn routes() -> impl Iterator<Item = Route> {
    MOUNTS.into_iter().map(|(route, _)| route)
}

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn expected() -> BTreeMap<String, String> {
    routes()
        .map(|route| (route.path.to_owned(), route.function.to_owned()))
        .collect()
}

/// The SAM template, parsed (CloudFormation's `!Ref`-style tags become tagged values).
fn template() -> Value {
    let text = std::fs::read_to_string(format!("{WORKSPACE}/template.yaml")).unwrap();
    serde_norway::from_str(&text).expect("template.yaml is YAML")
}

/// Path → binary of every `HttpApi` event of every function in the template.
fn template_routes(template: &Value) -> BTreeMap<String, String> {
    let mut routes = BTreeMap::new();
    for (_, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let binary = resource["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .expect("each function names its binary");
        assert_eq!(resource["Metadata"]["BuildMethod"], "rust-cargolambda");
        let events = resource["Properties"]["Events"].as_mapping();
        for (_, event) in events.into_iter().flatten() {
            assert_eq!(event["Type"], "HttpApi");
            let properties = &event["Properties"];
            // Every method reaches the function, which answers 405 with `Allow`.
            assert_eq!(properties["Method"], "ANY");
            assert_eq!(properties["PayloadFormatVersion"], "2.0");
            let path = properties["Path"].as_str().unwrap().to_owned();
            assert!(routes.insert(path, binary.to_owned()).is_none());
        }
    }
    // Routes written out (the poll route: to whichever of its two conditional functions
    // the stack has, standard or managed-instances, both the same binary).
    let resources = &template["Resources"];
    for (_, route) in resources.as_mapping().unwrap() {
        if route["Type"] != "AWS::ApiGatewayV2::Route" {
            continue;
        }
        let key = route["Properties"]["RouteKey"].as_str().unwrap();
        let path = key
            .strip_prefix("ANY ")
            .expect("every method reaches the function");
        let target = tagged_strings(&route["Properties"]["Target"], "Sub").concat();
        let integration = &resources[target
            .strip_prefix("integrations/${")
            .and_then(|rest| rest.strip_suffix('}'))
            .expect("the target is an integration of this template")];
        assert_eq!(integration["Properties"]["PayloadFormatVersion"], "2.0");
        let binaries: Vec<&str> =
            tagged_strings(&integration["Properties"]["IntegrationUri"], "Ref")
                .iter()
                .map(|reference| {
                    let function = reference.trim_end_matches(".Alias");
                    resources[function]["Metadata"]["BuildProperties"]["Binary"]
                        .as_str()
                        .unwrap()
                })
                .collect();
        assert!(!binaries.is_empty() && binaries.iter().all(|b| *b == binaries[0]));
        assert!(
            routes
                .insert(path.to_owned(), binaries[0].to_owned())
                .is_none()
        );
    }
    routes
}

/// Every string under the CloudFormation tag `tag` (`!Ref`, `!Sub`) anywhere in `value`.
fn tagged_strings(value: &Value, tag: &str) -> Vec<String> {
    match value {
        Value::Tagged(tagged) => {
            if tagged.tag == tag
                && let Some(text) = tagged.value.as_str()
            {
                return vec![text.to_owned()];
            }
            tagged_strings(&tagged.value, tag)
        }
        Value::Sequence(items) => items
            .iter()
            .flat_map(|item| tagged_strings(item, tag))
            .collect(),
        Value::Mapping(map) => map
            .values()
            .flat_map(|item| tagged_strings(item, tag))
            .collect(),
        _ => Vec::new(),
    }
}

/// The check that the mirrors agree: what the local server mounts ([`MOUNTS`]), what
/// `cargo lambda watch` routes, and what API Gateway routes.
#[test]
fn the_route_table_the_watch_router_and_the_template_agree() {
    let template = template();
    assert_eq!(watch::router(), expected(), "Cargo.toml watch router");
    assert_eq!(template_routes(&template), expected(), "template.yaml");
}

/// `Fn::FindInMap [PollHold, !Ref PollHoldSeconds, <name>]`: a figure that follows the
/// hold parameter.
fn follows_the_hold(value: &Value, name: &str) -> bool {
    let Value::Tagged(tagged) = value else {
        return false;
    };
    let Some(items) = tagged.value.as_sequence() else {
        return false;
    };
    tagged.tag == "FindInMap"
        && items[0] == "PollHold"
        && tagged_strings(&items[1], "Ref") == ["PollHoldSeconds"]
        && items[2] == name
}

/// What keeps a poll whole on AWS, for every hold the template allows: the function may
/// run for the poll's whole budget (set-up or hold, then clean-up, then sending), a
/// Lambda deadline never shortens the hold, the integration waits longer than the
/// function (and no longer than API Gateway allows), and the alarm sits between the
/// longest poll and the timeout. Every one of those figures follows the hold parameter.
#[test]
fn the_template_timeouts_cover_the_poll_budget() {
    use longpoll::budget::{CLEAN_UP, DEADLINE_MARGIN, PollBudget};
    use std::time::Duration;

    let template = template();
    let hold_parameter = &template["Parameters"]["PollHoldSeconds"];
    assert_eq!(
        Duration::from_secs_f64(hold_parameter["Default"].as_str().unwrap().parse().unwrap()),
        longpoll::config::DEFAULT_POLL_TIMEOUT
    );
    let holds = hold_parameter["AllowedValues"].as_sequence().unwrap();
    let sending = DEADLINE_MARGIN - CLEAN_UP;
    for allowed in holds {
        let allowed = allowed.as_str().unwrap();
        let row = &template["Mappings"]["PollHold"][allowed];
        let hold = Duration::from_millis(row["HoldMs"].as_u64().unwrap());
        assert_eq!(hold, Duration::from_secs_f64(allowed.parse().unwrap()));
        let timeout = Duration::from_secs(row["FunctionTimeout"].as_u64().unwrap());
        assert!(
            timeout >= PollBudget::longest(hold) + sending,
            "hold {allowed}: Timeout {timeout:?} is shorter than a poll's budget"
        );
        assert!(
            timeout - DEADLINE_MARGIN >= hold,
            "hold {allowed}: the Lambda deadline would cut the hold short"
        );
        assert!(
            timeout <= hold + Duration::from_secs(2),
            "hold {allowed}: {timeout:?}"
        );
        let integration = Duration::from_millis(row["IntegrationTimeoutMs"].as_u64().unwrap());
        assert!(
            integration > timeout,
            "hold {allowed}: integration {integration:?}"
        );
        assert!(
            integration <= Duration::from_secs(30),
            "hold {allowed}: API Gateway's HTTP API stops integrations at 30 s"
        );
        let near = Duration::from_millis(row["NearTimeoutMs"].as_u64().unwrap());
        assert!(near > PollBudget::longest(hold) - CLEAN_UP && near < timeout);
    }
    let globals = &template["Globals"]["Function"];
    assert_eq!(globals["Runtime"], "provided.al2023");
    assert_eq!(globals["Architectures"][0], "arm64");
    assert_eq!(globals["Handler"], "bootstrap");
    assert!(follows_the_hold(
        &globals["Environment"]["Variables"]["POLL_TIMEOUT_MS"],
        "HoldMs"
    ));
    let resources = &template["Resources"];
    for function in ["PollEventsFunction", "PollEventsManagedFunction"] {
        assert!(
            follows_the_hold(
                &resources[function]["Properties"]["Timeout"],
                "FunctionTimeout"
            ),
            "{function}"
        );
    }
    assert!(follows_the_hold(
        &resources["PollEventsIntegration"]["Properties"]["TimeoutInMillis"],
        "IntegrationTimeoutMs"
    ));
    assert!(follows_the_hold(
        &resources["PollNearTimeoutAlarm"]["Properties"]["Threshold"],
        "NearTimeoutMs"
    ));
    assert_eq!(
        globals["MemorySize"], 128,
        "the poll function fits in 128 MB"
    );

    // The publish route is authorised by IAM and the function trusts it, unless an ALB
    // (no IAM) is in front: then the key from the PublishKey secret is required.
    let publish = &template["Resources"]["PublishEventFunction"]["Properties"];
    assert_eq!(
        publish["Events"]["Publish"]["Properties"]["Auth"]["Authorizer"],
        "AWS_IAM"
    );
    let variables = &publish["Environment"]["Variables"];
    assert_eq!(
        if_branches(&variables["PUBLISH_TRUST_IAM"], "Alb"),
        ("false".to_owned(), "true".to_owned())
    );
    assert_eq!(
        tagged_strings(&variables["PUBLISH_API_KEY_SECRET_ARN"], "Ref"),
        ["PublishKey"]
    );
}

/// `!If [condition, a, b]` on `condition`, as the strings `a` and `b`.
fn if_branches(value: &Value, condition: &str) -> (String, String) {
    let Value::Tagged(tagged) = value else {
        panic!("not an !If: {value:?}")
    };
    let items = tagged.value.as_sequence().unwrap();
    assert_eq!(
        (tagged.tag.to_string().as_str(), &items[0]),
        ("!If", &Value::from(condition))
    );
    (
        items[1].as_str().unwrap().to_owned(),
        items[2].as_str().unwrap().to_owned(),
    )
}

/// With `FrontDoor=alb`, the load balancer routes every path of the route table to its
/// function (a listener rule, a Lambda target group on the function's alias, and the
/// permission for the load balancer to invoke it), keeps a held poll's connection open
/// past the longest function timeout, and the functions answer CORS themselves.
#[test]
fn the_alb_front_door_routes_every_function() {
    let template = template();
    let resources = &template["Resources"];
    let mut routed = BTreeMap::new();
    for (_, rule) in resources.as_mapping().unwrap() {
        if rule["Type"] != "AWS::ElasticLoadBalancingV2::ListenerRule" {
            continue;
        }
        assert_eq!(rule["Condition"], "Alb");
        let properties = &rule["Properties"];
        let paths = properties["Conditions"][0]["PathPatternConfig"]["Values"]
            .as_sequence()
            .unwrap();
        assert_eq!(paths.len(), 1);
        let group_name = &tagged_strings(&properties["Actions"][0]["TargetGroupArn"], "Ref")[0];
        let group = &resources[group_name.as_str()];
        assert_eq!(group["Properties"]["TargetType"], "lambda");
        let permission_name = group["DependsOn"].as_str().unwrap();
        let permission = &resources[permission_name]["Properties"];
        assert_eq!(
            permission["Principal"],
            "elasticloadbalancing.amazonaws.com"
        );
        let targets = tagged_strings(&group["Properties"]["Targets"][0]["Id"], "Ref");
        assert_eq!(
            targets,
            tagged_strings(&permission["FunctionName"], "Ref"),
            "{permission_name} lets the load balancer invoke what {group_name} targets"
        );
        let binaries: Vec<&str> = targets
            .iter()
            .map(|target| {
                resources[target.trim_end_matches(".Alias")]["Metadata"]["BuildProperties"]
                    ["Binary"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert!(!binaries.is_empty() && binaries.iter().all(|b| *b == binaries[0]));
        let path = paths[0].as_str().unwrap().to_owned();
        assert!(routed.insert(path, binaries[0].to_owned()).is_none());
    }
    assert_eq!(routed, expected(), "the ALB's listener rules");

    let attributes = resources["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]
        .as_sequence()
        .unwrap();
    let idle = attributes
        .iter()
        .find(|attribute| attribute["Key"] == "idle_timeout.timeout_seconds")
        .expect("an idle timeout")["Value"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let longest_timeout = template["Mappings"]["PollHold"]
        .as_mapping()
        .unwrap()
        .values()
        .map(|row| row["FunctionTimeout"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(idle > longest_timeout, "idle timeout {idle} s");
    assert_eq!(
        tagged_strings(
            &template["Globals"]["Function"]["Environment"]["Variables"]["CORS_ORIGINS"],
            "Ref"
        ),
        ["CorsAllowOrigins"]
    );
}

#[test]
fn the_watch_router_serves_the_local_development_settings() {
    let settings = watch::settings();
    // Every function named is a binary of the workspace.
    for route in routes() {
        let manifest = format!("{WORKSPACE}/functions/{}/Cargo.toml", route.function);
        let text = std::fs::read_to_string(&manifest).unwrap_or_else(|_| panic!("{manifest}"));
        assert!(text.contains(&format!("name = \"{}\"", route.function)));
    }
    // Held polls do not queue behind each other, and the secrets are the local ones.
    assert!(settings["concurrency"].as_integer().unwrap() > 1);
    assert_eq!(settings["env"]["JWT_SECRET"].as_str(), Some(DEV_JWT_SECRET));
    assert_eq!(
        settings["env"]["PUBLISH_API_KEY"].as_str(),
        Some(DEV_PUBLISH_KEY)
    );
}

/// `openapi.yaml` documents exactly the route table's paths, each with its method.
#[test]
fn the_openapi_document_describes_the_route_table() {
    let text = std::fs::read_to_string(format!("{WORKSPACE}/openapi.yaml")).unwrap();
    let document: Value = serde_norway::from_str(&text).expect("openapi.yaml is YAML");
    let prefix = document["servers"][0]["url"].as_str().unwrap();
    let documented: BTreeMap<String, Vec<String>> = document["paths"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_mapping()
                .unwrap()
                .keys()
                .map(|method| method.as_str().unwrap().to_ascii_uppercase())
                .collect();
            (format!("{prefix}{}", path.as_str().unwrap()), methods)
        })
        .collect();
    let expected: BTreeMap<String, Vec<String>> = routes()
        .map(|route| (route.path.to_owned(), vec![route.method.to_string()]))
        .collect();
    assert_eq!(documented, expected);
}

/// The local server routes each path to the function the table names, which answers
/// its own method and refuses another with 405 and `Allow` (no 404, no other function).
#[tokio::test]
async fn the_local_server_serves_each_route_with_its_method() {
    let config = longpoll::Config::new(longpoll::config::DEFAULT_AMQP_URL, None, "routes");
    let functions = Functions::new(config, BrokerKind::Memory).await.unwrap();
    let app = router(Arc::new(functions), cors(&[]));
    for route in routes() {
        let wrong = if route.method == "GET" {
            "DELETE"
        } else {
            "GET"
        };
        let request = Request::builder()
            .method(wrong)
            .uri(route.path)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{route:?}"
        );
        assert_eq!(
            response.headers()[header::ALLOW],
            route.method.as_str(),
            "{route:?}"
        );
    }
    // And the method it serves reaches the handler (poll/test needs nothing else).
    let test = poll_test::ROUTE;
    let request = Request::builder()
        .method(test.method)
        .uri(test.path)
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// The guardrails of the deployment: polls cannot starve producers, standard mode caps
/// its executions, managed instances hold as many polls per process as the
/// managed-instances test proves one process holds, every log group expires, and prod logs
/// warnings only.
#[test]
fn the_template_guards_concurrency_and_logs() {
    let template = template();
    let resources = &template["Resources"];
    let publish = &resources["PublishEventFunction"]["Properties"];
    assert!(!publish["ReservedConcurrentExecutions"].is_null());
    let standard = &resources["PollEventsFunction"];
    assert_eq!(standard["Condition"], "Standard");
    assert!(!standard["Properties"]["ReservedConcurrentExecutions"].is_null());
    let managed = &resources["PollEventsManagedFunction"];
    assert_eq!(managed["Condition"], "Managed");
    let capacity = &managed["Properties"]["CapacityProviderConfig"];
    assert!(!capacity["Arn"].is_null());
    assert_eq!(
        resources["CapacityProvider"]["Type"],
        "AWS::Lambda::CapacityProvider"
    );
    // A shared lane (channel) carries up to 256 consumers; RabbitMQ 4 brokers get the
    // limits raised.
    let limits = tagged_strings(
        &resources["BrokerConfiguration"]["Properties"]["Data"],
        "Sub",
    )
    .concat();
    let per_channel: u64 = limits
        .lines()
        .find_map(|line| line.strip_prefix("consumer_max_per_channel = "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the broker configuration sets consumers per channel");
    assert!(per_channel >= 256, "{per_channel}");
    let per_process = &template["Parameters"]["PollsPerEnvironment"];
    // poll-events' tests/managed_instances.rs holds this many polls in one process.
    assert_eq!(per_process["Default"], 1000);
    for (name, resource) in resources.as_mapping().unwrap() {
        if resource["Type"] == "AWS::Logs::LogGroup" {
            assert!(
                !resource["Properties"]["RetentionInDays"].is_null(),
                "{name:?} keeps logs forever"
            );
        }
        if resource["Type"] == "AWS::Serverless::Function" {
            let level = &resource["Properties"]["LoggingConfig"]["ApplicationLogLevel"];
            let Value::Tagged(choice) = level else {
                panic!("{name:?} picks its log level by stage: {level:?}");
            };
            assert_eq!(choice.tag, "If");
            assert_eq!(
                choice.value,
                serde_norway::from_str::<Value>("[Prod, WARN, INFO]").unwrap(),
                "{name:?}: WARN in prod"
            );
        }
    }
}

/// The functions connect as their own broker user, never as Amazon MQ's administrator:
/// its secret is the only broker secret their policy lets them read, and their
/// environment names it through the `FunctionBrokerUser` resource (so no function starts
/// before the user exists), whose code is the handler `local/tests/broker_user.rs` runs.
#[test]
fn the_functions_use_their_least_privilege_broker_user() {
    let template = template();
    let resources = &template["Resources"];
    for (name, resource) in resources.as_mapping().unwrap() {
        if resource["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let refs = tagged_strings(&resource["Properties"]["Policies"], "Ref");
        if refs.is_empty() {
            continue; // no secrets (poll/test/ never talks to the broker)
        }
        assert!(
            refs.contains(&"FunctionBrokerCredentials".to_owned()),
            "{name:?}: {refs:?}"
        );
        assert!(
            !refs.contains(&"BrokerCredentials".to_owned()),
            "{name:?} reads the admin"
        );
    }
    let environment = &template["Globals"]["Function"]["Environment"]["Variables"];
    let secret = tagged_strings(&environment["AMQP_SECRET_ARN"], "GetAtt");
    assert_eq!(secret, ["FunctionBrokerUser.SecretArn"]);
    let user = &resources["FunctionBrokerUser"]["Properties"];
    assert_eq!(user["Exchange"], environment["EVENTS_EXCHANGE"]);
    assert_eq!(
        tagged_strings(&user["UserSecretArn"], "Ref"),
        ["FunctionBrokerCredentials"]
    );
    assert_eq!(
        tagged_strings(&user["AdminSecretArn"], "Ref"),
        ["BrokerCredentials"]
    );
    let function = &resources["BrokerUserFunction"]["Properties"];
    assert_eq!(function["Code"], "infra/broker-user");
    assert_eq!(function["Handler"], "index.handler");
    assert!(std::path::Path::new(&format!("{WORKSPACE}/infra/broker-user/index.py")).exists());
}

/// A cluster broker gets quorum user queues and a node-down alarm; a single node keeps
/// classic queues (docs/decisions/0001-cluster-queue-model.md). Both values are ones
/// the functions' configuration accepts.
#[test]
fn the_queue_type_follows_the_broker_deployment_mode() {
    let template = template();
    let environment = &template["Globals"]["Function"]["Environment"]["Variables"];
    let Value::Tagged(choice) = &environment["QUEUE_TYPE"] else {
        panic!(
            "QUEUE_TYPE is chosen with !If: {:?}",
            environment["QUEUE_TYPE"]
        );
    };
    assert_eq!(choice.tag, "If");
    let [condition, cluster, single] = choice.value.as_sequence().unwrap().as_slice() else {
        panic!("!If [condition, then, else]");
    };
    let multi_az = &template["Conditions"][condition.as_str().unwrap()];
    assert_eq!(tagged_strings(multi_az, "Ref"), ["BrokerDeploymentMode"]);
    assert!(format!("{multi_az:?}").contains("CLUSTER_MULTI_AZ"));
    for (value, expected) in [(cluster, QueueType::Quorum), (single, QueueType::Classic)] {
        assert_eq!(QueueType::parse(value.as_str().unwrap()), Some(expected));
    }
    let alarm = &template["Resources"]["BrokerNodeDownAlarm"];
    let alarm_condition = &template["Conditions"][alarm["Condition"].as_str().unwrap()];
    assert!(format!("{alarm_condition:?}").contains(condition.as_str().unwrap()));
    assert_eq!(alarm["Properties"]["Threshold"], 3, "three nodes report");
    assert_eq!(
        alarm["Properties"]["ComparisonOperator"],
        "LessThanThreshold"
    );
}

/// The functions' metrics reach the operator: every function writes them to the stack's
/// own namespace, the dashboard (valid JSON once CloudFormation substitutes it) shows
/// held polls, delivery latency, answers, errors by code and broker failures from that
/// namespace beside the broker's and Lambda's own, and the latency alarm reads it.
#[test]
fn the_dashboard_and_latency_alarm_read_the_functions_metrics() {
    use longpoll::metrics::{
        BROKER_FAILURES, DELIVERY_LATENCY, ERRORS, EVENTS_PUBLISHED, POLLS_ANSWERED, POLLS_HELD,
    };
    let template = template();
    let environment = &template["Globals"]["Function"]["Environment"]["Variables"];
    let namespace = &environment["METRICS_NAMESPACE"];

    let alarm = &template["Resources"]["DeliveryLatencyAlarm"]["Properties"];
    assert_eq!(&alarm["Namespace"], namespace);
    assert_eq!(alarm["MetricName"], DELIVERY_LATENCY);
    assert_eq!(alarm["ExtendedStatistic"], "p99");

    // With several brokers, one alarm whose contributors are the failing shards.
    let shard_alarm = &template["Resources"]["ShardFailingAlarm"];
    assert_eq!(shard_alarm["Condition"], "SeveralBrokers");
    let query = &shard_alarm["Properties"]["Metrics"][0]["Expression"];
    let query_text = format!("{query:?}");
    for part in [
        BROKER_FAILURES,
        "shard)",
        "GROUP BY shard",
        "Longpoll/${AWS::StackName}",
    ] {
        assert!(query_text.contains(part), "{part} in {query_text}");
    }

    let dashboard = &template["Resources"]["Dashboard"]["Properties"]["DashboardBody"];
    let Value::Tagged(sub) = dashboard else {
        panic!("the body is a !Sub");
    };
    let [body, variables] = sub.value.as_sequence().unwrap().as_slice() else {
        panic!("!Sub [body, variables]");
    };
    assert_eq!(&variables["Namespace"], namespace);
    // Every ${...} filled with a number, as CloudFormation fills it with names and values.
    let mut filled = String::new();
    let mut rest = body.as_str().unwrap();
    while let Some(start) = rest.find("${") {
        filled.push_str(&rest[..start]);
        filled.push('1');
        rest = &rest[start + rest[start..].find('}').unwrap() + 1..];
    }
    filled.push_str(rest);
    let json: serde_json::Value = serde_json::from_str(&filled).expect("the body is JSON");
    let widgets = json["widgets"].as_array().unwrap();
    let text = body.as_str().unwrap();
    for name in [
        POLLS_HELD,
        DELIVERY_LATENCY,
        POLLS_ANSWERED,
        ERRORS,
        BROKER_FAILURES,
        EVENTS_PUBLISHED,
    ] {
        assert!(text.contains(name), "the dashboard shows {name}");
    }
    for foreign in ["AWS/AmazonMQ", "ConcurrentExecutions", "RabbitMQMemUsed"] {
        assert!(text.contains(foreign), "the dashboard shows {foreign}");
    }
    assert!(widgets.len() >= 8);
}
