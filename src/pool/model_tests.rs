//! Reference-model property test: a small simulated driver runs random interleavings of
//! request arrivals, queue passes, Lifeguard answers, device failures and recoveries,
//! returns, renewals, expiries, timers and junk events through [`queue::assign`] and
//! [`machine::step`].
//!
//! Invariants checked after every delivered event:
//! - no device is held by two open requests;
//! - a device is only handed out by the queue when it is free, unheld, not retired and
//!   matches the request, and never twice in one pass;
//! - a request holds a device exactly in the holding states; terminal requests hold none.
//!
//! At the end the model drains (answers everything, advances time); every request must
//! settle in `ready`, `queued` or a terminal state. No panics anywhere.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use proptest::prelude::*;

use super::config::{QueuePolicy, Timings};
use super::machine::{Action, Event, step};
use super::queue::{QueuedRequest, assign};
use super::select::{self, explain, satisfiable};
use super::spec::{DeviceView, Holder};
use crate::domain::clock::Millis;
use crate::domain::names::DeviceName;
use crate::domain::request::RequestSnapshot;
use crate::domain::request::{DeviceChoice, RequestSpec};
use crate::domain::request_state::{ImagingResult, RequestState};

const NDEV: usize = 5;

#[derive(Debug, Clone)]
enum Op {
    Arrive {
        kind: u8,
        dev: usize,
        assignee: u8,
        priority: i8,
        wait: Option<u16>,
        lease: u16,
    },
    Pass,
    Advance(u32),
    LgAnswer(usize),
    LgFinish(usize, u8),
    DeviceFails(usize),
    DeviceRecovers(usize),
    Close(usize),
    Expire(usize),
    Renew(usize, u16),
    Junk(usize, u8, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4, 0usize..NDEV + 1, 0u8..3, -2i8..3, proptest::option::of(1u16..900), 1u16..3600)
            .prop_map(|(kind, dev, assignee, priority, wait, lease)| Op::Arrive {
                kind, dev, assignee, priority, wait, lease
            }),
        3 => Just(Op::Pass),
        2 => (0u32..120_000).prop_map(Op::Advance),
        2 => any::<usize>().prop_map(Op::LgAnswer),
        2 => (any::<usize>(), 0u8..4).prop_map(|(i, r)| Op::LgFinish(i, r)),
        1 => (0usize..NDEV).prop_map(Op::DeviceFails),
        1 => (0usize..NDEV).prop_map(Op::DeviceRecovers),
        1 => any::<usize>().prop_map(Op::Close),
        1 => any::<usize>().prop_map(Op::Expire),
        1 => (any::<usize>(), 0u16..7200).prop_map(|(i, d)| Op::Renew(i, d)),
        1 => (any::<usize>(), 0u8..6, 0usize..NDEV).prop_map(|(i, k, d)| Op::Junk(i, k, d)),
    ]
}

fn name(i: usize) -> DeviceName {
    format!("dev{i}").parse().expect("device name")
}

struct World {
    now: Millis,
    devices: Vec<DeviceView>,
    reqs: BTreeMap<u64, RequestSnapshot>,
    needs_answer: BTreeSet<u64>,
    contacts: Vec<(u64, DeviceName)>,
    next_id: u64,
    t: Timings,
    q: QueuePolicy,
}

impl World {
    fn new() -> World {
        let devices = (0..NDEV)
            .map(|i| {
                let mut d = DeviceView::new(name(i));
                let hw = if i.is_multiple_of(2) {
                    "panda"
                } else {
                    "nexus-s"
                };
                d.hardware_type = Some(hw.parse().expect("hw"));
                d
            })
            .collect();
        World {
            now: Millis(1_000_000),
            devices,
            reqs: BTreeMap::new(),
            needs_answer: BTreeSet::new(),
            contacts: Vec::new(),
            next_id: 1,
            t: Timings::default(),
            q: QueuePolicy::default(),
        }
    }

    fn holder_of(&self, d: &DeviceName) -> Option<&RequestSnapshot> {
        self.reqs
            .values()
            .find(|r| r.state.is_open() && r.assigned.as_ref().is_some_and(|a| &a.device == d))
    }

    fn views(&self) -> Vec<DeviceView> {
        self.devices
            .iter()
            .map(|d| {
                let mut v = d.clone();
                v.held_by = self.holder_of(&d.name).map(|r| Holder {
                    request: r.id,
                    assignee: r.spec.assignee.clone(),
                });
                v
            })
            .collect()
    }

