//! The HTML handlers: `/` (303 to `/ui/`), the pool page, a device's page, the requests page
//! and the relay boards page, plus the static files and the pool page's JSON feed.
//!
//! Handlers read a snapshot, build view models ([`super::view`]) and render a template.
//! They never change state: every button on a page is a `fetch()` of the JSON API.

use hyper::header::{CACHE_CONTROL, HeaderValue, LOCATION};
use hyper::{Response, StatusCode};
use minijinja::context;
use minijinja::value::{Serde, Value};
use serde::Serialize;

use super::view::{self, LogLineView};
use crate::domain::history::Window;
use crate::domain::model::device_subject;
use crate::domain::names::DeviceName;
use crate::http::auth::Role;
use crate::http::body::{Body, bytes_response, error_response, ok};
use crate::http::dispatch::Ctx;
use crate::http::error::ApiError;
use crate::http::route::Route;
use crate::http::session;
use crate::storage::logs::LogQuery;

/// Log lines on the device page's first screen (and per "older" page).
pub const LOG_PAGE: usize = 50;
/// Longest wait of a feed long poll, in seconds.
pub const MAX_FEED_WAIT: u64 = 60;

/// What every page's layout needs.
#[derive(Debug, Serialize)]
struct Layout {
    /// Which nav entry is current (`pool`, `device`, `requests`, `relays`, `error`).
    page: &'static str,
    /// `<title>` and heading.
    title: String,
    /// This controller's name.
    server: String,
    version: &'static str,
    /// A warning shown on every page (empty = none): the sign-in work fills it when the
    /// service runs without authentication.
    auth_banner: String,
    /// Cluster mode: what is wrong with the cluster as this controller sees it (empty =
    /// nothing); the pool page keeps it up to date from its feed. `None` on a single rack
    /// (no banner at all).
    cluster_warning: Option<String>,
    /// Where to sign in (empty = no link).
    sign_in_url: String,
    /// Who is signed in (empty = nobody).
    signed_in_as: String,
    /// The caller may request, renew and return devices (shows those controls).
    can_request: bool,
    /// The caller may power, flash and change devices (shows those controls).
    can_admin: bool,
}

/// The banner about access control: a warning on every page when the service runs without
/// `[auth]`, as the issue asks; nothing otherwise.
fn auth_banner(ctx: &Ctx) -> String {
    if ctx.svc.auth_open() {
        "Open access: no [auth] is configured, so anyone who can reach this page can power, \
         flash and hand out devices."
            .to_owned()
    } else {
        String::new()
    }
}

fn layout(ctx: &Ctx, page: &'static str, title: impl Into<String>) -> Value {
    let open = ctx.svc.auth_open();
    let signed_in = ctx.caller.token.clone().unwrap_or_default();
    Value::from(Serde(Layout {
        page,
        title: title.into(),
        server: ctx.svc.server_name().to_owned(),
        version: env!("CARGO_PKG_VERSION"),
        auth_banner: auth_banner(ctx),
        cluster_warning: ctx
            .svc
            .cluster
            .as_ref()
            .map(|c| c.status().warning().map(|w| w.message).unwrap_or_default()),
        sign_in_url: if open || !signed_in.is_empty() {
            String::new()
        } else {
            "/ui/signin/".to_owned()
        },
        signed_in_as: signed_in,
        can_request: ctx.caller.role >= Role::Request,
        can_admin: ctx.caller.role >= Role::Admin,
    }))
}

fn see_other(location: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static(location));
    r
}

/// The sign-in form, with an error when the last attempt failed.
fn signin_form(ctx: &Ctx, status: StatusCode, error: &str) -> Result<Response<Body>, ApiError> {
    let c = context! { layout => layout(ctx, "signin", "Sign in"), error => error };
    html(ctx, status, "signin.html", c)
}

