//! The simulators' own tokio runtime: a few worker threads, shared by every simulated
//! device and SUTAgent in the process, whatever their number (a rack of 10,000 devices
//! costs tasks, not threads).
//!
//! Why not the caller's runtime: tests build racks inside `#[tokio::test]`'s
//! current-thread runtime and then wait on them synchronously (`SimDevice::wait_for`,
//! the `fastboot` stand-in's blocking control requests), which would starve simulators
//! living on that same thread. Like real hardware, the simulators keep running on their
//! own, apart from the code under test.

use std::io;
use std::sync::OnceLock;

/// Worker threads of the simulators' runtime: enough for two cores, and fixed, so the
/// thread count does not grow with the rack.
const WORKERS: usize = 2;

/// A handle to the simulators' runtime, built on first use and kept for the process's
/// life.
///
/// # Errors
/// When the runtime cannot be built (no threads or no epoll left).
pub(crate) fn handle() -> io::Result<tokio::runtime::Handle> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKERS)
                .thread_name("sim-rt")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map(|rt| rt.handle().clone())
        .map_err(|e| io::Error::other(format!("cannot start the simulators' runtime: {e}")))
}

/// Register a std listener with the simulators' runtime.
///
/// # Errors
/// As [`handle`], or when the socket cannot be registered.
pub(crate) fn listener(l: std::net::TcpListener) -> io::Result<tokio::net::TcpListener> {
    let rt = handle()?;
    let _guard = rt.enter();
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}
