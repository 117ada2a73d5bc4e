//! The fair priority queue: which waiting requests get which free devices in one pass.
//!
//! The caller runs [`assign`] inside the store transaction that also records the
//! assignments (by delivering `Event::Assigned` to each winner and writing the holder from
//! the resulting transition), so two passes can never hand out the same device.
//!
//! # Ordering and aging
//! Every waiting request has an *effective priority* `e = priority + ⌊waited / aging_step⌋`
//! (`waited = now − since`; no aging when `aging_step` is zero). Requests are considered in
//! order of `e` (highest first), then arrival (`since`, then id). So a request of priority
//! `p` is served before one of priority `p + d` whenever it arrived at least `d · aging_step`
//! earlier, and never when it arrived less than `(d − 1) · aging_step` earlier (in between it
//! depends on the phase of the floors). So nothing starves: every later arrival of bounded
//! priority eventually queues behind it.
//!
//! # Fair share
//! Let `k` be the number of distinct assignees with a waiting request in the pass. When
//! `k ≥ 2` (and the policy enables it), the pass has two rounds over the same order. In the
//! first round a request of assignee `a` is passed over when `a` already holds (including
//! devices granted earlier in this pass) at least `⌈|M| / k⌉` of the devices in `M`, the
//! non-retired inventory devices matching that request. The second round hands the devices
//! that are still free to the requests passed over, in the same order, so no device stays
//! idle while a matching request waits (work-conserving). Fair share therefore outranks
//! priority for an assignee at or above its share; below its share priority rules.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use super::config::QueuePolicy;
use super::select;
use super::spec::DeviceView;
use crate::domain::clock::Millis;
use crate::domain::names::DeviceName;
use crate::domain::request::RequestSpec;

/// A request waiting for a device (state `finding_device` or `queued`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct QueuedRequest {
    pub id: u64,
    pub spec: RequestSpec,
    /// Arrival in the queue; normally `spec.created`, so a request sent back to searching
    /// after a device failure keeps its place.
    pub since: Millis,
}

/// Effective priority of `r` at `now` (see the module docs).
#[must_use]
pub fn effective_priority(r: &QueuedRequest, now: Millis, policy: &QueuePolicy) -> i64 {
    let step = u64::try_from(policy.aging_step.as_millis()).unwrap_or(u64::MAX);
    let aged = now
        .0
        .saturating_sub(r.since.0)
        .checked_div(step)
        .map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX));
    i64::from(r.spec.priority).saturating_add(aged)
}

/// Indices of `waiting` in service order: effective priority, then arrival, then id.
fn order(waiting: &[QueuedRequest], now: Millis, policy: &QueuePolicy) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..waiting.len()).collect();
    idx.sort_by_key(|&i| {
        let r = &waiting[i];
        (Reverse(effective_priority(r, now, policy)), r.since, r.id)
    });
    idx
}

