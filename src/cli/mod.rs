//! The `mozpool` command line: `serve` runs the service; the other subcommands are clients
//! of a running service's API (`--url`, default `http://127.0.0.1:8080`).
//!
//! Exit codes scripts can rely on: 0 success, 1 the service refused or failed the call,
//! 2 usage error, 3 the service could not be reached.

pub mod bench;
pub mod check;
pub mod client;
pub mod device;
pub mod relay;
pub mod request;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use crate::app::App;
use crate::app::config::{self, Config};
use crate::cli::client::{ApiClient, ClientError};
use crate::domain::clock::SystemClock;
use crate::http::auth::{self, Role, UnknownRole};

/// mozpool: power, check, flash and hand out mobile test devices.
#[derive(Debug, Parser)]
#[command(name = "mozpool", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Devices of a running service.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Images of a running service.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Inventory of a running service.
    #[command(subcommand)]
    Inventory(InventoryCmd),
    /// Read the durable log of a running service, newest first.
    Log(LogArgs),
    /// Show a running service's version.
    Version(UrlArg),
    /// Access tokens (made locally; the service only ever sees their hashes).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Save a consistent snapshot of a running service's database to FILE (atomically:
    /// FILE appears only once complete and verified).
    Backup(BackupArgs),
    /// Replace the database with a backup. Offline: stop the service first. The previous
    /// database is kept beside it, with a `.bak-<time>` suffix.
    Restore(RestoreArgs),
    /// Ask for a device (`any` or a name) and optionally wait until it is ready.
    Request(crate::cli::request::RequestArgs),
    /// Return a request's device.
    // clap ignores a doc comment on the flattened `url`; the other docs are --help text.
    #[allow(missing_docs)]
    Return {
        /// Request id.
        id: u64,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Renew a request: its lease ends SECONDS from now.
    // clap ignores a doc comment on the flattened `url`; the other docs are --help text.
    #[allow(missing_docs)]
    Renew {
        /// Request id.
        id: u64,
        /// New remaining duration.
        seconds: u64,
        #[command(flatten)]
        url: UrlArg,
    },
    /// List devices with their state and holder.
    Devices(UrlArg),
    /// Raw relay control for techs at the rack (bypasses Lifeguard; logged).
    Relay(crate::cli::relay::RelayArgs),
    /// End-to-end canary against a running service: request a device, wait for it, ping
    /// it, read its log, return it and watch it verify back to ready (docs/staging.md).
    Check(crate::cli::check::CheckArgs),
    /// Benchmark the service in-process on a temporary directory and print one table of
    /// figures against their targets (docs/performance.md).
    #[command(hide = true)]
    Bench(crate::cli::bench::BenchArgs),
}

/// `mozpool backup`.
#[derive(Debug, Args)]
// clap ignores a doc comment on the flattened `url`; the other docs are --help text.
#[allow(missing_docs)]
pub struct BackupArgs {
    /// Where to write the snapshot.
    pub file: PathBuf,
    #[command(flatten)]
    pub url: UrlArg,
}

/// `mozpool restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot to restore (from `mozpool backup`).
    pub file: PathBuf,
    /// The service's data directory (default: the config's `data_dir`, else
    /// /var/lib/mozpool).
    #[arg(long, env = "STATE_DIRECTORY")]
    pub data_dir: Option<PathBuf>,
    /// Configuration file to take `data_dir` from (default /etc/mozpool/mozpool.toml when it
    /// exists).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// `mozpool token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a random token, print it once with the lines to paste into the config.
    New {
        /// The token's name (recorded in the audit log; owns the requests it makes).
        name: String,
        /// `read`, `request` or `admin`.
        #[arg(long)]
        role: String,
        /// Append the `[[auth.tokens]]` entry to this config file (checked first) instead of
        /// printing it; the token itself is still printed, once.
        #[arg(long, value_name = "FILE")]
        append_to: Option<PathBuf>,
    },
}

