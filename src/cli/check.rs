//! `mozpool check`: a non-destructive end-to-end canary against a running service (staging
//! or production), safe to run from cron.
//!
//! It walks the path a test harness takes: API reachable, inventory sane, request a device,
//! wait for it (long poll), read details, ping it, read its log, return it, and watch it
//! go back through verification to `ready`. Each step prints one line with its duration;
//! the first failure stops the check with exit code 1 (3 when the service cannot be
//! reached).
//!
//! What it must not do: hold a device after it exits (the request is returned on every exit
//! path, including SIGTERM/SIGINT), touch any device but the one it was given, or queue
//! forever when the pool is full (`--any` refuses when no device is free, and the request
//! carries a bounded `wait`). It speaks only the public API, through [`ApiClient`].

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use hyper::Method;
use serde_json::{Value, json};

use crate::cli::Exit;
use crate::cli::client::{ApiClient, ClientError};

/// `mozpool check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Base URL of the service to check.
    #[arg(long, env = "MOZPOOL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Request this device (it must exist, not be retired and not be held by anyone).
    #[arg(long, conflicts_with = "any")]
    pub device: Option<String>,
    /// Request whichever device is free (the default); refuses to run when none is.
    #[arg(long)]
    pub any: bool,
    /// Image to request (default: the first listed image that can be reused, else the
    /// first listed image).
    #[arg(long)]
    pub image: Option<String>,
    /// Longest wait, in seconds, for each of: the device becoming ready for the request,
    /// and the device coming back to `ready` after it is returned.
    #[arg(long, default_value_t = 1200, value_name = "SECS")]
    pub timeout: u64,
    /// Who the request is for (default `mozpool-check@<hostname>`).
    #[arg(long)]
    pub assignee: Option<String>,
    /// API token, sent as `Authorization: Bearer`.
    #[arg(long, env = "MOZPOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Longest a single non-waiting API call may take before the check calls it hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest single long poll on a request's status.
const MAX_POLL: u64 = 60;
/// Extra lease beyond the two waits, so the request never expires under the check.
const LEASE_MARGIN_SECS: u64 = 300;

/// A failed step: its name and what went wrong.
struct Failure {
    step: &'static str,
    code: i32,
    message: String,
}

fn fail(step: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        step,
        code: 1,
        message: message.into(),
    }
}

/// A running check: the client, the request it holds, and the step clock.
struct Check {
    api: ApiClient,
    args: CheckArgs,
    /// The request this check created and has not returned yet. Whatever happens, it is
    /// returned before the command exits.
    request: Option<u64>,
    /// When the current step started.
    step_start: Instant,
}

