//! View models: small `Serialize` structs the templates see, built from domain types
//! (`Device`, `StoredRequest`, `LogEntry`, `BoardStatus`). The pool page's live feed
//! (`GET /api/pool/overview/`) sends the same [`PoolView`], so the server-rendered table and
//! the script that refreshes it read the same field names.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::domain::model::{Device, LogEntry, device_subject};
use crate::hw::relay::BoardStatus;
use crate::lifeguard::{DeviceState, StateClass};
use crate::storage::logs::LogQuery;
use crate::storage::requests::StoredRequest;
use crate::storage::{Snapshot, StoreError};

/// A time for people: `2026-11-25 09:44:28` (UTC, whole seconds).
#[must_use]
pub fn when(m: crate::domain::clock::Millis) -> String {
    let iso = m.iso();
    iso.get(..19).unwrap_or(&iso).replace('T', " ")
}

/// How a state is shown: a CSS class and a word, so colour is never the only cue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Look {
    /// CSS class: `idle`, `held`, `busy`, `failed`, `out`.
    pub class: &'static str,
    /// Plain words for the class: `free`, `in use`, `working`, `FAILED`, `out of service`.
    pub label: &'static str,
}

/// The look of a device state (an unknown stored name reads as `unknown`: out of service).
#[must_use]
pub fn look(state: DeviceState, held: bool) -> Look {
    match state.class() {
        StateClass::Idle if held => Look {
            class: "held",
            label: "in use",
        },
        StateClass::Idle => Look {
            class: "idle",
            label: "free",
        },
        StateClass::InProgress => Look {
            class: "busy",
            label: "working",
        },
        StateClass::Failed => Look {
            class: "failed",
            label: "FAILED",
        },
        StateClass::OutOfService => Look {
            class: "out",
            label: "out of service",
        },
    }
}

/// One row of the pool page.
#[derive(Debug, Clone, Serialize)]
// Fields are the template's names; only the non-obvious ones are documented.
#[allow(missing_docs)]
pub struct DeviceRowView {
    pub name: String,
    /// Lifeguard state name, always shown as text.
    pub state: String,
    pub look: Look,
    /// Hardware type, `""` when unknown.
    pub hardware_type: String,
    /// Pool, `""` when none.
    pub pool: String,
    /// Environment, `""` when none.
    pub environment: String,
    /// The request holding it.
    pub request: Option<u64>,
    /// Who holds it (the request's assignee), `""` when free.
    pub assignee: String,
    /// Until when (the request's expiry, UTC), `""` when free.
    pub until: String,
    /// Newest log line that is not an API call record.
    pub last_log: String,
    /// Its time (UTC).
    pub last_log_time: String,
    /// Why a tech must look at it, if anything (no relay wiring).
    pub needs_tech: Option<String>,
    /// Cluster mode: the controller that owns it (absent on a single rack, so the
    /// single-rack feed is unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    /// Cluster mode, another rack's device: its page on its owner (absent: this
    /// controller's `/ui/device/{name}/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
    /// Cluster mode, a held device (of any rack): the shared request's page (absent: the
    /// request's row on this controller's `/ui/requests/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_href: Option<String>,
}

/// Devices per state and look (a held `ready` device counts apart from a free one), for
/// the counts bar.
#[derive(Debug, Clone, Serialize)]
// Fields are the template's names; only the non-obvious ones are documented.
#[allow(missing_docs)]
pub struct StateCountView {
    pub state: String,
    pub look: Look,
    /// How many devices are in it.
    pub count: usize,
}

/// The pool page and its live feed.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    /// Change version: pass it back as `since` to wait for the next change.
    pub version: u64,
    /// Every device not retired, by name.
    pub devices: Vec<DeviceRowView>,
    /// Devices per state: failures first, then by name.
    pub counts: Vec<StateCountView>,
    /// Number of devices.
    pub total: usize,
    /// Cluster mode: the rows come from every controller (the page adds a controller
    /// column). Absent on a single rack.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    /// Cluster mode: what is wrong with the cluster as this controller sees it (etcd
    /// unreachable or out of space, no lease), shown as a banner; null when nothing is.
    /// Absent on a single rack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_warning: Option<Option<crate::cluster::ClusterWarning>>,
}

