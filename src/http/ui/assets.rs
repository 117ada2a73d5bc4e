//! Static files (`assets/static/`): CSS, JavaScript, the icon. Pages link them through
//! `static_url("app.css")`, which puts a content hash in the URL (`/static/<hash>/app.css`),
//! so they can be cached forever (`immutable`) and an upgrade changes the URL. A fetch with
//! a stale or made-up hash still gets the current file, but with `no-cache`. Every answer
//! carries a strong ETag; `If-None-Match` gets a 304.

use std::borrow::Cow;

use bytes::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};
use rust_embed::Embed;

use crate::http::body::{Body, error_response};
use crate::http::error::ApiError;

/// The static files. Debug builds read them from disk on each request; release builds
/// embed them.
#[derive(Embed)]
#[folder = "assets/static/"]
struct Static;

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The URL hash of a file: the first 8 bytes of its sha256, as hex.
#[must_use]
pub fn hash_of(file: &str) -> Option<String> {
    Static::get(file).map(|f| hex(&f.metadata.sha256_hash()[..8]))
}

/// The template function `static_url(name)`: `/static/<hash>/<name>`. Marked safe (not
/// escaped) because it is made only of a hex hash and the name of a file that exists.
///
/// # Errors
/// No such file (so a template naming a missing asset fails in the tests).
pub fn static_url(name: &str) -> Result<minijinja::Value, minijinja::Error> {
    url(name).map(minijinja::Value::from_safe_string)
}

/// `/static/<hash>/<name>` of an existing file.
///
/// # Errors
/// No such file.
pub fn url(name: &str) -> Result<String, minijinja::Error> {
    hash_of(name)
        .map(|h| format!("/static/{h}/{name}"))
        .ok_or_else(|| {
            minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("no static file named {name}"),
            )
        })
}

/// Answer `GET /static/{hash}/{file}`.
#[must_use]
pub fn serve(hash: &str, file: &str, headers: &HeaderMap) -> Response<Body> {
    let Some(f) = Static::get(file) else {
        return error_response(&ApiError::not_found(format!("no static file {file}")));
    };
    let sha = f.metadata.sha256_hash();
    let etag = format!("\"{}\"", hex(&sha[..16]));
    let cache = if hash == hex(&sha[..8]) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let matches = headers
        .get_all(hyper::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let mime = HeaderValue::from_str(f.metadata.mimetype())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut r = if matches {
        let mut r = Response::new(Body::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let data = match f.data {
            Cow::Borrowed(b) => Bytes::from_static(b),
            Cow::Owned(v) => Bytes::from(v),
        };
        let mut r = Response::new(Body::new(data.clone()));
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
        r.headers_mut().insert(CONTENT_TYPE, mime);
        r
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, v);
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_urls_and_revalidation() {
        let url = url("app.css").expect("app.css exists");
        let hash = url.split('/').nth(2).expect("hash segment").to_owned();
        assert_eq!(hash.len(), 16);
        let r = serve(&hash, "app.css", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[CACHE_CONTROL]
                .to_str()
                .expect("ascii")
                .contains("immutable")
        );
        assert!(
            r.headers()[CONTENT_TYPE]
                .to_str()
                .expect("ascii")
                .starts_with("text/css")
        );
        let etag = r.headers()[ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(hyper::header::IF_NONE_MATCH, etag);
        assert_eq!(
            serve(&hash, "app.css", &h).status(),
            StatusCode::NOT_MODIFIED
        );
        let stale = serve("0000", "app.css", &HeaderMap::new());
        assert_eq!(stale.headers()[CACHE_CONTROL], "no-cache");
        assert_eq!(
            serve(&hash, "nope.css", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
        assert!(static_url("nope.js").is_err());
    }
}
