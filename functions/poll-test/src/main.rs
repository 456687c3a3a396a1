use lambda_http::Error;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    longpoll::telemetry::init();
    longpoll::lambda::serve((), |_, request| poll_test::handle(request)).await
}
