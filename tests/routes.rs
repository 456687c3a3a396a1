//! One route table, three mirrors: `longpoll::routes::ROUTES` is what the local server
//! mounts; the `cargo lambda watch` router in the root `Cargo.toml` and the API Gateway
//! routes in `template.yaml` must say the same, path for path, function for function.

use std::collections::BTreeMap;

use serde_norway::Value;

use longpoll::{
    config::{DEV_JWT_SECRET, DEV_PUBLISH_KEY},
    routes::ROUTES,
};

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn expected() -> BTreeMap<String, String> {
    ROUTES
        .iter()
        .map(|route| (route.path.to_owned(), route.function.to_owned()))
        .collect()
}

fn cargo_metadata() -> toml::Table {
    let text = std::fs::read_to_string(format!("{WORKSPACE}/Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    manifest["workspace"]["metadata"]["lambda"]["watch"]
        .as_table()
        .unwrap()
        .clone()
}

fn watch_router() -> BTreeMap<String, String> {
    cargo_metadata()["router"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(path, function)| {
            (
                path.clone(),
                function
                    .as_str()
                    .expect("one function for every method")
                    .to_owned(),
            )
        })
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
        for (_, event) in resource["Properties"]["Events"].as_mapping().unwrap() {
            assert_eq!(event["Type"], "HttpApi");
            let properties = &event["Properties"];
            // Every method reaches the function, which answers 405 with `Allow`.
            assert_eq!(properties["Method"], "ANY");
            assert_eq!(properties["PayloadFormatVersion"], "2.0");
            let path = properties["Path"].as_str().unwrap().to_owned();
            assert!(routes.insert(path, binary.to_owned()).is_none());
        }
    }
    routes
}

/// The one check that the three mirrors agree: what the local server mounts
/// (`ROUTES`), what `cargo lambda watch` routes, and what API Gateway routes.
#[test]
fn the_route_table_the_watch_router_and_the_template_agree() {
    let template = template();
    assert_eq!(watch_router(), expected(), "Cargo.toml watch router");
    assert_eq!(template_routes(&template), expected(), "template.yaml");
}

/// What keeps a 5.5 s hold whole on AWS: the integration waits longer than the function
/// may run, and the function may run longer than the hold.
#[test]
fn the_template_leaves_room_for_the_hold() {
    let template = template();
    let hold_ms = longpoll::config::DEFAULT_POLL_TIMEOUT.as_millis() as u64;
    let globals = &template["Globals"]["Function"];
    assert_eq!(globals["Runtime"], "provided.al2023");
    assert_eq!(globals["Architectures"][0], "arm64");
    assert_eq!(globals["Handler"], "bootstrap");
    let function = &template["Resources"]["PollEventsFunction"]["Properties"];
    let timeout_s = function["Timeout"]
        .as_u64()
        .or(globals["Timeout"].as_u64())
        .unwrap();
    assert!(
        timeout_s * 1000 > hold_ms && timeout_s <= 10,
        "Timeout {timeout_s} s"
    );
    assert_eq!(
        globals["MemorySize"], 128,
        "the poll function fits in 128 MB"
    );
    let integration_ms = function["Events"]["Poll"]["Properties"]["TimeoutInMillis"]
        .as_u64()
        .unwrap();
    assert!(
        integration_ms > timeout_s * 1000,
        "integration {integration_ms} ms"
    );

    // The publish route is authorised by IAM and the function trusts it.
    let publish = &template["Resources"]["PublishEventFunction"]["Properties"];
    assert_eq!(
        publish["Events"]["Publish"]["Properties"]["Auth"]["Authorizer"],
        "AWS_IAM"
    );
    assert_eq!(
        publish["Environment"]["Variables"]["PUBLISH_TRUST_IAM"],
        "true"
    );
}

#[test]
fn the_watch_router_serves_the_local_development_settings() {
    let watch = cargo_metadata();
    // Every function named is a binary of the workspace.
    for route in ROUTES {
        let manifest = format!("{WORKSPACE}/functions/{}/Cargo.toml", route.function);
        let text = std::fs::read_to_string(&manifest).unwrap_or_else(|_| panic!("{manifest}"));
        assert!(text.contains(&format!("name = \"{}\"", route.function)));
    }
    // Held polls do not queue behind each other, and the secrets are the local ones.
    assert!(watch["concurrency"].as_integer().unwrap() > 1);
    assert_eq!(watch["env"]["JWT_SECRET"].as_str(), Some(DEV_JWT_SECRET));
    assert_eq!(
        watch["env"]["PUBLISH_API_KEY"].as_str(),
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
    let expected: BTreeMap<String, Vec<String>> = ROUTES
        .iter()
        .map(|route| (route.path.to_owned(), vec![route.method.to_owned()]))
        .collect();
    assert_eq!(documented, expected);
}
