//! The request pipeline. [`handle`] reads top to bottom as its steps: parse the route,
//! (0) admission: browser safety (`Host`, `Origin`) and whether this connection may make
//! this call (fair connections), (1) identify the caller, (2) check CSRF for signed-in browsers, (3) authorize the caller
//! for the route (before any body is read, so an unauthorised client cannot make the server
//! read a large body), (4) read the body under a size limit and a deadline, (5) dispatch to
//! the handler (a long poll first takes its client's place), (6) map errors to JSON,
//! (7) record metrics and the audit log; every answer carries `X-Content-Type-Options:
//! nosniff`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, HeaderValue, LOCATION, RETRY_AFTER,
    X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};

use super::api;
use super::body::{Body, Query, error_response, read_limited};
use super::error::ApiError;
use super::forward;
use super::route::{Route, RouteError};
use crate::domain::model::device_subject;
use crate::http::auth::{AuthError, authorize};
use crate::http::limits::{Client, Connection, RETRY_AFTER_SECS, Refusal};
use crate::http::services::Services;
use crate::http::session::SESSION_COOKIE;
use crate::storage::logs::{NewLog, append};

pub use crate::http::auth::Caller;

/// Everything a handler gets besides its typed route.
#[derive(Debug)]
// Fields named after their types need no more words.
#[allow(missing_docs)]
pub struct Ctx {
    pub svc: Arc<Services>,
    pub query: Query,
    /// Request body (empty for GET).
    pub body: Bytes,
    pub caller: Caller,
    /// Base URL for absolute links in responses (configured public URL, else the Host).
    pub base_url: String,
    /// The client's address (registrations log it).
    pub peer: SocketAddr,
    /// The request's headers (conditional GETs of static files read `If-None-Match`).
    pub headers: hyper::HeaderMap,
}

/// Step 1, identify: the `Authorization` header when there is one, else the sign-in
/// session's cookie (an unknown or expired session, or one whose token is no longer
/// configured, counts as signed out), else anonymous. The flag says the cookie was used.
fn identify(svc: &Services, headers: &hyper::HeaderMap) -> (Result<Caller, AuthError>, bool) {
    if let Some(h) = headers.get(AUTHORIZATION) {
        return (svc.auth.authenticate(Some(h.as_bytes())), false);
    }
    if let Some(id) = cookie(headers, SESSION_COOKIE)
        && let Some(digest) = svc.sessions.lookup(&id, std::time::Instant::now())
        && let Some(caller) = svc.auth.identify_digest(&digest)
    {
        return (Ok(caller), true);
    }
    (svc.auth.authenticate(None), false)
}

