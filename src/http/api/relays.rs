//! `/api/relay/…`: relay boards for techs at the rack: list, two-way communication test,
//! and raw channel control (`mozpool relay BOARD CHANNEL status|on|off|cycle`).
//!
//! Raw control bypasses Lifeguard on purpose (a tech at the rack), and is logged on the
//! board and on the device wired to that channel.

use std::time::Duration;

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::domain::model::device_subject;
use crate::domain::names::BoardName;
use crate::http::body::{Body, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;
use crate::http::route::RelayOp;
use crate::hw::RelayAddr;
use crate::storage::logs::{NewLog, append};

fn hw_error(e: &crate::hw::Error) -> ApiError {
    match e {
        crate::hw::Error::UnknownBoard(b) => {
            ApiError::not_found(format!("no relay board named {b}"))
        }
        crate::hw::Error::BadAddress { .. } => ApiError::bad_request(e.to_string()),
        other => ApiError::new(StatusCode::BAD_GATEWAY, "hardware", other.to_string()),
    }
}

/// `GET /api/relay/list/`: every board's health and the devices wired to it.
pub async fn list(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let devices = ctx.svc.store.read(|snap| snap.devices()).await?;
    let boards: Vec<Value> = ctx
        .svc
        .lifeguard
        .hardware()
        .boards
        .status()
        .into_iter()
        .map(|b| {
            let wired: Vec<Value> = devices
                .iter()
                .filter(|d| !d.retired)
                .filter_map(|d| {
                    let relay = d.wiring.relay.as_ref()?;
                    (relay.board == b.name)
                        .then(|| json!({ "device": d.name, "relay": relay, "state": d.state }))
                })
                .collect();
            json!({ "board": b, "devices": wired })
        })
        .collect();
    Ok(ok(&json!({ "relays": boards })))
}

/// `GET /api/relay/{board}/test/`: `{"success": bool}` (plus `error`).
pub async fn test(ctx: &Ctx, board: BoardName) -> Result<Response<Body>, ApiError> {
    match ctx.svc.lifeguard.hardware().boards.test(&board).await {
        Ok(()) => Ok(ok(&json!({ "success": true }))),
        Err(crate::hw::Error::UnknownBoard(b)) => {
            Err(ApiError::not_found(format!("no relay board named {b}")))
        }
        Err(e) => Ok(ok(&json!({ "success": false, "error": e.to_string() }))),
    }
}

/// `GET|POST /api/relay/{board}/{channel}/{op}/`.
pub async fn channel(
    ctx: &Ctx,
    board: BoardName,
    channel: String,
    op: RelayOp,
) -> Result<Response<Body>, ApiError> {
    let text = format!("{board}:{channel}");
    let addr: RelayAddr = text
        .parse()
        .map_err(|e: crate::domain::wiring::AddrError| ApiError::bad_request(e.to_string()))?;
    let hw = ctx.svc.lifeguard.hardware();
    let off_time = Duration::from_millis(hw.settings.power_off_time_ms);
    let result = match op {
        RelayOp::Status => {
            let state = hw
                .boards
                .power_state(&addr)
                .await
                .map_err(|e| hw_error(&e))?;
            return Ok(ok(&json!({ "relay": text, "powered": state })));
        }
        RelayOp::On => hw.boards.power_on(&addr).await,
        RelayOp::Off => hw.boards.power_off(&addr).await,
        RelayOp::Cycle => hw.boards.power_cycle(&addr, off_time).await,
    };
    let verb = match op {
        RelayOp::On => "power on",
        RelayOp::Off => "power off",
        _ => "power cycle",
    };
    let outcome = match &result {
        Ok(()) => "done".to_owned(),
        Err(e) => format!("failed: {e}"),
    };
    let devices = ctx.svc.store.read(|snap| snap.devices()).await?;
    let mut subjects = vec![format!("board:{board}")];
    subjects.extend(
        devices
            .iter()
            .filter(|d| d.wiring.relay.as_ref().is_some_and(|a| *a == addr))
            .map(|d| device_subject(&d.name)),
    );
    let entry = NewLog {
        subjects,
        source: "relay".into(),
        actor: Some(ctx.caller.name.clone()),
        message: format!("raw {verb} of {text} by a tech (bypassing Lifeguard): {outcome}"),
    };
    ctx.svc
        .store
        .write(move |tx, now| append(tx, now, entry).map(|_| ()))
        .await?;
    result.map_err(|e| hw_error(&e))?;
    Ok(ok(&json!({ "relay": text, "success": true })))
}
