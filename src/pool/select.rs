//! Pure device matching: which inventory devices fit a [`RequestSpec`], which free one to
//! prefer, why none is available ([`Explanation`]) and whether one ever could be
//! ([`satisfiable`]).
//!
//! No randomness (4.x picked uniformly at random): among equally good candidates the
//! lowest name wins, so results are reproducible. Nothing here reads a clock or a store.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::spec::DeviceView;
use crate::domain::device_state::DeviceState;
use crate::domain::history::Waited;
use crate::domain::request::{DeviceChoice, RequestSpec};

/// One request criterion that narrows the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Criterion {
    /// Criterion name: `device`, `environment`, `hardware_type`, `processor`, `pool`,
    /// `os_version`.
    pub name: &'static str,
    /// The requested value.
    pub value: String,
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.value)
    }
}

/// The criteria a spec sets, in a fixed order (`any` values are not criteria).
#[must_use]
pub fn criteria(spec: &RequestSpec) -> Vec<Criterion> {
    let mut out = Vec::new();
    let mut push = |name, value: Option<&str>| {
        if let Some(v) = value {
            out.push(Criterion {
                name,
                value: v.to_owned(),
            });
        }
    };
    if let DeviceChoice::Named(n) = &spec.requested_device {
        push("device", Some(n.as_str()));
    }
    push(
        "environment",
        spec.environment_criterion().map(|e| e.as_str()),
    );
    push(
        "hardware_type",
        spec.hardware_type.as_ref().map(|h| h.as_str()),
    );
    push("processor", spec.processor.as_deref());
    push("pool", spec.pool.as_deref());
    push("os_version", spec.os_version.as_deref());
    out
}

fn criterion_matches(c: &Criterion, d: &DeviceView) -> bool {
    let dev: Option<&str> = match c.name {
        "device" => Some(d.name.as_str()),
        "environment" => d.environment.as_ref().map(|e| e.as_str()),
        "hardware_type" => d.hardware_type.as_ref().map(|h| h.as_str()),
        "processor" => d.processor.as_deref(),
        "pool" => d.pool.as_deref(),
        "os_version" => d.os_version.as_deref(),
        _ => None,
    };
    dev == Some(c.value.as_str())
}

/// The device fits every criterion of the spec (regardless of free/held/retired).
/// Environment `any` matches every device; a device without environment matches only `any`.
#[must_use]
pub fn matches(spec: &RequestSpec, device: &DeviceView) -> bool {
    criteria(spec).iter().all(|c| criterion_matches(c, device))
}

/// Parse boot-config JSON text; unparsable or absent text counts as `{}` (as 4.x).
fn parse_boot_config(text: Option<&str>) -> serde_json::Value {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()))
}

/// The device already runs the requested image with a JSON-equal boot config, and the
/// image may be reused: a reboot (`please_power_cycle`) is enough.
#[must_use]
pub fn reusable(spec: &RequestSpec, device: &DeviceView) -> bool {
    spec.can_reuse
        && device.current_image.as_ref() == Some(&spec.image)
        && parse_boot_config(device.current_boot_config.as_deref())
            == parse_boot_config(Some(&spec.boot_config_json()))
}

/// Whether assigning `device` to `spec` needs `please_image` (not just a power cycle).
#[must_use]
pub fn needs_image(spec: &RequestSpec, device: &DeviceView) -> bool {
    !reusable(spec, device)
}

/// The preferred device among `candidates` that are available and match: a reusable one
/// (when the image `can_reuse`) first, then any other; lowest name within each group.
#[must_use]
pub fn best<'a, I>(spec: &RequestSpec, candidates: I) -> Option<&'a DeviceView>
where
    I: IntoIterator<Item = &'a DeviceView>,
{
    candidates
        .into_iter()
        .filter(|d| d.available() && matches(spec, d))
        .min_by(|a, b| (!reusable(spec, a), &a.name).cmp(&(!reusable(spec, b), &b.name)))
}

/// How many devices match each criterion and, of those matching all, where they are.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Explanation {
    /// Non-retired inventory devices considered.
    pub inventory: usize,
    /// Per criterion: (criterion, devices matching that criterion alone).
    pub criteria: Vec<(Criterion, usize)>,
    /// Devices matching every criterion.
    pub matching_all: usize,
    /// Of those: free and unheld right now.
    pub free: usize,
    /// Of those: held by a request.
    pub held: usize,
    /// Of those not held and not free: how many in each Lifeguard state.
    pub by_state: BTreeMap<String, usize>,
    /// Of those not held: how many are in a `failed_*` state.
    pub failed: usize,
}

