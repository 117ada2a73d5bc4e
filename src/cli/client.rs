//! A small HTTP client for the CLI subcommands that talk to a running service's API.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// An API client for one service base URL.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    /// Bearer token sent as `Authorization: Bearer <token>` on every call, when set (from
    /// `with_token`, or the password of credentials in the URL).
    token: Option<String>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL could not be used.
    #[error("bad URL {0}")]
    Url(String),
    /// The service could not be reached.
    #[error("cannot reach {url}: {message}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Unreachable { url: String, message: String },
    /// The service answered with an error status.
    #[error("{status}: {message}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Status {
        status: StatusCode,
        /// The `error` field of the body, or the body.
        message: String,
    },
}

impl ApiClient {
    /// A client for `base` (`http://host:port`). Credentials in the URL
    /// (`http://name:TOKEN@host/`, as old MozPool clients used) are taken out of it and sent
    /// as the token.
    #[must_use]
    pub fn new(base: &str) -> ApiClient {
        let base = base.trim_end_matches('/');
        let (base, token) = split_userinfo(base);
        ApiClient {
            base,
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The same client, sending `token` as `Authorization: Bearer` (an empty token is none).
    /// A given token wins over one taken from the URL.
    #[must_use]
    pub fn with_token(mut self, token: Option<&str>) -> ApiClient {
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            self.token = Some(t.to_owned());
        }
        self
    }

    /// Call the API; `path` starts with `/api/`. Returns the status and the JSON body
    /// (`null` when empty). Error statuses become [`ClientError::Status`].
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let (status, bytes) = self.call_bytes(method, path, body).await?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_client_error() || status.is_server_error() {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| value.to_string(), str::to_owned);
            return Err(ClientError::Status { status, message });
        }
        Ok((status, value))
    }

    /// Call the API and return the status and the raw body, whatever the status (`mozpool
    /// bench` times calls without parsing their JSON).
    ///
    /// # Errors
    /// [`ClientError::Url`] or [`ClientError::Unreachable`].
    pub async fn call_bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = format!("{}{path}", self.base);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .body(Full::new(bytes))
            .map_err(|_| ClientError::Url(url.clone()))?;
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.authorize(&mut req)?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                message: e.to_string(),
            })?
            .to_bytes();
        Ok((status, bytes))
    }

    /// Add the `Authorization` header when there is a token.
    fn authorize(&self, req: &mut Request<Full<Bytes>>) -> Result<(), ClientError> {
        if let Some(token) = &self.token {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Url("the token is not a valid header value".into()))?;
            v.set_sensitive(true);
            req.headers_mut().insert(AUTHORIZATION, v);
        }
        Ok(())
    }

    /// GET.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        Ok(self.call(Method::GET, path, None).await?.1)
    }

    /// GET `path` and write the body to `dest` as it arrives. Returns the bytes written;
    /// a body shorter than its `Content-Length` is an error.
    ///
    /// # Errors
    /// [`ClientError`]; I/O errors on `dest` are reported as [`ClientError::Unreachable`]
    /// with the file named.
    pub async fn download(
        &self,
        path: &str,
        dest: &mut tokio::fs::File,
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt as _;
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .body(Full::new(Bytes::new()))
            .map_err(|_| ClientError::Url(url.clone()))?;
        self.authorize(&mut req)?;
        let unreachable = |message: String| ClientError::Unreachable {
            url: url.clone(),
            message,
        };
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let expected = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Status { status, message });
        }
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| unreachable(format!("download interrupted: {e}")))?;
            if let Ok(data) = frame.into_data() {
                dest.write_all(&data)
                    .await
                    .map_err(|e| unreachable(format!("cannot write the download: {e}")))?;
                written += data.len() as u64;
            }
        }
        if expected.is_some_and(|n| n != written) {
            return Err(unreachable(format!(
                "download truncated: got {written} of {} bytes",
                expected.unwrap_or_default()
            )));
        }
        Ok(written)
    }
}

/// Split `scheme://user:token@host…` into the URL without credentials and the token (the
/// password, or the user part when there is no password).
fn split_userinfo(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let userinfo = &rest[..at];
    let token = match userinfo.split_once(':') {
        Some((_, pass)) if !pass.is_empty() => pass,
        Some((user, _)) => user,
        None => userinfo,
    };
    let token = crate::http::body::decode_component(token);
    (
        format!("{scheme}://{}", &rest[at + 1..]),
        (!token.is_empty()).then_some(token),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_become_the_token() {
        assert_eq!(
            split_userinfo("http://ci:abc@rack1:8080"),
            ("http://rack1:8080".to_owned(), Some("abc".to_owned()))
        );
        assert_eq!(
            split_userinfo("http://abc@rack1"),
            ("http://rack1".to_owned(), Some("abc".to_owned()))
        );
        assert_eq!(
            split_userinfo("http://rack1/x@y"),
            ("http://rack1/x@y".to_owned(), None)
        );
        assert_eq!(split_userinfo("rack1"), ("rack1".to_owned(), None));
    }
}
