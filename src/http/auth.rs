//! Access control: who is calling ([`Caller`]) and what they may do ([`Role`]).
//!
//! Owns the `[auth]` configuration, token hashing and comparison, parsing of the
//! `Authorization` header (`Bearer <token>`, or HTTP Basic with the token as password so that
//! old clients with `http://name:token@host/` URLs work unchanged) and the ownership rule for
//! requests ([`may_manage_request`]). It does no I/O and knows nothing of routes: the route
//! table says which role each call needs (`Route::required_role`), and the HTTP pipeline
//! calls [`Auth::authenticate`] and [`authorize`] in that order, before reading any body.
//!
//! Rules:
//! - No `[auth]` section: the service is **open** as the original MozPool was; every caller is
//!   an admin. [`Auth::is_open`] tells the start-up log, `/api/version/` and the web page to
//!   say so.
//! - Only SHA-256 digests of tokens are configured; a presented token is hashed and compared
//!   in constant time against every configured digest.
//! - A presented but wrong (or malformed) credential is always 401, never silently anonymous.
//! - No credential: the caller is `anonymous` with the configured anonymous role; when that
//!   is not enough, 401 (with `WWW-Authenticate`), so the client knows to send a token. A
//!   token whose role is not enough: 403.

use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

/// What a caller may do. Ordered: each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Nothing but the public endpoints (`/api/version/`, `/api/health/`); what anonymous
    /// callers get with `anonymous = "none"`.
    None,
    /// Read every GET endpoint.
    Read,
    /// Read, plus check out, renew and return one's own requests.
    Request,
    /// Everything: power, state changes, maintenance, inventory, images.
    Admin,
}

