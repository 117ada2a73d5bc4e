//! The on-box web page for lab techs: server-rendered HTML (minijinja templates embedded
//! with rust-embed), a little plain JavaScript and CSS, all served by this binary with
//! nothing fetched from elsewhere.
//!
//! - [`assets`]: static files under hashed, immutable URLs;
//! - [`view`]: the `Serialize` view models templates (and the pool page's live feed) see,
//!   built from domain types, never from storage records;
//! - [`pages`]: the HTML handlers;
//! - [`svg`]: the history pictures (device timeline, pool utilisation, request waits).
//!
//! The pages only *show*; every action a page offers is a `fetch()` of the JSON API that
//! machines use, so nothing the page can do is missing from the API. This module must not
//! change state itself.

pub mod assets;
pub mod pages;
pub mod svg;
pub mod view;

use minijinja::{Environment, UndefinedBehavior, Value};
use rust_embed::Embed;

/// The templates, `assets/templates/`. Debug builds read them from disk on every lookup
/// (edits show up on reload); release builds carry them inside the binary.
#[derive(Embed)]
#[folder = "assets/templates/"]
struct Templates;

/// The template environment, built once at start-up and kept in the `App`.
pub struct Ui {
    env: Environment<'static>,
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui").finish_non_exhaustive()
    }
}

impl Default for Ui {
    fn default() -> Self {
        Ui::new()
    }
}

impl Ui {
    /// The environment: embedded templates, strict undefined variables (a typo is an error,
    /// not an empty cell), HTML autoescape (by the `.html` name), and `static_url()`.
    #[must_use]
    pub fn new() -> Ui {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_loader(|name| {
            let Some(file) = Templates::get(name) else {
                return Ok(None);
            };
            let hash = file.metadata.sha256_hash();
            let text = String::from_utf8_lossy(&file.data).into_owned();
            let owned = name.to_owned();
            Ok(Some(
                minijinja::TemplateSource::new(text).with_uptodate_check(move || {
                    Templates::get(&owned).is_some_and(|f| f.metadata.sha256_hash() == hash)
                }),
            ))
        });
        env.set_auto_reload(cfg!(debug_assertions));
        env.add_function("static_url", assets::static_url);
        Ui { env }
    }

