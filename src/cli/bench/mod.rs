//! `mozpool bench`: measure the service the way a lab uses it and print one table of
//! figures against their targets (docs/performance.md).
//!
//! Everything runs the real service code: the in-process sections start an [`App`] on a
//! temporary directory and talk to it over HTTP; the scale section runs the binary itself as
//! a child process (`mozpool serve`) so its resident memory and start-up time are the
//! process's own. The hardware is replaced by instant stand-ins only where the issue asks
//! for "zero delay": GPIO relay boards on an in-memory backend ([`App::open_sim_gpio`]) and
//! one light tokio SUTAgent per device ([`sut`]).
//!
//! With `--baseline FILE` the run fails when any figure (tail latencies and the fsync-bound
//! single-writer figures excepted) is more than `--max-regression` times worse than the
//! figure recorded in FILE (CI uses this with `--quick`).

mod cluster;
pub mod etcd;
mod history;
pub mod sut;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::app::config::Config;
use crate::cli::client::ApiClient;
use crate::domain::clock::{Clock, Millis, SystemClock};
use crate::storage::logs::{LogQuery, NewLog, append};
use crate::storage::{Store, inventory as inv};

/// `mozpool bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Short run (about a minute): fewer log records, shorter load phases.
    #[arg(long)]
    pub quick: bool,
    /// Also write the figures as JSON to FILE (the format of docs/performance-baseline.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Fail when a figure is more than --max-regression times worse than in FILE.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Factor for --baseline.
    #[arg(long, default_value_t = 3.0)]
    pub max_regression: f64,
    /// Log records to generate for the log query figure (default 10,000,000; 200,000 with
    /// --quick).
    #[arg(long, value_name = "N")]
    pub log_records: Option<u64>,
    /// Run only these sections (comma-separated: cycles, scale, lab, health, relays, store,
    /// logs, history, cluster).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// Which way is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// One measured figure.
#[derive(Debug, Clone)]
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    better: Better,
    target: Option<f64>,
}

impl Figure {
    fn pass(&self) -> Option<bool> {
        self.target.map(|t| match self.better {
            Better::Higher => self.value >= t,
            Better::Lower => self.value <= t,
        })
    }
}

#[derive(Debug, Default)]
struct Figures(Vec<Figure>);

impl Figures {
    fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str, better: Better) {
        self.target(name, value, unit, better, None);
    }

    fn target(
        &mut self,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        better: Better,
        target: Option<f64>,
    ) {
        let f = Figure {
            name: name.into(),
            value,
            unit,
            better,
            target,
        };
        eprintln!("  {:<66} {:>12} {}", f.name, fmt(f.value), f.unit);
        self.0.push(f);
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The q-quantile (0..=1) of `v` in milliseconds (sorts `v`).
fn quantile(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    ms(v[i.min(v.len() - 1)])
}

/// Run the benchmark. SIGTERM or Ctrl-C stops it and the processes it started (etcd
/// members, `mozpool serve` controllers): dropping the running section drops their
/// handles, which kill them, where an interrupted bench used to leave them running and
/// disturbing the next measurement. (SIGKILL still cannot be caught.)
///
/// # Errors
/// A section that could not run, a gross regression against `--baseline`, or a signal.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    tokio::select! {
        r = sections(args) => r,
        () = crate::app::shutdown::wait_for_signal() => {
            bail!("interrupted by a signal; the processes the bench started are stopped")
        }
    }
}

