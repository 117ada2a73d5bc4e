//! Operator logs through `tracing`: to stderr for humans, or without timestamps and colours
//! under systemd (`JOURNAL_STREAM` set), where journald adds its own timestamps.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `level` is the config's `log.level`; `RUST_LOG` wins.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder
            .without_time()
            .with_ansi(false)
            .with_target(false)
            .try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) is harmless.
    drop(result);
}
