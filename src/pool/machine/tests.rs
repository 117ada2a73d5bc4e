//! Unit tests: every state × the events it handles, plus the fixed defects of §9.

use std::time::Duration;

use super::*;
use crate::domain::request_state::ALL_STATES;
use crate::pool::select::tests::{any_spec, dev};
use crate::pool::select::{Explanation, explain};

const T0: Millis = Millis(1_000_000);
const HOUR: u64 = 3_600_000;

fn t() -> Timings {
    Timings::default()
}

fn name(s: &str) -> DeviceName {
    s.parse().expect("device name")
}

fn snap_any() -> RequestSnapshot {
    RequestSnapshot::new(7, any_spec(), Millis(T0.0 + HOUR))
}

fn snap_specific(dev: &str) -> RequestSnapshot {
    let mut spec = any_spec();
    spec.requested_device = DeviceChoice::parse(dev).expect("name");
    RequestSnapshot::new(8, spec, Millis(T0.0 + HOUR))
}

/// Apply an event and return (new snapshot, transition).
fn go(s: &RequestSnapshot, e: Event, now: Millis) -> (RequestSnapshot, Transition) {
    let tr = step(s, e, now, &t());
    (tr.apply(s), tr)
}

fn timeout(s: &RequestSnapshot) -> (RequestSnapshot, Transition) {
    let at = s.timeout.expect("state has a timeout");
    go(
        s,
        Event::Timeout {
            generation: s.generation,
        },
        at,
    )
}

fn no_device(s: &RequestSnapshot, now: Millis) -> (RequestSnapshot, Transition) {
    go(
        s,
        Event::NoDevice {
            explanation: Explanation::default(),
        },
        now,
    )
}

fn assigned(s: &RequestSnapshot, d: &str, needs_image: bool) -> (RequestSnapshot, Transition) {
    go(
        s,
        Event::Assigned {
            device: name(d),
            needs_image,
        },
        T0,
    )
}

fn searching(s: &RequestSnapshot) -> RequestSnapshot {
    go(s, Event::FindDevice, T0).0
}

fn contacting(s: &RequestSnapshot, d: &str) -> RequestSnapshot {
    assigned(&searching(s), d, true).0
}

fn pending(s: &RequestSnapshot, d: &str) -> RequestSnapshot {
    let c = contacting(s, d);
    go(&c, Event::LifeguardContacted { device: name(d) }, T0).0
}

fn finished(s: &RequestSnapshot, d: &str, r: ImagingResult) -> (RequestSnapshot, Transition) {
    go(
        s,
        Event::LifeguardFinished {
            device: name(d),
            imaging_result: r,
        },
        T0,
    )
}

fn ready(s: &RequestSnapshot, d: &str) -> RequestSnapshot {
    finished(&pending(s, d), d, ImagingResult::Complete).0
}

fn released(tr: &Transition) -> Vec<(String, bool)> {
    tr.actions
        .iter()
        .filter_map(|a| match a {
            Action::ReleaseDevice { device, reverify } => Some((device.to_string(), *reverify)),
            _ => None,
        })
        .collect()
}

fn has_search(tr: &Transition) -> bool {
    tr.actions.contains(&Action::Search)
}

fn with_state(s: &RequestSnapshot, st: RequestState) -> RequestSnapshot {
    let mut x = s.clone();
    x.state = st;
    x
}

#[test]
fn new_find_device_starts_search() {
    let (s, tr) = go(&snap_any(), Event::FindDevice, T0);
    assert_eq!(s.state, RequestState::FindingDevice);
    assert_eq!(s.timeout, Some(Millis(T0.0 + 10_000)));
    assert_eq!(s.generation, 1);
    assert!(has_search(&tr));
    assert!(tr.logs().any(|l| l == "entering state finding_device"));
}

