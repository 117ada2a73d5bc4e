//! Inventory sync: bring the devices an inventory source owns in line with it (the
//! original's `mozpool-inventorysync`), in ONE store transaction.
//!
//! The source is a JSON or CSV list of devices (formats in `docs/registration.md`). The diff:
//! - a row naming no device → the device is added (origin `inventory`, state `new`);
//! - a row naming a device of origin `inventory` → its changed fields are updated (a field
//!   absent or empty in the row is left as it is); a retired one is brought back;
//! - a row naming a device created through the API, a registration or the simulator → the
//!   device is *adopted*: updated, and its origin becomes `inventory`;
//! - a row naming a device from the configuration file, or one owned by another controller,
//!   is skipped (the config is re-applied at every start and would fight the sync);
//! - a non-retired device of origin `inventory` missing from the source is retired (its
//!   history stays). Devices the source never owned are never retired.
//!
//! Safety valve: a sync that would retire more than `max(5, owned / 10)` devices is refused
//! unless forced (an empty or truncated export must not retire the lab).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::clock::Millis;
use crate::domain::model::{Device, device_subject};
use crate::domain::names::{DeviceName, NameError};
use crate::domain::wiring::{RelayAddr, SutAddr};
use crate::inventory::{DeviceFields, FieldError, check_fields, retire_device, upsert_device};
use crate::storage::Tx;
use crate::storage::logs::{NewLog, append};
use crate::storage::{Store, StoreError, inventory as inv};

/// Most rows a source may have.
pub const MAX_ROWS: usize = 10_000;
/// Largest source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 16 * 1024 * 1024;
/// Origin of devices the inventory source owns.
pub const ORIGIN: &str = "inventory";

/// One device of the inventory source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
// Fields are the inventory keys (docs/api.md); only the non-obvious ones are documented.
#[allow(missing_docs)]
pub struct InventoryRow {
    /// Device name (required).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Relay wiring (`board:bankB:relayR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// SUTAgent address `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sut: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastboot_serial: Option<String>,
    /// adb serial (USB serial or `host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adb_serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
}

/// CSV column names, in [`InventoryRow`] order.
pub const COLUMNS: &[&str] = &[
    "name",
    "hardware_type",
    "processor",
    "pool",
    "os_version",
    "environment",
    "relay",
    "sut",
    "fastboot_serial",
    "adb_serial",
    "comments",
];

impl InventoryRow {
    /// The row's fields, with its addresses parsed.
    fn fields(&self) -> Result<DeviceFields, FieldError> {
        let ne = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let relay = ne(&self.relay)
            .map(|r| r.parse::<RelayAddr>())
            .transpose()
            .map_err(FieldError::BadRelay)?;
        let sut = ne(&self.sut)
            .map(|s| s.parse::<SutAddr>())
            .transpose()
            .map_err(FieldError::BadSut)?;
        Ok(DeviceFields {
            hardware_type: ne(&self.hardware_type),
            processor: ne(&self.processor),
            pool: ne(&self.pool),
            os_version: ne(&self.os_version),
            environment: ne(&self.environment),
            relay,
            sut,
            fastboot_serial: ne(&self.fastboot_serial),
            adb_serial: ne(&self.adb_serial),
            comments: ne(&self.comments),
            // Registration trust is an admin's per-device decision (API or config); an
            // inventory export has no column for it.
            allow_registration: None,
            follow_address: None,
        })
    }

    fn set(&mut self, column: &str, value: String) {
        let v = Some(value).filter(|s| !s.is_empty());
        match column {
            "name" => self.name = v.unwrap_or_default(),
            "hardware_type" => self.hardware_type = v,
            "processor" => self.processor = v,
            "pool" => self.pool = v,
            "os_version" => self.os_version = v,
            "environment" => self.environment = v,
            "relay" => self.relay = v,
            "sut" => self.sut = v,
            "fastboot_serial" => self.fastboot_serial = v,
            "adb_serial" => self.adb_serial = v,
            _ => self.comments = v,
        }
    }
}