/// Log lines scanned per device for its newest non-API line.
const LAST_LOG_SCAN: usize = 25;

fn last_log(snap: &Snapshot, device: &str) -> Result<Option<LogEntry>, StoreError> {
    let q = LogQuery {
        subject: Some(device_subject(device)),
        limit: LAST_LOG_SCAN,
        ..LogQuery::default()
    };
    Ok(snap.logs(&q)?.into_iter().find(|e| e.source != "api"))
}

fn holders(requests: &[StoredRequest]) -> HashMap<String, &StoredRequest> {
    requests
        .iter()
        .filter(|r| r.snap.state.holds_device())
        .filter_map(|r| Some((r.snap.assigned.as_ref()?.device.to_string(), r)))
        .collect()
}

fn row(d: &Device, holder: Option<&StoredRequest>, log: Option<LogEntry>) -> DeviceRowView {
    let request = d.request.or(holder.map(|r| r.snap.id));
    DeviceRowView {
        name: d.name.to_string(),
        state: d.state.to_string(),
        look: look(d.state, request.is_some()),
        hardware_type: d.facts.hardware_type.clone().unwrap_or_default(),
        pool: d.facts.pool.clone().unwrap_or_default(),
        environment: d.facts.environment.clone().unwrap_or_default(),
        request,
        assignee: holder
            .map(|r| r.snap.spec.assignee.clone())
            .unwrap_or_default(),
        until: holder.map(|r| when(r.snap.expires)).unwrap_or_default(),
        last_log_time: log.as_ref().map(|e| when(e.ts)).unwrap_or_default(),
        last_log: log.map(|e| e.message).unwrap_or_default(),
        needs_tech: d.needs_tech(),
        controller: None,
        href: None,
        request_href: None,
    }
}

/// Cluster mode: what a row of this controller's own device says about its holder. The
/// local request holding it is the owner's private mirror, whose id means nothing to
/// clients (request ids are the shared ones), so the row names the shared request its
/// assignment holds, as another rack's row does; none while the queue copy shows none.
pub fn show_shared_holder(
    row: &mut DeviceRowView,
    holder: Option<&crate::cluster::directory::Holder>,
) {
    row.request = holder.map(|h| h.request);
    row.assignee = holder.map(|h| h.assignee.clone()).unwrap_or_default();
    row.until = holder.map(|h| when(h.expires)).unwrap_or_default();
    row.request_href = holder.map(|h| format!("/ui/request/{}/", h.request));
}

/// Cluster mode: the row of another controller's device, from its published pool view and
/// `holder`, the shared request its assignment names (what the queue copy knows). The
/// holder cells read as a local row's (`#id assignee`, the expiry in [`when`]'s format), the
/// request linked to its shared page, which any controller answers. Its log lives on its
/// owner, so those cells stay empty; `url` is the owner's API base URL, when it published
/// one.
#[must_use]
pub fn remote_row(
    controller: &str,
    url: Option<&str>,
    p: &crate::cluster::PublishedDevice,
    holder: Option<&crate::cluster::directory::Holder>,
) -> DeviceRowView {
    let state = p.state.parse().unwrap_or(DeviceState::Unknown);
    let name = p.name.to_string();
    DeviceRowView {
        href: Some(match url {
            Some(u) => format!("{u}/ui/device/{name}/"),
            // This controller redirects there once the owner publishes its URL.
            None => format!("/ui/device/{name}/?controller={controller}"),
        }),
        name,
        state: p.state.clone(),
        // As a local row: held when published held or when a request holds it (the owner
        // may not have published its hold yet).
        look: look(state, p.held || holder.is_some()),
        hardware_type: p
            .hardware_type
            .clone()
            .map(String::from)
            .unwrap_or_default(),
        pool: p.pool.clone().unwrap_or_default(),
        environment: p.environment.clone().map(String::from).unwrap_or_default(),
        request: holder.map(|h| h.request),
        assignee: holder.map(|h| h.assignee.clone()).unwrap_or_default(),
        until: holder.map(|h| when(h.expires)).unwrap_or_default(),
        last_log: String::new(),
        last_log_time: String::new(),
        needs_tech: None,
        controller: Some(controller.to_owned()),
        request_href: holder.map(|h| format!("/ui/request/{}/", h.request)),
    }
}

