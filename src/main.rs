//! The `mozpool` binary: parse the command line and hand off to the library.

/// mimalloc instead of glibc's malloc: the store's writer thread, the one serial stage,
/// allocates and frees page buffers, records and log lines for every write, and glibc's
/// allocator was a large share of its time (docs/performance.md, "Cycles per second"). The systemd
/// unit sets `MIMALLOC_PURGE_DELAY=0` so freed pages go back to the system at once. Built with
/// `no_thp` (Cargo.toml): the first touch of a transparent huge page stalls the writer while
/// the kernel zeroes it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Hidden hook for the simulated rack: `mozpool sim-fastboot --rack DIR ARGS...` is the
    // fastboot stand-in that the real `hw::Flasher` runs by path (via a wrapper script). It
    // takes fastboot's own arguments, so it is dispatched before clap sees them.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("sim-fastboot") {
        let code = mozpool::hw::sim::sim_fastboot_main(args.get(2..).unwrap_or_default().to_vec());
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = mozpool::cli::Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads() {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mozpool: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(mozpool::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let code = e.downcast_ref::<mozpool::cli::Exit>().map_or(1, |x| x.code);
            eprintln!("mozpool: {e:#}");
            std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

/// Async worker threads: one fewer than the cores, at least one, unless the operator set
/// `TOKIO_WORKER_THREADS` (then `None`: tokio reads it itself). Under load the store's
/// writer thread is the serial bottleneck, and with as many workers as cores it queued for
/// a CPU behind them (docs/performance.md, "Cycles per second"). Long reads run on the blocking
/// pool, which this does not limit.
fn worker_threads() -> Option<usize> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Some(cores.saturating_sub(1).max(1))
}