#[test]
fn new_with_wait_goes_to_queued() {
    let mut s = snap_any();
    s.spec.wait = Some(300);
    let (s, tr) = go(&s, Event::FindDevice, T0);
    assert_eq!(s.state, RequestState::Queued);
    assert_eq!(s.timeout, Some(Millis(T0.0 + 300_000)));
    assert!(has_search(&tr));
}

#[test]
fn unsatisfiable_fails_at_once() {
    let mut spec = any_spec();
    spec.requested_device = DeviceChoice::parse("nope").expect("name");
    let reason = crate::pool::select::satisfiable(&spec, &[dev("a")])
        .expect_err("unsatisfiable")
        .reason;
    for st in [
        RequestState::New,
        RequestState::FindingDevice,
        RequestState::Queued,
    ] {
        let s = with_state(&snap_any(), st);
        let (s, tr) = go(
            &s,
            Event::Unsatisfiable {
                reason: reason.clone(),
            },
            T0,
        );
        assert_eq!(s.state, RequestState::FailedDeviceNotFound, "{st}");
        assert!(tr.logs().any(|l| l.contains("device=nope")));
    }
}

#[test]
fn any_request_fails_after_60_searches() {
    let mut s = searching(&snap_any());
    for n in 1..60 {
        let (x, tr) = no_device(&s, T0);
        assert_eq!(x.state, RequestState::FindingDevice, "try {n}");
        assert_eq!(x.counters.finding_device, n);
        assert!(!has_search(&tr), "re-arm only; the timer asks again");
        let (y, tr) = timeout(&x);
        assert_eq!(y.state, RequestState::FindingDevice);
        assert!(has_search(&tr));
        s = y;
    }
    let (s, _) = no_device(&s, T0);
    assert_eq!(s.state, RequestState::FailedDeviceNotFound);
}

#[test]
fn specific_busy_device_fails_after_two_searches() {
    let s = searching(&snap_specific("p1"));
    let (s, _) = no_device(&s, T0);
    assert_eq!(s.state, RequestState::FindingDevice);
    let (s, tr) = no_device(&s, T0);
    assert_eq!(s.state, RequestState::FailedDeviceBusy);
    assert!(tr.logs().any(|l| l.contains("busy after 2 tries")));
}

#[test]
fn specific_failed_device_fails_bad_device() {
    let s = searching(&snap_specific("p1"));
    let mut d = dev("p1");
    d.free = false;
    d.failed = true;
    d.lifeguard_state = "failed_power_cycling".into();
    let explanation = explain(&s.spec, &[d]);
    let (s, tr) = go(&s, Event::NoDevice { explanation }, T0);
    assert_eq!(s.state, RequestState::FailedBadDevice);
    assert!(
        tr.logs().any(|l| l.contains("1 in failed_power_cycling")),
        "{:?}",
        tr.actions
    );
}

#[test]
fn queued_logs_explanations_and_times_out() {
    let mut s = snap_specific("p1");
    s.spec.wait = Some(60);
    let s = searching(&s);
    let gen_before = s.generation;
    let (s, tr) = no_device(&s, T0);
    assert_eq!(s.state, RequestState::Queued);
    assert_eq!(s.generation, gen_before, "no re-entry, deadline unchanged");
    assert!(tr.logs().any(|l| l.starts_with("queued: ")));
    let (s, tr) = timeout(&s);
    assert_eq!(s.state, RequestState::FailedDeviceNotFound);
    assert!(tr.logs().any(|l| l.contains("within the wait of 60 s")));
}

#[test]
fn assignment_contacts_lifeguard_with_please_image() {
    let (s, tr) = assigned(&searching(&snap_any()), "p1", true);
    assert_eq!(s.state, RequestState::ContactingLifeguard);
    assert_eq!(
        s.assigned,
        Some(Assignment {
            device: name("p1"),
            needs_image: true
        })
    );
    assert_eq!(s.timeout, Some(Millis(T0.0 + 30_000)));
    assert!(tr.actions.contains(&Action::ContactLifeguard {
        device: name("p1"),
        event: LifeguardEvent::PleaseImage {
            image: "b2g".parse().expect("image"),
            boot_config: "{}".into()
        }
    }));
}

