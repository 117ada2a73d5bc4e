//! HTTP error cases: every failure is a JSON body with the right status.

use reqwest::Method;
use serde_json::json;

use crate::support::{TWO_DEVICES, TestServer};

#[tokio::test]
async fn unknown_path_is_404_json() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (status, body) = s.get("/api/nothing/here/").await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("/api/nothing/here/")),
        "{body}"
    );
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let s = TestServer::start(TWO_DEVICES).await;
    let r = s
        .http
        .post(s.url("/api/device/list/"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 405);
    let allow = r
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(allow.contains("GET"), "{allow}");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["code"], "method_not_allowed");
}

#[tokio::test]
async fn missing_slash_redirects_with_query() {
    let s = TestServer::start(TWO_DEVICES).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = client
        .get(s.url("/api/device/list?details=1"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/api/device/list/?details=1");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let s = TestServer::start(TWO_DEVICES).await;
    let r = s
        .http
        .post(s.url("/api/device/panda-1/set-comments/"))
        .body("{\"comments\": ")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid JSON")),
        "{body}"
    );
    // Wrong type and unknown field are named.
    let (status, body) = s
        .post("/api/device/panda-1/set-comments/", json!({"comments": 5}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s
        .post("/api/device/panda-1/set-comments/", json!({"comment": "x"}))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("comment")),
        "{body}"
    );
    // Nothing was stored.
    let (_, d) = s.get("/api/device/panda-1/details/").await;
    assert_eq!(d["comments"], serde_json::Value::Null);
}

#[tokio::test]
async fn oversized_body_is_413_and_nothing_stored() {
    let s = TestServer::start(TWO_DEVICES).await;
    let big = "x".repeat(70 * 1024);
    let (status, body) = s
        .post(
            "/api/device/panda-1/set-comments/",
            json!({ "comments": big }),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "payload_too_large");
    // Also when the body is chunked, without a Content-Length.
    let reply = raw_chunked_post(s.addr, "/api/device/panda-1/set-comments/", &big).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    let (_, d) = s.get("/api/device/panda-1/details/").await;
    assert_eq!(d["comments"], serde_json::Value::Null);
}

async fn raw_chunked_post(addr: std::net::SocketAddr, path: &str, payload: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.expect("head");
    for chunk in payload.as_bytes().chunks(4096) {
        let frame = format!("{:x}\r\n", chunk.len());
        if sock.write_all(frame.as_bytes()).await.is_err()
            || sock.write_all(chunk).await.is_err()
            || sock.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn unknown_objects_are_404_and_bad_names_400() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (status, body) = s.get("/api/device/nope/status/").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = s.get("/api/device/nope/log/").await;
    assert_eq!(status, 404);
    let (status, _) = s
        .post("/api/device/nope/set-comments/", json!({"comments": "x"}))
        .await;
    assert_eq!(status, 404);
    let (status, body) = s.get("/api/device/bad%20name/status/").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = s.send(Method::DELETE, "/api/image/nope/", None).await;
    assert_eq!(status, 404);
    let (status, body) = s.get("/api/log/?limit=abc").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("limit")),
        "{body}"
    );
}

#[tokio::test]
async fn every_call_is_in_the_audit_log() {
    let s = TestServer::start(TWO_DEVICES).await;
    let _ = s.get("/api/device/panda-1/status/").await;
    let _ = s.get("/api/nothing/").await;
    // Detached audit writes commit with the next batch; a write forces one.
    let _ = s
        .post(
            "/api/device/panda-2/set-comments/",
            json!({"comments": "c"}),
        )
        .await;
    let (_, log) = s.get("/api/log/?subject=api&limit=10").await;
    let messages: Vec<&str> = log["log"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("GET /api/device/panda-1/status/ -> 200")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("GET /api/nothing/ -> 404")),
        "{messages:?}"
    );
    // Calls that change a device are in its history too; reads are not (a poller must not
    // bury the device's own log).
    // (The audit entry is written after the response, with the next commit.)
    let mut found = false;
    for _ in 0..100 {
        let (_, dlog) = s.get("/api/log/?device=panda-2").await;
        let rows = dlog["log"].as_array().expect("rows").clone();
        if rows.iter().any(|r| {
            r["source"] == "api" && r["message"].as_str().is_some_and(|m| m.starts_with("POST"))
        }) {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(found, "the POST is not in panda-2's history");
    let (_, dlog) = s.get("/api/log/?device=panda-1").await;
    let rows = dlog["log"].as_array().expect("rows");
    assert!(!rows.iter().any(|r| r["source"] == "api"), "{rows:?}");
}
