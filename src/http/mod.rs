//! The HTTP server: hyper's http1 connection builder, a connection cap, header timeouts and
//! a graceful shutdown that lets in-flight requests finish.
//!
//! Request handling itself is in [`dispatch`]; routing in [`route`]; handlers in [`api`].

pub mod api;
pub mod auth;
pub mod body;
pub mod dispatch;
pub mod error;
pub mod metrics;
pub mod route;
pub mod services;
pub mod ui;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::http::services::Services;

/// Largest request head (request line plus headers) accepted; beyond it, 431. (hyper's
/// default of at most 100 header fields also applies, 431 beyond.)
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// How long shutdown waits for in-flight requests.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Serve HTTP on `listener` until `shutdown` is cancelled, then drain.
pub async fn serve(app: Arc<Services>, listener: TcpListener, shutdown: CancellationToken) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.settings.header_timeout)
        // max_buf_size alone does not bound headers: hyper checks it only while headers are
        // incomplete, and its read buffer can grow to ~2x the limit in one go, so a 100 KiB
        // header arriving fast was accepted. max_header_size is checked on the complete
        // head too (431 and close).
        .max_buf_size(64 * 1024)
        .max_header_size(MAX_HEADER_BYTES);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(app.settings.max_connections));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP server listening");
    }
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(dispatch::handle(app, req, peer).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("HTTP server drained"),
        () = tokio::time::sleep(DRAIN_DEADLINE) => tracing::warn!("HTTP connections still open after {DRAIN_DEADLINE:?}; closing"),
    }
}
