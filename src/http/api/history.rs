//! The history endpoints: a device's state timeline, the pool's utilisation per hour with
//! its flakiest devices, and how long requests waited (`?window=24h|7d|30d`, 24h by
//! default). The numbers the history pictures are drawn from, for scripts too.

use hyper::Response;

use crate::domain::history::Window;
use crate::domain::names::DeviceName;
use crate::http::body::{Body, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;

/// The `window` parameter: `24h` when absent, 400 when not one of the three.
pub(crate) fn window(ctx: &Ctx) -> Result<Window, ApiError> {
    match ctx.query.get("window") {
        None => Ok(Window::default()),
        Some(w) => w
            .parse()
            .map_err(|e: crate::domain::history::UnknownWindow| {
                ApiError::bad_request(format!("window: {e}"))
            }),
    }
}

/// `GET /api/device/{id}/history/`: the device's state timeline (404 for an unknown device).
pub async fn device(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let window = window(ctx)?;
    let now = ctx.svc.clock.now();
    let n = name.clone();
    let found = ctx
        .svc
        .store
        .read(move |snap| match snap.device(n.as_str())? {
            Some(_) => snap.device_history(n.as_str(), window, now).map(Some),
            None => Ok(None),
        })
        .await?;
    match found {
        Some(h) => Ok(ok(&h)),
        None => Err(ApiError::not_found(format!("no device named {name}"))),
    }
}

/// `GET /api/pool/history/`: devices per band per hour, and the flaky table.
pub async fn pool(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let window = window(ctx)?;
    let now = ctx.svc.clock.now();
    let h = ctx
        .svc
        .store
        .read(move |snap| snap.pool_history(window, now))
        .await?;
    Ok(ok(&h))
}

/// `GET /api/request/history/`: request-to-ready times and why requests queued.
pub async fn requests(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let window = window(ctx)?;
    let now = ctx.svc.clock.now();
    let h = ctx
        .svc
        .store
        .read(move |snap| snap.request_history(window, now))
        .await?;
    Ok(ok(&h))
}
