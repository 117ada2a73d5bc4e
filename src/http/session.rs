//! Web sign-in sessions: the cookie holds a random session id, never the token.
//!
//! Signing in with a token creates a session here: a random id (what the cookie carries),
//! the digest of the token it was opened with, and an expiry. Every request with the cookie
//! looks the session up and then the token by its digest in the *current* access policy, so
//! a session whose token is no longer configured is dead. Sign-out removes the session.
//!
//! Sessions live in memory only: a restart signs everybody out, which is the safe direction
//! and costs a tech one sign-in. Ids are looked up by their SHA-256, so lookup timing says
//! nothing about stored ids. This module does no I/O and reads no clock: callers pass `now`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The sign-in cookie's name (its value is a session id).
pub const SESSION_COOKIE: &str = "mozpool_session";

/// The cookie earlier versions set, holding the token itself; it is no longer read, and
/// sign-in and sign-out clear it.
pub const LEGACY_COOKIE: &str = "mozpool_token";

/// How long a session lasts from sign-in (a working day and then some; the cookie's
/// `Max-Age` says the same).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept; past it the one expiring first goes (only token holders can sign in,
/// so this bounds memory, not abuse by strangers).
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Session {
    /// SHA-256 of the token the session was opened with.
    token_digest: [u8; 32],
    expires: Instant,
}

/// The open sessions. One per service.
#[derive(Debug, Default)]
pub struct Sessions {
    /// By SHA-256 of the session id.
    map: Mutex<HashMap<[u8; 32], Session>>,
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Open a session for the token with this digest; the new session id.
    #[must_use]
    pub fn create(&self, token_digest: [u8; 32], now: Instant) -> String {
        let id = crate::http::auth::new_token();
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            key(&id),
            Session {
                token_digest,
                expires: now + SESSION_LIFETIME,
            },
        );
        id
    }

    /// The token digest of a live session, `None` when unknown or expired (an expired one
    /// is dropped).
    #[must_use]
    pub fn lookup(&self, id: &str, now: Instant) -> Option<[u8; 32]> {
        let k = key(id);
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(&k) {
            Some(s) if s.expires > now => Some(s.token_digest),
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// End a session (sign-out). Unknown ids are ignored.
    pub fn revoke(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key(id));
    }

    /// Sessions held now (tests).
    #[must_use]
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// No sessions held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_lookup_expire_revoke() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let a = s.create([1; 32], t0);
        let b = s.create([2; 32], t0);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(s.lookup(&a, t0), Some([1; 32]));
        assert_eq!(s.lookup(&b, t0 + Duration::from_secs(60)), Some([2; 32]));
        assert_eq!(s.lookup("not-a-session", t0), None);
        s.revoke(&a);
        assert_eq!(s.lookup(&a, t0), None);
        assert_eq!(s.lookup(&b, t0 + SESSION_LIFETIME), None, "expired");
        assert!(s.is_empty(), "the expired session was dropped");
    }

    /// The pipeline resolves a session's token digest against the policy in force: once the
    /// token is no longer configured, the session stands for nobody.
    #[test]
    fn a_removed_token_ends_its_sessions() {
        use crate::http::auth::{
            Auth, AuthConfig, Role, TokenConfig, token_digest, token_digest_hex,
        };
        use toml::Spanned;
        let policy = |tokens: &[&str]| {
            Auth::new(Some(&AuthConfig {
                anonymous: Spanned::new(0..0, Role::None),
                tokens: tokens
                    .iter()
                    .map(|t| TokenConfig {
                        name: Spanned::new(0..0, format!("n{}", t.len())),
                        role: Spanned::new(0..0, Role::Admin),
                        sha256: Spanned::new(0..0, token_digest_hex(t)),
                    })
                    .collect(),
            }))
        };
        let s = Sessions::default();
        let now = Instant::now();
        let id = s.create(token_digest("tok-one"), now);
        let digest = s.lookup(&id, now).expect("live");
        assert!(
            policy(&["tok-one", "tok-three"])
                .identify_digest(&digest)
                .is_some()
        );
        assert!(policy(&["tok-three"]).identify_digest(&digest).is_none());
        assert!(Auth::new(None).identify_digest(&digest).is_none());
    }
}
