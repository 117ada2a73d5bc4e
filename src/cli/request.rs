//! CLI subcommands for people and scripts holding devices: `request`, `return`, `renew`.
//! They talk to a running service's API.
//!
//! Exit codes (as every client subcommand): 0 success, 1 the service refused or the request
//! failed, 2 usage error, 3 the service could not be reached.

use std::time::{Duration, Instant};

use clap::Args;
use hyper::Method;
use serde_json::{Map, Value, json};

use crate::cli::{Exit, UrlArg};

/// `mozpool request DEVICE|any --image X --duration S [--wait]`.
#[derive(Debug, Args)]
// clap ignores a doc comment on the flattened `url`; the other docs are --help text.
#[allow(missing_docs)]
pub struct RequestArgs {
    /// A device name, or `any`.
    pub device: String,
    /// Image to put on the device.
    #[arg(long)]
    pub image: String,
    /// Lease in seconds.
    #[arg(long, default_value_t = 3600)]
    pub duration: u64,
    /// Who the device is for (default: $USER@hostname).
    #[arg(long)]
    pub assignee: Option<String>,
    /// Environment (default any).
    #[arg(long)]
    pub environment: Option<String>,
    /// Hardware type criterion.
    #[arg(long)]
    pub hardware_type: Option<String>,
    /// Processor criterion (armv7, ...).
    #[arg(long)]
    pub processor: Option<String>,
    /// Pool criterion.
    #[arg(long)]
    pub pool: Option<String>,
    /// OS version criterion.
    #[arg(long)]
    pub os_version: Option<String>,
    /// Priority (higher first).
    #[arg(long)]
    pub priority: Option<i32>,
    /// Queue up to this many seconds for a matching device instead of failing when none is free.
    #[arg(long, value_name = "SECONDS")]
    pub queue: Option<u64>,
    /// Boot-config values the image needs, `KEY=VALUE` (repeatable).
    #[arg(long = "boot-config", value_name = "KEY=VALUE")]
    pub boot_config: Vec<String>,
    /// Wait until the device is ready (or the request failed), printing state changes.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (the request is returned).
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    #[command(flatten)]
    pub url: UrlArg,
}

fn default_assignee() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".to_owned());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{user}@{host}")
}

/// `mozpool request`: prints `request <id> <state> <device>`; with `--wait`, exits 0 only
/// when the device is ready.
///
/// # Errors
/// [`Exit`] with the exit code.
pub async fn request(a: RequestArgs) -> Result<(), Exit> {
    let client = a.url.client();
    let mut body = Map::new();
    body.insert(
        "assignee".into(),
        json!(a.assignee.clone().unwrap_or_else(default_assignee)),
    );
    body.insert("duration".into(), json!(a.duration));
    body.insert("image".into(), json!(a.image));
    for (k, v) in [
        ("environment", &a.environment),
        ("hardware_type", &a.hardware_type),
        ("processor", &a.processor),
        ("pool", &a.pool),
        ("os_version", &a.os_version),
    ] {
        if let Some(v) = v {
            body.insert(k.into(), json!(v));
        }
    }
    if let Some(p) = a.priority {
        body.insert("priority".into(), json!(p));
    }
    if let Some(q) = a.queue {
        body.insert("wait".into(), json!(q));
    }
    for kv in &a.boot_config {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(Exit {
                code: 2,
                message: format!("--boot-config {kv:?}: expected KEY=VALUE"),
            });
        };
        body.insert(k.into(), json!(v));
    }
    let path = format!("/api/device/{}/request/", crate::cli::encode(&a.device));
    let (_, created) = client
        .call(Method::POST, &path, Some(&Value::Object(body)))
        .await?;
    let id = created["request"]["id"].as_u64().ok_or_else(|| Exit {
        code: 1,
        message: format!("unexpected answer: {created}"),
    })?;
    let mut state = created["request"]["state"]
        .as_str()
        .unwrap_or("new")
        .to_owned();
    let mut device = created["request"]["assigned_device"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    println!("request {id} {state} {device}");
    if !a.wait {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    loop {
        if state == "ready" {
            return Ok(());
        }
        if state.starts_with("failed_") || state == "closed" {
            let (_, st) = client
                .call(Method::GET, &format!("/api/request/{id}/status/"), None)
                .await?;
            let last = st["log"]
                .as_array()
                .and_then(|l| l.last())
                .and_then(|r| r["message"].as_str())
                .unwrap_or("");
            return Err(Exit {
                code: 1,
                message: format!("request {id} {state}: {last}"),
            });
        }
        if Instant::now() >= deadline {
            let _ = client
                .call(Method::POST, &format!("/api/request/{id}/return/"), None)
                .await;
            return Err(Exit {
                code: 1,
                message: format!("request {id} not ready after {} s (returned it)", a.timeout),
            });
        }
        let (_, st) = client
            .call(
                Method::GET,
                &format!("/api/request/{id}/status/?wait=30"),
                None,
            )
            .await?;
        let new_state = st["state"].as_str().unwrap_or("").to_owned();
        let new_device = st["assigned_device"].as_str().unwrap_or("").to_owned();
        if new_state != state || new_device != device {
            state = new_state;
            device = new_device;
            let why = st["waiting_because"]
                .as_str()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            println!("request {id} {state} {device}{why}");
        }
    }
}

/// `mozpool return ID`.
///
/// # Errors
/// [`Exit`] with the exit code.
pub async fn return_request(id: u64, url: &UrlArg) -> Result<(), Exit> {
    let client = url.client();
    client
        .call(Method::POST, &format!("/api/request/{id}/return/"), None)
        .await?;
    println!("request {id} returned");
    Ok(())
}

/// `mozpool renew ID SECONDS`.
///
/// # Errors
/// [`Exit`] with the exit code.
pub async fn renew(id: u64, seconds: u64, url: &UrlArg) -> Result<(), Exit> {
    let client = url.client();
    client
        .call(
            Method::POST,
            &format!("/api/request/{id}/renew/"),
            Some(&json!({ "duration": seconds })),
        )
        .await?;
    let (_, d) = client
        .call(Method::GET, &format!("/api/request/{id}/details/"), None)
        .await?;
    println!(
        "request {id} expires {}",
        d["expires"].as_str().unwrap_or("?")
    );
    Ok(())
}
