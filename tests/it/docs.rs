//! The docs stay in step with the code:
//! - every [`Route`] variant has a sample request that routes to it, and its path pattern
//!   is in `docs/api.md` (adding a variant without a sample does not compile: the match in
//!   `pattern` is exhaustive; adding a sample without docs fails the test);
//! - every configuration key the parser accepts is in `docs/config.md`, found by asking the
//!   parser itself: each table (and each variant of a tagged table) is fed an unknown key,
//!   and the "expected one of ..." error lists its keys. A new key anywhere is found
//!   without touching this test; a new table must be added to `TABLES` (a test fails until
//!   it is).

use std::collections::BTreeSet;
use std::path::Path;

use hyper::Method;
use mozpool::app::config::Config;
use mozpool::http::route::{RelayOp, Route};

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Number of `Route` variants: the indexes `pattern` returns are `0..ROUTE_VARIANTS`.
const ROUTE_VARIANTS: usize = 68;

/// The variant's index and its documented `METHOD /path/` pattern. Exhaustive on purpose.
fn pattern(r: &Route) -> (usize, &'static str) {
    match r {
        Route::Version => (0, "GET /api/version/"),
        Route::Health => (1, "GET /api/health/"),
        Route::Cluster => (67, "GET /api/cluster/"),
        Route::DeviceList => (2, "GET /api/device/list/"),
        Route::DeviceDetails(_) => (3, "GET /api/device/{id}/details/"),
        Route::DevicePut(_) => (4, "PUT /api/device/{id}/"),
        Route::DeviceRetire(_) => (5, "DELETE /api/device/{id}/"),
        Route::DeviceSetComments(_) => (6, "POST /api/device/{id}/set-comments/"),
        Route::DeviceSetEnvironment(_) => (7, "POST /api/device/{id}/set-environment/"),
        Route::DeviceLog(_) => (8, "GET /api/device/{id}/log/"),
        Route::DeviceStatus(_) => (9, "GET /api/device/{id}/status/"),
        Route::DeviceState(_) => (10, "GET /api/device/{id}/state/"),
        Route::ImageList => (11, "GET /api/image/list/"),
        Route::ImageDetails(_) => (12, "GET /api/image/{name}/details/"),
        Route::ImagePut(_) => (13, "PUT /api/image/{name}/"),
        Route::ImageDelete(_) => (14, "DELETE /api/image/{name}/"),
        Route::EnvironmentList => (15, "GET /api/environment/list/"),
        Route::EnvironmentPut(_) => (16, "PUT /api/environment/{name}/"),
        Route::EnvironmentDelete(_) => (17, "DELETE /api/environment/{name}/"),
        Route::HardwareTypeList => (18, "GET /api/hardware-type/list/"),
        Route::HardwareTypePut(_) => (19, "PUT /api/hardware-type/{name}/"),
        Route::HardwareTypeDelete(_) => (20, "DELETE /api/hardware-type/{name}/"),
        Route::DeviceRegister => (21, "POST /api/device/register/"),
        Route::InventorySync => (22, "POST /api/inventory/sync/"),
        Route::LogQuery => (23, "GET /api/log/"),
        Route::DeviceEvent(_, _) => (24, "GET|POST /api/device/{id}/event/{event}/"),
        Route::DeviceStateChange(_, _, _) => {
            (25, "POST /api/device/{id}/state-change/{from}/to/{to}/")
        }
        Route::DevicePowerCycle(_) => (26, "POST /api/device/{id}/power-cycle/"),
        Route::DevicePowerOff(_) => (27, "GET|POST /api/device/{id}/power-off/"),
        Route::DevicePowerOn(_) => (28, "POST /api/device/{id}/power-on/"),
        Route::DeviceReboot(_) => (29, "POST /api/device/{id}/reboot/"),
        Route::DeviceFlash(_) => (30, "POST /api/device/{id}/flash/"),
        Route::DeviceClearPxe(_) => (31, "POST /api/device/{id}/clear-pxe/"),
        Route::DevicePing(_) => (32, "GET /api/device/{id}/ping/"),
        Route::DeviceBootconfig(_) => (33, "GET /api/device/{id}/bootconfig/"),
        Route::DeviceRequest(_) => (34, "POST /api/device/{id|any}/request/"),
        Route::RequestList => (35, "GET /api/request/list/"),
        Route::RequestDetails(_) => (36, "GET /api/request/{id}/details/"),
        Route::RequestStatus(_) => (37, "GET /api/request/{id}/status/"),
        Route::RequestLog(_) => (38, "GET /api/request/{id}/log/"),
        Route::RequestRenew(_) => (39, "POST /api/request/{id}/renew/"),
        Route::RequestReturn(_) => (40, "POST /api/request/{id}/return/"),
        Route::RequestEvent(_, _) => (41, "GET|POST /api/request/{id}/event/{event}/"),
        Route::RelayList => (42, "GET /api/relay/list/"),
        Route::RelayTest(_) => (43, "GET /api/relay/{board}/test/"),
        Route::RelayChannel(_, _, RelayOp::Status) => {
            (44, "GET /api/relay/{board}/{channel}/status/")
        }
        Route::RelayChannel(_, _, RelayOp::On | RelayOp::Off | RelayOp::Cycle) => {
            (45, "POST /api/relay/{board}/{channel}/{on|off|cycle}/")
        }
        Route::SimFaults(_) => (46, "PUT /api/sim/device/{id}/faults/"),
        Route::Metrics => (47, "GET /metrics"),
        Route::Backup => (48, "GET /api/backup/"),
        Route::PoolOverview => (49, "GET /api/pool/overview/"),
        Route::UiHome => (50, "GET /"),
        Route::UiPool => (51, "GET /ui/"),
        Route::UiDevice(_) => (52, "GET /ui/device/{id}/"),
        Route::UiRequests => (53, "GET /ui/requests/"),
        Route::UiRelays => (54, "GET /ui/relays/"),
        Route::Static { .. } => (55, "GET /static/{hash}/{file}"),
        Route::UiSignInForm => (56, "GET /ui/signin/"),
        Route::UiSignIn => (57, "POST /ui/signin/"),
        Route::UiSignOut => (58, "POST /ui/signout/"),
        Route::DeviceAddressChange(..) => {
            (59, "POST /api/device/{id}/address-change/{accept|dismiss}/")
        }
        Route::PxeConfigList => (60, "GET /api/bmm/pxe_config/list/"),
        Route::PxeConfigDetails(_) => (61, "GET /api/bmm/pxe_config/{name}/details/"),
        Route::DeviceHistory(_) => (62, "GET /api/device/{id}/history/"),
        Route::PoolHistory => (63, "GET /api/pool/history/"),
        Route::RequestHistory => (64, "GET /api/request/history/"),
        Route::RelayOverview => (65, "GET /api/relay/overview/"),
        Route::UiRequest(_) => (66, "GET /ui/request/{id}/"),
    }
}

