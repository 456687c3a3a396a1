//! Handlers under test: tokens the test app accepts, the publish handler, and an
//! [`App`] with the broker beside it.

use std::{sync::Arc, time::Duration};

use longpoll::{
    App, Broker, Config,
    token::TokenIssuer,
    topology::{CollegeId, UserId},
};

use crate::JWT_SECRET;

pub fn token(user: UserId, college: Option<CollegeId>) -> String {
    TokenIssuer::new(JWT_SECRET.as_bytes()).mint(
        user,
        college,
        Some("Tester"),
        Duration::from_secs(600),
    )
}

/// The publish key the tests configure.
pub const PUBLISH_KEY: &str = "integration-test-publish-key";

/// A publish handler on `broker` that accepts [`PUBLISH_KEY`].
pub fn publisher(config: &Config, broker: Arc<dyn Broker>) -> publish_event::Publisher {
    let mut config = config.clone();
    config.publish_api_key = Some(PUBLISH_KEY.to_owned());
    publish_event::Publisher::new(&config, broker).expect("a publish key is set")
}

/// An app on `broker` whose polls hold for `hold`, with the broker beside it for the
/// test's own publishing and declaring.
pub fn app(config: Config, broker: Arc<dyn Broker>, hold: Duration) -> TestApp {
    let mut config = config;
    config.poll_timeout = hold;
    let app = App::new(config, broker.clone()).expect("the test config has a JWT secret");
    TestApp { app, broker }
}

/// An [`App`] (it derefs to one) and the whole broker under it.
#[derive(Clone)]
pub struct TestApp {
    pub app: App,
    pub broker: Arc<dyn Broker>,
}

impl std::ops::Deref for TestApp {
    type Target = App;

    fn deref(&self) -> &App {
        &self.app
    }
}

impl std::ops::DerefMut for TestApp {
    fn deref_mut(&mut self) -> &mut App {
        &mut self.app
    }
}
