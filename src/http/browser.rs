//! Browser safety, in every mode (with or without `[auth]`): the checks that keep a web page
//! a tech happens to visit from driving the service through the tech's browser.
//!
//! - **DNS rebinding**: a request whose `Host` is not one of the service's names ([`Names`])
//!   is refused (421), so a hostile name pointed at the controller's address cannot read or
//!   change anything through a browser. IP literals are accepted when the service listens
//!   on them (an IP literal cannot be rebound: the browser's origin is then that address).
//! - **Cross-site changes**: a call that changes something (`POST`, `PUT`, `DELETE`, `PATCH`,
//!   or a route that mutates whatever its method) carrying a foreign `Origin`, or
//!   `Sec-Fetch-Site: cross-site`, is refused (403). Browsers send one of these with every
//!   cross-site request, even a "simple" `text/plain` form post that needs no CORS
//!   preflight.
//!
//! Clients that send neither header (mozharness, curl, the CLI) are not affected, and a
//! request without `Host` (HTTP/1.0) is not refused: browsers always send one. This module
//! does no I/O.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use hyper::header::{HOST, ORIGIN};
use hyper::{HeaderMap, Method, StatusCode};

use super::error::ApiError;

/// The names this service answers to.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Host names, lower case without a trailing dot: `server.name`, `public_url`'s host and
    /// `server.host_aliases`.
    names: BTreeSet<String>,
    /// The listen address's IP (any IP literal when it is unspecified).
    listen: Option<IpAddr>,
    /// `public_url`'s origin (`(host, port)`), which a browser behind a proxy sends.
    public: Option<(String, u16)>,
}

impl Names {
    /// The names of a service listening on `listen`, called `server_name`, with `public_url`
    /// and the configured aliases.
    #[must_use]
    pub fn new(
        listen: SocketAddr,
        server_name: &str,
        public_url: Option<&str>,
        aliases: &[String],
    ) -> Names {
        let public = public_url.and_then(parse_origin);
        let mut names: BTreeSet<String> = aliases.iter().map(|a| normalize(a)).collect();
        names.insert(normalize(server_name));
        if let Some((host, _)) = &public {
            names.insert(host.clone());
        }
        names.remove("");
        Names {
            names,
            listen: Some(listen.ip()),
            public,
        }
    }

    /// The names, for the start-up log: host names, then the addresses accepted.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.names.iter().cloned().collect();
        match self.listen {
            Some(ip) if ip.is_unspecified() => {
                parts.push("localhost".into());
                parts.push("any address of this machine".into());
            }
            Some(ip) if ip.is_loopback() => {
                parts.push("localhost".into());
                parts.push("loopback addresses".into());
            }
            Some(ip) => parts.push(ip.to_string()),
            None => {}
        }
        parts.join(", ")
    }

    /// Is `host` (a `Host` header's host part, normalised) one of ours?
    fn is_ours(&self, host: &str) -> bool {
        if self.names.contains(host) {
            return true;
        }
        let listen = self.listen;
        let on_loopback = listen.is_some_and(|ip| ip.is_loopback() || ip.is_unspecified());
        if let Ok(ip) = host.parse::<IpAddr>() {
            return match listen {
                Some(l) if l.is_unspecified() => true,
                Some(l) => {
                    l.to_canonical() == ip.to_canonical() || (on_loopback && ip.is_loopback())
                }
                None => false,
            };
        }
        on_loopback && (host == "localhost" || host.ends_with(".localhost"))
    }
}

/// Lower case, without brackets (IPv6) and without a trailing dot.
fn normalize(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Split `host[:port]` or `[v6][:port]`.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let authority = authority.trim();
    if authority.is_empty() || authority.contains(['/', '@', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse().ok()?)),
            None => (authority, None),
        }
    };
    let host = normalize(host);
    (!host.is_empty()).then_some((host, port))
}

/// `scheme://authority` (what `Origin` holds, and `public_url` starts with) as
/// `(host, port)`, the port defaulted by the scheme. `None` for `null` and anything else.
fn parse_origin(origin: &str) -> Option<(String, u16)> {
    let (scheme, rest) = origin.trim().split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = split_authority(authority)?;
    Some((host, port.unwrap_or(default)))
}

/// Does a call with this method to this route change anything?
fn changes(method: &Method, mutates: bool) -> bool {
    mutates
        || matches!(
            *method,
            Method::POST | Method::PUT | Method::DELETE | Method::PATCH
        )
}

