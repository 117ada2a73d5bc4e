//! Requests: the versioned record, conversions to the pool's [`RequestSnapshot`], and the
//! indexes that keep the request driver's scans small (open requests, and deadlines).

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::codec::Record;
use super::tables::{OPEN_REQUESTS, REQUESTS};
use super::{Encoded, StoreError, Tx, decode, encode};
use crate::domain::clock::Millis;
use crate::domain::request::{Assignment, DeviceChoice, RequestSnapshot, RequestSpec};
use crate::domain::request_state::{Counters, RequestState};

/// Request table value.
// Records live only between decode and conversion; their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RequestRecord {
    /// Layout 1.
    V1(RequestV1),
}

impl Record for RequestRecord {
    const TYPE_NAME: &'static str = "mozpool.RequestRecord";
}

/// Request layout 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct RequestV1 {
    pub server: String,
    pub owner_token: Option<String>,
    pub requested_device: String,
    pub assignee: String,
    pub image: String,
    pub can_reuse: bool,
    pub boot_config_keys: Vec<String>,
    pub boot_config: Vec<(String, String)>,
    pub environment: Option<String>,
    pub hardware_type: Option<String>,
    pub processor: Option<String>,
    pub pool: Option<String>,
    pub os_version: Option<String>,
    pub priority: i32,
    pub wait: Option<u64>,
    pub created: u64,
    pub state: String,
    pub generation: u64,
    pub timeout: Option<u64>,
    /// finding_device, contacting_lifeguard, pending, bad_images.
    pub counters: (u32, u32, u32, u32),
    pub assigned: Option<(String, bool)>,
    pub expires: u64,
    /// Why the last search found nothing (shown in the status while queued).
    pub explanation: Option<String>,
}

/// A stored request: the pool's snapshot plus what only the service needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    /// The request machine's state.
    pub snap: RequestSnapshot,
    /// Controller that owns it.
    pub server: String,
    /// Token name that created it (only it, or an admin, may renew or return it).
    pub owner_token: Option<String>,
    /// The last search's explanation, if it found nothing.
    pub explanation: Option<String>,
}

fn corrupt(id: u64, what: &str) -> StoreError {
    StoreError::BadRecord {
        table: "requests",
        key: id.to_string(),
        message: what.to_owned(),
    }
}

fn name<T: std::str::FromStr>(id: u64, s: &str) -> Result<T, StoreError> {
    s.parse()
        .map_err(|_| corrupt(id, &format!("invalid name {s:?}")))
}

fn opt<T: std::str::FromStr>(id: u64, s: Option<String>) -> Result<Option<T>, StoreError> {
    s.map(|s| name(id, &s)).transpose()
}

fn to_stored(id: u64, r: RequestRecord) -> Result<StoredRequest, StoreError> {
    let RequestRecord::V1(v) = r;
    let spec = RequestSpec {
        requested_device: DeviceChoice::parse(&v.requested_device)
            .map_err(|_| corrupt(id, "bad requested device"))?,
        assignee: v.assignee,
        image: name(id, &v.image)?,
        can_reuse: v.can_reuse,
        boot_config_keys: v.boot_config_keys,
        boot_config: v.boot_config.into_iter().collect(),
        environment: opt(id, v.environment)?,
        hardware_type: opt(id, v.hardware_type)?,
        processor: v.processor,
        pool: v.pool,
        os_version: v.os_version,
        priority: v.priority,
        wait: v.wait,
        created: Millis(v.created),
        // The rack of a named device is a cluster-mode choice; this store is one rack's.
        controller: None,
    };
    let (a, b, c, d) = v.counters;
    let assigned = match v.assigned {
        Some((device, needs_image)) => Some(Assignment {
            device: name(id, &device)?,
            needs_image,
        }),
        None => None,
    };
    Ok(StoredRequest {
        snap: RequestSnapshot {
            id,
            spec,
            state: RequestState::from_stored(&v.state),
            generation: v.generation,
            timeout: v.timeout.map(Millis),
            counters: Counters {
                finding_device: a,
                contacting_lifeguard: b,
                pending: c,
                bad_images: d,
            },
            assigned,
            expires: Millis(v.expires),
        },
        server: v.server,
        owner_token: v.owner_token,
        explanation: v.explanation,
    })
}

