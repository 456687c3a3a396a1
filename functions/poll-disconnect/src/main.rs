use lambda_http::{Error, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    longpoll::telemetry::init();
    let app = longpoll::App::load("poll-disconnect").await?;
    run(service_fn(|request| poll_disconnect::handle(&app, request))).await
}