/// Build the pool view in one read snapshot.
///
/// # Errors
/// Storage failure.
pub fn pool_view(snap: &Snapshot, version: u64) -> Result<PoolView, StoreError> {
    let devices: Vec<Device> = snap.devices()?.into_iter().filter(|d| !d.retired).collect();
    let requests = snap.requests(true)?;
    let held = holders(&requests);
    let mut rows = Vec::with_capacity(devices.len());
    for d in &devices {
        let log = last_log(snap, &d.name)?;
        rows.push(row(d, held.get(d.name.as_str()).copied(), log));
    }
    Ok(summarize(version, rows, false))
}

/// The pool view of `rows` (sorted here by name, then controller) with its counts per
/// state; `cluster` when they come from every controller.
#[must_use]
pub fn summarize(version: u64, mut rows: Vec<DeviceRowView>, cluster: bool) -> PoolView {
    rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.controller.cmp(&b.controller)));
    let mut per_state: BTreeMap<(String, &'static str), (Look, usize)> = BTreeMap::new();
    for r in &rows {
        per_state
            .entry((r.state.clone(), r.look.class))
            .or_insert((r.look, 0))
            .1 += 1;
    }
    let order = |l: &Look| match l.class {
        "failed" => 0,
        "out" => 1,
        "busy" => 2,
        "held" => 3,
        _ => 4,
    };
    let mut counts: Vec<StateCountView> = per_state
        .into_iter()
        .map(|((state, _), (look, count))| StateCountView { state, look, count })
        .collect();
    counts.sort_by(|a, b| {
        order(&a.look)
            .cmp(&order(&b.look))
            .then(a.state.cmp(&b.state))
    });
    PoolView {
        version,
        total: rows.len(),
        devices: rows,
        counts,
        cluster,
        cluster_warning: None,
    }
}

/// One log line.
#[derive(Debug, Clone, Serialize)]
// Fields are the template's names; only the non-obvious ones are documented.
#[allow(missing_docs)]
pub struct LogLineView {
    /// Sequence number (paging: `before`).
    pub id: u64,
    /// Time (UTC).
    pub timestamp: String,
    /// Which part wrote it.
    pub source: String,
    /// Who caused it.
    pub actor: String,
    pub message: String,
}

impl From<&LogEntry> for LogLineView {
    fn from(e: &LogEntry) -> Self {
        LogLineView {
            id: e.seq,
            timestamp: when(e.ts),
            source: e.source.clone(),
            actor: e.actor.clone().unwrap_or_default(),
            message: e.message.clone(),
        }
    }
}

/// A key and a value, for detail tables.
#[derive(Debug, Clone, Serialize)]
pub struct FieldView {
    /// Label.
    pub key: String,
    /// Value (`""` shown as a dash).
    pub value: String,
}

/// A wiring field as shown: its value, else the stored text that did not parse, else "".
fn wired<T: std::fmt::Display>(value: Option<&T>, unparsed: &Option<String>) -> String {
    value.map_or_else(|| unparsed.clone().unwrap_or_default(), ToString::to_string)
}

fn field(key: &str, value: impl Into<String>) -> FieldView {
    FieldView {
        key: key.to_owned(),
        value: value.into(),
    }
}