/// The wire body of `POST /api/inventory/sync/`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncBody {
    /// Every device of the source.
    pub devices: Vec<InventoryRow>,
}

/// Parse a source: JSON (`{"devices": [...]}` or a bare array) when it starts with `{` or
/// `[`, CSV with a header row otherwise.
///
/// # Errors
/// A message naming the row or column at fault.
pub fn parse_source(bytes: &[u8]) -> Result<Vec<InventoryRow>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the source is not UTF-8".to_owned())?;
    let text = text.trim_start_matches('\u{feff}');
    let rows = match text.trim_start().chars().next() {
        Some('{') => {
            serde_json::from_str::<SyncBody>(text)
                .map_err(|e| format!("invalid JSON inventory: {e}"))?
                .devices
        }
        Some('[') => serde_json::from_str::<Vec<InventoryRow>>(text)
            .map_err(|e| format!("invalid JSON inventory: {e}"))?,
        _ => parse_csv(text)?,
    };
    if rows.len() > MAX_ROWS {
        return Err(format!("more than {MAX_ROWS} devices"));
    }
    Ok(rows)
}

fn parse_csv(text: &str) -> Result<Vec<InventoryRow>, String> {
    let mut records = csv_records(text)?.into_iter();
    let Some((_, header)) = records.next() else {
        return Ok(Vec::new());
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_owned()).collect();
    for h in &header {
        if !COLUMNS.contains(&h.as_str()) {
            return Err(format!(
                "CSV line 1: unknown column {h:?} (known: {})",
                COLUMNS.join(", ")
            ));
        }
    }
    if !header.iter().any(|h| h == "name") {
        return Err("CSV line 1: a `name` column is required".into());
    }
    let mut rows = Vec::new();
    for (line, rec) in records {
        if rec.len() != header.len() {
            return Err(format!(
                "CSV line {line}: {} fields, the header has {}",
                rec.len(),
                header.len()
            ));
        }
        let mut row = InventoryRow::default();
        for (h, v) in header.iter().zip(rec) {
            row.set(h, v.trim().to_owned());
        }
        rows.push(row);
        if rows.len() > MAX_ROWS {
            return Err(format!("more than {MAX_ROWS} devices"));
        }
    }
    Ok(rows)
}

/// Split CSV text into records (RFC 4180 quoting; blank lines and lines starting with `#`
/// skipped), each with its 1-based starting line.
fn csv_records(text: &str) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        if matches!(chars.peek(), Some('#')) {
            for c in chars.by_ref() {
                if c == '\n' {
                    line += 1;
                    break;
                }
            }
            continue;
        }
        let mut rec = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Err(format!("CSV line {start}: unterminated quote"));
                }
                break;
            };
            if c == '\n' {
                line += 1;
            }
            if quoted {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        quoted = false;
                    }
                } else {
                    field.push(c);
                }
                continue;
            }
            match c {
                '"' if field.trim().is_empty() && !was_quoted => {
                    field.clear();
                    quoted = true;
                    was_quoted = true;
                }
                ',' => {
                    rec.push(std::mem::take(&mut field));
                    was_quoted = false;
                }
                '\n' => break,
                '\r' => {}
                c => field.push(c),
            }
        }
        rec.push(field);
        if !(rec.len() == 1 && rec[0].trim().is_empty()) {
            out.push((start, rec));
        }
    }
    Ok(out)
}

/// A row that passed [`validate`]: what the sync plans and writes with.
#[derive(Debug, Clone, PartialEq, Eq)]
// Fields named after their types need no more words.
#[allow(missing_docs)]
pub struct CheckedRow {
    pub name: DeviceName,
    /// Its inventory fields, checked.
    pub fields: DeviceFields,
}

/// Why a source's rows were refused: the first bad row, named by its device. The text is
/// the API's 400 message and the CLI's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RowError {
    /// The row's device name is not a valid name.
    #[error("device {name:?}: {source}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        source: NameError,
    },
    /// Two rows name the same device.
    #[error("device {name} is listed twice")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Duplicate { name: String },
    /// One of the row's fields is refused.
    #[error("device {name}: {source}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    BadField {
        name: String,
        /// Which field, and why.
        source: FieldError,
    },
}