/// `POST /ui/signin/` with the form field `token`: a valid token opens a session
/// ([`crate::http::session`]) whose id goes in the cookie (HttpOnly, SameSite=Strict,
/// Secure when the public URL is https), and the browser goes to the pool page. (A post
/// from another site never gets here: the pipeline's browser checks refuse it.)
fn signin(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let form = crate::http::body::Query::parse(std::str::from_utf8(&ctx.body).ok());
    let token = form.get("token").unwrap_or_default().trim().to_owned();
    if ctx.svc.auth_open() {
        return Ok(see_other("/ui/"));
    }
    let valid = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_graphic())
        && ctx.svc.auth.identify(&token).is_some();
    if !valid {
        return signin_form(
            ctx,
            StatusCode::UNAUTHORIZED,
            "That token is not valid for this controller.",
        );
    }
    let id = ctx.svc.sessions.create(
        crate::http::auth::token_digest(&token),
        std::time::Instant::now(),
    );
    let mut r = see_other("/ui/");
    set_cookies(ctx, &mut r, &id, session::SESSION_LIFETIME.as_secs());
    Ok(r)
}

/// Set the session cookie to `value` for `max_age` seconds (0 clears it), and clear the
/// cookie of earlier versions, which held the token itself.
fn set_cookies(ctx: &Ctx, r: &mut Response<Body>, value: &str, max_age: u64) {
    let secure = if ctx.base_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    for cookie in [
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
            session::SESSION_COOKIE
        ),
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
            session::LEGACY_COOKIE
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().append(hyper::header::SET_COOKIE, v);
        }
    }
}

/// `POST /ui/signout/`: end the session on the server and clear the cookie. (Cross-site
/// posts are refused by the pipeline's browser checks.)
fn signout(ctx: &Ctx) -> Response<Body> {
    if let Some(id) = crate::http::dispatch::cookie(&ctx.headers, session::SESSION_COOKIE) {
        ctx.svc.sessions.revoke(&id);
    }
    let mut r = see_other("/ui/");
    set_cookies(ctx, &mut r, "", 0);
    r
}

fn html(
    ctx: &Ctx,
    status: StatusCode,
    template: &str,
    c: Value,
) -> Result<Response<Body>, ApiError> {
    let text = ctx
        .svc
        .ui
        .render(template, c)
        .map_err(|e| ApiError::internal(format!("cannot render {template}: {e:#}")))?;
    let mut r = bytes_response(status, "text/html; charset=utf-8", text.into());
    let h = r.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    Ok(r)
}

/// Answer a page, static file or redirect route; errors become an HTML error page.
pub async fn page(ctx: &Ctx, route: Route) -> Response<Body> {
    let result = match route {
        Route::UiHome => {
            let mut r = Response::new(Body::new(bytes::Bytes::new()));
            *r.status_mut() = StatusCode::SEE_OTHER;
            r.headers_mut()
                .insert(LOCATION, HeaderValue::from_static("/ui/"));
            return r;
        }
        Route::Static { hash, file } => return super::assets::serve(&hash, &file, &ctx.headers),
        Route::UiSignInForm => signin_form(ctx, StatusCode::OK, ""),
        Route::UiSignIn => signin(ctx),
        Route::UiSignOut => return signout(ctx),
        // Signed out where anonymous callers may not read: the sign-in form.
        Route::UiPool
        | Route::UiDevice(_)
        | Route::UiRequests
        | Route::UiRelays
        | Route::UiRequest(_)
            if ctx.caller.role < Role::Read =>
        {
            return see_other("/ui/signin/");
        }
        Route::UiPool => pool(ctx).await,
        Route::UiDevice(name) => device(ctx, name).await,
        Route::UiRequests => requests(ctx).await,
        Route::UiRelays => relays(ctx).await,
        Route::UiRequest(id) => request(ctx, id).await,
        other => Err(ApiError::not_found(format!("{other:?} is not a page"))),
    };
    result.unwrap_or_else(|e| {
        let c = context! {
            layout => layout(ctx, "error", format!("Error {}", e.status.as_u16())),
            status => e.status.as_u16(),
            message => e.message.clone(),
        };
        html(ctx, e.status, "error.html", c).unwrap_or_else(|_| error_response(&e))
    })
}