/// The device page.
#[derive(Debug, Clone, Serialize)]
// Fields are the template's names; only the non-obvious ones are documented.
#[allow(missing_docs)]
pub struct DeviceView {
    /// The pool-page row (state, holder, ...).
    pub row: DeviceRowView,
    pub comments: String,
    /// Inventory and state details, in display order.
    pub fields: Vec<FieldView>,
    /// Retry counters of the current phase.
    pub counters: Vec<FieldView>,
    /// What it said when it last registered.
    pub registration: Vec<FieldView>,
    /// The SUTAgent address a registration announced and a tech has not settled yet (the
    /// page offers to accept or dismiss it).
    pub address_change: Option<String>,
}

/// Build the device page's view.
#[must_use]
pub fn device_view(
    d: &Device,
    holder: Option<&StoredRequest>,
    log: Option<LogEntry>,
) -> DeviceView {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let lg = &d.lifeguard;
    let fields = vec![
        field("Hardware type", opt(&d.facts.hardware_type)),
        field("Processor", opt(&d.facts.processor)),
        field("Pool", opt(&d.facts.pool)),
        field("OS version", opt(&d.facts.os_version)),
        field("Environment", opt(&d.facts.environment)),
        field(
            "Relay",
            wired(d.wiring.relay.as_ref(), &d.wiring.unparsed.relay),
        ),
        field(
            "SUTAgent",
            wired(d.wiring.sut_addr.as_ref(), &d.wiring.unparsed.sut_addr),
        ),
        field("Fastboot serial", opt(&d.wiring.fastboot_serial)),
        field("Current image", opt(&lg.current_image)),
        field("Image being installed", opt(&lg.next_image)),
        field("In this state since", when(lg.entered_at)),
        field(
            "State times out at",
            lg.deadline.map(when).unwrap_or_default(),
        ),
        field("Controller", d.server.clone()),
        field("Origin", d.origin.clone()),
        field(
            "Registrations may claim it",
            if d.allow_registration { "yes" } else { "no" },
        ),
        field(
            "Follows address changes",
            if d.follow_address {
                "yes"
            } else {
                "no (held for a tech)"
            },
        ),
        field("Created", when(d.created)),
        field("Updated", when(d.updated)),
    ];
    let counters = lg
        .counters
        .iter()
        .map(|(k, v)| field(k, v.to_string()))
        .collect();
    let registration = d
        .registration
        .as_ref()
        .map(|r| {
            let mut out = vec![
                field("Registered at", when(r.at)),
                field("Agent name", r.agent_name.clone()),
                field("IP address", r.ip.clone().unwrap_or_default()),
            ];
            out.extend(r.fields.iter().map(|(k, v)| field(k, v.clone())));
            out
        })
        .unwrap_or_default();
    DeviceView {
        row: row(d, holder, log),
        comments: d.comments.clone().unwrap_or_default(),
        fields,
        counters,
        registration,
        address_change: d.address_change.as_ref().map(|c| c.sut.as_str().to_owned()),
    }
}

/// Load one device's view; `None` when there is no such device.
///
/// # Errors
/// Storage failure.
pub fn load_device_view(snap: &Snapshot, name: &str) -> Result<Option<DeviceView>, StoreError> {
    let Some(d) = snap.device(name)? else {
        return Ok(None);
    };
    let requests = snap.requests(true)?;
    let held = holders(&requests);
    let log = last_log(snap, name)?;
    Ok(Some(device_view(&d, held.get(name).copied(), log)))
}

/// One row of the requests page; the same names as `GET /api/request/list/`.
#[derive(Debug, Clone, Serialize)]
// Fields are the template's names; only the non-obvious ones are documented.
#[allow(missing_docs)]
pub struct RequestRowView {
    pub id: u64,
    /// `any` or a device name.
    pub requested_device: String,
    /// Who it is for.
    pub assignee: String,
    pub state: String,
    /// The device it holds, `""` when none.
    pub assigned_device: String,
    /// That device's state.
    pub device_state: String,
    /// Lease end (UTC).
    pub expires: String,
    /// Environment asked for (`any`).
    pub environment: String,
    /// Image asked for.
    pub image: String,
    /// Still open (can be renewed and returned).
    pub open: bool,
    /// Waiting for a device (shows its queue position).
    pub waiting: bool,
}