/// One request per route (and per method where a path takes several).
const SAMPLES: &[(&str, &str)] = &[
    ("GET", "/ui/signin/"),
    ("POST", "/ui/signin/"),
    ("POST", "/ui/signout/"),
    ("GET", "/api/version/"),
    ("GET", "/api/health/"),
    ("GET", "/api/device/list/"),
    ("GET", "/api/device/panda-1/details/"),
    ("PUT", "/api/device/panda-1/"),
    ("DELETE", "/api/device/panda-1/"),
    ("POST", "/api/device/panda-1/set-comments/"),
    ("POST", "/api/device/panda-1/set-environment/"),
    ("GET", "/api/device/panda-1/log/"),
    ("GET", "/api/device/panda-1/status/"),
    ("GET", "/api/device/panda-1/state/"),
    ("GET", "/api/image/list/"),
    ("GET", "/api/image/b2g/details/"),
    ("PUT", "/api/image/b2g/"),
    ("DELETE", "/api/image/b2g/"),
    ("GET", "/api/bmm/pxe_config/list/"),
    ("GET", "/api/bmm/pxe_config/b2g/details/"),
    ("GET", "/api/environment/list/"),
    ("PUT", "/api/environment/prod/"),
    ("DELETE", "/api/environment/prod/"),
    ("GET", "/api/hardware-type/list/"),
    ("PUT", "/api/hardware-type/panda/"),
    ("DELETE", "/api/hardware-type/panda/"),
    ("POST", "/api/device/register/"),
    ("POST", "/api/inventory/sync/"),
    ("GET", "/api/log/"),
    ("POST", "/api/device/panda-1/event/please_self_test/"),
    (
        "POST",
        "/api/device/panda-1/state-change/ready/to/locked_out/",
    ),
    ("POST", "/api/device/panda-1/power-cycle/"),
    ("POST", "/api/device/panda-1/address-change/accept/"),
    ("POST", "/api/device/panda-1/address-change/dismiss/"),
    ("POST", "/api/device/panda-1/power-off/"),
    ("POST", "/api/device/panda-1/power-on/"),
    ("POST", "/api/device/panda-1/reboot/"),
    ("POST", "/api/device/panda-1/flash/"),
    ("POST", "/api/device/panda-1/clear-pxe/"),
    ("GET", "/api/device/panda-1/ping/"),
    ("GET", "/api/device/panda-1/bootconfig/"),
    ("POST", "/api/device/any/request/"),
    ("GET", "/api/request/list/"),
    ("GET", "/api/request/1/details/"),
    ("GET", "/api/request/1/status/"),
    ("GET", "/api/request/1/log/"),
    ("POST", "/api/request/1/renew/"),
    ("POST", "/api/request/1/return/"),
    ("POST", "/api/request/1/event/close/"),
    ("GET", "/api/relay/list/"),
    ("GET", "/api/relay/relay-1/test/"),
    ("GET", "/api/relay/relay-1/bank1:relay2/status/"),
    ("POST", "/api/relay/relay-1/bank1:relay2/cycle/"),
    ("PUT", "/api/sim/device/sim-0001/faults/"),
    ("GET", "/metrics"),
    ("GET", "/api/cluster/"),
    ("GET", "/api/backup/"),
    ("GET", "/api/pool/overview/"),
    ("GET", "/api/device/panda-1/history/"),
    ("GET", "/api/pool/history/"),
    ("GET", "/api/request/history/"),
    ("GET", "/"),
    ("GET", "/ui/"),
    ("GET", "/ui/device/panda-1/"),
    ("GET", "/ui/requests/"),
    ("GET", "/ui/relays/"),
    ("GET", "/ui/request/7/"),
    ("GET", "/api/relay/overview/"),
    ("GET", "/static/0123abcd/app.css"),
];

