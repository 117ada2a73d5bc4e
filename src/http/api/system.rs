//! `/api/version/` and `/api/health/`.

use hyper::{Response, StatusCode};
use serde_json::json;

use crate::http::body::{Body, json_response, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;
use crate::storage::logs;

/// `GET /api/version/`.
pub fn version(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let mut body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "server": ctx.app.server_name(),
        "started": ctx.app.started.iso(),
        "auth": if ctx.app.auth_open() { "open" } else { "enabled" },
        "anonymous_role": ctx.app.auth.anonymous_role().as_str(),
        "caller": { "name": ctx.caller.name, "role": ctx.caller.role.as_str() },
    });
    if ctx.app.auth_open() {
        body["warning"] = json!(crate::auth::OPEN_WARNING);
    }
    Ok(ok(&body))
}

/// `GET /api/health/`: 200 when storage answers reads and its last commit succeeded, else 503.
pub async fn health(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let store = &ctx.app.store;
    let read = store.read(logs::count).await;
    let committed = store.healthy();
    let storage_ok = read.is_ok() && committed;
    let stats = store.stats();
    let body = json!({
        "ok": storage_ok,
        "storage": {
            "ok": storage_ok,
            "last_commit_ok": committed,
            "read_error": read.as_ref().err().map(ToString::to_string),
            "log_records": read.ok(),
            "commits": stats.commits.load(std::sync::atomic::Ordering::Relaxed),
        },
    });
    let status = if storage_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json_response(status, &body))
}