/// Each device's state name, by device name.
fn device_states(devices: &[Device]) -> HashMap<&str, &'static str> {
    devices
        .iter()
        .map(|d| (d.name.as_str(), d.state.name()))
        .collect()
}

fn request_row(r: &StoredRequest, states: &HashMap<&str, &'static str>) -> RequestRowView {
    let s = &r.snap;
    let assigned = s
        .assigned
        .as_ref()
        .map_or(String::new(), |a| a.device.to_string());
    RequestRowView {
        id: s.id,
        requested_device: s.spec.requested_device.to_string(),
        assignee: s.spec.assignee.clone(),
        state: s.state.to_string(),
        device_state: states
            .get(assigned.as_str())
            .copied()
            .unwrap_or("")
            .to_owned(),
        assigned_device: assigned,
        expires: when(s.expires),
        environment: s
            .spec
            .environment
            .as_ref()
            .map_or("any".to_owned(), ToString::to_string),
        image: s.spec.image.to_string(),
        open: s.state.is_open(),
        waiting: s.state.is_waiting(),
    }
}

/// Build the request rows (newest first).
#[must_use]
pub fn request_rows(requests: &[StoredRequest], devices: &[Device]) -> Vec<RequestRowView> {
    let states = device_states(devices);
    let mut rows: Vec<RequestRowView> = requests.iter().map(|r| request_row(r, &states)).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.id));
    rows
}

/// The request page: its row on the requests page, every detail, and its boot config.
/// One shape for both modes, so both render the same template.
#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    /// The requests page's row (state, device, expiry, ...).
    pub row: RequestRowView,
    /// What was asked for and what happened, in display order.
    pub fields: Vec<FieldView>,
    /// Boot config values it was given (shown as text, escaped by the template).
    pub boot_config: Vec<FieldView>,
    /// Where the assigned device's page is (`""` when none): this controller's page, or in
    /// cluster mode its owner's, as the pool page links it.
    pub device_href: String,
    /// Cluster mode: the controller owning the assigned device (`None` on a single rack).
    pub controller: Option<String>,
    /// While it waits: its 1-based place in the queue.
    pub queue_position: Option<usize>,
    /// While it waits: why (`waiting_because`).
    pub waiting_because: Option<String>,
}

/// The fields of a request's page, shared by both modes.
struct Fields<'a> {
    spec: &'a crate::pool::RequestSpec,
    environment: String,
    expires: crate::domain::clock::Millis,
    timeout: Option<crate::domain::clock::Millis>,
    controller: String,
    explanation: Option<String>,
}

fn request_fields(f: Fields<'_>) -> (Vec<FieldView>, Vec<FieldView>) {
    let s = f.spec;
    let opt = |v: Option<String>| v.unwrap_or_default();
    let fields = vec![
        field("Requested device", s.requested_device.to_string()),
        field("Assignee", s.assignee.clone()),
        field("Image", s.image.to_string()),
        field(
            "Image may be reused",
            if s.can_reuse { "yes" } else { "no" },
        ),
        field("Environment", f.environment),
        field(
            "Hardware type",
            opt(s.hardware_type.as_ref().map(ToString::to_string)),
        ),
        field("Processor", opt(s.processor.clone())),
        field("Pool", opt(s.pool.clone())),
        field("OS version", opt(s.os_version.clone())),
        field("Priority", s.priority.to_string()),
        field(
            "Waits in the queue up to",
            opt(s.wait.map(|w| format!("{w} s"))),
        ),
        field("Created", when(s.created)),
        field("Lease ends", when(f.expires)),
        field("State times out at", opt(f.timeout.map(when))),
        field("Controller", f.controller),
        field("Explanation", opt(f.explanation)),
    ];
    let boot_config = s
        .boot_config
        .iter()
        .map(|(k, v)| field(k, v.clone()))
        .collect();
    (fields, boot_config)
}

