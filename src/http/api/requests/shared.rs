//! Cluster mode's request calls: the same paths and JSON shapes as single-rack mode,
//! answered from the shared queue in etcd (`cluster::requests`) by any controller. The
//! scheduler and the owners (`pool::shared`) move the requests on; these handlers only
//! create, read, renew and return.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::MAX_STATUS_WAIT;
use crate::cluster::Cluster;
use crate::cluster::requests::{SharedRequest, Versioned};
use crate::domain::model::request_subject;
use crate::http::body::{Body, json_response, no_content, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;
use crate::pool::driver::settled;
use crate::pool::shared::{busy, queue_position};
use crate::pool::{DeviceChoice, RequestSpec, RequestState};

/// Header a client may send with a create so a retry (on any controller) yields the same
/// request.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Longest accepted idempotency key.
const MAX_IDEM: usize = 200;

/// The request object, as `request_json` renders a local one.
fn request_json(r: &SharedRequest, base_url: &str) -> Value {
    let s = &r.spec;
    json!({
        "id": r.id,
        "requested_device": s.requested_device.to_string(),
        "assignee": s.assignee,
        "expires": r.expires.iso(),
        "environment": s.environment.as_ref().map_or("any", |e| e.as_str()),
        "image": s.image.as_str(),
        "boot_config": s.boot_config_json(),
        "assigned_device": r.device.clone().unwrap_or_default(),
        "url": format!("{base_url}/api/request/{}/", r.id),
        "state": r.state.to_string(),
        "imaging_server": r.taken_by,
        "hardware_type": s.hardware_type.as_ref().map(ToString::to_string),
        "processor": s.processor,
        "pool": s.pool,
        "os_version": s.os_version,
        "priority": s.priority,
        "wait": s.wait,
        "controller": r.owner,
    })
}

/// The request's log lines from the `skip`th on, as single-rack mode's log rows (`id`,
/// `timestamp`, `source`, `message`, `actor`, `subjects`).
fn log_json(r: &SharedRequest, skip: usize) -> Vec<Value> {
    r.log
        .iter()
        .skip(skip)
        .map(|l| {
            json!({
                "id": l.seq,
                "timestamp": l.ts.iso(),
                "source": l.source,
                "message": l.message,
                "actor": null,
                "subjects": [request_subject(r.id)],
            })
        })
        .collect()
}

/// Which controller's device a named request means: `chosen` (the `?controller=` query
/// parameter) among the controllers publishing `device` (`publishers`, with their URLs),
/// or the only one. `Err` is the answer's status and JSON body: 409 `ambiguous_device`
/// listing the candidates in the shape `http::forward` uses, or 404 as single-rack mode
/// answers an unknown device.
fn pick_controller(
    device: &str,
    chosen: Option<&str>,
    publishers: &[(String, Option<String>)],
) -> Result<String, (StatusCode, Value)> {
    let candidates: Vec<Value> = publishers
        .iter()
        .map(|(c, url)| json!({ "controller": c, "url": url }))
        .collect();
    match (chosen, publishers) {
        (Some(c), _) => publishers
            .iter()
            .find(|(p, _)| p == c)
            .map(|(p, _)| p.clone())
            .ok_or_else(|| {
                (
                    StatusCode::NOT_FOUND,
                    json!({
                        "error": format!("controller {c} publishes no device named {device}"),
                        "code": "not_found",
                        "candidates": candidates,
                    }),
                )
            }),
        (None, []) => Err((
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no device named {device}"), "code": "not_found" }),
        )),
        (None, [(only, _)]) => Ok(only.clone()),
        (None, _) => Err((
            StatusCode::CONFLICT,
            json!({
                "error": format!(
                    "{} controllers publish a device named {device} (names are unique per rack only); add ?controller=NAME to pick one",
                    publishers.len()
                ),
                "code": "ambiguous_device",
                "candidates": candidates,
            }),
        )),
    }
}

/// `POST /api/device/{id|any}/request/` in cluster mode. A named device is looked up among
/// the devices every rack publishes (`?controller=NAME` picks the rack when several have
/// the name) and the request is pinned to that rack (`RequestSpec::controller`). Without
/// `wait`, a named device that is busy is refused with 409 as on a single rack
/// ([`crate::pool::shared::busy`]), and nothing is created.
pub async fn create(
    ctx: &Ctx,
    cluster: &Cluster,
    mut spec: RequestSpec,
    duration: u64,
) -> Result<Response<Body>, ApiError> {
    let named = if let DeviceChoice::Named(device) = &spec.requested_device {
        let dir = cluster.directory().await?;
        let mut publishers: Vec<(String, Option<String>)> = dir
            .devices
            .iter()
            .filter(|(_, d)| d.name == *device && !d.retired)
            .map(|(c, _)| (c.clone(), dir.url_of(c)))
            .collect();
        publishers.sort();
        publishers.dedup();
        let chosen = ctx.query.get("controller").filter(|c| !c.is_empty());
        match pick_controller(device.as_str(), chosen, &publishers) {
            Ok(c) => {
                spec.controller = Some(c.clone());
                Some((c, device.to_string()))
            }
            Err((status, body)) => return Ok(json_response(status, &body)),
        }
    } else {
        None
    };
    let idem = match ctx.headers.get(IDEMPOTENCY_HEADER) {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .filter(|k| {
                    !k.is_empty()
                        && k.len() <= MAX_IDEM
                        && k.chars().all(|c| c.is_ascii_graphic() && c != '/')
                })
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Idempotency-Key must be 1 to {MAX_IDEM} printable ASCII characters without '/'"
                    ))
                })?;
            Some(k.to_owned())
        }
    };
    if let Some((controller, device)) = &named
        && spec.wait.is_none()
        && let Some(why) = busy(&*cluster.current_queue().await?, controller, device)
    {
        // A retry of a create that went through (the device may be busy with that very
        // request now) answers the first request, as any retry with the key does.
        if let Some(k) = &idem
            && let Some(first) = cluster.idempotent_request(k).await?
        {
            return Ok(ok(
                &json!({ "request": request_json(&first, &ctx.base_url) }),
            ));
        }
        return Err(ApiError::conflict(why));
    }
    let now = ctx.svc.clock.now();
    let (expires, _) = ctx.svc.pool.timings().lease_end(now, duration);
    let token = ctx.caller.token.clone();
    let (r, _new) = cluster
        .create_request(idem.as_deref(), &ctx.svc.clock, |id| {
            SharedRequest {
                id,
                spec: spec.clone(),
                expires,
                state: RequestState::Queued,
                device: None,
                owner: None,
                taken_by: cluster.name().to_owned(),
                explanation: None,
                owner_token: token.clone(),
                since: now,
                requeued: None,
                ended: None,
                log: Vec::new(),
            }
            .with_log(
                now,
                "api",
                format!(
                    "created on controller {} by {}",
                    cluster.name(),
                    ctx.caller.name
                ),
            )
        })
        .await?;
    Ok(ok(&json!({ "request": request_json(&r, &ctx.base_url) })))
}

