//! Routing: a pure function from (method, path) to a typed [`Route`].
//!
//! Path parameters become validated names here, so handlers never see raw strings. Rules
//! shared by every route, kept in one place:
//! - A `GET`/`HEAD` of a JSON route without its trailing slash answers **303** to the same path
//!   plus `/` (query kept), as MozPool 4.x did. Other methods are accepted with or without
//!   the slash (a 303 would turn a client's POST into a GET).
//! - A known path with the wrong method answers **405** with an `Allow` header.
//! - `HEAD` is routed like `GET`.

use hyper::Method;

use crate::domain::names::{
    BoardName, DeviceName, EnvironmentName, HardwareType, ImageName, NameError, check_name,
};
use crate::http::auth::Role;
use crate::pool::DeviceChoice;

/// Every API call the service answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /api/version/`.
    Version,
    /// `GET /api/health/`: storage and hardware backends alive?
    Health,
    /// `GET /api/cluster/`: the etcd cluster as this controller sees it (cluster mode).
    Cluster,
    /// `GET /api/device/list/[?details=1]`.
    DeviceList,
    /// `GET /api/device/{id}/details/`.
    DeviceDetails(DeviceName),
    /// `PUT /api/device/{id}/`: create or update a device's inventory fields (admin).
    DevicePut(DeviceName),
    /// `DELETE /api/device/{id}/`: retire a device (its history stays) (admin).
    DeviceRetire(DeviceName),
    /// `POST /api/device/{id}/set-comments/`.
    DeviceSetComments(DeviceName),
    /// `POST /api/device/{id}/set-environment/`.
    DeviceSetEnvironment(DeviceName),
    /// `GET /api/device/{id}/log/[?timeperiod=S&limit=N]`.
    DeviceLog(DeviceName),
    /// `GET /api/device/{id}/status/`: state and the newest 100 log lines.
    DeviceStatus(DeviceName),
    /// `GET /api/device/{id}/state/[?cache=1]`.
    DeviceState(DeviceName),
    /// `GET /api/image/list/`.
    ImageList,
    /// `GET /api/image/{name}/details/`.
    ImageDetails(ImageName),
    /// `PUT /api/image/{name}/` (admin).
    ImagePut(ImageName),
    /// `DELETE /api/image/{name}/` (admin).
    ImageDelete(ImageName),
    /// `GET /api/bmm/pxe_config/list/[?active_only=1]`: the original BMM's PXE config names,
    /// one per image (the original web UI's `bmm.html` lists them).
    PxeConfigList,
    /// `GET /api/bmm/pxe_config/{name}/details/`: one PXE config, i.e. the image of that name.
    PxeConfigDetails(ImageName),
    /// `GET /api/environment/list/`.
    EnvironmentList,
    /// `PUT /api/environment/{name}/` (admin).
    EnvironmentPut(EnvironmentName),
    /// `DELETE /api/environment/{name}/` (admin).
    EnvironmentDelete(EnvironmentName),
    /// `GET /api/hardware-type/list/`.
    HardwareTypeList,
    /// `PUT /api/hardware-type/{name}/` (admin).
    HardwareTypePut(HardwareType),
    /// `DELETE /api/hardware-type/{name}/` (admin).
    HardwareTypeDelete(HardwareType),
    /// `POST /api/device/register/`: a device registers itself (the SUTAgent registration
    /// fields as JSON).
    DeviceRegister,
    /// `POST /api/inventory/sync/[?dry_run=1][&force=1]`: sync inventory-owned devices with
    /// the given list (admin).
    InventorySync,
    /// `GET /api/log/?subject=&device=&request=&since=&until=&before=&limit=`.
    LogQuery,
    /// `GET|POST /api/device/{id}/event/{event}/`: a Lifeguard event (`please_*`).
    DeviceEvent(DeviceName, String),
    /// `POST /api/device/{id}/state-change/{from}/to/{to}/`: conditional state change.
    DeviceStateChange(DeviceName, String, String),
    /// `POST /api/device/{id}/power-cycle/`.
    DevicePowerCycle(DeviceName),
    /// `POST /api/device/{id}/address-change/{accept|dismiss}/` (admin): settle an address
    /// change a registration announced (`true` = accept).
    DeviceAddressChange(DeviceName, bool),
    /// `GET|POST /api/device/{id}/power-off/` (GET as the original).
    DevicePowerOff(DeviceName),
    /// `POST /api/device/{id}/power-on/`.
    DevicePowerOn(DeviceName),
    /// `POST /api/device/{id}/reboot/`: soft reboot through SUTAgent, power cycle fallback.
    DeviceReboot(DeviceName),
    /// `POST /api/device/{id}/flash/`: flash an image (`please_image`).
    DeviceFlash(DeviceName),
    /// `POST /api/device/{id}/clear-pxe/`: kept for old clients; there is no PXE here.
    DeviceClearPxe(DeviceName),
    /// `GET /api/device/{id}/ping/`: one reachability probe, now.
    DevicePing(DeviceName),
    /// `GET /api/device/{id}/bootconfig/`: the boot config of the image being installed.
    DeviceBootconfig(DeviceName),
    /// `POST /api/device/{id|any}/request/`: ask for a device.
    DeviceRequest(DeviceChoice),
    /// `GET /api/request/list/[?include_closed=1]`.
    RequestList,
    /// `GET /api/request/{id}/details/`.
    RequestDetails(u64),
    /// `GET /api/request/{id}/status/[?wait=N]`.
    RequestStatus(u64),
    /// `GET /api/request/{id}/log/`.
    RequestLog(u64),
    /// `POST /api/request/{id}/renew/`.
    RequestRenew(u64),
    /// `POST /api/request/{id}/return/`.
    RequestReturn(u64),
    /// `GET|POST /api/request/{id}/event/{event}/`.
    RequestEvent(u64, String),
    /// `GET /api/relay/list/`.
    RelayList,
    /// `GET /api/relay/{board}/test/`: two-way communication test.
    RelayTest(BoardName),
    /// `GET|POST /api/relay/{board}/{bankB:relayR | pinN}/{status|on|off|cycle}/`: raw relay
    /// control for techs at the rack (status with GET, the others with POST).
    RelayChannel(BoardName, String, RelayOp),
    /// `PUT /api/sim/device/{id}/faults/`: inject faults into a simulated device.
    SimFaults(DeviceName),
    /// `GET /metrics`: Prometheus text format. No trailing slash (what scrapers expect);
    /// `/metrics/` is accepted too.
    Metrics,
    /// `GET /api/backup/`: a consistent snapshot of the store, as a store file (admin: it is
    /// the whole database).
    Backup,
    /// `GET /api/pool/overview/[?since=V&wait=N]`: every device with its holder and last log
    /// line, counts per state, and a change version for long polls (the pool page's feed).
    PoolOverview,
    /// `GET /api/relay/overview/[?since=V&wait=N]`: every relay board with its health,
    /// recent failures and wired devices, and a change version for long polls (the relay
    /// page's feed).
    RelayOverview,
    /// `GET /api/device/{id}/history/[?window=24h|7d|30d]`: the device's state timeline.
    DeviceHistory(DeviceName),
    /// `GET /api/pool/history/[?window=…]`: devices per band per hour, and the flaky table.
    PoolHistory,
    /// `GET /api/request/history/[?window=…]`: request-to-ready times and why requests
    /// queued.
    RequestHistory,
    /// `GET /`: 303 to the web page.
    UiHome,
    /// `GET /ui/`: the pool page.
    UiPool,
    /// `GET /ui/device/{id}/`: one device's page.
    UiDevice(DeviceName),
    /// `GET /ui/requests/`: the requests page.
    UiRequests,
    /// `GET /ui/relays/`: the relay boards page.
    UiRelays,
    /// `GET /ui/request/{id}/`: one request's page (details and log).
    UiRequest(u64),
    /// `GET /ui/signin/`: the sign-in form.
    UiSignInForm,
    /// `POST /ui/signin/` (form field `token`): sign in by setting the HttpOnly,
    /// SameSite=Strict session cookie.
    UiSignIn,
    /// `POST /ui/signout/`: clear the session cookie.
    UiSignOut,
    /// `GET /static/{hash}/{file}`: an embedded asset (hash = content hash prefix, or
    /// anything for an unversioned fetch).
    Static {
        /// The hash segment of the URL.
        hash: String,
        /// The file name under `assets/static/`.
        file: String,
    },
}