#[test]
fn every_route_is_in_the_api_reference() {
    let api = doc("api.md");
    let mut seen = [false; ROUTE_VARIANTS];
    let mut missing = Vec::new();
    for (method, path) in SAMPLES {
        let m = Method::from_bytes(method.as_bytes()).expect("method");
        let route = Route::parse(&m, path)
            .unwrap_or_else(|e| panic!("sample {method} {path} does not route: {e:?}"));
        let (i, pat) = pattern(&route);
        seen[i] = true;
        if !api.contains(pat) {
            missing.push(pat);
        }
    }
    let unsampled: Vec<usize> = (0..ROUTE_VARIANTS).filter(|&i| !seen[i]).collect();
    assert!(
        unsampled.is_empty(),
        "Route variants with these indexes in `pattern` have no sample in SAMPLES: {unsampled:?}"
    );
    assert!(
        missing.is_empty(),
        "docs/api.md does not document: {missing:#?}"
    );
}

/// Every table of the configuration: (name used in messages, the `docs/config.md` section
/// heading it is documented under, TOML that puts `zzz_probe` in that table). `{V}` is a
/// variant name, filled in from the parser's list of variants.
const TABLES: &[(&str, &str, &str)] = &[
    ("top level", "", "zzz_probe = 1\n"),
    ("server", "`[server]`", "[server]\nzzz_probe = 1\n"),
    ("log", "`[log]`", "[log]\nzzz_probe = 1\n"),
    ("inventory", "`[inventory]`", "[inventory]\nzzz_probe = 1\n"),
    ("hardware", "`[hardware]`", "[hardware]\nzzz_probe = 1\n"),
    ("lifeguard", "`[lifeguard]`", "[lifeguard]\nzzz_probe = 1\n"),
    ("requests", "`[requests]`", "[requests]\nzzz_probe = 1\n"),
    ("queue", "`[queue]`", "[queue]\nzzz_probe = 1\n"),
    ("simulate", "`[simulate]`", "[simulate]\nzzz_probe = 1\n"),
    ("auth", "`[auth]`", "[auth]\nzzz_probe = 1\n"),
    ("cluster", "`[cluster]`", "[cluster]\nzzz_probe = 1\n"),
    (
        "registration",
        "`[registration]`",
        "[registration]\nzzz_probe = 1\n",
    ),
    (
        "auth.tokens",
        "`[auth]`",
        "[[auth.tokens]]\nzzz_probe = 1\n",
    ),
    (
        "simulate.faults",
        "`[simulate]`",
        "[simulate.faults.sim-0001]\nzzz_probe = 1\n",
    ),
    (
        "hardware_types",
        "`[[hardware_types]]`",
        "[[hardware_types]]\nzzz_probe = 1\n",
    ),
    (
        "environments",
        "`[[environments]]`",
        "[[environments]]\nzzz_probe = 1\n",
    ),
    ("images", "`[[images]]`", "[[images]]\nzzz_probe = 1\n"),
    (
        "images.steps",
        "`[[images]]`",
        "[[images]]\nname = \"x\"\nsteps = [{ zzz_probe = 1 }]\n",
    ),
    ("devices", "`[[devices]]`", "[[devices]]\nzzz_probe = 1\n"),
    (
        "relay_boards",
        "`[[relay_boards]]`",
        "[[relay_boards]]\nzzz_probe = 1\n",
    ),
    (
        "relay_boards.kind",
        "`[[relay_boards]]`",
        "[[relay_boards]]\nkind = { type = \"{V}\", zzz_probe = 1 }\n",
    ),
    (
        "relay_boards.kind.transport",
        "`[[relay_boards]]`",
        "[[relay_boards]]\nkind = { type = \"proxr\", transport = { type = \"{V}\", zzz_probe = 1 } }\n",
    ),
];

