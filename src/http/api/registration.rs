//! `POST /api/device/register/` (a device registers itself, JSON form of the SUTAgent
//! registration) and `POST /api/inventory/sync/` (admin: sync inventory-owned devices).

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::devices::device_json;
use crate::domain::names::DeviceName;
use crate::http::body::{Body, json, json_response, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;
use crate::inventory::registration::apply::{
    Channel, Refusal, SettleError, apply, log_malformed, settle_address_change,
};
use crate::inventory::registration::parse::from_pairs;
use crate::inventory::registration::trust::Refused;
use crate::inventory::sync::{SyncBody, SyncError, sync};

/// `POST /api/device/register/` with `{"NAME": "...", "IPADDR": "...", ...}`. Keys are
/// matched case-insensitively; values are strings or integers (`null` = absent). 201 with
/// the device when created, 200 when updated, 400 when malformed, 409 when refused by policy
/// (retired device, name collision, not open to registrations; `address_change_held` when
/// the new address waits for a tech), 429 over the new-device rate.
pub async fn register(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let peer = ctx.peer.ip();
    let from = peer.to_string();
    let body: serde_json::Map<String, Value> = json(&ctx.body)?;
    let mut pairs = Vec::with_capacity(body.len());
    let mut bad = None;
    for (k, v) in body {
        match v {
            Value::String(s) => pairs.push((k, s)),
            Value::Number(n) if n.is_u64() => pairs.push((k, n.to_string())),
            Value::Null => {}
            _ => {
                bad = Some(format!(
                    "field {k} must be a string or a non-negative integer"
                ));
                break;
            }
        }
    }
    let parsed = match bad {
        Some(reason) => Err(reason),
        None => from_pairs(pairs).map_err(|e| e.to_string()),
    };
    let msg = match parsed {
        Ok(m) => m,
        Err(reason) => {
            // Counted always, written at the gate's log rate.
            if let Some(unlogged) = ctx
                .svc
                .registration
                .refusal(Refused::Malformed, ctx.svc.clock.now())
            {
                let r = reason.clone();
                ctx.svc
                    .store
                    .write(move |tx, now| {
                        log_malformed(tx, now, &from, Channel::Http, &r, unlogged)
                    })
                    .await?;
            }
            return Err(ApiError::bad_request(reason));
        }
    };
    let server = ctx.svc.server_name().to_owned();
    let gate = ctx.svc.registration.clone();
    let applied = ctx
        .svc
        .store
        .write(move |tx, now| apply(tx, now, &server, &msg, Some(peer), Channel::Http, &gate))
        .await?
        .map_err(|refusal| match refusal {
            Refusal::AddressHeld { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "address_change_held",
                refusal.to_string(),
            ),
            Refusal::TooManyNew { .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "registration_rate_limited",
                refusal.to_string(),
            ),
            _ => ApiError::new(
                StatusCode::CONFLICT,
                "registration_refused",
                refusal.to_string(),
            ),
        })?;
    let status = if applied.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut v = device_json(&applied.device);
    v["changes"] = json!(applied.changes);
    Ok(json_response(status, &v))
}

/// `POST /api/inventory/sync/[?dry_run=1][&force=1]` with `{"devices": [...]}`: 200 with
/// the change report; 400 for invalid rows; 409 when the safety valve refuses.
pub async fn inventory_sync(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let body: SyncBody = json(&ctx.body)?;
    let report = sync(
        &ctx.svc.store,
        ctx.svc.server_name(),
        body.devices,
        ctx.query.flag("dry_run"),
        ctx.query.flag("force"),
        Some(ctx.caller.name.clone()),
    )
    .await
    .map_err(|e| match e {
        SyncError::Invalid(row) => ApiError::bad_request(row.to_string()),
        e @ SyncError::TooManyRetirements { .. } => {
            ApiError::new(StatusCode::CONFLICT, "safety_valve", e.to_string())
        }
        SyncError::Store(s) => s.into(),
    })?;
    Ok(ok(&report))
}

/// `POST /api/device/{id}/address-change/{accept|dismiss}/` (admin): settle the address
/// change a registration announced. 200 with the device; 404 for no such device; 409 when
/// it holds no change. The pool is woken, as the device may be free again.
pub async fn address_change(
    ctx: &Ctx,
    name: DeviceName,
    accept: bool,
) -> Result<Response<Body>, ApiError> {
    let actor = ctx.caller.name.clone();
    let n = name.to_string();
    let settled = ctx
        .svc
        .store
        .write(move |tx, now| settle_address_change(tx, now, &n, accept, &actor))
        .await?
        .map_err(|e| match e {
            SettleError::NoDevice(_) => ApiError::not_found(e.to_string()),
            _ => ApiError::new(StatusCode::CONFLICT, "nothing_held", e.to_string()),
        })?;
    ctx.svc.pool.device_changed();
    Ok(ok(&device_json(&settled)))
}
