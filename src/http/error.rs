//! `ApiError`: every failure the API reports, as a status, a stable code and a message,
//! always rendered as a JSON body `{"error": message, "code": code}`.

use std::time::Duration;

use hyper::StatusCode;

use crate::storage::{Fault, StoreError};

/// An API failure.
#[derive(Debug, Clone)]
// Fields named after their types need no more words.
#[allow(missing_docs)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code (`not_found`, `bad_request`, `conflict`, ...).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// When to try again, for a temporary 503 (sent as `Retry-After`, in whole seconds).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// Any status and code.
    #[must_use]
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: credentials missing where needed, or wrong (the response carries
    /// `WWW-Authenticate`).
    #[must_use]
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the caller is known but its role may not do this.
    #[must_use]
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    #[must_use]
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409.
    #[must_use]
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 500 (details go to the operator log, not to the client).
    #[must_use]
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 503.
    #[must_use]
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl From<crate::http::auth::AuthError> for ApiError {
    fn from(e: crate::http::auth::AuthError) -> ApiError {
        match e {
            crate::http::auth::AuthError::Unauthenticated(m) => ApiError::unauthorized(m),
            crate::http::auth::AuthError::Forbidden(m) => ApiError::forbidden(m),
        }
    }
}

impl From<crate::cluster::ClusterError> for ApiError {
    /// etcd unreachable, without quorum, or this controller's lease lost: 503
    /// `cluster_unavailable` with a `Retry-After`, since it heals by itself. A write guarded
    /// by a lost election is a 409; anything else etcd refuses is a 500.
    fn from(e: crate::cluster::ClusterError) -> ApiError {
        use crate::cluster::ClusterError as C;
        match e {
            C::Unavailable(_) | C::NoLease => ApiError {
                retry_after: Some(Duration::from_secs(1)),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cluster_unavailable",
                    e.to_string(),
                )
            },
            // Not healed by a retry a second later: the operator must free space.
            C::NoSpace(_) => ApiError {
                retry_after: Some(Duration::from_secs(60)),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cluster_unavailable",
                    e.to_string(),
                )
            },
            C::NotLeader(_) => ApiError::conflict(e.to_string()),
            C::Refused(_) | C::Setup(_) => {
                tracing::error!(error = %e, "etcd refused a call");
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if let Some(fault) = e.fault() {
            // The store heals by itself (see storage::disk); the operator log has the cause
            // once, from the writer, so a 503 per call is not logged again as an error.
            tracing::warn!(error = %e, "store unavailable while answering a request");
            return store_fault(fault, &e);
        }
        tracing::error!(error = %e, "store error while answering a request");
        match e {
            StoreError::Closed => ApiError::unavailable("the service is shutting down"),
            other => ApiError::internal(format!("storage error: {other}")),
        }
    }
}

/// 503 for a store that cannot take writes (or be read) until it has reopened itself:
/// `disk_full` when its disk is full, `storage_unavailable` for another I/O error, with a
/// `Retry-After` of when the store next tries to reopen.
fn store_fault(fault: Fault, e: &StoreError) -> ApiError {
    let retry = e.retry_after().unwrap_or(Duration::ZERO);
    let what = if matches!(e, StoreError::Unavailable(_)) {
        "the store cannot be read right now"
    } else {
        "the change was not saved"
    };
    let (code, message) = match fault {
        Fault::DiskFull => (
            "disk_full",
            format!(
                "the disk is full: {what}. Free space on the disk holding the service's data;                  writes resume by themselves, without a restart"
            ),
        ),
        Fault::Io => (
            "storage_unavailable",
            format!(
                "the store had an I/O error: {what}. The service is reopening it and resumes                  by itself"
            ),
        ),
    };
    ApiError {
        retry_after: Some(retry),
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

/// A `Retry-After` value: whole seconds (RFC 9110 §10.2.3), rounded up, at least 1.
#[must_use]
pub fn retry_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterError;

    #[test]
    fn cluster_errors_map_to_503_409_and_500() {
        let e = ApiError::from(ClusterError::Unavailable("etcdserver: no leader".into()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, "cluster_unavailable");
        assert!(e.message.contains("no leader"), "{}", e.message);
        assert!(e.retry_after.is_some());
        assert_eq!(
            ApiError::from(ClusterError::NoLease).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let e = ApiError::from(ClusterError::NoSpace(
            "etcdserver: mvcc: database space exceeded".into(),
        ));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.message.contains("out of space"), "{}", e.message);
        assert_eq!(e.retry_after, Some(Duration::from_secs(60)));
        assert_eq!(
            ApiError::from(ClusterError::NotLeader(7)).status,
            StatusCode::CONFLICT
        );
        assert_eq!(
            ApiError::from(ClusterError::Refused("permission denied".into())).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
