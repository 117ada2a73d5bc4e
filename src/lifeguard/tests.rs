//! Tests of the Lifeguard machine: flows, every transition, refusals, generation filtering,
//! every counter limit, force, resume, persistence, and proptest invariants.

use std::time::Duration;

use super::*;
use crate::domain::clock::Millis;
use crate::domain::model::BootMode;
use crate::domain::names::ImageName;

use DeviceState as S;

const T0: Millis = Millis(1_000_000_000);

fn t() -> Timings {
    Timings::default()
}

fn img(n: &str) -> ImageName {
    n.parse().expect("valid image name")
}

/// A device resting in `state` (deadline as if just entered at `T0`).
fn at(state: DeviceState, power: bool, sut: bool) -> Snapshot {
    let t = t();
    let mut s = Snapshot::new_device(T0, power, &t);
    s.state = state;
    s.generation = 10;
    s.deadline = t.timeout(state).map(|d| T0.plus(d));
    s.current_image = Some(img("android"));
    s.current_has_agent = sut;
    if matches!(state, S::Flashing | S::FlashRebooting | S::StartFlash) {
        s.next_image = Some(NextImage {
            image: img("b2g"),
            boot_config: "{}".into(),
            has_agent: sut,
        });
    }
    s
}

fn go(s: &Snapshot, e: Event) -> Transition {
    step(s, e, s.deadline.unwrap_or(s.entered_at), &t()).expect("accepted")
}

fn please_ok(s: &Snapshot, e: Event) -> Transition {
    step(s, e, T0.plus(Duration::from_secs(1)), &t()).expect("accepted")
}

fn timeout(s: &Snapshot) -> Transition {
    let now = s.deadline.expect("has a deadline");
    step(
        s,
        Event::Timeout {
            generation: s.generation,
        },
        now,
        &t(),
    )
    .expect("timeouts are never refused")
}

fn g(s: &Snapshot) -> u64 {
    s.generation
}

fn hw(tr: &Transition) -> Vec<Action> {
    tr.actions
        .iter()
        .filter(|a| a.is_hardware())
        .cloned()
        .collect()
}

fn notes(tr: &Transition) -> Vec<ImagingResult> {
    tr.actions
        .iter()
        .filter_map(|a| match a {
            Action::NotifyRequest { result, .. } => Some(*result),
            _ => None,
        })
        .collect()
}

fn image_event(request: Option<u64>, has_agent: bool) -> Event {
    Event::PleaseImage {
        image: img("b2g"),
        boot_config: "{\"b2gbase\":\"x\"}".into(),
        has_agent,
        request,
    }
}

fn logs(tr: &Transition) -> String {
    tr.log.join("\n")
}

// ---------------------------------------------------------------- flows

#[test]
fn new_device_self_tests_by_ping_into_ready() {
    let s = Snapshot::new_device(T0, true, &t());
    assert_eq!(s.deadline, Some(T0));
    let tr = timeout(&s);
    assert_eq!(tr.next.state, S::PcPowerCycling);
    assert_eq!(tr.actions, vec![Action::PowerCycle]);
    assert_eq!(tr.next.purpose, Purpose::SelfTest);
    assert!(tr.next.generation > s.generation);
    let tr = go(
        &tr.next,
        Event::PowerCycleOk {
            generation: g(&tr.next),
        },
    );
    assert_eq!(tr.next.state, S::PcRebooting);
    assert!(tr.actions.is_empty());
    assert_eq!(
        tr.next.deadline,
        Some(tr.next.entered_at.plus(Duration::from_secs(120)))
    );
    let tr = timeout(&tr.next);
    assert_eq!(tr.next.state, S::PcPinging);
    assert_eq!(tr.actions, vec![Action::Ping]);
    let tr = go(
        &tr.next,
        Event::PingOk {
            generation: g(&tr.next),
        },
    );
    assert_eq!(tr.next.state, S::Ready);
    assert!(tr.actions.is_empty(), "a self-test reports nothing");
    assert!(tr.log.iter().any(|l| l.contains("self-test passed")));
    assert_eq!(
        tr.next.deadline,
        Some(tr.next.entered_at.plus(Duration::from_secs(600)))
    );
    assert!(tr.next.is_available());
}

/// Self-test an unheld ready device by relay and ping, back to `ready`.
fn self_tested(s: &Snapshot) -> Snapshot {
    let tr = please_ok(s, Event::PleaseSelfTest);
    let tr = go(
        &tr.next,
        Event::PowerCycleOk {
            generation: g(&tr.next),
        },
    );
    let tr = timeout(&tr.next);
    let tr = go(
        &tr.next,
        Event::PingOk {
            generation: g(&tr.next),
        },
    );
    assert_eq!(tr.next.state, S::Ready);
    tr.next
}

#[test]
fn hold_hands_over_only_a_device_verified_since_its_last_use() {
    let hold = |request| Event::Hold { request };
    // Forced or restored into ready: nothing proves it was verified.
    let unproven = at(S::Ready, true, false);
    let r = step(&unproven, hold(1), T0, &t()).expect_err("not verified");
    assert!(r.reason.contains("not rebooted and verified"), "{r}");
    // A passed self-test proves it: held at once, no hardware, no idle check while held.
    let clean = self_tested(&unproven);
    assert_eq!(clean.counters.get(counter::VERIFIED_CLEAN), 1);
    let tr = please_ok(&clean, hold(7));
    assert_eq!(tr.next.state, S::Ready);
    assert_eq!(tr.next.request, Some(7));
    assert!(tr.actions.is_empty(), "{:?}", tr.actions);
    assert_eq!(tr.next.deadline, None, "no idle health check while held");
    assert!(logs(&tr).contains("held by request 7"), "{}", logs(&tr));
    // Used: a second hold is refused, and so is one after the release (not rebooted since).
    assert!(step(&tr.next, hold(8), T0, &t()).is_err());
    let released = go(&tr.next, Event::Release { request: 7 }).next;
    assert_eq!(released.request, None);
    let r = step(&released, hold(8), T0, &t()).expect_err("used since");
    assert!(r.reason.contains("not rebooted and verified"), "{r}");
    // The self-test after the release makes it clean again.
    assert!(step(&self_tested(&released), hold(8), T0, &t()).is_ok());
    // A passed idle health check keeps it clean; one in flight blocks the hold.
    let check = timeout(&clean);
    assert_eq!(check.actions, vec![Action::HealthCheck { agent: false }]);
    let r = step(&check.next, hold(9), T0, &t()).expect_err("check in flight");
    assert!(r.reason.contains("health check"), "{r}");
    let checked = go(
        &check.next,
        Event::HealthCheckOk {
            generation: g(&check.next),
        },
    )
    .next;
    assert!(step(&checked, hold(9), T0, &t()).is_ok());
    // An operation for a request leaves it unclean; one without a request leaves it clean.
    let held_image = please_ok(&clean, image_event(Some(3), false)).next;
    assert_eq!(held_image.counters.get(counter::VERIFIED_CLEAN), 0);
    // A conditional state change into ready proves nothing.
    let forced = force(&clean, "ready", "ready", T0, &t())
        .expect("forced")
        .next;
    assert!(step(&forced, hold(10), T0, &t()).is_err());
    // Busy or failed devices are refused like any please event.
    for st in [S::PcPowerCycling, S::FailedPinging, S::MaintenanceMode] {
        let mut s = at(st, true, false);
        s.counters.set(counter::VERIFIED_CLEAN, 1);
        assert!(step(&s, hold(11), T0, &t()).is_err(), "{st}");
    }
}