/// Check the rows: valid, unique names and valid fields.
///
/// # Errors
/// The first problem, naming the device.
pub fn validate(rows: &[InventoryRow]) -> Result<Vec<CheckedRow>, RowError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name = r
            .name
            .parse::<DeviceName>()
            .map_err(|source| RowError::BadName {
                name: r.name.clone(),
                source,
            })?;
        if !seen.insert(r.name.as_str()) {
            return Err(RowError::Duplicate {
                name: r.name.clone(),
            });
        }
        let fields = r
            .fields()
            .and_then(|f| check_fields(&f).map(|()| f))
            .map_err(|source| RowError::BadField {
                name: r.name.clone(),
                source,
            })?;
        out.push(CheckedRow { name, fields });
    }
    Ok(out)
}

/// One updated device in a [`SyncReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct Updated {
    pub name: String,
    /// `field: old -> new` lines.
    pub changes: Vec<String>,
}

/// One skipped row in a [`SyncReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// What a sync did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Nothing was written.
    pub dry_run: bool,
    /// Devices added.
    pub added: Vec<String>,
    /// Devices updated, with their changes.
    pub updated: Vec<Updated>,
    /// Devices retired.
    pub retired: Vec<String>,
    /// Rows that matched a device and changed nothing.
    pub unchanged: usize,
    /// Rows left alone, with the reason.
    pub skipped: Vec<Skipped>,
}

impl SyncReport {
    /// Number of device changes (added + updated + retired).
    #[must_use]
    pub fn changes(&self) -> usize {
        self.added.len() + self.updated.len() + self.retired.len()
    }
}

/// A refused sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The rows are invalid.
    #[error(transparent)]
    Invalid(#[from] RowError),
    /// The safety valve tripped.
    #[error(
        "refusing to retire {retire} of {owned} inventory devices (more than {limit}); check the source, or force the sync"
    )]
    TooManyRetirements {
        /// Devices that would be retired.
        retire: usize,
        /// Non-retired devices the inventory owns.
        owned: usize,
        /// A tenth of `owned`, at least 5.
        limit: usize,
    },
    #[error(transparent)]
    // The variant's name and the wrapped error say it all.
    #[allow(missing_docs)]
    Store(#[from] StoreError),
}

/// What the sync will do, computed from the current devices without writing.
fn plan(devices: &[Device], rows: &[CheckedRow], server: &str) -> (SyncReport, Vec<usize>) {
    let by_name: BTreeMap<&str, &Device> = devices.iter().map(|d| (d.name.as_str(), d)).collect();
    let mut report = SyncReport::default();
    let mut adopt = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let Some(d) = by_name.get(row.name.as_str()) else {
            report.added.push(row.name.to_string());
            continue;
        };
        if d.server != server {
            report.skipped.push(Skipped {
                name: d.name.to_string(),
                reason: format!("owned by controller {}", d.server),
            });
            continue;
        }
        if d.origin == "config" {
            report.skipped.push(Skipped {
                name: d.name.to_string(),
                reason: "defined in the configuration file".into(),
            });
            continue;
        }
        let mut changes = diff(d, &row.fields);
        if d.origin != ORIGIN {
            changes.push(format!("origin: {} -> {ORIGIN}", d.origin));
            adopt.push(i);
        }
        if changes.is_empty() {
            report.unchanged += 1;
        } else {
            report.updated.push(Updated {
                name: d.name.to_string(),
                changes,
            });
        }
    }
    let listed: BTreeSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    report.retired = devices
        .iter()
        .filter(|d| {
            d.origin == ORIGIN
                && !d.retired
                && d.server == server
                && !listed.contains(d.name.as_str())
        })
        .map(|d| d.name.to_string())
        .collect();
    (report, adopt)
}

