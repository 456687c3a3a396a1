use lambda_http::Error;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    longpoll::telemetry::init();
    let publisher = publish_event::Publisher::load().await?;
    longpoll::lambda::serve(publisher, |publisher, request| async move {
        publish_event::handle(&publisher, request).await
    })
    .await
}
