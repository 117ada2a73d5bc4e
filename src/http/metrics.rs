//! `/metrics`: the service's numbers in the Prometheus text format (version 0.0.4).
//!
//! Two kinds of numbers:
//! - **Recorded** as things happen, into atomics held by [`Metrics`]: API latency (recorded
//!   by `http::dispatch::handle`), hardware operations ([`HwMetrics::record`], called by the
//!   hardware layer) and store commits (the store's own `StoreStats`).
//! - **Computed at scrape time** from one read snapshot of the store: devices per state,
//!   requests per state, the durable log's size. Nothing is cached, so nothing can drift.
//!
//! No metrics crate: a handful of counters and fixed-bucket histograms (`domain::histogram`) is all
//! the appliance needs. Recording never allocates (except the first time a hardware operation
//! kind is seen); rendering builds one `String`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::domain::histogram::{FAST_BUCKETS, Histogram};
use crate::hw::metrics::HwMetrics;
use crate::inventory::registration::trust::{Refused, RegistrationMetrics};
use crate::lifeguard::DeviceState;
use crate::storage::{Fault, Snapshot, Store, StoreError};

/// Everything recorded as it happens. One per service, shared by `Arc` (held by `App`).
#[derive(Debug)]
pub struct Metrics {
    /// API call latency, whole pipeline (route, body, handler, error mapping).
    api_latency: Histogram,
    /// API responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    api_status: [AtomicU64; 5],
    /// Hardware operations, recorded by the hardware layer.
    pub hw: std::sync::Arc<HwMetrics>,
    /// Registrations accepted and refused, recorded by the registration gate.
    pub registration: std::sync::Arc<RegistrationMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            api_latency: Histogram::new(FAST_BUCKETS),
            api_status: Default::default(),
            hw: std::sync::Arc::default(),
            registration: std::sync::Arc::default(),
        }
    }
}

