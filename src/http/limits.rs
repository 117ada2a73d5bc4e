//! Fair connections: no client can take the whole server.
//!
//! Owns the connection accounting of the accept loop ([`super::serve`]) and the long-poll
//! accounting of the pipeline ([`super::dispatch`]). It does no I/O and knows no routes;
//! callers say who a client is ([`Client`]) and whether a call is privileged.
//!
//! The rules:
//! - `server.max_connections` is the hard cap on open connections. Of these,
//!   `server.reserved_connections` are a **reserve**: a connection accepted while the other
//!   slots are all taken lands there, and on it only *privileged* calls are served (a caller
//!   with a valid token, and `GET /api/health/`); anything else gets 503 with `Retry-After`
//!   and the connection is closed, so a crowd of anonymous clients cannot keep an admin or
//!   the monitoring out.
//! - A peer address holding more than `server.max_connections_per_client` connections gets
//!   the same treatment on the extra ones, answered 429 (IPv6 peers count per /64, as one
//!   host can hold a whole /64).
//! - A client (its token when it sent one, else its address) may hold at most
//!   `server.max_long_polls_per_client` long polls at once (429 past it), and all long polls
//!   together at most half of the unreserved slots (503 past it), so waiting clients always
//!   leave room for short calls.
//! - Connections on probation (reserve or over quota) get a short header deadline
//!   ([`PROBATION_HEADER_TIMEOUT`]), so silent ones do not sit on the reserve.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a refused client is told to wait before it tries again (`Retry-After`, seconds).
pub const RETRY_AFTER_SECS: u64 = 5;

/// Header deadline of connections on probation (reserve or over their client's quota): they
/// may only make privileged calls, which send their head at once.
pub const PROBATION_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// The limits, from `[server]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// Most open connections, reserve included.
    pub max_connections: usize,
    /// Slots kept for privileged calls (`< max_connections`).
    pub reserved_connections: usize,
    /// Most connections one peer address holds outside probation.
    pub max_connections_per_client: usize,
    /// Most long polls one client holds at once.
    pub max_long_polls_per_client: usize,
}

impl LimitSettings {
    /// Slots anyone may use.
    #[must_use]
    pub fn general(&self) -> usize {
        self.max_connections
            .saturating_sub(self.reserved_connections)
            .max(1)
    }

    /// Most long polls of all clients together: half the unreserved slots.
    #[must_use]
    pub fn long_polls(&self) -> usize {
        (self.general() / 2).max(1)
    }
}

/// How a connection was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// An unreserved slot, within its address's quota: every call is served.
    General,
    /// Its address already holds its quota of connections: only privileged calls (429).
    OverClientQuota,
    /// The unreserved slots were all taken: only privileged calls (503).
    Reserve,
}

/// Who a client is, for the per-client caps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// A caller that presented a valid token: its name (however many addresses it uses).
    Token(String),
    /// Anyone else: its address (IPv6 by /64).
    Addr(IpAddr),
}

impl Client {
    /// The client key of a peer address: IPv4 (also when mapped into IPv6) as it is, IPv6 by
    /// its /64 prefix.
    #[must_use]
    pub fn addr(ip: IpAddr) -> Client {
        Client::Addr(match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
            v4 => v4,
        })
    }
}

/// Why a call was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The client is over one of its own caps: 429.
    Client(String),
    /// The server has no room for this kind of call now: 503.
    Busy(String),
}

/// Counts per key; an entry disappears when its count drops to zero.
#[derive(Debug)]
struct Counts<K>(Mutex<HashMap<K, usize>>);

impl<K: Eq + Hash + Clone> Counts<K> {
    fn new() -> Self {
        Counts(Mutex::new(HashMap::new()))
    }

    /// Add one for `key` if it holds fewer than `cap`; the count before.
    fn try_add(&self, key: &K, cap: usize) -> Result<usize, usize> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= cap {
            return Err(*n);
        }
        *n += 1;
        Ok(*n - 1)
    }

    fn remove(&self, key: &K) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(key);
            }
        }
    }

    fn get(&self, key: &K) -> usize {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(key).copied().unwrap_or(0)
    }
}

/// The server's connection and long-poll accounting. One per service, shared by `Arc`.
#[derive(Debug)]
pub struct Limits {
    settings: LimitSettings,
    /// Every open connection holds one (`max_connections`); the accept loop waits for one
    /// before it accepts, so past the cap clients wait in the kernel's backlog.
    total: Arc<Semaphore>,
    /// Connections outside the reserve hold one of these too.
    general: Arc<Semaphore>,
    /// Long polls of all clients together.
    long_polls: Arc<Semaphore>,
    /// Connections per peer address outside probation.
    per_addr: Counts<Client>,
    /// Long polls per client.
    per_client_polls: Counts<Client>,
}

