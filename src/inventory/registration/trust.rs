//! Who may register, and how fast: the `[registration]` settings and the [`Gate`] that the
//! TCP listener and the HTTP form share.
//!
//! - **Networks.** Only peers inside an allowed CIDR are served; the rest are closed at once.
//! - **Fair share.** One peer holds at most `per_peer_connections` connections (waiting or
//!   served), so one host cannot take the listener's slots.
//! - **New devices** from registrations are limited to `new_devices_per_minute` (a burst of
//!   as many), so a flood of made-up names cannot fill the inventory.
//! - **Refusals** are counted ([`RegistrationMetrics`], on `/metrics`) and logged at most
//!   `refusals_logged_per_minute`; the next record logged says how many were only counted.
//!
//! Time comes from the callers (`now` of the store write or the clock), so the buckets are
//! tested without sleeping. Nothing here touches the store.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::domain::clock::Millis;

/// An IP network (`10.0.0.0/8`, `fe80::/10`; a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    /// The network address (host bits cleared).
    addr: IpAddr,
    /// Prefix length in bits.
    prefix: u8,
}

impl Cidr {
    /// Loopback, IPv4 and IPv6: what the simulated rack allows.
    #[must_use]
    pub fn loopback() -> [Cidr; 2] {
        [
            Cidr {
                addr: IpAddr::from([127, 0, 0, 0]),
                prefix: 8,
            },
            Cidr {
                addr: IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                prefix: 128,
            },
        ]
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(u32::from(ip)), 32, self.prefix)
                    == mask(u128::from(u32::from(net)), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), 128, self.prefix) == mask(u128::from(net), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `bits`-wide number.
fn mask(v: u128, bits: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let shift = u32::from(bits.saturating_sub(prefix));
    (v >> shift) << shift
}

/// Why a network was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a network: expected ADDRESS/PREFIX (10.0.0.0/8) or an address")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
            None => width,
        };
        if prefix > width {
            return Err(bad());
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::from(std::net::Ipv4Addr::from(
                u32::try_from(mask(u128::from(u32::from(a)), 32, prefix)).map_err(|_| bad())?,
            )),
            IpAddr::V6(a) => {
                IpAddr::from(std::net::Ipv6Addr::from(mask(u128::from(a), 128, prefix)))
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;
    fn try_from(s: String) -> Result<Cidr, CidrError> {
        s.parse()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `[registration]`: who may register and how fast (`docs/registration.md`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Networks the TCP listener serves (CIDRs). Empty: the listener cannot start, except
    /// on the simulated rack, which allows loopback.
    pub allow: Vec<Cidr>,
    /// Most connections one peer may hold at once (waiting or being served); more are
    /// closed at once and counted.
    pub per_peer_connections: usize,
    /// How long a client has to send its whole message, in ms (agents send it right after
    /// connecting). The connection's overall deadline is `server.registration_timeout_secs`.
    pub read_timeout_ms: u64,
    /// Devices registrations may create per minute (also the burst).
    pub new_devices_per_minute: u32,
    /// Refused registrations written to the logs per minute; the rest are only counted.
    pub refusals_logged_per_minute: u32,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            allow: Vec::new(),
            per_peer_connections: 4,
            read_timeout_ms: 2000,
            new_devices_per_minute: 10,
            refusals_logged_per_minute: 10,
        }
    }
}

impl TrustConfig {
    /// The settings' problem, if any (the config check reports it with the section name).
    ///
    /// # Errors
    /// A message naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.per_peer_connections == 0 || self.read_timeout_ms == 0 {
            return Err(
                "registration.per_peer_connections and registration.read_timeout_ms must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }

    /// The allowed networks as one line for the start-up log.
    #[must_use]
    pub fn allowed(&self) -> String {
        let nets: Vec<String> = self.allow.iter().map(ToString::to_string).collect();
        nets.join(", ")
    }
}

/// A token bucket refilled continuously at `per_minute` tokens a minute, holding at most
/// `per_minute` (so a quiet minute allows a burst of that many).
#[derive(Debug)]
pub struct Bucket {
    /// Capacity and refill rate.
    per_minute: u32,
    /// Tokens left and when they were last counted.
    state: Mutex<(u32, Millis)>,
}

impl Bucket {
    /// A full bucket.
    #[must_use]
    pub fn new(per_minute: u32) -> Bucket {
        Bucket {
            per_minute,
            state: Mutex::new((per_minute, Millis(0))),
        }
    }

    /// Take one token at `now`, if there is one.
    pub fn take(&self, now: Millis) -> bool {
        if self.per_minute == 0 {
            return false;
        }
        let mut st = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let per_token = 60_000 / u64::from(self.per_minute);
        let per_token = per_token.max(1);
        let (tokens, since) = *st;
        let earned = now.0.saturating_sub(since.0) / per_token;
        let (tokens, since) = if tokens >= self.per_minute {
            (tokens, now)
        } else {
            let n = u32::try_from(earned).unwrap_or(u32::MAX);
            let tokens = tokens.saturating_add(n).min(self.per_minute);
            // Keep the fraction of a token already earned; a full bucket starts counting now.
            let since = if tokens >= self.per_minute {
                now
            } else {
                Millis(since.0 + earned * per_token)
            };
            (tokens, since)
        };
        if tokens == 0 {
            *st = (0, since);
            return false;
        }
        *st = (tokens - 1, since);
        true
    }
}

/// Why a registration (or a connection) was refused, as counted on `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The peer is outside the allowed networks.
    NotAllowed,
    /// The peer already holds its share of connections.
    PeerBusy,
    /// No complete message within the read deadline, or the read failed.
    Incomplete,
    /// The message did not parse.
    Malformed,
    /// The policy refused it (wrong address, not open to claims, retired, ...).
    Policy,
    /// An address change, held for a tech.
    Held,
    /// The new-device rate limit.
    RateLimited,
}

impl Refused {
    /// Every kind, in the order `/metrics` lists them.
    pub const ALL: [Refused; 7] = [
        Refused::NotAllowed,
        Refused::PeerBusy,
        Refused::Incomplete,
        Refused::Malformed,
        Refused::Policy,
        Refused::Held,
        Refused::RateLimited,
    ];

    /// The `reason` label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Refused::NotAllowed => "not_allowed",
            Refused::PeerBusy => "peer_busy",
            Refused::Incomplete => "incomplete",
            Refused::Malformed => "malformed",
            Refused::Policy => "policy",
            Refused::Held => "held",
            Refused::RateLimited => "rate_limited",
        }
    }
}

