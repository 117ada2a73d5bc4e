//! `/api/device/…` inventory handlers: list, details, create/update, retire, comments,
//! environment, log, status and state.

use hyper::header::{CACHE_CONTROL, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::logs::entry_json;
use crate::domain::clock::Iso;
use crate::domain::model::{Device, device_subject};
use crate::domain::names::DeviceName;
use crate::domain::wiring::{RelayAddr, SutAddr};
use crate::http::body::{Body, bytes_response, json, json_response, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;
use crate::inventory::{DeviceFields, Upsert, retire_device, upsert_device};
use crate::storage::logs::LogQuery;
use crate::storage::{Snapshot, StoreError, inventory as inv};

/// The device JSON of `/api/device/list/?details=1`: the original's 13 keys plus the new
/// inventory fields.
#[must_use]
pub fn device_json(d: &Device) -> Value {
    serde_json::to_value(DeviceJson::new(d)).unwrap_or(Value::Null)
}

/// [`device_json`] as a typed view that borrows the device, so the list of 10,000 devices
/// serializes straight to bytes without building a `Value` tree (which cost ~70 µs and a few
/// KiB of heap per device; timestamps are formatted in place). Fields are in alphabetical order: the order a `Value` object
/// (a `BTreeMap`) prints them in, so the bytes are the same either way.
#[derive(Debug, serde::Serialize)]
pub struct DeviceJson<'a> {
    adb_serial: &'a Option<String>,
    /// A registration's new address, held for a tech.
    address_change: Option<AddressChangeJson<'a>>,
    /// A registration may claim the device (admin-created, not registered yet).
    allow_registration: bool,
    boot_config: &'a Option<String>,
    comments: &'a Option<String>,
    created: Iso,
    environment: &'a Option<String>,
    fastboot_serial: &'a Option<String>,
    /// A registration from a new address moves the device at once.
    follow_address: bool,
    fqdn: &'a str,
    hardware_type: &'a Option<String>,
    id: u64,
    image: &'a Option<String>,
    imaging_server: &'a str,
    inventory_id: u64,
    mac_address: String,
    name: &'a str,
    needs_tech: bool,
    needs_tech_reason: Option<String>,
    origin: &'a str,
    os_version: &'a Option<String>,
    pool: &'a Option<String>,
    processor: &'a Option<String>,
    registration: Option<RegistrationJson<'a>>,
    relay_info: &'a Option<RelayAddr>,
    request_id: Option<u64>,
    retired: bool,
    state: &'a str,
    sut: &'a Option<SutAddr>,
    updated: Iso,
}

/// The `address_change` object of [`DeviceJson`].
#[derive(Debug, serde::Serialize)]
struct AddressChangeJson<'a> {
    agent_name: &'a str,
    at: Iso,
    sut: &'a str,
}

/// The `registration` object of [`DeviceJson`] (alphabetical, as above).
#[derive(Debug, serde::Serialize)]
struct RegistrationJson<'a> {
    agent_name: &'a str,
    at: Iso,
    fields: &'a std::collections::BTreeMap<String, String>,
    ip: &'a Option<String>,
}

impl<'a> DeviceJson<'a> {
    /// The view of `d`.
    #[must_use]
    pub fn new(d: &'a Device) -> Self {
        let fqdn = d
            .wiring
            .sut_addr
            .as_ref()
            .map_or(d.name.as_str(), SutAddr::host);
        DeviceJson {
            adb_serial: &d.wiring.adb_serial,
            address_change: d.address_change.as_ref().map(|c| AddressChangeJson {
                agent_name: &c.agent_name,
                at: Iso(c.at),
                sut: c.sut.as_str(),
            }),
            allow_registration: d.allow_registration,
            boot_config: &d.lifeguard.current_boot_config,
            comments: &d.comments,
            created: Iso(d.created),
            environment: &d.facts.environment,
            fastboot_serial: &d.wiring.fastboot_serial,
            follow_address: d.follow_address,
            fqdn,
            hardware_type: &d.facts.hardware_type,
            id: d.id,
            image: &d.lifeguard.current_image,
            imaging_server: &d.server,
            inventory_id: d.id,
            mac_address: mac_address(d),
            name: &d.name,
            needs_tech: d.needs_tech().is_some(),
            needs_tech_reason: d.needs_tech(),
            origin: &d.origin,
            os_version: &d.facts.os_version,
            pool: &d.facts.pool,
            processor: &d.facts.processor,
            registration: d.registration.as_ref().map(|r| RegistrationJson {
                agent_name: &r.agent_name,
                at: Iso(r.at),
                fields: &r.fields,
                ip: &r.ip,
            }),

            relay_info: &d.wiring.relay,
            request_id: d.request,
            retired: d.retired,
            state: d.state.name(),
            sut: &d.wiring.sut_addr,
            updated: Iso(d.updated),
        }
    }
}