/// The changes [`upsert_device`] would make (same rules: `None` leaves a field alone).
fn diff(d: &Device, f: &DeviceFields) -> Vec<String> {
    let mut out = Vec::new();
    let (facts, w, unparsed) = (&d.facts, &d.wiring, &d.wiring.unparsed);
    let o = &mut out;
    changed(
        o,
        "hardware_type",
        facts.hardware_type.as_ref(),
        None,
        f.hardware_type.as_ref(),
    );
    changed(
        o,
        "processor",
        facts.processor.as_ref(),
        None,
        f.processor.as_ref(),
    );
    changed(o, "pool", facts.pool.as_ref(), None, f.pool.as_ref());
    changed(
        o,
        "os_version",
        facts.os_version.as_ref(),
        None,
        f.os_version.as_ref(),
    );
    changed(
        o,
        "environment",
        facts.environment.as_ref(),
        None,
        f.environment.as_ref(),
    );
    changed(
        o,
        "relay",
        w.relay.as_ref(),
        unparsed.relay.as_deref(),
        f.relay.as_ref(),
    );
    changed(
        o,
        "sut",
        w.sut_addr.as_ref(),
        unparsed.sut_addr.as_deref(),
        f.sut.as_ref(),
    );
    changed(
        o,
        "fastboot_serial",
        w.fastboot_serial.as_ref(),
        None,
        f.fastboot_serial.as_ref(),
    );
    changed(
        o,
        "adb_serial",
        w.adb_serial.as_ref(),
        None,
        f.adb_serial.as_ref(),
    );
    changed(
        o,
        "comments",
        d.comments.as_ref(),
        None,
        f.comments.as_ref(),
    );
    if d.retired {
        out.push("retired: true -> false".to_owned());
    }
    out
}

/// Note `label: old -> new` when `want` is given and differs from what the device has (its
/// value, or stored text that did not parse, which any given value replaces).
fn changed<T: PartialEq + std::fmt::Display>(
    out: &mut Vec<String>,
    label: &str,
    have: Option<&T>,
    unparsed: Option<&str>,
    want: Option<&T>,
) {
    let Some(want) = want else { return };
    if have == Some(want) && unparsed.is_none() {
        return;
    }
    let old = match (have, unparsed) {
        (Some(v), _) => v.to_string(),
        (None, Some(text)) => text.to_owned(),
        (None, None) => "(none)".to_owned(),
    };
    out.push(format!("{label}: {old} -> {want}"));
}

/// Sync the store's devices with `rows` in one transaction (or, with `dry_run`, compute the
/// same report without writing). `actor` goes in the log.
///
/// # Errors
/// [`SyncError`]; nothing is written on any error.
pub async fn sync(
    store: &Store,
    server: &str,
    rows: Vec<InventoryRow>,
    dry_run: bool,
    force: bool,
    actor: Option<String>,
) -> Result<SyncReport, SyncError> {
    let rows = validate(&rows)?;
    let server = server.to_owned();
    store
        .write(move |tx, now| {
            let devices = inv::devices_in_tx(tx)?;
            let (mut report, adopt) = plan(&devices, &rows, &server);
            report.dry_run = dry_run;
            let owned = devices
                .iter()
                .filter(|d| d.origin == ORIGIN && !d.retired && d.server == server)
                .count();
            let limit = (owned / 10).max(5);
            if report.retired.len() > limit && !force {
                return Ok(Err(SyncError::TooManyRetirements {
                    retire: report.retired.len(),
                    owned,
                    limit,
                }));
            }
            if dry_run || report.changes() == 0 {
                return Ok(Ok(report));
            }
            write(tx, now, &server, &rows, &adopt, &report, actor.as_deref())?;
            Ok(Ok(report))
        })
        .await?
}