#[test]
fn reusable_image_gets_please_power_cycle() {
    let mut s = snap_any();
    s.spec.can_reuse = true;
    let (_, tr) = assigned(&searching(&s), "p1", false);
    assert!(tr.actions.contains(&Action::ContactLifeguard {
        device: name("p1"),
        event: LifeguardEvent::PleasePowerCycle
    }));
    // needs_image=false without can_reuse still images (defensive).
    let (_, tr) = assigned(&searching(&snap_any()), "p1", false);
    assert!(tr.actions.iter().any(|a| matches!(
        a,
        Action::ContactLifeguard {
            event: LifeguardEvent::PleaseImage { .. },
            ..
        }
    )));
}

#[test]
fn assignment_of_wrong_device_is_refused() {
    let (s, tr) = assigned(&searching(&snap_specific("p1")), "p2", true);
    assert!(!tr.accepted);
    assert_eq!(s.state, RequestState::FindingDevice);
    assert_eq!(s.assigned, None);
}

#[test]
fn assignment_ignored_outside_waiting_states() {
    for st in ALL_STATES {
        if st.is_waiting() {
            continue;
        }
        let s = with_state(&snap_any(), st);
        let (x, tr) = assigned(&s, "p1", true);
        assert!(!tr.accepted, "{st}");
        assert_eq!(x.assigned, s.assigned, "{st}: never takes a device");
    }
}

#[test]
fn contacting_retries_then_fails() {
    let mut s = contacting(&snap_any(), "p1");
    for n in 1..5 {
        let (x, tr) = timeout(&s);
        assert_eq!(x.state, RequestState::ContactingLifeguard);
        assert_eq!(x.counters.contacting_lifeguard, n);
        assert!(
            tr.actions
                .iter()
                .any(|a| matches!(a, Action::ContactLifeguard { .. }))
        );
        s = x;
    }
    let (s, tr) = timeout(&s);
    assert_eq!(s.state, RequestState::FailedDeviceNotFound);
    assert_eq!(released(&tr), vec![("p1".to_owned(), true)]);
    assert_eq!(s.assigned, None);
}

#[test]
fn contacted_goes_pending_only_for_the_assigned_device() {
    let c = contacting(&snap_any(), "p1");
    let (x, tr) = go(&c, Event::LifeguardContacted { device: name("p2") }, T0);
    assert!(!tr.accepted);
    assert_eq!(x.state, RequestState::ContactingLifeguard);
    let (x, _) = go(&c, Event::LifeguardContacted { device: name("p1") }, T0);
    assert_eq!(x.state, RequestState::Pending);
    assert_eq!(x.timeout, Some(Millis(T0.0 + 60_000)));
}

#[test]
fn device_lost_while_contacting_searches_again_with_reset_counters() {
    let c = contacting(&snap_any(), "p1");
    let (c, _) = timeout(&c); // contacting counter 1
    let mut c = c;
    c.counters.finding_device = 7;
    let (s, tr) = go(
        &c,
        Event::DeviceLost {
            device: name("p1"),
            lifeguard_state: "pc_power_cycling".into(),
        },
        T0,
    );
    assert_eq!(s.state, RequestState::FindingDevice);
    assert_eq!(s.counters, Counters::default(), "§9.12: counters reset");
    assert_eq!(released(&tr), vec![("p1".to_owned(), true)]);
    assert!(has_search(&tr));
}

#[test]
fn early_result_while_contacting_is_accepted() {
    let c = contacting(&snap_any(), "p1");
    let (s, _) = finished(&c, "p1", ImagingResult::Complete);
    assert_eq!(s.state, RequestState::Ready);
    assert_eq!(s.timeout, None);
}