async fn pool_view(ctx: &Ctx) -> Result<view::PoolView, ApiError> {
    // The store's change version: bumps with every commit that changed a device, a
    // request or the inventory.
    let v = *ctx.svc.store.subscribe().borrow();
    let local = ctx
        .svc
        .store
        .read(move |snap| view::pool_view(snap, v))
        .await?;
    let Some(cluster) = &ctx.svc.cluster else {
        return Ok(local);
    };
    // Cluster mode: the whole pool, each row with its controller. The version adds etcd's
    // revision, so another rack's change is a change too (both only grow).
    let me = cluster.name();
    let mut rows = local.devices;
    for r in &mut rows {
        r.controller = Some(me.to_owned());
    }
    let revision = match cluster.directory().await {
        Ok(dir) => {
            for r in &mut rows {
                view::show_shared_holder(r, dir.holder(me, &r.name));
            }
            for (c, p) in &dir.devices {
                if c != me && !p.retired {
                    let holder = dir.holder(c, p.name.as_str());
                    rows.push(view::remote_row(c, dir.url_of(c).as_deref(), p, holder));
                }
            }
            u64::try_from(dir.revision).unwrap_or(0)
        }
        // etcd unreadable and never read: this rack's devices are still worth showing.
        Err(e) => {
            tracing::debug!(error = %e, "pool page without the other racks");
            0
        }
    };
    // The warning's kind goes into the version too, so an open page hears of it even when
    // nothing else changes (etcd down: the revision stands still). Versions stay below
    // 2^53, exact in JavaScript.
    let warning = cluster.status().warning();
    let kind = warning.as_ref().map_or(0, |w| w.kind as u64);
    let mut view = view::summarize(
        v.wrapping_add(revision).wrapping_add(kind << 48),
        rows,
        true,
    );
    view.cluster_warning = Some(warning);
    Ok(view)
}

/// `GET /api/pool/overview/[?since=V&wait=N]`: the [`view::PoolView`] as JSON. With `since`
/// equal to the current version and `wait`, the call returns when something changes (or
/// after `wait` seconds, at most 60), so a page can follow the rack with one open request.
///
/// # Errors
/// 400 for bad numbers; storage failure.
pub async fn overview(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let since = ctx.query.number("since")?;
    let wait = ctx.query.number("wait")?.unwrap_or(0).min(MAX_FEED_WAIT);
    let mut changes = ctx.svc.store.subscribe();
    if ctx.svc.cluster.is_some() {
        return cluster_overview(ctx, since, wait, changes).await;
    }
    if wait > 0 && since == Some(*changes.borrow_and_update()) {
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(wait)) => {}
            () = ctx.svc.shutdown.cancelled() => {}
        }
    }
    Ok(ok(&pool_view(ctx).await?))
}

/// [`overview`] in cluster mode: another rack's change does not wake this store's channel,
/// so the long poll also looks at the whole pool again every second (the directory it
/// reads is cached for half a second, so an open page costs at most one etcd read a
/// second).
async fn cluster_overview(
    ctx: &Ctx,
    since: Option<u64>,
    wait: u64,
    mut changes: tokio::sync::watch::Receiver<u64>,
) -> Result<Response<Body>, ApiError> {
    changes.borrow_and_update();
    let first = pool_view(ctx).await?;
    if wait == 0 || since != Some(first.version) {
        return Ok(ok(&first));
    }
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return Ok(ok(&first)) },
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            () = tokio::time::sleep_until(until) => {}
            () = ctx.svc.shutdown.cancelled() => return Ok(ok(&first)),
        }
        let now = pool_view(ctx).await?;
        if now.version != first.version || tokio::time::Instant::now() >= until {
            return Ok(ok(&now));
        }
    }
}

async fn pool(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let window = crate::http::api::history::window(ctx)?;
    let now = ctx.svc.clock.now();
    let v = pool_view(ctx).await?;
    let history = ctx
        .svc
        .store
        .read(move |snap| snap.pool_history(window, now))
        .await?;
    let c = context! {
        layout => layout(ctx, "pool", "Devices"),
        pool => Value::from(Serde(&v)),
        usage => Value::from(Serde(view::pool_history_view(&history))),
        windows => windows(window),
    };
    html(ctx, StatusCode::OK, "pool.html", c)
}

