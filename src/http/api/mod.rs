//! API handlers, one file per resource. [`dispatch`] is the one exhaustive `match` from
//! [`Route`] to handler: adding a route without a handler does not compile.

mod devices;
pub(crate) mod history;
mod inventory;
mod lifeguard;
mod logs;
mod pxe_configs;
mod registration;
mod relays;
mod requests;
mod system;

use hyper::Response;

use super::body::Body;
use super::dispatch::Ctx;
use super::error::ApiError;
use super::route::Route;

/// Run the handler for a route.
///
/// # Errors
/// The handler's [`ApiError`].
pub async fn dispatch(ctx: &Ctx, route: Route) -> Result<Response<Body>, ApiError> {
    match route {
        Route::Version => system::version(ctx),
        Route::Health => system::health(ctx).await,
        Route::Cluster => Ok(system::cluster(ctx)),
        Route::DeviceList => devices::list(ctx).await,
        Route::DeviceDetails(d) => devices::details(ctx, d).await,
        Route::DevicePut(d) => devices::put(ctx, d).await,
        Route::DeviceRetire(d) => devices::retire(ctx, d).await,
        Route::DeviceSetComments(d) => devices::set_comments(ctx, d).await,
        Route::DeviceSetEnvironment(d) => devices::set_environment(ctx, d).await,
        Route::DeviceLog(d) => devices::log(ctx, d).await,
        Route::DeviceStatus(d) => devices::status(ctx, d).await,
        Route::DeviceState(d) => devices::state(ctx, d).await,
        Route::ImageList => inventory::image_list(ctx).await,
        Route::ImageDetails(i) => inventory::image_details(ctx, i).await,
        Route::ImagePut(i) => inventory::image_put(ctx, i).await,
        Route::ImageDelete(i) => inventory::image_delete(ctx, i).await,
        Route::PxeConfigList => pxe_configs::list(ctx).await,
        Route::PxeConfigDetails(i) => pxe_configs::details(ctx, i).await,
        Route::EnvironmentList => inventory::environment_list(ctx).await,
        Route::EnvironmentPut(e) => inventory::environment_put(ctx, e).await,
        Route::EnvironmentDelete(e) => inventory::environment_delete(ctx, e).await,
        Route::HardwareTypeList => inventory::hardware_type_list(ctx).await,
        Route::HardwareTypePut(h) => inventory::hardware_type_put(ctx, h).await,
        Route::HardwareTypeDelete(h) => inventory::hardware_type_delete(ctx, h).await,
        Route::DeviceRegister => registration::register(ctx).await,
        Route::InventorySync => registration::inventory_sync(ctx).await,
        Route::DeviceEvent(d, e) => lifeguard::event(ctx, d, e).await,
        Route::DeviceStateChange(d, from, to) => lifeguard::state_change(ctx, d, from, to).await,
        Route::DevicePowerCycle(d) => lifeguard::power_cycle(ctx, d).await,
        Route::DeviceAddressChange(d, accept) => registration::address_change(ctx, d, accept).await,
        Route::DevicePowerOff(d) => lifeguard::power_off(ctx, d).await,
        Route::DevicePowerOn(d) => lifeguard::power_on(ctx, d).await,
        Route::DeviceReboot(d) => lifeguard::reboot(ctx, d).await,
        Route::DeviceFlash(d) => lifeguard::flash(ctx, d).await,
        Route::DeviceClearPxe(d) => lifeguard::clear_pxe(ctx, d).await,
        Route::DevicePing(d) => lifeguard::ping(ctx, d).await,
        Route::DeviceBootconfig(d) => lifeguard::bootconfig(ctx, d).await,
        Route::SimFaults(d) => lifeguard::sim_faults(ctx, d).await,
        Route::DeviceRequest(choice) => requests::create(ctx, choice).await,
        Route::RequestList => requests::list(ctx).await,
        Route::RequestDetails(id) => requests::details(ctx, id).await,
        Route::RequestStatus(id) => requests::status(ctx, id).await,
        Route::RequestLog(id) => requests::log(ctx, id).await,
        Route::RequestRenew(id) => requests::renew(ctx, id).await,
        Route::RequestReturn(id) => requests::return_request(ctx, id).await,
        Route::RequestEvent(id, e) => requests::event(ctx, id, e).await,
        Route::RelayList => relays::list(ctx).await,
        Route::RelayTest(b) => relays::test(ctx, b).await,
        Route::RelayChannel(b, c, op) => relays::channel(ctx, b, c, op).await,
        Route::LogQuery => logs::query(ctx).await,
        Route::Metrics => system::metrics(ctx).await,
        Route::Backup => system::backup(ctx).await,
        Route::PoolOverview => crate::http::ui::pages::overview(ctx).await,
        Route::RelayOverview => crate::http::ui::pages::relay_overview(ctx).await,
        Route::DeviceHistory(d) => history::device(ctx, d).await,
        Route::PoolHistory => history::pool(ctx).await,
        Route::RequestHistory => history::requests(ctx).await,
        page @ (Route::UiHome
        | Route::UiPool
        | Route::UiDevice(_)
        | Route::UiRequests
        | Route::UiRelays
        | Route::UiRequest(_)
        | Route::UiSignInForm
        | Route::UiSignIn
        | Route::UiSignOut
        | Route::Static { .. }) => Ok(crate::http::ui::pages::page(ctx, page).await),
    }
}

/// Decode `data` as every JSON request body the API accepts, running the handlers' checks
/// and discarding the results. The entry point of the `json_bodies` fuzz target and of the
/// robustness property test: nothing reachable from here may panic, whatever `data` is.
/// (New body types get a line in their module's `decode_bodies`.)
#[doc(hidden)]
pub fn decode_bodies(data: &[u8]) {
    devices::decode_bodies(data);
    inventory::decode_bodies(data);
}