#[test]
fn sut_image_self_test_verifies_through_sut_and_sdcard() {
    let s = at(S::Troubleshooting, true, true);
    let tr = please_ok(&s, Event::PleaseSelfTest);
    assert_eq!(
        tr.next.state,
        S::PcPowerCycling,
        "self-test uses the relay when wired"
    );
    let tr = go(
        &tr.next,
        Event::PowerCycleOk {
            generation: g(&tr.next),
        },
    );
    let tr = timeout(&tr.next);
    assert_eq!(tr.next.state, S::SutVerifying);
    assert_eq!(tr.actions, vec![Action::SutVerify]);
    let tr = go(
        &tr.next,
        Event::SutVerifyOk {
            generation: g(&tr.next),
        },
    );
    assert_eq!(tr.next.state, S::SutSdcardVerifying);
    assert_eq!(tr.actions, vec![Action::SutSdcardCheck]);
    let tr = go(
        &tr.next,
        Event::SutSdcardOk {
            generation: g(&tr.next),
        },
    );
    assert_eq!(tr.next.state, S::Ready);
}

#[test]
fn imaging_flow_flashes_verifies_promotes_and_reports_complete() {
    let s = at(S::Ready, true, false);
    let tr = please_ok(&s, image_event(Some(7), true));
    assert_eq!(tr.next.state, S::Flashing);
    assert_eq!(tr.next.request, Some(7));
    assert_eq!(
        tr.actions,
        vec![Action::Flash {
            image: img("b2g"),
            boot_config: "{\"b2gbase\":\"x\"}".into()
        }]
    );
    assert_eq!(tr.next.current_image, None, "being overwritten");
    assert!(tr.log.iter().any(|l| l.contains("start_flash")));
    let tr = go(
        &tr.next,
        Event::FlashOk {
            generation: g(&tr.next),
        },
    );
    assert_eq!(tr.next.state, S::FlashRebooting);
    assert_eq!(tr.next.current_image, Some(img("b2g")));
    assert!(tr.next.current_has_agent);
    let tr = timeout(&tr.next);
    assert_eq!(tr.next.state, S::SutVerifying, "new image has SUTAgent");
    let tr = go(
        &tr.next,
        Event::SutVerifyOk {
            generation: g(&tr.next),
        },
    );
    let tr = go(
        &tr.next,
        Event::SutSdcardOk {
            generation: g(&tr.next),
        },
    );
    assert_eq!(tr.next.state, S::Ready);
    assert_eq!(
        tr.actions,
        vec![Action::NotifyRequest {
            request: 7,
            result: ImagingResult::Complete
        }]
    );
    assert!(tr.log.iter().any(|l| l.contains("operation_complete")));
    assert_eq!(tr.next.next_image, None);
    assert_eq!(tr.next.current_boot_config, "{\"b2gbase\":\"x\"}");
    assert_eq!(tr.next.deadline, None, "held: no idle checks");
    assert!(!tr.next.is_available());
}

#[test]
fn imaging_ping_image_verifies_by_ping() {
    let s = at(S::Ready, true, true);
    let tr = please_ok(&s, image_event(None, false));
    let tr = go(
        &tr.next,
        Event::FlashOk {
            generation: g(&tr.next),
        },
    );
    let tr = timeout(&tr.next);
    assert_eq!(tr.next.state, S::PcPinging);
    let tr = go(
        &tr.next,
        Event::PingOk {
            generation: g(&tr.next),
        },
    );
    assert_eq!(tr.next.state, S::Ready);
    assert!(tr.actions.is_empty(), "no request attached");
    assert!(!tr.next.current_has_agent);
}

#[test]
fn please_image_in_ready_respects_the_holder() {
    let mut s = at(S::Ready, true, false);
    s.request = Some(5);
    s.deadline = None;
    let e = step(&s, image_event(Some(6), false), T0, &t()).expect_err("other request");
    assert_eq!(e.state, S::Ready);
    assert!(e.reason.contains("held by request 5"), "{e}");
    assert!(step(&s, image_event(None, false), T0, &t()).is_err());
    let tr = please_ok(&s, image_event(Some(5), false));
    assert_eq!(tr.next.state, S::Flashing);
    let free = at(S::Ready, true, false);
    let tr = please_ok(&free, image_event(None, false));
    assert_eq!(tr.next.request, None);
}

#[test]
fn please_reboot_is_soft_first_with_relay_fallback() {
    let s = at(S::Ready, true, true);
    let tr = please_ok(&s, Event::PleaseReboot);
    assert_eq!(tr.next.state, S::PcSutRebooting);
    assert_eq!(tr.actions, vec![Action::SutReboot]);
    let ok = go(
        &tr.next,
        Event::SutRebootOk {
            generation: g(&tr.next),
        },
    );
    assert_eq!(ok.next.state, S::PcRebooting);
    let fail = go(
        &tr.next,
        Event::SutRebootFailed {
            generation: g(&tr.next),
            reason: "refused".into(),
        },
    );
    assert_eq!(fail.next.state, S::PcPowerCycling);
    assert_eq!(fail.actions, vec![Action::PowerCycle]);
    let to = timeout(&tr.next);
    assert_eq!(to.next.state, S::PcPowerCycling);
    // Without SUTAgent, a reboot is a relay power cycle.
    let tr = please_ok(&at(S::Ready, true, false), Event::PleaseReboot);
    assert_eq!(tr.next.state, S::PcPowerCycling);
}

#[test]
fn please_power_cycle_is_relay_and_reports_complete() {
    let mut s = at(S::Ready, true, true);
    s.request = Some(3);
    s.next_image = Some(NextImage {
        image: img("stale"),
        boot_config: String::new(),
        has_agent: false,
    });
    let tr = please_ok(&s, Event::PleasePowerCycle);
    assert_eq!(tr.next.state, S::PcPowerCycling);
    assert_eq!(tr.next.next_image, None);
    let tr = go(
        &tr.next,
        Event::PowerCycleOk {
            generation: g(&tr.next),
        },
    );
    let tr = timeout(&tr.next);
    let tr = go(
        &tr.next,
        Event::SutVerifyOk {
            generation: g(&tr.next),
        },
    );
    let tr = go(
        &tr.next,
        Event::SutSdcardOk {
            generation: g(&tr.next),
        },
    );
    assert_eq!(tr.next.state, S::Ready);
    assert_eq!(notes(&tr), vec![ImagingResult::Complete]);
    assert_eq!(tr.next.current_image, Some(img("android")));
}

#[test]
fn no_relay_wiring() {
    // With SUTAgent: soft reboot only.
    let s = at(S::Ready, false, true);
    let tr = please_ok(&s, Event::PleasePowerCycle);
    assert_eq!(tr.next.state, S::PcSutRebooting);
    // Without: straight to failed_power_cycling, saying why.
    let s = at(S::Ready, false, false);
    let tr = please_ok(&s, Event::PleasePowerCycle);
    assert_eq!(tr.next.state, S::FailedPowerCycling);
    assert!(logs(&tr).contains("no relay wiring"));
    assert!(tr.actions.is_empty());
    // Self-test and flashing need the relay too.
    let tr = please_ok(&s, Event::PleaseSelfTest);
    assert_eq!(tr.next.state, S::FailedPowerCycling);
    let tr = please_ok(&at(S::Ready, false, true), image_event(None, true));
    assert_eq!(tr.next.state, S::FailedPowerCycling);
    assert!(logs(&tr).contains("no relay wiring"));
    // Soft reboot failures are bounded.
    let mut s = please_ok(&at(S::Ready, false, true), Event::PleaseReboot).next;
    for i in 1..=3 {
        s = go(
            &s,
            Event::SutRebootFailed {
                generation: g(&s),
                reason: "x".into(),
            },
        )
        .next;
        assert_eq!(s.state, S::PcSutRebooting, "retry {i}");
        assert_eq!(s.counters.get(counter::SUT_REBOOTING), i);
    }
    let tr = timeout(&s);
    assert_eq!(tr.next.state, S::FailedPowerCycling);
    // SUT verification power cycles become soft reboots.
    let s = at(S::SutVerifyPowerCycle, false, true);
    let tr = go(&s, Event::Timeout { generation: g(&s) });
    assert_eq!(tr.actions, vec![Action::SutReboot]);
    let tr = go(
        &tr.next,
        Event::SutRebootOk {
            generation: g(&tr.next),
        },
    );
    assert_eq!(tr.next.state, S::SutVerifying);
    // Power-off is refused up front.
    let e =
        step(&at(S::Ready, false, true), Event::PleasePowerOff, T0, &t()).expect_err("no relay");
    assert!(e.reason.contains("no relay wiring"));
}

