//! `mozpool devices`: the rack at a glance, from a running service's API.
//!
//! Exit codes (as every client subcommand): 0 success, 1 the service refused or the request
//! failed, 2 usage error, 3 the service could not be reached.

use hyper::Method;

use crate::cli::{Exit, UrlArg};

/// `mozpool devices`: one line per device: name, state, holder, environment, hardware type.
///
/// # Errors
/// [`Exit`] with the exit code.
pub async fn devices(url: &UrlArg) -> Result<(), Exit> {
    let client = url.client();
    let (_, v) = client
        .call(Method::GET, "/api/device/list/?details=1", None)
        .await?;
    println!(
        "DEVICE                   STATE                        REQUEST  ENVIRONMENT  HARDWARE"
    );
    for d in v["devices"].as_array().into_iter().flatten() {
        let req = d["request_id"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |r| r.to_string());
        println!(
            "{:<24} {:<28} {:<8} {:<12} {}",
            d["name"].as_str().unwrap_or(""),
            d["state"].as_str().unwrap_or(""),
            req,
            d["environment"].as_str().unwrap_or("-"),
            d["hardware_type"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}
