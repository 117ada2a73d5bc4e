//! Access control end to end: each role allowed and refused where it should be, 401 versus
//! 403, old-style `http://name:token@host/` clients, the audit trail naming the token, and
//! the open (no `[auth]`) mode saying so.

use mozpool::cli::client::{ApiClient, ClientError};
use mozpool::http::auth::token_digest_hex;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TWO_DEVICES, TestServer};

pub const READ_TOKEN: &str = "read-token-0123456789";
pub const REQUEST_TOKEN: &str = "request-token-0123456789";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// [`TWO_DEVICES`] with `[auth]` and three tokens (`viewer`, `ci`, `ops`).
pub fn config_with_auth(anonymous: &str) -> String {
    format!(
        "{TWO_DEVICES}\n[auth]\nanonymous = \"{anonymous}\"\n\n\
         [[auth.tokens]]\nname = \"viewer\"\nrole = \"read\"\nsha256 = \"{}\"\n\n\
         [[auth.tokens]]\nname = \"ci\"\nrole = \"request\"\nsha256 = \"{}\"\n\n\
         [[auth.tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
        token_digest_hex(READ_TOKEN),
        token_digest_hex(REQUEST_TOKEN),
        token_digest_hex(ADMIN_TOKEN),
    )
}

/// Status, `WWW-Authenticate` values and body of one call.
async fn call(
    s: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Vec<String>, Value) {
    let mut req = s.http.request(method, s.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let r = req.send().await.expect("request");
    let challenges = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let (status, body) = crate::support::decode(r).await;
    (status, challenges, body)
}

/// (GET list, POST set-comments, PUT device) statuses for a caller.
async fn matrix(s: &TestServer, token: Option<&str>) -> [u16; 4] {
    let version = call(s, Method::GET, "/api/version/", token, None).await.0;
    let list = call(s, Method::GET, "/api/device/list/", token, None)
        .await
        .0;
    let comments = call(
        s,
        Method::POST,
        "/api/device/panda-1/set-comments/",
        token,
        Some(json!({"comments": "x"})),
    )
    .await
    .0;
    let put = call(
        s,
        Method::PUT,
        "/api/image/new-image/",
        token,
        Some(json!({})),
    )
    .await
    .0;
    [version, list, comments, put]
}

#[tokio::test]
async fn each_role_allowed_and_refused() {
    let s = TestServer::start(&config_with_auth("none")).await;
    // anonymous = "none": only version/health.
    assert_eq!(matrix(&s, None).await, [200, 401, 401, 401]);
    assert_eq!(s.get("/api/health/").await.0, 200);
    assert_eq!(matrix(&s, Some(READ_TOKEN)).await, [200, 200, 403, 403]);
    assert_eq!(matrix(&s, Some(REQUEST_TOKEN)).await, [200, 200, 403, 403]);
    // Admin: comments 200, image created 201.
    assert_eq!(matrix(&s, Some(ADMIN_TOKEN)).await, [200, 200, 200, 201]);
    let _ = s.stop().await;

    for anonymous in ["read", "request"] {
        let s = TestServer::start(&config_with_auth(anonymous)).await;
        assert_eq!(matrix(&s, None).await, [200, 200, 401, 401], "{anonymous}");
        let _ = s.stop().await;
    }
}

#[tokio::test]
async fn errors_are_401_with_challenge_and_403_without() {
    let s = TestServer::start(&config_with_auth("read")).await;
    // A wrong token is 401 even where anonymous callers are allowed.
    let (status, challenges, body) =
        call(&s, Method::GET, "/api/device/list/", Some("wrong"), None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthorized");
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer")),
        "{challenges:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic")),
        "{challenges:?}"
    );
    // Anonymous trying to write: 401 with a hint.
    let (status, challenges, body) =
        call(&s, Method::DELETE, "/api/device/panda-1/", None, None).await;
    assert_eq!(status, 401);
    assert!(!challenges.is_empty());
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("admin")),
        "{body}"
    );
    // A known token with too low a role: 403, no challenge, names the roles.
    let (status, challenges, body) = call(
        &s,
        Method::DELETE,
        "/api/device/panda-1/",
        Some(REQUEST_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert!(challenges.is_empty(), "{challenges:?}");
    assert_eq!(body["code"], "forbidden");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("ci") && e.contains("request") && e.contains("admin")),
        "{body}"
    );
    // Malformed headers are 401 too.
    for h in ["Bearer", "Basic !!!", "Digest abc", "Token x"] {
        let r = s
            .http
            .get(s.url("/api/device/list/"))
            .header("authorization", h)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 401, "{h}");
    }
    // Nothing was retired.
    let (_, d) = s.get("/api/device/panda-1/details/").await;
    assert_eq!(d["retired"], false, "{d}");
}