impl Limits {
    /// Accounting for `settings`.
    #[must_use]
    pub fn new(settings: LimitSettings) -> Arc<Limits> {
        Arc::new(Limits {
            settings,
            total: Arc::new(Semaphore::new(settings.max_connections.max(1))),
            general: Arc::new(Semaphore::new(settings.general())),
            long_polls: Arc::new(Semaphore::new(settings.long_polls())),
            per_addr: Counts::new(),
            per_client_polls: Counts::new(),
        })
    }

    /// The settings in force.
    #[must_use]
    pub fn settings(&self) -> LimitSettings {
        self.settings
    }

    /// Wait for a free connection slot (the accept loop calls this before `accept`).
    ///
    /// # Errors
    /// Never in practice: the semaphore is never closed.
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, tokio::sync::AcquireError> {
        Arc::clone(&self.total).acquire_owned().await
    }

    /// Admit a connection from `peer` holding the slot `total`: an unreserved slot within its
    /// address's quota, else probation.
    #[must_use]
    pub fn admit(self: &Arc<Self>, peer: SocketAddr, total: OwnedSemaphorePermit) -> Connection {
        let client = Client::addr(peer.ip());
        let within_quota = self
            .per_addr
            .try_add(&client, self.settings.max_connections_per_client)
            .is_ok();
        let general = if within_quota {
            Arc::clone(&self.general).try_acquire_owned().ok()
        } else {
            None
        };
        let admission = match (&general, within_quota) {
            (Some(_), _) => Admission::General,
            (None, false) => Admission::OverClientQuota,
            (None, true) => Admission::Reserve,
        };
        if within_quota && general.is_none() {
            // A reserve connection does not count against its address's quota.
            self.per_addr.remove(&client);
        }
        Connection {
            peer,
            admission,
            counted: (admission == Admission::General).then(|| AddrGuard {
                limits: Arc::clone(self),
                client,
            }),
            _general: general,
            _total: total,
        }
    }

    /// Let a long poll of `client` in, or say why not. The guard ends it.
    ///
    /// # Errors
    /// [`Refusal::Client`] past the client's cap, [`Refusal::Busy`] past the total.
    pub fn long_poll(self: &Arc<Self>, client: Client) -> Result<LongPoll, Refusal> {
        let cap = self.settings.max_long_polls_per_client;
        if self.per_client_polls.try_add(&client, cap).is_err() {
            let who = match &client {
                Client::Token(t) => format!("token {t}"),
                Client::Addr(a) => format!("address {a}"),
            };
            return Err(Refusal::Client(format!(
                "{who} already holds {cap} long polls (server.max_long_polls_per_client); wait for one to end"
            )));
        }
        let Ok(permit) = Arc::clone(&self.long_polls).try_acquire_owned() else {
            self.per_client_polls.remove(&client);
            return Err(Refusal::Busy(format!(
                "the server already holds {} long polls; try again later or poll without wait",
                self.settings.long_polls()
            )));
        };
        Ok(LongPoll {
            limits: Arc::clone(self),
            client,
            _permit: permit,
        })
    }

    /// Unreserved connection slots free now (tests).
    #[must_use]
    pub fn general_free(&self) -> usize {
        self.general.available_permits()
    }

    /// Long polls of all clients open now (tests).
    #[must_use]
    pub fn long_polls_open(&self) -> usize {
        self.settings
            .long_polls()
            .saturating_sub(self.long_polls.available_permits())
    }

    /// Long polls `client` holds now (tests).
    #[must_use]
    pub fn long_polls_of(&self, client: &Client) -> usize {
        self.per_client_polls.get(client)
    }

    /// Connections from `client`'s address counted against its quota now.
    #[must_use]
    pub fn connections_of(&self, client: &Client) -> usize {
        self.per_addr.get(client)
    }
}

/// Gives back an address's connection count.
#[derive(Debug)]
struct AddrGuard {
    limits: Arc<Limits>,
    client: Client,
}

impl Drop for AddrGuard {
    fn drop(&mut self) {
        self.limits.per_addr.remove(&self.client);
    }
}

/// One accepted connection: who, how it was admitted, and the slots it holds until dropped.
#[derive(Debug)]
pub struct Connection {
    /// The peer's address.
    pub peer: SocketAddr,
    /// How it was admitted (which calls it may make).
    pub admission: Admission,
    counted: Option<AddrGuard>,
    _general: Option<OwnedSemaphorePermit>,
    _total: OwnedSemaphorePermit,
}

