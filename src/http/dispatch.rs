//! The request pipeline, top to bottom: parse the route, identify the caller, check the
//! caller's role against the route's (before any body is read, so an unauthorised client
//! cannot make the server read a large body), read the body under a size limit and a
//! deadline, run the handler, map errors to JSON, record the call and the caller in the
//! audit log.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, HeaderValue, LOCATION,
};
use hyper::{Method, Request, Response, StatusCode};

use super::api;
use super::body::{Body, Query, error_response, read_limited};
use super::error::ApiError;
use super::route::{Route, RouteError};
use std::sync::Arc;

use crate::domain::model::device_subject;
use crate::http::auth::authorize;
use crate::http::services::Services;
use crate::storage::logs::{NewLog, append};

pub use crate::http::auth::Caller;

/// Everything a handler gets besides its typed route.
#[derive(Debug)]
pub struct Ctx {
    /// What handlers reach.
    pub svc: Arc<Services>,
    /// Query string.
    pub query: Query,
    /// Request body (empty for GET).
    pub body: Bytes,
    /// Caller.
    pub caller: Caller,
    /// Base URL for absolute links in responses (configured public URL, else the Host).
    pub base_url: String,
    /// The client's address (registrations log it).
    pub peer: SocketAddr,
    /// The request's headers (conditional GETs of static files read `If-None-Match`).
    pub headers: hyper::HeaderMap,
}

/// Name of the web sign-in cookie (it holds the token; HttpOnly, SameSite=Strict).
pub const SESSION_COOKIE: &str = "mozpool_token";

/// Who is calling: the `Authorization` header when there is one, else the sign-in cookie
/// (a stale cookie counts as signed out), else anonymous. The flag says the cookie was used.
fn identify(
    app: &Services,
    headers: &hyper::HeaderMap,
) -> (Result<Caller, crate::http::auth::AuthError>, bool) {
    if let Some(h) = headers.get(AUTHORIZATION) {
        return (app.auth.authenticate(Some(h.as_bytes())), false);
    }
    if let Some(token) = cookie(headers, SESSION_COOKIE)
        && let Some(caller) = app.auth.identify(&token)
    {
        return (Ok(caller), true);
    }
    (app.auth.authenticate(None), false)
}