fn to_record(r: &StoredRequest) -> RequestRecord {
    let s = &r.snap;
    let c = s.counters;
    RequestRecord::V1(RequestV1 {
        server: r.server.clone(),
        owner_token: r.owner_token.clone(),
        requested_device: s.spec.requested_device.to_string(),
        assignee: s.spec.assignee.clone(),
        image: s.spec.image.to_string(),
        can_reuse: s.spec.can_reuse,
        boot_config_keys: s.spec.boot_config_keys.clone(),
        boot_config: s
            .spec
            .boot_config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        environment: s.spec.environment.as_ref().map(ToString::to_string),
        hardware_type: s.spec.hardware_type.as_ref().map(ToString::to_string),
        processor: s.spec.processor.clone(),
        pool: s.spec.pool.clone(),
        os_version: s.spec.os_version.clone(),
        priority: s.spec.priority,
        wait: s.spec.wait,
        created: s.spec.created.0,
        state: s.state.to_string(),
        generation: s.generation,
        timeout: s.timeout.map(|m| m.0),
        counters: (
            c.finding_device,
            c.contacting_lifeguard,
            c.pending,
            c.bad_images,
        ),
        assigned: s
            .assigned
            .as_ref()
            .map(|a| (a.device.to_string(), a.needs_image)),
        expires: s.expires.0,
        explanation: r.explanation.clone(),
    })
}

/// One request by id.
///
/// # Errors
/// Storage failure or a corrupt record.
pub fn get(
    table: &impl ReadableTable<u64, Encoded<RequestRecord>>,
    id: u64,
) -> Result<Option<StoredRequest>, StoreError> {
    match table.get(id)? {
        None => Ok(None),
        Some(g) => Ok(Some(to_stored(id, decode("requests", id, &g.value())?)?)),
    }
}

/// [`get`] inside a write transaction.
///
/// # Errors
/// Storage failure or a corrupt record.
pub fn get_in_tx(tx: &Tx<'_>, id: u64) -> Result<Option<StoredRequest>, StoreError> {
    get(&*tx.requests()?, id)
}

/// Every request, oldest first; `open_only` reads just the open ones through their index.
///
/// # Errors
/// Storage failure or a corrupt record.
pub(super) fn list(
    tx: &redb::ReadTransaction,
    open_only: bool,
) -> Result<Vec<StoredRequest>, StoreError> {
    let requests = tx.open_table(REQUESTS)?;
    let mut out = Vec::new();
    if open_only {
        for item in tx.open_table(OPEN_REQUESTS)?.iter()? {
            let id = item?.0.value();
            if let Some(r) = get(&requests, id)? {
                out.push(r);
            }
        }
    } else {
        for item in requests.iter()? {
            let (k, v) = item?;
            let id = k.value();
            out.push(to_stored(id, decode("requests", id, &v.value())?)?);
        }
    }
    Ok(out)
}

/// Open requests (not closed or failed), inside a write transaction.
///
/// # Errors
/// Storage failure or a corrupt record.
pub fn open_in_tx(tx: &Tx<'_>) -> Result<Vec<StoredRequest>, StoreError> {
    by_index(&*tx.requests()?, &*tx.open_requests()?)
}

/// Requests waiting for a device, oldest first, inside a write transaction.
///
/// # Errors
/// Storage failure or a corrupt record.
pub fn waiting_in_tx(tx: &Tx<'_>) -> Result<Vec<StoredRequest>, StoreError> {
    by_index(&*tx.requests()?, &*tx.waiting_requests()?)
}