#[test]
fn pending_results() {
    let p = pending(&snap_any(), "p1");
    let (s, _) = finished(&p, "p1", ImagingResult::Complete);
    assert_eq!(s.state, RequestState::Ready);

    let (s, tr) = finished(&p, "p1", ImagingResult::FailedBadDevice);
    assert_eq!(s.state, RequestState::FindingDevice, "any: another device");
    assert_eq!(released(&tr), vec![("p1".to_owned(), true)]);

    let (s, _) = finished(&p, "p1", ImagingResult::Other("weird".into()));
    assert_eq!(s.state, RequestState::FindingDevice);

    let (s, _) = finished(&p, "p2", ImagingResult::Complete);
    assert_eq!(
        s.state,
        RequestState::Pending,
        "other devices' reports ignored"
    );

    let ps = pending(&snap_specific("p1"), "p1");
    let (s, _) = finished(&ps, "p1", ImagingResult::FailedBadDevice);
    assert_eq!(s.state, RequestState::FailedBadDevice);
}

#[test]
fn second_bad_image_fails() {
    let p = pending(&snap_any(), "p1");
    let (s, _) = finished(&p, "p1", ImagingResult::FailedBadImage);
    assert_eq!(s.state, RequestState::FindingDevice);
    assert_eq!(s.counters.bad_images, 1, "kept across searches");
    let p2 = {
        let a = assigned(&s, "p2", true).0;
        go(&a, Event::LifeguardContacted { device: name("p2") }, T0).0
    };
    let (s, tr) = finished(&p2, "p2", ImagingResult::FailedBadImage);
    assert_eq!(s.state, RequestState::FailedBadImage);
    assert_eq!(released(&tr), vec![("p2".to_owned(), true)]);
}

#[test]
fn pending_timeouts() {
    let mut p = pending(&snap_any(), "p1");
    for _ in 1..20 {
        p = timeout(&p).0;
        assert_eq!(p.state, RequestState::Pending);
    }
    let (s, tr) = timeout(&p);
    assert_eq!(s.state, RequestState::FindingDevice);
    assert_eq!(s.counters.pending, 0, "reset on searching again");
    assert!(has_search(&tr));

    let mut p = pending(&snap_specific("p1"), "p1");
    for _ in 1..20 {
        p = timeout(&p).0;
    }
    let (s, _) = timeout(&p);
    assert_eq!(s.state, RequestState::FailedBadDevice);
}

#[test]
fn ready_reports_device_failures_and_keeps_the_device() {
    let r = ready(&snap_any(), "p1");
    assert_eq!(r.state, RequestState::Ready);
    let (s, tr) = finished(&r, "p1", ImagingResult::FailedBadDevice);
    assert_eq!(s.state, RequestState::Ready);
    assert!(tr.accepted);
    assert!(tr.logs().any(|l| l.starts_with("error: device p1 failed")));
    assert!(released(&tr).is_empty());
    let (s, tr) = go(
        &r,
        Event::DeviceLost {
            device: name("p1"),
            lifeguard_state: "failed_sut_verifying".into(),
        },
        T0,
    );
    assert_eq!(s.state, RequestState::Ready);
    assert!(tr.logs().any(|l| l.contains("failed_sut_verifying")));
    let (_, tr) = finished(&r, "p1", ImagingResult::Complete);
    assert!(!tr.accepted, "duplicate complete ignored");
}

#[test]
fn close_from_every_state() {
    let holding = ready(&snap_any(), "p1");
    for st in ALL_STATES {
        let mut s = with_state(&holding, st);
        if !st.holds_device() && st != RequestState::Unknown {
            s.assigned = None;
        }
        let (x, tr) = go(&s, Event::Close, T0);
        assert_eq!(x.state, RequestState::Closed, "{st}");
        assert!(tr.accepted, "{st}");
        assert_eq!(x.assigned, None, "{st}");
        let expect_release = s.assigned.is_some();
        assert_eq!(!released(&tr).is_empty(), expect_release, "{st}");
        // Idempotent.
        let (y, tr2) = go(&x, Event::Close, T0);
        assert_eq!(y, x);
        assert!(tr2.actions.is_empty());
    }
}

