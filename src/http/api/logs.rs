//! `/api/log/`: the durable log, queryable by subject (device, request, `api`, ...) and time,
//! newest first, with a limit and paging.

use hyper::Response;
use serde_json::{Value, json};

use crate::domain::clock::Millis;
use crate::domain::model::{LogEntry, device_subject, request_subject};
use crate::domain::names::{DeviceName, check_name};
use crate::http::body::{Body, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;
use crate::storage::logs::LogQuery;

/// Most entries one call returns.
pub const MAX_LIMIT: u64 = 10_000;

/// A log entry as the original's JSON rows (`id`, `timestamp`, `source`, `message`) plus
/// `actor` and `subjects`.
#[must_use]
pub fn entry_json(e: &LogEntry) -> Value {
    json!({
        "id": e.seq,
        "timestamp": e.ts.iso(),
        "source": e.source,
        "message": e.message,
        "actor": e.actor,
        "subjects": e.subjects,
    })
}

/// `GET /api/log/`.
pub async fn query(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let q = &ctx.query;
    let mut subjects = Vec::new();
    if let Some(d) = q.get("device") {
        let d: DeviceName = d
            .parse()
            .map_err(|e| ApiError::bad_request(format!("device: {e}")))?;
        subjects.push(device_subject(d.as_str()));
    }
    if let Some(r) = q.number("request")? {
        subjects.push(request_subject(r));
    }
    if let Some(s) = q.get("subject") {
        check_name("subject", s).map_err(|e| ApiError::bad_request(e.to_string()))?;
        subjects.push(s.to_owned());
    }
    if subjects.len() > 1 {
        return Err(ApiError::bad_request(
            "give at most one of device, request and subject",
        ));
    }
    let limit = q.number("limit")?.unwrap_or(100).min(MAX_LIMIT);
    let lq = LogQuery {
        subject: subjects.pop(),
        since: q.number("since")?.map(Millis),
        until: q.number("until")?.map(Millis),
        before: q.number("before")?,
        limit: usize::try_from(limit).unwrap_or(100),
    };
    let entries = ctx.svc.store.read(move |snap| snap.logs(&lq)).await?;
    let next = entries.last().map(|e| e.seq);
    let rows: Vec<Value> = entries.iter().map(entry_json).collect();
    Ok(ok(&json!({ "log": rows, "next_before": next })))
}
