//! Cluster mode: a device call for a device owned by another controller goes to that owner
//! (`docs/cluster.md`, "Device calls on any controller").
//!
//! Only the owner touches a device (its Lifeguard, hardware, log and store are local), so a
//! call that names a device this controller does not have, but another controller
//! publishes, is **proxied** to the owner: method, path, query, body and the client's
//! headers (its `Authorization` among them) are sent on, and the owner's answer (status,
//! headers, body, streamed) comes back. A proxy rather than a 307: clients then need no
//! redirect handling (many HTTP libraries drop `Authorization` when a redirect changes
//! host, and MozPool's 302s were mishandled), the owner's URL need not be reachable from
//! the client, and a POST body is not sent twice. The device's web page is the exception:
//! the browser is redirected to the owner's page, whose buttons then talk to the owner.
//!
//! Rules, in order: a `?controller=NAME` query picks the controller; a local device always
//! wins; a call already forwarded (header [`FORWARDED_BY`]) is never forwarded again (508);
//! a name published by one other controller goes there; by several, 409 with the
//! candidates; by none, the local handler answers (404, or `PUT` creates the device here).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::body::{Body, Query, json_response};
use super::route::Route;
use super::services::Services;
use crate::cluster::Cluster;
use crate::cluster::directory::Owner;
use crate::domain::names::DeviceName;

/// Request header a controller adds to a call it forwards, naming itself. A controller that
/// receives it never forwards the call again (loop guard).
pub const FORWARDED_BY: &str = "x-mozpool-forwarded-by";
/// Response header naming the controller that answered a forwarded call.
pub const ANSWERED_BY: &str = "x-mozpool-controller";

/// How long the owner has to start answering a forwarded call. Device calls answer in
/// seconds (a ping, a power action); the body then streams without a deadline.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);
/// How long connecting to the owner may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(2);

/// Marks a response relayed from another controller: the audit log records the call, but
/// not in the device's history (the owner records it there).
#[derive(Debug, Clone)]
pub struct Forwarded(pub String);

/// Marks a refusal about a device this controller does not have (loop, ambiguity,
/// unknown owner): audited as an API call, not in a device history here.
#[derive(Debug, Clone, Copy)]
pub struct NotHere;

/// What to do with a call.
#[derive(Debug)]
pub enum Decision {
    /// Answer here (the device is local, or published by no one else).
    Local,
    /// Answer with this (a refusal, an ambiguity, a redirect to the owner's page).
    Answer(Response<Body>),
    /// Proxy the call to this owner.
    Proxy(Owner),
}

/// The device a route acts on, when the call must run on that device's owner. Request
/// creation is not one: the shared queue answers it on any controller.
fn target(route: &Route) -> Option<&DeviceName> {
    match route {
        Route::DeviceRequest(_) => None,
        Route::UiDevice(d) => Some(d),
        r => r.device(),
    }
}

/// Decide where a call runs (cluster mode only).
pub async fn decide(
    svc: &Services,
    cluster: &Cluster,
    route: &Route,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Decision {
    let Some(device) = target(route) else {
        return Decision::Local;
    };
    let me = cluster.name();
    let query = Query::parse(query);
    let chosen = query.get("controller").filter(|c| !c.is_empty());
    if chosen == Some(me) {
        return Decision::Local;
    }
    let name = device.to_string();
    // A store error counts as local: the handler reports it.
    let local = svc
        .store
        .peek(move |snap| snap.device(&name))
        .map_or(true, |d| d.is_some());
    if local && chosen.is_none() {
        return Decision::Local;
    }
    if let Some(by) = headers.get(FORWARDED_BY) {
        let by = String::from_utf8_lossy(by.as_bytes()).into_owned();
        return Decision::Answer(error(
            StatusCode::LOOP_DETECTED,
            "forward_loop",
            format!(
                "{by} forwarded this call to {me}, which does not have device {device}; a forwarded call is never forwarded again (the controllers disagree on who owns it: try again in a second)"
            ),
            json!({ "controller": me, "forwarded_by": by }),
        ));
    }
    let dir = match cluster.directory().await {
        Ok(d) => d,
        Err(e) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!(
                    "device {device} is not on {me}, and the controller owning it cannot be looked up: {e}"
                ),
                json!({}),
            );
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return Decision::Answer(r);
        }
    };
    let all = dir.owners(device.as_str(), me);
    let owners: Vec<Owner> = match chosen {
        Some(c) => all.iter().filter(|o| o.controller == c).cloned().collect(),
        None => all.clone(),
    };
    let candidates: Vec<Value> = all
        .iter()
        .map(|o| json!({ "controller": o.controller, "url": o.url }))
        .collect();
    match owners.as_slice() {
        [] => match chosen {
            Some(c) => Decision::Answer(error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("controller {c} publishes no device named {device}"),
                json!({ "candidates": candidates }),
            )),
            None => Decision::Local,
        },
        [owner] => match route {
            Route::UiDevice(_) => Decision::Answer(page_redirect(owner, device, &query)),
            _ => Decision::Proxy(owner.clone()),
        },
        _ => Decision::Answer(error(
            StatusCode::CONFLICT,
            "ambiguous_device",
            format!(
                "{} controllers publish a device named {device} (names are unique per rack only); add ?controller=NAME to pick one",
                owners.len()
            ),
            json!({ "candidates": candidates }),
        )),
    }
}

/// The JSON error body (`error`, `code`) plus `extra`'s fields, marked [`NotHere`].
fn error(status: StatusCode, code: &str, message: String, extra: Value) -> Response<Body> {
    let mut body = json!({ "error": message, "code": code });
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    let mut r = json_response(status, &body);
    r.extensions_mut().insert(NotHere);
    r
}