impl Metrics {
    /// Record one API call.
    pub fn record_api(&self, status: u16, elapsed: Duration) {
        self.api_latency.observe(elapsed);
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        if let Some(c) = self.api_status.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Numbers read from one store snapshot at scrape time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreCounts {
    /// Non-retired devices per Lifeguard state name; every known state is present (0 when
    /// empty), plus any unknown name found in the store.
    pub devices: BTreeMap<String, u64>,
    /// Open requests per state (see [`requests_per_state`]).
    pub requests: Option<BTreeMap<String, u64>>,
    /// Requests stored, open or not.
    pub requests_stored: u64,
    /// Records in the durable log.
    pub log_records: u64,
}

/// Count devices per state and the log, in one read snapshot.
///
/// # Errors
/// Storage failure or a corrupt record.
pub fn store_counts(snap: &Snapshot) -> Result<StoreCounts, StoreError> {
    let mut devices: BTreeMap<String, u64> = DeviceState::ALL
        .iter()
        .map(|s| (s.name().to_owned(), 0))
        .collect();
    snap.for_each_device(|d| {
        if !d.retired {
            // Every state has its key already (above), so counting allocates nothing.
            if let Some(n) = devices.get_mut(d.state.name()) {
                *n += 1;
            }
        }
        Ok(())
    })?;
    Ok(StoreCounts {
        devices,
        requests: requests_per_state(snap)?,
        requests_stored: snap.request_count()?,
        log_records: snap.log_count()?,
    })
}

/// Open requests per state for `mozpool_requests`: every open (non-terminal) state of
/// `domain::request_state::ALL_STATES` is listed, 0 when empty. Only open requests are counted (read
/// through the `open_requests` index), so a scrape costs the same after years of history;
/// closed and failed requests are history, counted by `mozpool_requests_stored`.
///
/// # Errors
/// Storage failure or a corrupt record.
pub fn requests_per_state(snap: &Snapshot) -> Result<Option<BTreeMap<String, u64>>, StoreError> {
    let mut out: BTreeMap<String, u64> = crate::domain::request_state::ALL_STATES
        .iter()
        .filter(|s| s.is_open())
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for r in snap.requests(true)? {
        *out.entry(r.snap.state.as_str().to_owned()).or_insert(0) += 1;
    }
    Ok(Some(out))
}

/// Escape a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Render the whole `/metrics` page. When the store cannot be read (it is reopening after a
/// full disk), the families counted from it are left out and `mozpool_store_readable` is 0:
/// the store's own gauges are what the operator needs to see then.
pub async fn render(
    metrics: &Metrics,
    store: &Store,
    started_unix_ms: u64,
    status_long_polls: usize,
) -> String {
    let counts = store.read(store_counts).await;
    if let Err(e) = &counts {
        tracing::warn!(error = %e, "/metrics: cannot read the store; leaving out its counts");
    }
    let file_bytes = std::fs::metadata(store.path()).map_or(0, |m| m.len());
    let mut out = String::with_capacity(8 * 1024);
    let o = &mut out;

    family(
        o,
        "mozpool_build_info",
        "gauge",
        "Version of the running service.",
    );
    let _ = writeln!(
        o,
        "mozpool_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        o,
        "mozpool_start_time_seconds",
        "gauge",
        "When the service started (Unix time).",
    );
    sample(
        o,
        "mozpool_start_time_seconds",
        started_unix_ms as f64 / 1000.0,
    );

    if let Ok(counts) = &counts {
        render_counts(o, counts);
    }

    family(
        o,
        "mozpool_api_request_duration_seconds",
        "histogram",
        "API call latency.",
    );
    metrics
        .api_latency
        .render(o, "mozpool_api_request_duration_seconds", "");
    family(
        o,
        "mozpool_api_responses_total",
        "counter",
        "API responses by status class.",
    );
    for (i, c) in metrics.api_status.iter().enumerate() {
        let _ = writeln!(
            o,
            "mozpool_api_responses_total{{code=\"{}xx\"}} {}",
            i + 1,
            c.load(Ordering::Relaxed)
        );
    }

    let hw = metrics.hw.snapshot();
    family(
        o,
        "mozpool_hw_operations_total",
        "counter",
        "Finished hardware operations by kind and outcome.",
    );
    for (kind, k) in &hw {
        let kind = label(kind);
        let _ = writeln!(
            o,
            "mozpool_hw_operations_total{{kind=\"{kind}\",result=\"ok\"}} {}",
            k.ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "mozpool_hw_operations_total{{kind=\"{kind}\",result=\"failed\"}} {}",
            k.failed.load(Ordering::Relaxed)
        );
    }
    family(
        o,
        "mozpool_hw_operation_duration_seconds",
        "histogram",
        "Hardware operation latency by kind.",
    );
    for (kind, k) in &hw {
        k.latency.render(
            o,
            "mozpool_hw_operation_duration_seconds",
            &format!("kind=\"{}\"", label(kind)),
        );
    }

    let reg = &metrics.registration;
    family(
        o,
        "mozpool_registrations_total",
        "counter",
        "Device registrations applied.",
    );
    sample(
        o,
        "mozpool_registrations_total",
        reg.accepted.load(Ordering::Relaxed),
    );
    family(
        o,
        "mozpool_registrations_refused_total",
        "counter",
        "Registration connections and messages refused, by reason.",
    );
    for kind in Refused::ALL {
        let _ = writeln!(
            o,
            "mozpool_registrations_refused_total{{reason=\"{}\"}} {}",
            kind.label(),
            reg.refused_count(kind)
        );
    }
    family(
        o,
        "mozpool_registrations_refused_unlogged_total",
        "counter",
        "Refused registrations only counted, over the log rate.",
    );
    sample(
        o,
        "mozpool_registrations_refused_unlogged_total",
        reg.unlogged.load(Ordering::Relaxed),
    );

    let stats = store.stats();
    family(
        o,
        "mozpool_store_commit_duration_seconds",
        "histogram",
        "Store commit latency (one batch: writes plus fsync).",
    );
    stats
        .commit_latency
        .render(o, "mozpool_store_commit_duration_seconds", "");
    family(
        o,
        "mozpool_store_commits_total",
        "counter",
        "Successful store commits.",
    );
    sample(
        o,
        "mozpool_store_commits_total",
        stats.commits.load(Ordering::Relaxed),
    );
    family(
        o,
        "mozpool_store_writes_total",
        "counter",
        "Writes committed (several per commit under load).",
    );
    sample(
        o,
        "mozpool_store_writes_total",
        stats.writes.load(Ordering::Relaxed),
    );
    family(
        o,
        "mozpool_log_records_total",
        "counter",
        "Log entries committed (state transitions, API calls, registrations, ...).",
    );
    sample(
        o,
        "mozpool_log_records_total",
        stats.log_records.load(Ordering::Relaxed),
    );
    family(
        o,
        "mozpool_store_commit_failures_total",
        "counter",
        "Failed store commits.",
    );
    sample(
        o,
        "mozpool_store_commit_failures_total",
        stats.failures.load(Ordering::Relaxed),
    );
    family(
        o,
        "mozpool_store_healthy",
        "gauge",
        "1 when the last commit succeeded.",
    );
    sample(o, "mozpool_store_healthy", u8::from(store.healthy()));
    let outage = store.outage();
    family(
        o,
        "mozpool_store_writable",
        "gauge",
        "1 when the store takes writes; 0 while it refuses them until it has reopened itself.",
    );
    sample(o, "mozpool_store_writable", u8::from(outage.is_none()));
    family(
        o,
        "mozpool_store_disk_full",
        "gauge",
        "1 while writes are refused because the disk holding the store is full.",
    );
    let full = outage.is_some_and(|o| o.fault == Fault::DiskFull);
    sample(o, "mozpool_store_disk_full", u8::from(full));
    family(
        o,
        "mozpool_store_reopens_total",
        "counter",
        "Times the store reopened itself after a full disk or an I/O error.",
    );
    sample(
        o,
        "mozpool_store_reopens_total",
        stats.reopens.load(Ordering::Relaxed),
    );
    family(
        o,
        "mozpool_store_readable",
        "gauge",
        "1 when this scrape could read the store (the counts above are left out otherwise).",
    );
    sample(o, "mozpool_store_readable", u8::from(counts.is_ok()));

    if let Ok(counts) = &counts {
        family(
            o,
            "mozpool_log_records",
            "gauge",
            "Records in the durable log.",
        );
        sample(o, "mozpool_log_records", counts.log_records);
    }
    family(
        o,
        "mozpool_store_file_bytes",
        "gauge",
        "Size of the store file.",
    );
    sample(o, "mozpool_store_file_bytes", file_bytes);
    family(
        o,
        "mozpool_status_long_polls",
        "gauge",
        "Requests with a status long poll (?wait) open now.",
    );
    sample(o, "mozpool_status_long_polls", status_long_polls);
    out
}

/// The families counted from the store: devices and requests per state, requests stored.
fn render_counts(o: &mut String, counts: &StoreCounts) {
    family(
        o,
        "mozpool_devices",
        "gauge",
        "Devices (not retired) per Lifeguard state.",
    );
    for (state, n) in &counts.devices {
        let _ = writeln!(o, "mozpool_devices{{state=\"{}\"}} {n}", label(state));
    }
    if let Some(requests) = &counts.requests {
        family(o, "mozpool_requests", "gauge", "Open requests per state.");
        for (state, n) in requests {
            let _ = writeln!(o, "mozpool_requests{{state=\"{}\"}} {n}", label(state));
        }
    }
    family(
        o,
        "mozpool_requests_stored",
        "gauge",
        "Requests in the store, open or closed.",
    );
    sample(o, "mozpool_requests_stored", counts.requests_stored);
}

/// The `# HELP` and `# TYPE` lines of a metric family.
/// The cluster-mode families (`docs/operations.md`), appended to the page when `[cluster]`
/// is configured.
pub fn render_cluster(o: &mut String, status: &crate::cluster::ClusterStatus) {
    let full = status.etcd_alarms.iter().any(|a| a == "NOSPACE");
    let gauges: [(&str, &str, usize); 7] = [
        (
            "mozpool_cluster_etcd_up",
            "1 when the last etcd probe (a linearizable read) succeeded.",
            usize::from(status.etcd_ok),
        ),
        (
            "mozpool_cluster_lease_held",
            "1 while this controller holds a live etcd lease.",
            usize::from(status.lease.is_some()),
        ),
        (
            "mozpool_cluster_scheduler",
            "1 while this controller is the elected scheduler.",
            usize::from(status.is_scheduler),
        ),
        (
            "mozpool_cluster_members",
            "Controllers present in etcd, as of the last good probe.",
            status.members.len(),
        ),
        (
            "mozpool_cluster_published_devices",
            "Devices this controller has published under its current lease.",
            status.published_devices,
        ),
        (
            "mozpool_cluster_etcd_nospace",
            "1 while etcd's NOSPACE alarm is raised: its database reached its quota and it refuses every write.",
            usize::from(full),
        ),
        (
            "mozpool_cluster_etcd_db_bytes",
            "Size of the database file of the etcd member this controller talks to (0 before the first read).",
            status
                .etcd_db_size
                .and_then(|b| usize::try_from(b).ok())
                .unwrap_or(0),
        ),
    ];
    for (name, help, value) in gauges {
        family(o, name, "gauge", help);
        sample(o, name, value);
    }
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// One sample without labels.
fn sample(o: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(o, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hw_kinds() {
        let hw = HwMetrics::default();
        hw.record("relay_power_cycle", true, Duration::from_millis(300));
        hw.record("relay_power_cycle", false, Duration::from_secs(5));
        hw.record("sut_ping", true, Duration::from_millis(20));
        let snap = hw.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0].0, "relay_power_cycle");
        assert_eq!(snap[0].1.ok.load(Ordering::Relaxed), 1);
        assert_eq!(snap[0].1.failed.load(Ordering::Relaxed), 1);
        assert_eq!(snap[0].1.latency.count(), 2);
    }

    #[test]
    fn api_classes() {
        let m = Metrics::default();
        m.record_api(200, Duration::from_millis(1));
        m.record_api(404, Duration::from_millis(1));
        m.record_api(503, Duration::from_millis(1));
        let counts: Vec<u64> = m
            .api_status
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, vec![0, 1, 0, 1, 1]);
    }

    #[test]
    fn label_escaping() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