/// A cookie's value from the `Cookie` headers.
#[must_use]
pub fn cookie(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Answer one request.
pub async fn handle(
    app: Arc<Services>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query_text = req.uri().query().map(str::to_owned);
    let route = Route::parse(&method, &path);
    let (caller, via_cookie) = identify(&app, req.headers());
    // A browser signed in with the cookie must also send the header the pages' JavaScript
    // adds, which a cross-site form cannot (the cookie is SameSite=Strict as well).
    let caller = match caller {
        Ok(_)
            if via_cookie
                && route.as_ref().is_ok_and(Route::mutates)
                && !matches!(route, Ok(Route::UiSignIn | Route::UiSignOut))
                && req.headers().get("x-requested-with").and_then(|v| v.to_str().ok())
                    != Some("mozpool") =>
        {
            Err(crate::http::auth::AuthError::Forbidden(
                "a signed-in browser must send X-Requested-With: mozpool with every change (CSRF protection)"
                    .into(),
            ))
        }
        other => other,
    };
    let actor = caller
        .as_ref()
        .map_or_else(|_| "unauthenticated".to_owned(), |c| c.name.clone());
    // Calls that change a device also go in that device's history; reads only in `api`, so
    // a poller cannot bury the device's own log.
    let device = route
        .as_ref()
        .ok()
        .filter(|r| r.mutates())
        .and_then(Route::device)
        .map(ToString::to_string);
    // Not audited: scrapes (every few seconds; logging each durably would only wear the SD
    // card), and pages, static files and the pages' live feed (an open page long-polls it);
    // the API calls the pages make are audited.
    let audited = !matches!(route, Ok(Route::Metrics)) && !route.as_ref().is_ok_and(Route::is_ui);
    let mutates = route.as_ref().is_ok_and(Route::mutates);
    let response = match (route, caller) {
        (Err(e), _) => route_error(&e, &path, query_text.as_deref()),
        (Ok(_), Err(e)) => error_response(&e.into()),
        (Ok(route), Ok(caller)) => match authorize(&caller, route.required_role()) {
            Err(e) => error_response(&e.into()),
            Ok(()) => match run(&app, route, req, caller, query_text.as_deref(), peer).await {
                Ok(r) => r,
                Err(e) => {
                    let mut r = error_response(&e);
                    if matches!(
                        e.status,
                        StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
                    ) {
                        // The body was not read to its end: do not try to reuse the
                        // connection (and do not wait for the rest of a slow body).
                        r.headers_mut()
                            .insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                    r
                }
            },
        },
    };
    let status = response.status();
    let elapsed = started.elapsed();
    app.metrics.record_api(status.as_u16(), elapsed);
    if mutates && status.is_success() {
        // Inventory edits, comments and the like change what live pages show.
        app.lifeguard.touch();
    }
    if !audited {
        tracing::debug!(%method, %path, status = status.as_u16(), %peer, micros = elapsed.as_micros() as u64, "api");
        return response;
    }
    tracing::info!(%method, %path, status = status.as_u16(), caller = %actor, %peer, micros = elapsed.as_micros() as u64, "api");
    let mut subjects = vec!["api".to_owned()];
    subjects.extend(device.as_deref().map(device_subject));
    let message = format!(
        "{method} {path} -> {} ({} ms) from {peer}",
        status.as_u16(),
        elapsed.as_millis()
    );
    let entry = NewLog {
        subjects,
        source: "api".into(),
        actor: Some(actor),
        message,
    };
    app.store
        .write_detached(move |tx, now| append(tx, now, entry).map(|_| ()));
    response
}

async fn run(
    app: &Arc<Services>,
    route: Route,
    req: Request<Incoming>,
    caller: Caller,
    query: Option<&str>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let base_url = base_url(app, &req);
    let headers = req.headers().clone();
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Bytes::new()
    } else {
        let deadline = app.settings.body_timeout;
        let read = read_limited(declared, req.into_body(), app.settings.max_body_bytes);
        tokio::time::timeout(deadline, read).await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {deadline:?}"),
            )
        })??
    };
    let ctx = Ctx {
        svc: Arc::clone(app),
        query: Query::parse(query),
        body,
        caller,
        base_url,
        peer,
        headers,
    };
    api::dispatch(&ctx, route).await
}

fn base_url(app: &Services, req: &Request<Incoming>) -> String {
    if let Some(url) = &app.settings.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                && !h.is_empty()
        })
        .map_or_else(|| app.settings.listen.to_string(), str::to_owned);
    format!("http://{host}")
}

fn route_error(e: &RouteError, path: &str, query: Option<&str>) -> Response<Body> {
    match e {
        RouteError::NotFound => {
            error_response(&ApiError::not_found(format!("no such API path: {path}")))
        }
        RouteError::BadName(n) => error_response(&ApiError::bad_request(n.to_string())),
        RouteError::BadId(id) => error_response(&ApiError::bad_request(format!(
            "request ids are numbers, got {id:?}"
        ))),
        RouteError::MethodNotAllowed(allowed) => {
            let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            let mut r = error_response(&ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} accepts {}", list.join(", ")),
            ));
            if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
                r.headers_mut().insert(ALLOW, v);
            }
            r
        }
        RouteError::AddSlash => {
            let target = match query {
                Some(q) => format!("{path}/?{q}"),
                None => format!("{path}/"),
            };
            let mut r = error_response(&ApiError::new(
                StatusCode::SEE_OTHER,
                "see_other",
                format!("use {target}"),
            ));
            if let Ok(v) = HeaderValue::from_str(&target) {
                r.headers_mut().insert(LOCATION, v);
            }
            r
        }
    }
}