/// Where the service is.
#[derive(Debug, Clone, Args)]
pub struct UrlArg {
    /// Base URL of the service.
    #[arg(
        long,
        env = "MOZPOOL_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Access token, sent as `Authorization: Bearer`. A URL of the form
    /// `http://name:TOKEN@host/` works too.
    #[arg(long, env = "MOZPOOL_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

impl UrlArg {
    /// A client for this service with this token.
    #[must_use]
    pub fn client(&self) -> ApiClient {
        ApiClient::new(&self.url).with_token(self.token.as_deref())
    }
}

/// `mozpool serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (default /etc/mozpool/mozpool.toml when it exists).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Listen address, overriding the config (`0.0.0.0:8080`).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Registration listener address (SUTAgent self-registration, normally `0.0.0.0:28001`),
    /// overriding `server.registration_listen`. Default off, except under --simulate, where
    /// it listens on a free loopback port.
    #[arg(long, value_name = "ADDR")]
    pub registration_listen: Option<std::net::SocketAddr>,
    /// Data directory, overriding the config.
    #[arg(long, env = "STATE_DIRECTORY")]
    pub data_dir: Option<PathBuf>,
    /// Run on a simulated rack of N devices (default 10), with no hardware; data goes to a
    /// fresh temporary directory unless --data-dir (or a `server.data_dir` other than the
    /// default) is given. Combines with --config: `[simulate]` tunes the rack, and the rack's
    /// boards, devices and image are added to the file's.
    #[arg(long, num_args = 0..=1, default_missing_value = "10", value_name = "N")]
    pub simulate: Option<u32>,
}

