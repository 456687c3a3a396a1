use lambda_http::{Error, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    longpoll::telemetry::init();
    run(service_fn(poll_test::handle)).await
}