    fn dev_mut(&mut self, n: &DeviceName) -> Option<&mut DeviceView> {
        self.devices.iter_mut().find(|d| &d.name == n)
    }

    fn nth_req(&self, i: usize) -> Option<u64> {
        let ids: Vec<u64> = self.reqs.keys().copied().collect();
        if ids.is_empty() {
            None
        } else {
            Some(ids[i % ids.len()])
        }
    }

    fn deliver(&mut self, id: u64, e: Event) {
        let Some(snap) = self.reqs.get(&id).cloned() else {
            return;
        };
        let tr = step(&snap, e, self.now, &self.t);
        let next = tr.apply(&snap);
        if let Some(prev) = &snap.assigned
            && next
                .assigned
                .as_ref()
                .is_none_or(|a| a.device != prev.device)
        {
            assert!(
                tr.actions.iter().any(|a| matches!(
                    a,
                    Action::ReleaseDevice { device, .. } if device == &prev.device
                )),
                "request {id} dropped {} without releasing it",
                prev.device
            );
        }
        for a in &tr.actions {
            match a {
                Action::Search => {
                    self.needs_answer.insert(id);
                }
                Action::ContactLifeguard { device, .. } => {
                    self.contacts.push((id, device.clone()));
                }
                Action::ReleaseDevice { device, reverify } => {
                    assert!(*reverify, "released devices are always reverified");
                    if let Some(d) = self.dev_mut(device)
                        && !d.failed
                    {
                        d.free = false;
                        d.lifeguard_state = "pc_power_cycling".into();
                    }
                }
                Action::Log(_) => {}
            }
        }
        self.reqs.insert(id, next);
        self.check();
    }

    fn check(&self) {
        let mut held = HashSet::new();
        for r in self.reqs.values() {
            assert_eq!(
                r.assigned.is_some(),
                r.state.holds_device(),
                "request {} in {} with {:?}",
                r.id,
                r.state,
                r.assigned
            );
            if r.state.is_terminal() {
                assert!(r.assigned.is_none());
            }
            if let Some(a) = &r.assigned
                && r.state.is_open()
            {
                assert!(
                    held.insert(a.device.clone()),
                    "device {} held twice",
                    a.device
                );
            }
        }
    }

    fn arrive(
        &mut self,
        kind: u8,
        dev: usize,
        assignee: u8,
        priority: i8,
        wait: Option<u16>,
        lease: u16,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let requested = match kind {
            1 if dev < NDEV => DeviceChoice::Named(name(dev)),
            1 => DeviceChoice::Named("ghost".parse().expect("name")),
            _ => DeviceChoice::Any,
        };
        let mut spec = RequestSpec::new(
            requested,
            &format!("user{assignee}"),
            "b2g".parse().expect("image"),
            self.now,
        );
        spec.priority = i32::from(priority);
        spec.wait = wait.map(u64::from);
        spec.can_reuse = dev.is_multiple_of(2);
        if kind == 2 {
            spec.hardware_type = Some("panda".parse().expect("hw"));
        }
        if kind == 3 {
            spec.hardware_type = Some("flame".parse().expect("hw"));
        }
        let (expires, _) = self.t.lease_end(self.now, u64::from(lease));
        self.reqs
            .insert(id, RequestSnapshot::new(id, spec.clone(), expires));
        match satisfiable(&spec, &self.views()) {
            Ok(()) => self.deliver(id, Event::FindDevice),
            Err(u) => self.deliver(id, Event::Unsatisfiable { reason: u.reason }),
        }
    }

