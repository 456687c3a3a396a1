use lambda_http::Error;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    longpoll::telemetry::init();
    let app = longpoll::App::load("poll-events").await?;
    longpoll::lambda::serve(app, |app, request| async move {
        poll_events::handle(&app, request).await
    })
    .await
}