#[test]
fn expiry_waits_for_the_grace() {
    let r = ready(&snap_any(), "p1");
    let expires = r.expires;
    let (x, tr) = go(&r, Event::Expire, expires);
    assert_eq!(x.state, RequestState::Ready, "during grace");
    assert!(!tr.accepted);
    let due = Millis(expires.0 + 60_000);
    let (x, tr) = go(&r, Event::Expire, due);
    assert_eq!(x.state, RequestState::Closed);
    assert_eq!(released(&tr), vec![("p1".to_owned(), true)]);
    assert!(tr.logs().any(|l| l == "Request expired."));
}

#[test]
fn expire_in_terminal_and_legacy_states() {
    let far = Millis(u64::MAX / 2);
    for st in ALL_STATES.iter().copied().filter(|s| s.is_terminal()) {
        let s = with_state(&snap_any(), st);
        let (x, tr) = go(&s, Event::Expire, far);
        assert_eq!(x.state, st, "failed requests are excluded from expiry");
        assert!(!tr.accepted);
    }
    let s = with_state(&snap_any(), RequestState::Expired);
    let (x, _) = go(&s, Event::Expire, T0);
    assert_eq!(
        x.state,
        RequestState::Closed,
        "legacy expired closes at once"
    );
}

#[test]
fn renew_replaces_and_caps() {
    let r = ready(&snap_any(), "p1");
    let now = Millis(T0.0 + 5000);
    let (x, tr) = go(&r, Event::Renew { duration_secs: 10 }, now);
    assert_eq!(x.expires, Millis(now.0 + 10_000), "replaces, does not add");
    assert_eq!(x.state, RequestState::Ready);
    assert_eq!(x.generation, r.generation);
    assert!(tr.logs().any(|l| l.starts_with("Request renewed until")));
    let (x, tr) = go(
        &r,
        Event::Renew {
            duration_secs: 365 * 24 * 3600,
        },
        now,
    );
    assert_eq!(x.expires, Millis(now.0 + 24 * HOUR));
    assert!(tr.logs().any(|l| l.contains("capped")));
    // A renewed lease makes an old expire early.
    let (y, _) = go(&x, Event::Expire, Millis(r.expires.0 + 120_000));
    assert_eq!(y.state, RequestState::Ready);
    let closed = with_state(&r, RequestState::Closed);
    let (y, tr) = go(&closed, Event::Renew { duration_secs: 10 }, now);
    assert!(!tr.accepted);
    assert_eq!(y.expires, closed.expires);
}

#[test]
fn late_and_early_timeouts_are_ignored() {
    let s = searching(&snap_any());
    let at = s.timeout.expect("timeout");
    let (x, tr) = go(
        &s,
        Event::Timeout {
            generation: s.generation - 1,
        },
        at,
    );
    assert_eq!(x, s);
    assert!(!tr.accepted && tr.actions.is_empty());
    let (x, tr) = go(
        &s,
        Event::Timeout {
            generation: s.generation,
        },
        Millis(at.0 - 1),
    );
    assert_eq!(x, s);
    assert!(!tr.accepted);
    // States without a timeout ignore timers.
    let r = ready(&snap_any(), "p1");
    let (x, _) = go(
        &r,
        Event::Timeout {
            generation: r.generation,
        },
        Millis(u64::MAX),
    );
    assert_eq!(x, r);
}

#[test]
fn legacy_contact_lifeguard_moves_on() {
    let c = contacting(&snap_any(), "p1");
    let mut legacy = with_state(&c, RequestState::ContactLifeguard);
    legacy.timeout = Some(T0);
    let (x, tr) = timeout(&legacy);
    assert_eq!(x.state, RequestState::ContactingLifeguard);
    assert!(
        tr.actions
            .iter()
            .any(|a| matches!(a, Action::ContactLifeguard { .. }))
    );
    legacy.assigned = None;
    let (x, _) = timeout(&legacy);
    assert_eq!(x.state, RequestState::FindingDevice);
}

