//! The MozPool layer's API: `/api/device/{id|any}/request/` and `/api/request/…`, in the
//! original 4.x shapes, with a long-poll status and a real queue.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hyper::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::logs::entry_json;
use crate::domain::model::request_subject;
use crate::domain::names::{EnvironmentName, HardwareType, ImageName, check_name};
use crate::http::body::{Body, json, no_content, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;
use crate::pool::driver::settled;
use crate::pool::{DeviceChoice, Event, ImagingResult, PoolError, RequestSpec};
use crate::storage::logs::LogQuery;
use crate::storage::requests::StoredRequest;

mod shared;

/// Longest accepted `wait` on a status long poll.
const MAX_STATUS_WAIT: u64 = 300;
/// Longest accepted `assignee`.
const MAX_ASSIGNEE: usize = 256;

fn pool_error(e: PoolError) -> ApiError {
    match e {
        PoolError::Store(s) => s.into(),
        PoolError::NoRequest(id) => ApiError::not_found(format!("no request with id {id}")),
        PoolError::NoDevice(d) => ApiError::not_found(format!("no device named {d}")),
        PoolError::NoImage(i) => ApiError::not_found(format!("no image named {i}")),
        PoolError::Busy(m) | PoolError::Ignored(m) => ApiError::conflict(m),
    }
}

/// The request object of the original (`id`, `requested_device`, `assignee`, `expires`,
/// `environment`, `image`, `boot_config`, `assigned_device`, `url`) plus `state` and the new
/// criteria.
#[must_use]
pub fn request_json(r: &StoredRequest, base_url: &str) -> Value {
    let s = &r.snap;
    json!({
        "id": s.id,
        "requested_device": s.spec.requested_device.to_string(),
        "assignee": s.spec.assignee,
        "expires": s.expires.iso(),
        "environment": s.spec.environment.as_ref().map_or("any", |e| e.as_str()),
        "image": s.spec.image.as_str(),
        "boot_config": s.spec.boot_config_json(),
        "assigned_device": s.assigned.as_ref().map_or(String::new(), |a| a.device.to_string()),
        "url": format!("{base_url}/api/request/{}/", s.id),
        "state": s.state.to_string(),
        "imaging_server": r.server,
        "hardware_type": s.spec.hardware_type.as_ref().map(ToString::to_string),
        "processor": s.spec.processor,
        "pool": s.spec.pool,
        "os_version": s.spec.os_version,
        "priority": s.spec.priority,
        "wait": s.spec.wait,
    })
}

fn field<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

fn string_field(body: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match field(body, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a string"))),
    }
}

/// A whole number given as a JSON number or numeric string, as the original accepted.
fn int_field(body: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match field(body, key) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{key} must be a whole number"))),
        Some(Value::String(s)) => {
            s.trim().parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("{key} must be a whole number, got {s:?}"))
            })
        }
        Some(_) => Err(ApiError::bad_request(format!(
            "{key} must be a whole number"
        ))),
    }
}

fn name_field<T: std::str::FromStr<Err = crate::domain::names::NameError>>(
    body: &Map<String, Value>,
    key: &str,
) -> Result<Option<T>, ApiError> {
    string_field(body, key)?
        .map(|s| {
            s.parse::<T>()
                .map_err(|e| ApiError::bad_request(format!("{key}: {e}")))
        })
        .transpose()
}