    fn pass(&mut self) {
        let views = self.views();
        let waiting: Vec<QueuedRequest> = self
            .reqs
            .values()
            .filter(|r| r.state.is_waiting())
            .map(|r| QueuedRequest {
                id: r.id,
                spec: r.spec.clone(),
                since: r.spec.created,
            })
            .collect();
        let got = assign(&waiting, &views, self.now, &self.q);
        let mut seen_dev = HashSet::new();
        let mut seen_req = HashSet::new();
        for (id, dev) in &got {
            assert!(seen_dev.insert(dev.clone()), "device {dev} twice in a pass");
            assert!(seen_req.insert(*id), "request {id} twice in a pass");
            let v = views.iter().find(|v| &v.name == dev).expect("known device");
            assert!(
                v.free && v.held_by.is_none() && !v.retired,
                "unavailable {dev} assigned"
            );
            let spec = &self.reqs[id].spec;
            assert!(select::matches(spec, v), "mismatching {dev} assigned");
            let needs_image = select::needs_image(spec, v);
            self.deliver(
                *id,
                Event::Assigned {
                    device: dev.clone(),
                    needs_image,
                },
            );
        }
        let answer: Vec<u64> = std::mem::take(&mut self.needs_answer).into_iter().collect();
        for id in answer {
            if seen_req.contains(&id) {
                continue;
            }
            let Some(r) = self.reqs.get(&id) else {
                continue;
            };
            if r.state.is_waiting() {
                let explanation = explain(&r.spec, &self.views());
                self.deliver(id, Event::NoDevice { explanation });
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now = Millis(self.now.0.saturating_add(ms));
        let ids: Vec<u64> = self.reqs.keys().copied().collect();
        for id in ids {
            let r = &self.reqs[&id];
            if let Some(at) = r.timeout
                && self.now >= at
            {
                let generation = r.generation;
                self.deliver(id, Event::Timeout { generation });
            }
            let r = &self.reqs[&id];
            if !r.state.is_terminal() && self.now >= self.t.expire_due(r.expires) {
                self.deliver(id, Event::Expire);
            }
        }
    }

    fn lg_answer(&mut self, i: usize) {
        if self.contacts.is_empty() {
            return;
        }
        let (id, dev) = self.contacts.remove(i % self.contacts.len());
        let Some(r) = self.reqs.get(&id) else { return };
        if r.state != RequestState::ContactingLifeguard
            || r.assigned.as_ref().is_none_or(|a| a.device != dev)
        {
            return; // stale contact
        }
        let Some(d) = self.dev_mut(&dev) else { return };
        if d.free {
            d.free = false;
            d.lifeguard_state = "pxe_booting".into();
            self.deliver(id, Event::LifeguardContacted { device: dev });
        } else {
            let lifeguard_state = d.lifeguard_state.clone();
            self.deliver(
                id,
                Event::DeviceLost {
                    device: dev,
                    lifeguard_state,
                },
            );
        }
    }

    fn lg_finish(&mut self, i: usize, result: u8) {
        let candidates: Vec<u64> = self
            .reqs
            .values()
            .filter(|r| {
                matches!(
                    r.state,
                    RequestState::Pending | RequestState::ContactingLifeguard
                )
            })
            .map(|r| r.id)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let id = candidates[i % candidates.len()];
        let Some(dev) = self.reqs[&id].assigned.as_ref().map(|a| a.device.clone()) else {
            return;
        };
        let res = match result {
            0 => ImagingResult::Complete,
            1 => ImagingResult::FailedBadDevice,
            2 => ImagingResult::FailedBadImage,
            _ => ImagingResult::Other("huh".into()),
        };
        if let Some(d) = self.dev_mut(&dev) {
            match res {
                ImagingResult::Complete => {
                    d.free = true;
                    d.lifeguard_state = "ready".into();
                }
                ImagingResult::FailedBadDevice => {
                    d.free = false;
                    d.failed = true;
                    d.lifeguard_state = "failed_pxe_booting".into();
                }
                _ => {}
            }
        }
        self.deliver(
            id,
            Event::LifeguardFinished {
                device: dev,
                imaging_result: res,
            },
        );
    }

    fn device_fails(&mut self, i: usize) {
        let dev = name(i);
        if let Some(d) = self.dev_mut(&dev) {
            d.free = false;
            d.failed = true;
            d.lifeguard_state = "failed_sut_verifying".into();
        }
        if let Some(id) = self.holder_of(&dev).map(|r| r.id) {
            self.deliver(
                id,
                Event::DeviceLost {
                    device: dev,
                    lifeguard_state: "failed_sut_verifying".into(),
                },
            );
        }
    }

    fn device_recovers(&mut self, i: usize) {
        let dev = name(i);
        if self.holder_of(&dev).is_some() {
            return;
        }
        if let Some(d) = self.dev_mut(&dev) {
            d.free = true;
            d.failed = false;
            d.lifeguard_state = "ready".into();
        }
    }

    fn junk(&mut self, i: usize, kind: u8, dev: usize) {
        let Some(id) = self.nth_req(i) else { return };
        let r = &self.reqs[&id];
        let e = match kind {
            0 => Event::Timeout {
                generation: r.generation.wrapping_sub(1),
            },
            1 => Event::LifeguardContacted { device: name(dev) },
            2 => Event::LifeguardFinished {
                device: name(dev),
                imaging_result: ImagingResult::Complete,
            },
            3 => Event::FindDevice,
            4 => Event::NoDevice {
                explanation: explain(&r.spec, &self.views()),
            },
            _ => Event::Timeout {
                generation: r.generation,
            },
        };
        // A late `LifeguardContacted` for the right device is not junk in the model: the
        // device is imaging for real then.
        if let Event::LifeguardContacted { device } = &e
            && r.assigned.as_ref().is_some_and(|a| &a.device == device)
        {
            return;
        }
        if let Event::LifeguardFinished { device, .. } = &e
            && r.assigned.as_ref().is_some_and(|a| &a.device == device)
        {
            return;
        }
        self.deliver(id, e);
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Arrive {
                kind,
                dev,
                assignee,
                priority,
                wait,
                lease,
            } => self.arrive(kind, dev, assignee, priority, wait, lease),
            Op::Pass => self.pass(),
            Op::Advance(ms) => self.advance(u64::from(ms)),
            Op::LgAnswer(i) => self.lg_answer(i),
            Op::LgFinish(i, r) => self.lg_finish(i, r),
            Op::DeviceFails(i) => self.device_fails(i),
            Op::DeviceRecovers(i) => self.device_recovers(i),
            Op::Close(i) => {
                if let Some(id) = self.nth_req(i) {
                    self.deliver(id, Event::Close);
                }
            }
            Op::Expire(i) => {
                if let Some(id) = self.nth_req(i) {
                    self.deliver(id, Event::Expire);
                }
            }
            Op::Renew(i, d) => {
                if let Some(id) = self.nth_req(i) {
                    self.deliver(
                        id,
                        Event::Renew {
                            duration_secs: u64::from(d),
                        },
                    );
                }
            }
            Op::Junk(i, k, d) => self.junk(i, k, d),
        }
    }

    fn settled(&self) -> bool {
        self.reqs.values().all(|r| {
            r.state.is_terminal() || matches!(r.state, RequestState::Ready | RequestState::Queued)
        })
    }

    /// Answer everything promptly, recover reverifying devices, move time to the next due
    /// timer; until every request has settled.
    fn drain(&mut self) {
        for _ in 0..20_000 {
            if self.settled() {
                return;
            }
            for i in 0..NDEV {
                if self.devices[i].lifeguard_state == "pc_power_cycling" {
                    self.device_recovers(i);
                }
            }
            self.pass();
            while !self.contacts.is_empty() {
                self.lg_answer(0);
            }
            let pending: Vec<u64> = self
                .reqs
                .values()
                .filter(|r| r.state == RequestState::Pending)
                .map(|r| r.id)
                .collect();
            for id in pending {
                if let Some(dev) = self.reqs[&id].assigned.as_ref().map(|a| a.device.clone()) {
                    if let Some(d) = self.dev_mut(&dev) {
                        d.free = true;
                        d.lifeguard_state = "ready".into();
                    }
                    self.deliver(
                        id,
                        Event::LifeguardFinished {
                            device: dev,
                            imaging_result: ImagingResult::Complete,
                        },
                    );
                }
            }
            if self.settled() {
                return;
            }
            let next = self
                .reqs
                .values()
                .filter(|r| !r.state.is_terminal())
                .flat_map(|r| {
                    let exp = (r.state != RequestState::Ready && r.state != RequestState::Queued)
                        .then(|| self.t.expire_due(r.expires));
                    [r.timeout, exp]
                })
                .flatten()
                .min();
            let Some(next) = next else { return };
            let ms = next.0.saturating_sub(self.now.0);
            self.advance(ms);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn pool_reference_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut w = World::new();
        for o in ops {
            w.apply(o);
        }
        w.drain();
        for r in w.reqs.values() {
            prop_assert!(
                r.state.is_terminal() || matches!(r.state, RequestState::Ready | RequestState::Queued),
                "request {} ended in {}", r.id, r.state
            );
        }
    }
}

/// The generator is not vacuous: random runs reach every interesting state.
#[test]
fn model_reaches_every_interesting_state() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for _ in 0..300 {
        let ops = proptest::collection::vec(op(), 1..80)
            .new_tree(&mut runner)
            .expect("tree")
            .current();
        let mut w = World::new();
        for o in ops {
            w.apply(o);
            seen.extend(w.reqs.values().map(|r| r.state.to_string()));
        }
        w.drain();
        seen.extend(w.reqs.values().map(|r| format!("end:{}", r.state)));
    }
    for s in [
        "finding_device",
        "queued",
        "contacting_lifeguard",
        "pending",
        "ready",
        "closed",
        "failed_device_not_found",
        "failed_bad_image",
        "failed_bad_device",
        "failed_device_busy",
        "end:ready",
        "end:queued",
    ] {
        assert!(seen.contains(s), "never reached {s}: {seen:?}");
    }
}