/// Build a request's page view (single-rack mode); `position` is its place in the queue
/// while it waits.
#[must_use]
pub fn request_view(r: &StoredRequest, devices: &[Device], position: Option<usize>) -> RequestView {
    let row = request_row(r, &device_states(devices));
    let (fields, boot_config) = request_fields(Fields {
        spec: &r.snap.spec,
        environment: row.environment.clone(),
        expires: r.snap.expires,
        timeout: r.snap.timeout,
        controller: r.server.clone(),
        explanation: r.explanation.clone(),
    });
    let device_href = if row.assigned_device.is_empty() {
        String::new()
    } else {
        format!("/ui/device/{}/", row.assigned_device)
    };
    RequestView {
        waiting_because: r.explanation.clone().filter(|_| row.waiting),
        row,
        fields,
        boot_config,
        device_href,
        controller: None,
        queue_position: position,
    }
}

/// Cluster mode: a shared request's page view. `device_state` is the state its device's
/// controller publishes (`""` when none), `owner_url` that controller's API base URL (the
/// device link goes to its page there, as the pool page's rows do), `me` this controller.
#[must_use]
pub fn shared_request_view(
    r: &crate::cluster::requests::SharedRequest,
    device_state: &str,
    me: &str,
    owner_url: Option<&str>,
    position: Option<usize>,
) -> RequestView {
    let s = &r.spec;
    let environment = s
        .environment
        .as_ref()
        .map_or("any".to_owned(), ToString::to_string);
    let assigned = r.device.clone().unwrap_or_default();
    let device_href = match (&r.device, &r.owner) {
        (None, _) => String::new(),
        (Some(d), Some(c)) if c != me => match owner_url {
            Some(u) => format!("{u}/ui/device/{d}/"),
            // This controller redirects there once the owner publishes its URL.
            None => format!("/ui/device/{d}/?controller={c}"),
        },
        (Some(d), _) => format!("/ui/device/{d}/"),
    };
    let waiting = r.state.is_waiting();
    let row = RequestRowView {
        id: r.id,
        requested_device: s.requested_device.to_string(),
        assignee: s.assignee.clone(),
        state: r.state.to_string(),
        assigned_device: assigned,
        device_state: device_state.to_owned(),
        expires: when(r.expires),
        environment: environment.clone(),
        image: s.image.to_string(),
        open: r.state.is_open(),
        waiting,
    };
    let (fields, boot_config) = request_fields(Fields {
        spec: s,
        environment,
        expires: r.expires,
        timeout: None,
        controller: r.taken_by.clone(),
        explanation: r.explanation.clone(),
    });
    RequestView {
        row,
        fields,
        boot_config,
        device_href,
        controller: r.owner.clone(),
        queue_position: position,
        waiting_because: r.explanation.clone().filter(|_| waiting),
    }
}

impl From<&crate::cluster::requests::LogLine> for LogLineView {
    fn from(l: &crate::cluster::requests::LogLine) -> Self {
        LogLineView {
            id: l.seq,
            timestamp: when(l.ts),
            source: l.source.clone(),
            actor: String::new(),
            message: l.message.clone(),
        }
    }
}

/// A device wired to a relay board.
#[derive(Debug, Clone, Serialize)]
// Fields are the template's names; only the non-obvious ones are documented.
#[allow(missing_docs)]
pub struct WiredDeviceView {
    pub name: String,
    pub relay: String,
    pub state: String,
    pub look: Look,
}

/// One relay board.
#[derive(Debug, Clone, Serialize)]
// Fields are the template's names; only the non-obvious ones are documented.
#[allow(missing_docs)]
pub struct BoardView {
    pub name: String,
    /// Protocol (`proxr`, `lcus`, `gpio`).
    pub kind: String,
    /// `healthy`, `failing` or `unused` (no operation yet).
    pub health: &'static str,
    /// When an operation last succeeded.
    pub last_ok: String,
    pub last_error: String,
    pub ops_ok: u64,
    pub ops_failed: u64,
    /// Operations waiting.
    pub queued: usize,
    /// Devices wired to it.
    pub devices: Vec<WiredDeviceView>,
    /// Its last failed operations, newest first.
    pub failures: Vec<RelayFailureView>,
}

