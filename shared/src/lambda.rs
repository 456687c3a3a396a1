//! The Lambda side of every `main`: [`serve`] runs a handler on the Lambda Runtime API.

use std::{future::Future, io, sync::Arc};

use lambda_http::{Body, Error, Request, Response, service_fn};
use tracing::debug;

/// Serves `handler`, with `state` shared by every invocation, until the Runtime API goes
/// away or the process is asked to stop. One invocation at a time on standard Lambda
/// (and under `cargo lambda watch`, which sets `AWS_LAMBDA_MAX_CONCURRENCY=1`); as many
/// at once as `AWS_LAMBDA_MAX_CONCURRENCY` on Lambda Managed Instances. (lambda_http's
/// sequential `run` would warn whenever that variable is set, even to 1.)
///
/// The Runtime API hanging up (the environment shutting down, `cargo lambda watch`
/// stopping) ends the process quietly: it is how a function's life normally ends, not a
/// failure. Any other error (a wrong `AWS_LAMBDA_RUNTIME_API`) is returned.
pub async fn serve<T, F, Fut>(state: T, handler: F) -> Result<(), Error>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>, Request) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<Body>, Error>> + Send + 'static,
{
    let state = Arc::new(state);
    let runtime =
        lambda_http::run_concurrent(service_fn(move |request| handler(state.clone(), request)));
    let result = tokio::select! {
        result = runtime => result,
        () = stop_requested() => Ok(()),
    };
    match result {
        Err(error) if hung_up(&*error) => {
            debug!(%error, "the Lambda Runtime API hung up; exiting");
            Ok(())
        }
        result => result,
    }
}

/// Whether `error` is the Runtime API's connection ending mid-request (rather than, say,
/// no Runtime API at that address at all).
fn hung_up(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_closed() || hyper.is_canceled())
        {
            return true;
        }
        if let Some(io) = error.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// SIGTERM (Lambda's shutdown, `cargo lambda watch` stopping) or Ctrl-C.
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