/// 303 to the owner's page of `device` (the browser then talks to the owner directly).
fn page_redirect(owner: &Owner, device: &DeviceName, query: &Query) -> Response<Body> {
    let Some(url) = &owner.url else {
        return no_url(owner);
    };
    // The history window is the page's one query (`24h`, `7d`, `30d`); anything else is
    // left behind rather than copied into a URL unchecked.
    let window = query
        .get("window")
        .filter(|w| w.len() <= 8 && w.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(|w| format!("?window={w}"))
        .unwrap_or_default();
    let target = format!("{url}/ui/device/{device}/{window}");
    let mut r = error(
        StatusCode::SEE_OTHER,
        "see_other",
        format!(
            "device {device} belongs to {}: see {target}",
            owner.controller
        ),
        json!({ "controller": owner.controller, "url": target }),
    );
    if let Ok(v) = HeaderValue::from_str(&target) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

fn no_url(owner: &Owner) -> Response<Body> {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "owner_unreachable",
        format!(
            "the device belongs to controller {}, which published no URL (set server.public_url there)",
            owner.controller
        ),
        json!({ "controller": owner.controller }),
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The HTTP client for forwarded calls: one pool of connections per owner, kept for the
/// life of the process.
fn client() -> &'static Client<HttpConnector, Full<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_WITHIN));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(connector)
    })
}

/// Headers that describe one hop, not the call (RFC 9110 §7.6.1), plus those this
/// controller sets itself.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Headers of the client's call that are not sent on: the hop's own, `Host` (the owner's
/// is set from its URL), the length (set from the body), the browser-safety headers this
/// controller already checked (the owner would see another site's `Origin`), and the
/// sign-in cookie (a session of this controller; the owner has its own).
fn not_forwarded(name: &HeaderName) -> bool {
    hop_by_hop(name)
        || matches!(
            name.as_str(),
            "host"
                | "content-length"
                | "origin"
                | "referer"
                | "cookie"
                | "sec-fetch-site"
                | "sec-fetch-mode"
                | "sec-fetch-dest"
                | "sec-fetch-user"
                | FORWARDED_BY
        )
}

/// The parts of the client's call that are sent on.
#[derive(Debug)]
// Fields named after what they carry.
#[allow(missing_docs)]
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
}

/// Send the call to `owner` and relay its answer; 502 (unreachable), 503 (no URL) or 504
/// (no answer in time) with a JSON body naming the owner.
pub async fn proxy(me: &str, owner: &Owner, call: Outgoing<'_>) -> Response<Body> {
    let Some(url) = &owner.url else {
        return no_url(owner);
    };
    let target = match call.query {
        Some(q) => format!("{url}{}?{q}", call.path),
        None => format!("{url}{}", call.path),
    };
    let unreachable = |status: StatusCode, code: &str, why: String| {
        let mut r = error(
            status,
            code,
            format!(
                "the device belongs to controller {} ({url}), which {why}",
                owner.controller
            ),
            json!({ "controller": owner.controller, "url": url }),
        );
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        r
    };
    let mut req = Request::new(Full::new(call.body));
    *req.method_mut() = call.method.clone();
    *req.uri_mut() = match target.parse() {
        Ok(u) => u,
        Err(e) => {
            return unreachable(
                StatusCode::BAD_GATEWAY,
                "owner_unreachable",
                format!("published a URL that cannot be used ({e})"),
            );
        }
    };
    let headers = req.headers_mut();
    for (name, value) in call.headers {
        if !not_forwarded(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(me) {
        headers.insert(FORWARDED_BY, v);
    }
    if let Ok(v) = HeaderValue::from_str(&call.peer.ip().to_string()) {
        headers.append("x-forwarded-for", v);
    }
    let answer = match tokio::time::timeout(ANSWER_WITHIN, client().request(req)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            tracing::info!(owner = %owner.controller, %url, error = %e, "cluster: cannot forward a call");
            return unreachable(
                StatusCode::BAD_GATEWAY,
                "owner_unreachable",
                format!("cannot be reached: {e}"),
            );
        }
        Err(_) => {
            return unreachable(
                StatusCode::GATEWAY_TIMEOUT,
                "owner_timeout",
                format!("did not answer within {} s", ANSWER_WITHIN.as_secs()),
            );
        }
    };
    let (parts, incoming) = answer.into_parts();
    // Streamed, so a long answer (a device log) is never held whole here.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let mut incoming = incoming;
        while let Some(frame) = incoming.frame().await {
            let chunk = match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => Ok(d),
                    Err(_) => continue, // trailers: none on this API
                },
                Err(e) => Err(std::io::Error::other(e)),
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    let mut r = Response::new(Body::channel(rx));
    *r.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            r.headers_mut().append(name.clone(), value.clone());
        }
    }
    if !r.headers().contains_key(ANSWERED_BY)
        && let Ok(v) = HeaderValue::from_str(&owner.controller)
    {
        r.headers_mut().insert(ANSWERED_BY, v);
    }
    r.extensions_mut()
        .insert(Forwarded(owner.controller.clone()));
    r
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderName;

    use super::not_forwarded;

    #[test]
    fn the_callers_credentials_go_on_but_not_this_hops_headers_nor_the_cookie() {
        let sent = |h: &str| !not_forwarded(&HeaderName::from_bytes(h.as_bytes()).expect("name"));
        for h in [
            "authorization",
            "content-type",
            "idempotency-key",
            "x-requested-with",
            "accept",
        ] {
            assert!(sent(h), "{h} must be sent on");
        }
        for h in [
            "host",
            "connection",
            "transfer-encoding",
            "content-length",
            "cookie",
            "origin",
            "sec-fetch-site",
            "x-mozpool-forwarded-by",
        ] {
            assert!(!sent(h), "{h} must not be sent on");
        }
    }
}