/// `POST /api/device/{id|any}/request/`.
pub async fn create(ctx: &Ctx, device: DeviceChoice) -> Result<Response<Body>, ApiError> {
    let body: Value = json(&ctx.body)?;
    let Value::Object(body) = body else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let assignee = string_field(&body, "assignee")?
        .ok_or_else(|| ApiError::bad_request("assignee is required"))?;
    if assignee.trim().is_empty()
        || assignee.len() > MAX_ASSIGNEE
        || assignee.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "assignee must be 1 to {MAX_ASSIGNEE} printable characters"
        )));
    }
    let duration = int_field(&body, "duration")?
        .ok_or_else(|| ApiError::bad_request("duration is required"))?;
    let duration = u64::try_from(duration)
        .ok()
        .filter(|d| *d > 0)
        .ok_or_else(|| ApiError::bad_request("duration must be a positive number of seconds"))?;
    let image: ImageName =
        name_field(&body, "image")?.ok_or_else(|| ApiError::bad_request("image is required"))?;
    let environment: Option<EnvironmentName> = name_field(&body, "environment")?;
    let hardware_type: Option<HardwareType> = name_field(&body, "hardware_type")?;
    let mut criteria = BTreeMap::new();
    for key in ["processor", "pool", "os_version"] {
        if let Some(v) = string_field(&body, key)? {
            check_name(key, &v).map_err(|e| ApiError::bad_request(e.to_string()))?;
            criteria.insert(key, v);
        }
    }
    let priority = int_field(&body, "priority")?.unwrap_or(0);
    let priority =
        i32::try_from(priority).map_err(|_| ApiError::bad_request("priority is out of range"))?;
    let wait = int_field(&body, "wait")?
        .map(|w| {
            u64::try_from(w)
                .map_err(|_| ApiError::bad_request("wait must be a non-negative number of seconds"))
        })
        .transpose()?;
    let img_name = image.to_string();
    // Read here for the 404 and the boot config keys; the pool reads the image again in its
    // create transaction (`create_tx`), where `can_reuse` and the keys are taken atomically
    // with the request. Passing this copy down would save a read, but the transaction's is
    // the one that counts, so both stay for now.
    let img = ctx
        .svc
        .store
        .peek(move |snap| snap.image(&img_name))?
        .ok_or_else(|| ApiError::not_found(format!("no image named {image}")))?;
    let mut boot_config = BTreeMap::new();
    for key in &img.boot_config_keys {
        let v = field(&body, key).ok_or_else(|| {
            ApiError::bad_request(format!("image {image} needs boot config key {key}"))
        })?;
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if text.len() > 2048 {
            return Err(ApiError::bad_request(format!(
                "{key} is longer than 2048 bytes"
            )));
        }
        boot_config.insert(key.clone(), text);
    }
    let mut spec = RequestSpec::new(device, &assignee, image, ctx.svc.clock.now());
    spec.boot_config = boot_config;
    spec.environment = environment.filter(|e| e.as_str() != "any");
    spec.hardware_type = hardware_type;
    spec.processor = criteria.remove("processor");
    spec.pool = criteria.remove("pool");
    spec.os_version = criteria.remove("os_version");
    spec.priority = priority;
    spec.wait = wait;
    if let Some(cluster) = &ctx.svc.cluster {
        return shared::create(ctx, cluster, spec, duration).await;
    }
    let r = ctx
        .svc
        .pool
        .create(spec, duration, ctx.caller.token.clone())
        .await
        .map_err(pool_error)?;
    Ok(ok(&json!({ "request": request_json(&r, &ctx.base_url) })))
}

/// `GET /api/request/list/[?include_closed=1]`.
pub async fn list(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let include_closed = ctx.query.flag("include_closed");
    if let Some(cluster) = &ctx.svc.cluster {
        return shared::list(ctx, cluster, include_closed).await;
    }
    let (requests, devices) = ctx
        .svc
        .store
        .read(move |snap| Ok((snap.requests(!include_closed)?, snap.devices()?)))
        .await?;
    let states: HashMap<&str, &str> = devices
        .iter()
        .map(|d| (d.name.as_str(), d.state.name()))
        .collect();
    let rows: Vec<Value> = requests
        .iter()
        .filter(|r| include_closed || r.snap.state != crate::pool::RequestState::Closed)
        .map(|r| {
            let assigned = r
                .snap
                .assigned
                .as_ref()
                .map_or(String::new(), |a| a.device.to_string());
            let mut v = request_json(r, &ctx.base_url);
            v["device_state"] = json!(states.get(assigned.as_str()).copied().unwrap_or(""));
            v["open"] = json!(r.snap.state.is_open());
            v["waiting"] = json!(r.snap.state.is_waiting());
            v
        })
        .collect();
    Ok(ok(&json!({ "requests": rows })))
}

/// Only the token that made a request, or an admin, may renew, return or close it.
fn check_owner(ctx: &Ctx, r: &StoredRequest) -> Result<(), ApiError> {
    if crate::http::auth::may_manage_request(&ctx.caller, r.owner_token.as_deref()) {
        return Ok(());
    }
    let owner = r.owner_token.as_deref().unwrap_or("anonymous callers");
    Err(ApiError::forbidden(format!(
        "request {} belongs to {owner}; only its owner or an admin may change it",
        r.snap.id
    )))
}

async fn load(ctx: &Ctx, id: u64) -> Result<StoredRequest, ApiError> {
    ctx.svc
        .pool
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no request with id {id}")))
}

/// `GET /api/request/{id}/details/`.
pub async fn details(ctx: &Ctx, id: u64) -> Result<Response<Body>, ApiError> {
    if let Some(cluster) = &ctx.svc.cluster {
        return shared::details(ctx, cluster, id).await;
    }
    Ok(ok(&request_json(&load(ctx, id).await?, &ctx.base_url)))
}

async fn log_rows(ctx: &Ctx, id: u64, limit: usize) -> Result<Vec<Value>, ApiError> {
    let q = LogQuery {
        subject: Some(request_subject(id)),
        limit,
        ..LogQuery::default()
    };
    let entries = ctx.svc.store.read(move |snap| snap.logs(&q)).await?;
    Ok(entries.iter().rev().map(entry_json).collect())
}