/// Number of distinct assignees among `waiting`.
fn assignees(waiting: &[QueuedRequest]) -> usize {
    waiting
        .iter()
        .map(|r| r.spec.assignee.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

/// Whether fair share decides anything in a pass over `waiting`: the policy enables it and
/// at least two assignees wait. Only then does [`assign`] look at devices that are not
/// available (to count each assignee's holdings); otherwise it needs the available devices
/// alone.
#[must_use]
pub fn fair_share_applies(waiting: &[QueuedRequest], policy: &QueuePolicy) -> bool {
    policy.fair_share && assignees(waiting) >= 2
}

/// Whether `r`'s assignee holds at least its share of `r`'s matching devices, counting
/// devices held in `devices` plus `granted` (device → assignee) from this pass. Granted
/// devices are compared by identity, not name: cluster mode passes devices of several racks,
/// whose names are unique per rack only.
fn over_share(
    r: &QueuedRequest,
    devices: &[DeviceView],
    granted: &[(&DeviceView, &str)],
    k: usize,
) -> bool {
    let a = r.spec.assignee.as_str();
    let mut matching = 0usize;
    let mut held = 0usize;
    for d in devices {
        if d.retired || !select::matches(&r.spec, d) {
            continue;
        }
        matching += 1;
        let holder_is_a = d.held_by.as_ref().is_some_and(|h| h.assignee == a)
            || granted
                .iter()
                .any(|&(gd, ga)| std::ptr::eq(gd, d) && ga == a);
        if holder_is_a {
            held += 1;
        }
    }
    held >= matching.div_ceil(k.max(1))
}

/// Decide in one pass which waiting requests get which free devices (rules in the module
/// docs). Guarantees: a device appears at most once; only available (free, unheld, not
/// retired) devices that match the request are handed out; a request appears at most once.
#[must_use]
pub fn assign(
    waiting: &[QueuedRequest],
    devices: &[DeviceView],
    now: Millis,
    policy: &QueuePolicy,
) -> Vec<(u64, DeviceName)> {
    let order = order(waiting, now, policy);
    let k = assignees(waiting);
    let fair = fair_share_applies(waiting, policy);
    // By name, so even a (bogus) inventory listing a name twice cannot hand it out twice.
    let mut taken: HashSet<&DeviceName> = HashSet::new();
    let mut served: HashSet<u64> = HashSet::new();
    let mut granted: Vec<(&DeviceView, &str)> = Vec::new();
    let mut out = Vec::new();
    let rounds: &[bool] = if fair { &[true, false] } else { &[false] };
    for &check_share in rounds {
        for &i in &order {
            let r = &waiting[i];
            if served.contains(&r.id) {
                continue;
            }
            if check_share && over_share(r, devices, &granted, k) {
                continue;
            }
            let free = devices.iter().filter(|d| !taken.contains(&d.name));
            let Some(d) = select::best(&r.spec, free) else {
                continue;
            };
            taken.insert(&d.name);
            served.insert(r.id);
            granted.push((d, r.spec.assignee.as_str()));
            out.push((r.id, d.name.clone()));
        }
    }
    out
}

/// Each waiting request's 1-based position for the status API: service order as
/// [`assign`] would use it right now, with requests whose assignee is at or over its share
/// moved behind the others (stable). Positions are a forecast, not a promise: which
/// devices are free decides who is actually served.
#[must_use]
pub fn position(
    waiting: &[QueuedRequest],
    devices: &[DeviceView],
    now: Millis,
    policy: &QueuePolicy,
) -> Vec<(u64, usize)> {
    let mut order = order(waiting, now, policy);
    let k = assignees(waiting);
    if fair_share_applies(waiting, policy) {
        order.sort_by_key(|&i| over_share(&waiting[i], devices, &[], k));
    }
    order
        .into_iter()
        .enumerate()
        .map(|(pos, i)| (waiting[i].id, pos + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pool::select::tests::{any_spec, dev};
    use crate::pool::spec::Holder;

    fn req(id: u64, assignee: &str, priority: i32, since: u64) -> QueuedRequest {
        let mut spec = any_spec();
        spec.assignee = assignee.into();
        spec.priority = priority;
        spec.created = Millis(since);
        QueuedRequest {
            id,
            spec,
            since: Millis(since),
        }
    }

    fn devs(n: usize) -> Vec<DeviceView> {
        (0..n).map(|i| dev(&format!("d{i}"))).collect()
    }

    fn ids(v: &[(u64, DeviceName)]) -> Vec<u64> {
        v.iter().map(|(i, _)| *i).collect()
    }

    fn no_aging() -> QueuePolicy {
        QueuePolicy {
            aging_step: Duration::ZERO,
            fair_share: true,
        }
    }

    #[test]
    fn higher_priority_first() {
        let w = vec![req(1, "a", 0, 0), req(2, "a", 5, 10), req(3, "a", 1, 5)];
        let got = assign(&w, &devs(2), Millis(100), &no_aging());
        assert_eq!(ids(&got), vec![2, 3]);
        let names: Vec<&str> = got.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(names, vec!["d0", "d1"], "name order among equal devices");
    }

    #[test]
    fn fifo_within_priority_then_id() {
        let w = vec![req(3, "a", 0, 20), req(2, "a", 0, 10), req(1, "a", 0, 10)];
        assert_eq!(
            ids(&assign(&w, &devs(2), Millis(100), &no_aging())),
            vec![1, 2]
        );
        assert_eq!(
            position(&w, &devs(0), Millis(100), &no_aging()),
            vec![(1, 1), (2, 2), (3, 3)]
        );
    }

    #[test]
    fn aging_overtakes_after_documented_time() {
        let policy = QueuePolicy {
            aging_step: Duration::from_secs(600),
            fair_share: true,
        };
        const MIN: u64 = 60_000;
        // Priority 0 arrives at 0; priority 1 arrives at 5 min.
        let w = vec![req(1, "a", 0, 0), req(2, "a", 1, 5 * MIN)];
        // At 9:59 the old one has e = 0, the young one e = 1: priority wins.
        let before = Millis(10 * MIN - 1);
        assert_eq!(ids(&assign(&w, &devs(1), before, &policy)), vec![2]);
        assert_eq!(position(&w, &[], before, &policy), vec![(2, 1), (1, 2)]);
        // At 10:00 (one aging step of waiting) the old one reaches e = 1, the young one is
        // still at e = 1 + ⌊5 min / 10 min⌋ = 1; the tie goes to arrival order.
        let at = Millis(10 * MIN);
        assert_eq!(effective_priority(&w[0], at, &policy), 1);
        assert_eq!(effective_priority(&w[1], at, &policy), 1);
        assert_eq!(ids(&assign(&w, &devs(1), at, &policy)), vec![1]);
        // Without aging the young high-priority request always wins.
        let late = Millis(1000 * MIN);
        assert_eq!(ids(&assign(&w, &devs(1), late, &no_aging())), vec![2]);
        // Both age at the same rate, so what counts is the arrival gap: an older request
        // goes first once it arrived at least d aging steps before one of priority + d.
        // A priority-3 request 5 min younger keeps winning however long both wait…
        let w3 = vec![req(1, "a", 0, 0), req(2, "a", 3, 5 * MIN)];
        assert_eq!(
            ids(&assign(&w3, &devs(1), Millis(100 * MIN), &policy)),
            vec![2]
        );
        // …while a priority-2 request arriving 2 steps (20 min) or more later loses.
        let w4 = vec![req(1, "a", 0, 0), req(2, "a", 2, 20 * MIN)];
        assert_eq!(
            ids(&assign(&w4, &devs(1), Millis(20 * MIN), &policy)),
            vec![1]
        );
        for now in [20 * MIN, 25 * MIN, 31 * MIN, 90 * MIN + 7] {
            assert_eq!(ids(&assign(&w4, &devs(1), Millis(now), &policy)), vec![1]);
        }
        // One step (10 min) earlier is not enough for a 2-level gap, at any time.
        let w5 = vec![req(1, "a", 0, 0), req(2, "a", 2, 10 * MIN)];
        for now in [10 * MIN, 19 * MIN, 20 * MIN, 29 * MIN, 500 * MIN + 3] {
            assert_eq!(ids(&assign(&w5, &devs(1), Millis(now), &policy)), vec![2]);
        }
    }

    #[test]
    fn fair_share_between_flooder_and_latecomer() {
        // Alice floods ten requests, Bob asks for two later; four devices.
        let mut w: Vec<QueuedRequest> = (1..=10).map(|i| req(i, "alice", 0, i)).collect();
        w.push(req(11, "bob", 0, 100));
        w.push(req(12, "bob", 0, 101));
        let got = assign(&w, &devs(4), Millis(1000), &no_aging());
        // k = 2, |M| = 4 ⇒ share 2 each.
        assert_eq!(ids(&got), vec![1, 2, 11, 12]);
        // Without fair share alice takes everything.
        let unfair = QueuePolicy {
            fair_share: false,
            ..no_aging()
        };
        assert_eq!(
            ids(&assign(&w, &devs(4), Millis(1000), &unfair)),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn fair_share_counts_current_holdings_and_is_work_conserving() {
        // Alice already holds 3 of 4 devices; one is free; she waits with an older request.
        let mut d = devs(4);
        for (i, x) in d.iter_mut().enumerate().take(3) {
            x.held_by = Some(Holder {
                request: 100 + i as u64,
                assignee: "alice".into(),
            });
        }
        let w = vec![req(1, "alice", 5, 0), req(2, "bob", 0, 50)];
        // Alice is over her share (3 ≥ ⌈4/2⌉), so bob gets d3 despite lower priority.
        let got = assign(&w, &d, Millis(100), &no_aging());
        assert_eq!(got, vec![(2, "d3".parse().expect("name"))]);
        assert_eq!(
            position(&w, &d, Millis(100), &no_aging()),
            vec![(2, 1), (1, 2)]
        );
        // With only alice waiting there is no one to favour: she gets it.
        let got = assign(&w[..1], &d, Millis(100), &no_aging());
        assert_eq!(ids(&got), vec![1]);
        // Work-conserving: two free devices, bob wants one ⇒ alice still gets the other.
        d[2].held_by = None;
        let got = assign(&w, &d, Millis(100), &no_aging());
        assert_eq!(ids(&got), vec![2, 1]);
    }

    #[test]
    fn never_assigns_busy_held_retired_or_mismatching() {
        let mut d = devs(5);
        d[0].free = false;
        d[0].lifeguard_state = "pxe_booting".into();
        d[1].held_by = Some(Holder {
            request: 9,
            assignee: "x".into(),
        });
        d[2].retired = true;
        d[3].hardware_type = Some("panda".parse().expect("hw"));
        let mut r = req(1, "a", 0, 0);
        r.spec.hardware_type = Some("nexus-s".parse().expect("hw"));
        let w = vec![r, req(2, "a", 0, 1), req(3, "a", 0, 2)];
        let got = assign(&w, &d, Millis(10), &no_aging());
        assert_eq!(
            got,
            vec![
                (2, "d3".parse().expect("name")),
                (3, "d4".parse().expect("name"))
            ]
        );
    }

    #[test]
    fn duplicate_inventory_names_are_handed_out_once() {
        let d = vec![dev("d0"), dev("d0")];
        let w = vec![req(1, "a", 0, 0), req(2, "b", 0, 1)];
        assert_eq!(assign(&w, &d, Millis(5), &no_aging()).len(), 1);
    }

    #[test]
    fn specific_device_requests_wait_for_their_device() {
        let mut r = req(1, "a", 9, 0);
        r.spec.requested_device = crate::domain::request::DeviceChoice::parse("d1").expect("n");
        let w = vec![r, req(2, "b", 0, 1)];
        let got = assign(&w, &devs(2), Millis(10), &no_aging());
        assert_eq!(
            got,
            vec![
                (1, "d1".parse().expect("name")),
                (2, "d0".parse().expect("name"))
            ]
        );
    }

    proptest::proptest! {
        /// Two assignees, all devices free and matching, any arrival interleaving: each
        /// assignee gets at least min(its requests, ⌊D/2⌋) devices, and the pass is
        /// work-conserving (min(D, requests) devices handed out).
        #[test]
        fn fair_share_guarantee(
            arrivals in proptest::collection::vec(proptest::bool::ANY, 0..16),
            ndev in 0usize..9,
        ) {
            let w: Vec<QueuedRequest> = arrivals
                .iter()
                .enumerate()
                .map(|(i, &alice)| {
                    let who = if alice { "alice" } else { "bob" };
                    req(i as u64, who, 0, i as u64)
                })
                .collect();
            let got = assign(&w, &devs(ndev), Millis(100), &no_aging());
            proptest::prop_assert_eq!(got.len(), ndev.min(w.len()));
            for who in ["alice", "bob"] {
                let wanted = w.iter().filter(|r| r.spec.assignee == who).count();
                let have = got
                    .iter()
                    .filter(|(id, _)| w[*id as usize].spec.assignee == who)
                    .count();
                proptest::prop_assert!(have >= wanted.min(ndev / 2), "{} got {}", who, have);
            }
        }

        /// Without fair share (one assignee, or the policy off) a pass decides from the
        /// available devices alone: handing it only those (the driver reads them through
        /// the free-device index) gives the same assignments as the whole inventory.
        #[test]
        fn without_fair_share_only_available_devices_matter(
            kinds in proptest::collection::vec(0u8..6, 0..12),
            wants in proptest::collection::vec((proptest::bool::ANY, 0i32..3), 0..10),
            two_assignees in proptest::bool::ANY,
        ) {
            let d: Vec<DeviceView> = kinds
                .iter()
                .enumerate()
                .map(|(i, &k)| {
                    let mut x = dev(&format!("d{i:02}"));
                    match k {
                        1 => x.free = false,
                        2 => x.retired = true,
                        3 => x.held_by = Some(Holder { request: 900, assignee: "a".into() }),
                        4 => x.hardware_type = Some("panda".parse().expect("hw")),
                        _ => {}
                    }
                    x
                })
                .collect();
            let w: Vec<QueuedRequest> = wants
                .iter()
                .enumerate()
                .map(|(i, &(panda, priority))| {
                    let who = if two_assignees && i % 2 == 1 { "b" } else { "a" };
                    let mut r = req(i as u64, who, priority, i as u64);
                    if panda {
                        r.spec.hardware_type = Some("panda".parse().expect("hw"));
                    }
                    r
                })
                .collect();
            let policy = QueuePolicy { fair_share: !two_assignees, ..no_aging() };
            proptest::prop_assert!(!fair_share_applies(&w, &policy));
            let available: Vec<DeviceView> = d.iter().filter(|x| x.available()).cloned().collect();
            proptest::prop_assert_eq!(
                assign(&w, &d, Millis(50), &policy),
                assign(&w, &available, Millis(50), &policy)
            );
        }
    }
}