#[test]
fn power_off_and_on() {
    let s = at(S::Ready, true, false);
    let tr = please_ok(&s, Event::PleasePowerOff);
    assert_eq!(tr.next.state, S::PoweringOff);
    assert_eq!(tr.actions, vec![Action::PowerOff]);
    let tr = go(
        &tr.next,
        Event::PowerOffOk {
            generation: g(&tr.next),
        },
    );
    assert_eq!(tr.next.state, S::Off);
    assert_eq!(tr.next.deadline, None);
    assert!(tr.next.state.is_out_of_service());
    let off = tr.next;
    assert!(step(&off, Event::PleasePowerOff, T0, &t()).is_err());
    assert!(step(&off, Event::PleasePowerCycle, T0, &t()).is_err());
    let tr = please_ok(&off, Event::PleasePowerOn);
    assert_eq!(tr.next.state, S::PcPowerCycling);
    assert_eq!(tr.next.purpose, Purpose::SelfTest);
    let tr = please_ok(&off, Event::PleaseSelfTest);
    assert_eq!(tr.next.state, S::PcPowerCycling);
    let mut held = at(S::Ready, true, false);
    held.request = Some(1);
    let e = step(&held, Event::PleasePowerOff, T0, &t()).expect_err("held");
    assert!(e.reason.contains("held by request 1"));
    assert!(step(&at(S::Ready, true, false), Event::PleasePowerOn, T0, &t()).is_err());
}

#[test]
fn maintenance_mode_round_trip() {
    let s = at(S::Ready, true, false);
    let tr = please_ok(&s, Event::PleaseStartMaintenance);
    assert_eq!(tr.next.state, S::MaintenanceMode);
    assert!(tr.actions.is_empty());
    assert_eq!(tr.next.deadline, None);
    assert!(logs(&tr).contains("start_maintenance"));
    let m = tr.next;
    for e in [
        Event::PleasePowerCycle,
        Event::PleaseReboot,
        image_event(None, false),
        Event::PleasePowerOn,
    ] {
        let err = step(&m, e, T0, &t()).expect_err("refused in maintenance");
        assert!(err.reason.contains("maintenance"), "{err}");
    }
    let tr = please_ok(&m, Event::PleaseEndMaintenance);
    assert_eq!(tr.next.state, S::PcPowerCycling);
    assert_eq!(tr.next.purpose, Purpose::SelfTest);
    assert!(step(&s, Event::PleaseEndMaintenance, T0, &t()).is_err());
}

#[test]
fn idle_health_checks() {
    let s = at(S::Ready, true, true);
    let tr = timeout(&s);
    assert_eq!(tr.next.state, S::Ready);
    assert_eq!(tr.actions, vec![Action::HealthCheck { agent: true }]);
    assert_eq!(tr.next.generation, s.generation + 1);
    let checking = tr.next;
    let ok = go(
        &checking,
        Event::HealthCheckOk {
            generation: g(&checking),
        },
    );
    assert_eq!(ok.next.state, S::Ready);
    assert_eq!(ok.next.generation, checking.generation);
    assert_eq!(ok.next.deadline, checking.deadline);
    assert_eq!(ok.next.counters.get(counter::HEALTH_CHECK_IN_FLIGHT), 0);
    let again = timeout(&ok.next);
    assert_eq!(again.actions, vec![Action::HealthCheck { agent: true }]);
    let bad = go(
        &checking,
        Event::HealthCheckFailed {
            generation: g(&checking),
            reason: "no agent".into(),
        },
    );
    assert_eq!(bad.next.state, S::PcPowerCycling);
    assert_eq!(bad.next.purpose, Purpose::SelfTest);
    assert_eq!(bad.next.counters.get(counter::HEALTH_CHECK_FAILURES), 1);
    // A check that never answers counts as failed at the next timeout.
    let silent = timeout(&checking);
    assert_eq!(silent.next.state, S::PcPowerCycling);
    assert!(logs(&silent).contains("never answered"));
    // Ping image: ping check.
    let tr = timeout(&at(S::Ready, true, false));
    assert_eq!(tr.actions, vec![Action::HealthCheck { agent: false }]);
    // Held: no checks at all.
    let mut held = at(S::Ready, true, true);
    held.request = Some(9);
    held.deadline = None;
    let tr = go(
        &held,
        Event::Timeout {
            generation: g(&held),
        },
    );
    assert!(tr.is_noop(&held));
}

#[test]
fn health_check_loop_is_bounded() {
    // A device that passes every self-test but fails every idle check ends in
    // failed_health_check (the original cycled forever, §9.12).
    let mut s = at(S::Ready, true, false);
    let mut events = 0;
    while s.state != S::FailedHealthCheck {
        assert!(events < 100, "unbounded: {s:?}");
        events += 1;
        s = match s.state {
            S::Ready => {
                let chk = timeout(&s).next;
                go(
                    &chk,
                    Event::HealthCheckFailed {
                        generation: g(&chk),
                        reason: "x".into(),
                    },
                )
                .next
            }
            S::PcPowerCycling => go(&s, Event::PowerCycleOk { generation: g(&s) }).next,
            S::PcRebooting => timeout(&s).next,
            S::PcPinging => go(&s, Event::PingOk { generation: g(&s) }).next,
            other => panic!("unexpected {other}"),
        };
    }
    assert_eq!(
        s.counters.get(counter::HEALTH_CHECK_FAILURES),
        t().max_health_check_failures + 1
    );
    // A human's please event resets the budget.
    let tr = please_ok(&s, Event::PleaseSelfTest);
    assert_eq!(tr.next.counters.get(counter::HEALTH_CHECK_FAILURES), 0);
}

#[test]
fn release_detaches_and_rearms_checks() {
    let mut s = at(S::Ready, true, false);
    s.request = Some(4);
    s.deadline = None;
    let tr = step(&s, Event::Release { request: 5 }, T0, &t()).expect("never refused");
    assert!(tr.is_noop(&s));
    let tr = step(&s, Event::Release { request: 4 }, T0, &t()).expect("never refused");
    assert_eq!(tr.next.request, None);
    assert_eq!(tr.next.deadline, Some(T0.plus(Duration::from_secs(600))));
    // Elsewhere the request is dropped without disturbing the work in flight.
    let mut f = at(S::Flashing, true, false);
    f.request = Some(4);
    let tr = step(&f, Event::Release { request: 4 }, T0, &t()).expect("never refused");
    assert_eq!(tr.next.request, None);
    assert_eq!(tr.next.generation, f.generation);
    assert_eq!(tr.next.deadline, f.deadline);
}

// ---------------------------------------------------------------- refusals

fn all_please() -> Vec<Event> {
    vec![
        Event::PleasePowerCycle,
        Event::PleaseReboot,
        Event::PleasePowerOff,
        Event::PleasePowerOn,
        image_event(None, false),
        Event::PleaseSelfTest,
        Event::PleaseStartMaintenance,
        Event::PleaseEndMaintenance,
    ]
}

