//! Operator logs through `tracing`: to stderr for humans, or without timestamps and colours
//! under systemd (`JOURNAL_STREAM` set), where journald adds its own timestamps and the unit
//! name; stderr lines become journal entries as they are.
//!
//! The level comes from the config's `[log] level`; `RUST_LOG` (set in `/etc/default/mozpool`
//! on the appliance) overrides it when set and valid.

use tracing_subscriber::EnvFilter;

/// The filter directives in effect: `RUST_LOG` when set and valid, else the config's level,
/// else `info`. Returned as text so it can be logged and tested.
#[must_use]
pub fn directives(config_level: &str, rust_log: Option<&str>) -> String {
    let valid = |d: &str| !d.trim().is_empty() && EnvFilter::try_new(d).is_ok();
    match rust_log {
        Some(env) if valid(env) => env.to_owned(),
        _ if valid(config_level) => config_level.to_owned(),
        _ => "info".to_owned(),
    }
}

/// Install the global subscriber. `level` is the config's `log.level`; `RUST_LOG` wins.
pub fn init(level: &str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let chosen = directives(level, rust_log.as_deref());
    let filter = EnvFilter::try_new(&chosen).unwrap_or_else(|_| EnvFilter::new("info"));
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
    if chosen != level {
        tracing::debug!(config = level, effective = %chosen, "log level from RUST_LOG or default");
    }
}

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn rust_log_wins_config_otherwise() {
        assert_eq!(directives("warn", None), "warn");
        assert_eq!(directives("warn", Some("debug")), "debug");
        assert_eq!(
            directives("warn", Some("mozpool=trace,info")),
            "mozpool=trace,info"
        );
        assert_eq!(directives("warn", Some("")), "warn");
        assert_eq!(directives("nonsense=level=x", None), "info");
    }
}
