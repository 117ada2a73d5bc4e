//! API handlers, one file per resource. [`dispatch`] is the one exhaustive `match` from
//! [`Route`] to handler: adding a route without a handler does not compile.

mod devices;
mod inventory;
mod logs;
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
        Route::EnvironmentList => inventory::environment_list(ctx).await,
        Route::EnvironmentPut(e) => inventory::environment_put(ctx, e).await,
        Route::EnvironmentDelete(e) => inventory::environment_delete(ctx, e).await,
        Route::HardwareTypeList => inventory::hardware_type_list(ctx).await,
        Route::HardwareTypePut(h) => inventory::hardware_type_put(ctx, h).await,
        Route::HardwareTypeDelete(h) => inventory::hardware_type_delete(ctx, h).await,
        Route::LogQuery => logs::query(ctx).await,
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
