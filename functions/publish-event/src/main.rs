use lambda_http::{Error, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    longpoll::telemetry::init();
    let publisher = publish_event::Publisher::load().await?;
    run(service_fn(|request| {
        publish_event::handle(&publisher, request)
    }))
    .await
}