#[test]
fn please_acceptance_matrix() {
    // Independent statement of which (state, event) pairs are accepted for an unheld device
    // with relay wiring.
    let full = ["new", "unknown", "troubleshooting", "ready"];
    let failed = [
        "failed_power_cycling",
        "failed_powering_off",
        "failed_flashing",
        "failed_pinging",
        "failed_sut_verifying",
        "failed_sut_sdcard_verifying",
        "failed_self_test",
        "failed_health_check",
    ];
    for &st in S::ALL {
        let n = st.name();
        let is_full = full.contains(&n);
        let is_failed = failed.contains(&n);
        let basic = is_full || is_failed || n == "maintenance_mode" || n == "off";
        for e in all_please() {
            let expected = match e.name() {
                "please_power_cycle" | "please_reboot" | "please_image" => is_full,
                "please_self_test" | "please_start_maintenance" => basic,
                "please_end_maintenance" => n == "maintenance_mode",
                "please_power_on" => n == "off",
                "please_power_off" => is_full || is_failed || n == "maintenance_mode",
                other => panic!("{other}"),
            };
            let s = at(st, true, false);
            let r = step(&s, e.clone(), T0, &t());
            assert_eq!(r.is_ok(), expected, "{} in {n}: {r:?}", e.name());
            if let Err(refused) = r {
                assert_eq!(refused.state, st);
                assert_eq!(refused.event, e.name());
                assert!(!refused.reason.is_empty());
                if st.is_in_progress() {
                    assert!(refused.reason.contains("busy"), "{refused}");
                }
                if st == S::LockedOut {
                    assert!(refused.reason.contains("locked out"), "{refused}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------- generations

fn result_events(generation: u64) -> Vec<Event> {
    let r = || "x".to_string();
    vec![
        Event::Timeout { generation },
        Event::PowerCycleOk { generation },
        Event::PowerCycleFailed {
            generation,
            reason: r(),
        },
        Event::PowerOffOk { generation },
        Event::PowerOffFailed {
            generation,
            reason: r(),
        },
        Event::SutRebootOk { generation },
        Event::SutRebootFailed {
            generation,
            reason: r(),
        },
        Event::PingOk { generation },
        Event::PingFailed {
            generation,
            reason: r(),
        },
        Event::SutVerifyOk { generation },
        Event::SutVerifyFailed {
            generation,
            reason: r(),
        },
        Event::SutSdcardOk { generation },
        Event::SutSdcardFailed {
            generation,
            reason: r(),
        },
        Event::FlashOk { generation },
        Event::FlashFailed {
            generation,
            bad_image: false,
            reason: r(),
        },
        Event::FlashFailed {
            generation,
            bad_image: true,
            reason: r(),
        },
        Event::HealthCheckOk { generation },
        Event::HealthCheckFailed {
            generation,
            reason: r(),
        },
    ]
}

#[test]
fn late_results_are_ignored_in_every_state() {
    for &st in S::ALL {
        let s = at(st, true, true);
        for stale in [s.generation - 1, s.generation + 1, 0] {
            for e in result_events(stale) {
                let far = Millis(u64::MAX);
                let tr = step(&s, e.clone(), far, &t()).expect("never refused");
                assert!(tr.is_noop(&s), "{} in {st}", e.name());
                assert!(
                    tr.log.iter().any(|l| l.contains("ignored late result")),
                    "{:?}",
                    tr.log
                );
            }
        }
    }
}

#[test]
fn unexpected_results_are_ignored_and_logged() {
    // Each state reacts to its own results only; everything else leaves it alone.
    let reacts: &[(DeviceState, &[&str])] = &[
        (S::PcPowerCycling, &["power_cycle_ok", "power_cycle_failed"]),
        (S::PcSutRebooting, &["sut_reboot_ok", "sut_reboot_failed"]),
        (
            S::SutVerifyPowerCycle,
            &[
                "power_cycle_ok",
                "power_cycle_failed",
                "sut_reboot_ok",
                "sut_reboot_failed",
            ],
        ),
        (S::PcPinging, &["ping_ok"]),
        (S::SutVerifying, &["sut_verify_ok"]),
        (
            S::SutSdcardVerifying,
            &["sut_sdcard_ok", "sut_sdcard_failed"],
        ),
        (S::Flashing, &["flash_ok", "flash_failed"]),
        (S::PoweringOff, &["power_off_ok", "power_off_failed"]),
        (S::Ready, &["health_check_failed"]),
    ];
    for &st in S::ALL {
        if st.is_transient() {
            continue;
        }
        let s = at(st, true, true);
        let own: &[&str] = reacts
            .iter()
            .find(|(x, _)| *x == st)
            .map_or(&[], |(_, v)| v);
        for e in result_events(s.generation) {
            if e.name() == "timeout" {
                continue;
            }
            let name = e.name();
            let tr = step(&s, e, T0, &t()).expect("never refused");
            if own.contains(&name) {
                assert_ne!(tr.next.generation, s.generation, "{name} in {st}");
            } else {
                assert_eq!(tr.next.state, st, "{name} in {st}");
                assert_eq!(tr.next.generation, s.generation, "{name} in {st}");
                assert!(tr.actions.is_empty(), "{name} in {st}");
            }
        }
    }
}

#[test]
fn early_and_deadline_less_timeouts_are_ignored() {
    let s = at(S::PcPowerCycling, true, false);
    let tr = step(&s, Event::Timeout { generation: g(&s) }, T0, &t()).expect("ok");
    assert!(tr.is_noop(&s));
    assert!(logs(&tr).contains("early timeout"));
    let m = at(S::MaintenanceMode, true, false);
    let tr = step(
        &m,
        Event::Timeout { generation: g(&m) },
        Millis(u64::MAX),
        &t(),
    )
    .expect("ok");
    assert!(tr.is_noop(&m));
}

#[test]
fn every_reentry_bumps_the_generation_and_orphans_old_results() {
    let s = at(S::PcPowerCycling, true, false);
    let tr = go(
        &s,
        Event::PowerCycleFailed {
            generation: g(&s),
            reason: "board busy".into(),
        },
    );
    assert_eq!(tr.next.state, S::PcPowerCycling);
    assert_eq!(tr.next.generation, s.generation + 1);
    assert_eq!(tr.actions, vec![Action::PowerCycle]);
    // The first attempt's success arriving late is ignored.
    let late = go(&tr.next, Event::PowerCycleOk { generation: g(&s) });
    assert!(late.is_noop(&tr.next));
    assert!(logs(&late).contains("ignored late result"));
}

// ---------------------------------------------------------------- counter limits

fn fail_n(mut s: Snapshot, n: u32, ev: impl Fn(u64) -> Event) -> Snapshot {
    for _ in 0..n {
        let e = ev(s.generation);
        s = go(&s, e).next;
    }
    s
}

#[test]
fn power_cycling_limit() {
    let s = please_ok(&at(S::Ready, true, false), Event::PleasePowerCycle).next;
    let pc = |generation| Event::PowerCycleFailed {
        generation,
        reason: "x".into(),
    };
    let s = fail_n(s, 200, pc);
    assert_eq!(s.state, S::PcPowerCycling);
    let tr = go(&s, pc(s.generation));
    assert_eq!(tr.next.state, S::FailedPowerCycling);
    assert!(tr.actions.is_empty(), "not retried by self-test");
    // Timeouts count the same.
    let mut s = please_ok(&at(S::Ready, true, false), Event::PleasePowerCycle).next;
    for _ in 0..201 {
        s = timeout(&s).next;
    }
    assert_eq!(s.state, S::FailedPowerCycling);
}

#[test]
fn pinging_rounds_are_bounded_and_self_tests_are_bounded() {
    // §9.12: pc_pinging <-> pc_power_cycling must end. A device whose relay works but
    // which never answers ping.
    let mut s = please_ok(&at(S::Ready, true, false), Event::PleasePowerCycle).next;
    let mut pings_in_round = 0;
    let mut rounds = 0;
    let mut self_tests = 0;
    let mut events = 0;
    loop {
        events += 1;
        assert!(events < 1000);
        let tr = match s.state {
            S::PcPowerCycling => go(&s, Event::PowerCycleOk { generation: g(&s) }),
            S::PcRebooting => timeout(&s),
            S::PcPinging => {
                pings_in_round += 1;
                timeout(&s)
            }
            S::FailedSelfTest => break,
            other => panic!("unexpected {other}"),
        };
        if s.state == S::PcPinging && tr.next.state != S::PcPinging {
            assert_eq!(pings_in_round, 13, "12 retries then a new round");
            pings_in_round = 0;
            rounds += 1;
        }
        if logs(&tr).contains("device has failed: failed_pinging") {
            self_tests += 1;
            assert_eq!(rounds, 4, "3 power-cycle rounds then failure");
            rounds = 0;
        }
        s = tr.next;
    }
    assert_eq!(self_tests, 4, "first failure + 3 automatic self-tests");
    assert_eq!(s.counters.get(counter::SELF_TEST_RETRIES), 3);
    assert_eq!(s.deadline, None);
    // Stays there: nothing more happens on its own.
    assert!(resume(&s, Millis(u64::MAX), &t()).is_noop(&s));
}

#[test]
fn pinging_without_relay_fails_after_one_round() {
    let mut s = at(S::PcPinging, false, false);
    for _ in 0..12 {
        s = timeout(&s).next;
        assert_eq!(s.state, S::PcPinging);
    }
    let tr = timeout(&s);
    assert!(logs(&tr).contains("failed_pinging"), "{:?}", tr.log);
    assert!(logs(&tr).contains("no relay wiring"));
}

#[test]
fn flashing_limit_and_bad_image() {
    let mut s = please_ok(&at(S::Ready, true, false), image_event(Some(2), false)).next;
    for i in 1..=3 {
        let tr = go(
            &s,
            Event::FlashFailed {
                generation: g(&s),
                bad_image: false,
                reason: "usb".into(),
            },
        );
        assert_eq!(tr.next.state, S::Flashing, "retry {i}");
        assert_eq!(hw(&tr).len(), 1);
        s = tr.next;
    }
    let tr = timeout(&s);
    assert!(logs(&tr).contains("device has failed: failed_flashing"));
    assert_eq!(notes(&tr), vec![ImagingResult::FailedBadDevice]);
    assert_eq!(tr.next.state, S::PcPowerCycling, "retried by self-test");
    assert_eq!(tr.next.next_image, None);

    let s = please_ok(&at(S::Ready, true, false), image_event(Some(2), false)).next;
    let tr = go(
        &s,
        Event::FlashFailed {
            generation: g(&s),
            bad_image: true,
            reason: "FAILED (remote: 'Partition not found')".into(),
        },
    );
    assert_eq!(tr.next.state, S::FailedFlashing);
    assert_eq!(notes(&tr), vec![ImagingResult::FailedBadImage]);
    assert!(hw(&tr).is_empty());
    assert!(logs(&tr).contains("Partition not found"));
}

#[test]
fn sut_verifying_limits() {
    let mut s = at(S::SutVerifying, true, true);
    let mut power_cycles = 0;
    let mut events = 0;
    while !s.state.is_failed() && s.state != S::PcPowerCycling {
        events += 1;
        assert!(events < 200);
        s = match s.state {
            S::SutVerifying => timeout(&s).next,
            S::SutVerifyPowerCycle => {
                power_cycles += 1;
                go(&s, Event::PowerCycleOk { generation: g(&s) }).next
            }
            other => panic!("{other}"),
        };
    }
    // 31 timeouts, a power cycle on the 10th, 20th and 30th, then failure → self-test.
    assert_eq!(power_cycles, 3);
    assert_eq!(s.state, S::PcPowerCycling);
    assert_eq!(s.counters.get(counter::SELF_TEST_RETRIES), 1);

    let s = at(S::SutVerifyPowerCycle, true, true);
    let pcf = |generation| Event::PowerCycleFailed {
        generation,
        reason: "x".into(),
    };
    let s3 = fail_n(s, 3, pcf);
    assert_eq!(s3.state, S::SutVerifyPowerCycle);
    let tr = timeout(&s3);
    assert!(logs(&tr).contains("device has failed: failed_sut_verifying"));
}

#[test]
fn sdcard_and_power_off_limits() {
    let s = at(S::SutSdcardVerifying, true, true);
    let f = |generation| Event::SutSdcardFailed {
        generation,
        reason: "x".into(),
    };
    let s2 = fail_n(s, 2, f);
    assert_eq!(s2.state, S::SutSdcardVerifying);
    let tr = timeout(&s2);
    assert!(logs(&tr).contains("device has failed: failed_sut_sdcard_verifying"));

    let s = at(S::PoweringOff, true, false);
    let f = |generation| Event::PowerOffFailed {
        generation,
        reason: "x".into(),
    };
    let s3 = fail_n(s, 3, f);
    assert_eq!(s3.state, S::PoweringOff);
    let tr = timeout(&s3);
    assert_eq!(tr.next.state, S::FailedPoweringOff);
}

#[test]
fn failures_report_bad_device_once_and_keep_failing_states_quiet() {
    let mut s = at(S::SutSdcardVerifying, true, true);
    s.request = Some(11);
    s.counters.set(counter::SUT_SDCARD_VERIFYING, 2);
    s.counters.set(counter::SELF_TEST_RETRIES, 3);
    s.purpose = Purpose::SelfTest;
    let tr = timeout(&s);
    assert_eq!(tr.next.state, S::FailedSelfTest);
    assert_eq!(
        tr.actions,
        vec![Action::NotifyRequest {
            request: 11,
            result: ImagingResult::FailedBadDevice
        }]
    );
    // Operation (not self-test) with no retries left: stays in the phase's failure state.
    s.purpose = Purpose::Operation;
    let tr = timeout(&s);
    assert_eq!(tr.next.state, S::FailedSutSdcardVerifying);
    assert_eq!(tr.next.deadline, None);
}

// ---------------------------------------------------------------- force

#[test]
fn force_is_conditional() {
    let s = at(S::LockedOut, true, false);
    assert_eq!(
        force(&s, "ready", "unknown", T0, &t()),
        Err(ForceError::Conflict {
            current: S::LockedOut
        })
    );
    assert!(matches!(
        force(&s, "locked_out", "pxe_booting", T0, &t()),
        Err(ForceError::UnknownState(_))
    ));
    assert!(matches!(
        force(&s, "bogus", "ready", T0, &t()),
        Err(ForceError::UnknownState(_))
    ));
    let tr = force(&s, "locked_out", "ready", T0, &t()).expect("allowed");
    assert_eq!(tr.next.state, S::Ready);
    assert_eq!(tr.next.deadline, Some(T0.plus(Duration::from_secs(600))));
    assert!(logs(&tr).contains("conditional state change"));
}

#[test]
fn force_runs_entry_actions_and_resolves_transients() {
    let mut s = at(S::FailedSutVerifying, true, false);
    s.counters.set(counter::SELF_TEST_RETRIES, 2);
    let tr = force(&s, "failed_sut_verifying", "pc_power_cycling", T0, &t()).expect("ok");
    assert_eq!(tr.actions, vec![Action::PowerCycle]);
    assert_eq!(tr.next.counters, Counters::default());
    let tr = force(&s, "failed_sut_verifying", "start_self_test", T0, &t()).expect("ok");
    assert_eq!(tr.next.state, S::PcPowerCycling);
    let tr = force(&s, "failed_sut_verifying", "operation_complete", T0, &t()).expect("ok");
    assert_eq!(tr.next.state, S::Ready);
    let tr = force(&s, "failed_sut_verifying", "flashing", T0, &t()).expect("ok");
    assert!(
        logs(&tr).contains("device has failed: failed_flashing"),
        "nothing to flash"
    );
    let tr = force(&s, "failed_sut_verifying", "locked_out", T0, &t()).expect("ok");
    assert_eq!(tr.next.state, S::LockedOut);
    assert!(tr.actions.is_empty());
    // Every target: never rests in a transient state, in-flight states have deadlines.
    for &to in S::ALL {
        for power in [false, true] {
            let s = at(S::Unknown, power, true);
            let tr = force(&s, "unknown", to.name(), T0, &t()).expect("ok");
            check_invariants(&s, &tr);
        }
    }
}

// ---------------------------------------------------------------- resume

#[test]
fn resume_from_every_state() {
    for &st in S::ALL {
        for power in [false, true] {
            let s = at(st, power, true);
            // Before the deadline.
            let tr = resume(&s, T0, &t());
            check_invariants(&s, &tr);
            if st.has_hardware_in_flight() {
                assert!(tr.next.generation > s.generation, "{st} re-entered");
                if st == S::Flashing {
                    assert!(logs(&tr).contains("mid-flash"));
                    if power {
                        assert!(matches!(hw(&tr)[..], [Action::Flash { .. }]));
                    }
                }
            } else if st.is_transient() {
                assert!(!tr.next.state.is_transient());
            } else if st == S::New {
                // deadline 0: due at once
                assert_eq!(tr.next.purpose, Purpose::SelfTest);
            } else {
                assert!(tr.is_noop(&s) || st == S::Ready, "{st}: {:?}", tr.log);
                assert!(tr.actions.is_empty(), "{st}");
            }
            // After the deadline: times out.
            if let Some(d) = s.deadline {
                let tr = resume(&s, d.plus(Duration::from_secs(1)), &t());
                check_invariants(&s, &tr);
                assert!(logs(&tr).contains("deadline passed"), "{st}");
                assert_ne!(tr.next.generation, s.generation, "{st} timed out");
            }
        }
    }
    // A lost health check is forgotten.
    let chk = timeout(&at(S::Ready, true, true)).next;
    let tr = resume(&chk, T0, &t());
    assert_eq!(tr.next.counters.get(counter::HEALTH_CHECK_IN_FLIGHT), 0);
    assert_eq!(tr.next.deadline, chk.deadline);
    // ... also when the deadline passed meanwhile: a restart is not a failed check.
    let tr = resume(&chk, chk.deadline.expect("armed"), &t());
    assert_eq!(tr.actions, vec![Action::HealthCheck { agent: true }]);
    assert_eq!(tr.next.counters.get(counter::HEALTH_CHECK_FAILURES), 0);
    // A missing deadline is restored.
    let mut s = at(S::PcRebooting, true, false);
    s.deadline = None;
    let tr = resume(&s, T0, &t());
    assert!(tr.next.deadline.is_some());
}

// ---------------------------------------------------------------- persistence

#[test]
fn snapshot_round_trips_through_postcard_and_json() {
    let mut s = at(S::Flashing, true, true);
    s.request = Some(42);
    s.counters.increment(counter::FLASHING);
    s.purpose = Purpose::SelfTest;
    let bytes = postcard::to_allocvec(&s).expect("encode");
    let back: Snapshot = postcard::from_bytes(&bytes).expect("decode");
    assert_eq!(back, s);
    let json = serde_json::to_string(&s).expect("json");
    assert!(json.contains("\"state\":\"flashing\""), "{json}");
    let back: Snapshot = serde_json::from_str(&json).expect("json decode");
    assert_eq!(back, s);
    let r = serde_json::to_string(&ImagingResult::FailedBadImage).expect("json");
    assert_eq!(r, "\"failed-bad-image\"");
    assert_eq!(ImagingResult::FailedBadDevice.as_str(), "failed-bad-device");
}

// ---------------------------------------------------------------- invariants + proptest

/// Invariants every transition satisfies.
fn check_invariants(before: &Snapshot, tr: &Transition) {
    let n = &tr.next;
    assert!(!n.state.is_transient(), "rests in transient {}", n.state);
    if n.state.has_hardware_in_flight() {
        assert!(n.deadline.is_some(), "{} without deadline", n.state);
    }
    let hw = hw(tr);
    assert!(hw.len() <= 1, "overlapping hardware actions {hw:?}");
    if !hw.is_empty() {
        assert!(n.deadline.is_some(), "hardware in flight without deadline");
        assert_ne!(
            n.generation, before.generation,
            "action without a new generation"
        );
    }
    if n.state != before.state {
        assert!(n.generation > before.generation || n.state == S::Unknown);
    }
    if n.state.is_failed() || n.state.is_out_of_service() {
        assert!(
            hw.is_empty() || n.state == S::Ready,
            "{} with {hw:?}",
            n.state
        );
    }
    if n.state == S::Ready && n.request.is_some() {
        assert_eq!(n.deadline, None, "held devices are not checked");
    }
    assert!(!tr.log.is_empty(), "every step logs why");
}

fn counter_limit(t: &Timings, name: &str) -> u32 {
    match name {
        counter::POWER_CYCLING => t.max_power_cycling + 1,
        counter::SUT_REBOOTING => t.max_sut_rebooting + 1,
        counter::PC_PINGING => t.max_pc_pinging,
        counter::PC_ROUNDS => t.max_pc_rounds + 1,
        counter::FLASHING => t.max_flashing + 1,
        counter::SUT_VERIFYING => t.max_sut_verifying + 1,
        counter::SUT_VERIFY_POWER_CYCLE => t.max_sut_verify_power_cycle + 1,
        counter::SUT_SDCARD_VERIFYING => t.max_sut_sdcard_verifying + 1,
        counter::POWERING_OFF => t.max_powering_off + 1,
        counter::HEALTH_CHECK_IN_FLIGHT | counter::VERIFIED_CLEAN => 1,
        counter::SELF_TEST_RETRIES => t.max_self_test_retries,
        counter::HEALTH_CHECK_FAILURES => t.max_health_check_failures + 1,
        other => panic!("unknown counter {other}"),
    }
}

const COUNTERS: &[&str] = &[
    counter::POWER_CYCLING,
    counter::SUT_REBOOTING,
    counter::PC_PINGING,
    counter::PC_ROUNDS,
    counter::FLASHING,
    counter::SUT_VERIFYING,
    counter::SUT_VERIFY_POWER_CYCLE,
    counter::SUT_SDCARD_VERIFYING,
    counter::POWERING_OFF,
    counter::HEALTH_CHECK_IN_FLIGHT,
    counter::VERIFIED_CLEAN,
    counter::SELF_TEST_RETRIES,
    counter::HEALTH_CHECK_FAILURES,
];

mod props {
    use super::*;
    use proptest::prelude::*;

    fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
        (
            0..S::ALL.len(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(1u64..3),
            prop::option::of(any::<bool>()),
            prop::collection::vec((0..COUNTERS.len(), 0u32..250), 0..4),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(si, power, sut, has_image, request, next, counters, self_test, with_deadline)| {
                    // Transient states are never persisted by `step` (resume resolves them).
                    let state = match S::ALL[si] {
                        st if st.is_transient() => S::Unknown,
                        st => st,
                    };
                    let t = t();
                    let mut s = at(state, power, sut);
                    if !has_image {
                        s.current_image = None;
                    }
                    s.request = request;
                    s.next_image = next.map(|has_agent| NextImage {
                        image: img("b2g"),
                        boot_config: String::new(),
                        has_agent,
                    });
                    for (ci, v) in counters {
                        let name = COUNTERS[ci];
                        // Values a resting device can have: limits that are compared with
                        // `>` are at most the limit outside their failure state.
                        let cap = match name {
                            counter::PC_PINGING
                            | counter::HEALTH_CHECK_IN_FLIGHT
                            | counter::SELF_TEST_RETRIES => counter_limit(&t, name),
                            _ => counter_limit(&t, name) - 1,
                        };
                        s.counters.set(name, v.min(cap));
                    }
                    if self_test {
                        s.purpose = Purpose::SelfTest;
                    }
                    if state == S::Ready && s.request.is_some() {
                        s.deadline = None;
                    }
                    if !with_deadline && !state.has_hardware_in_flight() {
                        s.deadline = None;
                    }
                    s
                },
            )
    }

    /// An event template: materialised against the current snapshot (so results can carry
    /// the current generation or a stale one).
    #[derive(Debug, Clone)]
    enum Ev {
        Please(u8, Option<u64>),
        Release(u64),
        Result(usize, bool),
    }

    fn arb_ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (0u8..8, prop::option::of(1u64..3)).prop_map(|(k, r)| Ev::Please(k, r)),
            (1u64..3).prop_map(Ev::Release),
            (0..18usize, prop::bool::weighted(0.8)).prop_map(|(k, cur)| Ev::Result(k, cur)),
        ]
    }

    fn materialise(ev: &Ev, s: &Snapshot) -> Event {
        match ev {
            Ev::Please(k, r) => match k {
                0 => Event::PleasePowerCycle,
                1 => Event::PleaseReboot,
                2 => Event::PleasePowerOff,
                3 => Event::PleasePowerOn,
                4 => image_event(*r, r.is_some()),
                5 => Event::PleaseSelfTest,
                6 => Event::PleaseStartMaintenance,
                _ => Event::PleaseEndMaintenance,
            },
            Ev::Release(r) => Event::Release { request: *r },
            Ev::Result(k, cur) => {
                let generation = if *cur {
                    s.generation
                } else {
                    s.generation.wrapping_sub(1)
                };
                result_events(generation).swap_remove(*k)
            }
        }
    }

    fn check_counters(s: &Snapshot) {
        let t = t();
        for (name, v) in &s.counters.0 {
            assert!(
                *v <= counter_limit(&t, name),
                "counter {name} = {v} in {}",
                s.state
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_event_sequences_keep_the_invariants(
            start in arb_snapshot(),
            evs in prop::collection::vec(arb_ev(), 1..60),
        ) {
            let t = t();
            let mut s = start;
            let mut now = T0;
            for ev in &evs {
                let e = materialise(ev, &s);
                if matches!(e, Event::Timeout { .. }) {
                    if let Some(d) = s.deadline {
                        now = now.max(d);
                    }
                } else {
                    now = now.plus(Duration::from_millis(500));
                }
                let quiet = matches!(
                    s.state,
                    S::MaintenanceMode | S::LockedOut | S::Off | S::Unknown | S::Troubleshooting
                ) || s.state.is_failed();
                let is_please = e.is_please();
                let stale = e.generation().is_some_and(|g| g != s.generation);
                match step(&s, e, now, &t) {
                    Ok(tr) => {
                        check_invariants(&s, &tr);
                        if stale {
                            prop_assert!(tr.is_noop(&s), "stale result acted upon");
                        }
                        if quiet && !is_please {
                            prop_assert!(tr.actions.is_empty(), "{} emitted {:?}", s.state, tr.actions);
                        }
                        check_counters(&tr.next);
                        s = tr.next;
                    }
                    Err(refused) => {
                        prop_assert!(is_please);
                        prop_assert_eq!(refused.state, s.state);
                    }
                }
            }
            let tr = resume(&s, now, &t);
            check_invariants(&s, &tr);
        }

        #[test]
        fn a_device_that_never_answers_ends_failed(
            start in arb_snapshot(),
            choices in prop::collection::vec((0u8..3, any::<bool>()), 20_000),
        ) {
            // The driver answers power/flash actions (ok or failed) but every probe of the
            // device fails or never answers.
            let t = t();
            let mut s = start.clone();
            let mut last: Option<Action> = None;
            let mut steps = 0usize;
            for (c, bad_image) in choices {
                if s.deadline.is_none() {
                    break;
                }
                steps += 1;
                let generation = s.generation;
                let r = || "no answer".to_string();
                let e = match (c, &last) {
                    (0, _) | (_, None) => Event::Timeout { generation },
                    (1, Some(Action::PowerCycle)) => Event::PowerCycleOk { generation },
                    (1, Some(Action::PowerOff)) => Event::PowerOffOk { generation },
                    (1, Some(Action::SutReboot)) => Event::SutRebootOk { generation },
                    (1, Some(Action::Flash { .. })) => Event::FlashOk { generation },
                    (_, Some(Action::PowerCycle)) => Event::PowerCycleFailed { generation, reason: r() },
                    (_, Some(Action::PowerOff)) => Event::PowerOffFailed { generation, reason: r() },
                    (_, Some(Action::SutReboot)) => Event::SutRebootFailed { generation, reason: r() },
                    (_, Some(Action::Flash { .. })) => Event::FlashFailed { generation, bad_image, reason: r() },
                    (_, Some(Action::Ping)) => Event::PingFailed { generation, reason: r() },
                    (_, Some(Action::SutVerify)) => Event::SutVerifyFailed { generation, reason: r() },
                    (_, Some(Action::SutSdcardCheck)) => Event::SutSdcardFailed { generation, reason: r() },
                    (_, Some(Action::HealthCheck { .. })) => Event::HealthCheckFailed { generation, reason: r() },
                    (_, Some(Action::NotifyRequest { .. })) => Event::Timeout { generation },
                };
                let now = s.deadline.unwrap_or(s.entered_at);
                let tr = step(&s, e, now, &t).expect("results are never refused");
                check_invariants(&s, &tr);
                check_counters(&tr.next);
                if let Some(a) = tr.actions.iter().rfind(|a| a.is_hardware()) {
                    last = Some(a.clone());
                } else if tr.next.generation != s.generation {
                    last = None;
                }
                s = tr.next;
            }
            prop_assert!(s.deadline.is_none(), "still active after {steps} events: {}", s.state);
            if start.deadline.is_some() {
                prop_assert!(
                    s.state.is_failed() || s.state == S::Off || (s.state == S::Ready && s.request.is_some()),
                    "ended in {} after {steps} events",
                    s.state
                );
            }
        }
    }
}

#[test]
fn worst_case_events_for_a_device_that_never_answers() {
    // Deterministic worst case for the path the proptest samples: the relay always fails
    // just under its limit then succeeds; every probe times out. Bounded and small.
    let t = t();
    let mut s = Snapshot::new_device(T0, true, &t);
    let mut events = 0u32;
    let mut last = Action::PowerCycle;
    while s.deadline.is_some() {
        events += 1;
        assert!(events < 10_000, "unbounded in {}", s.state);
        let generation = s.generation;
        let e = match (&last, s.state) {
            (Action::PowerCycle, S::PcPowerCycling)
                if s.counters.get(counter::POWER_CYCLING) < t.max_power_cycling =>
            {
                Event::PowerCycleFailed {
                    generation,
                    reason: "x".into(),
                }
            }
            (Action::PowerCycle, S::PcPowerCycling) => Event::PowerCycleOk { generation },
            _ => Event::Timeout { generation },
        };
        let tr = step(&s, e, s.deadline.unwrap_or(T0), &t).expect("ok");
        if let Some(a) = tr.actions.iter().rfind(|a| a.is_hardware()) {
            last = a.clone();
        }
        s = tr.next;
    }
    assert_eq!(s.state, S::FailedSelfTest);
    // 4 self-test runs x 4 rounds x (201 relay events + reboot wait + 13 pings) + `new`.
    assert_eq!(events, 1 + 4 * 4 * (201 + 1 + 13));
}

// ---------------------------------------------------------------- transition table

#[derive(Clone, Copy, Debug)]
enum K {
    T,
    PcOk,
    PcFail,
    OffOk,
    OffFail,
    SrOk,
    SrFail,
    PingOk,
    PingFail,
    SvOk,
    SvFail,
    SdOk,
    SdFail,
    FlOk,
    FlFail,
    FlBad,
    HcOk,
    HcFail,
}

fn ev_of(k: K, generation: u64) -> Event {
    let reason = "x".to_string();
    match k {
        K::T => Event::Timeout { generation },
        K::PcOk => Event::PowerCycleOk { generation },
        K::PcFail => Event::PowerCycleFailed { generation, reason },
        K::OffOk => Event::PowerOffOk { generation },
        K::OffFail => Event::PowerOffFailed { generation, reason },
        K::SrOk => Event::SutRebootOk { generation },
        K::SrFail => Event::SutRebootFailed { generation, reason },
        K::PingOk => Event::PingOk { generation },
        K::PingFail => Event::PingFailed { generation, reason },
        K::SvOk => Event::SutVerifyOk { generation },
        K::SvFail => Event::SutVerifyFailed { generation, reason },
        K::SdOk => Event::SutSdcardOk { generation },
        K::SdFail => Event::SutSdcardFailed { generation, reason },
        K::FlOk => Event::FlashOk { generation },
        K::FlFail => Event::FlashFailed {
            generation,
            bad_image: false,
            reason,
        },
        K::FlBad => Event::FlashFailed {
            generation,
            bad_image: true,
            reason,
        },
        K::HcOk => Event::HealthCheckOk { generation },
        K::HcFail => Event::HealthCheckFailed { generation, reason },
    }
}

/// (state, relay, sut, event, next state, hardware action, new generation?)
type Row = (
    DeviceState,
    bool,
    bool,
    K,
    DeviceState,
    Option<Action>,
    bool,
);

#[rustfmt::skip]
fn table_rows() -> Vec<Row> {
    let flash = || Action::Flash { image: img("b2g"), boot_config: "{}".into() };
    vec![
        (S::New, true, false, K::T, S::PcPowerCycling, Some(Action::PowerCycle), true),
        (S::New, false, true, K::T, S::PcSutRebooting, Some(Action::SutReboot), true),
        (S::New, false, false, K::T, S::FailedPowerCycling, None, true),
        (S::Ready, true, true, K::T, S::Ready, Some(Action::HealthCheck { agent: true }), true),
        (S::Ready, true, false, K::HcOk, S::Ready, None, false),
        (S::Ready, true, false, K::HcFail, S::PcPowerCycling, Some(Action::PowerCycle), true),
        (S::PoweringOff, true, false, K::OffOk, S::Off, None, true),
        (S::PoweringOff, true, false, K::OffFail, S::PoweringOff, Some(Action::PowerOff), true),
        (S::PoweringOff, true, false, K::T, S::PoweringOff, Some(Action::PowerOff), true),
        (S::PcSutRebooting, true, true, K::SrOk, S::PcRebooting, None, true),
        (S::PcSutRebooting, true, true, K::SrFail, S::PcPowerCycling, Some(Action::PowerCycle), true),
        (S::PcSutRebooting, false, true, K::SrFail, S::PcSutRebooting, Some(Action::SutReboot), true),
        (S::PcSutRebooting, true, true, K::T, S::PcPowerCycling, Some(Action::PowerCycle), true),
        (S::PcPowerCycling, true, false, K::PcOk, S::PcRebooting, None, true),
        (S::PcPowerCycling, true, false, K::PcFail, S::PcPowerCycling, Some(Action::PowerCycle), true),
        (S::PcPowerCycling, true, false, K::T, S::PcPowerCycling, Some(Action::PowerCycle), true),
        (S::PcRebooting, true, true, K::T, S::SutVerifying, Some(Action::SutVerify), true),
        (S::PcRebooting, true, false, K::T, S::PcPinging, Some(Action::Ping), true),
        (S::PcPinging, true, false, K::PingOk, S::Ready, None, true),
        (S::PcPinging, true, false, K::PingFail, S::PcPinging, None, false),
        (S::PcPinging, true, false, K::T, S::PcPinging, Some(Action::Ping), true),
        (S::Flashing, true, false, K::FlOk, S::FlashRebooting, None, true),
        (S::Flashing, true, false, K::FlFail, S::Flashing, Some(flash()), true),
        (S::Flashing, true, false, K::FlBad, S::FailedFlashing, None, true),
        (S::Flashing, true, false, K::T, S::Flashing, Some(flash()), true),
        (S::FlashRebooting, true, true, K::T, S::SutVerifying, Some(Action::SutVerify), true),
        (S::FlashRebooting, true, false, K::T, S::PcPinging, Some(Action::Ping), true),
        (S::SutVerifying, true, true, K::SvOk, S::SutSdcardVerifying, Some(Action::SutSdcardCheck), true),
        (S::SutVerifying, true, true, K::SvFail, S::SutVerifying, None, false),
        (S::SutVerifying, true, true, K::T, S::SutVerifying, Some(Action::SutVerify), true),
        (S::SutVerifyPowerCycle, true, true, K::PcOk, S::SutVerifying, Some(Action::SutVerify), true),
        (S::SutVerifyPowerCycle, true, true, K::PcFail, S::SutVerifyPowerCycle, Some(Action::PowerCycle), true),
        (S::SutVerifyPowerCycle, true, true, K::T, S::SutVerifyPowerCycle, Some(Action::PowerCycle), true),
        (S::SutVerifyPowerCycle, false, true, K::SrOk, S::SutVerifying, Some(Action::SutVerify), true),
        (S::SutSdcardVerifying, true, true, K::SdOk, S::Ready, None, true),
        (S::SutSdcardVerifying, true, true, K::SdFail, S::SutSdcardVerifying, Some(Action::SutSdcardCheck), true),
        (S::SutSdcardVerifying, true, true, K::T, S::SutSdcardVerifying, Some(Action::SutSdcardCheck), true),
    ]
}

#[test]
fn transition_table() {
    let rows = table_rows();
    assert_eq!(rows.len(), 37);
    for (st, relay, sut, k, want, action, bumps) in rows {
        let s = at(st, relay, sut);
        let tr = go(&s, ev_of(k, s.generation));
        let ctx = format!("{st} relay={relay} sut={sut} {k:?}: {:?}", tr.log);
        assert_eq!(tr.next.state, want, "{ctx}");
        assert_eq!(hw(&tr), action.into_iter().collect::<Vec<_>>(), "{ctx}");
        assert_eq!(tr.next.generation != s.generation, bumps, "{ctx}");
        check_invariants(&s, &tr);
    }
    // States that take no result at all: every result is ignored.
    for st in [
        S::Unknown,
        S::LockedOut,
        S::Troubleshooting,
        S::Off,
        S::MaintenanceMode,
        S::PcRebooting,
        S::FlashRebooting,
    ] {
        for k in [
            K::PcOk,
            K::SrOk,
            K::PingOk,
            K::SvOk,
            K::SdOk,
            K::FlOk,
            K::HcFail,
        ] {
            let s = at(st, true, true);
            let tr = go(&s, ev_of(k, s.generation));
            assert!(tr.is_noop(&s), "{st} {k:?}");
            assert!(logs(&tr).contains("ignored event"), "{st} {k:?}");
        }
    }
}

#[test]
fn only_the_bootloader_window_needs_a_relay_to_flash() {
    // No relay wiring: a PandaBoard cannot be flashed, a phone (adb) or a board already in
    // fastboot can.
    let s = at(S::Ready, false, true);
    let tr = please_ok(&s, image_event(Some(7), true));
    assert_eq!(tr.next.state, S::FailedPowerCycling, "{:?}", tr.log);
    assert!(
        tr.actions
            .iter()
            .all(|a| !matches!(a, Action::Flash { .. }))
    );
    for mode in [BootMode::Adb, BootMode::Already] {
        let mut s = at(S::Ready, false, true);
        s.boot_mode = mode;
        let tr = please_ok(&s, image_event(Some(7), true));
        assert_eq!(tr.next.state, S::Flashing, "{mode:?}: {:?}", tr.log);
        assert!(
            matches!(tr.actions.as_slice(), [Action::Flash { .. }]),
            "{mode:?}: {:?}",
            tr.actions
        );
    }
}

/// The device timeline reads the machine's transition lines back
/// (`domain::history::LogMark::parse`): every change of state the machine logs must parse
/// to the states it really moved between, so a change of wording breaks this test, not the
/// picture.
#[test]
fn transition_lines_parse_back_to_the_states_they_name() {
    use crate::domain::history::LogMark;
    // A self-test from ready through its first hops, a re-entry and a failure.
    let s = at(S::Ready, true, true);
    let tr = please_ok(&s, Event::PleaseSelfTest);
    let mut marks = tr.log.iter().filter_map(|l| LogMark::parse(l));
    let mut state = S::Ready;
    for m in marks.by_ref() {
        let LogMark::State { from, to } = m else {
            panic!("{m:?}")
        };
        assert_eq!(from, state, "{:?}", tr.log);
        state = to;
    }
    assert_eq!(state, tr.next.state, "{:?}", tr.log);
    for &to in S::ALL {
        let forced = force(&s, "ready", to.name(), T0, &t()).expect("force");
        let first = forced.log.first().expect("a line");
        assert_eq!(
            LogMark::parse(first),
            Some(LogMark::State { from: S::Ready, to }),
            "{first}"
        );
    }
}
