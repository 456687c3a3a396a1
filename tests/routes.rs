//! One route table, three mirrors: `longpoll::routes::ROUTES` is what the local server
//! mounts; the `cargo lambda watch` router in the root `Cargo.toml` and the API Gateway
//! routes in `template.yaml` must say the same, path for path, function for function.

use std::collections::BTreeMap;

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

#[test]
fn the_watch_router_mirrors_the_route_table() {
    let watch = cargo_metadata();
    let router: BTreeMap<String, String> = watch["router"]
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
        .collect();
    assert_eq!(router, expected());
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
