//! The Lambda side of every `main`: [`serve`] runs a handler on the Lambda Runtime API,
//! and flushes the metrics it recorded through [`emf`], CloudWatch's embedded metric
//! format.

pub mod emf;

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use lambda_http::{
    Adapter, Body, Error, Request, Response, http,
    lambda_runtime::{LambdaInvocation, Runtime, layers::TracingLayer},
    service_fn,
    tower::{Service, ServiceBuilder, layer::layer_fn},
};
use lambda_runtime_api_client::{PooledClient, body::Body as ApiBody};
use tokio::sync::Notify;
use tracing::{debug, warn};

use self::emf::{Emf, MANAGED_FLUSH_INTERVAL};
use crate::{cors, drain};

/// How long a stopping process waits for its invocations to answer once their holds
/// ended. Lambda gives a runtime 500 ms after SIGTERM (300 ms beside external
/// extensions) before SIGKILL; a drained poll answers in milliseconds.
pub const DRAIN_GRACE: Duration = Duration::from_millis(300);

/// Serves `handler`, with `state` shared by every invocation, until the Runtime API goes
/// away or the process is asked to stop. One invocation at a time on standard Lambda
/// (and under `cargo lambda watch`, which sets `AWS_LAMBDA_MAX_CONCURRENCY=1`); as many
/// at once as `AWS_LAMBDA_MAX_CONCURRENCY` on Lambda Managed Instances. (lambda_http's
/// sequential `run` would warn whenever that variable is set, even to 1.)
///
/// Asked to stop (SIGTERM), it drains ([`drain`]): every held poll answers at once with
/// what it has, and the process exits once every invocation's answer is posted, or after
/// [`DRAIN_GRACE`]. The broker connection then closes with the process; the broker gives
/// back whatever a poll had not acked. Lambda sends that SIGTERM only to a function with
/// an extension, so it first registers one ([`register_for_shutdown`]).
///
/// Metrics ([`Emf`]) go to CloudWatch through the log: written after each invocation on
/// standard Lambda (an environment may be frozen, then never thawed, once it answered),
/// every [`MANAGED_FLUSH_INTERVAL`] when serving many invocations at
/// once, and once more on the way out.
///
/// The Runtime API hanging up (the environment shutting down, `cargo lambda watch`
/// stopping) ends the process quietly: it is how a function's life normally ends, not a
/// failure. So does a Runtime API that served this process and then refuses the next
/// connection (watch stopped between two invocations), and, off Lambda, one that refuses
/// the first: `cargo lambda watch` (1.9) may start an instance as it stops, which then
/// finds nobody there. On Lambda, any other error (a wrong `AWS_LAMBDA_RUNTIME_API`,
/// refused from the start) is returned.
pub async fn serve<T, F, Fut>(state: T, handler: F) -> Result<(), Error>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>, Request) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<Body>, Error>> + Send + 'static,
{
    register_for_shutdown().await;
    let metrics = Emf::install().map(Arc::new);
    let concurrent = std::env::var("AWS_LAMBDA_MAX_CONCURRENCY")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .is_some_and(|max| max > 1);
    let flush_each = metrics.clone().filter(|_| !concurrent);
    if let Some(metrics) = metrics.clone().filter(|_| concurrent) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(MANAGED_FLUSH_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                metrics.flush();
            }
        });
    }
    let state = Arc::new(state);
    let in_flight = Arc::new(InFlight::default());
    let counted = in_flight.clone();
    // lambda_http's `run_concurrent`, plus a count of the invocations whose answer is
    // not posted yet (the outermost layer wraps the post to the Runtime API).
    // CORS here only where the front door does none (`CORS_ORIGINS`, set with an ALB).
    let service = ServiceBuilder::new()
        .option_layer(cors::from_env())
        .service(service_fn(move |request| {
            let answer = handler(state.clone(), request);
            let flush = flush_each.clone();
            async move {
                let answer = answer.await;
                if let Some(metrics) = flush {
                    metrics.flush();
                }
                answer
            }
        }));
    let runtime = Runtime::new(Adapter::from(service))
        .layer(TracingLayer::new())
        .layer(layer_fn(move |inner| Counted {
            inner,
            in_flight: counted.clone(),
        }))
        .run_concurrent();
    tokio::pin!(runtime);
    let result = tokio::select! {
        result = &mut runtime => result,
        () = stop_requested() => {
            drain::PROCESS.begin();
            // The runtime keeps running meanwhile: on standard Lambda it is what
            // answers the invocation in flight.
            tokio::select! {
                result = &mut runtime => result,
                answered = tokio::time::timeout(DRAIN_GRACE, in_flight.idle()) => {
                    if answered.is_err() {
                        warn!(unanswered = in_flight.count(), "stopping before every invocation answered");
                    }
                    Ok(())
                }
            }
        }
    };
    if let Some(metrics) = &metrics {
        metrics.flush();
    }
    // Lambda itself sets INITIALIZATION_TYPE; an emulator that refuses has stopped.
    let reached = in_flight.served() || std::env::var_os(INITIALIZATION_TYPE).is_none();
    match result {
        Err(error) if hung_up(&*error, reached) => {
            debug!(%error, "the Lambda Runtime API hung up; exiting");
            Ok(())
        }
        result => result,
    }
}