/// The original's `mac_address`: 12 lowercase hex digits, from the agent NAME of the
/// device's last registration when that is a MAC; empty otherwise.
fn mac_address(d: &Device) -> String {
    d.registration
        .as_ref()
        .and_then(|r| crate::inventory::registration::parse::mac_of(&r.agent_name))
        .unwrap_or_default()
}

/// A device by name, or 404.
pub(super) async fn load(ctx: &Ctx, name: &DeviceName) -> Result<Device, ApiError> {
    let n = name.to_string();
    ctx.svc
        .store
        .peek(move |snap| snap.device(&n))?
        .ok_or_else(|| ApiError::not_found(format!("no device named {name}")))
}

/// `GET /api/device/list/[?details=1][&include_retired=1]`.
///
/// The JSON is written device by device inside the read, so a 10,000-device list holds one
/// decoded device at a time per thread plus the output bytes. A long details list is
/// written in two halves on two threads (see [`PARALLEL_DETAILS_FROM`]).
pub async fn list(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let details = ctx.query.flag("details");
    let retired = ctx.query.flag("include_retired");
    let threads = cores();
    let body = ctx
        .svc
        .store
        .read(move |snap| {
            let n = snap.device_count()?;
            let parts = if details && threads > 1 && n >= PARALLEL_DETAILS_FROM {
                2
            } else {
                1
            };
            Ok(list_json(snap, n, details, retired, parts))
        })
        .await??;
    if let Some(cluster) = &ctx.svc.cluster {
        let dir = cluster.directory().await?;
        return whole_pool(&body, &dir, cluster.name(), details, retired);
    }
    Ok(bytes_response(
        StatusCode::OK,
        "application/json; charset=utf-8",
        bytes::Bytes::from(body),
    ))
}

/// Cluster mode's device list: this controller's devices (from `local`, the single-rack
/// list's JSON) plus the devices the other controllers publish, sorted by name then
/// controller. The plain list stays a list of names (a name published by two racks appears
/// twice); with details, every entry gains `controller`, and another rack's device is its
/// published pool view (`name`, `state`, `hardware_type`, `processor`, `pool`,
/// `os_version`, `environment`, `image`, `retired`, `available`, `held`, `failed`,
/// `imaging_server` = `controller`) plus its holder from the queue copy (`request_id`, the
/// shared request's `assignee` and `expires`, `null` when not held): its full record lives
/// on its owner (`/api/device/{id}/details/`, forwarded there).
fn whole_pool(
    local: &[u8],
    dir: &crate::cluster::directory::Directory,
    me: &str,
    details: bool,
    retired: bool,
) -> Result<Response<Body>, ApiError> {
    #[derive(Deserialize)]
    struct List {
        devices: Vec<Value>,
    }
    let list: List = serde_json::from_slice(local)
        .map_err(|e| ApiError::internal(format!("cannot read the local device list: {e}")))?;
    // (name, controller, entry)
    let mut all: Vec<(String, String, Value)> = Vec::with_capacity(list.devices.len());
    for mut d in list.devices {
        let name = if details {
            d["name"].as_str().unwrap_or_default().to_owned()
        } else {
            d.as_str().unwrap_or_default().to_owned()
        };
        if let Some(o) = d.as_object_mut() {
            o.insert("controller".into(), json!(me));
            // The local request holding it is the owner's private mirror: clients know the
            // shared request, as for another rack's device.
            if o.contains_key("request_id") {
                o.insert(
                    "request_id".into(),
                    json!(dir.holder(me, &name).map(|h| h.request)),
                );
            }
        }
        all.push((name, me.to_owned(), d));
    }
    for (controller, p) in &dir.devices {
        if controller == me || (p.retired && !retired) {
            continue;
        }
        let entry = if details {
            let holder = dir.holder(controller, p.name.as_str());
            json!({
                "assignee": holder.map(|h| &h.assignee),
                "available": p.available,
                "controller": controller,
                "environment": p.environment,
                "expires": holder.map(|h| h.expires.iso()),
                "failed": p.failed,
                "hardware_type": p.hardware_type,
                "held": p.held,
                "image": p.current_image,
                "imaging_server": controller,
                "name": p.name,
                "os_version": p.os_version,
                "pool": p.pool,
                "processor": p.processor,
                "request_id": holder.map(|h| h.request),
                "retired": p.retired,
                "state": p.state,
            })
        } else {
            json!(p.name)
        };
        all.push((p.name.to_string(), controller.clone(), entry));
    }
    all.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let devices: Vec<Value> = all.into_iter().map(|(_, _, d)| d).collect();
    Ok(ok(&json!({ "devices": devices })))
}