async fn load(cluster: &Cluster, id: u64) -> Result<Versioned<SharedRequest>, ApiError> {
    cluster
        .request(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no request with id {id}")))
}

/// `GET /api/request/list/` in cluster mode: every controller's requests.
pub async fn list(
    ctx: &Ctx,
    cluster: &Cluster,
    include_closed: bool,
) -> Result<Response<Body>, ApiError> {
    let (mut requests, devices) = if include_closed {
        cluster.all_requests().await?
    } else {
        cluster.open_requests().await?
    };
    // etcd lists keys in text order (10 before 9); single-rack mode lists by id.
    requests.sort_by_key(|r| r.id);
    let states: HashMap<(&str, &str), &str> = devices
        .iter()
        .map(|(c, d)| ((c.as_str(), d.name.as_str()), d.state.as_str()))
        .collect();
    let rows: Vec<Value> = requests
        .iter()
        .filter(|r| include_closed || r.state.is_open())
        .map(|r| {
            let device_state = r
                .owner
                .as_deref()
                .zip(r.device.as_deref())
                .and_then(|k| states.get(&k).copied())
                .unwrap_or_default();
            let mut v = request_json(r, &ctx.base_url);
            v["device_state"] = json!(device_state);
            v["open"] = json!(r.state.is_open());
            v["waiting"] = json!(r.state.is_waiting());
            v
        })
        .collect();
    Ok(ok(&json!({ "requests": rows })))
}

/// `GET /api/request/{id}/details/` in cluster mode.
pub async fn details(ctx: &Ctx, cluster: &Cluster, id: u64) -> Result<Response<Body>, ApiError> {
    Ok(ok(&request_json(
        &load(cluster, id).await?.value,
        &ctx.base_url,
    )))
}

/// `GET /api/request/{id}/status/[?wait=N]` in cluster mode: the long poll watches the
/// request's key.
pub async fn status(
    ctx: &Ctx,
    cluster: &Cluster,
    id: u64,
    wait: Option<u64>,
) -> Result<Response<Body>, ApiError> {
    // The first read is linearizable (etcd), so a poll sees what the client did through
    // another controller just before; after a wake-up the new version comes from the
    // in-memory copy when it has it (no etcd call per change).
    let mut r = Arc::new(load(cluster, id).await?);
    if let Some(wait) = wait {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.min(MAX_STATUS_WAIT));
        let start = r.value.state;
        while r.value.state == start && !settled(start) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || ctx.svc.shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                () = cluster.wait_request_change(id, r.mod_revision, left) => {}
                () = ctx.svc.shutdown.cancelled() => break,
            }
            r = match cluster.request_after(id, r.mod_revision) {
                Some(newer) => newer,
                None => Arc::new(load(cluster, id).await?),
            };
        }
    }
    let v = &r.value;
    let position = queue_position(cluster, &r, ctx.svc.clock.now(), ctx.svc.pool.policy()).await?;
    // As single-rack mode: the last 100 lines, oldest first.
    let skip = v.log.len().saturating_sub(100);
    Ok(ok(&json!({
        "state": v.state.to_string(),
        "log": log_json(v, skip),
        "assigned_device": v.device.clone().unwrap_or_default(),
        "expires": v.expires.iso(),
        "queue_position": position,
        "waiting_because": v.explanation,
        "controller": v.owner,
    })))
}