/// Step 2, CSRF: a browser signed in with the cookie must also send the header the pages'
/// JavaScript adds with every change, which a cross-site form cannot (the cookie is
/// SameSite=Strict as well).
fn check_csrf(
    caller: Result<Caller, AuthError>,
    via_cookie: bool,
    route: Option<&Route>,
    headers: &hyper::HeaderMap,
) -> Result<Caller, AuthError> {
    let caller = caller?;
    let exempt = matches!(route, Some(Route::UiSignIn | Route::UiSignOut));
    if via_cookie
        && route.is_some_and(Route::mutates)
        && !exempt
        && headers
            .get("x-requested-with")
            .and_then(|v| v.to_str().ok())
            != Some("mozpool")
    {
        return Err(AuthError::Forbidden(
            "a signed-in browser must send X-Requested-With: mozpool with every change (CSRF protection)"
                .into(),
        ));
    }
    Ok(caller)
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

/// The parts of a call that outlive its `Request` (the body is consumed by the handler).
struct Call {
    method: Method,
    path: String,
    query: Option<String>,
    peer: SocketAddr,
}

/// Answer one request: the pipeline's steps in order.
pub async fn handle(
    svc: Arc<Services>,
    req: Request<Incoming>,
    conn: Arc<Connection>,
) -> Response<Body> {
    let started = Instant::now();
    let call = Call {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        peer: conn.peer,
    };
    let route = Route::parse(&call.method, &call.path);
    let mut response = match admit(&svc, &conn, route.as_ref().ok(), &req, &call) {
        Err(refused) => {
            record(&svc, &call, None, &refused, started.elapsed());
            refused
        }
        Ok((caller, via_cookie)) => {
            let caller = check_csrf(caller, via_cookie, route.as_ref().ok(), req.headers());
            let audit = Audit::of(route.as_ref().ok(), &caller);
            let response = match (route, caller) {
                (Err(e), _) => route_error(&e, &call.path, call.query.as_deref()),
                (Ok(_), Err(e)) => error_response(&e.into()),
                (Ok(route), Ok(caller)) => respond(&svc, route, caller, req, &call).await,
            };
            record(&svc, &call, Some(audit), &response, started.elapsed());
            response
        }
    };
    // Every answer, JSON above all: no browser may read it as anything but its declared type.
    response
        .headers_mut()
        .insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Step 0, admission, before anything else: browser safety (`Host`, and `Origin` for
/// changes: [`crate::http::browser`]), then who is calling (step 1), then whether this
/// connection may make this call ([`Connection::allows`]: connections on probation serve only
/// callers with a token and `/api/health/`). A refusal here is not audited durably (a flood
/// of them must not turn into a flood of writes); it is counted and logged.
// The refusal is the response itself, built once here; boxing it would buy nothing.
#[allow(clippy::result_large_err)]
fn admit(
    svc: &Services,
    conn: &Connection,
    route: Option<&Route>,
    req: &Request<Incoming>,
    call: &Call,
) -> Result<(Result<Caller, AuthError>, bool), Response<Body>> {
    let mutates = route.is_some_and(Route::mutates);
    if let Err(e) =
        crate::http::browser::check(&svc.settings.names, &call.method, mutates, req.headers())
    {
        tracing::info!(method = %call.method, path = %call.path, peer = %call.peer, error = %e, "refused by browser safety checks");
        return Err(refused(error_response(&e)));
    }
    let (caller, via_cookie) = identify(svc, req.headers());
    let privileged =
        matches!(route, Some(Route::Health)) || caller.as_ref().is_ok_and(|c| c.token.is_some());
    conn.allows(privileged)
        .map_err(|r| refused(refusal_response(&r)))?;
    Ok((caller, via_cookie))
}

/// Marks a response as a refusal of the admission steps (not audited durably).
#[derive(Debug, Clone, Copy)]
struct Refused;

fn refused(mut r: Response<Body>) -> Response<Body> {
    r.extensions_mut().insert(Refused);
    r
}

/// 429 (the client is over its own cap) or 503 (no room now), with `Retry-After` and
/// `Connection: close` (a refused client must not keep holding its slot).
fn refusal_response(r: &Refusal) -> Response<Body> {
    let e = match r {
        Refusal::Client(m) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            m.clone(),
        ),
        Refusal::Busy(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", m.clone()),
    };
    let mut resp = error_response(&e);
    let h = resp.headers_mut();
    h.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    refused(resp)
}

/// A long poll's place: `GET /api/request/{id}/status/?wait=N` and the pages' feeds
/// `GET /api/pool/overview/?wait=N` and `GET /api/relay/overview/?wait=N` (N > 0) may hold a connection for minutes, so each
/// client holds at most `server.max_long_polls_per_client` of them.
fn long_poll(
    svc: &Arc<Services>,
    route: &Route,
    caller: &Caller,
    call: &Call,
) -> Result<Option<crate::http::limits::LongPoll>, Refusal> {
    if !matches!(
        route,
        Route::RequestStatus(_) | Route::PoolOverview | Route::RelayOverview
    ) {
        return Ok(None);
    }
    let wait = Query::parse(call.query.as_deref())
        .number("wait")
        .ok()
        .flatten()
        .unwrap_or(0);
    if wait == 0 {
        return Ok(None);
    }
    let client = match &caller.token {
        Some(t) => Client::Token(t.clone()),
        None => Client::addr(call.peer.ip()),
    };
    svc.limits.long_poll(client).map(Some)
}

/// Steps 3 to 6 for a routed, identified call: authorize the caller for the route (before
/// any body is read, so an unauthorised client cannot make the server read a large body),
/// take a long poll's place, read the body, dispatch to the handler, and map its error to
/// JSON.
async fn respond(
    svc: &Arc<Services>,
    route: Route,
    caller: Caller,
    req: Request<Incoming>,
    call: &Call,
) -> Response<Body> {
    if let Err(e) = authorize(&caller, route.required_role()) {
        return error_response(&e.into());
    }
    // Held until the handler has answered.
    let _poll = match long_poll(svc, &route, &caller, call) {
        Ok(p) => p,
        Err(r) => return refusal_response(&r),
    };
    // Cluster mode: a device owned by another controller is handled there.
    let mut owner = None;
    if let Some(cluster) = &svc.cluster {
        match forward::decide(svc, cluster, &route, req.headers(), call.query.as_deref()).await {
            forward::Decision::Local => {}
            forward::Decision::Answer(r) => return r,
            forward::Decision::Proxy(o) => owner = Some((cluster.name().to_owned(), o)),
        }
    }
    let base_url = base_url(svc, &req);
    let headers = req.headers().clone();
    let body = match read_body(svc, req).await {
        Ok(b) => b,
        Err(e) => return error_with_close(&e),
    };
    if let Some((me, owner)) = owner {
        let out = forward::Outgoing {
            method: &call.method,
            path: &call.path,
            query: call.query.as_deref(),
            headers: &headers,
            body,
            peer: call.peer,
        };
        return forward::proxy(&me, &owner, out).await;
    }
    let ctx = Ctx {
        svc: Arc::clone(svc),
        query: Query::parse(call.query.as_deref()),
        body,
        caller,
        base_url,
        peer: call.peer,
        headers,
    };
    match api::dispatch(&ctx, route).await {
        Ok(r) => r,
        Err(e) => error_with_close(&e),
    }
}

/// Step 4, read the body (none for GET and HEAD) under the size limit and the deadline.
async fn read_body(svc: &Services, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return Ok(Bytes::new());
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let deadline = svc.settings.body_timeout;
    let read = read_limited(declared, req.into_body(), svc.settings.max_body_bytes);
    tokio::time::timeout(deadline, read).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {deadline:?}"),
        )
    })?
}