/// What a raw relay call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOp {
    /// Read the channel.
    Status,
    /// Power the device on.
    On,
    /// Power the device off.
    Off,
    /// Power cycle the device.
    Cycle,
}

/// Why a path did not route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No such path: 404.
    NotFound,
    /// Known path, other methods: 405 with `Allow`.
    MethodNotAllowed(&'static [Method]),
    /// 303 to the path with a trailing slash.
    AddSlash,
    /// A path parameter is not a valid name: 400.
    BadName(NameError),
    /// A request id that is not a number: 400.
    BadId(String),
}

impl From<NameError> for RouteError {
    fn from(e: NameError) -> Self {
        RouteError::BadName(e)
    }
}

const GET: &[Method] = &[Method::GET, Method::HEAD];
const POST: &[Method] = &[Method::POST];
const PUT_DELETE: &[Method] = &[Method::PUT, Method::DELETE];
const GET_POST: &[Method] = &[Method::GET, Method::HEAD, Method::POST];
const PUT: &[Method] = &[Method::PUT];

fn only_get(method: &Method, route: Route) -> Result<Route, RouteError> {
    if GET.contains(method) {
        Ok(route)
    } else {
        Err(RouteError::MethodNotAllowed(GET))
    }
}

/// `{hash}/{file}`: a hex hash and one plain file name (no `..`, no hidden files, no
/// further slashes), so nothing outside the embedded folder can be named.
fn parse_static(method: &Method, rest: &str) -> Result<Route, RouteError> {
    let Some((hash, file)) = rest.split_once('/') else {
        return Err(RouteError::NotFound);
    };
    let plain = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    if !plain(hash, b"") || !plain(file, b"._-") || file.starts_with('.') || file.contains("..") {
        return Err(RouteError::NotFound);
    }
    only_get(
        method,
        Route::Static {
            hash: hash.to_owned(),
            file: file.to_owned(),
        },
    )
}