/// `mozpool device …`.
#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// List devices.
    // clap ignores a doc comment on the flattened `url`; the other docs are --help text.
    #[allow(missing_docs)]
    List {
        /// Show every field.
        #[arg(long)]
        details: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Show one device.
    // clap ignores a doc comment on the flattened `url`; the other docs are --help text.
    #[allow(missing_docs)]
    Show {
        /// Device name.
        name: String,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Create a device or change its inventory fields (admin).
    // clap ignores a doc comment on the flattened `url`; the other docs are --help text.
    #[allow(missing_docs)]
    Set {
        /// Device name.
        name: String,
        /// Fields to set.
        #[command(flatten)]
        fields: Box<DeviceFieldArgs>,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Retire a device (its history is kept) (admin).
    // clap ignores a doc comment on the flattened `url`; the other docs are --help text.
    #[allow(missing_docs)]
    Retire {
        /// Device name.
        name: String,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Settle the address change a registration announced (admin): `accept` moves the
    /// device to it, `dismiss` keeps its address. Either way it may be handed out again.
    // clap ignores a doc comment on the flattened `url`; the other docs are --help text.
    #[allow(missing_docs)]
    AddressChange {
        /// Device name.
        name: String,
        /// `accept` or `dismiss`.
        #[arg(value_parser = ["accept", "dismiss"])]
        decision: String,
        #[command(flatten)]
        url: UrlArg,
    },
}

/// Inventory fields on the command line.
#[derive(Debug, Args)]
#[allow(missing_docs)]
pub struct DeviceFieldArgs {
    #[arg(long)]
    pub hardware_type: Option<String>,
    #[arg(long)]
    pub processor: Option<String>,
    #[arg(long)]
    pub pool: Option<String>,
    #[arg(long)]
    pub os_version: Option<String>,
    #[arg(long)]
    pub environment: Option<String>,
    #[arg(long)]
    pub relay: Option<String>,
    #[arg(long)]
    pub sut: Option<String>,
    #[arg(long)]
    pub fastboot_serial: Option<String>,
    #[arg(long)]
    pub adb_serial: Option<String>,
    #[arg(long)]
    pub comments: Option<String>,
    /// A registration may claim the device before any agent registered as it.
    #[arg(long)]
    pub allow_registration: Option<bool>,
    /// A registration from a new address moves the device at once (else held for a tech).
    #[arg(long)]
    pub follow_address: Option<bool>,
}

/// `mozpool inventory …`.
#[derive(Debug, Subcommand)]
pub enum InventoryCmd {
    /// Sync the service's inventory-owned devices with a JSON or CSV inventory (a file, or a
    /// plain http:// URL fetched by this command): add new devices, update changed ones,
    /// retire vanished ones (admin). Formats: docs/registration.md.
    // clap ignores a doc comment on the flattened `url`; the other docs are --help text.
    #[allow(missing_docs)]
    Sync {
        /// Inventory file or http:// URL.
        source: String,
        /// Show the changes without making them.
        #[arg(long)]
        dry_run: bool,
        /// Retire even when more than max(5, 10%) of the inventory's devices would go.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        url: UrlArg,
    },
}

/// `mozpool image …`.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// List visible images.
    List(UrlArg),
}

/// `mozpool log`.
#[derive(Debug, Args)]
// clap ignores a doc comment on the flattened `url`; the other docs are --help text.
#[allow(missing_docs)]
pub struct LogArgs {
    /// Only this device.
    #[arg(long)]
    pub device: Option<String>,
    /// Only this request.
    #[arg(long)]
    pub request: Option<u64>,
    /// Only this subject (`api`, `registration`, ...).
    #[arg(long)]
    pub subject: Option<String>,
    /// At most this many entries.
    #[arg(long, default_value_t = 50)]
    pub limit: u64,
    #[command(flatten)]
    pub url: UrlArg,
}

/// An error with the exit code it should produce.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct Exit {
    pub code: i32,
    /// Message for stderr.
    pub message: String,
}

impl From<ClientError> for Exit {
    fn from(e: ClientError) -> Exit {
        let code = match e {
            ClientError::Unreachable { .. } => 3,
            ClientError::Url(_) => 2,
            ClientError::Status { .. } => 1,
        };
        Exit {
            code,
            message: e.to_string(),
        }
    }
}

/// Run a parsed command line.
///
/// # Errors
/// An error to print; [`Exit`] inside it carries a specific exit code.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Check(args) => Ok(crate::cli::check::run(args).await?),
        Command::Request(args) => Ok(crate::cli::request::request(args).await?),
        Command::Return { id, url } => Ok(crate::cli::request::return_request(id, &url).await?),
        Command::Renew { id, seconds, url } => {
            Ok(crate::cli::request::renew(id, seconds, &url).await?)
        }
        Command::Devices(url) => Ok(crate::cli::device::devices(&url).await?),
        Command::Relay(args) => Ok(crate::cli::relay::relay(args).await?),
        Command::Bench(args) => crate::cli::bench::run(args).await,
        Command::Device(cmd) => Ok(device(cmd).await?),
        Command::Inventory(InventoryCmd::Sync {
            source,
            dry_run,
            force,
            url,
        }) => inventory_sync(&source, dry_run, force, &url).await,
        Command::Image(ImageCmd::List(url)) => {
            let v = url
                .client()
                .get("/api/image/list/")
                .await
                .map_err(Exit::from)?;
            print_json(&v);
            Ok(())
        }
        Command::Log(args) => {
            let mut path = format!("/api/log/?limit={}", args.limit);
            if let Some(d) = &args.device {
                path.push_str(&format!("&device={}", encode(d)));
            }
            if let Some(r) = args.request {
                path.push_str(&format!("&request={r}"));
            }
            if let Some(s) = &args.subject {
                path.push_str(&format!("&subject={}", encode(s)));
            }
            let v = args.url.client().get(&path).await.map_err(Exit::from)?;
            for row in v["log"].as_array().into_iter().flatten() {
                println!(
                    "{} {:<12} {:<10} {}",
                    row["timestamp"].as_str().unwrap_or(""),
                    row["source"].as_str().unwrap_or(""),
                    row["actor"].as_str().unwrap_or("-"),
                    row["message"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Token(TokenCmd::New {
            name,
            role,
            append_to,
        }) => Ok(token_new(&name, &role, append_to.as_deref())?),
        Command::Backup(args) => backup(args).await,
        Command::Restore(args) => restore(args).await,
        Command::Version(url) => {
            let v = url
                .client()
                .get("/api/version/")
                .await
                .map_err(Exit::from)?;
            print_json(&v);
            Ok(())
        }
    }
}

async fn device(cmd: DeviceCmd) -> Result<(), Exit> {
    match cmd {
        DeviceCmd::List { details, url } => {
            let path = if details {
                "/api/device/list/?details=1"
            } else {
                "/api/device/list/"
            };
            let v = url.client().get(path).await?;
            if details {
                print_json(&v);
            } else {
                for name in v["devices"].as_array().into_iter().flatten() {
                    println!("{}", name.as_str().unwrap_or_default());
                }
            }
        }
        DeviceCmd::Show { name, url } => {
            let v = url
                .client()
                .get(&format!("/api/device/{}/details/", encode(&name)))
                .await?;
            print_json(&v);
        }
        DeviceCmd::Set { name, fields, url } => {
            let mut body = serde_json::Map::new();
            for (k, v) in [
                ("hardware_type", fields.hardware_type),
                ("processor", fields.processor),
                ("pool", fields.pool),
                ("os_version", fields.os_version),
                ("environment", fields.environment),
                ("relay", fields.relay),
                ("sut", fields.sut),
                ("fastboot_serial", fields.fastboot_serial),
                ("adb_serial", fields.adb_serial),
                ("comments", fields.comments),
            ] {
                if let Some(v) = v {
                    body.insert(k.to_owned(), json!(v));
                }
            }
            for (k, v) in [
                ("allow_registration", fields.allow_registration),
                ("follow_address", fields.follow_address),
            ] {
                if let Some(v) = v {
                    body.insert(k.to_owned(), json!(v));
                }
            }
            let (_, v) = url
                .client()
                .call(
                    Method::PUT,
                    &format!("/api/device/{}/", encode(&name)),
                    Some(&Value::Object(body)),
                )
                .await?;
            print_json(&v);
        }
        DeviceCmd::AddressChange {
            name,
            decision,
            url,
        } => {
            let (_, v) = url
                .client()
                .call(
                    Method::POST,
                    &format!("/api/device/{}/address-change/{decision}/", encode(&name)),
                    None,
                )
                .await?;
            print_json(&v);
        }
        DeviceCmd::Retire { name, url } => {
            let (_, v) = url
                .client()
                .call(
                    Method::DELETE,
                    &format!("/api/device/{}/", encode(&name)),
                    None,
                )
                .await?;
            print_json(&v);
        }
    }
    Ok(())
}

fn token_new(name: &str, role: &str, append_to: Option<&Path>) -> Result<(), Exit> {
    let usage = |message: String| Exit { code: 2, message };
    crate::domain::names::check_name("token name", name).map_err(|e| usage(e.to_string()))?;
    let role: Role = role
        .parse()
        .map_err(|e: UnknownRole| usage(e.to_string()))?;
    if role == Role::None {
        return Err(usage("a token's role is read, request or admin".into()));
    }
    let token = auth::new_token();
    let entry = format!(
        "[[auth.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
        auth::token_digest_hex(&token)
    );
    match append_to {
        None => {
            println!(
                "token for {name} (role {role}); it is shown only this once:\n\n    {token}\n"
            );
            println!("Add these lines to the service's configuration (/etc/mozpool/mozpool.toml)");
            println!("and restart it; keep an [auth] section with `anonymous = ...` above them:\n");
            print!("{entry}");
            println!(
                "\nClients send it as `Authorization: Bearer {token}`, with --token/MOZPOOL_TOKEN,"
            );
            println!("or in the URL: http://{name}:{token}@HOST:PORT/");
        }
        Some(path) => {
            let fail = |message: String| Exit { code: 1, message };
            let old = std::fs::read_to_string(path)
                .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
            let sep = if old.is_empty() || old.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            let new = format!("{old}{sep}{entry}");
            Config::parse(path, &new).map_err(|e| {
                fail(format!(
                    "not changing {}: with the new token it would not load: {e}",
                    path.display()
                ))
            })?;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
            std::io::Write::write_all(&mut f, format!("{sep}{entry}").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
            println!("{token}");
        }
    }
    Ok(())
}

async fn inventory_sync(
    source: &str,
    dry_run: bool,
    force: bool,
    url: &UrlArg,
) -> anyhow::Result<()> {
    let bytes = crate::inventory::sync::load_source(source)
        .await
        .map_err(|message| Exit { code: 1, message })?;
    let rows = crate::inventory::sync::parse_source(&bytes).map_err(|message| Exit {
        code: 1,
        message: format!("{source}: {message}"),
    })?;
    let mut path = "/api/inventory/sync/?".to_owned();
    if dry_run {
        path.push_str("dry_run=1&");
    }
    if force {
        path.push_str("force=1");
    }
    let body = json!({ "devices": rows });
    let (_, v) = url
        .client()
        .call(Method::POST, path.trim_end_matches(['?', '&']), Some(&body))
        .await
        .map_err(Exit::from)?;
    let report: crate::inventory::sync::SyncReport =
        serde_json::from_value(v).context("reading the service's sync report")?;
    let verb = if report.dry_run { "would be " } else { "" };
    for name in &report.added {
        println!("+ {name} ({verb}added)");
    }
    for u in &report.updated {
        println!("~ {} ({verb}updated): {}", u.name, u.changes.join(", "));
    }
    for name in &report.retired {
        println!("- {name} ({verb}retired)");
    }
    for s in &report.skipped {
        println!("  {} skipped: {}", s.name, s.reason);
    }
    println!(
        "{} added, {} updated, {} retired, {} unchanged, {} skipped{}",
        report.added.len(),
        report.updated.len(),
        report.retired.len(),
        report.unchanged,
        report.skipped.len(),
        if report.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    );
    Ok(())
}

async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let dest = args.file;
    let name = dest
        .file_name()
        .with_context(|| format!("{} is not a file name", dest.display()))?
        .to_string_lossy()
        .into_owned();
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let partial = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let result = async {
        let mut file = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        args.url
            .client()
            .download("/api/backup/", &mut file)
            .await
            .map_err(Exit::from)?;
        file.sync_all()
            .await
            .with_context(|| format!("syncing {}", partial.display()))?;
        drop(file);
        let check = partial.clone();
        let info = tokio::task::spawn_blocking(move || crate::storage::backup::validate(&check))
            .await
            .context("validation task")?
            .context("the downloaded snapshot does not validate")?;
        std::fs::rename(&partial, &dest)
            .with_context(|| format!("renaming to {}", dest.display()))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
        Ok::<_, anyhow::Error>(info)
    }
    .await;
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    println!(
        "backup written to {} ({} bytes, schema {}, {} devices, {} log records)",
        dest.display(),
        info.bytes,
        info.schema_version,
        info.rows("devices"),
        info.rows("logs")
    );
    Ok(())
}

async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let data_dir = match (args.data_dir, args.config) {
        (Some(d), _) => d,
        (None, Some(c)) => Config::load(&c)?.server.data_dir,
        (None, None) if std::path::Path::new(config::DEFAULT_PATH).exists() => {
            Config::load(std::path::Path::new(config::DEFAULT_PATH))?
                .server
                .data_dir
        }
        (None, None) => crate::app::config::ServerConfig::default().data_dir,
    };
    let label = crate::storage::backup::file_label(crate::domain::clock::Clock::now(&SystemClock));
    let snapshot = args.file;
    let dir = data_dir.clone();
    let report = tokio::task::spawn_blocking(move || {
        crate::storage::backup::restore(&snapshot, &dir, &label)
    })
    .await
    .context("restore task")?
    .map_err(|e| Exit {
        code: 1,
        message: format!("restore refused: {e}"),
    })?;
    println!(
        "restored {} ({} devices, {} log records, schema {})",
        report.store.display(),
        report.info.rows("devices"),
        report.info.rows("logs"),
        report.info.schema_version
    );
    if let Some(prev) = report.previous {
        println!("previous database kept as {}", prev.display());
    }
    Ok(())
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Percent-encode a path or query component.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let default_path = PathBuf::from(config::DEFAULT_PATH);
    let (mut config, source) = match (&args.config, args.simulate) {
        (Some(path), _) => (Config::load(path)?, path.display().to_string()),
        (None, Some(_)) => (
            Config::default(),
            "built-in defaults (simulated rack)".to_owned(),
        ),
        (None, None) if default_path.exists() => (
            Config::load(&default_path)?,
            default_path.display().to_string(),
        ),
        (None, None) => bail!(
            "no configuration: pass --config FILE, create {}, or run `mozpool serve --simulate` to try it on a simulated rack",
            config::DEFAULT_PATH
        ),
    };
    crate::app::telemetry::init(&config.log.level);
    if config.auth.is_none() {
        eprintln!("WARNING: {}", auth::OPEN_WARNING);
    }
    if let Some(addr) = args.listen {
        config.server.listen = addr;
    }
    if let Some(addr) = args.registration_listen {
        config.server.registration_listen = Some(addr);
    } else if args.simulate.is_some() && config.server.registration_listen.is_none() {
        config.server.registration_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    let mut _tempdir = None;
    if let Some(dir) = args.data_dir {
        config.server.data_dir = dir;
    } else if args.simulate.is_some()
        && (args.config.is_none()
            || config.server.data_dir == config::ServerConfig::default().data_dir)
    {
        // A simulated rack never shares the packaged data directory (a staging instance on
        // the production controller must not open production's database), unless asked to
        // with --data-dir or an explicit `server.data_dir`.
        let dir = tempfile::Builder::new()
            .prefix("mozpool-sim-")
            .tempdir()
            .context("creating a temporary data directory")?;
        config.server.data_dir = dir.path().to_owned();
        _tempdir = Some(dir);
    }
    let rack = match args.simulate {
        Some(n) => {
            let exe = std::env::current_exe()
                .context("finding the mozpool executable for the fastboot stand-in")?;
            let dir = config.server.data_dir.clone();
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Some(Arc::new(
                crate::app::simulate::start_rack(&mut config, n, &exe, &dir)
                    .context("starting the simulated rack")?,
            ))
        }
        None => None,
    };
    tracing::info!(config = %source, data_dir = %config.server.data_dir.display(), "starting");
    let app = App::open_with(config, Arc::new(SystemClock), rack)
        .await
        .context("starting the service")?;
    let listener = app.bind().await?;
    if let Ok(addr) = listener.local_addr() {
        eprintln!(
            "mozpool {} serving on http://{addr}/ (data in {})",
            env!("CARGO_PKG_VERSION"),
            app.config.server.data_dir.display()
        );
    }
    if let Some(addr) = app.registration_addr {
        eprintln!("devices register on {addr} (SUTAgent registration protocol)");
    }
    let shutdown = app.shutdown.clone();
    tokio::spawn(async move {
        crate::app::shutdown::wait_for_signal().await;
        tracing::info!("shutdown requested");
        shutdown.cancel();
    });
    app.run(listener).await;
    Ok(())
}