/// The backquoted names after "expected" in a serde error.
fn expected_names(message: &str) -> Vec<String> {
    if message.contains("there are no fields") {
        return Vec::new();
    }
    let Some((_, rest)) = message.split_once("expected") else {
        panic!("no list of expected names in: {message}");
    };
    rest.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn probe(toml: &str) -> String {
    match Config::parse(Path::new("probe.toml"), toml) {
        Ok(_) => panic!("the parser accepted an unknown key:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

/// (table, section heading, keys) for every table and tagged variant.
fn config_keys() -> Vec<(String, &'static str, Vec<String>)> {
    let mut out = Vec::new();
    for (name, heading, toml) in TABLES {
        if toml.contains("{V}") {
            // A tagged table: list the variants, then the keys of each.
            let msg = probe(
                &toml
                    .replace("{V}", "zzz_variant")
                    .replace(", zzz_probe = 1", ""),
            );
            assert!(msg.contains("unknown variant"), "{name}: {msg}");
            let variants = expected_names(&msg);
            assert!(!variants.is_empty(), "{name}: no variants in {msg}");
            for v in variants {
                let msg = probe(&toml.replace("{V}", &v));
                let mut keys = expected_names(&msg);
                keys.push("type".into());
                out.push((format!("{name} type = \"{v}\""), *heading, keys));
                out.push((format!("{name} (variant)"), *heading, vec![v]));
            }
        } else {
            let msg = probe(toml);
            assert!(msg.contains("zzz_probe"), "{name}: {msg}");
            out.push(((*name).to_owned(), *heading, expected_names(&msg)));
        }
    }
    out
}

/// The text of `docs/config.md` under the `## ` heading containing `heading`.
fn section<'a>(doc: &'a str, heading: &str) -> Option<&'a str> {
    let start = doc
        .match_indices("\n## ")
        .map(|(i, _)| i + 1)
        .find(|&i| doc[i..].lines().next().is_some_and(|l| l.contains(heading)))?;
    let end = doc[start + 3..]
        .find("\n## ")
        .map_or(doc.len(), |e| start + 3 + e);
    Some(&doc[start..end])
}

#[test]
fn every_config_key_is_in_the_config_reference() {
    let doc = doc("config.md");
    let keys = config_keys();
    // Every top-level key is a table probed above, so no table escapes the walk.
    let probed: BTreeSet<&str> = TABLES.iter().map(|t| t.0).collect();
    let top = &keys[0];
    assert_eq!(top.0, "top level");
    let mut missing = Vec::new();
    for k in &top.2 {
        assert!(
            probed.contains(k.as_str()),
            "config section {k} is not in TABLES of tests/it/docs.rs: add it there"
        );
        if !doc.contains(&format!("`[{k}]`")) && !doc.contains(&format!("`[[{k}]]`")) {
            missing.push(format!("section [{k}]"));
        }
    }
    for (table, heading, names) in &keys[1..] {
        let Some(text) = section(&doc, heading) else {
            missing.push(format!("a `## {heading}` section (for {table})"));
            continue;
        };
        for n in names {
            if !text.contains(&format!("`{n}`")) {
                missing.push(format!("{table}: `{n}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/config.md does not document: {missing:#?}"
    );
}
