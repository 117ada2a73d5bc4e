//! The HTTP server: hyper's http1 connection builder, fair connection caps ([`limits`]),
//! header timeouts and a graceful shutdown that lets in-flight requests finish.
//!
//! Request handling itself is in [`dispatch`]; routing in [`route`]; handlers in [`api`].

pub mod api;
pub mod auth;
pub mod body;
pub mod browser;
pub mod dispatch;
pub mod error;
pub mod forward;
pub mod limits;
pub mod metrics;
pub mod route;
pub mod services;
pub mod session;
pub mod ui;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::services::Services;

/// Largest request head (request line plus headers) accepted; beyond it, 431. (hyper's
/// default of at most 100 header fields also applies, 431 beyond.)
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// How long shutdown waits for in-flight requests.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Serve HTTP on `listener` until `shutdown` is cancelled, then drain.
///
/// Every connection holds a slot of `server.max_connections` (past it, clients wait in the
/// kernel's backlog); [`limits::Limits::admit`] decides whether it is a general one or on
/// probation (reserve, or over its address's quota), where only privileged calls are served
/// and the header deadline is short.
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
    let mut probation = builder.clone();
    probation.header_read_timeout(
        app.settings
            .header_timeout
            .min(limits::PROBATION_HEADER_TIMEOUT),
    );
    let graceful = GracefulShutdown::new();
    let limits = Arc::clone(&app.limits);
    if let Ok(addr) = listener.local_addr() {
        let l = limits.settings();
        tracing::info!(%addr, max_connections = l.max_connections, reserved = l.reserved_connections,
            per_client = l.max_connections_per_client, "HTTP server listening");
        tracing::info!(names = %app.settings.names.describe(), "HTTP requests must name this service in Host (server.host_aliases adds names)");
    }
    loop {
        let slot = tokio::select! {
            p = limits.slot() => match p { Ok(p) => p, Err(_) => break },
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
        let conn = Arc::new(limits.admit(peer, slot));
        if conn.admission != limits::Admission::General {
            tracing::debug!(%peer, admission = ?conn.admission, "connection on probation");
        }
        let on = if conn.admission == limits::Admission::General {
            &builder
        } else {
            &probation
        };
        let app = app.clone();
        let held = Arc::clone(&conn);
        let service = service_fn(move |req| {
            let app = app.clone();
            let conn = Arc::clone(&held);
            async move { Ok::<_, Infallible>(dispatch::handle(app, req, conn).await) }
        });
        let c = graceful.watch(on.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = c.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            // The slots go back when the last reference (this one, once hyper has dropped
            // the service) goes.
            drop(conn);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("HTTP server drained"),
        () = tokio::time::sleep(DRAIN_DEADLINE) => tracing::warn!("HTTP connections still open after {DRAIN_DEADLINE:?}; closing"),
    }
}
