//! `/api/version/`, `/api/health/`, `/metrics` and `/api/backup/`.

use std::io::Read as _;

use bytes::Bytes;
use hyper::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::http::body::{Body, bytes_response, json_response, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::{ApiError, retry_secs};
use crate::storage::{Fault, Snapshot};

/// `GET /api/version/`.
pub fn version(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let mut body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "server": ctx.svc.server_name(),
        "started": ctx.svc.started.iso(),
        "auth": if ctx.svc.auth_open() { "open" } else { "enabled" },
        "anonymous_role": ctx.svc.auth.anonymous_role().as_str(),
        "caller": { "name": ctx.caller.name, "role": ctx.caller.role.as_str() },
    });
    if ctx.svc.auth_open() {
        body["warning"] = json!(crate::http::auth::OPEN_WARNING);
    }
    Ok(ok(&body))
}

/// `GET /api/health/`: 200 when storage answers reads, takes writes and its last commit
/// succeeded, else 503. While the store refuses writes (a full disk, an I/O error) the
/// storage object says why (`writable`, `disk_full`, `fault`, `reason`, `since`,
/// `retry_after_secs`) and the answer carries `Retry-After`. The body also reports every
/// relay board's health (`hardware.ok` is false when a board's last operation failed; the
/// service still works for the other boards, so that alone is not a 503).
pub async fn health(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let store = &ctx.svc.store;
    let read = store.read(Snapshot::log_count).await;
    let committed = store.healthy();
    let outage = store.outage();
    let storage_ok = read.is_ok() && committed && outage.is_none();
    let stats = store.stats();
    let boards = ctx.svc.lifeguard.hardware().boards.status();
    let hardware_ok = boards.iter().all(|b| b.healthy != Some(false));
    let mut body = json!({
        "ok": storage_ok && hardware_ok,
        "hardware": {
            "ok": hardware_ok,
            "relay_boards": boards,
        },
        "storage": {
            "ok": storage_ok,
            "last_commit_ok": committed,
            "read_error": read.as_ref().err().map(ToString::to_string),
            "log_records": read.ok(),
            "commits": stats.commits.load(std::sync::atomic::Ordering::Relaxed),
            "writable": outage.is_none(),
            "disk_full": outage.as_ref().is_some_and(|o| o.fault == Fault::DiskFull),
            "fault": outage.as_ref().map(|o| o.fault.as_str()),
            "reason": outage.as_ref().map(ToString::to_string),
            "since": outage.as_ref().map(|o| o.since.iso()),
            "retry_after_secs": outage.as_ref().map(|o| retry_secs(o.retry_in)),
            "reopens": stats.reopens.load(std::sync::atomic::Ordering::Relaxed),
        },
    });
    // Cluster mode adds what etcd looks like from here; it does not change `ok` or the
    // status: the rack keeps serving its own devices without etcd.
    if let (Some(c), Some(o)) = (&ctx.svc.cluster, body.as_object_mut()) {
        let s = c.status();
        o.insert(
            "cluster".into(),
            json!({
                "etcd_ok": s.etcd_ok,
                "etcd_error": s.etcd_error,
                "etcd_alarms": s.etcd_alarms,
                "lease": s.lease.is_some(),
                "is_scheduler": s.is_scheduler,
            }),
        );
    }
    let status = if storage_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = json_response(status, &body);
    if let Some(o) = &outage {
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_secs(o.retry_in)));
    }
    Ok(r)
}

/// `GET /api/cluster/`: the etcd cluster as this controller sees it, or `"enabled": false`
/// when it runs alone (no `[cluster]` section). Always 200: a lost quorum is a state to
/// report (`etcd_ok: false`), not a failure of this call.
#[must_use]
pub fn cluster(ctx: &Ctx) -> Response<Body> {
    let body = match &ctx.svc.cluster {
        Some(c) => {
            let mut v = serde_json::to_value(c.status()).unwrap_or_else(|_| json!({}));
            if let Some(o) = v.as_object_mut() {
                o.insert("enabled".into(), json!(true));
            }
            v
        }
        None => json!({"enabled": false}),
    };
    json_response(StatusCode::OK, &body)
}

/// `GET /metrics`: Prometheus text format 0.0.4.
pub async fn metrics(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let app = &ctx.svc;
    let mut text = crate::http::metrics::render(
        &app.metrics,
        &app.store,
        app.started.0,
        app.pool.watched_requests(),
    )
    .await;
    if let Some(c) = &app.cluster {
        crate::http::metrics::render_cluster(&mut text, &c.status());
    }
    Ok(bytes_response(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(text),
    ))
}

/// Size of the chunks a backup is streamed in.
const BACKUP_CHUNK: usize = 64 * 1024;

/// `GET /api/backup/`: a consistent snapshot of the whole store, as a store file.
///
/// The snapshot is written to a temporary file under `<data_dir>/tmp/` (one read transaction
/// copied into a fresh store file; see `storage::backup`), the file is unlinked while still
/// open, and its bytes are streamed, so the service never holds the database in memory and
/// no snapshot file survives a crash. Headers: `Content-Length`, and
/// `X-Mozpool-Schema-Version`.
pub async fn backup(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let store = ctx.svc.store.clone();
    let scratch = ctx.svc.settings.scratch_dir.clone();
    let (file, info) = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&scratch)
            .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix("backup-")
            .suffix(crate::storage::backup::FILE_SUFFIX)
            .tempfile_in(&scratch)
            .map_err(|e| {
                format!(
                    "cannot create a snapshot file in {}: {e}",
                    scratch.display()
                )
            })?;
        let info =
            crate::storage::backup::snapshot(&store, tmp.path()).map_err(|e| e.to_string())?;
        let file = tmp
            .reopen()
            .map_err(|e| format!("cannot reopen the snapshot: {e}"))?;
        // Dropping the handle unlinks the path; the open file keeps the data.
        drop(tmp);
        Ok::<_, String>((file, info))
    })
    .await
    .map_err(|e| ApiError::internal(format!("snapshot task failed: {e}")))?
    .map_err(ApiError::internal)?;
    tracing::info!(bytes = info.bytes, caller = %ctx.caller.name, "backup snapshot taken");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut buf = vec![0u8; BACKUP_CHUNK];
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        break; // the client went away
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    let mut r = Response::new(Body::channel(rx));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(info.bytes));
    h.insert(
        CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!(
            "attachment; filename=\"{}\"",
            crate::storage::backup::DOWNLOAD_NAME
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
    );
    h.insert(
        "x-mozpool-schema-version",
        HeaderValue::from(info.schema_version),
    );
    Ok(r)
}