async fn sections(args: BenchArgs) -> anyhow::Result<()> {
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let mut figs = Figures::default();
    let started = Instant::now();
    let exe = std::env::current_exe().context("cannot find the mozpool binary")?;
    #[allow(clippy::cast_precision_loss)]
    let size = std::fs::metadata(&exe).map_or(0, |m| m.len()) as f64 / 1e6;
    figs.add(
        "binary size (as built, not stripped)",
        size,
        "MB",
        Better::Lower,
    );
    if want("cycles") {
        eprintln!("cycles: check-out/check-in over HTTP, instant simulated hardware");
        cycles(args.quick, &mut figs).await.context("cycles")?;
    }
    if want("scale") {
        for n in [1000, 10_000] {
            eprintln!("scale: mozpool serve with {n} devices (child process)");
            scale(&exe, n, &mut figs).await.context("scale")?;
        }
    }
    if want("lab") {
        eprintln!("lab: mozpool serve --simulate 10000 (child process)");
        lab(&exe, 10_000, &mut figs).await.context("lab")?;
    }
    if want("health") {
        eprintln!("health: sweep of 1000 ready devices, SUTAgents answering after 50 ms");
        health(1000, &mut figs).await.context("health")?;
    }
    if want("relays") {
        eprintln!("relays: 32 power cycles at once on one simulated serial ProXR board");
        relays(&mut figs).await.context("relays")?;
    }
    if want("store") {
        eprintln!("store: durable commits");
        store(args.quick, &mut figs).await.context("store")?;
    }
    if want("logs") {
        let n = args
            .log_records
            .unwrap_or(if args.quick { 200_000 } else { 10_000_000 });
        eprintln!("logs: generating {n} log records");
        logs(n, &mut figs).await.context("logs")?;
    }
    if want("history") {
        // The history section builds its own log of the same size over 10,000 devices
        // (1,000 with --quick).
        let n = args
            .log_records
            .unwrap_or(if args.quick { 200_000 } else { 10_000_000 });
        let devices = if args.quick { 1000 } else { 10_000 };
        eprintln!("history: a month of history, {devices} devices, {n} log records");
        history::history(devices, n, &mut figs)
            .await
            .context("history")?;
    }
    if want("cluster") {
        eprintln!(
            "cluster: 3 etcd members, 3 mozpool serve --simulate controllers (child processes)"
        );
        cluster::cluster(&exe, args.quick, &mut figs)
            .await
            .context("cluster")?;
    }
    print_table(&figs, args.quick, started.elapsed());
    if let Some(path) = &args.json {
        std::fs::write(path, to_json(&figs, args.quick).to_string() + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.baseline {
        compare(&figs, path, args.max_regression)?;
    }
    Ok(())
}

fn print_table(figs: &Figures, quick: bool, took: Duration) {
    println!(
        "mozpool bench{} on {} cores, {} async worker thread(s), {} ({:.0} s)",
        if quick { " --quick" } else { "" },
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        tokio::runtime::Handle::current().metrics().num_workers(),
        crate::domain::clock::Millis(SystemClock.now().0).iso(),
        took.as_secs_f64()
    );
    println!(
        "| {:<66} | {:>10} | {:<5} | {:>10} | {:<4} |",
        "figure", "value", "unit", "target", "pass"
    );
    println!(
        "|{:-<68}|{:->12}|{:-<7}|{:->12}|{:-<6}|",
        "", "", "", "", ""
    );
    for f in &figs.0 {
        let target = f.target.map_or_else(String::new, |t| {
            format!(
                "{} {}",
                if f.better == Better::Higher {
                    ">="
                } else {
                    "<="
                },
                fmt(t)
            )
        });
        let pass = match f.pass() {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "",
        };
        println!(
            "| {:<66} | {:>10} | {:<5} | {:>10} | {:<4} |",
            f.name,
            fmt(f.value),
            f.unit,
            target,
            pass
        );
    }
}

fn to_json(figs: &Figures, quick: bool) -> Value {
    let mut m = serde_json::Map::new();
    for f in &figs.0 {
        m.insert(
            f.name.clone(),
            json!({
                "value": f.value,
                "unit": f.unit,
                "better": if f.better == Better::Higher { "higher" } else { "lower" },
                "target": f.target,
            }),
        );
    }
    json!({ "quick": quick, "figures": m })
}

/// Figures (by a part of their name) that `--baseline` does not compare: tail latencies of a
/// short run and a lone writer's fsync-bound commits (0.25 to 4 ms on the same shared disk
/// within an hour) are too noisy, and so is a single client's cycle, a chain of four such
/// lone commits; status polls per cycle are near zero and swing with
/// timing; the kernel's count of bytes written depends on the file system; commits per
/// cycle depend on how many writes each fsync's wait gathers into one batch, so on the disk.
const NOT_GATED: &[&str] = &[
    "p99",
    "1 writer",
    "commit latency",
    "status polls",
    "disk bytes",
    "commits per cycle",
    ", 1 clients",
];

/// The paced phase's figures, which `--baseline` compares only when the phase kept up with
/// its schedule: on a machine whose disk cannot commit 5,000 cycles a second, requests queue
/// behind the writer and their latency measures that queue, not the service's work (the
/// back-to-back throughput figures still gate the service).
const PACED: &str = "paced to";

/// Share of the paced phase's scheduled cycles that must be done for its latencies to be
/// compared with the baseline's.
const PACED_KEPT_UP: f64 = 99.0;

/// Figures that wait on the disk's fsync (check-out cycles, group commits, single API
/// writes): `--baseline` allows them the factor by which this machine's lone-writer commit
/// rate is below the baseline's on top of `--max-regression`, so the gate compares the code
/// rather than a shared disk that commits 2x slower this hour.
const DISK_BOUND: &[&str] = &["clients", "writers", "POST "];

/// The figure that measures the disk: a lone writer's durable commits per second.
const DISK_PROBE: &str = "store commits/s, 1 writer (durable)";

/// Fail on a figure more than `factor` times worse than the baseline's.
fn compare(figs: &Figures, path: &Path, factor: f64) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the baseline {}", path.display()))?;
    let base: Value = serde_json::from_str(&text).context("the baseline is not JSON")?;
    let mut bad = Vec::new();
    let mut checked = 0;
    let paced_kept_up = figs
        .0
        .iter()
        .find(|f| f.name.contains("scheduled cycles done"))
        .is_none_or(|f| f.value >= PACED_KEPT_UP);
    if !paced_kept_up {
        println!(
            "the paced phase did not keep up with its schedule on this machine: its latencies are not compared"
        );
    }
    let disk = figs
        .0
        .iter()
        .find(|f| f.name.trim() == DISK_PROBE)
        .zip(base["figures"][DISK_PROBE]["value"].as_f64())
        .map_or(1.0, |(f, b)| {
            if f.value > 0.0 {
                (b / f.value).max(1.0)
            } else {
                1.0
            }
        });
    if disk > 1.0 {
        println!(
            "this disk commits {disk:.1}x slower than the baseline's: fsync-bound figures may be that much worse too"
        );
    }
    for f in &figs.0 {
        if NOT_GATED.iter().any(|s| f.name.contains(s))
            || (!paced_kept_up && f.name.contains(PACED) && f.unit == "ms")
        {
            continue;
        }
        let Some(b) = base["figures"][&f.name]["value"].as_f64() else {
            continue;
        };
        if !(b.is_finite() && b > 0.0 && f.value.is_finite()) {
            continue;
        }
        checked += 1;
        let allowed = if DISK_BOUND.iter().any(|s| f.name.contains(s)) {
            factor * disk
        } else {
            factor
        };
        let worse = match f.better {
            Better::Higher => f.value * allowed < b,
            Better::Lower => f.value > b * allowed,
        };
        if worse {
            bad.push(format!(
                "{}: {} {} against {} in the baseline",
                f.name,
                fmt(f.value),
                f.unit,
                fmt(b)
            ));
        }
    }
    println!(
        "baseline {}: {checked} figures compared, {} more than {factor}x worse",
        path.display(),
        bad.len()
    );
    if !bad.is_empty() {
        bail!("gross regression:\n  {}", bad.join("\n  "));
    }
    Ok(())
}

fn spanned<T: std::str::FromStr>(s: &str) -> anyhow::Result<toml::Spanned<T>> {
    s.parse()
        .map(|v| toml::Spanned::new(0..0, v))
        .map_err(|_| anyhow::anyhow!("bad name {s}"))
}

/// A config for an in-process service on `dir`: `boards` GPIO boards (instant relays),
/// the reusable image `android`, no delays in the hardware settings.
fn config(dir: &Path, boards: usize) -> anyhow::Result<Config> {
    let mut text = String::new();
    // Every BCM pin of each board is wired (`cycles` addresses `gB:pinN` for all of them).
    let pins: Vec<String> = (0..=crate::hw::relay::MAX_BCM_PIN)
        .map(|p| p.to_string())
        .collect();
    let pins = pins.join(", ");
    for b in 0..boards {
        text.push_str(&format!(
            "[[relay_boards]]\nname = \"g{b}\"\nkind = {{ type = \"gpio\", active_low = false, pins = [{pins}] }}\ncool_down_ms = 0\n"
        ));
    }
    let mut c = Config::parse(Path::new("bench.toml"), &text).context("bench config")?;
    c.server.data_dir = dir.to_owned();
    c.server.listen = "127.0.0.1:0".parse()?;
    // The bench's clients stand for many machines but all come from 127.0.0.1: one address
    // may be all of them (fair connections would otherwise cap it at 64 connections and 16
    // long polls).
    c.server.max_connections_per_client = c.server.max_connections;
    c.server.max_long_polls_per_client = c.server.max_connections;
    c.hardware.power_off_time_ms = 0;
    c.hardware.sut_timeout_ms = 5000;
    c.hardware.ping_timeout_ms = 5000;
    // The simulated devices boot instantly: no boot wait before probing them.
    c.lifeguard.pc_rebooting_ms = 0;
    c.lifeguard.flash_rebooting_ms = 0;
    c.images.push(crate::app::config::ImageConfig {
        name: spanned("android")?,
        description: None,
        boot_config_keys: Vec::new(),
        can_reuse: true,
        hidden: false,
        has_sut_agent: true,
        agent: None,
        steps: Vec::new(),
    });
    Ok(c)
}

fn device(
    name: &str,
    relay: Option<String>,
    sut: String,
) -> anyhow::Result<crate::app::config::DeviceConfig> {
    Ok(crate::app::config::DeviceConfig {
        name: spanned(name)?,
        hardware_type: None,
        processor: None,
        pool: Some("mobile".into()),
        os_version: None,
        environment: None,
        relay: relay.map(|r| r.parse()).transpose()?,
        sut: Some(sut.parse()?),
        fastboot_serial: None,
        adb_serial: None,
        comments: None,
        allow_registration: None,
        follow_address: None,
    })
}

/// Bench setup, not a service path: every device starts `ready` with the reusable image
/// already on it (what a lab looks like after its first flash), with `deadline` as its
/// next idle health check.
async fn seed(app: &App, deadline: Option<Millis>) -> anyhow::Result<()> {
    app.store
        .write(move |tx, _| {
            let devices = inv::devices_in_tx(tx)?;
            for mut d in devices {
                d.state = crate::domain::device_state::DeviceState::Ready;
                d.request = None;
                d.lifeguard.current_image = Some("android".into());
                d.lifeguard.current_has_agent = true;
                d.lifeguard.counters.clear();
                d.lifeguard.deadline = deadline;
                inv::put_device(tx, &d)?;
            }
            Ok(())
        })
        .await?;
    Ok(())
}

/// The throughput target at 64 clients, and the load its latency target applies at.
const TARGET_RATE: f64 = 5000.0;

/// Check-out/check-in cycles at 1, 16 and 64 clients, and at 64 clients paced to
/// [`TARGET_RATE`].
async fn cycles(quick: bool, figs: &mut Figures) -> anyhow::Result<()> {
    const DEVICES: usize = 192;
    let pins = usize::from(crate::hw::relay::MAX_BCM_PIN) + 1;
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let addrs = sut::start(DEVICES, Duration::ZERO, &stop).await?;
    let mut c = config(dir.path(), DEVICES.div_ceil(pins))?;
    for (i, a) in addrs.iter().enumerate() {
        let relay = format!("g{}:pin{}", i / pins, i % pins);
        c.devices.push(device(
            &format!("bench-{i:05}"),
            Some(relay),
            a.to_string(),
        )?);
    }
    let (app, addr) = {
        let app = App::open_sim_gpio(c, Arc::new(SystemClock)).await?;
        seed(&app, None).await?;
        let listener = app.bind().await?;
        let addr = listener.local_addr()?;
        tokio::spawn(app.clone().run(listener));
        (app, addr)
    };
    let client = ApiClient::new(&format!("http://{addr}"));
    let phase = Duration::from_secs(if quick { 3 } else { 10 });
    let stats = app.store.clone();
    let counters = move || {
        let s = stats.stats();
        (
            s.commits.load(std::sync::atomic::Ordering::Relaxed),
            s.writes.load(std::sync::atomic::Ordering::Relaxed),
            s.commit_micros.load(std::sync::atomic::Ordering::Relaxed),
            s.log_records.load(std::sync::atomic::Ordering::Relaxed),
            disk_bytes_written(),
        )
    };
    // Each client as fast as it can (the service's capacity, latency at saturation), then
    // 64 clients paced to the target's 5,000 cycles/s together: the latency target is
    // "p99 under 10 ms at that load".
    for (clients, rate) in [
        (1usize, None),
        (16, None),
        (64, None),
        (64, Some(TARGET_RATE)),
    ] {
        let (c0, w0, m0, l0, b0) = counters();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..clients {
            let client = client.clone();
            // Every client starts one cycle per `interval`, the clients spread evenly over it.
            #[allow(clippy::cast_precision_loss)]
            let pace = rate.map(|r: f64| {
                let interval = Duration::from_secs_f64(clients as f64 / r);
                (interval, interval.mul_f64(i as f64 / clients as f64))
            });
            tasks.push(tokio::spawn(async move {
                cycle_client(client, t0 + phase, pace).await
            }));
        }
        let (mut create, mut status, mut ret, mut total) = (vec![], vec![], vec![], vec![]);
        let mut polls = 0u64;
        let mut n = 0u64;
        let mut scheduled = 0u64;
        for t in tasks {
            let r = t.await??;
            n += r.cycles;
            scheduled += r.scheduled;
            polls += r.status.len() as u64;
            create.extend(r.create);
            status.extend(r.status);
            ret.extend(r.ret);
            total.extend(r.total);
        }
        let took = t0.elapsed().as_secs_f64();
        let (c1, w1, m1, l1, b1) = counters();
        #[allow(clippy::cast_precision_loss)]
        let per = |x: u64| x as f64 / n.max(1) as f64;
        let label = match rate {
            None => format!("{clients} clients"),
            Some(r) => format!("{clients} clients paced to {r:.0}/s"),
        };
        let paced = rate.is_some();
        let saturated_64 = clients == 64 && !paced;
        figs.target(
            format!("cycles/s, {label}"),
            n as f64 / took,
            "1/s",
            Better::Higher,
            saturated_64.then_some(TARGET_RATE),
        );
        if paced {
            // The p99s below are "at that load" only if the service kept to the schedule
            // (a slot or so per client is lost at the end of the phase when a cycle runs
            // late; 64 of ~15,000 in a quick run).
            #[allow(clippy::cast_precision_loss)]
            figs.target(
                format!("  scheduled cycles done, {label}"),
                100.0 * n as f64 / scheduled.max(1) as f64,
                "%",
                Better::Higher,
                Some(99.0),
            );
        }
        for (call, v) in [
            ("POST device/any/request", &mut create),
            ("POST request/{id}/return", &mut ret),
        ] {
            figs.add(
                format!("  p50 {call}, {label}"),
                quantile(v, 0.5),
                "ms",
                Better::Lower,
            );
            figs.target(
                format!("  p99 {call}, {label}"),
                quantile(v, 0.99),
                "ms",
                Better::Lower,
                paced.then_some(10.0),
            );
        }
        // Only requests that were not ready at once poll; at low load there may be none.
        if !status.is_empty() {
            figs.add(
                format!("  p50 GET request/{{id}}/status?wait, {label}"),
                quantile(&mut status, 0.5),
                "ms",
                Better::Lower,
            );
            figs.add(
                format!("  p99 GET request/{{id}}/status?wait, {label}"),
                quantile(&mut status, 0.99),
                "ms",
                Better::Lower,
            );
        }
        figs.add(
            format!("  p50 whole cycle, {label}"),
            quantile(&mut total, 0.5),
            "ms",
            Better::Lower,
        );
        figs.add(
            format!("  store commits per cycle, {label}"),
            per(c1 - c0),
            "",
            Better::Lower,
        );
        figs.add(
            format!("  store writes per cycle, {label}"),
            per(w1 - w0),
            "",
            Better::Lower,
        );
        figs.add(
            format!("  log records per cycle, {label}"),
            per(l1 - l0),
            "",
            Better::Lower,
        );
        if let (Some(b0), Some(b1)) = (b0, b1) {
            figs.add(
                format!("  disk bytes written per cycle, {label}"),
                per(b1.saturating_sub(b0)) / 1024.0,
                "KiB",
                Better::Lower,
            );
        }
        figs.add(
            format!("  status polls per cycle (request not ready at once), {label}"),
            per(polls),
            "",
            Better::Lower,
        );
        #[allow(clippy::cast_precision_loss)]
        figs.add(
            format!("  writer thread busy (commits incl. fsync), {label}"),
            (m1 - m0) as f64 / 1e4 / took,
            "%",
            Better::Lower,
        );
        // Let returned devices finish their self-tests before the next level.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    app.shutdown.cancel();
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

#[derive(Debug, Default)]
struct ClientRun {
    cycles: u64,
    /// Paced runs: slots in the schedule before the end of the phase.
    scheduled: u64,
    create: Vec<Duration>,
    status: Vec<Duration>,
    ret: Vec<Duration>,
    total: Vec<Duration>,
}

/// Bytes this process has caused to be written to storage (`/proc/self/io`), where the
/// kernel reports it.
fn disk_bytes_written() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// One client's check-out/check-in cycles until `until`: back to back, or with `pace`
/// (interval, offset) one cycle starting every interval after the offset. A paced client
/// that falls behind its schedule starts the next cycle at once, and stops at `until`
/// like the others: a service that cannot keep up leaves slots of `scheduled` undone.
async fn cycle_client(
    client: ApiClient,
    until: Instant,
    pace: Option<(Duration, Duration)>,
) -> anyhow::Result<ClientRun> {
    let mut r = ClientRun::default();
    let body = json!({"assignee": "bench", "duration": 3600, "image": "android"});
    let mut next = Instant::now() + pace.map_or(Duration::ZERO, |(_, offset)| offset);
    if let Some((interval, _)) = pace {
        let window = until.saturating_duration_since(next).as_secs_f64();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        {
            r.scheduled = (window / interval.as_secs_f64()).ceil() as u64;
        }
    }
    while Instant::now() < until {
        if let Some((interval, _)) = pace {
            tokio::time::sleep_until(next.into()).await;
            next += interval;
            if Instant::now() >= until {
                break;
            }
        }
        let t0 = Instant::now();
        let (_, v) = client
            .call(Method::POST, "/api/device/any/request/", Some(&body))
            .await?;
        r.create.push(t0.elapsed());
        let id = v["request"]["id"]
            .as_u64()
            .context("no request id in the reply")?;
        let mut state = v["request"]["state"].as_str().unwrap_or("").to_owned();
        while state != "ready" {
            let t = Instant::now();
            let v = client
                .get(&format!("/api/request/{id}/status/?wait=10"))
                .await?;
            r.status.push(t.elapsed());
            state = v["state"].as_str().unwrap_or("").to_owned();
            if matches!(state.as_str(), "closed" | "failed" | "expired") {
                bail!("request {id} ended in {state}: {v}");
            }
        }
        let t = Instant::now();
        client
            .call(
                Method::POST,
                &format!("/api/request/{id}/return/"),
                Some(&json!({})),
            )
            .await?;
        r.ret.push(t.elapsed());
        r.total.push(t0.elapsed());
        r.cycles += 1;
    }
    Ok(r)
}

/// Start-up time, resident memory and device list latency of `mozpool serve` with `n`
/// configured devices (unwired: no relay, no SUTAgent), in a child process.
async fn scale(exe: &Path, n: usize, figs: &mut Figures) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[log]\nlevel = \"warn\"\n[[images]]\nname = \"android\"\ncan_reuse = true\n",
        dir.path().join("data").display()
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[devices]]\nname = \"bench-{i:05}\"\npool = \"mobile\"\n"
        ));
    }
    let conf = dir.path().join("mozpool.toml");
    std::fs::write(&conf, text)?;
    let client = ApiClient::new(&format!("http://127.0.0.1:{port}"));
    let label = if n >= 10_000 { "10k" } else { "1k" };
    // Round 0: first start (creates the devices), the allocator's default settings.
    // Round 1: restart on the same store with the environment of the packaged systemd unit
    // (UNIT_ENV, see systemd/mozpool.service): the figures with targets.
    for round in 0..2 {
        let packaged = round == 1;
        let t0 = Instant::now();
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if packaged {
            cmd.envs(UNIT_ENV);
        }
        let mut child = cmd.spawn().context("cannot start mozpool serve")?;
        loop {
            if client.get("/api/version/").await.is_ok() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("mozpool serve with {n} devices did not answer within 60 s");
            }
            if let Some(status) = child.try_wait()? {
                bail!("mozpool serve exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let up = ms(t0.elapsed());
        if packaged {
            figs.target(
                format!("start-up, restart with {label} devices"),
                up,
                "ms",
                Better::Lower,
                Some(500.0),
            );
        } else {
            figs.add(
                format!("start-up, first start (creates {label} devices)"),
                up,
                "ms",
                Better::Lower,
            );
        }
        // Let the start finish resuming the devices before measuring.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let v = client.get("/api/device/list/").await?;
        if v["devices"].as_array().map_or(0, Vec::len) != n {
            bail!("device/list did not list {n} devices");
        }
        let (mut plain, mut details) = (Vec::new(), Vec::new());
        // Timed without parsing the reply: the figure is the service's, not the client's.
        for i in 0..30 {
            let t = Instant::now();
            let (s, _) = client
                .call_bytes(Method::GET, "/api/device/list/", None)
                .await?;
            plain.push(t.elapsed());
            if !s.is_success() {
                bail!("device/list: {s}");
            }
            if i % 3 == 0 {
                let t = Instant::now();
                let (s, _) = client
                    .call_bytes(Method::GET, "/api/device/list/?details=1", None)
                    .await?;
                details.push(t.elapsed());
                if !s.is_success() {
                    bail!("device/list?details=1: {s}");
                }
            }
        }
        if packaged {
            let list_target = (n >= 10_000).then_some(20.0);
            figs.target(
                format!("device/list median, {label} devices"),
                quantile(&mut plain, 0.5),
                "ms",
                Better::Lower,
                list_target,
            );
            figs.target(
                format!("device/list?details=1 median, {label} devices"),
                quantile(&mut details, 0.5),
                "ms",
                Better::Lower,
                list_target,
            );
            // A request against the whole inventory (no device is free: they are unwired),
            // then its return: what one request costs the writer with n devices.
            let body = json!({"assignee": "bench", "duration": 60, "image": "android"});
            let (mut create, mut ret) = (Vec::new(), Vec::new());
            for _ in 0..20 {
                let t = Instant::now();
                let (_, v) = client
                    .call(Method::POST, "/api/device/any/request/", Some(&body))
                    .await?;
                create.push(t.elapsed());
                let id = v["request"]["id"].as_u64().context("no request id")?;
                let t = Instant::now();
                client
                    .call(
                        Method::POST,
                        &format!("/api/request/{id}/return/"),
                        Some(&json!({})),
                    )
                    .await?;
                ret.push(t.elapsed());
            }
            figs.add(
                format!("POST device/any/request median, {label} devices, none free"),
                quantile(&mut create, 0.5),
                "ms",
                Better::Lower,
            );
            figs.add(
                format!("POST request/{{id}}/return median, {label} devices"),
                quantile(&mut ret, 0.5),
                "ms",
                Better::Lower,
            );
        }
        #[allow(clippy::cast_precision_loss)]
        let mb = child
            .id()
            .and_then(|pid| proc_status(pid, "VmRSS:"))
            .unwrap_or(0) as f64
            / 1024.0;
        if packaged {
            figs.target(
                format!("resident memory (VmRSS) after lists, {label} devices, as packaged"),
                mb,
                "MiB",
                Better::Lower,
                (n >= 10_000).then_some(50.0),
            );
        } else {
            figs.add(
                format!("resident memory (VmRSS) after lists, {label} devices, default env"),
                mb,
                "MiB",
                Better::Lower,
            );
        }
        stop_child(&mut child).await?;
    }
    Ok(())
}

/// `mozpool serve --simulate n`, as a newcomer runs it (default environment): time until
/// its API answers, until every device is `ready`, and its peak resident memory and thread
/// count on the way.
async fn lab(exe: &Path, n: usize, figs: &mut Figures) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let client = ApiClient::new(&format!("http://127.0.0.1:{port}"));
    let label = if n >= 10_000 {
        "10k".to_owned()
    } else {
        n.to_string()
    };
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .arg("serve")
        .arg("--simulate")
        .arg(n.to_string())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start mozpool serve --simulate")?;
    let pid = child.id().context("no child pid")?;
    let mut threads = 0;
    let result = async {
        loop {
            if client.get("/api/version/").await.is_ok() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("mozpool serve --simulate {n} did not answer within 60 s");
            }
            if let Some(status) = child.try_wait()? {
                bail!("mozpool serve --simulate exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let up = ms(t0.elapsed());
        loop {
            threads = threads.max(proc_status(pid, "Threads:").unwrap_or(0));
            let v = client.get("/api/device/list/?details=1").await?;
            let devices = v["devices"].as_array().map_or(&[][..], Vec::as_slice);
            let ready = devices.iter().filter(|d| d["state"] == "ready").count();
            if devices.len() == n && ready == n {
                break;
            }
            if t0.elapsed() > Duration::from_secs(180) {
                bail!("{ready} of {n} simulated devices ready after 180 s");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok((up, t0.elapsed()))
    }
    .await;
    #[allow(clippy::cast_precision_loss)]
    let peak_mib = proc_status(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0;
    stop_child(&mut child).await?;
    let (up, all_ready) = result?;
    figs.target(
        format!("simulated rack of {label}: API answers after"),
        up,
        "ms",
        Better::Lower,
        Some(2000.0),
    );
    figs.target(
        format!("simulated rack of {label}: every device ready after"),
        all_ready.as_secs_f64(),
        "s",
        Better::Lower,
        Some(60.0),
    );
    figs.target(
        format!("simulated rack of {label}: peak resident memory (VmHWM)"),
        peak_mib,
        "MiB",
        Better::Lower,
        Some(200.0),
    );
    #[allow(clippy::cast_precision_loss)]
    figs.add(
        format!("simulated rack of {label}: threads (most seen)"),
        threads as f64,
        "threads",
        Better::Lower,
    );
    Ok(())
}

/// Stop a `mozpool serve` child as systemd would (SIGTERM), killing it if it has not
/// exited 30 s later.
async fn stop_child(child: &mut tokio::process::Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        child.kill().await?;
    }
    Ok(())
}

/// A number field of `/proc/PID/status` (kB for memory fields).
fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The environment `systemd/mozpool.service` sets for the allocator (a test keeps the two in
/// step): mimalloc returns freed pages to the system at once instead of after a delay, so the
/// buffers of a 10,000-device list do not stay resident.
pub const UNIT_ENV: [(&str, &str); 1] = [("MIMALLOC_PURGE_DELAY", "0")];

/// Time for the idle health checks of `n` ready devices, all due at once.
async fn health(n: usize, figs: &mut Figures) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let addrs = sut::start(n, Duration::from_millis(50), &stop).await?;
    let mut c = config(dir.path(), 0)?;
    for (i, a) in addrs.iter().enumerate() {
        c.devices
            .push(device(&format!("bench-{i:05}"), None, a.to_string())?);
    }
    let app = App::open_sim_gpio(c, Arc::new(SystemClock)).await?;
    seed(&app, Some(SystemClock.now())).await?;
    let metrics = app.lifeguard.hardware().metrics.clone();
    let listener = app.bind().await?;
    let t0 = Instant::now();
    tokio::spawn(app.clone().run(listener));
    loop {
        let (ok, failed) = metrics.count("health_check");
        if ok + failed >= n as u64 {
            if failed > 0 {
                bail!("{failed} health checks failed");
            }
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("health sweep unfinished after 120 s: {ok} ok, {failed} failed");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    figs.target(
        format!("health sweep, {n} devices (SUTAgent delay 50 ms)"),
        ms(t0.elapsed()),
        "ms",
        Better::Lower,
        Some(2000.0),
    );
    app.shutdown.cancel();
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// The relay figure: a whole board's devices power-cycled at once (issue 2: a board used to
/// hold its queue for every off time, so this took over a minute).
const RELAY_CYCLES: &str = "32 devices on one serial ProXR board power-cycled (off time 1 s)";

/// Wall time until 32 power cycles, all started at once, have finished on one simulated
/// serial ProXR board (a pty, the real driver, the board's default settings).
async fn relays(figs: &mut Figures) -> anyhow::Result<()> {
    use crate::hw::relay::{BoardConfig, BoardKind, Framing, RelayAddr, RelayBoards, Transport};
    use crate::hw::sim::{SimProxrBoard, SimProxrConfig};
    const DEVICES: u8 = 32;
    let off_time = Duration::from_secs(1);
    let sim = SimProxrBoard::on_pty(SimProxrConfig::default())?;
    let path = sim
        .pty_path()
        .context("the simulated board has no pty")?
        .to_path_buf();
    let cfg = BoardConfig::new(
        "bench-proxr".parse()?,
        BoardKind::Proxr {
            transport: Transport::Serial {
                path,
                baud: 115_200,
            },
            framing: Framing::Raw,
            banks: 4,
        },
    );
    let boards = RelayBoards::start(vec![cfg])?;
    // Open the port before the clock starts, as a running service has.
    boards.test(&"bench-proxr".parse()?).await?;
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..DEVICES {
        let addr: RelayAddr =
            format!("bench-proxr:bank{}:relay{}", i / 8 + 1, i % 8 + 1).parse()?;
        let boards = boards.clone();
        tasks.spawn(async move { boards.power_cycle(&addr, off_time).await });
    }
    let mut failed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r? {
            failed.push(e.to_string());
        }
    }
    let took = t0.elapsed();
    if !failed.is_empty() {
        bail!(
            "{} of {DEVICES} power cycles failed: {}",
            failed.len(),
            failed[0]
        );
    }
    for i in 0..DEVICES {
        if sim.energised(i / 8 + 1, i % 8 + 1) {
            bail!("relay {} still energised after its cycle", i + 1);
        }
    }
    figs.target(RELAY_CYCLES, ms(took), "ms", Better::Lower, Some(10_000.0));
    Ok(())
}

/// Durable commits: one writer waiting for each commit, then 64 at once (group commit).
async fn store(quick: bool, figs: &mut Figures) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(
        &dir.path().join(crate::storage::backup::DB_FILE),
        Arc::new(SystemClock),
    )?;
    let n = if quick { 300 } else { 2000 };
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        store
            .write(move |tx, now| {
                append(
                    tx,
                    now,
                    NewLog::new(format!("device:bench-{}", i % 100), "bench", "commit"),
                )
                .map(|_| ())
            })
            .await?;
        lat.push(t.elapsed());
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    figs.add(
        "store commits/s, 1 writer (durable)",
        rate,
        "1/s",
        Better::Higher,
    );
    figs.add(
        "  store commit latency p50 (durable)",
        quantile(&mut lat, 0.5),
        "ms",
        Better::Lower,
    );
    figs.add(
        "  store commit latency p99 (durable)",
        quantile(&mut lat, 0.99),
        "ms",
        Better::Lower,
    );
    let phase = Duration::from_secs(if quick { 2 } else { 5 });
    let commits0 = store
        .stats()
        .commits
        .load(std::sync::atomic::Ordering::Relaxed);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while t0.elapsed() < phase {
                store
                    .write(move |tx, now| {
                        append(
                            tx,
                            now,
                            NewLog::new(format!("device:bench-{w}"), "bench", "commit"),
                        )
                        .map(|_| ())
                    })
                    .await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut writes = 0;
    for t in tasks {
        writes += t.await??;
    }
    let took = t0.elapsed().as_secs_f64();
    let commits = store
        .stats()
        .commits
        .load(std::sync::atomic::Ordering::Relaxed)
        - commits0;
    #[allow(clippy::cast_precision_loss)]
    {
        figs.add(
            "store writes/s, 64 writers (group commit, durable)",
            writes as f64 / took,
            "1/s",
            Better::Higher,
        );
        figs.add(
            "  store commits/s, 64 writers",
            commits as f64 / took,
            "1/s",
            Better::Higher,
        );
    }
    Ok(())
}

/// Log query latency over `n` generated records (10,000 subjects).
async fn logs(n: u64, figs: &mut Figures) -> anyhow::Result<()> {
    const SUBJECTS: u64 = 10_000;
    const BATCH: u64 = 50_000;
    let dir = tempfile::tempdir()?;
    let store = Store::open(
        &dir.path().join(crate::storage::backup::DB_FILE),
        Arc::new(SystemClock),
    )?;
    let t0 = Instant::now();
    let mut written = 0;
    while written < n {
        let k = BATCH.min(n - written);
        let from = written;
        store
            .write(move |tx, now| {
                for i in from..from + k {
                    append(
                        tx,
                        now,
                        NewLog::new(
                            format!("device:bench-{:05}", i % SUBJECTS),
                            "lifeguard",
                            "entering state ready (bench record)",
                        ),
                    )?;
                }
                Ok(())
            })
            .await?;
        written += k;
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    figs.add(
        "log generation (batched writes)",
        rate,
        "rec/s",
        Better::Higher,
    );
    let label = if n >= 1_000_000 {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1000)
    };
    let mut by_subject = Vec::new();
    let mut newest = Vec::new();
    for i in 0..200u64 {
        let subject = format!("device:bench-{:05}", (i * 7919) % SUBJECTS);
        let q = LogQuery {
            subject: Some(subject),
            limit: 100,
            ..LogQuery::default()
        };
        let t = Instant::now();
        let rows = store.read(move |snap| snap.logs(&q)).await?;
        by_subject.push(t.elapsed());
        if rows.is_empty() {
            bail!("the log query found nothing");
        }
        let q = LogQuery {
            limit: 100,
            ..LogQuery::default()
        };
        let t = Instant::now();
        store.read(move |snap| snap.logs(&q)).await?;
        newest.push(t.elapsed());
    }
    let mut sizes = BTreeMap::new();
    sizes.insert("subject", by_subject);
    sizes.insert("newest", newest);
    for (what, mut v) in sizes {
        let desc = if what == "subject" {
            "one device's newest 100"
        } else {
            "newest 100 of all"
        };
        figs.add(
            format!("log query p50, {desc}, {label} records"),
            quantile(&mut v, 0.5),
            "ms",
            Better::Lower,
        );
        figs.add(
            format!("  log query p99, {desc}, {label} records"),
            quantile(&mut v, 0.99),
            "ms",
            Better::Lower,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Better, DISK_PROBE, Figures, compare};

    const PACED_DONE: &str = "scheduled cycles done, 64 clients paced to 5000/s";
    const PACED_P50: &str = "p50 whole cycle, 64 clients paced to 5000/s";
    const WRITERS: &str = "store writes/s, 64 writers (group commit, durable)";

    /// Figures from `(name, value, unit)`; units in ms are lower-is-better, the rest higher.
    fn figures(rows: &[(&str, f64, &'static str)]) -> Figures {
        let mut f = Figures(Vec::new());
        for &(name, value, unit) in rows {
            let better = if unit == "ms" {
                Better::Lower
            } else {
                Better::Higher
            };
            f.add(name, value, unit, better);
        }
        f
    }

    /// `run` against a baseline file holding `base`, with the CI's factor of 3.
    fn gate(base: &Figures, run: &Figures) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("base.json");
        std::fs::write(&path, super::to_json(base, true).to_string())?;
        compare(run, &path, 3.0)
    }

    /// A paced run against a baseline that kept up at 5 ms and 6,000 cycles/s.
    fn paced(done: f64, paced_p50: f64, cycles: f64) -> anyhow::Result<()> {
        let base = figures(&[
            (PACED_DONE, 99.9, "%"),
            (PACED_P50, 5.0, "ms"),
            ("cycles/s, 64 clients", 6000.0, "1/s"),
        ]);
        let run = figures(&[
            (PACED_DONE, done, "%"),
            (PACED_P50, paced_p50, "ms"),
            ("cycles/s, 64 clients", cycles, "1/s"),
        ]);
        gate(&base, &run)
    }

    /// The paced phase's latency is gated only when the phase kept up; throughput always is.
    #[test]
    fn paced_latency_is_gated_only_when_the_phase_kept_up() {
        assert!(
            paced(99.5, 20.0, 6000.0).is_err(),
            "kept up and 4x slower: a regression"
        );
        assert!(
            paced(65.0, 20.0, 6000.0).is_ok(),
            "did not keep up: latency not compared"
        );
        assert!(
            paced(65.0, 20.0, 1500.0).is_err(),
            "throughput 4x lower still fails"
        );
    }

    /// Fsync-bound figures are allowed the disk's slowdown, measured by the lone writer;
    /// figures that do not wait on the disk are not.
    #[test]
    fn a_slower_disk_widens_only_the_fsync_bound_figures() -> anyhow::Result<()> {
        let base = figures(&[
            (DISK_PROBE, 3000.0, "1/s"),
            (WRITERS, 140_000.0, "1/s"),
            ("device/list median, 10k devices", 7.0, "ms"),
        ]);
        let run = |writers: f64, list: f64| {
            figures(&[
                (DISK_PROBE, 1500.0, "1/s"),
                (WRITERS, writers, "1/s"),
                ("device/list median, 10k devices", list, "ms"),
            ])
        };
        gate(&base, &run(34_000.0, 7.0))?;
        assert!(
            gate(&base, &run(20_000.0, 7.0)).is_err(),
            "7x lower is more than the disk explains"
        );
        assert!(
            gate(&base, &run(34_000.0, 25.0)).is_err(),
            "lists do not wait on the disk"
        );
        Ok(())
    }

    /// A single client's cycles are a chain of lone fsyncs: not gated, like a lone writer.
    #[test]
    fn single_client_figures_are_not_gated() -> anyhow::Result<()> {
        let base = figures(&[
            ("cycles/s, 1 clients", 685.0, "1/s"),
            ("cycles/s, 16 clients", 4000.0, "1/s"),
        ]);
        let run = |sixteen: f64| {
            figures(&[
                ("cycles/s, 1 clients", 188.0, "1/s"),
                ("cycles/s, 16 clients", sixteen, "1/s"),
            ])
        };
        gate(&base, &run(4000.0))?;
        assert!(
            gate(&base, &run(1000.0)).is_err(),
            "16 clients are still gated"
        );
        Ok(())
    }

    /// The relay figure is gated like any other: a board that holds its queue through every
    /// off time again (32 s and more) fails, the noise of a loaded machine does not.
    #[test]
    fn the_relay_figure_is_gated() -> anyhow::Result<()> {
        let base = figures(&[(super::RELAY_CYCLES, 1100.0, "ms")]);
        gate(&base, &figures(&[(super::RELAY_CYCLES, 2000.0, "ms")]))?;
        assert!(
            gate(&base, &figures(&[(super::RELAY_CYCLES, 33_000.0, "ms")])).is_err(),
            "one off time per device is a regression"
        );
        Ok(())
    }

    /// The bench's "as packaged" figures are only the packaged service's if the child runs
    /// with the unit's environment.
    #[test]
    fn unit_env_is_the_systemd_units() {
        let unit = include_str!("../../../systemd/mozpool.service");
        let set: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("Environment="))
            .collect();
        let expected: Vec<String> = super::UNIT_ENV
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(set, expected, "systemd/mozpool.service vs bench::UNIT_ENV");
    }
}