fn check_owner(ctx: &Ctx, r: &SharedRequest) -> Result<(), ApiError> {
    if crate::http::auth::may_manage_request(&ctx.caller, r.owner_token.as_deref()) {
        return Ok(());
    }
    let owner = r.owner_token.as_deref().unwrap_or("anonymous callers");
    Err(ApiError::forbidden(format!(
        "request {} belongs to {owner}; only its owner or an admin may change it",
        r.id
    )))
}

/// Apply `change` to request `id` with a compare on its mod revision, retrying when
/// another controller wrote it meanwhile.
async fn modify(
    ctx: &Ctx,
    cluster: &Cluster,
    id: u64,
    change: impl Fn(&mut SharedRequest) -> bool,
) -> Result<(), ApiError> {
    for attempt in 0..20 {
        // The first try starts from the queue copy; after a lost compare, from etcd.
        let r = if attempt == 0 {
            cluster
                .request_to_change(id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no request with id {id}")))?
        } else {
            load(cluster, id).await?
        };
        check_owner(ctx, &r.value)?;
        let mut nv = r.value.clone();
        if !change(&mut nv) {
            return Ok(());
        }
        if cluster.update_request(&nv, r.mod_revision, None).await? {
            return Ok(());
        }
    }
    Err(ApiError::conflict(format!(
        "request {id} kept changing; try again"
    )))
}

/// `POST /api/request/{id}/renew/` in cluster mode. 204.
pub async fn renew(
    ctx: &Ctx,
    cluster: &Cluster,
    id: u64,
    duration_secs: u64,
) -> Result<Response<Body>, ApiError> {
    let now = ctx.svc.clock.now();
    let (expires, _) = ctx.svc.pool.timings().lease_end(now, duration_secs);
    modify(ctx, cluster, id, |r| {
        if !r.state.is_open() {
            return false;
        }
        r.expires = expires;
        r.push_log(
            now,
            "api",
            format!(
                "Request renewed until {} through controller {} by {}.",
                expires.iso(),
                cluster.name(),
                ctx.caller.name
            ),
        );
        true
    })
    .await?;
    Ok(no_content())
}

/// `POST /api/request/{id}/return/` in cluster mode: the request is closed in etcd; the
/// device's owner hands it back to its rack, which self-tests it. 204, also when it was
/// already closed.
pub async fn return_request(
    ctx: &Ctx,
    cluster: &Cluster,
    id: u64,
) -> Result<Response<Body>, ApiError> {
    close(ctx, cluster, id, "returned").await?;
    Ok(no_content())
}

/// Close request `id` (owner or admin only) with a log line saying `how` and where;
/// whether it was open.
async fn close(ctx: &Ctx, cluster: &Cluster, id: u64, how: &str) -> Result<bool, ApiError> {
    let now = ctx.svc.clock.now();
    let was_open = std::sync::atomic::AtomicBool::new(false);
    modify(ctx, cluster, id, |r| {
        let open = r.state.is_open();
        was_open.store(open, std::sync::atomic::Ordering::Relaxed);
        if !open {
            return false;
        }
        r.close(
            now,
            "api",
            format!(
                "Request {how} through controller {} by {}.",
                cluster.name(),
                ctx.caller.name
            ),
        );
        true
    })
    .await?;
    Ok(was_open.into_inner())
}

/// `GET /api/request/{id}/log/` in cluster mode: the lines the request keeps in etcd (the
/// last `MAX_LOG_LINES`), oldest first.
pub async fn log(cluster: &Cluster, id: u64) -> Result<Response<Body>, ApiError> {
    let r = load(cluster, id).await?;
    Ok(ok(&json!({ "log": log_json(&r.value, 0) })))
}

/// `GET|POST /api/request/{id}/event/{event}/` in cluster mode: `close` returns the request
/// (its owner or an admin), `expire` ends it as its lease running out would; both 200 `{}`,
/// or 409 when it was already over. `lifeguard_finished` has no meaning here: the device's
/// own controller reports imaging results to its local mirror request, never a client.
pub async fn event(
    ctx: &Ctx,
    cluster: &Cluster,
    id: u64,
    event: &str,
) -> Result<Response<Body>, ApiError> {
    let how = match event {
        "close" => "closed (event close)",
        "expire" => "expired (event expire)",
        "lifeguard_finished" => {
            load(cluster, id).await?;
            return Err(ApiError::bad_request(
                "event lifeguard_finished has no meaning for a cluster request: the controller owning the device reports imaging results itself (accepted here: close, expire)",
            ));
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown or internal request event {other:?} (accepted in cluster mode: close, expire)"
            )));
        }
    };
    if close(ctx, cluster, id, how).await? {
        return Ok(ok(&json!({})));
    }
    let state = load(cluster, id).await?.value.state;
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("event {event} was ignored in state {state}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn racks(names: &[&str]) -> Vec<(String, Option<String>)> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), Some(format!("http://127.0.0.1:1/{n}"))))
            .collect()
    }

    #[test]
    fn a_named_device_is_pinned_to_the_rack_publishing_it() {
        assert_eq!(
            pick_controller("sim-0001", None, &racks(&["rack-b"])),
            Ok("rack-b".to_owned())
        );
        let two = racks(&["rack-a", "rack-b"]);
        assert_eq!(
            pick_controller("sim-0001", Some("rack-b"), &two),
            Ok("rack-b".to_owned())
        );
        let (status, body) = pick_controller("sim-0001", None, &two).expect_err("ambiguous");
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["code"], "ambiguous_device");
        assert_eq!(body["candidates"][1]["controller"], "rack-b");
        assert_eq!(body["candidates"][1]["url"], "http://127.0.0.1:1/rack-b");
        let (status, body) = pick_controller("sim-0001", Some("rack-q"), &two).expect_err("404");
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "not_found");
        let (status, body) = pick_controller("sim-0009", None, &[]).expect_err("unknown");
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no device named sim-0009");
    }
}
