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
    /// Bearer token sent as `Authorization: Bearer <token>` on every call, when set.
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
    Unreachable {
        /// URL.
        url: String,
        /// Cause.
        message: String,
    },
    /// The service answered with an error status.
    #[error("{status}: {message}")]
    Status {
        /// Status.
        status: StatusCode,
        /// The `error` field of the body, or the body.
        message: String,
    },
}

impl ApiClient {
    /// A client for `base` (`http://host:port`).
    #[must_use]
    pub fn new(base: &str) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            token: None,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The same client, sending `token` as `Authorization: Bearer` (an empty token is none).
    #[must_use]
    pub fn with_token(mut self, token: Option<&str>) -> ApiClient {
        self.token = token.filter(|t| !t.is_empty()).map(str::to_owned);
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
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Url("the token is not a valid header value".into()))?;
            req.headers_mut().insert(AUTHORIZATION, value);
        }
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
        let req = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .body(Full::new(Bytes::new()))
            .map_err(|_| ClientError::Url(url.clone()))?;
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