fn write(
    tx: &Tx<'_>,
    now: Millis,
    server: &str,
    rows: &[CheckedRow],
    adopt: &[usize],
    report: &SyncReport,
    actor: Option<&str>,
) -> Result<(), StoreError> {
    let touched: BTreeSet<&str> = report
        .added
        .iter()
        .chain(report.updated.iter().map(|u| &u.name))
        .map(String::as_str)
        .collect();
    for row in rows.iter().filter(|r| touched.contains(r.name.as_str())) {
        upsert_device(tx, now, server, &row.name, &row.fields, ORIGIN, actor)?;
    }
    for &i in adopt {
        let name = &rows[i].name;
        let found = inv::device_in_tx(tx, name)?;
        if let Some(mut d) = found {
            let old = std::mem::replace(&mut d.origin, ORIGIN.to_owned());
            d.updated = now;
            inv::put_device(tx, &d)?;
            append(
                tx,
                now,
                NewLog::new(
                    device_subject(name),
                    "inventory",
                    format!("adopted by the inventory sync (origin {old} -> {ORIGIN})"),
                )
                .by(actor.map(str::to_owned)),
            )?;
        }
    }
    for name in &report.retired {
        retire_device(tx, now, name, "no longer in the inventory source", actor)?;
    }
    append(
        tx,
        now,
        NewLog::new(
            "inventory".to_owned(),
            "inventory",
            format!(
                "inventory sync: {} added, {} updated, {} retired, {} unchanged, {} skipped",
                report.added.len(),
                report.updated.len(),
                report.retired.len(),
                report.unchanged,
                report.skipped.len()
            ),
        )
        .by(actor.map(str::to_owned)),
    )?;
    Ok(())
}

/// Read a source: a local file, or a plain `http://` URL (GET, 30 s, size-capped).
///
/// # Errors
/// A message saying what failed.
pub async fn load_source(source: &str) -> Result<Vec<u8>, String> {
    if source.starts_with("https://") {
        return Err("https:// inventory sources are not supported; use http:// or a file".into());
    }
    if source.starts_with("http://") {
        return tokio::time::timeout(Duration::from_secs(30), fetch(source))
            .await
            .map_err(|_| format!("fetching {source} took longer than 30 s"))?;
    }
    let meta = tokio::fs::metadata(source)
        .await
        .map_err(|e| format!("cannot read {source}: {e}"))?;
    if meta.len() > MAX_SOURCE_BYTES as u64 {
        return Err(format!("{source} is larger than {MAX_SOURCE_BYTES} bytes"));
    }
    tokio::fs::read(source)
        .await
        .map_err(|e| format!("cannot read {source}: {e}"))
}

async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let resp = client
        .get(uri)
        .await
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("fetching {url}: HTTP {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_SOURCE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading {url}: {e}"))?;
    Ok(body.to_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_agree() {
        let csv = "# lab inventory\nname,relay,sut,comments\npanda-1,relay-1:bank1:relay1,10.0.0.1:20701,\"a, \"\"quoted\"\" note\"\n\npanda-2,,,\n";
        let json = r#"{"devices": [
            {"name": "panda-1", "relay": "relay-1:bank1:relay1", "sut": "10.0.0.1:20701", "comments": "a, \"quoted\" note"},
            {"name": "panda-2"}]}"#;
        let a = parse_source(csv.as_bytes()).expect("csv");
        let b = parse_source(json.as_bytes()).expect("json");
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        assert!(validate(&a).is_ok());
    }

    #[test]
    fn bad_sources() {
        assert!(
            parse_source(b"name,colour\na,red\n")
                .expect_err("column")
                .contains("colour")
        );
        assert!(
            parse_source(b"name,pool\na\n")
                .expect_err("short")
                .contains("line 2")
        );
        assert!(parse_source(b"name\n\"a\n").is_err());
        assert!(parse_source(br#"{"devices":[{"name":"a","x":1}]}"#).is_err());
        let dup = parse_source(b"name\na\na\n").expect("parses");
        let e = validate(&dup).expect_err("dup");
        assert_eq!(e, RowError::Duplicate { name: "a".into() });
        assert_eq!(e.to_string(), "device a is listed twice");
        let bad = parse_source(b"name\n../x\n").expect("parses");
        assert!(validate(&bad).is_err());
    }

    proptest::proptest! {
        #[test]
        fn csv_never_panics(s in "\\PC{0,200}") {
            let _ = parse_source(s.as_bytes());
        }
    }
}