impl Role {
    /// The config/API spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Read => "read",
            Role::Request => "request",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role`]'s spellings (a `token new` argument).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected read, request or admin)")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "none" => Ok(Role::None),
            "read" => Ok(Role::Read),
            "request" => Ok(Role::Request),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// `[auth]` in the configuration file. Its presence switches access control on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Role of callers that send no credentials: `read`, `request` or `none` (default `read`,
    /// as in the packaged config). `admin` is refused: that is what "no `[auth]`" means.
    #[serde(default = "default_anonymous")]
    pub anonymous: Spanned<Role>,
    /// The tokens.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

fn default_anonymous() -> Spanned<Role> {
    Spanned::new(0..0, Role::Read)
}

/// One `[[auth.tokens]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The token's name: what the audit log records and what owns the requests it makes.
    pub name: Spanned<String>,
    /// `read`, `request` or `admin`.
    pub role: Spanned<Role>,
    /// Hex SHA-256 digest of the token (`mozpool token new` prints it); the token itself is
    /// never stored.
    pub sha256: Spanned<String>,
}

impl AuthConfig {
    /// Check values serde cannot: roles allowed where, names, digests, duplicates. Returns
    /// the byte offset of the offending value with the message.
    ///
    /// # Errors
    /// `(offset, message)` for the first problem.
    pub fn check(&self) -> Result<(), (usize, String)> {
        if *self.anonymous.get_ref() == Role::Admin {
            return Err((
                self.anonymous.span().start,
                "auth.anonymous must be \"read\", \"request\" or \"none\" (leave out [auth] for an open service)".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut digests = std::collections::BTreeSet::new();
        for t in &self.tokens {
            let name = t.name.get_ref();
            if let Err(e) = crate::domain::names::check_name("token name", name) {
                return Err((t.name.span().start, e.to_string()));
            }
            if name == ANONYMOUS {
                return Err((
                    t.name.span().start,
                    format!("token name {ANONYMOUS:?} is reserved"),
                ));
            }
            if !names.insert(name.as_str()) {
                return Err((t.name.span().start, format!("token {name} is listed twice")));
            }
            if *t.role.get_ref() == Role::None {
                return Err((
                    t.role.span().start,
                    format!("token {name}: role must be \"read\", \"request\" or \"admin\""),
                ));
            }
            let Some(digest) = parse_digest(t.sha256.get_ref()) else {
                return Err((
                    t.sha256.span().start,
                    format!(
                        "token {name}: sha256 must be 64 hex digits (the digest `mozpool token new` prints, not the token)"
                    ),
                ));
            };
            if !digests.insert(digest) {
                return Err((
                    t.sha256.span().start,
                    format!("token {name}: the same sha256 is configured twice"),
                ));
            }
        }
        Ok(())
    }
}

/// The audit name of callers without credentials.
pub const ANONYMOUS: &str = "anonymous";

/// Who is calling, as established by [`Auth::authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Name for the audit log: the token's name, or `anonymous`.
    pub name: String,
    /// What the caller may do.
    pub role: Role,
    /// The token's name when the caller presented one; what owns the requests it makes
    /// (see [`may_manage_request`]). `None` for anonymous callers.
    pub token: Option<String>,
}

impl Caller {
    /// A caller without credentials, with `role`.
    #[must_use]
    pub fn anonymous(role: Role) -> Caller {
        Caller {
            name: ANONYMOUS.to_owned(),
            role,
            token: None,
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Credentials missing where needed, wrong, or malformed: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// Known caller whose role may not do this: 403.
    #[error("{0}")]
    Forbidden(String),
}

/// One configured token, ready for comparison.
#[derive(Clone)]
struct Token {
    name: String,
    role: Role,
    digest: [u8; 32],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The digest is not secret, but there is no reason to spread it through logs.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The access-control policy the service runs with, built once from the configuration.
#[derive(Debug, Clone)]
pub struct Auth {
    /// `None` when there is no `[auth]` section (open service).
    enabled: Option<Enabled>,
}

#[derive(Debug, Clone)]
struct Enabled {
    anonymous: Role,
    tokens: Vec<Token>,
}

/// What `/api/version/` and the start-up log say about an open service.
pub const OPEN_WARNING: &str = "access control is OFF: there is no [auth] section in the configuration, so anyone who can reach this service may power-cycle, reconfigure and take devices; see docs/config.md ([auth]) and `mozpool token new`";

impl Auth {
    /// The policy for `config` (`None`: open).
    #[must_use]
    pub fn new(config: Option<&AuthConfig>) -> Auth {
        Auth {
            enabled: config.map(|c| Enabled {
                anonymous: *c.anonymous.get_ref(),
                tokens: c
                    .tokens
                    .iter()
                    .filter_map(|t| {
                        Some(Token {
                            name: t.name.get_ref().clone(),
                            role: *t.role.get_ref(),
                            digest: parse_digest(t.sha256.get_ref())?,
                        })
                    })
                    .collect(),
            }),
        }
    }

    /// An open service (no `[auth]`): everyone is an admin.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.enabled.is_none()
    }

    /// The role of callers without credentials.
    #[must_use]
    pub fn anonymous_role(&self) -> Role {
        self.enabled.as_ref().map_or(Role::Admin, |e| e.anonymous)
    }

    /// Identify the caller from the `Authorization` header value (raw bytes, `None` when
    /// absent). On an open service credentials are not checked.
    ///
    /// # Errors
    /// [`AuthError::Unauthenticated`] for a wrong or malformed credential.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Caller, AuthError> {
        let Some(enabled) = &self.enabled else {
            return Ok(Caller::anonymous(Role::Admin));
        };
        let Some(header) = header else {
            return Ok(Caller::anonymous(enabled.anonymous));
        };
        let token = credential(header)?;
        self.identify(&token).ok_or_else(|| {
            AuthError::Unauthenticated("the token is not valid for this service".into())
        })
    }

    /// The caller a raw token stands for, `None` when it matches no configured token (or
    /// the service is open). For the web page's sign-in cookie as well as the header.
    #[must_use]
    pub fn identify(&self, token: &str) -> Option<Caller> {
        self.identify_digest(&token_digest(token))
    }

    /// The caller a token digest stands for (a sign-in session keeps the digest, not the
    /// token), `None` when no configured token has it (or the service is open).
    #[must_use]
    pub fn identify_digest(&self, presented: &[u8; 32]) -> Option<Caller> {
        let enabled = self.enabled.as_ref()?;
        // Compare with every token, without stopping early, so timing does not reveal which
        // (or whether one) matched.
        let mut found: Option<&Token> = None;
        for t in &enabled.tokens {
            if digests_equal(presented, &t.digest) {
                found = Some(t);
            }
        }
        found.map(|t| Caller {
            name: t.name.clone(),
            role: t.role,
            token: Some(t.name.clone()),
        })
    }
}

/// Check that `caller` may make a call needing `required`.
///
/// # Errors
/// 401 ([`AuthError::Unauthenticated`]) for an anonymous caller, so it knows to send a token;
/// 403 ([`AuthError::Forbidden`]) for a token whose role is too low.
pub fn authorize(caller: &Caller, required: Role) -> Result<(), AuthError> {
    if caller.role >= required {
        return Ok(());
    }
    if caller.token.is_none() {
        Err(AuthError::Unauthenticated(format!(
            "this call needs the {required} role: send a token (Authorization: Bearer TOKEN, or http://name:TOKEN@host/)"
        )))
    } else {
        Err(AuthError::Forbidden(format!(
            "token {} has the {} role; this call needs {required}",
            caller.name, caller.role
        )))
    }
}

/// May `caller` renew or return a request made by `request_owner_token` (the token name
/// recorded at creation, `None` when it was made anonymously or on an open service)?
///
/// Admins may manage every request. A token may manage only the requests it made. Anonymous
/// callers with the request role share one identity, so they may manage the requests made
/// anonymously, and no others.
#[must_use]
pub fn may_manage_request(caller: &Caller, request_owner_token: Option<&str>) -> bool {
    if caller.role >= Role::Admin {
        return true;
    }
    if caller.role < Role::Request {
        return false;
    }
    caller.token.as_deref() == request_owner_token
}

/// Constant-time equality of two SHA-256 digests.
#[must_use]
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// SHA-256 of a token.
#[must_use]
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Hex SHA-256 of a token, as configured in `sha256`.
#[must_use]
pub fn token_digest_hex(token: &str) -> String {
    hex_encode(&Sha256::digest(token.as_bytes()))
}

/// A fresh random token: 32 bytes from the OS generator, as 64 hex digits (safe in URLs,
/// headers and shell lines without quoting).
#[must_use]
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex_encode(&bytes)
}

fn hex_encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// Parse 64 hex digits (either case) into a digest.
#[must_use]
pub fn parse_digest(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0])?;
        let lo = hex_val(pair[1])?;
        out[i] = (hi << 4) | lo;
    }
    Some(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Longest token accepted in a header, so hashing work per request stays bounded (the
/// header size limit bounds it anyway; this gives a clear message).
const MAX_TOKEN_LEN: usize = 512;

/// The token presented in an `Authorization` header value: `Bearer TOKEN`, or
/// `Basic base64(user:TOKEN)` (the user part is ignored; with an empty password the user
/// part is taken as the token, for `http://TOKEN@host/`).
///
/// # Errors
/// [`AuthError::Unauthenticated`] for anything else.
pub fn credential(header: &[u8]) -> Result<String, AuthError> {
    let bad = |why: &str| AuthError::Unauthenticated(format!("bad Authorization header: {why}"));
    let text = std::str::from_utf8(header).map_err(|_| bad("not UTF-8"))?;
    let text = text.trim();
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim();
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        rest.to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64_decode(rest).ok_or_else(|| bad("Basic credentials are not base64"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| bad("Basic credentials are not UTF-8"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad("Basic credentials need user:token"))?;
        if password.is_empty() {
            user.to_owned()
        } else {
            password.to_owned()
        }
    } else {
        return Err(bad("use Bearer TOKEN or Basic credentials"));
    };
    if token.is_empty() {
        return Err(bad("empty token"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad("token too long"));
    }
    Ok(token)
}

/// Decode standard base64 (RFC 4648 §4), padding optional, no whitespace. `None` when
/// malformed.
#[must_use]
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let b = s.as_bytes();
    let trimmed = match b {
        [rest @ .., b'=', b'='] => rest,
        [rest @ .., b'='] => rest,
        _ => b,
    };
    if b.len() != trimmed.len() && !b.len().is_multiple_of(4) {
        return None;
    }
    if trimmed.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() / 4 * 3 + 2);
    for chunk in trimmed.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | val(c)?;
        }
        // Pad the chunk to 24 bits, then emit its whole bytes. The masks and shifts keep
        // every value below 256, so the truncating casts are exact.
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = [
            (acc >> 16) as u8,
            ((acc >> 8) & 0xff) as u8,
            (acc & 0xff) as u8,
        ];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(anonymous: Role, tokens: &[(&str, Role, &str)]) -> Auth {
        let cfg = AuthConfig {
            anonymous: Spanned::new(0..0, anonymous),
            tokens: tokens
                .iter()
                .map(|(n, r, tok)| TokenConfig {
                    name: Spanned::new(0..0, (*n).to_owned()),
                    role: Spanned::new(0..0, *r),
                    sha256: Spanned::new(0..0, token_digest_hex(tok)),
                })
                .collect(),
        };
        assert!(cfg.check().is_ok());
        Auth::new(Some(&cfg))
    }

    fn basic(user_pass: &str) -> Vec<u8> {
        // A tiny encoder for the tests only.
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::from("Basic ");
        for c in user_pass.as_bytes().chunks(3) {
            let n = c.len();
            let v = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= n {
                    s.push(char::from(T[((v >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    s.push('=');
                }
            }
        }
        s.into_bytes()
    }

    #[test]
    fn roles_are_ordered() {
        assert!(
            Role::None < Role::Read && Role::Read < Role::Request && Role::Request < Role::Admin
        );
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn open_service_makes_everyone_admin() {
        let a = Auth::new(None);
        assert!(a.is_open());
        let c = a.authenticate(Some(b"Bearer whatever")).expect("open");
        assert_eq!(c.role, Role::Admin);
        assert_eq!(c.name, "anonymous");
    }

    #[test]
    fn bearer_and_basic_identify_tokens() {
        let a = auth(
            Role::Read,
            &[
                ("ci", Role::Request, "s3cret"),
                ("ops", Role::Admin, "root"),
            ],
        );
        let c = a.authenticate(Some(b"Bearer s3cret")).expect("bearer");
        assert_eq!((c.name.as_str(), c.role), ("ci", Role::Request));
        assert_eq!(c.token.as_deref(), Some("ci"));
        let c = a.authenticate(Some(&basic("ops:root"))).expect("basic");
        assert_eq!((c.name.as_str(), c.role), ("ops", Role::Admin));
        let c = a
            .authenticate(Some(&basic("root:")))
            .expect("token as user");
        assert_eq!(c.name, "ops");
        let c = a.authenticate(None).expect("anonymous");
        assert_eq!(
            (c.name.as_str(), c.role, c.token),
            ("anonymous", Role::Read, None)
        );
    }

    #[test]
    fn wrong_or_malformed_credentials_are_401() {
        let a = auth(Role::Request, &[("ci", Role::Request, "s3cret")]);
        for h in [
            &b"Bearer nope"[..],
            b"Bearer ",
            b"Basic !!!",
            b"Basic ",
            b"Digest x",
            b"\xff\xfe",
            &basic("ci:nope"),
            &basic("nocolon"),
        ] {
            assert!(
                matches!(a.authenticate(Some(h)), Err(AuthError::Unauthenticated(_))),
                "{:?}",
                String::from_utf8_lossy(h)
            );
        }
    }

    #[test]
    fn authorize_401_for_anonymous_403_for_tokens() {
        let anon = Caller::anonymous(Role::Read);
        assert!(authorize(&anon, Role::Read).is_ok());
        assert!(matches!(
            authorize(&anon, Role::Admin),
            Err(AuthError::Unauthenticated(_))
        ));
        let ci = Caller {
            name: "ci".into(),
            role: Role::Request,
            token: Some("ci".into()),
        };
        assert!(authorize(&ci, Role::Request).is_ok());
        assert!(matches!(
            authorize(&ci, Role::Admin),
            Err(AuthError::Forbidden(_))
        ));
    }

    #[test]
    fn only_owner_or_admin_manage_requests() {
        let tok = |name: &str, role| Caller {
            name: name.into(),
            role,
            token: Some(name.into()),
        };
        let ci = tok("ci", Role::Request);
        assert!(may_manage_request(&ci, Some("ci")));
        assert!(!may_manage_request(&ci, Some("other")));
        assert!(!may_manage_request(&ci, None));
        assert!(may_manage_request(&tok("ops", Role::Admin), Some("ci")));
        assert!(may_manage_request(&tok("ops", Role::Admin), None));
        // A read token may not manage even a request recorded under its name.
        assert!(!may_manage_request(&tok("ci", Role::Read), Some("ci")));
        // Anonymous request-role callers share one identity.
        assert!(may_manage_request(&Caller::anonymous(Role::Request), None));
        assert!(!may_manage_request(
            &Caller::anonymous(Role::Request),
            Some("ci")
        ));
        assert!(!may_manage_request(&Caller::anonymous(Role::Read), None));
        // Open service: everyone is an admin.
        assert!(may_manage_request(
            &Caller::anonymous(Role::Admin),
            Some("ci")
        ));
    }

    #[test]
    fn digests() {
        let d = token_digest_hex("abc");
        assert_eq!(
            d,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let parsed = parse_digest(&d.to_uppercase()).expect("hex");
        assert!(digests_equal(&parsed, &Sha256::digest(b"abc").into()));
        assert!(!digests_equal(&parsed, &[0; 32]));
        assert!(parse_digest("abc").is_none());
        assert!(parse_digest(&"g".repeat(64)).is_none());
        assert_eq!(new_token().len(), 64);
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode("Zg==").as_deref(), Some(&b"f"[..]));
        assert_eq!(base64_decode("Zm8=").as_deref(), Some(&b"fo"[..]));
        assert_eq!(base64_decode("Zm9v").as_deref(), Some(&b"foo"[..]));
        assert_eq!(base64_decode("Zm9vYg").as_deref(), Some(&b"foob"[..]));
        assert!(base64_decode("Z").is_none());
        assert!(base64_decode("Zm9v!").is_none());
        assert!(base64_decode("Zg=").is_none());
    }

    #[test]
    fn config_checks() {
        let bad = AuthConfig {
            anonymous: Spanned::new(0..0, Role::Admin),
            tokens: vec![],
        };
        assert!(bad.check().is_err());
    }

    proptest::proptest! {
        #[test]
        fn header_parsing_never_panics(h in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let a = auth(Role::None, &[("ci", Role::Request, "s3cret")]);
            let _ = a.authenticate(Some(&h));
            let _ = base64_decode(&String::from_utf8_lossy(&h));
        }
    }
}