impl Explanation {
    /// Why a request seeing this had to wait: the stable reason code of the request-wait
    /// chart (see [`Waited::of`]).
    #[must_use]
    pub fn wait_reason(&self) -> Waited {
        Waited::of(
            self.matching_all,
            self.free,
            self.held,
            self.by_state.iter().map(|(state, &n)| {
                // A name this release does not know is counted as out of service.
                (state.parse().unwrap_or(DeviceState::Unknown), n)
            }),
        )
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for Explanation {
    /// E.g. `3 devices match hardware_type=panda; of 3 matching all criteria: 2 held, 1 in
    /// failed_power_cycling`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.criteria.is_empty() {
            write!(
                f,
                "no criteria ({} in inventory)",
                plural(self.inventory, "device", "devices")
            )?;
        }
        for (i, (c, n)) in self.criteria.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let verb = if *n == 1 { "matches" } else { "match" };
            write!(f, "{} {verb} {c}", plural(*n, "device", "devices"))?;
        }
        write!(f, "; of {} matching all criteria: ", self.matching_all)?;
        let mut parts = Vec::new();
        if self.free > 0 {
            parts.push(format!("{} free", self.free));
        }
        if self.held > 0 {
            parts.push(format!("{} held", self.held));
        }
        for (state, n) in &self.by_state {
            parts.push(format!("{n} in {state}"));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Explain the inventory as seen by `spec` (retired devices are left out entirely).
#[must_use]
pub fn explain(spec: &RequestSpec, inventory: &[DeviceView]) -> Explanation {
    let crit = criteria(spec);
    let live: Vec<&DeviceView> = inventory.iter().filter(|d| !d.retired).collect();
    let mut e = Explanation {
        inventory: live.len(),
        criteria: crit
            .iter()
            .map(|c| {
                let n = live.iter().filter(|d| criterion_matches(c, d)).count();
                (c.clone(), n)
            })
            .collect(),
        ..Explanation::default()
    };
    for d in live
        .iter()
        .filter(|d| crit.iter().all(|c| criterion_matches(c, d)))
    {
        e.matching_all += 1;
        if d.held_by.is_some() {
            e.held += 1;
        } else if d.free {
            e.free += 1;
        } else {
            *e.by_state.entry(d.lifeguard_state.clone()).or_insert(0) += 1;
        }
        if d.held_by.is_none() && d.failed {
            e.failed += 1;
        }
    }
    e
}

/// No non-retired device could ever serve the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unsatisfiable {
    /// Human-readable reason, built from the [`Explanation`].
    pub reason: String,
}

/// `Ok` when at least one non-retired inventory device matches every criterion (whatever
/// its state); otherwise the request should fail at once instead of waiting.
///
/// # Errors
/// [`Unsatisfiable`] with a reason such as `no device matches all criteria: 0 devices match
/// device=panda-9`.
pub fn satisfiable(spec: &RequestSpec, inventory: &[DeviceView]) -> Result<(), Unsatisfiable> {
    let e = explain(spec, inventory);
    if e.matching_all > 0 {
        return Ok(());
    }
    let detail: Vec<String> = e
        .criteria
        .iter()
        .map(|(c, n)| {
            let verb = if *n == 1 { "matches" } else { "match" };
            format!("{} {verb} {c}", plural(*n, "device", "devices"))
        })
        .collect();
    let reason = if detail.is_empty() {
        "no device in the inventory".to_owned()
    } else {
        format!("no device matches all criteria: {}", detail.join("; "))
    };
    Err(Unsatisfiable { reason })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::clock::Millis;
    use crate::pool::spec::Holder;

    pub(crate) fn dev(name: &str) -> DeviceView {
        DeviceView::new(name.parse().expect("device name"))
    }

    pub(crate) fn any_spec() -> RequestSpec {
        RequestSpec::new(
            DeviceChoice::Any,
            "alice",
            "b2g".parse().expect("image"),
            Millis(0),
        )
    }

    fn panda(name: &str) -> DeviceView {
        let mut d = dev(name);
        d.hardware_type = Some("panda".parse().expect("hw"));
        d
    }

    fn held(mut d: DeviceView, req: u64) -> DeviceView {
        d.held_by = Some(Holder {
            request: req,
            assignee: "bob".into(),
        });
        d
    }

    fn failed(mut d: DeviceView, state: &str) -> DeviceView {
        d.free = false;
        d.failed = state.starts_with("failed_");
        d.lifeguard_state = state.into();
        d
    }

    #[test]
    fn environment_rules() {
        let mut spec = any_spec();
        let mut d = dev("a");
        assert!(matches(&spec, &d), "any env matches a device without env");
        spec.environment = Some("any".parse().expect("env"));
        assert!(matches(&spec, &d), "literal any too");
        spec.environment = Some("prod".parse().expect("env"));
        assert!(!matches(&spec, &d), "device without env matches only any");
        d.environment = Some("prod".parse().expect("env"));
        assert!(matches(&spec, &d));
        d.environment = Some("staging".parse().expect("env"));
        assert!(!matches(&spec, &d));
    }

    #[test]
    fn every_criterion_must_match() {
        let mut spec = any_spec();
        spec.hardware_type = Some("panda".parse().expect("hw"));
        spec.processor = Some("armv7".into());
        spec.pool = Some("b2g".into());
        spec.os_version = Some("4.0".into());
        let mut d = panda("p1");
        d.processor = Some("armv7".into());
        d.pool = Some("b2g".into());
        d.os_version = Some("4.0".into());
        assert!(matches(&spec, &d));
        for field in 0..4 {
            let mut x = d.clone();
            match field {
                0 => x.hardware_type = Some("nexus-s".parse().expect("hw")),
                1 => x.processor = None,
                2 => x.pool = Some("mobile".into()),
                _ => x.os_version = Some("2.3".into()),
            }
            assert!(!matches(&spec, &x), "field {field}");
        }
        spec.requested_device = DeviceChoice::parse("p2").expect("name");
        assert!(!matches(&spec, &d));
        spec.requested_device = DeviceChoice::parse("p1").expect("name");
        assert!(matches(&spec, &d));
    }

    #[test]
    fn best_prefers_reusable_then_name_order() {
        let mut spec = any_spec();
        spec.can_reuse = true;
        spec.boot_config.insert("k".into(), "v".into());
        let plain_a = dev("a");
        let mut reuse_c = dev("c");
        reuse_c.current_image = Some(spec.image.clone());
        reuse_c.current_boot_config = Some(r#"{ "k" : "v" }"#.into());
        let mut wrong_cfg_b = dev("b");
        wrong_cfg_b.current_image = Some(spec.image.clone());
        wrong_cfg_b.current_boot_config = Some(r#"{"k":"w"}"#.into());
        let inv = vec![plain_a.clone(), wrong_cfg_b.clone(), reuse_c.clone()];
        assert_eq!(best(&spec, &inv).map(|d| d.name.as_str()), Some("c"));
        assert!(!needs_image(&spec, &reuse_c));
        assert!(needs_image(&spec, &wrong_cfg_b));
        // Without can_reuse: plain name order, and everything needs imaging.
        spec.can_reuse = false;
        assert_eq!(best(&spec, &inv).map(|d| d.name.as_str()), Some("a"));
        assert!(needs_image(&spec, &reuse_c));
        // Held, non-free and retired devices are never chosen.
        let mut r = dev("0");
        r.retired = true;
        let inv = vec![held(dev("a"), 1), failed(dev("b"), "pxe_booting"), r];
        assert_eq!(best(&spec, &inv), None);
    }

    #[test]
    fn unparsable_boot_config_is_empty_object() {
        let mut spec = any_spec();
        spec.can_reuse = true;
        let mut d = dev("a");
        d.current_image = Some(spec.image.clone());
        d.current_boot_config = Some("not json".into());
        assert!(
            reusable(&spec, &d),
            "garbage == {{}} == empty request config"
        );
        d.current_boot_config = None;
        assert!(reusable(&spec, &d));
        spec.boot_config.insert("k".into(), "v".into());
        assert!(!reusable(&spec, &d));
    }

    #[test]
    fn explanation_text() {
        let mut spec = any_spec();
        spec.hardware_type = Some("panda".parse().expect("hw"));
        let inv = vec![
            held(panda("p1"), 1),
            held(panda("p2"), 2),
            failed(panda("p3"), "failed_power_cycling"),
            dev("other"),
        ];
        let e = explain(&spec, &inv);
        assert_eq!(
            e.to_string(),
            "3 devices match hardware_type=panda; of 3 matching all criteria: 2 held, 1 in failed_power_cycling"
        );
        assert_eq!(e.failed, 1);
        assert_eq!(e.inventory, 4);
    }

    #[test]
    fn explanation_several_criteria_and_none() {
        let mut spec = any_spec();
        spec.hardware_type = Some("panda".parse().expect("hw"));
        spec.environment = Some("prod".parse().expect("env"));
        let mut p = panda("p1");
        p.environment = Some("prod".parse().expect("env"));
        let inv = vec![p, panda("p2"), failed(panda("p4"), "pxe_booting")];
        assert_eq!(
            explain(&spec, &inv).to_string(),
            "1 device matches environment=prod; 3 devices match hardware_type=panda; of 1 matching all criteria: 1 free"
        );
        let any = any_spec();
        assert_eq!(
            explain(&any, &inv).to_string(),
            "no criteria (3 devices in inventory); of 3 matching all criteria: 2 free, 1 in pxe_booting"
        );
        assert_eq!(
            explain(&any, &[]).to_string(),
            "no criteria (0 devices in inventory); of 0 matching all criteria: none"
        );
    }

    #[test]
    fn satisfiable_ignores_state_but_not_retirement() {
        let mut spec = any_spec();
        spec.requested_device = DeviceChoice::parse("p9").expect("name");
        let inv = vec![panda("p1")];
        let err = satisfiable(&spec, &inv).expect_err("no such device");
        assert_eq!(
            err.reason,
            "no device matches all criteria: 0 devices match device=p9"
        );
        // A busy or failed device can still come back: satisfiable.
        let inv = vec![failed(held(panda("p9"), 3), "failed_pxe_booting")];
        assert!(satisfiable(&spec, &inv).is_ok());
        // A retired one cannot.
        let mut r = panda("p9");
        r.retired = true;
        assert!(satisfiable(&spec, &[r]).is_err());
        assert_eq!(
            satisfiable(&any_spec(), &[]).expect_err("empty").reason,
            "no device in the inventory"
        );
    }
}