async fn device(ctx: &Ctx, name: DeviceName) -> Result<Response<Body>, ApiError> {
    let n = name.to_string();
    let window = crate::http::api::history::window(ctx)?;
    let now = ctx.svc.clock.now();
    let (dv, log, history) = ctx
        .svc
        .store
        .read(move |snap| {
            let dv = view::load_device_view(snap, &n)?;
            let history = if dv.is_some() {
                Some(snap.device_history(&n, window, now)?)
            } else {
                None
            };
            let q = LogQuery {
                subject: Some(device_subject(&n)),
                limit: LOG_PAGE,
                ..LogQuery::default()
            };
            let log: Vec<LogLineView> = snap.logs(&q)?.iter().map(LogLineView::from).collect();
            Ok((dv, log, history))
        })
        .await?;
    let (Some(mut dv), Some(history)) = (dv, history) else {
        return Err(ApiError::not_found(format!("no device named {name}")));
    };
    if let Some(cluster) = &ctx.svc.cluster {
        match cluster.directory().await {
            Ok(dir) => {
                view::show_shared_holder(&mut dv.row, dir.holder(cluster.name(), name.as_str()));
            }
            // Without the copy the shared request is unknown; the local mirror's id would
            // name some other request.
            Err(_) => view::show_shared_holder(&mut dv.row, None),
        }
    }
    let next_before = if log.len() == LOG_PAGE {
        log.last().map(|l| l.id)
    } else {
        None
    };
    let c = context! {
        layout => layout(ctx, "device", name.to_string()),
        device => Value::from(Serde(&dv)),
        log => Value::from(Serde(&log)),
        next_before => next_before,
        log_page => LOG_PAGE,
        timeline => Value::from(Serde(view::device_history_view(&history, now))),
        windows => windows(window),
    };
    html(ctx, StatusCode::OK, "device.html", c)
}

async fn requests(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let include_closed = ctx.query.flag("closed");
    let window = crate::http::api::history::window(ctx)?;
    let now = ctx.svc.clock.now();
    let (rows, history) = ctx
        .svc
        .store
        .read(move |snap| {
            let requests = snap.requests(!include_closed)?;
            let devices = snap.devices()?;
            let history = snap.request_history(window, now)?;
            Ok((view::request_rows(&requests, &devices), history))
        })
        .await?;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| include_closed || r.open)
        .collect();
    let c = context! {
        layout => layout(ctx, "requests", "Requests"),
        requests => Value::from(Serde(&rows)),
        include_closed => include_closed,
        waits => Value::from(Serde(view::request_history_view(&history))),
        windows => windows(window),
    };
    html(ctx, StatusCode::OK, "requests.html", c)
}

/// The history switch: each window's name, whether it is the one shown.
fn windows(current: Window) -> Value {
    Value::from(Serde(
        Window::ALL
            .iter()
            .map(|w| view::WindowLinkView {
                name: w.name(),
                current: *w == current,
            })
            .collect::<Vec<_>>(),
    ))
}

/// The relay page's change version: the store's (a wired device changed) plus the boards'
/// (an operation finished). Both only grow, so their sum changes whenever either does.
fn relay_version(ctx: &Ctx) -> u64 {
    let store = *ctx.svc.store.subscribe().borrow();
    let boards = *ctx.svc.lifeguard.hardware().boards.subscribe().borrow();
    store.wrapping_add(boards)
}

async fn relays_view(ctx: &Ctx) -> Result<view::RelaysView, ApiError> {
    let version = relay_version(ctx);
    let devices = ctx.svc.store.read(|snap| snap.devices()).await?;
    let status = ctx.svc.lifeguard.hardware().boards.status();
    Ok(view::RelaysView {
        version,
        boards: view::boards(status, &devices),
    })
}

