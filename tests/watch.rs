//! The functions under `cargo lambda watch`, on the contract's paths (the router in the
//! root `Cargo.toml`), against the real broker: the same end-to-end scenario the local
//! server passes.
//!
//! Needs `cargo lambda` (`pip install cargo-lambda`; `scripts/test` installs it).

use longpoll::config::{DEV_JWT_SECRET, DEV_PUBLISH_KEY};
use longpoll_testkit::{
    scenario::{self, Target},
    watch::{self, Watch},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_functions_answer_on_their_routes_under_cargo_lambda_watch() {
    let watch = Watch::start(
        &[],
        &[
            "poll/events/",
            "poll/disconnect/",
            "events/",
            "poll/online/",
        ],
    )
    .await;
    // The router's `env` in Cargo.toml sets the development secret and key.
    scenario::run(&Target {
        base: &watch.base,
        jwt_secret: DEV_JWT_SECRET,
        publish_key: DEV_PUBLISH_KEY,
    })
    .await;
    // A normal start, use and stop logs no warning and no error.
    let log = watch.stop();
    let complaints = watch::complaints(&log);
    assert!(complaints.is_empty(), "{}", complaints.join("\n"));
}