/// One failed relay operation on the relay page.
#[derive(Debug, Clone, Serialize)]
// Fields are the template's names; only the non-obvious ones are documented.
#[allow(missing_docs)]
pub struct RelayFailureView {
    /// When (UTC).
    pub at: String,
    /// What was tried.
    pub op: String,
    /// The relay, `""` for a board-wide operation.
    pub relay: String,
    /// The device wired to that relay now, `""` when none.
    pub device: String,
    pub error: String,
}

/// The relay pages's live feed (`GET /api/relay/list/?since=V&wait=N` answers the same
/// boards as JSON; the page redraws from [`BoardView`]s).
#[derive(Debug, Clone, Serialize)]
pub struct RelaysView {
    /// Change version: pass it back as `since` to wait for the next change.
    pub version: u64,
    /// Every board, by name.
    pub boards: Vec<BoardView>,
}

/// Build the relay boards' views.
#[must_use]
pub fn boards(status: Vec<BoardStatus>, devices: &[Device]) -> Vec<BoardView> {
    status
        .into_iter()
        .map(|b| {
            let mut wired: Vec<WiredDeviceView> = devices
                .iter()
                .filter(|d| !d.retired)
                .filter_map(|d| {
                    let addr = d.wiring.relay.as_ref()?;
                    (addr.board == b.name).then(|| WiredDeviceView {
                        name: d.name.to_string(),
                        relay: addr.to_string(),
                        state: d.state.to_string(),
                        look: look(d.state, d.request.is_some()),
                    })
                })
                .collect();
            wired.sort_by(|a, b| a.name.cmp(&b.name));
            let failures = b
                .recent_failures
                .iter()
                .map(|f| {
                    let relay = f.relay.clone().unwrap_or_default();
                    RelayFailureView {
                        at: when(f.at),
                        op: f.op.clone(),
                        device: wired
                            .iter()
                            .find(|w| !relay.is_empty() && w.relay == relay)
                            .map(|w| w.name.clone())
                            .unwrap_or_default(),
                        relay,
                        error: f.error.clone(),
                    }
                })
                .collect();
            BoardView {
                name: b.name.to_string(),
                kind: b.kind.to_owned(),
                health: match b.healthy {
                    Some(true) => "healthy",
                    Some(false) => "failing",
                    None => "unused",
                },
                last_ok: b.last_ok.map(when).unwrap_or_default(),
                last_error: b.last_error.unwrap_or_default(),
                ops_ok: b.ops_ok,
                ops_failed: b.ops_failed,
                queued: b.queued,
                devices: wired,
                failures,
            }
        })
        .collect()
}

/// One choice of the history switch (`24h`, `7d`, `30d`).
#[derive(Debug, Clone, Serialize)]
pub struct WindowLinkView {
    /// The window's name, also its `?window=` value.
    pub name: &'static str,
    /// Is it the window shown?
    pub current: bool,
}

/// How long ago, for people: `3 h 5 min`, `2 d 4 h`, `40 s`.
#[must_use]
pub fn ago(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min")
    } else {
        format!("{s} s")
    }
}

/// The device page's history section.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceHistoryView {
    /// The timeline picture (SVG markup, escaped by [`super::svg`]).
    pub svg: String,
    /// Its legend (HTML).
    pub legend: String,
    /// The window's name.
    pub window: &'static str,
    /// Entries into a failed state in the window.
    pub failures: u32,
    /// Returns from a failed state to `ready` in the window.
    pub recoveries: u32,
    /// When it last failed (UTC), `""` when not known.
    pub last_failure: String,
    /// How long ago that was, `""` when not known.
    pub since_failure: String,
    /// The log does not reach back over the whole window.
    pub incomplete: bool,
}

