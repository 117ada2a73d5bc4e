//! `/api/image/…`, `/api/environment/…`, `/api/hardware-type/…`: lists for everyone,
//! create/replace/delete for admins.

use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::model::{Agent, BootMode, Environment, FlashStep, HardwareTypeInfo, Image};
use crate::domain::names::{EnvironmentName, HardwareType, ImageName, check_name};
use crate::http::body::{Body, json, json_response, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;
use crate::storage::Tx;
use crate::storage::inventory as inv;
use crate::storage::logs::{NewLog, append};

/// Longest description accepted.
const MAX_DESCRIPTION: usize = 1000;

fn image_json(i: &Image, id: usize) -> Value {
    json!({
        "id": id,
        "name": i.name,
        "boot_config_keys": i.boot_config_keys,
        "can_reuse": i.can_reuse,
        "hidden": i.hidden,
        "has_sut_agent": i.has_sut_agent(),
        "agent": i.agent.as_str(),
        "description": i.description,
        "steps": i.steps.iter().map(step_json).collect::<Vec<_>>(),
    })
}

/// A recipe step as the image JSON shows it: `{"partition": .., "file": ..}` for a flash, as
/// the original's, and the action with its part for the others.
fn step_json(s: &FlashStep) -> Value {
    let mut v = serde_json::Map::new();
    if !matches!(s, FlashStep::Flash { .. }) {
        v.insert("action".into(), json!(s.action()));
    }
    for (k, part) in [
        ("partition", s.partition()),
        ("file", s.file()),
        ("slot", s.slot()),
    ] {
        if let Some(part) = part {
            v.insert(k.into(), json!(part));
        }
    }
    Value::Object(v)
}

/// `GET /api/image/list/`: images that are not hidden, in the original's shape.
pub async fn image_list(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let images = ctx.svc.store.read(|snap| snap.images()).await?;
    let list: Vec<Value> = images
        .iter()
        .enumerate()
        .filter(|(_, i)| !i.hidden)
        .map(|(n, i)| image_json(i, n + 1))
        .collect();
    Ok(ok(&json!({ "images": list })))
}

/// `GET /api/image/{name}/details/` (hidden images too).
pub async fn image_details(ctx: &Ctx, name: ImageName) -> Result<Response<Body>, ApiError> {
    let images = ctx.svc.store.read(|snap| snap.images()).await?;
    images
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == name.as_str())
        .map(|(n, i)| ok(&image_json(i, n + 1)))
        .ok_or_else(|| ApiError::not_found(format!("no image named {name}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageBody {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    boot_config_keys: Vec<String>,
    #[serde(default)]
    can_reuse: bool,
    #[serde(default)]
    hidden: bool,
    #[serde(default)]
    has_sut_agent: bool,
    /// `sut`, `adb` or `none`; absent = what `has_sut_agent` says.
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    steps: Vec<StepBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepBody {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    partition: Option<String>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    slot: Option<String>,
}

fn check_description(d: Option<&String>) -> Result<(), ApiError> {
    if d.is_some_and(|d| d.len() > MAX_DESCRIPTION) {
        return Err(ApiError::bad_request(format!(
            "description is longer than {MAX_DESCRIPTION} bytes"
        )));
    }
    Ok(())
}

/// Write an inventory entry and log it, answering 201 when new, 200 when replaced.
async fn put_entry<F>(ctx: &Ctx, what: String, exists: F) -> Result<Response<Body>, ApiError>
where
    F: FnOnce(&Tx<'_>) -> Result<bool, crate::storage::StoreError> + Send + 'static,
{
    let actor = ctx.caller.name.clone();
    let msg = what.clone();
    let existed = ctx
        .svc
        .store
        .write(move |tx, now| {
            let existed = exists(tx)?;
            let verb = if existed { "replaced" } else { "created" };
            append(
                tx,
                now,
                NewLog::new("inventory".into(), "api", format!("{msg} {verb}")).by(Some(actor)),
            )?;
            Ok(existed)
        })
        .await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(status, &json!({ "ok": true, "what": what })))
}

async fn delete_entry<F>(ctx: &Ctx, what: String, remove: F) -> Result<Response<Body>, ApiError>
where
    F: FnOnce(&Tx<'_>) -> Result<bool, crate::storage::StoreError> + Send + 'static,
{
    let actor = ctx.caller.name.clone();
    let msg = what.clone();
    let removed = ctx
        .svc
        .store
        .write(move |tx, now| {
            let removed = remove(tx)?;
            if removed {
                append(
                    tx,
                    now,
                    NewLog::new("inventory".into(), "api", format!("{msg} deleted"))
                        .by(Some(actor)),
                )?;
            }
            Ok(removed)
        })
        .await?;
    if removed {
        Ok(ok(&json!({ "deleted": what })))
    } else {
        Err(ApiError::not_found(format!("no {what}")))
    }
}

/// `PUT /api/image/{name}/`.
pub async fn image_put(ctx: &Ctx, name: ImageName) -> Result<Response<Body>, ApiError> {
    let b: ImageBody = json(&ctx.body)?;
    check_description(b.description.as_ref())?;
    for k in &b.boot_config_keys {
        check_name("boot config key", k).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let steps = b
        .steps
        .iter()
        .enumerate()
        .map(|(n, s)| {
            FlashStep::from_parts(
                s.action.as_deref(),
                s.partition.as_deref(),
                s.file.as_deref(),
                s.slot.as_deref(),
            )
            .map_err(|e| ApiError::bad_request(format!("step {}: {e}", n + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let agent = match b.agent.as_deref() {
        None if b.has_sut_agent => Agent::Sut,
        None => Agent::None,
        Some(a) => {
            let agent = Agent::parse(a).ok_or_else(|| {
                ApiError::bad_request(format!("agent {a:?} is not one of sut, adb, none"))
            })?;
            if b.has_sut_agent && agent != Agent::Sut {
                return Err(ApiError::bad_request(format!(
                    "has_sut_agent: true contradicts agent {a:?}"
                )));
            }
            agent
        }
    };
    let image = Image {
        name: name.to_string(),
        description: b.description,
        boot_config_keys: b.boot_config_keys,
        can_reuse: b.can_reuse,
        hidden: b.hidden,
        agent,
        steps,
    };
    put_entry(ctx, format!("image {name}"), move |tx| {
        let existed = inv::image_in_tx(tx, &image.name)?.is_some();
        inv::put_image(tx, &image)?;
        Ok(existed)
    })
    .await
}

/// `DELETE /api/image/{name}/`.
pub async fn image_delete(ctx: &Ctx, name: ImageName) -> Result<Response<Body>, ApiError> {
    let n = name.to_string();
    delete_entry(ctx, format!("image {name}"), move |tx| {
        inv::remove_image(tx, &n)
    })
    .await
}

/// `GET /api/environment/list/`: configured environments and every environment a device
/// names, sorted, as the original's list of strings.
pub async fn environment_list(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let (envs, devices) = ctx
        .svc
        .store
        .read(|snap| Ok((snap.environments()?, snap.devices()?)))
        .await?;
    let mut names: std::collections::BTreeSet<String> = envs.into_iter().map(|e| e.name).collect();
    names.extend(
        devices
            .into_iter()
            .filter(|d| !d.retired)
            .filter_map(|d| d.facts.environment),
    );
    Ok(ok(&json!({ "environments": names })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HardwareTypeBody {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    processor: Option<String>,
    /// `bootloader_window` (default), `adb`, `already`.
    #[serde(default)]
    boot_mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DescribedBody {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    processor: Option<String>,
}

/// `PUT /api/environment/{name}/`.
pub async fn environment_put(ctx: &Ctx, name: EnvironmentName) -> Result<Response<Body>, ApiError> {
    let b: DescribedBody = json(&ctx.body)?;
    check_description(b.description.as_ref())?;
    if b.processor.is_some() {
        return Err(ApiError::bad_request("an environment has no processor"));
    }
    let env = Environment {
        name: name.to_string(),
        description: b.description,
    };
    put_entry(ctx, format!("environment {name}"), move |tx| {
        let existed = inv::environment_in_tx(tx, &env.name)?.is_some();
        inv::put_environment(tx, &env)?;
        Ok(existed)
    })
    .await
}

/// `DELETE /api/environment/{name}/`.
pub async fn environment_delete(
    ctx: &Ctx,
    name: EnvironmentName,
) -> Result<Response<Body>, ApiError> {
    let n = name.to_string();
    delete_entry(ctx, format!("environment {name}"), move |tx| {
        inv::remove_environment(tx, &n)
    })
    .await
}

/// `GET /api/hardware-type/list/`.
pub async fn hardware_type_list(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let types = ctx.svc.store.read(|snap| snap.hardware_types()).await?;
    Ok(ok(&json!({ "hardware_types": types })))
}

/// `PUT /api/hardware-type/{name}/`.
pub async fn hardware_type_put(ctx: &Ctx, name: HardwareType) -> Result<Response<Body>, ApiError> {
    let b: HardwareTypeBody = json(&ctx.body)?;
    let boot_mode = match b.boot_mode.as_deref() {
        None => BootMode::default(),
        Some(m) => BootMode::parse(m).ok_or_else(|| {
            ApiError::bad_request(format!(
                "boot_mode {m:?} is not one of bootloader_window, adb, already"
            ))
        })?,
    };
    check_description(b.description.as_ref())?;
    if let Some(p) = &b.processor {
        check_name("processor", p).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let h = HardwareTypeInfo {
        name: name.to_string(),
        processor: b.processor,
        description: b.description,
        boot_mode,
    };
    put_entry(ctx, format!("hardware type {name}"), move |tx| {
        let existed = inv::hardware_type_in_tx(tx, &h.name)?.is_some();
        inv::put_hardware_type(tx, &h)?;
        Ok(existed)
    })
    .await
}

/// `DELETE /api/hardware-type/{name}/`.
pub async fn hardware_type_delete(
    ctx: &Ctx,
    name: HardwareType,
) -> Result<Response<Body>, ApiError> {
    let n = name.to_string();
    delete_entry(ctx, format!("hardware type {name}"), move |tx| {
        inv::remove_hardware_type(tx, &n)
    })
    .await
}

/// Decode `data` as each body this module accepts and run the same checks the handlers do
/// (the fuzz/robustness entry point; see [`super::decode_bodies`]).
pub(super) fn decode_bodies(data: &[u8]) {
    let bad = |e: crate::domain::names::NameError| ApiError::bad_request(e.to_string());
    if let Ok(b) = json::<ImageBody>(data) {
        let _ = check_description(b.description.as_ref());
        for k in &b.boot_config_keys {
            let _ = check_name("boot config key", k).map_err(bad);
        }
        for s in &b.steps {
            let _ = FlashStep::from_parts(
                s.action.as_deref(),
                s.partition.as_deref(),
                s.file.as_deref(),
                s.slot.as_deref(),
            );
        }
        let _ = b.agent.as_deref().map(Agent::parse);
    }
    if let Ok(b) = json::<HardwareTypeBody>(data) {
        let _ = b.boot_mode.as_deref().map(BootMode::parse);
    }
    if let Ok(b) = json::<DescribedBody>(data) {
        let _ = check_description(b.description.as_ref());
        if let Some(p) = &b.processor {
            let _ = check_name("processor", p).map_err(bad);
        }
    }
}