/// `GET /api/request/{id}/status/[?wait=N]`: `{"state", "log"}` as the original, plus the
/// queue position and why nothing matched yet while waiting. With `wait`, the call returns
/// as soon as the state changes (or after N seconds), so clients need not busy-poll.
pub async fn status(ctx: &Ctx, id: u64) -> Result<Response<Body>, ApiError> {
    let wait = ctx.query.number("wait")?;
    if let Some(cluster) = &ctx.svc.cluster {
        return shared::status(ctx, cluster, id, wait).await;
    }
    // Subscribed before the first read, so a change right after it is not missed.
    let mut watch = wait.map(|_| ctx.svc.pool.watch_request(id));
    let mut r = load(ctx, id).await?;
    if let (Some(wait), Some(watch)) = (wait, &mut watch) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.min(MAX_STATUS_WAIT));
        let start_state = r.snap.state;
        while r.snap.state == start_state && !settled(start_state) {
            tokio::select! {
                () = watch.changed() => {}
                () = tokio::time::sleep_until(deadline) => break,
                () = ctx.svc.shutdown.cancelled() => break,
            }
            r = load(ctx, id).await?;
        }
    }
    drop(watch);
    let position = if r.snap.state.is_waiting() {
        ctx.svc.pool.queue_position(id).await?
    } else {
        None
    };
    Ok(ok(&json!({
        "state": r.snap.state.to_string(),
        "log": log_rows(ctx, id, 100).await?,
        "assigned_device": r.snap.assigned.as_ref().map_or(String::new(), |a| a.device.to_string()),
        "expires": r.snap.expires.iso(),
        "queue_position": position,
        "waiting_because": r.explanation,
    })))
}

/// `GET /api/request/{id}/log/`: every row, oldest first (at most 10000).
pub async fn log(ctx: &Ctx, id: u64) -> Result<Response<Body>, ApiError> {
    if let Some(cluster) = &ctx.svc.cluster {
        return shared::log(cluster, id).await;
    }
    load(ctx, id).await?;
    Ok(ok(&json!({ "log": log_rows(ctx, id, 10_000).await? })))
}

/// `POST /api/request/{id}/renew/` with `{"duration": seconds}`: the lease ends `duration`
/// from now (replaces, as the original). 204.
pub async fn renew(ctx: &Ctx, id: u64) -> Result<Response<Body>, ApiError> {
    let body: Value = json(&ctx.body)?;
    let Value::Object(body) = body else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let duration = int_field(&body, "duration")?
        .ok_or_else(|| ApiError::bad_request("duration is required"))?;
    // As at creation: a lease of 0 seconds would close the request at once.
    let duration_secs = u64::try_from(duration)
        .ok()
        .filter(|d| *d > 0)
        .ok_or_else(|| ApiError::bad_request("duration must be a positive number of seconds"))?;
    if let Some(cluster) = &ctx.svc.cluster {
        return shared::renew(ctx, cluster, id, duration_secs).await;
    }
    check_owner(ctx, &load(ctx, id).await?)?;
    ctx.svc
        .pool
        .deliver(
            id,
            Event::Renew { duration_secs },
            Some(ctx.caller.name.clone()),
        )
        .await
        .map_err(pool_error)?;
    Ok(no_content())
}

/// `POST /api/request/{id}/return/`: close the request; its device is rebooted and verified
/// before anyone else gets it. 204, also when it was already closed.
pub async fn return_request(ctx: &Ctx, id: u64) -> Result<Response<Body>, ApiError> {
    if let Some(cluster) = &ctx.svc.cluster {
        return shared::return_request(ctx, cluster, id).await;
    }
    check_owner(ctx, &load(ctx, id).await?)?;
    ctx.svc
        .pool
        .deliver(id, Event::Close, Some(ctx.caller.name.clone()))
        .await
        .map_err(pool_error)?;
    Ok(no_content())
}

/// `GET|POST /api/request/{id}/event/{event}/`: `close`, `expire`, or `lifeguard_finished`
/// with `{"imaging_result": ...}`. 200 `{}` when taken; 409 when the state ignored it.
pub async fn event(ctx: &Ctx, id: u64, event: String) -> Result<Response<Body>, ApiError> {
    if let Some(cluster) = &ctx.svc.cluster {
        return shared::event(ctx, cluster, id, &event).await;
    }
    let r = load(ctx, id).await?;
    let ev = match event.as_str() {
        "close" => {
            check_owner(ctx, &r)?;
            Event::Close
        }
        "expire" => Event::Expire,
        "lifeguard_finished" => {
            let body: Value = json(&ctx.body)?;
            let result = body
                .get("imaging_result")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::bad_request("lifeguard_finished needs {\"imaging_result\": ...}")
                })?;
            let device = r
                .snap
                .assigned
                .as_ref()
                .map(|a| a.device.clone())
                .ok_or_else(|| ApiError::conflict("the request holds no device"))?;
            Event::LifeguardFinished {
                device,
                imaging_result: ImagingResult::parse(result),
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown or internal request event {other:?} (accepted: close, expire, lifeguard_finished)"
            )));
        }
    };
    let (accepted, after) = ctx
        .svc
        .pool
        .deliver(id, ev, Some(ctx.caller.name.clone()))
        .await
        .map_err(pool_error)?;
    if accepted {
        Ok(ok(&json!({})))
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("event {event} was ignored in state {}", after.snap.state),
        ))
    }
}
