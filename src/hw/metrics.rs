//! Counters of the hardware layer's operations, recorded by the drivers as they finish and
//! rendered by `/metrics` in the app layer.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::domain::histogram::{Histogram, SLOW_BUCKETS};

/// Hardware operation counts, failures and latency per kind (`relay_power_cycle`,
/// `sut_ping`, `fastboot_flash`, ...). The hardware layer holds an `Arc<HwMetrics>` and
/// calls [`HwMetrics::record`] once per finished operation.
#[derive(Debug, Default)]
pub struct HwMetrics {
    kinds: Mutex<BTreeMap<String, std::sync::Arc<HwKind>>>,
}

/// One kind of operation's numbers so far.
#[derive(Debug)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct HwKind {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// How long each took.
    pub latency: Histogram,
}

impl HwMetrics {
    /// Record one finished hardware operation of `kind` (a short snake_case name; it becomes
    /// a label value), whether it succeeded, and how long it took.
    pub fn record(&self, kind: &str, ok: bool, elapsed: Duration) {
        let entry = {
            let mut kinds = match self.kinds.lock() {
                Ok(k) => k,
                Err(poisoned) => poisoned.into_inner(),
            };
            match kinds.get(kind) {
                Some(e) => e.clone(),
                None => {
                    let e = std::sync::Arc::new(HwKind {
                        ok: AtomicU64::new(0),
                        failed: AtomicU64::new(0),
                        latency: Histogram::new(SLOW_BUCKETS),
                    });
                    kinds.insert(kind.to_owned(), e.clone());
                    e
                }
            }
        };
        if ok { &entry.ok } else { &entry.failed }.fetch_add(1, Ordering::Relaxed);
        entry.latency.observe(elapsed);
    }

    /// Operations of `kind` finished so far: (succeeded, failed).
    #[must_use]
    pub fn count(&self, kind: &str) -> (u64, u64) {
        let kinds = match self.kinds.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        kinds.get(kind).map_or((0, 0), |k| {
            (
                k.ok.load(Ordering::Relaxed),
                k.failed.load(Ordering::Relaxed),
            )
        })
    }

    /// Every kind seen so far, by name.
    #[must_use]
    pub fn snapshot(&self) -> Vec<(String, std::sync::Arc<HwKind>)> {
        let kinds = match self.kinds.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        kinds.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}
