//! Request bodies in, responses out: size-limited body reading, strict JSON decoding with
//! clear 4xx errors, query strings, and the response builders every handler uses.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{ApiError, retry_secs};

/// The one response body type: a body held in memory (almost every response), or chunks
/// streamed from a channel (large downloads such as `/api/backup/`, which must not be held in
/// memory: the unit caps the service at `MemoryMax=256M`).
#[derive(Debug)]
pub struct Body {
    kind: BodyKind,
}

#[derive(Debug)]
enum BodyKind {
    Full(Full<Bytes>),
    Channel(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>),
}

impl Body {
    /// A body held in memory.
    #[must_use]
    pub fn new(bytes: Bytes) -> Body {
        Body {
            kind: BodyKind::Full(Full::new(bytes)),
        }
    }

    /// A body streamed from a channel: the producer sends chunks and closes the channel at
    /// the end. An `Err` chunk aborts the response (the client sees a truncated body, which
    /// the `Content-Length` header lets it detect).
    #[must_use]
    pub fn channel(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> Body {
        Body {
            kind: BodyKind::Channel(rx),
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut self.get_mut().kind {
            BodyKind::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
            BodyKind::Channel(rx) => rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Full(full) => full.is_end_stream(),
            BodyKind::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full(full) => full.size_hint(),
            BodyKind::Channel(_) => SizeHint::default(),
        }
    }
}

/// Read a whole body of at most `limit` bytes (413 beyond it).
///
/// # Errors
/// 413 when too large, 400 when the connection fails mid-body.
pub async fn read_limited(
    declared_len: Option<u64>,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if declared_len.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large(limit))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is larger than {limit} bytes"),
    )
}

/// Decode a JSON body strictly. An empty body is decoded as `{}` so that calls whose fields
/// are all optional need no body; a missing required field then says which. An object with
/// the same key twice, at any depth, is refused whatever `T` is: `serde_json` would keep
/// the last one for maps, so two parsers (a proxy, a log reader) could read different
/// requests from the same bytes.
///
/// # Errors
/// 400 naming what is wrong and where.
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let bad = |e: serde_json::Error| ApiError::bad_request(format!("invalid JSON body: {e}"));
    serde_json::from_slice::<UniqueKeys>(bytes).map_err(bad)?;
    serde_json::from_slice(bytes).map_err(bad)
}

/// A JSON value checked for duplicate object keys (and otherwise thrown away).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UniqueKeys, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

/// A JSON response.
#[must_use]
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => bytes_response(
            status,
            "application/json; charset=utf-8",
            Bytes::from(bytes),
        ),
        Err(e) => error_response(&ApiError::internal(format!("cannot encode response: {e}"))),
    }
}

/// 200 with a JSON body.
#[must_use]
pub fn ok<T: Serialize + ?Sized>(value: &T) -> Response<Body> {
    json_response(StatusCode::OK, value)
}

/// 204.
#[must_use]
pub fn no_content() -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Any body with a content type.
#[must_use]
pub fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    bytes: Bytes,
) -> Response<Body> {
    let len = bytes.len();
    let mut r = Response::new(Body::new(bytes));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// The JSON error body for an [`ApiError`].
#[must_use]
pub fn error_response(e: &ApiError) -> Response<Body> {
    let body = serde_json::json!({ "error": e.message, "code": e.code });
    let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":\"internal\"}".to_vec());
    let mut r = bytes_response(
        e.status,
        "application/json; charset=utf-8",
        Bytes::from(bytes),
    );
    if let Some(after) = e.retry_after {
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_secs(after)));
    }
    if e.status == StatusCode::UNAUTHORIZED {
        // Both schemes: Bearer for new clients, Basic so that clients holding credentials
        // in an `http://name:token@host/` URL answer the challenge.
        for challenge in [
            "Bearer realm=\"mozpool\"",
            "Basic realm=\"mozpool\", charset=\"UTF-8\"",
        ] {
            r.headers_mut()
                .append(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
    }
    r
}

/// A parsed query string.
#[derive(Debug, Default, Clone)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parse `a=b&c=d` (percent-decoded, `+` as space as in forms).
    #[must_use]
    pub fn parse(q: Option<&str>) -> Query {
        let mut out = Vec::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.push((decode_component(k), decode_component(v)));
        }
        Query(out)
    }

    /// First value of a key.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean flag. As in the original, a present key counts as set, except the explicit
    /// values `0`, `false`, `no` and `off` (the original treated `?details=0` as set, which
    /// surprised everyone).
    #[must_use]
    pub fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| !matches!(v, "0" | "false" | "no" | "off"))
    }

    /// A number.
    ///
    /// # Errors
    /// 400 when present but not a number.
    pub fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "query parameter {key} must be a non-negative integer, got {v:?}"
                    ))
                })
            })
            .transpose()
    }
}

/// Percent-decode one URL component (invalid escapes are kept as they are).
#[must_use]
pub fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some("details=1&limit=5&name=a%20b&x&flag=0&bad=%zz&end=%4"));
        assert!(q.flag("details"));
        assert!(q.flag("x"));
        assert!(!q.flag("flag"));
        assert!(!q.flag("missing"));
        assert_eq!(q.number("limit").ok().flatten(), Some(5));
        assert!(q.number("name").is_err());
        assert_eq!(q.get("name"), Some("a b"));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(q.get("end"), Some("%4"));
    }

    #[test]
    fn json_errors_are_4xx() {
        let e = json::<serde_json::Value>(b"{").expect_err("bad");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let v: serde_json::Value = json(b"").expect("empty is {}");
        assert!(v.is_object());
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for body in [
            &br#"{"NAME": "a", "NAME": "b"}"#[..],
            br#"{"x": [{"k": 1, "k": 2}]}"#,
            br#"{"a": {"b": {"c": 1, "c": 1}}}"#,
            br#"{"a\u0062": 1, "ab": 2}"#,
        ] {
            let e =
                json::<serde_json::Map<String, serde_json::Value>>(body).expect_err("duplicate");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains("duplicate key"), "{}", e.message);
        }
        let ok: serde_json::Value =
            json(br#"{"a": {"k": 1}, "b": {"k": 2}, "c": [{"k": 1}, {"k": 2}]}"#)
                .expect("same key in different objects");
        assert_eq!(ok["b"]["k"], 2);
    }
}