/// Build the device page's history section.
#[must_use]
pub fn device_history_view(
    h: &crate::domain::history::DeviceHistory,
    now: crate::domain::clock::Millis,
) -> DeviceHistoryView {
    DeviceHistoryView {
        svg: super::svg::device_timeline(h, "tl"),
        legend: super::svg::activity_legend("tl"),
        window: h.window.name(),
        failures: h.failures,
        recoveries: h.recoveries,
        last_failure: h.last_failure.map(when).unwrap_or_default(),
        since_failure: h
            .last_failure
            .map(|t| ago(now.0.saturating_sub(t.0)))
            .unwrap_or_default(),
        incomplete: !h.complete,
    }
}

/// A row of the flaky-devices table.
#[derive(Debug, Clone, Serialize)]
// Fields are the template's names; only the non-obvious ones are documented.
#[allow(missing_docs)]
pub struct FlakyView {
    pub device: String,
    /// Entries into a failed state in the window.
    pub failures: u32,
    /// The last of them (UTC).
    pub last_failure: String,
}

/// The pool page's history section.
#[derive(Debug, Clone, Serialize)]
pub struct PoolHistoryView {
    /// The utilisation picture (SVG markup).
    pub svg: String,
    /// Its legend (HTML).
    pub legend: String,
    /// The window's name.
    pub window: &'static str,
    /// Most failures first.
    pub flaky: Vec<FlakyView>,
}

/// Build the pool page's history section.
#[must_use]
pub fn pool_history_view(h: &crate::domain::history::PoolHistory) -> PoolHistoryView {
    PoolHistoryView {
        svg: super::svg::pool_utilisation(h, "pu"),
        legend: super::svg::usage_legend("pu"),
        window: h.window.name(),
        flaky: h
            .flaky
            .iter()
            .map(|f| FlakyView {
                device: f.device.clone(),
                failures: f.failures,
                last_failure: when(f.last_failure),
            })
            .collect(),
    }
}

/// A row of the wait-reasons table.
#[derive(Debug, Clone, Serialize)]
// Fields are the template's names.
#[allow(missing_docs)]
pub struct WaitReasonView {
    pub reason: String,
    /// The reason in words.
    pub words: &'static str,
    pub requests: u64,
}

/// A wait reason's code in words.
fn reason_words(code: &str) -> &'static str {
    match code {
        "all_held" => "every matching device was held by other requests",
        "preparing" => "matching devices were self-testing or being flashed",
        "out_of_service" => "matching devices were failed or out of service",
        "queued_behind" => "a device was free, but other requests were ahead",
        "no_match" => "no device matched",
        _ => "",
    }
}

/// The requests page's history section.
#[derive(Debug, Clone, Serialize)]
pub struct RequestHistoryView {
    /// The histogram picture (SVG markup).
    pub svg: String,
    /// The window's name.
    pub window: &'static str,
    /// Requests that became ready in the window.
    pub served: u64,
    /// Median wait, `""` when none.
    pub p50: String,
    /// 95th percentile wait, `""` when none.
    pub p95: String,
    /// Requests that queued.
    pub waited: u64,
    /// Why they queued, most first.
    pub reasons: Vec<WaitReasonView>,
}

/// A quantile for people: `≤ 30 s`, or `more than 1 h` for the overflow bar.
fn quantile_text(q: Option<u64>, served: u64) -> String {
    match q {
        Some(v) => format!("≤ {}", super::svg::duration(v)),
        None if served > 0 => format!(
            "more than {}",
            super::svg::duration(
                crate::domain::history::WAIT_BOUNDS_MS
                    .last()
                    .copied()
                    .unwrap_or_default()
            )
        ),
        None => String::new(),
    }
}

/// Build the requests page's history section.
#[must_use]
pub fn request_history_view(h: &crate::domain::history::RequestHistory) -> RequestHistoryView {
    RequestHistoryView {
        svg: super::svg::request_waits(h),
        window: h.window.name(),
        served: h.served,
        p50: quantile_text(h.p50_ms, h.served),
        p95: quantile_text(h.p95_ms, h.served),
        waited: h.waited,
        reasons: h
            .reasons
            .iter()
            .map(|r| WaitReasonView {
                reason: r.reason.clone(),
                words: reason_words(&r.reason),
                requests: r.requests,
            })
            .collect(),
    }
}