#[tokio::test]
async fn old_style_url_credentials_work() {
    let s = TestServer::start(&config_with_auth("none")).await;
    // reqwest, like Python requests, sends URL credentials as Basic.
    let url = format!(
        "http://ops:{ADMIN_TOKEN}@{}/api/device/panda-1/set-comments/",
        s.addr
    );
    let r = s
        .http
        .post(url)
        .body(json!({"comments": "via basic"}).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    // A raw Basic header with user "ops" and the token as password.
    let raw = crate::hostile::raw(
        s.addr,
        &format!(
            "GET /api/device/list/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
            base64(&format!("viewer:{READ_TOKEN}"))
        ),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    // A wrong password is 401.
    let raw = crate::hostile::raw(
        s.addr,
        &format!(
            "GET /api/device/list/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
            base64("viewer:guess")
        ),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    // The CLI's client: URL credentials, and --token.
    let client = ApiClient::new(&format!("http://ops:{ADMIN_TOKEN}@{}", s.addr));
    let (status, _) = client
        .call(
            Method::POST,
            "/api/device/panda-2/set-comments/",
            Some(&json!({"comments": "cli"})),
        )
        .await
        .expect("cli call");
    assert_eq!(status, 200);
    let client = ApiClient::new(&format!("http://{}", s.addr)).with_token(Some(READ_TOKEN));
    assert!(client.get("/api/device/list/").await.is_ok());
    let anonymous = ApiClient::new(&format!("http://{}", s.addr));
    assert!(matches!(
        anonymous.get("/api/device/list/").await,
        Err(ClientError::Status { status, .. }) if status == 401
    ));
    let (_, d) = s.send(Method::GET, "/api/version/", None).await;
    assert_eq!(d["auth"], "enabled");
    assert!(d.get("warning").is_none(), "{d}");
}

#[tokio::test]
async fn audit_log_names_the_token() {
    let s = TestServer::start(&config_with_auth("read")).await;
    let (status, _, _) = call(
        &s,
        Method::POST,
        "/api/device/panda-1/set-comments/",
        Some(ADMIN_TOKEN),
        Some(json!({"comments": "audited"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = call(
        &s,
        Method::DELETE,
        "/api/device/panda-2/",
        Some(REQUEST_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 403);
    // Force the detached audit writes to commit.
    let (_, _, _) = call(
        &s,
        Method::PUT,
        "/api/environment/staging/",
        Some(ADMIN_TOKEN),
        Some(json!({})),
    )
    .await;
    let (_, log) = s.get("/api/log/?subject=api&limit=20").await;
    let rows = log["log"].as_array().expect("rows").clone();
    let find = |prefix: &str| {
        rows.iter()
            .find(|r| r["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
            .map(|r| r["actor"].clone())
    };
    assert_eq!(
        find("POST /api/device/panda-1/set-comments/ -> 200"),
        Some(json!("ops")),
        "{rows:?}"
    );
    assert_eq!(
        find("DELETE /api/device/panda-2/ -> 403"),
        Some(json!("ci")),
        "{rows:?}"
    );
}

#[tokio::test]
async fn no_auth_section_is_open_and_says_so() {
    let s = TestServer::start(TWO_DEVICES).await;
    assert!(s.app.auth_open());
    let (status, v) = s.get("/api/version/").await;
    assert_eq!(status, 200);
    assert_eq!(v["auth"], "open");
    assert!(
        v["warning"].as_str().is_some_and(|w| w.contains("[auth]")),
        "{v}"
    );
    // Everyone is an admin, whatever they send.
    let (status, _) = s.put("/api/image/anything/", json!({})).await;
    assert_eq!(status, 201);
    let (status, _, _) = call(
        &s,
        Method::DELETE,
        "/api/image/anything/",
        Some("some-token"),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[test]
fn config_refuses_bad_auth() {
    use std::path::Path;

    use mozpool::app::config::Config;
    let parse = |t: &str| Config::parse(Path::new("t.toml"), t).map(|_| ());
    assert!(parse(&config_with_auth("read")).is_ok());
    let e = parse("[auth]\nanonymous = \"admin\"\n").expect_err("admin");
    assert!(e.to_string().contains("t.toml:2"), "{e}");
    assert!(parse("[auth]\nanonymous = \"root\"\n").is_err());
    let e = parse("[auth]\n[[auth.tokens]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"secret\"\n")
        .expect_err("not a digest");
    assert!(e.to_string().contains("t.toml:5"), "{e}");
    assert!(
        parse("[auth]\n[[auth.tokens]]\nname = \"a\"\nrole = \"none\"\nsha256 = \"secret\"\n")
            .is_err()
    );
    assert!(parse("[auth]\nanonymus = \"read\"\n").is_err());
    let d = token_digest_hex("x");
    let twice = format!(
        "[[auth.tokens]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"{d}\"\n[[auth.tokens]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"{}\"\n",
        token_digest_hex("y")
    );
    assert!(parse(&twice).is_err());
}

fn base64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let v = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[((v >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn request_and_hardware_calls_need_their_roles() {
    let s = TestServer::start(&config_with_auth("read")).await;
    let ask = json!({"assignee": "ci", "duration": 60, "image": "b2g", "b2gbase": "http://x/"});
    // Checking out a device: request role.
    for (token, want) in [(None, 401), (Some(READ_TOKEN), 403)] {
        let (status, _, body) = call(
            &s,
            Method::POST,
            "/api/device/any/request/",
            token,
            Some(ask.clone()),
        )
        .await;
        assert_eq!(status, want, "{token:?} {body}");
    }
    let (status, _, body) = call(
        &s,
        Method::POST,
        "/api/device/any/request/",
        Some(REQUEST_TOKEN),
        Some(ask.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = call(&s, Method::GET, "/api/request/list/", None, None).await;
    assert_eq!(status, 200);
    // Power and state: admin only.
    for path in [
        "/api/device/panda-1/power-cycle/",
        "/api/device/panda-1/power-off/",
        "/api/device/panda-1/event/please_self_test/",
        "/api/device/panda-1/state-change/new/to/ready/",
    ] {
        let (status, _, _) = call(&s, Method::POST, path, Some(REQUEST_TOKEN), None).await;
        assert_eq!(status, 403, "{path}");
        let (status, _, _) = call(&s, Method::POST, path, None, None).await;
        assert_eq!(status, 401, "{path}");
        let (status, _, body) = call(&s, Method::POST, path, Some(ADMIN_TOKEN), None).await;
        assert!(status != 401 && status != 403, "{path} {status} {body}");
    }
    // The old GET form of power-off is no back door.
    let (status, _, _) = call(
        &s,
        Method::GET,
        "/api/device/panda-1/power-off/",
        Some(READ_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 403);
}

/// Only the token that made a request, or an admin, may renew, return or close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_or_an_admin_manages_a_request() {
    let other = "other-ci-token-0123456789";
    let config = format!(
        "{}\n[[auth.tokens]]\nname = \"other-ci\"\nrole = \"request\"\nsha256 = \"{}\"\n",
        config_with_auth("read"),
        token_digest_hex(other)
    );
    let config = config.replace(TWO_DEVICES, "");
    let s = TestServer::start_rack(2, &config).await;
    s.wait_all_ready(30).await;
    let body = json!({"assignee": "ci", "duration": 600, "image": "android"});
    let (status, _, created) = call(
        &s,
        Method::POST,
        "/api/device/any/request/",
        Some(REQUEST_TOKEN),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let id = created["request"]["id"].as_u64().expect("id");
    let renew = json!({"duration": 60});
    // Another request-role token may not touch it.
    for (method, path, b) in [
        (
            Method::POST,
            format!("/api/request/{id}/renew/"),
            Some(renew.clone()),
        ),
        (Method::POST, format!("/api/request/{id}/return/"), None),
        (
            Method::POST,
            format!("/api/request/{id}/event/close/"),
            None,
        ),
    ] {
        let (status, _, b) = call(&s, method, &path, Some(other), b).await;
        assert_eq!(status, 403, "{path}: {b}");
        assert!(b["error"].as_str().is_some_and(|e| e.contains("ci")), "{b}");
    }
    // Anonymous callers (read role here) must sign in first.
    let (status, _, _) = call(
        &s,
        Method::POST,
        &format!("/api/request/{id}/return/"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    // The owner may.
    let (status, _, _) = call(
        &s,
        Method::POST,
        &format!("/api/request/{id}/renew/"),
        Some(REQUEST_TOKEN),
        Some(renew),
    )
    .await;
    assert_eq!(status, 204);
    // So may an admin, for someone else's request.
    let (status, _, created) = call(
        &s,
        Method::POST,
        "/api/device/any/request/",
        Some(other),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let id2 = created["request"]["id"].as_u64().expect("id");
    let (status, _, _) = call(
        &s,
        Method::POST,
        &format!("/api/request/{id2}/return/"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _, _) = call(
        &s,
        Method::POST,
        &format!("/api/request/{id}/return/"),
        Some(REQUEST_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 204);
    // The log names who did what.
    let (_, _, log) = call(
        &s,
        Method::GET,
        &format!("/api/request/{id2}/log/"),
        Some(READ_TOKEN),
        None,
    )
    .await;
    assert!(log.to_string().contains("by ops"), "{log}");
}

/// The web page: sign in with a token (HttpOnly, SameSite=Strict cookie), CSRF-safe actions,
/// read-only or closed when signed out.
#[tokio::test]
async fn web_sign_in_cookie_and_csrf() {
    let s = TestServer::start(&config_with_auth("none")).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // Signed out with anonymous = none: the pages send you to sign in.
    let r = client.get(s.url("/ui/")).send().await.expect("get");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/signin/");
    let r = client.get(s.url("/ui/signin/")).send().await.expect("form");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("html").contains("name=\"token\""));
    // A wrong token: 401 with the form again, no cookie.
    let r = client
        .post(s.url("/ui/signin/"))
        .body("token=nope")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    // Another site's form may not sign a browser in.
    let r = client
        .post(s.url("/ui/signin/"))
        .header("origin", "http://evil.example")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    // The right token: a cookie that scripts and other sites cannot use.
    let r = client
        .post(s.url("/ui/signin/"))
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("pair").to_owned();
    let page = client
        .get(s.url("/ui/device/panda-1/"))
        .header("cookie", &pair)
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("Signed in as <strong>ops</strong>"),
        "signed in"
    );
    assert!(
        !html.contains("<fieldset class=\"plain\" disabled>"),
        "an admin gets live controls"
    );
    // Changes with the cookie need the pages' header (a cross-site form cannot send it).
    let r = client
        .post(s.url("/api/device/panda-1/set-comments/"))
        .header("cookie", &pair)
        .body(r#"{"comments": "x"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let r = client
        .post(s.url("/api/device/panda-1/set-comments/"))
        .header("cookie", &pair)
        .header("x-requested-with", "mozpool")
        .body(r#"{"comments": "x"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    // Signing out clears the cookie.
    let r = client
        .post(s.url("/ui/signout/"))
        .header("cookie", &pair)
        .send()
        .await
        .expect("signout");
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .expect("cookie")
            .contains("Max-Age=0")
    );
}

#[tokio::test]
async fn signed_out_pages_are_read_only_where_anonymous_may_read() {
    let s = TestServer::start(&config_with_auth("read")).await;
    let html = s
        .http
        .get(s.url("/ui/device/panda-1/"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(
        html.contains("<fieldset class=\"plain\" disabled>"),
        "controls disabled"
    );
    assert!(html.contains("href=\"/ui/signin/\""), "a sign-in link");
    assert!(
        !html.contains("Open access"),
        "no open-access banner when auth is on"
    );
    let html = s
        .http
        .get(s.url("/ui/requests/"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(html.contains("data-can-request=\"no\""));
}