/// Run the check and print one line per step.
///
/// # Errors
/// [`Exit`] with code 1 (a step failed) or 3 (the service could not be reached).
pub async fn run(args: CheckArgs) -> Result<(), Exit> {
    let api = ApiClient::new(&args.url).with_token(args.token.as_deref());
    let mut check = Check {
        api,
        args,
        request: None,
        step_start: Instant::now(),
    };
    let started = Instant::now();
    let outcome = tokio::select! {
        r = check.steps() => r,
        () = crate::app::shutdown::wait_for_signal() => Err(fail("interrupted", "stopped by a signal")),
    };
    // Cleanup runs on every path: success, failure and signal.
    let cleanup = check.return_request().await;
    let outcome = match (outcome, cleanup) {
        (Err(first), Err(c)) => {
            say(format_args!(
                "[FAIL] cleanup: {} (the request may still be held)",
                c.message
            ));
            Err(first)
        }
        (outcome, cleanup) => outcome.and(cleanup),
    };
    match outcome {
        Ok(()) => {
            say(format_args!(
                "[ok] {:.2}s all checks passed",
                started.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        Err(f) => {
            say(format_args!(
                "[FAIL] {:.2}s {}: {}",
                check.step_start.elapsed().as_secs_f64(),
                f.step,
                f.message
            ));
            Err(Exit {
                code: f.code,
                message: format!("check failed at step {}: {}", f.step, f.message),
            })
        }
    }
}

/// A device name in a URL path (names are restricted to `A-Z a-z 0-9 . _ : -`).
fn path_name(step: &'static str, name: &str) -> Result<String, Failure> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(fail(step, format!("{name:?} is not a valid name")));
    }
    Ok(name.to_owned())
}

/// Print one line; a closed or broken stdout (cron, `| head`) must not stop the check
/// before it returns its request, so write errors are ignored.
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A request state that will not change by itself any more.
fn request_settled(state: &str) -> bool {
    state == "closed" || state == "expired" || state.starts_with("failed_")
}

impl Check {
    fn begin(&mut self) {
        self.step_start = Instant::now();
    }

    fn ok(&mut self, step: &str, detail: &str) {
        say(format_args!(
            "[ok] {:.2}s {step}: {detail}",
            self.step_start.elapsed().as_secs_f64()
        ));
        self.begin();
    }

    async fn call(
        &self,
        step: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        limit: Duration,
    ) -> Result<Value, Failure> {
        match tokio::time::timeout(limit, self.api.call(method.clone(), path, body)).await {
            Ok(Ok((_, v))) => Ok(v),
            Ok(Err(e)) => {
                let code = match e {
                    ClientError::Unreachable { .. } => 3,
                    _ => 1,
                };
                Err(Failure {
                    step,
                    code,
                    message: format!("{method} {path}: {e}"),
                })
            }
            Err(_) => Err(fail(
                step,
                format!("{method} {path}: no answer within {}s", limit.as_secs()),
            )),
        }
    }

    async fn get(&self, step: &'static str, path: &str) -> Result<Value, Failure> {
        self.call(step, Method::GET, path, None, CALL_TIMEOUT).await
    }

    async fn steps(&mut self) -> Result<(), Failure> {
        self.begin();
        let timeout = Duration::from_secs(self.args.timeout);

        // 1. Reachable and healthy.
        let v = self.get("reachable", "/api/version/").await?;
        let version = str_of(&v, "version");
        if version.is_empty() {
            return Err(fail(
                "reachable",
                format!("/api/version/ has no version: {v}"),
            ));
        }
        let detail = format!("mozpool {version} on {}", str_of(&v, "server"));
        self.ok("reachable", &detail);
        let h = self.get("health", "/api/health/").await?;
        if h.get("ok") != Some(&Value::Bool(true)) {
            return Err(fail(
                "health",
                format!("the service reports itself unhealthy: {h}"),
            ));
        }
        self.ok("health", "storage ok");

        // 2. Inventory sane.
        let list = self.get("inventory", "/api/device/list/?details=1").await?;
        let devices: Vec<Value> = list
            .get("devices")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.get("retired") != Some(&Value::Bool(true)))
            .collect();
        if devices.is_empty() {
            return Err(fail(
                "inventory",
                "the service has no device that is not retired",
            ));
        }
        let images = self.get("inventory", "/api/image/list/").await?;
        let images: Vec<Value> = images
            .get("images")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let image = match &self.args.image {
            Some(i) => {
                let i = path_name("inventory", i)?;
                // Hidden images are not listed; details finds them too.
                self.get("inventory", &format!("/api/image/{i}/details/"))
                    .await
                    .map_err(|f| fail("inventory", format!("image {i}: {}", f.message)))?;
                i
            }
            None => images
                .iter()
                .find(|i| i.get("can_reuse") == Some(&Value::Bool(true)))
                .or_else(|| images.first())
                .map(|i| str_of(i, "name").to_owned())
                .filter(|n| !n.is_empty())
                .ok_or_else(|| fail("inventory", "the image list is empty"))?,
        };
        // Devices held by open requests are not free, whatever their state says.
        let open = self.get("inventory", "/api/request/list/").await?;
        let held: std::collections::BTreeMap<String, u64> = open
            .get("requests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| !request_settled(str_of(r, "state")))
            .filter(|r| !str_of(r, "assigned_device").is_empty())
            .map(|r| {
                (
                    str_of(r, "assigned_device").to_owned(),
                    r.get("id").and_then(Value::as_u64).unwrap_or(0),
                )
            })
            .collect();
        let ready = devices
            .iter()
            .filter(|d| str_of(d, "state") == "ready" && !held.contains_key(str_of(d, "name")))
            .count();
        let detail = format!(
            "{} devices ({ready} ready and free), {} images, using image {image}",
            devices.len(),
            images.len()
        );
        self.ok("inventory", &detail);

        // 3. Request a device, refusing rather than queueing behind other users.
        let choice = match &self.args.device {
            Some(name) => {
                let name = path_name("request", name)?;
                let d = devices
                    .iter()
                    .find(|d| str_of(d, "name") == name)
                    .ok_or_else(|| {
                        fail(
                            "request",
                            format!("no device named {name} (or it is retired)"),
                        )
                    })?;
                if d.get("request_id").is_some_and(|r| !r.is_null()) {
                    return Err(fail(
                        "request",
                        format!(
                            "device {name} is held by request {}; not touching it",
                            d["request_id"]
                        ),
                    ));
                }
                name
            }
            None => {
                if ready == 0 {
                    return Err(fail(
                        "request",
                        "no device is ready: refusing to queue (run again later, or name a device with --device)",
                    ));
                }
                "any".to_owned()
            }
        };
        let assignee = self
            .args
            .assignee
            .clone()
            .unwrap_or_else(|| format!("mozpool-check@{}", hostname()));
        let body = json!({
            "assignee": assignee,
            "duration": self.args.timeout.saturating_mul(2).saturating_add(LEASE_MARGIN_SECS),
            "image": image,
            // Bounded: a full pool fails the request instead of queueing it for ever.
            "wait": self.args.timeout,
        });
        let v = self
            .call(
                "request",
                Method::POST,
                &format!("/api/device/{choice}/request/"),
                Some(&body),
                CALL_TIMEOUT,
            )
            .await?;
        let req = &v["request"];
        let id = req
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| fail("request", format!("the answer has no request id: {v}")))?;
        self.request = Some(id);
        let detail = format!(
            "request {id} for {choice} as {assignee} (state {})",
            str_of(req, "state")
        );
        self.ok("request", &detail);

        // 4. Wait for ready with the long poll.
        let deadline = Instant::now() + timeout;
        let (state, device) = loop {
            let left = deadline.saturating_duration_since(Instant::now()).as_secs();
            let wait = left.clamp(1, MAX_POLL);
            let s = self
                .call(
                    "ready",
                    Method::GET,
                    &format!("/api/request/{id}/status/?wait={wait}"),
                    None,
                    Duration::from_secs(wait) + CALL_TIMEOUT,
                )
                .await?;
            let state = str_of(&s, "state").to_owned();
            let device = str_of(&s, "assigned_device").to_owned();
            if state == "ready" || request_settled(&state) || Instant::now() >= deadline {
                if state != "ready" {
                    let why = s
                        .get("waiting_because")
                        .filter(|w| !w.is_null())
                        .map(|w| format!(", waiting because {w}"))
                        .unwrap_or_default();
                    let on = if device.is_empty() {
                        String::new()
                    } else {
                        let st = self
                            .get(
                                "ready",
                                &format!("/api/device/{}/state/", path_name("ready", &device)?),
                            )
                            .await
                            .map(|d| str_of(&d, "state").to_owned())
                            .unwrap_or_else(|_| "unknown".to_owned());
                        format!(" on device {device} (device state {st})")
                    };
                    let msg = if request_settled(&state) {
                        format!("request {id} ended in state {state}{on}{why}")
                    } else {
                        format!(
                            "request {id} not ready after {}s: still {state}{on}{why}",
                            timeout.as_secs()
                        )
                    };
                    return Err(fail("ready", msg));
                }
                break (state, device);
            }
        };
        if device.is_empty() {
            return Err(fail(
                "ready",
                format!("request {id} is {state} but holds no device"),
            ));
        }
        if choice != "any" && device != choice {
            return Err(fail(
                "ready",
                format!("request {id} for {choice} was given {device}"),
            ));
        }
        let device = path_name("ready", &device)?;
        self.ok("ready", &format!("request {id} ready on {device}"));

        // 5. Details agree with what was asked.
        let r = self
            .get("details", &format!("/api/request/{id}/details/"))
            .await?;
        let mut problems = Vec::new();
        for (key, want) in [
            ("state", "ready"),
            ("assignee", assignee.as_str()),
            ("image", image.as_str()),
            ("assigned_device", device.as_str()),
            ("requested_device", choice.as_str()),
        ] {
            if str_of(&r, key) != want {
                problems.push(format!(
                    "request {key} is {:?}, expected {want:?}",
                    r.get(key)
                ));
            }
        }
        if r.get("id").and_then(Value::as_u64) != Some(id) {
            problems.push(format!("request id is {:?}", r.get("id")));
        }
        if str_of(&r, "expires").is_empty() {
            problems.push("request has no expires".into());
        }
        let d = self
            .get("details", &format!("/api/device/{device}/details/"))
            .await?;
        if str_of(&d, "name") != device {
            problems.push(format!("device name is {:?}", d.get("name")));
        }
        if str_of(&d, "state") != "ready" {
            problems.push(format!(
                "device state is {:?}, expected \"ready\"",
                d.get("state")
            ));
        }
        if d.get("retired") == Some(&Value::Bool(true)) {
            problems.push("device is retired".into());
        }
        if let Some(held) = d.get("request_id").and_then(Value::as_u64)
            && held != id
        {
            problems.push(format!("device says it is held by request {held}"));
        }
        if !problems.is_empty() {
            return Err(fail("details", problems.join("; ")));
        }
        self.ok("details", &format!("request and device {device} agree"));

        // 6. Ping.
        let p = self
            .get("ping", &format!("/api/device/{device}/ping/"))
            .await?;
        if p.get("success") != Some(&Value::Bool(true)) {
            return Err(fail(
                "ping",
                format!(
                    "{device} did not answer: {}",
                    p.get("error").unwrap_or(&Value::Null)
                ),
            ));
        }
        self.ok("ping", &format!("{device} answers"));

        // 7. Logs.
        let l = self
            .get("log", &format!("/api/device/{device}/log/?limit=200"))
            .await?;
        let rows = l
            .get("log")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if rows.is_empty() {
            return Err(fail("log", format!("{device} has an empty log")));
        }
        let mark = rows
            .iter()
            .filter_map(|r| r.get("id").and_then(Value::as_u64))
            .max()
            .unwrap_or(0);
        let rl = self.get("log", &format!("/api/request/{id}/log/")).await?;
        let req_rows = rl.get("log").and_then(Value::as_array).map_or(0, Vec::len);
        if req_rows == 0 {
            return Err(fail("log", format!("request {id} has an empty log")));
        }
        self.ok(
            "log",
            &format!("{} device rows, {req_rows} request rows", rows.len()),
        );

        // 8. Return.
        self.return_request().await?;
        let r = self
            .get("return", &format!("/api/request/{id}/details/"))
            .await?;
        if str_of(&r, "state") != "closed" {
            return Err(fail(
                "return",
                format!(
                    "request {id} is {:?} after return, expected \"closed\"",
                    r.get("state")
                ),
            ));
        }
        self.ok("return", &format!("request {id} closed"));

        // 9. The device goes back through verification to ready.
        let deadline = Instant::now() + timeout;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let s = self
                .get("back to ready", &format!("/api/device/{device}/state/"))
                .await?;
            let state = str_of(&s, "state").to_owned();
            if seen.last() != Some(&state) {
                seen.push(state.clone());
            }
            if state.starts_with("failed_") {
                return Err(fail(
                    "back to ready",
                    format!(
                        "{device} failed verification after return: {}",
                        seen.join(" -> ")
                    ),
                ));
            }
            if state == "ready" {
                let verified = seen.len() > 1 || self.verified_since(&device, mark).await?;
                if verified {
                    break;
                }
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    "back to ready",
                    format!(
                        "{device} not back to ready after {}s: {}",
                        timeout.as_secs(),
                        seen.join(" -> ")
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.ok("back to ready", &format!("{device}: {}", seen.join(" -> ")));
        Ok(())
    }

    /// Did the device's state machine go through a state change back to `ready` after log
    /// row `mark` (for a verification too quick for the state polls to see)?
    async fn verified_since(&self, device: &str, mark: u64) -> Result<bool, Failure> {
        let l = self
            .get(
                "back to ready",
                &format!("/api/device/{device}/log/?limit=200"),
            )
            .await?;
        Ok(l.get("log").and_then(Value::as_array).is_some_and(|rows| {
            rows.iter().any(|r| {
                r.get("id")
                    .and_then(Value::as_u64)
                    .is_some_and(|i| i > mark)
                    && str_of(r, "source") == "statemachine"
                    && str_of(r, "message").ends_with("-> ready: operation complete")
            })
        }))
    }

    /// Return the request this check holds, if any. Idempotent.
    async fn return_request(&mut self) -> Result<(), Failure> {
        let Some(id) = self.request else {
            return Ok(());
        };
        self.call(
            "return",
            Method::POST,
            &format!("/api/request/{id}/return/"),
            None,
            CALL_TIMEOUT,
        )
        .await?;
        self.request = None;
        Ok(())
    }
}
