//! The HTTP edge: how the local server takes connections, so that no client can tie it
//! up for the others.
//!
//! - A client must send a request's headers within [`Limits::header_read_timeout`]
//!   (hyper's timer), and an idle keep-alive connection closes after the same time:
//!   half-sent headers no longer pin a socket and its buffers for good.
//! - At most [`Limits::max_connections`] connections are open at once (kept below the
//!   process's file-descriptor limit); past it, new ones get a `503` with `Retry-After`
//!   and are closed, and one log line says so until the server is below the cap again.
//! - Shutdown stops accepting, lets open requests (held polls) answer, and returns after
//!   [`Limits::shutdown_grace`] whatever the remaining sockets do.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, extract::Request};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tower::ServiceExt;
use tracing::{info, warn};

/// Most time a client gets to send a request's headers (and an idle keep-alive
/// connection stays open).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on open connections (`MAX_CONNECTIONS`), lowered to fit the process's
/// file-descriptor limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// File descriptors kept back from the connection cap for the broker connection, the
/// listener, logs and shed connections.
const RESERVED_DESCRIPTORS: usize = 256;

/// The edge's caps and timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// How long shutdown waits for open connections (held polls) before it returns.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The defaults for a server whose polls hold for `hold`: shutdown waits for held
    /// polls to answer, plus a second for their answers to go out, so that with the
    /// broker connection's close the server is gone within the hold plus 2 s.
    pub fn for_hold(hold: Duration) -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            shutdown_grace: hold + Duration::from_secs(1),
        }
    }

    /// Caps `max_connections` below the file-descriptor limit, raised first to its hard
    /// maximum (as servers do): past the limit, `accept` fails and every client waits.
    pub fn fitted_to_descriptors(mut self) -> Self {
        if let Some(descriptors) = raise_descriptor_limit() {
            let fits = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(1);
            if fits < self.max_connections {
                warn!(
                    requested = self.max_connections,
                    allowed = fits,
                    "the file-descriptor limit lowers the connection cap"
                );
                self.max_connections = fits;
            }
        }
        self
    }
}

/// Raises the soft file-descriptor limit to the hard one; the limit now in force.
#[allow(
    unsafe_code,
    reason = "libc's getrlimit and setrlimit have no safe wrapper here"
)]
fn raise_descriptor_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur).ok()
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then waits
/// for open connections at most `limits.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let shedding = Arc::new(AtomicBool::new(false));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if !shedding.swap(true, Ordering::Relaxed) {
                warn!(
                    max_connections = limits.max_connections,
                    "connection cap reached: new connections get 503 until some close"
                );
            }
            longpoll::metrics::cap_hit(longpoll::metrics::Cap::Connections);
            tokio::spawn(shed(stream));
            continue;
        };
        // An answer is one small write that should leave at once: without this, Nagle's
        // algorithm can hold it until the client acknowledges an earlier segment.
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(|request: Request<Incoming>| request.map(Body::new));
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        let (permits, shedding) = (permits.clone(), shedding.clone());
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
            // Back under the cap with room to spare: the next time it is reached is news.
            if permits.available_permits() * 10 >= limits.max_connections
                && shedding.swap(false, Ordering::Relaxed)
            {
                info!("below the connection cap again");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            warn!(
                open = limits.max_connections - permits.available_permits(),
                "shutdown grace over: closing the connections still open"
            );
        }
    }
}

/// Answers a connection over the cap with a 503 and closes it, without reading it.
async fn shed(mut stream: TcpStream) {
    const RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Type: application/json\r\nContent-Length: 78\r\nConnection: close\r\n\r\n{\"error\":\"too_many_connections\",\"message\":\"the server is full; retry in 2 s\"}\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(RESPONSE).await?;
        stream.shutdown().await
    })
    .await;
}
