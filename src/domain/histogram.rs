//! A fixed-bucket latency histogram on atomics: recording is a few relaxed atomic adds and no
//! allocation, so it can sit on the hot path (every API call, every commit).
//!
//! This module is a leaf: it imports nothing from the crate, so any layer (the store's writer,
//! the hardware actors) may record into one without depending upward.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) for fast operations: API calls and store commits.
pub const FAST_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds (seconds) for hardware operations (relay clicks to multi-minute flashes).
pub const SLOW_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A Prometheus-style histogram with fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    /// Bucket upper bounds in seconds, ascending; `+Inf` is implicit.
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; the last entry is the `+Inf` overflow bucket.
    counts: Box<[AtomicU64]>,
    /// Sum of observations in microseconds (integer, so it can be an atomic).
    sum_micros: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these bucket bounds (seconds, ascending).
    #[must_use]
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Record one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Number of observations.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Append the `_bucket`, `_sum` and `_count` lines of metric `name` to `out`. `labels` is
    /// either empty or `key="value",…` without braces (values already escaped).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(b) => {
                    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(3));
        let mut s = String::new();
        h.render(&mut s, "x_seconds", "kind=\"a\"");
        assert!(
            s.contains("x_seconds_bucket{kind=\"a\",le=\"0.01\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{kind=\"a\",le=\"0.1\"} 3\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{kind=\"a\",le=\"+Inf\"} 4\n"),
            "{s}"
        );
        assert!(s.contains("x_seconds_sum{kind=\"a\"} 3.105\n"), "{s}");
        assert!(s.contains("x_seconds_count{kind=\"a\"} 4\n"), "{s}");
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn unlabelled() {
        let h = Histogram::new(FAST_BUCKETS);
        h.observe(Duration::from_micros(100));
        let mut s = String::new();
        h.render(&mut s, "y", "");
        assert!(s.contains("y_bucket{le=\"0.0005\"} 1\n"), "{s}");
        assert!(s.contains("y_count 1\n"), "{s}");
    }
}