/// Check `Host`, and for a call that changes something, `Origin` and `Sec-Fetch-Site`.
/// `mutates` is the route's own say (a `GET` event changes state too).
///
/// # Errors
/// 421 `misdirected_request` for a foreign `Host`; 403 `cross_site` for a change from
/// another site.
pub fn check(
    names: &Names,
    method: &Method,
    mutates: bool,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let host = match headers.get(HOST) {
        None => None,
        Some(v) => {
            let parsed = v.to_str().ok().and_then(split_authority);
            match parsed {
                Some((h, p)) if names.is_ours(&h) => Some((h, p)),
                _ => {
                    let shown = String::from_utf8_lossy(v.as_bytes())
                        .chars()
                        .take(100)
                        .collect::<String>();
                    return Err(ApiError::new(
                        StatusCode::MISDIRECTED_REQUEST,
                        "misdirected_request",
                        format!(
                            "Host {shown:?} is not a name of this service; use its configured name, or add this one to server.host_aliases"
                        ),
                    ));
                }
            }
        }
    };
    if !changes(method, mutates) {
        return Ok(());
    }
    let cross_site = |why: String| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            format!(
                "{why}: changes are only accepted from this service's own pages or from clients that are not browsers"
            ),
        )
    };
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Err(cross_site(
            "the browser says this request comes from another site".into(),
        ));
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let text = origin.to_str().unwrap_or_default();
        let parsed = parse_origin(text);
        let same = parsed.as_ref().is_some_and(|(oh, op)| {
            // The Host this request was sent to (its port defaulted by the origin's scheme),
            // or the public URL a proxy in front serves.
            let to_host = host
                .as_ref()
                .is_some_and(|(h, p)| h == oh && p.unwrap_or(*op) == *op);
            let to_public = names.public.as_ref() == Some(&(oh.clone(), *op));
            to_host || to_public
        });
        if !same {
            let shown: String = text.chars().take(100).collect();
            return Err(cross_site(format!("Origin {shown:?} is another site")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("header value"));
        }
        h
    }

    fn loopback() -> Names {
        Names::new(
            "127.0.0.1:8080".parse().expect("addr"),
            "rack1.lab",
            None,
            &["mozpool".into(), "Rack1-Alias.Lab.".into()],
        )
    }

    fn status(names: &Names, method: Method, pairs: &[(&'static str, &str)]) -> u16 {
        check(names, &method, false, &headers(pairs)).map_or_else(|e| e.status.as_u16(), |()| 200)
    }

    #[test]
    fn hosts() {
        let n = loopback();
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.5",
            "localhost:8080",
            "LOCALHOST",
            "rack1.lab",
            "rack1.lab.:8080",
            "mozpool:8080",
            "rack1-alias.lab",
            "[::1]:8080",
        ] {
            assert_eq!(status(&n, Method::GET, &[("host", ok)]), 200, "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.5",
            "",
            "a b",
            "rack1.lab:x",
            "x@rack1.lab",
        ] {
            assert_eq!(status(&n, Method::GET, &[("host", bad)]), 421, "{bad}");
        }
        assert_eq!(
            n.describe(),
            "mozpool, rack1-alias.lab, rack1.lab, localhost, loopback addresses"
        );
        // No Host (HTTP/1.0): not a browser.
        assert_eq!(status(&n, Method::GET, &[]), 200);
        // Listening everywhere: every IP literal of the machine, and localhost.
        let any = Names::new(
            "0.0.0.0:8080".parse().expect("addr"),
            "localhost",
            None,
            &[],
        );
        assert_eq!(status(&any, Method::GET, &[("host", "10.0.0.5:8080")]), 200);
        assert_eq!(status(&any, Method::GET, &[("host", "localhost")]), 200);
        assert_eq!(status(&any, Method::GET, &[("host", "evil.example")]), 421);
        // A specific non-loopback address: not localhost.
        let lan = Names::new(
            "10.0.0.2:80".parse().expect("addr"),
            "rack1",
            Some("https://mozpool.lab.example/"),
            &[],
        );
        assert_eq!(status(&lan, Method::GET, &[("host", "10.0.0.2")]), 200);
        assert_eq!(
            status(&lan, Method::GET, &[("host", "mozpool.lab.example")]),
            200
        );
        assert_eq!(status(&lan, Method::GET, &[("host", "localhost")]), 421);
        assert_eq!(status(&lan, Method::GET, &[("host", "10.0.0.3")]), 421);
    }

    #[test]
    fn origins() {
        let n = loopback();
        let host = ("host", "127.0.0.1:8080");
        // Same origin, and no Origin at all: fine.
        assert_eq!(
            status(
                &n,
                Method::POST,
                &[host, ("origin", "http://127.0.0.1:8080")]
            ),
            200
        );
        assert_eq!(status(&n, Method::POST, &[host]), 200);
        assert_eq!(
            status(&n, Method::POST, &[host, ("sec-fetch-site", "same-origin")]),
            200
        );
        assert_eq!(
            status(
                &n,
                Method::POST,
                &[("host", "rack1.lab"), ("origin", "http://rack1.lab")]
            ),
            200
        );
        for bad in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:9999",
            "http://localhost:8080",
            "file://",
        ] {
            assert_eq!(
                status(&n, Method::POST, &[host, ("origin", bad)]),
                403,
                "{bad}"
            );
            assert_eq!(
                status(&n, Method::DELETE, &[host, ("origin", bad)]),
                403,
                "{bad}"
            );
            // Reads are not refused for their origin (CORS keeps the answer from the page).
            assert_eq!(
                status(&n, Method::GET, &[host, ("origin", bad)]),
                200,
                "{bad}"
            );
        }
        // The scheme is not compared (behind a TLS proxy the service sees plain HTTP): the
        // same host and port are the same server.
        assert_eq!(
            status(
                &n,
                Method::POST,
                &[host, ("origin", "https://127.0.0.1:8080")]
            ),
            200
        );
        assert_eq!(
            status(&n, Method::PUT, &[host, ("sec-fetch-site", "cross-site")]),
            403
        );
        // A GET route that changes state is checked too.
        let h = headers(&[host, ("sec-fetch-site", "cross-site")]);
        assert!(check(&n, &Method::GET, true, &h).is_err());
        assert!(check(&n, &Method::GET, false, &h).is_ok());
        // Behind a proxy: the public URL's origin, whatever Host the proxy sends.
        let p = Names::new(
            "127.0.0.1:8080".parse().expect("addr"),
            "rack1",
            Some("https://mozpool.lab.example"),
            &[],
        );
        assert_eq!(
            status(
                &p,
                Method::POST,
                &[host, ("origin", "https://mozpool.lab.example")]
            ),
            200
        );
        assert_eq!(
            status(
                &p,
                Method::POST,
                &[host, ("origin", "http://mozpool.lab.example")]
            ),
            403
        );
    }
}