fn by_index(
    requests: &impl ReadableTable<u64, Encoded<RequestRecord>>,
    index: &impl ReadableTable<u64, ()>,
) -> Result<Vec<StoredRequest>, StoreError> {
    let mut out = Vec::new();
    for item in index.iter()? {
        let id = item?.0.value();
        if let Some(r) = get(requests, id)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// Rebuild `WAITING_REQUESTS` from the open requests (schema upgrade). A record that does
/// not decode is left out with a warning (reading it elsewhere reports it).
///
/// # Errors
/// Storage failure.
pub fn rebuild_waiting_index(tx: &Tx<'_>) -> Result<(), StoreError> {
    let requests = tx.requests()?;
    let open = tx.open_requests()?;
    let mut idx = tx.waiting_requests()?;
    idx.retain(|_, ()| false)?;
    for item in open.iter()? {
        let id = item?.0.value();
        match get(&*requests, id) {
            Ok(Some(r)) if r.snap.state.is_waiting() => {
                idx.insert(id, ())?;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(request = id, error = %e, "request left out of the waiting index")
            }
        }
    }
    Ok(())
}

/// When the driver must next look at a request: its state timeout, or its expiry plus
/// `grace`, whichever is first. `None` for terminal requests.
#[must_use]
pub fn due_at(r: &RequestSnapshot, grace: std::time::Duration) -> Option<Millis> {
    if r.state.is_terminal() {
        return None;
    }
    let expiry = r.expires.plus(grace);
    Some(r.timeout.map_or(expiry, |t| t.min(expiry)))
}

/// Insert or replace a request, keeping the open, waiting and deadline indexes in step.
///
/// # Errors
/// Storage failure or a corrupt previous record.
pub fn put(tx: &Tx<'_>, r: &StoredRequest, grace: std::time::Duration) -> Result<(), StoreError> {
    let old = get_in_tx(tx, r.snap.id)?.map(|o| IndexKeys::of(&o.snap, grace));
    replace(tx, old, r, grace)
}

/// Where a stored request sits in the indexes [`put`] keeps in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexKeys {
    due: Option<Millis>,
    open: bool,
    waiting: bool,
}

impl IndexKeys {
    /// The index keys of `r` as stored.
    #[must_use]
    pub fn of(r: &RequestSnapshot, grace: std::time::Duration) -> IndexKeys {
        IndexKeys {
            due: due_at(r, grace),
            open: !r.state.is_terminal(),
            waiting: r.state.is_waiting(),
        }
    }
}

/// [`put`] for a caller that read the stored request in this transaction and kept its
/// [`IndexKeys`] (or knows the request is new: `None`), so it is not decoded again and only
/// the index rows that change are written.
///
/// # Errors
/// Storage failure.
pub fn replace(
    tx: &Tx<'_>,
    old: Option<IndexKeys>,
    r: &StoredRequest,
    grace: std::time::Duration,
) -> Result<(), StoreError> {
    let id = r.snap.id;
    let new = IndexKeys::of(&r.snap, grace);
    let old_due = old.and_then(|o| o.due);
    if old_due != new.due {
        let mut idx = tx.request_deadlines()?;
        if let Some(o) = old_due {
            idx.remove((o.0, id))?;
        }
        if let Some(n) = new.due {
            idx.insert((n.0, id), ())?;
        }
    }
    if old.map(|o| o.open) != Some(new.open) {
        let mut open = tx.open_requests()?;
        if new.open {
            open.insert(id, ())?;
        } else {
            open.remove(id)?;
        }
    }
    if old.map(|o| o.waiting) != Some(new.waiting) {
        let mut waiting = tx.waiting_requests()?;
        if new.waiting {
            waiting.insert(id, ())?;
        } else {
            waiting.remove(id)?;
        }
    }
    tx.mark_changed();
    tx.requests()?.insert(id, encode(&to_record(r))?)?;
    Ok(())
}

/// Requests due at or before `now`, earliest first, at most `limit`.
///
/// # Errors
/// Storage failure.
pub fn due(
    idx: &impl ReadableTable<(u64, u64), ()>,
    now: Millis,
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for item in idx.range((0, 0)..=(now.0, u64::MAX))? {
        out.push(item?.0.value().1);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// The earliest pending request deadline.
///
/// # Errors
/// Storage failure.
pub fn next_due(idx: &impl ReadableTable<(u64, u64), ()>) -> Result<Option<Millis>, StoreError> {
    Ok(idx.first()?.map(|(k, _)| Millis(k.value().0)))
}