impl Connection {
    /// May this connection make a call? Privileged calls always may; others only on a general
    /// slot.
    ///
    /// # Errors
    /// Why not.
    pub fn allows(&self, privileged: bool) -> Result<(), Refusal> {
        match self.admission {
            _ if privileged => Ok(()),
            Admission::General => Ok(()),
            Admission::OverClientQuota => Err(Refusal::Client(format!(
                "{} already holds its quota of connections (server.max_connections_per_client); only health checks and calls with a token are served on more",
                self.peer.ip()
            ))),
            Admission::Reserve => Err(Refusal::Busy(
                "every connection slot is taken; only health checks and calls with a token are served now".into(),
            )),
        }
    }

    /// Whether the connection counts against its address's quota (tests).
    #[must_use]
    pub fn counted(&self) -> bool {
        self.counted.is_some()
    }
}

/// A long poll in progress; dropping it frees its place.
#[derive(Debug)]
pub struct LongPoll {
    limits: Arc<Limits>,
    client: Client,
    _permit: OwnedSemaphorePermit,
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        self.limits.per_client_polls.remove(&self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, reserved: usize, per_client: usize, polls: usize) -> Arc<Limits> {
        Limits::new(LimitSettings {
            max_connections: max,
            reserved_connections: reserved,
            max_connections_per_client: per_client,
            max_long_polls_per_client: polls,
        })
    }

    fn peer(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 40000))
    }

    #[tokio::test]
    async fn quota_then_reserve() {
        let l = limits(6, 2, 2, 1);
        let mut held = Vec::new();
        for _ in 0..2 {
            let slot = l.slot().await.expect("slot");
            held.push(l.admit(peer(1), slot));
        }
        assert!(held.iter().all(|c| c.admission == Admission::General));
        let slot = l.slot().await.expect("slot");
        let over = l.admit(peer(1), slot);
        assert_eq!(over.admission, Admission::OverClientQuota);
        assert!(matches!(over.allows(false), Err(Refusal::Client(_))));
        assert!(over.allows(true).is_ok());
        assert_eq!(l.connections_of(&Client::addr(peer(1).ip())), 2);
        for last in [2, 3] {
            let slot = l.slot().await.expect("slot");
            held.push(l.admit(peer(last), slot));
        }
        // Four general slots are taken; the fifth connection lands in the reserve.
        let slot = l.slot().await.expect("slot");
        let reserve = l.admit(peer(4), slot);
        assert_eq!(reserve.admission, Admission::Reserve);
        assert!(matches!(reserve.allows(false), Err(Refusal::Busy(_))));
        assert!(reserve.allows(true).is_ok());
        assert_eq!(l.connections_of(&Client::addr(peer(4).ip())), 0);
        // A freed general slot is used again, and the address's count follows.
        drop(held.remove(0));
        assert_eq!(l.connections_of(&Client::addr(peer(1).ip())), 1);
        drop(over);
        let slot = l.slot().await.expect("slot");
        assert_eq!(l.admit(peer(5), slot).admission, Admission::General);
    }

    #[test]
    fn long_polls_per_client_and_in_total() {
        let l = limits(10, 2, 10, 2);
        assert_eq!(l.settings().long_polls(), 4);
        let a = Client::addr(peer(1).ip());
        let p1 = l.long_poll(a.clone()).expect("first");
        let _p2 = l.long_poll(a.clone()).expect("second");
        assert!(matches!(l.long_poll(a.clone()), Err(Refusal::Client(_))));
        drop(p1);
        let _p3 = l.long_poll(a.clone()).expect("a place freed");
        let _t = l.long_poll(Client::Token("ci".into())).expect("token");
        let _b = l
            .long_poll(Client::addr(peer(2).ip()))
            .expect("another address");
        assert!(matches!(
            l.long_poll(Client::addr(peer(3).ip())),
            Err(Refusal::Busy(_))
        ));
        // The refused one left no count behind.
        assert_eq!(l.long_polls_of(&Client::addr(peer(3).ip())), 0);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2::5".parse().expect("v6");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("v6");
        let c: IpAddr = "2001:db8:1:3::5".parse().expect("v6");
        assert_eq!(Client::addr(a), Client::addr(b));
        assert_ne!(Client::addr(a), Client::addr(c));
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().expect("mapped");
        assert_eq!(
            Client::addr(mapped),
            Client::Addr("10.0.0.5".parse().expect("v4"))
        );
    }
}