    /// Render one template.
    ///
    /// # Errors
    /// An unknown template, a syntax error or an undefined variable.
    pub fn render(&self, name: &str, ctx: Value) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(ctx)
    }

    /// Names of every embedded template (for tests that render them all).
    #[must_use]
    pub fn template_names() -> Vec<String> {
        Templates::iter().map(|n| n.into_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    //! Templates are only checked when rendered, so every template is rendered here with a
    //! fixture context, and data from devices and clients must come out escaped.

    use std::collections::BTreeMap;

    use minijinja::context;
    use minijinja::value::Serde;

    use super::view::{self, LogLineView};
    use super::*;
    use crate::domain::clock::Millis;
    use crate::domain::history::{
        Activity, DeviceHistory, FlakyDevice, PoolHistory, RequestHistory, Segment, UsageBucket,
        WaitBucket, WaitReason, Window,
    };
    use crate::domain::model::{Device, DeviceFacts, LogEntry, Registration};
    use crate::pool::{Assignment, DeviceChoice, RequestSnapshot, RequestSpec, RequestState};
    use crate::storage::requests::StoredRequest;

    const EVIL: &str = "<script>alert('x')</script>";

    fn device(name: &str, state: &str, comments: &str) -> Device {
        let mut d = Device::for_test(name, state);
        d.facts = DeviceFacts {
            hardware_type: Some("panda".into()),
            processor: Some("armv7".into()),
            pool: Some("mobile".into()),
            os_version: Some("4.0.4".into()),
            environment: Some("prod".into()),
        };
        d.wiring.sut_addr = Some("10.0.0.5:20701".parse().expect("host:port"));
        d.wiring.fastboot_serial = Some("0123".into());
        d.wiring.relay = Some(
            format!("relay-1:bank1:relay{}", name.len() % 8 + 1)
                .parse()
                .expect("relay address"),
        );
        d.comments = Some(comments.to_owned());
        d.created = Millis(1_700_000_000_000);
        d.updated = Millis(1_700_000_100_000);
        d.lifeguard.counters = BTreeMap::from([("power_cycle".to_owned(), 1)]);
        d.registration = Some(Registration {
            at: Millis(1_700_000_000_000),
            agent_name: "00:11:22:33:44:55".into(),
            ip: Some("10.0.0.5".into()),
            fields: BTreeMap::from([("OS".to_owned(), EVIL.to_owned())]),
        });
        d
    }

    fn request(id: u64, device: &str, assignee: &str, state: RequestState) -> StoredRequest {
        let spec = RequestSpec::new(
            DeviceChoice::Any,
            assignee,
            "android".parse().expect("image name"),
            Millis(1_700_000_000_000),
        );
        let mut snap = RequestSnapshot::new(id, spec, Millis(1_700_003_600_000));
        snap.state = state;
        snap.assigned = Some(Assignment {
            device: device.parse().expect("device name"),
            needs_image: true,
        });
        StoredRequest {
            snap,
            server: "rack1".into(),
            owner_token: None,
            explanation: None,
        }
    }

    fn layout(page: &str) -> minijinja::Value {
        context! {
            page => page,
            title => format!("{page} {EVIL}"),
            server => "rack1",
            version => "0.1.0",
            auth_banner => "Open access",
            cluster_warning => EVIL,
            sign_in_url => "",
            signed_in_as => EVIL,
            can_request => true,
            can_admin => true,
        }
    }

    /// One context with every variable any template uses.
    fn fixture() -> minijinja::Value {
        let held = device("panda-1", "ready", EVIL);
        let failed = device("panda-2", "failed_flashing", "fine");
        let busy = device("panda-3", "flashing", "");
        let r = request(7, "panda-1", EVIL, RequestState::Ready);
        let log = LogEntry {
            seq: 42,
            ts: Millis(1_700_000_000_000),
            subjects: vec!["device:panda-1".into()],
            source: "statemachine".into(),
            actor: Some(EVIL.into()),
            message: format!("ready -> flashing: {EVIL}"),
        };
        // Cluster mode's cells too: a controller name and an owner's URL from etcd.
        let mut first = view::device_view(&held, Some(&r), Some(log.clone())).row;
        first.controller = Some(EVIL.into());
        first.href = Some(format!("http://127.0.0.1:1/{EVIL}"));
        first.request_href = Some(format!("/ui/request/{EVIL}/"));
        let rows = vec![
            first,
            view::device_view(&failed, None, None).row,
            view::device_view(&busy, None, None).row,
        ];
        let pool = view::PoolView {
            version: 3,
            total: rows.len(),
            counts: vec![view::StateCountView {
                state: "ready".into(),
                look: view::look(crate::lifeguard::DeviceState::Ready, true),
                count: 1,
            }],
            devices: rows,
            cluster: true,
            cluster_warning: Some(Some(crate::cluster::ClusterWarning {
                kind: crate::cluster::WarningKind::EtcdUnreachable,
                message: EVIL.into(),
            })),
        };
        let devices = vec![held.clone(), failed, busy];
        let board = crate::hw::BoardStatus {
            name: "relay-1".parse().expect("board name"),
            kind: "proxr",
            healthy: Some(false),
            last_ok: Some(Millis(1_700_000_000_000)),
            last_error: Some(EVIL.into()),
            ops_ok: 3,
            ops_failed: 1,
            queued: 0,
            recent_failures: vec![crate::hw::RelayFailure {
                at: Millis(1_700_000_000_000),
                op: format!("power cycle relay-1:bank1:relay1 on relay-1 {EVIL}"),
                relay: Some("relay-1:bank1:relay8".into()),
                error: EVIL.into(),
            }],
        };
        let (from, until) = (
            Millis(1_700_000_000_000 - 86_400_000),
            Millis(1_700_000_000_000),
        );
        let timeline = DeviceHistory {
            device: EVIL.into(),
            window: Window::Day,
            from,
            until,
            segments: vec![Segment {
                activity: Activity::Failed,
                state: "failed_pinging".into(),
                start: from,
                end: until,
                log_seq: Some(42),
                log_line: Some(EVIL.into()),
            }],
            failures: 2,
            recoveries: 1,
            last_failure: Some(from),
            complete: false,
        };
        let usage = PoolHistory {
            window: Window::Day,
            from,
            until,
            bucket_ms: 3_600_000,
            buckets: vec![UsageBucket {
                start: Millis(from.0 / 3_600_000 * 3_600_000 + 3_600_000),
                in_use: 1.0,
                ready: 2.0,
                preparing: 0.0,
                out_of_service: 0.5,
            }],
            flaky: vec![FlakyDevice {
                device: EVIL.into(),
                failures: 2,
                last_failure: from,
            }],
        };
        let waits = RequestHistory {
            window: Window::Day,
            from,
            until,
            served: 1,
            histogram: vec![WaitBucket {
                le_ms: Some(1000),
                count: 1,
            }],
            p50_ms: Some(1000),
            p95_ms: Some(1000),
            waited: 1,
            reasons: vec![WaitReason {
                reason: EVIL.into(),
                requests: 1,
            }],
        };
        context! {
            layout => layout("device"),
            pool => minijinja::Value::from(Serde(&pool)),
            device => minijinja::Value::from(Serde(view::device_view(&held, Some(&r), Some(log.clone())))),
            log => minijinja::Value::from(Serde(vec![LogLineView::from(&log)])),
            next_before => Some(42),
            log_page => 50,
            request => minijinja::Value::from(Serde(view::request_view(&r, &devices, None))),
            requests => minijinja::Value::from(Serde(view::request_rows(&[r], &devices))),
            version => 5,
            timeline => minijinja::Value::from(Serde(view::device_history_view(&timeline, Millis(1_700_000_100_000)))),
            usage => minijinja::Value::from(Serde(view::pool_history_view(&usage))),
            waits => minijinja::Value::from(Serde(view::request_history_view(&waits))),
            windows => minijinja::Value::from(Serde(
                crate::domain::history::Window::ALL
                    .iter()
                    .map(|w| view::WindowLinkView { name: w.name(), current: w.name() == "7d" })
                    .collect::<Vec<_>>(),
            )),
            include_closed => true,
            boards => minijinja::Value::from(Serde(view::boards(vec![board], &devices))),
            status => 404,
            message => EVIL,
            error => EVIL,
        }
    }

    #[test]
    fn every_template_renders_and_escapes() {
        let ui = Ui::new();
        let names = Ui::template_names();
        for expected in [
            "base.html",
            "pool.html",
            "device.html",
            "requests.html",
            "relays.html",
            "request.html",
            "error.html",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing");
        }
        let ctx = fixture();
        // Partials (`_name.html`) are rendered inside the pages that include them.
        for name in names.iter().filter(|n| !n.starts_with('_')) {
            let html = ui
                .render(name, ctx.clone())
                .unwrap_or_else(|e| panic!("{name} does not render: {e:#}"));
            assert!(
                !html.contains("<script>alert"),
                "{name} let a script through"
            );
            assert!(html.contains("/static/"), "{name} links no assets");
        }
        let device = ui.render("device.html", ctx.clone()).expect("device page");
        assert!(
            device.contains("&lt;script&gt;alert("),
            "comments shown escaped"
        );
        assert!(device.contains("failed") || device.contains("panda-1"));
        let pool = ui.render("pool.html", ctx.clone()).expect("pool page");
        assert!(
            pool.contains(r#"class="state failed""#),
            "failure states stand out"
        );
        assert!(pool.contains("failed_flashing"), "state text always shown");
        assert!(pool.contains("FAILED") || pool.contains("working"));
        let requests = ui
            .render("requests.html", ctx.clone())
            .expect("requests page");
        assert!(requests.contains(r#"id="request-7""#));
        assert!(
            requests.contains(r#"href="/ui/request/7/""#),
            "links the request page"
        );
        let request = ui
            .render("request.html", ctx.clone())
            .expect("request page");
        assert!(request.contains("Request #7") && request.contains("&lt;script&gt;"));
        assert!(
            requests.contains(r#"class="chart waits""#),
            "wait histogram"
        );
        assert!(requests.contains(r#"aria-current="true" class="current" data-window="7d""#));
        let pool = ui.render("pool.html", ctx.clone()).expect("pool page");
        assert!(pool.contains(r#"class="chart utilisation""#) && pool.contains(r#"id="flaky""#));
        let device = ui.render("device.html", ctx.clone()).expect("device page");
        assert!(
            device.contains(r#"class="chart timeline""#)
                && device.contains(r#"class="seg failed""#)
        );
        let relays = ui.render("relays.html", ctx).expect("relays page");
        assert!(
            relays.contains("Recent failures"),
            "a board's failures are listed"
        );
        assert!(
            relays.contains(r#"<a href="/ui/device/panda-1/">panda-1</a> <span class="muted">relay-1:bank1:relay8"#),
            "a failure names the device wired to its relay"
        );
    }

    #[test]
    fn strict_undefined_catches_typos() {
        let ui = Ui::new();
        let err = ui
            .render("error.html", context! { layout => layout("error") })
            .expect_err("missing variables are errors");
        assert!(err.to_string().contains("undefined"), "{err}");
    }

    #[test]
    fn another_racks_row_shows_its_holder_as_a_local_row_does() {
        let p = crate::cluster::ready_device("sim-0003");
        let holder = crate::cluster::directory::Holder {
            request: 41,
            assignee: "dave".into(),
            expires: Millis(1_700_000_000_123),
        };
        let held = view::remote_row("rack-b", Some("http://127.0.0.1:1"), &p, Some(&holder));
        assert_eq!(
            (held.request, held.assignee.as_str(), held.until.as_str()),
            (Some(41), "dave", "2023-11-14 22:13:20")
        );
        assert_eq!(held.request_href.as_deref(), Some("/ui/request/41/"));
        assert_eq!(
            held.look.class, "held",
            "held though not yet published held"
        );
        let free = view::remote_row("rack-b", None, &p, None);
        assert_eq!(
            (free.request, free.assignee.as_str(), free.until.as_str()),
            (None, "", "")
        );
        assert_eq!((free.request_href, free.look.class), (None, "idle"));
        // The page's cell links the shared request's page, not this rack's request list.
        let ui = Ui::new();
        let pool = view::summarize(1, vec![held], true);
        let c = context! {
            pool => minijinja::Value::from(Serde(&pool)),
            ..fixture()
        };
        let html = ui.render("pool.html", c).expect("render");
        assert!(
            html.contains(r#"<td data-label="Held by"><a href="&#x2f;ui&#x2f;request&#x2f;41&#x2f;">#41</a> dave</td>"#),
            "{html}"
        );
        assert!(html.contains(r#"<td data-label="Until">2023-11-14 22:13:20</td>"#));
    }

    #[test]
    fn looks_never_rely_on_colour_alone() {
        for s in crate::lifeguard::DeviceState::ALL {
            let l = view::look(*s, false);
            assert!(!l.label.is_empty());
            if s.is_failed() {
                assert_eq!(l.class, "failed", "{}", s.name());
            }
        }
        assert_eq!(
            view::look(crate::lifeguard::DeviceState::Ready, true).class,
            "held"
        );
        assert_eq!(
            view::look(crate::lifeguard::DeviceState::Unknown, false).class,
            "out"
        );
        assert_eq!(view::when(Millis(1_700_000_000_123)), "2023-11-14 22:13:20");
        assert_eq!(view::ago(40_000), "40 s");
        assert_eq!(view::ago(3_900_000), "1 h 5 min");
        assert_eq!(view::ago(2 * 86_400_000 + 4 * 3_600_000), "2 d 4 h");
    }
}
