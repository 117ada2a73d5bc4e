//! `/api/device/{id}/…` hardware and state-machine endpoints: events, conditional state
//! change, power, reboot, flash, ping, bootconfig, and the simulated rack's fault knobs.
//!
//! Every hardware action goes through the device's state machine, so a device being worked
//! on is never handed out and two actions never overlap on one device: an action the current
//! state cannot take answers 409 with the reason.

use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::devices::load;
use crate::domain::names::{DeviceName, ImageName};
use crate::http::body::{Body, bytes_response, json, json_response, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;
use crate::lifeguard::store::ApplyError;
use crate::lifeguard::{DeliverError, Event};

/// Map a delivery failure to the API's answer.
fn deliver_error(e: DeliverError) -> ApiError {
    match e {
        DeliverError::Store(s) => s.into(),
        DeliverError::Apply(ApplyError::NoDevice(n)) => {
            ApiError::not_found(format!("no device named {n}"))
        }
        DeliverError::Apply(ApplyError::Retired(n)) => {
            ApiError::conflict(format!("device {n} is retired"))
        }
        DeliverError::Apply(ApplyError::Refused(r)) => ApiError::conflict(r.to_string()),
        DeliverError::Apply(ApplyError::Force(crate::lifeguard::ForceError::Conflict {
            current,
        })) => ApiError::conflict(format!("device is in state {current}")),
        DeliverError::Apply(ApplyError::Force(crate::lifeguard::ForceError::UnknownState(u))) => {
            ApiError::bad_request(u.to_string())
        }
    }
}

async fn deliver(ctx: &Ctx, name: &DeviceName, event: Event) -> Result<Response<Body>, ApiError> {
    let applied = ctx
        .svc
        .lifeguard
        .deliver(name.as_str(), event, Some(ctx.caller.name.clone()))
        .await
        .map_err(deliver_error)?;
    Ok(ok(&json!({ "state": applied.state.to_string() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageBody {
    image: ImageName,
    #[serde(default)]
    boot_config: Option<Value>,
}

/// The original sends `boot_config` as JSON text; an object is accepted too.
fn boot_config_text(v: Option<Value>) -> Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Ok("{}".to_owned()),
        Some(Value::String(s)) => {
            if s.is_empty() {
                return Ok("{}".to_owned());
            }
            serde_json::from_str::<Value>(&s)
                .map_err(|e| ApiError::bad_request(format!("boot_config is not JSON text: {e}")))?;
            Ok(s)
        }
        Some(v @ Value::Object(_)) => Ok(v.to_string()),
        Some(_) => Err(ApiError::bad_request(
            "boot_config must be a JSON object or its text",
        )),
    }
}

async fn please_image(ctx: &Ctx, name: &DeviceName) -> Result<Response<Body>, ApiError> {
    let body: ImageBody = json(&ctx.body)?;
    flash_image(ctx, name, body).await
}

/// Flash `body.image` onto the device (the `please_image` event), after checking the image.
async fn flash_image(
    ctx: &Ctx,
    name: &DeviceName,
    body: ImageBody,
) -> Result<Response<Body>, ApiError> {
    let boot_config = boot_config_text(body.boot_config)?;
    let image = body.image.to_string();
    let found = ctx.svc.store.peek(move |snap| snap.image(&image))?;
    let Some(img) = found else {
        return Err(ApiError::not_found(format!(
            "no image named {}",
            body.image
        )));
    };
    if img.steps.is_empty() {
        return Err(ApiError::bad_request(format!(
            "image {} has no flash steps",
            body.image
        )));
    }
    let event = Event::PleaseImage {
        image: body.image,
        boot_config,
        has_agent: img.agent != crate::domain::model::Agent::None,
        request: None,
    };
    deliver(ctx, name, event).await
}

/// `GET|POST /api/device/{id}/event/{event}/`.
pub async fn event(ctx: &Ctx, name: DeviceName, event: String) -> Result<Response<Body>, ApiError> {
    let ev = match event.as_str() {
        "please_image" => return please_image(ctx, &name).await,
        "please_power_cycle" => Event::PleasePowerCycle,
        "please_reboot" => Event::PleaseReboot,
        "please_power_off" => Event::PleasePowerOff,
        "please_power_on" => Event::PleasePowerOn,
        "please_self_test" => Event::PleaseSelfTest,
        "please_start_maintenance" => Event::PleaseStartMaintenance,
        "please_end_maintenance" => Event::PleaseEndMaintenance,
        "power_cycle_ok" | "power_cycle_failed" | "ping_ok" | "sut_verify_ok" | "sut_sdcard_ok"
        | "sut_sdcard_failed" | "failed" | "timeout" => {
            return Err(ApiError::bad_request(format!(
                "{event} is an internal event: only the controller's own hardware results may send it"
            )));
        }
        "mobile_init_started"
        | "android_downloading"
        | "android_extracting"
        | "android_rebooting"
        | "b2g_downloading"
        | "b2g_extracting"
        | "b2g_rebooting"
        | "maint_mode"
        | "self_test_running"
        | "self_test_ok"
        | "failed_self_test" => {
            return Err(ApiError::bad_request(format!(
                "{event} came from MozPool's PXE live image; mozpool flashes with fastboot and does not use it"
            )));
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown device event {other:?}"
            )));
        }
    };
    deliver(ctx, &name, ev).await
}

/// `POST /api/device/{id}/state-change/{from}/to/{to}/`.
pub async fn state_change(
    ctx: &Ctx,
    name: DeviceName,
    from: String,
    to: String,
) -> Result<Response<Body>, ApiError> {
    let applied = ctx
        .svc
        .lifeguard
        .force(name.as_str(), from, to, Some(ctx.caller.name.clone()))
        .await
        .map_err(deliver_error)?;
    Ok(ok(&json!({ "state": applied.state.to_string() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerCycleBody {
    #[serde(default)]
    pxe_config: Option<String>,
    #[serde(default)]
    boot_config: Option<Value>,
}

/// `POST /api/device/{id}/power-cycle/`: a Lifeguard power cycle. With the original's
/// `pxe_config` (the 4.2.1 web UI's "PXE boot"), the PXE config names one of our images
/// (`GET /api/bmm/pxe_config/list/`), and booting a device into it means what it meant
/// there, installing that image: the call is a flash of that image with `boot_config`.
/// An unknown name is a 404 the old page shows. `boot_config` without `pxe_config` is
/// ignored, as the original did.
pub async fn power_cycle(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let body: PowerCycleBody = json(&ctx.body)?;
    let Some(pxe) = body.pxe_config.filter(|p| !p.is_empty()) else {
        return deliver(ctx, &name, Event::PleasePowerCycle).await;
    };
    let unknown = || {
        ApiError::not_found(format!(
            "no pxe_config named {pxe}: the PXE configs here are the images (GET /api/bmm/pxe_config/list/), and PXE-booting one flashes it"
        ))
    };
    let image: ImageName = pxe.parse().map_err(|_| unknown())?;
    let known = {
        let i = image.to_string();
        ctx.svc.store.peek(move |snap| snap.image(&i))?.is_some()
    };
    if !known {
        return Err(unknown());
    }
    flash_image(
        ctx,
        &name,
        ImageBody {
            image,
            boot_config: body.boot_config,
        },
    )
    .await
}

/// `POST /api/device/{id}/flash/` with `{"image", "boot_config"?}`.
pub async fn flash(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    please_image(ctx, &name).await
}

/// `POST /api/device/{id}/power-off/` (also GET, as the original).
pub async fn power_off(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    deliver(ctx, &name, Event::PleasePowerOff).await
}

/// `POST /api/device/{id}/power-on/`.
pub async fn power_on(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    deliver(ctx, &name, Event::PleasePowerOn).await
}

/// `POST /api/device/{id}/reboot/`.
pub async fn reboot(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    deliver(ctx, &name, Event::PleaseReboot).await
}

/// `POST /api/device/{id}/clear-pxe/`: mozpool writes no PXE files, so there is never one to
/// clear; answers 200 `{}` for old clients after checking the device exists.
pub async fn clear_pxe(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    load(ctx, &name).await?;
    Ok(ok(&json!({})))
}

/// `GET /api/device/{id}/ping/`: `{"success": bool}` (plus `error` when it failed).
pub async fn ping(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let device = load(ctx, &name).await?;
    match ctx.svc.lifeguard.probe(&device).await {
        Ok(()) => Ok(ok(&json!({ "success": true }))),
        Err(e) => Ok(ok(&json!({ "success": false, "error": e.to_string() }))),
    }
}

/// `GET /api/device/{id}/bootconfig/`: raw boot config text of the image being installed
/// (or, when none is, of the installed one); empty when there is none.
pub async fn bootconfig(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let d = load(ctx, &name).await?;
    let text = d
        .lifeguard
        .next_boot_config
        .or(d.lifeguard.current_boot_config)
        .unwrap_or_default();
    Ok(bytes_response(
        StatusCode::OK,
        "application/json; charset=utf-8",
        text.into(),
    ))
}

/// `PUT /api/sim/device/{id}/faults/` with the fault knobs (`does_not_boot`, `sut_flaky`,
/// `fastboot_hangs`, `sut_garbage`); 404 unless running on the simulated rack.
pub async fn sim_faults(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let faults: crate::hw::sim::SimFaults = json(&ctx.body)?;
    if faults.sut_flaky.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err(ApiError::bad_request(
            "sut_flaky is a probability between 0 and 1",
        ));
    }
    let Some(rack) = &ctx.svc.sim else {
        return Err(ApiError::not_found("not running on a simulated rack"));
    };
    let Some(d) = rack.devices.iter().find(|d| d.name == name) else {
        return Err(ApiError::not_found(format!(
            "no simulated device named {name}"
        )));
    };
    d.device.set_faults(faults.clone());
    Ok(json_response(
        StatusCode::OK,
        &json!({ "device": name.as_str(), "faults": faults }),
    ))
}