#[test]
fn unknown_state_recovers_without_panic() {
    let r = ready(&snap_any(), "p1");
    let mut u = with_state(&r, RequestState::Unknown);
    u.timeout = None;
    u.generation = 99;
    let (x, tr) = go(&u, Event::Timeout { generation: 3 }, T0);
    assert_eq!(x.state, RequestState::FindingDevice);
    assert_eq!(released(&tr), vec![("p1".to_owned(), true)]);
    let (x, _) = go(&u, Event::LifeguardContacted { device: name("p1") }, T0);
    assert_eq!(x.state, RequestState::Unknown);
}

#[test]
fn terminal_states_ignore_everything_but_close() {
    let events = |d: &str| {
        vec![
            Event::FindDevice,
            Event::Assigned {
                device: name(d),
                needs_image: true,
            },
            Event::NoDevice {
                explanation: Explanation::default(),
            },
            Event::Unsatisfiable { reason: "x".into() },
            Event::LifeguardContacted { device: name(d) },
            Event::LifeguardFinished {
                device: name(d),
                imaging_result: ImagingResult::Complete,
            },
            Event::DeviceLost {
                device: name(d),
                lifeguard_state: "x".into(),
            },
            Event::Timeout { generation: 0 },
        ]
    };
    for st in ALL_STATES.iter().copied().filter(|s| s.is_terminal()) {
        let mut s = with_state(&snap_any(), st);
        s.timeout = Some(T0);
        for e in events("p1") {
            let (x, tr) = go(&s, e.clone(), T0);
            assert_eq!(x.state, st, "{st} {e:?}");
            assert!(!tr.accepted, "{st} {e:?}");
        }
    }
}

#[test]
fn every_state_event_pair_is_total() {
    // No panics; generation only moves with state entries; holds imply holding states.
    let base = ready(&snap_any(), "p1");
    let evs = [
        Event::FindDevice,
        Event::Assigned {
            device: name("p2"),
            needs_image: false,
        },
        Event::NoDevice {
            explanation: Explanation::default(),
        },
        Event::Unsatisfiable { reason: "r".into() },
        Event::LifeguardContacted { device: name("p1") },
        Event::LifeguardFinished {
            device: name("p1"),
            imaging_result: ImagingResult::FailedBadImage,
        },
        Event::DeviceLost {
            device: name("p1"),
            lifeguard_state: "x".into(),
        },
        Event::Close,
        Event::Expire,
        Event::Renew { duration_secs: 5 },
        Event::Timeout { generation: 2 },
    ];
    for st in ALL_STATES {
        for e in &evs {
            let mut s = with_state(&base, st);
            s.generation = 2;
            s.timeout = Some(T0);
            if !st.holds_device() && st != RequestState::Unknown {
                s.assigned = None;
            }
            let tr = step(&s, e.clone(), Millis(T0.0 + 2 * HOUR), &t());
            if tr.assigned.is_some() {
                assert!(
                    tr.state.holds_device() || tr.state == RequestState::Unknown,
                    "{st} {e:?} -> {}",
                    tr.state
                );
            }
            if tr.state.is_terminal() {
                assert!(tr.assigned.is_none());
            }
            if tr.state != st {
                assert!(tr.generation > s.generation);
            }
        }
    }
}

#[test]
fn scaled_timings_drive_the_same_machine() {
    let fast = Timings::default().scaled(0.001);
    let s = snap_any();
    let tr = step(&s, Event::FindDevice, T0, &fast);
    assert_eq!(tr.timeout, Some(Millis(T0.0 + 10)));
    let _ = Duration::ZERO;
}