/// Cores this process may use, read once (on Linux the standard library reads the
/// cgroup's CPU quota from files to answer).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

/// From this many devices on (and with a second core), `device/list/?details=1` decodes and
/// writes the two halves of the inventory on two threads: on one, 10,000 devices came too
/// close to the 20 ms target (docs/performance.md, "Device lists"). Shorter lists and the
/// names-only list stay on one thread, where a second thread costs more than it saves.
pub const PARALLEL_DETAILS_FROM: usize = 2000;

/// The device list's JSON (`{"devices": [...]}`) from `snap`'s `n` devices, written in
/// `parts` (1 or 2) name ranges, the second on a scoped thread. The bytes do not depend on
/// `parts`.
///
/// # Errors
/// Storage failure, a corrupt record, or a device the JSON encoder refuses.
pub fn list_json(
    snap: &Snapshot,
    n: usize,
    details: bool,
    retired: bool,
    parts: usize,
) -> Result<Vec<u8>, ListError> {
    // Sized up front (a details entry is ~700 bytes): growing a 7 MB reply by doubling
    // copied it several times over.
    let per = if details { 768 } else { 24 };
    let mut out = Vec::with_capacity(64 + n.saturating_mul(per));
    out.extend_from_slice(b"{\"devices\":[");
    let split = if parts > 1 {
        snap.nth_device_name(n / 2)?
    } else {
        None
    };
    match split {
        None => {
            entries(snap, .., details, retired, &mut out)?;
        }
        Some(mid) => {
            let mid = mid.as_str();
            let cap = (n - n / 2).saturating_mul(per);
            std::thread::scope(|s| {
                let later = s.spawn(move || {
                    let mut v = Vec::with_capacity(cap);
                    entries(snap, mid.., details, retired, &mut v).map(|any| (any, v))
                });
                let first = entries(snap, ..mid, details, retired, &mut out);
                let later = later.join().map_err(|_| ListError::Panicked);
                let (first, (later, second)) = (first?, later??);
                if first && later {
                    out.push(b',');
                }
                out.extend_from_slice(&second);
                Ok::<(), ListError>(())
            })?;
        }
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// Why the device list's JSON could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// Reading the devices failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// serde_json refused a device (a bug in its JSON view: writing to memory cannot fail).
    #[error("cannot encode a device: {0}")]
    Encode(#[source] serde_json::Error),
    /// The thread writing the list's second half panicked.
    #[error("the device list's second half panicked")]
    Panicked,
}

impl From<ListError> for ApiError {
    fn from(e: ListError) -> ApiError {
        match e {
            ListError::Store(e) => e.into(),
            other => {
                tracing::error!(error = %other, "cannot write the device list");
                ApiError::internal(format!("storage error: {other}"))
            }
        }
    }
}

/// Append the list entries of the devices named in `names` to `out`, comma-separated.
/// Returns whether it wrote any.
fn entries<'a>(
    snap: &Snapshot,
    names: impl std::ops::RangeBounds<&'a str> + 'a,
    details: bool,
    retired: bool,
    out: &mut Vec<u8>,
) -> Result<bool, ListError> {
    let mut first = true;
    snap.for_each_device_in(names, |d| {
        if d.retired && !retired {
            return Ok(());
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let written = if details {
            serde_json::to_writer(&mut *out, &DeviceJson::new(&d))
        } else {
            serde_json::to_writer(&mut *out, &d.name)
        };
        written.map_err(ListError::Encode)
    })?;
    Ok(!first)
}

/// `GET /api/device/{id}/details/`.
pub async fn details(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    Ok(ok(&device_json(&load(ctx, &name).await?)))
}

fn check_fields(f: &DeviceFields) -> Result<(), ApiError> {
    crate::inventory::check_fields(f).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `PUT /api/device/{id}/`: create (201) or update (200) a device's inventory fields.
pub async fn put(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let fields: DeviceFields = json(&ctx.body)?;
    check_fields(&fields)?;
    let server = ctx.svc.server_name().to_owned();
    let actor = ctx.caller.name.clone();
    let n = name.clone();
    let (outcome, device) = ctx
        .svc
        .store
        .write(move |tx, now| {
            let outcome = upsert_device(tx, now, &server, &n, &fields, "api", Some(&actor))?;
            let device = inv::device_in_tx(tx, &n)?;
            Ok((outcome, device))
        })
        .await?;
    let device = device.ok_or_else(|| ApiError::internal("device vanished after writing it"))?;
    let status = if outcome == Upsert::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &device_json(&device)))
}

/// `DELETE /api/device/{id}/`: retire.
pub async fn retire(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let actor = ctx.caller.name.clone();
    let n = name.to_string();
    let done = ctx
        .svc
        .store
        .write(move |tx, now| retire_device(tx, now, &n, "retired through the API", Some(&actor)))
        .await?;
    match done {
        None => Err(ApiError::not_found(format!("no device named {name}"))),
        Some(changed) => Ok(ok(
            &json!({ "name": name.as_str(), "retired": true, "changed": changed }),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentsBody {
    comments: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentBody {
    environment: String,
}

/// `POST /api/device/{id}/set-comments/` with `{"comments": "..."}`; 200 with body `null`
/// as the original.
pub async fn set_comments(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let body: CommentsBody = json(&ctx.body)?;
    let fields = DeviceFields {
        comments: Some(body.comments),
        ..DeviceFields::default()
    };
    update(ctx, name, fields).await
}

/// `POST /api/device/{id}/set-environment/` with `{"environment": "..."}`.
pub async fn set_environment(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let body: EnvironmentBody = json(&ctx.body)?;
    let fields = DeviceFields {
        environment: Some(body.environment),
        ..DeviceFields::default()
    };
    update(ctx, name, fields).await
}

async fn update(
    ctx: &Ctx,
    name: DeviceName,
    fields: DeviceFields,
) -> Result<Response<Body>, ApiError> {
    check_fields(&fields)?;
    let server = ctx.svc.server_name().to_owned();
    let actor = ctx.caller.name.clone();
    let n = name.clone();
    let found = ctx
        .svc
        .store
        .write(move |tx, now| {
            if inv::device_in_tx(tx, &n)?.is_none() {
                return Ok(false);
            }
            upsert_device(tx, now, &server, &n, &fields, "api", Some(&actor))?;
            Ok(true)
        })
        .await?;
    if found {
        Ok(ok(&Value::Null))
    } else {
        Err(ApiError::not_found(format!("no device named {name}")))
    }
}

/// Read a device's log, newest first.
async fn recent(ctx: &Ctx, name: &DeviceName, q: LogQuery) -> Result<Vec<Value>, ApiError> {
    load(ctx, name).await?;
    let entries = ctx.svc.store.read(move |snap| snap.logs(&q)).await?;
    Ok(entries.iter().rev().map(entry_json).collect())
}

/// `GET /api/device/{id}/log/[?timeperiod=S][&limit=N]`: oldest first, as the original.
pub async fn log(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let now = ctx.svc.clock.now();
    let since = ctx
        .query
        .number("timeperiod")?
        .map(|s| crate::domain::clock::Millis(now.0.saturating_sub(s.saturating_mul(1000))));
    let limit = ctx
        .query
        .number("limit")?
        .unwrap_or(super::logs::MAX_LIMIT)
        .min(super::logs::MAX_LIMIT);
    let q = LogQuery {
        subject: Some(device_subject(name.as_str())),
        since,
        limit: usize::try_from(limit).unwrap_or(1000),
        ..LogQuery::default()
    };
    Ok(ok(&json!({ "log": recent(ctx, &name, q).await? })))
}

/// `GET /api/device/{id}/status/`: state and the 100 newest log rows, oldest first.
pub async fn status(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let device = load(ctx, &name).await?;
    let q = LogQuery {
        subject: Some(device_subject(name.as_str())),
        limit: 100,
        ..LogQuery::default()
    };
    Ok(ok(
        &json!({ "state": device.state, "log": recent(ctx, &name, q).await? }),
    ))
}

/// `GET /api/device/{id}/state/[?cache=1]`. Reads are cheap here, so the state is always
/// fresh; with `cache` the response allows clients to cache it for 5 s as the original did.
pub async fn state(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let device = load(ctx, &name).await?;
    let mut r = ok(&json!({ "state": device.state }));
    if ctx.query.flag("cache") {
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=5"));
    }
    Ok(r)
}

/// Decode `data` as each body this module accepts and run the same checks the handlers do
/// (the fuzz/robustness entry point; see [`super::decode_bodies`]).
pub(super) fn decode_bodies(data: &[u8]) {
    let _ = json::<CommentsBody>(data);
    let _ = json::<EnvironmentBody>(data).map(|b| {
        b.environment
            .parse::<crate::domain::names::EnvironmentName>()
    });
    if let Ok(fields) = json::<DeviceFields>(data) {
        let _ = check_fields(&fields);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::clock::SystemClock;
    use crate::storage::Store;

    /// Split in two halves on two threads, the list is byte for byte the one-thread list,
    /// whichever half the retired (left out) devices are in, including an empty half.
    #[tokio::test]
    async fn a_list_written_in_two_halves_is_the_same_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(
            &dir.path().join(crate::storage::backup::DB_FILE),
            Arc::new(SystemClock),
        )
        .expect("store");
        // Retired devices: none, the first half, the second half, every other one.
        for (case, n, retired) in [
            (
                0,
                0usize,
                &(|_| false) as &(dyn Fn(usize) -> bool + Send + Sync),
            ),
            (1, 1, &|_| false),
            (2, 2, &|_| false),
            (3, 9, &|i| i < 5),
            (4, 9, &|i| i >= 4),
            (5, 10, &|i| i % 2 == 0),
        ] {
            let flags: Vec<bool> = (0..n).map(retired).collect();
            let stored = flags.clone();
            store
                .write(move |tx, _| {
                    for d in inv::devices_in_tx(tx)? {
                        inv::remove_device_record(tx, &d.name)?;
                    }
                    for (i, r) in stored.iter().enumerate() {
                        let mut d = Device::for_test(&format!("panda-{i:02}"), "ready");
                        d.retired = *r;
                        inv::put_device(tx, &d)?;
                    }
                    Ok(())
                })
                .await
                .expect("setup");
            for details in [false, true] {
                for include_retired in [false, true] {
                    let (one, two) = store
                        .read_blocking(|snap| {
                            Ok((
                                list_json(snap, n, details, include_retired, 1).expect("one"),
                                list_json(snap, n, details, include_retired, 2).expect("two"),
                            ))
                        })
                        .expect("lists");
                    let text = String::from_utf8(two.clone()).expect("utf-8");
                    assert_eq!(one, two, "case {case}, details {details}: {text}");
                    let v: Value = serde_json::from_str(&text).expect("JSON");
                    let shown = v["devices"].as_array().expect("devices").len();
                    let want = if include_retired {
                        n
                    } else {
                        flags.iter().filter(|r| !**r).count()
                    };
                    assert_eq!(shown, want, "case {case}: {text}");
                }
            }
        }
    }
}