/// `GET /api/relay/overview/[?since=V&wait=N]`: the [`view::RelaysView`] as JSON, a long
/// poll like [`overview`]: with `since` equal to the current version and `wait`, the call
/// returns when a board finishes an operation or a device changes (or after `wait` seconds,
/// at most 60).
///
/// # Errors
/// 400 for bad numbers; storage failure.
pub async fn relay_overview(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let since = ctx.query.number("since")?;
    let wait = ctx.query.number("wait")?.unwrap_or(0).min(MAX_FEED_WAIT);
    if wait > 0 && since == Some(relay_version(ctx)) {
        let mut store = ctx.svc.store.subscribe();
        let mut boards = ctx.svc.lifeguard.hardware().boards.subscribe();
        // A change between the version check and the subscriptions is caught by the
        // comparison below, so nothing is missed.
        if since == Some(relay_version(ctx)) {
            tokio::select! {
                _ = store.changed() => {}
                _ = boards.changed() => {}
                () = tokio::time::sleep(std::time::Duration::from_secs(wait)) => {}
                () = ctx.svc.shutdown.cancelled() => {}
            }
        }
    }
    Ok(ok(&relays_view(ctx).await?))
}

async fn relays(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let v = relays_view(ctx).await?;
    let c = context! {
        layout => layout(ctx, "relays", "Relay boards"),
        boards => Value::from(Serde(&v.boards)),
        version => v.version,
    };
    html(ctx, StatusCode::OK, "relays.html", c)
}

/// Log lines on a request's page (its whole life, usually a few dozen).
pub const REQUEST_LOG: usize = 1000;

async fn request(ctx: &Ctx, id: u64) -> Result<Response<Body>, ApiError> {
    let (rv, log) = match &ctx.svc.cluster {
        Some(cluster) => shared_request(ctx, cluster, id).await?,
        None => local_request(ctx, id).await?,
    };
    let c = context! {
        layout => layout(ctx, "request", format!("Request #{id}")),
        request => Value::from(Serde(&rv)),
        log => Value::from(Serde(&log)),
    };
    html(ctx, StatusCode::OK, "request.html", c)
}

/// A single-rack request's page data: the request and its log from the store.
async fn local_request(
    ctx: &Ctx,
    id: u64,
) -> Result<(view::RequestView, Vec<LogLineView>), ApiError> {
    let position = ctx.svc.pool.queue_position(id).await?;
    let found = ctx
        .svc
        .store
        .read(move |snap| {
            let Some(r) = snap.request(id)? else {
                return Ok(None);
            };
            let devices = snap.devices()?;
            let q = LogQuery {
                subject: Some(crate::domain::model::request_subject(id)),
                limit: REQUEST_LOG,
                ..LogQuery::default()
            };
            // Oldest first: a request's log reads as a story.
            let log: Vec<LogLineView> =
                snap.logs(&q)?.iter().rev().map(LogLineView::from).collect();
            let position = position.filter(|_| r.snap.state.is_waiting());
            Ok(Some((view::request_view(&r, &devices, position), log)))
        })
        .await?;
    found.ok_or_else(|| ApiError::not_found(format!("no request {id}")))
}

/// Cluster mode: the shared request from etcd (any controller answers for any request),
/// its device's state and owner from the whole pool's directory, its queue position as
/// `status/` computes it, and the log it keeps in its record.
async fn shared_request(
    ctx: &Ctx,
    cluster: &crate::cluster::Cluster,
    id: u64,
) -> Result<(view::RequestView, Vec<LogLineView>), ApiError> {
    let read = cluster
        .request(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no request {id}")))?;
    let position = crate::pool::shared::queue_position(
        cluster,
        &read,
        ctx.svc.clock.now(),
        ctx.svc.pool.policy(),
    )
    .await?;
    let r = read.value;
    let (state, url) = match (&r.device, &r.owner) {
        (Some(d), Some(c)) => {
            let dir = cluster.directory().await?;
            let state = dir
                .devices
                .iter()
                .find(|(dc, p)| dc == c && p.name.as_str() == d)
                .map_or(String::new(), |(_, p)| p.state.clone());
            (state, dir.url_of(c))
        }
        _ => (String::new(), None),
    };
    let log = r.log.iter().map(LogLineView::from).collect();
    let rv = view::shared_request_view(&r, &state, cluster.name(), url.as_deref(), position);
    Ok((rv, log))
}