/// `PUT` or `DELETE` of one inventory entry; 405 for anything else.
fn put_or_delete(
    method: &Method,
    put: Route,
    delete: Route,
) -> Result<(&'static [Method], Route), RouteError> {
    match *method {
        Method::PUT => Ok((PUT_DELETE, put)),
        Method::DELETE => Ok((PUT_DELETE, delete)),
        _ => Err(RouteError::MethodNotAllowed(PUT_DELETE)),
    }
}

fn request_id(s: &str) -> Result<u64, RouteError> {
    s.parse()
        .map_err(|_| RouteError::BadId(s.chars().take(40).collect()))
}

fn event_name(s: &str) -> Result<String, RouteError> {
    check_name("event name", s)?;
    Ok(s.to_owned())
}

impl Route {
    /// Route a request.
    ///
    /// # Errors
    /// [`RouteError`] for everything that is not a known route.
    pub fn parse(method: &Method, path: &str) -> Result<Route, RouteError> {
        // The two routes without a trailing slash: the root and the static files.
        if path == "/" {
            return only_get(method, Route::UiHome);
        }
        if let Some(rest) = path.strip_prefix("/static/") {
            return parse_static(method, rest);
        }
        let Some(rest) = path.strip_prefix('/') else {
            return Err(RouteError::NotFound);
        };
        let (rest, slash) = match rest.strip_suffix('/') {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let segs: Vec<&str> = rest.split('/').collect();
        if segs.iter().any(|s| s.is_empty()) {
            return Err(RouteError::NotFound);
        }
        if segs == ["metrics"] {
            // Scrapers ask for `/metrics` exactly; no 303 dance.
            if !GET.contains(method) {
                return Err(RouteError::MethodNotAllowed(GET));
            }
            return Ok(Route::Metrics);
        }
        let (allowed, route) = match segs.as_slice() {
            ["api", "version"] => (GET, Route::Version),
            ["api", "health"] => (GET, Route::Health),
            ["api", "cluster"] => (GET, Route::Cluster),
            ["api", "log"] => (GET, Route::LogQuery),
            ["api", "backup"] => (GET, Route::Backup),
            ["api", "device", "list"] => (GET, Route::DeviceList),
            // A device named `register` stays reachable with PUT/DELETE.
            ["api", "device", "register"] if !matches!(*method, Method::PUT | Method::DELETE) => {
                (POST, Route::DeviceRegister)
            }
            ["api", "inventory", "sync"] => (POST, Route::InventorySync),
            ["api", "device", id] => {
                let id: DeviceName = id.parse()?;
                put_or_delete(
                    method,
                    Route::DevicePut(id.clone()),
                    Route::DeviceRetire(id),
                )?
            }
            ["api", "device", id, "details"] => (GET, Route::DeviceDetails(id.parse()?)),
            ["api", "device", id, "set-comments"] => (POST, Route::DeviceSetComments(id.parse()?)),
            ["api", "device", id, "set-environment"] => {
                (POST, Route::DeviceSetEnvironment(id.parse()?))
            }
            ["api", "device", id, "log"] => (GET, Route::DeviceLog(id.parse()?)),
            ["api", "device", id, "history"] => (GET, Route::DeviceHistory(id.parse()?)),
            ["api", "device", id, "status"] => (GET, Route::DeviceStatus(id.parse()?)),
            ["api", "device", id, "state"] => (GET, Route::DeviceState(id.parse()?)),
            ["api", "device", id, "event", ev] => {
                (GET_POST, Route::DeviceEvent(id.parse()?, event_name(ev)?))
            }
            ["api", "device", id, "state-change", from, "to", to] => (
                POST,
                Route::DeviceStateChange(id.parse()?, event_name(from)?, event_name(to)?),
            ),
            ["api", "device", id, "power-cycle"] => (POST, Route::DevicePowerCycle(id.parse()?)),
            ["api", "device", id, "address-change", "accept"] => {
                (POST, Route::DeviceAddressChange(id.parse()?, true))
            }
            ["api", "device", id, "address-change", "dismiss"] => {
                (POST, Route::DeviceAddressChange(id.parse()?, false))
            }
            ["api", "device", id, "power-off"] => (GET_POST, Route::DevicePowerOff(id.parse()?)),
            ["api", "device", id, "power-on"] => (POST, Route::DevicePowerOn(id.parse()?)),
            ["api", "device", id, "reboot"] => (POST, Route::DeviceReboot(id.parse()?)),
            ["api", "device", id, "flash"] => (POST, Route::DeviceFlash(id.parse()?)),
            ["api", "device", id, "clear-pxe"] => (POST, Route::DeviceClearPxe(id.parse()?)),
            ["api", "device", id, "ping"] => (GET, Route::DevicePing(id.parse()?)),
            ["api", "device", id, "bootconfig"] => (GET, Route::DeviceBootconfig(id.parse()?)),
            ["api", "device", id, "request"] => {
                (POST, Route::DeviceRequest(DeviceChoice::parse(id)?))
            }
            ["api", "request", "list"] => (GET, Route::RequestList),
            ["api", "request", "history"] => (GET, Route::RequestHistory),
            ["api", "request", id, "details"] => (GET, Route::RequestDetails(request_id(id)?)),
            ["api", "request", id, "status"] => (GET, Route::RequestStatus(request_id(id)?)),
            ["api", "request", id, "log"] => (GET, Route::RequestLog(request_id(id)?)),
            ["api", "request", id, "renew"] => (POST, Route::RequestRenew(request_id(id)?)),
            ["api", "request", id, "return"] => (POST, Route::RequestReturn(request_id(id)?)),
            ["api", "request", id, "event", ev] => (
                GET_POST,
                Route::RequestEvent(request_id(id)?, event_name(ev)?),
            ),
            ["api", "relay", "list"] => (GET, Route::RelayList),
            ["api", "pool", "overview"] => (GET, Route::PoolOverview),
            ["api", "relay", "overview"] => (GET, Route::RelayOverview),
            ["api", "pool", "history"] => (GET, Route::PoolHistory),
            ["ui"] => (GET, Route::UiPool),
            ["ui", "device", id] => (GET, Route::UiDevice(id.parse()?)),
            ["ui", "requests"] => (GET, Route::UiRequests),
            ["ui", "relays"] => (GET, Route::UiRelays),
            ["ui", "request", id] => (GET, Route::UiRequest(request_id(id)?)),
            ["ui", "signin"] if *method == Method::POST => (POST, Route::UiSignIn),
            ["ui", "signin"] => (GET, Route::UiSignInForm),
            ["ui", "signout"] => (POST, Route::UiSignOut),
            ["api", "relay", board, "test"] => (GET, Route::RelayTest(board.parse()?)),
            ["api", "relay", board, channel, op] => {
                let op = match *op {
                    "status" => RelayOp::Status,
                    "on" => RelayOp::On,
                    "off" => RelayOp::Off,
                    "cycle" => RelayOp::Cycle,
                    _ => return Err(RouteError::NotFound),
                };
                check_name("relay channel", channel)?;
                let allowed = if op == RelayOp::Status { GET } else { POST };
                (
                    allowed,
                    Route::RelayChannel(board.parse()?, (*channel).to_owned(), op),
                )
            }
            ["api", "sim", "device", id, "faults"] => (PUT, Route::SimFaults(id.parse()?)),
            ["api", "image", "list"] => (GET, Route::ImageList),
            ["api", "image", name, "details"] => (GET, Route::ImageDetails(name.parse()?)),
            ["api", "image", name] => {
                let name: ImageName = name.parse()?;
                put_or_delete(
                    method,
                    Route::ImagePut(name.clone()),
                    Route::ImageDelete(name),
                )?
            }
            ["api", "bmm", "pxe_config", "list"] => (GET, Route::PxeConfigList),
            ["api", "bmm", "pxe_config", name, "details"] => {
                (GET, Route::PxeConfigDetails(name.parse()?))
            }
            ["api", "environment", "list"] => (GET, Route::EnvironmentList),
            ["api", "environment", name] => {
                let name: EnvironmentName = name.parse()?;
                put_or_delete(
                    method,
                    Route::EnvironmentPut(name.clone()),
                    Route::EnvironmentDelete(name),
                )?
            }
            ["api", "hardware-type", "list"] => (GET, Route::HardwareTypeList),
            ["api", "hardware-type", name] => {
                let name: HardwareType = name.parse()?;
                put_or_delete(
                    method,
                    Route::HardwareTypePut(name.clone()),
                    Route::HardwareTypeDelete(name),
                )?
            }
            _ => return Err(RouteError::NotFound),
        };
        if !allowed.contains(method) {
            return Err(RouteError::MethodNotAllowed(allowed));
        }
        // JSON routes answer a GET without the trailing slash with a 303, as the original;
        // `bootconfig` returns raw text and never did.
        let is_get = matches!(*method, Method::GET | Method::HEAD);
        if !slash && is_get && !matches!(route, Route::DeviceBootconfig(_)) {
            return Err(RouteError::AddSlash);
        }
        Ok(route)
    }

    /// Is this a web page, a static file or the pages' live feed? Those are not recorded in
    /// the durable audit log (a page left open would fill it with long polls).
    #[must_use]
    pub fn is_ui(&self) -> bool {
        matches!(
            self,
            Route::UiHome
                | Route::UiPool
                | Route::UiDevice(_)
                | Route::UiRequests
                | Route::UiRelays
                | Route::UiRequest(_)
                | Route::UiSignInForm
                | Route::Static { .. }
                | Route::PoolOverview
                | Route::RelayOverview
        )
    }

    /// Does this route change anything (so it needs a write role and goes in the audit log)?
    #[must_use]
    pub fn mutates(&self) -> bool {
        !self.is_ui()
            && !matches!(
                self,
                Route::Version
                    | Route::Health
                    | Route::Cluster
                    | Route::DeviceList
                    | Route::DeviceDetails(_)
                    | Route::DeviceLog(_)
                    | Route::DeviceHistory(_)
                    | Route::PoolHistory
                    | Route::RequestHistory
                    | Route::DeviceStatus(_)
                    | Route::DeviceState(_)
                    | Route::ImageList
                    | Route::ImageDetails(_)
                    | Route::PxeConfigList
                    | Route::PxeConfigDetails(_)
                    | Route::EnvironmentList
                    | Route::HardwareTypeList
                    | Route::LogQuery
                    | Route::DevicePing(_)
                    | Route::DeviceBootconfig(_)
                    | Route::RequestList
                    | Route::RequestDetails(_)
                    | Route::RequestStatus(_)
                    | Route::RequestLog(_)
                    | Route::RelayList
                    | Route::RelayTest(_)
                    | Route::RelayChannel(_, _, RelayOp::Status)
                    | Route::Metrics
            )
    }

    /// The role a caller needs for this call. One exhaustive `match`: a new route does not
    /// compile until it is classified here. The table is documented in `docs/api.md`.
    ///
    /// - [`Role::None`] (anyone, even with `anonymous = "none"`): version and health, so
    ///   monitoring needs no token;
    /// - [`Role::Read`]: every other GET;
    /// - [`Role::Request`]: the request endpoints (check out, renew, return own requests);
    /// - [`Role::Admin`]: inventory writes (devices, images, environments, hardware types),
    ///   device comments and environment (inventory fields, edited by lab staff), and
    ///   anything touching power, state or maintenance.
    #[must_use]
    pub fn required_role(&self) -> Role {
        match self {
            Route::Version | Route::Health => Role::None,
            // Pages check the caller themselves: signed out they offer the sign-in form (and
            // render read-only where anonymous callers may read); static files are public.
            Route::UiHome
            | Route::UiPool
            | Route::UiDevice(_)
            | Route::UiRequests
            | Route::UiRelays
            | Route::UiRequest(_)
            | Route::UiSignInForm
            | Route::UiSignIn
            | Route::UiSignOut
            | Route::Static { .. } => Role::None,
            // The pages' live feeds: the same data as the device, request and relay lists.
            Route::PoolOverview | Route::RelayOverview => Role::Read,
            // Prometheus can send a bearer token (`authorization` in the scrape config); with
            // the packaged `anonymous = "read"` it needs none.
            Route::Metrics => Role::Read,
            // Who the controllers and the scheduler are: as readable as the device list.
            Route::Cluster => Role::Read,
            // A copy of the whole database.
            Route::Backup => Role::Admin,
            Route::DeviceList
            | Route::DeviceDetails(_)
            | Route::DeviceLog(_)
            | Route::DeviceHistory(_)
            | Route::PoolHistory
            | Route::RequestHistory
            | Route::DeviceStatus(_)
            | Route::DeviceState(_)
            | Route::ImageList
            | Route::ImageDetails(_)
            | Route::PxeConfigList
            | Route::PxeConfigDetails(_)
            | Route::EnvironmentList
            | Route::HardwareTypeList
            | Route::LogQuery => Role::Read,
            Route::DevicePut(_)
            | Route::DeviceRetire(_)
            | Route::DeviceSetComments(_)
            | Route::DeviceSetEnvironment(_)
            | Route::DeviceAddressChange(..)
            | Route::ImagePut(_)
            | Route::ImageDelete(_)
            | Route::EnvironmentPut(_)
            | Route::EnvironmentDelete(_)
            | Route::HardwareTypePut(_)
            | Route::HardwareTypeDelete(_) => Role::Admin,
            // Hardware queries that change nothing.
            Route::DevicePing(_)
            | Route::DeviceBootconfig(_)
            | Route::RelayList
            | Route::RelayTest(_)
            | Route::RelayChannel(_, _, RelayOp::Status) => Role::Read,
            // Power, state, flashing, Lifeguard events, inventory sync, simulator faults.
            Route::DeviceEvent(..)
            | Route::DeviceStateChange(..)
            | Route::DevicePowerCycle(_)
            | Route::DevicePowerOff(_)
            | Route::DevicePowerOn(_)
            | Route::DeviceReboot(_)
            | Route::DeviceFlash(_)
            | Route::DeviceClearPxe(_)
            | Route::RelayChannel(..)
            | Route::InventorySync
            | Route::SimFaults(_) => Role::Admin,
            // Devices registering themselves change the inventory: an admin token (the
            // SUTAgent TCP registration listener is not behind HTTP auth).
            Route::DeviceRegister => Role::Admin,
            Route::RequestList
            | Route::RequestDetails(_)
            | Route::RequestStatus(_)
            | Route::RequestLog(_) => Role::Read,
            // Ownership (only the token that made it, or an admin) is checked by the handler
            // with `auth::may_manage_request`.
            Route::DeviceRequest(_) | Route::RequestRenew(_) | Route::RequestReturn(_) => {
                Role::Request
            }
            Route::RequestEvent(_, event) if event == "close" => Role::Request,
            // `expire`, `lifeguard_finished` and anything else are internal.
            Route::RequestEvent(..) => Role::Admin,
        }
    }

    /// The device this call is about, for the audit log's device index.
    #[must_use]
    pub fn device(&self) -> Option<&DeviceName> {
        match self {
            Route::DeviceDetails(d)
            | Route::DevicePut(d)
            | Route::DeviceRetire(d)
            | Route::DeviceSetComments(d)
            | Route::DeviceSetEnvironment(d)
            | Route::DeviceLog(d)
            | Route::DeviceHistory(d)
            | Route::DeviceStatus(d)
            | Route::DeviceState(d)
            | Route::DeviceEvent(d, _)
            | Route::DeviceStateChange(d, _, _)
            | Route::DevicePowerCycle(d)
            | Route::DeviceAddressChange(d, _)
            | Route::DevicePowerOff(d)
            | Route::DevicePowerOn(d)
            | Route::DeviceReboot(d)
            | Route::DeviceFlash(d)
            | Route::DeviceClearPxe(d)
            | Route::DevicePing(d)
            | Route::DeviceBootconfig(d)
            | Route::SimFaults(d) => Some(d),
            Route::DeviceRequest(DeviceChoice::Named(d)) => Some(d),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> DeviceName {
        s.parse().expect("name")
    }

    #[test]
    fn routes_original_paths() {
        assert_eq!(
            Route::parse(&Method::GET, "/api/device/list/"),
            Ok(Route::DeviceList)
        );
        assert_eq!(
            Route::parse(&Method::HEAD, "/api/device/list/"),
            Ok(Route::DeviceList)
        );
        assert_eq!(
            Route::parse(&Method::GET, "/api/device/p1/status/"),
            Ok(Route::DeviceStatus(dev("p1")))
        );
        assert_eq!(
            Route::parse(&Method::POST, "/api/device/p1/set-comments/"),
            Ok(Route::DeviceSetComments(dev("p1")))
        );
        assert_eq!(
            Route::parse(&Method::PUT, "/api/device/p1/"),
            Ok(Route::DevicePut(dev("p1")))
        );
        assert_eq!(
            Route::parse(&Method::DELETE, "/api/device/p1"),
            Ok(Route::DeviceRetire(dev("p1")))
        );
    }

    #[test]
    fn registration_and_sync_routes() {
        assert_eq!(
            Route::parse(&Method::POST, "/api/device/register/"),
            Ok(Route::DeviceRegister)
        );
        assert_eq!(
            Route::parse(&Method::PUT, "/api/device/register/"),
            Ok(Route::DevicePut(dev("register")))
        );
        assert!(matches!(
            Route::parse(&Method::GET, "/api/device/register/"),
            Err(RouteError::MethodNotAllowed(m)) if m == POST
        ));
        assert_eq!(
            Route::parse(&Method::POST, "/api/inventory/sync"),
            Ok(Route::InventorySync)
        );
        assert!(Route::DeviceRegister.mutates() && Route::InventorySync.mutates());
        assert_eq!(Route::DeviceRegister.device(), None);
    }

    #[test]
    fn ui_routes() {
        assert_eq!(Route::parse(&Method::GET, "/"), Ok(Route::UiHome));
        assert_eq!(Route::parse(&Method::GET, "/ui/"), Ok(Route::UiPool));
        assert_eq!(Route::parse(&Method::GET, "/ui"), Err(RouteError::AddSlash));
        assert_eq!(
            Route::parse(&Method::GET, "/ui/device/p1/"),
            Ok(Route::UiDevice(dev("p1")))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/ui/requests/"),
            Ok(Route::UiRequests)
        );
        assert_eq!(
            Route::parse(&Method::GET, "/ui/relays/"),
            Ok(Route::UiRelays)
        );
        assert_eq!(
            Route::parse(&Method::GET, "/api/pool/overview/"),
            Ok(Route::PoolOverview)
        );
        assert_eq!(
            Route::parse(&Method::GET, "/api/relay/overview/"),
            Ok(Route::RelayOverview)
        );
        assert_eq!(
            Route::parse(&Method::GET, "/ui/request/7/"),
            Ok(Route::UiRequest(7))
        );
        assert!(Route::parse(&Method::GET, "/ui/request/x/").is_err());
        assert!(Route::UiRequest(7).is_ui() && Route::RelayOverview.is_ui());
        assert_eq!(
            Route::parse(&Method::GET, "/static/0a1b/app.css"),
            Ok(Route::Static {
                hash: "0a1b".into(),
                file: "app.css".into()
            })
        );
        for bad in [
            "/static/app.css",
            "/static/x/../secret",
            "/static/x/.hidden",
            "/static/x/a/b.css",
            "/static//app.css",
            "/static/x%2f/app.css",
        ] {
            assert_eq!(
                Route::parse(&Method::GET, bad),
                Err(RouteError::NotFound),
                "{bad}"
            );
        }
        assert!(matches!(
            Route::parse(&Method::POST, "/ui/"),
            Err(RouteError::MethodNotAllowed(_))
        ));
        assert!(!Route::UiPool.mutates() && Route::UiPool.is_ui());
        assert!(!Route::PoolOverview.mutates());
    }

    #[test]
    fn operations_routes() {
        assert_eq!(Route::parse(&Method::GET, "/metrics"), Ok(Route::Metrics));
        assert_eq!(Route::parse(&Method::GET, "/metrics/"), Ok(Route::Metrics));
        assert!(matches!(
            Route::parse(&Method::POST, "/metrics"),
            Err(RouteError::MethodNotAllowed(_))
        ));
        assert_eq!(
            Route::parse(&Method::GET, "/api/backup/"),
            Ok(Route::Backup)
        );
        assert_eq!(
            Route::parse(&Method::GET, "/api/backup"),
            Err(RouteError::AddSlash)
        );
        // A backup is the whole database: it counts as an admin call, not a plain read.
        assert!(Route::Backup.mutates());
        assert!(!Route::Metrics.mutates());
    }

    #[test]
    fn pxe_config_routes() {
        assert_eq!(
            Route::parse(&Method::GET, "/api/bmm/pxe_config/list/"),
            Ok(Route::PxeConfigList)
        );
        assert_eq!(
            Route::parse(&Method::GET, "/api/bmm/pxe_config/b2g/details/"),
            Ok(Route::PxeConfigDetails("b2g".parse().expect("name")))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/api/bmm/pxe_config/list"),
            Err(RouteError::AddSlash)
        );
        assert!(matches!(
            Route::parse(&Method::POST, "/api/bmm/pxe_config/list/"),
            Err(RouteError::MethodNotAllowed(_))
        ));
        assert!(!Route::PxeConfigList.mutates());
        assert_eq!(Route::PxeConfigList.required_role(), Role::Read);
    }

    #[test]
    fn trailing_slash_rule() {
        assert_eq!(
            Route::parse(&Method::GET, "/api/device/list"),
            Err(RouteError::AddSlash)
        );
        assert_eq!(
            Route::parse(&Method::POST, "/api/device/p1/set-comments"),
            Ok(Route::DeviceSetComments(dev("p1")))
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            Route::parse(&Method::GET, "/api/nothing/"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            Route::parse(&Method::GET, "/api//list/"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            Route::parse(&Method::GET, "api/version/"),
            Err(RouteError::NotFound)
        );
        assert!(matches!(
            Route::parse(&Method::POST, "/api/device/list/"),
            Err(RouteError::MethodNotAllowed(_))
        ));
        assert!(matches!(
            Route::parse(&Method::GET, "/api/device/p1/set-comments/"),
            Err(RouteError::MethodNotAllowed(m)) if m == POST
        ));
        assert!(matches!(
            Route::parse(&Method::GET, "/api/device/..%2f/status/"),
            Err(RouteError::BadName(_))
        ));
        assert!(matches!(
            Route::parse(&Method::GET, "/api/device/-s/status/"),
            Err(RouteError::BadName(_))
        ));
    }

    #[test]
    fn mutating_routes_need_more_than_read() {
        let samples = [
            (Method::GET, "/api/version/"),
            (Method::GET, "/api/device/list/"),
            (Method::GET, "/api/log/"),
            (Method::PUT, "/api/device/p1/"),
            (Method::DELETE, "/api/device/p1/"),
            (Method::POST, "/api/device/p1/set-comments/"),
            (Method::POST, "/api/device/p1/set-environment/"),
            (Method::PUT, "/api/image/b2g/"),
            (Method::DELETE, "/api/environment/prod/"),
            (Method::PUT, "/api/hardware-type/panda/"),
        ];
        for (m, p) in samples {
            let r = Route::parse(&m, p).expect(p);
            assert_eq!(r.mutates(), r.required_role() > Role::Read, "{p}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(method in "[A-Z]{1,7}", path in "\\PC{0,80}") {
            if let Ok(m) = Method::from_bytes(method.as_bytes()) {
                let _ = Route::parse(&m, &path);
            }
        }
    }
}