/// Step 6, map an error to its JSON response.
fn error_with_close(e: &ApiError) -> Response<Body> {
    let mut r = error_response(e);
    if matches!(
        e.status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
    ) {
        // The body was not read to its end: do not try to reuse the connection (and do
        // not wait for the rest of a slow body).
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// What the audit log records of a call, decided before the route is consumed.
struct Audit {
    /// Who called (`unauthenticated` when identification failed).
    actor: String,
    /// Calls that change a device also go in that device's history; reads only in `api`,
    /// so a poller cannot bury the device's own log.
    device: Option<String>,
    /// Not audited: scrapes (every few seconds; logging each durably would only wear the
    /// SD card), and pages, static files and the pages' live feed (an open page long-polls
    /// it); the API calls the pages make are audited.
    durable: bool,
}

impl Audit {
    fn of(route: Option<&Route>, caller: &Result<Caller, AuthError>) -> Audit {
        Audit {
            actor: caller
                .as_ref()
                .map_or_else(|_| "unauthenticated".to_owned(), |c| c.name.clone()),
            device: route
                .filter(|r| r.mutates())
                .and_then(Route::device)
                .map(ToString::to_string),
            durable: !matches!(route, Some(Route::Metrics)) && !route.is_some_and(Route::is_ui),
        }
    }
}

/// Step 7, record the call: metrics always, the durable audit log for API calls (`audit`
/// is `None` for calls refused at admission, and refusals are never durable).
fn record(
    svc: &Services,
    call: &Call,
    audit: Option<Audit>,
    response: &Response<Body>,
    elapsed: std::time::Duration,
) {
    let Call {
        method, path, peer, ..
    } = call;
    let status = response.status();
    svc.metrics.record_api(status.as_u16(), elapsed);
    let mut audit = audit.filter(|a| a.durable && response.extensions().get::<Refused>().is_none());
    let forwarded = response.extensions().get::<forward::Forwarded>();
    let not_here = forwarded.is_some() || response.extensions().get::<forward::NotHere>().is_some();
    if let (Some(a), true) = (audit.as_mut(), not_here) {
        // The device is another controller's: its owner keeps its history (and records a
        // forwarded call there); here the call is only an API call.
        a.device = None;
    }
    let Some(audit) = audit else {
        tracing::debug!(%method, %path, status = status.as_u16(), %peer, micros = elapsed.as_micros() as u64, "api");
        return;
    };
    tracing::info!(%method, %path, status = status.as_u16(), caller = %audit.actor, %peer, micros = elapsed.as_micros() as u64, "api");
    let mut subjects = vec!["api".to_owned()];
    subjects.extend(audit.device.as_deref().map(device_subject));
    let via = forwarded.map_or_else(String::new, |f| format!(" (forwarded to {})", f.0));
    let message = format!(
        "{method} {path} -> {}{via} ({} ms) from {peer}",
        status.as_u16(),
        elapsed.as_millis()
    );
    let entry = NewLog {
        subjects,
        source: "api".into(),
        actor: Some(audit.actor),
        message,
    };
    svc.store
        .write_detached(move |tx, now| append(tx, now, entry).map(|_| ()));
}

fn base_url(svc: &Services, req: &Request<Incoming>) -> String {
    if let Some(url) = &svc.settings.public_url {
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
        .map_or_else(|| svc.settings.listen.to_string(), str::to_owned);
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
