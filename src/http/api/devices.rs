//! `/api/device/…` inventory handlers: list, details, create/update, retire, comments,
//! environment, log, status and state.

use hyper::header::{CACHE_CONTROL, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::logs::entry_json;
use crate::http::body::{Body, json, json_response, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;
use crate::inventory::{DeviceFields, Upsert, retire_device, upsert_device};
use crate::model::{Device, device_subject};
use crate::storage::logs::{LogQuery, query};
use crate::storage::{inventory as inv, tables};
use crate::types::DeviceName;

/// The device JSON of `/api/device/list/?details=1`: the original's 13 keys plus the new
/// inventory fields.
#[must_use]
pub fn device_json(d: &Device) -> Value {
    let fqdn = d
        .wiring
        .sut_addr
        .as_deref()
        .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_owned()))
        .unwrap_or_else(|| d.name.clone());
    json!({
        "id": d.id,
        "name": d.name,
        "fqdn": fqdn,
        "inventory_id": d.id,
        "mac_address": mac_address(d),
        "imaging_server": d.server,
        "relay_info": d.wiring.relay,
        "state": d.state,
        "comments": d.comments,
        "image": d.lifeguard.current_image,
        "boot_config": d.lifeguard.current_boot_config,
        "environment": d.facts.environment,
        "request_id": d.request,
        "hardware_type": d.facts.hardware_type,
        "processor": d.facts.processor,
        "pool": d.facts.pool,
        "os_version": d.facts.os_version,
        "sut": d.wiring.sut_addr,
        "fastboot_serial": d.wiring.fastboot_serial,
        "retired": d.retired,
        "origin": d.origin,
        "needs_tech": d.needs_tech().is_some(),
        "needs_tech_reason": d.needs_tech(),
        "registration": d.registration.as_ref().map(|r| json!({
            "at": r.at.iso(),
            "agent_name": r.agent_name,
            "ip": r.ip,
            "fields": r.fields,
        })),
        "created": d.created.iso(),
        "updated": d.updated.iso(),
    })
}

/// The original's `mac_address`: 12 lowercase hex digits, from the agent NAME of the
/// device's last registration when that is a MAC; empty otherwise.
fn mac_address(d: &Device) -> String {
    d.registration
        .as_ref()
        .and_then(|r| crate::registration::parse::mac_of(&r.agent_name))
        .unwrap_or_default()
}

async fn load(ctx: &Ctx, name: &DeviceName) -> Result<Device, ApiError> {
    let n = name.to_string();
    ctx.app
        .store
        .read(move |tx| inv::device(&tx.open_table(tables::DEVICES)?, &n))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no device named {name}")))
}

/// `GET /api/device/list/[?details=1][&include_retired=1]`.
pub async fn list(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let details = ctx.query.flag("details");
    let retired = ctx.query.flag("include_retired");
    let devices = ctx
        .app
        .store
        .read(|tx| inv::devices(&tx.open_table(tables::DEVICES)?))
        .await?;
    let devices = devices.iter().filter(|d| retired || !d.retired);
    let list: Vec<Value> = if details {
        devices.map(device_json).collect()
    } else {
        devices.map(|d| json!(d.name)).collect()
    };
    Ok(ok(&json!({ "devices": list })))
}

/// `GET /api/device/{id}/details/`.
pub async fn details(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    Ok(ok(&device_json(&load(ctx, &name).await?)))
}

fn check_fields(f: &DeviceFields) -> Result<(), ApiError> {
    crate::inventory::check_fields(f).map_err(ApiError::bad_request)
}

/// `PUT /api/device/{id}/`: create (201) or update (200) a device's inventory fields.
pub async fn put(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let fields: DeviceFields = json(&ctx.body)?;
    check_fields(&fields)?;
    let server = ctx.app.server_name().to_owned();
    let actor = ctx.caller.name.clone();
    let n = name.to_string();
    let (outcome, device) = ctx
        .app
        .store
        .write(move |tx, now| {
            let outcome = upsert_device(tx, now, &server, &n, &fields, "api", Some(&actor))?;
            let device = inv::device(&tx.open_table(tables::DEVICES)?, &n)?;
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
        .app
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
    let server = ctx.app.server_name().to_owned();
    let actor = ctx.caller.name.clone();
    let n = name.to_string();
    let found = ctx
        .app
        .store
        .write(move |tx, now| {
            if inv::device(&tx.open_table(tables::DEVICES)?, &n)?.is_none() {
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
    let entries = ctx.app.store.read(move |tx| query(tx, &q)).await?;
    Ok(entries.iter().rev().map(entry_json).collect())
}

/// `GET /api/device/{id}/log/[?timeperiod=S][&limit=N]`: oldest first, as the original.
pub async fn log(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let now = ctx.app.clock.now();
    let since = ctx
        .query
        .number("timeperiod")?
        .map(|s| crate::clock::Millis(now.0.saturating_sub(s.saturating_mul(1000))));
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