/// The name of the extension [`register_for_shutdown`] registers.
pub const SHUTDOWN_EXTENSION: &str = "longpoll-drain";

/// Set by Lambda in every execution environment (`on-demand`, `provisioned-concurrency`,
/// `snap-start`, `lambda-managed-instances`); a Runtime API harness sets it to stand in
/// for Lambda.
pub const INITIALIZATION_TYPE: &str = "AWS_LAMBDA_INITIALIZATION_TYPE";

/// Registers an internal extension that asks for no events: Lambda sends the runtime
/// SIGTERM before it shuts an execution environment down only when the function has an
/// extension (what lambda_runtime's `graceful-shutdown` feature does, without the
/// `process::exit` that would cut our drain). Registering belongs to the Init phase,
/// before the runtime's first `next`. A Runtime API without the Extensions API refuses
/// it: the function then runs as it would without, and is told of nothing before it is
/// stopped.
///
/// Only Lambda itself is asked: it sets [`INITIALIZATION_TYPE`] in every execution
/// environment, emulators do not. `cargo lambda watch` (1.9) accepts the registration
/// but answers the extension's `next` with a 500 that it logs as an `ERROR`, once per
/// instance, and never sends an extension a shutdown anyway.
async fn register_for_shutdown() {
    if std::env::var_os(INITIALIZATION_TYPE).is_none() {
        debug!("not on Lambda ({INITIALIZATION_TYPE} unset): no shutdown extension");
        return;
    }
    let client = PooledClient::builder().build();
    let register = http::Request::post("/2020-01-01/extension/register")
        .header("Lambda-Extension-Name", SHUTDOWN_EXTENSION)
        .body(ApiBody::from(r#"{"events":[]}"#))
        .expect("a valid request");
    let id = match client.call(register).await {
        Ok(reply) if reply.status().is_success() => {
            reply.headers().get("Lambda-Extension-Identifier").cloned()
        }
        Ok(reply) => {
            debug!(status = %reply.status(), "no Extensions API; no SIGTERM before a shutdown");
            None
        }
        Err(error) => {
            debug!(%error, "no Extensions API; no SIGTERM before a shutdown");
            None
        }
    };
    let Some(id) = id else { return };
    // An extension's `next` is how it says it is ready; asking for no events, it is
    // never answered before the shutdown.
    tokio::spawn(async move {
        let next = http::Request::get("/2020-01-01/extension/event/next")
            .header("Lambda-Extension-Identifier", id)
            .body(ApiBody::empty())
            .expect("a valid request");
        let _ = client.call(next).await;
    });
}

/// The invocations under way: received, their answer not yet posted.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
    /// Whether any invocation has come: the Runtime API was there.
    served: AtomicBool,
}

impl InFlight {
    fn served(&self) -> bool {
        self.served.load(Ordering::SeqCst)
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once none is under way.
    async fn idle(&self) {
        loop {
            let woken = self.idle.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            woken.await;
        }
    }
}

/// One invocation under way, until dropped.
struct Underway(Arc<InFlight>);

impl Drop for Underway {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The runtime's service, counting its invocations in [`InFlight`].
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    in_flight: Arc<InFlight>,
}

impl<S> Service<LambdaInvocation> for Counted<S>
where
    S: Service<LambdaInvocation>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, invocation: LambdaInvocation) -> Self::Future {
        self.in_flight.served.store(true, Ordering::SeqCst);
        self.in_flight.count.fetch_add(1, Ordering::SeqCst);
        let underway = Underway(self.in_flight.clone());
        let answer = self.inner.call(invocation);
        Box::pin(async move {
            let answer = answer.await;
            drop(underway);
            answer
        })
    }
}

/// Whether `error` is the Runtime API going away: its connection ending mid-request, or,
/// once it has `served` this process (or is known to have been there), refusing a new
/// one (rather than, say, no Runtime API at that address at all).
fn hung_up(error: &(dyn std::error::Error + 'static), served: bool) -> bool {
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
        if served
            && let Some(io) = error.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::ConnectionRefused
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A Runtime API that refuses the connection: gone if it served this process, a
    /// misconfiguration if it never did.
    #[tokio::test]
    async fn a_refused_runtime_api_has_gone_only_once_it_served() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let client = PooledClient::builder()
            .with_endpoint(format!("http://{address}").parse().unwrap())
            .build();
        let next = http::Request::get("/2018-06-01/runtime/invocation/next")
            .body(ApiBody::empty())
            .unwrap();
        let error = client.call(next).await.expect_err("nothing listens there");
        assert!(hung_up(&*error, true), "{error:?}");
        assert!(!hung_up(&*error, false), "{error:?}");
    }
}