/// Registration counters, rendered by `/metrics`.
#[derive(Debug, Default)]
pub struct RegistrationMetrics {
    /// Registrations applied.
    pub accepted: AtomicU64,
    /// Refusals by [`Refused`] kind (index in [`Refused::ALL`]).
    refused: [AtomicU64; 7],
    /// Refusals counted but not written to the logs (over the log rate).
    pub unlogged: AtomicU64,
}

impl RegistrationMetrics {
    /// Count one refusal.
    pub fn refused(&self, kind: Refused) {
        if let Some(i) = Refused::ALL.iter().position(|k| *k == kind)
            && let Some(c) = self.refused.get(i)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals of `kind` so far.
    #[must_use]
    pub fn refused_count(&self, kind: Refused) -> u64 {
        Refused::ALL
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.refused.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The shared registration gate: settings, buckets, per-peer counts and counters. One per
/// service, behind an `Arc`.
#[derive(Debug)]
pub struct Gate {
    /// The `[registration]` settings.
    pub config: TrustConfig,
    /// New devices from registrations.
    new_devices: Bucket,
    /// Refusals written to the logs.
    refusal_log: Bucket,
    /// Refusals counted but not logged since the last one logged.
    unlogged_since: AtomicU64,
    /// Connections held per peer.
    peers: Mutex<HashMap<IpAddr, usize>>,
    /// Counters for `/metrics`.
    pub metrics: Arc<RegistrationMetrics>,
}

impl Gate {
    /// A gate with these settings, counting into `metrics`.
    #[must_use]
    pub fn new(config: TrustConfig, metrics: Arc<RegistrationMetrics>) -> Gate {
        Gate {
            new_devices: Bucket::new(config.new_devices_per_minute),
            refusal_log: Bucket::new(config.refusals_logged_per_minute),
            config,
            unlogged_since: AtomicU64::new(0),
            peers: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Whether `ip` is inside an allowed network.
    #[must_use]
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.config.allow.iter().any(|n| n.contains(ip))
    }

    /// A connection slot for `ip`, released when dropped; `None` when the peer already
    /// holds its share.
    #[must_use]
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let ip = ip.to_canonical();
        let mut peers = match self.peers.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        let held = peers.entry(ip).or_insert(0);
        if *held >= self.config.per_peer_connections {
            return None;
        }
        *held += 1;
        Some(PeerSlot {
            gate: Arc::clone(self),
            ip,
        })
    }

    /// Whether a registration may create a device now (takes a token).
    pub fn may_create(&self, now: Millis) -> bool {
        self.new_devices.take(now)
    }

    /// Count a refusal of `kind` and say whether to log it: `Some(n)` when it may be logged,
    /// `n` being how many refusals since the last logged one were only counted.
    pub fn refusal(&self, kind: Refused, now: Millis) -> Option<u64> {
        self.metrics.refused(kind);
        if self.refusal_log.take(now) {
            Some(self.unlogged_since.swap(0, Ordering::Relaxed))
        } else {
            self.unlogged_since.fetch_add(1, Ordering::Relaxed);
            self.metrics.unlogged.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// One connection held by a peer ([`Gate::enter`]).
#[derive(Debug)]
pub struct PeerSlot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = match self.gate.peers.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = peers.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// The note a logged refusal carries when earlier ones were only counted.
#[must_use]
pub fn unlogged_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} earlier refusals were counted but not logged)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_match() {
        let n: Cidr = "10.1.2.3/8".parse().expect("cidr");
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains("10.200.0.1".parse().expect("ip")));
        assert!(!n.contains("11.0.0.1".parse().expect("ip")));
        assert!(n.contains("::ffff:10.0.0.1".parse().expect("mapped")));
        let host: Cidr = "192.168.1.5".parse().expect("host");
        assert!(host.contains("192.168.1.5".parse().expect("ip")));
        assert!(!host.contains("192.168.1.6".parse().expect("ip")));
        let v6: Cidr = "fe80::/10".parse().expect("v6");
        assert!(v6.contains("fe80::1".parse().expect("ip")));
        assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
        let all: Cidr = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "x/8",
            "10.0.0.0/+8",
            "::/129",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let [v4, v6] = Cidr::loopback();
        assert!(
            v4.contains("127.0.0.9".parse().expect("ip"))
                && v6.contains("::1".parse().expect("ip"))
        );
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let b = Bucket::new(6); // one token every 10 s
        let t0 = Millis(1_000_000);
        for _ in 0..6 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        assert!(!b.take(Millis(t0.0 + 9_999)));
        assert!(b.take(Millis(t0.0 + 10_000)));
        assert!(!b.take(Millis(t0.0 + 10_001)));
        // A quiet hour refills it, but only to its size.
        let later = Millis(t0.0 + 3_600_000);
        for _ in 0..6 {
            assert!(b.take(later));
        }
        assert!(!b.take(later));
        assert!(!Bucket::new(0).take(later));
    }

    #[test]
    fn peers_get_their_share_and_refusals_are_logged_at_a_bounded_rate() {
        let gate = Arc::new(Gate::new(
            TrustConfig {
                allow: Cidr::loopback().to_vec(),
                per_peer_connections: 2,
                refusals_logged_per_minute: 2,
                ..TrustConfig::default()
            },
            Arc::default(),
        ));
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        assert!(gate.allows(a) && !gate.allows("10.0.0.1".parse().expect("ip")));
        let s1 = gate.enter(a).expect("first");
        let _s2 = gate.enter(a).expect("second");
        assert!(gate.enter(a).is_none(), "a's share is two");
        assert!(gate.enter(b).is_some(), "b is not held up by a");
        drop(s1);
        assert!(gate.enter(a).is_some(), "a slot comes back when dropped");
        let now = Millis(5_000);
        assert_eq!(gate.refusal(Refused::PeerBusy, now), Some(0));
        assert_eq!(gate.refusal(Refused::PeerBusy, now), Some(0));
        assert_eq!(gate.refusal(Refused::PeerBusy, now), None);
        assert_eq!(gate.refusal(Refused::Malformed, now), None);
        assert_eq!(gate.metrics.refused_count(Refused::PeerBusy), 3);
        assert_eq!(gate.refusal(Refused::Malformed, Millis(35_000)), Some(2));
        assert_eq!(gate.metrics.unlogged.load(Ordering::Relaxed), 2);
    }
}
