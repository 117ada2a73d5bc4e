//! Browser safety in every mode: cross-site changes and foreign `Host` names (DNS
//! rebinding) are refused, with or without `[auth]`, while clients that are not browsers
//! (mozharness-style, no `Origin`) work unchanged; sign-in makes a server-side session, not
//! a cookie holding the token; and the small ones (renew with 0, duplicate JSON keys,
//! `nosniff`).

use reqwest::Method;
use serde_json::{Value, json};

use crate::auth::{ADMIN_TOKEN, config_with_auth};
use crate::support::{TWO_DEVICES, TestServer, decode};

/// A call with extra headers: status and JSON body.
async fn call(
    s: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut req = s.http.request(method, s.url(path)).body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    decode(req.send().await.expect("request")).await
}

async fn comments(s: &TestServer) -> Value {
    s.get("/api/device/panda-1/details/").await.1["comments"].clone()
}

/// Open mode (no `[auth]`): a web page on another site posting `text/plain` (a "simple"
/// request: no CORS preflight) cannot change anything; the service's own pages and
/// non-browser clients can.
#[tokio::test]
async fn open_mode_refuses_cross_site_changes() {
    let s = TestServer::start(TWO_DEVICES).await;
    assert!(s.app.auth_open());
    let body = r#"{"comments": "pwned"}"#;
    let path = "/api/device/panda-1/set-comments/";
    for headers in [
        &[
            ("origin", "http://evil.example"),
            ("content-type", "text/plain"),
        ][..],
        &[("origin", "null"), ("content-type", "text/plain")],
        &[("sec-fetch-site", "cross-site")],
        &[
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
    ] {
        let (status, v) = call(&s, Method::POST, path, headers, body).await;
        assert_eq!(status, 403, "{headers:?}: {v}");
        assert_eq!(v["code"], "cross_site", "{v}");
    }
    // PUT and DELETE too, and a GET that changes state (an <img src> on another site).
    let (status, _) = call(
        &s,
        Method::DELETE,
        "/api/device/panda-2/",
        &[("origin", "http://evil.example")],
        "",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &s,
        Method::GET,
        "/api/device/panda-1/power-off/",
        &[("sec-fetch-site", "cross-site")],
        "",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(comments(&s).await, Value::Null, "nothing changed");
    let (_, d) = s.get("/api/device/panda-2/details/").await;
    assert_eq!(d["retired"], false);
    // The service's own page: same origin.
    let own = format!("http://{}", s.addr);
    let (status, v) = call(
        &s,
        Method::POST,
        path,
        &[
            ("origin", own.as_str()),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/json"),
        ],
        r#"{"comments": "from the page"}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(comments(&s).await, "from the page");
    // Reading cross-site is not refused (the browser keeps the answer from the other site).
    let (status, _) = call(
        &s,
        Method::GET,
        "/api/device/list/",
        &[("sec-fetch-site", "cross-site")],
        "",
    )
    .await;
    assert_eq!(status, 200);
}

/// A mozharness-style client in open mode: Python requests' headers, JSON bodies, no
/// `Origin`, no token: check out, poll, renew, return, as before.
#[tokio::test]
async fn mozharness_style_clients_work_unchanged_in_open_mode() {
    let s = TestServer::start(TWO_DEVICES).await;
    let ua = [
        ("user-agent", "python-requests/2.31.0"),
        ("accept", "*/*"),
        ("content-type", "application/json"),
    ];
    let (status, v) = call(
        &s,
        Method::POST,
        "/api/device/any/request/",
        &ua,
        &json!({"assignee": "mozharness", "duration": 3600, "image": "b2g", "b2gbase": "http://x/", "environment": "prod"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let id = v["request"]["id"].as_u64().expect("id");
    let (status, v) = call(
        &s,
        Method::GET,
        &format!("/api/request/{id}/status/"),
        &ua,
        "",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = call(
        &s,
        Method::POST,
        &format!("/api/request/{id}/renew/"),
        &ua,
        r#"{"duration": 600}"#,
    )
    .await;
    assert_eq!(status, 204, "{v}");
    let (status, v) = call(
        &s,
        Method::POST,
        &format!("/api/request/{id}/return/"),
        &ua,
        "",
    )
    .await;
    assert_eq!(status, 204, "{v}");
    let (status, v) = call(
        &s,
        Method::POST,
        "/api/device/panda-1/set-comments/",
        &ua,
        r#"{"comments": "by a script"}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // An HTTP/1.0 client without Host is not a browser either.
    let reply = crate::hostile::raw(s.addr, "GET /api/device/list/ HTTP/1.0\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
}

/// DNS rebinding: a foreign name in `Host` is refused (421) in both modes; the service's
/// names (listen address, localhost on loopback, `server.name`, aliases) work.
#[tokio::test]
async fn foreign_host_names_are_refused() {
    for config in [
        format!("[server]\nname = \"rack1.lab\"\nhost_aliases = [\"mozpool\"]\n{TWO_DEVICES}"),
        format!(
            "[server]\nname = \"rack1.lab\"\nhost_aliases = [\"mozpool\"]\n{}",
            config_with_auth("read")
        ),
    ] {
        let s = TestServer::start(&config).await;
        let port = s.addr.port();
        for host in [
            "evil.example",
            "evil.example:80",
            "rebind.attacker.test:{port}",
        ] {
            let host = host.replace("{port}", &port.to_string());
            let (status, v) =
                call(&s, Method::GET, "/api/device/list/", &[("host", &host)], "").await;
            assert_eq!(status, 421, "{host}: {v}");
            assert_eq!(v["code"], "misdirected_request");
            assert!(
                v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("host_aliases")),
                "{v}"
            );
            // A change too, even with a token.
            let (status, _) = call(
                &s,
                Method::POST,
                "/api/device/panda-1/set-comments/",
                &[
                    ("host", &host),
                    ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
                ],
                r#"{"comments": "rebound"}"#,
            )
            .await;
            assert_eq!(status, 421);
        }
        for host in [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("rack1.lab:{port}"),
            format!("mozpool:{port}"),
            "RACK1.LAB.".to_owned(),
        ] {
            let (status, v) =
                call(&s, Method::GET, "/api/device/list/", &[("host", &host)], "").await;
            assert_eq!(status, 200, "{host}: {v}");
        }
        assert_eq!(comments(&s).await, Value::Null);
        let _ = s.stop().await;
    }
}

/// The set-cookie values of a response.
fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

/// Sign-in makes a server-side session: the cookie holds a random id, never the token;
/// sign-out ends the session on the server (a copied cookie is dead); cross-site sign-out is
/// refused; the old token cookie is no longer accepted.
#[tokio::test]
async fn sign_in_makes_a_session_not_a_token_cookie() {
    let s = TestServer::start(&config_with_auth("none")).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = client
        .post(s.url("/ui/signin/"))
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status(), 303);
    let cookies = set_cookies(&r);
    let session = cookies
        .iter()
        .find(|c| c.starts_with("mozpool_session="))
        .expect("session cookie")
        .clone();
    assert!(!session.contains(ADMIN_TOKEN), "{session}");
    assert!(
        session.contains("HttpOnly")
            && session.contains("SameSite=Strict")
            && session.contains("Max-Age=43200"),
        "{session}"
    );
    assert!(!session.contains("Secure"), "plain http: {session}");
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("mozpool_token=;") && c.contains("Max-Age=0")),
        "the old token cookie is cleared: {cookies:?}"
    );
    assert_eq!(s.app.sessions.len(), 1);
    let pair = session.split(';').next().expect("pair").to_owned();
    let page = |cookie: String| {
        let client = client.clone();
        let url = s.url("/ui/");
        async move {
            client
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .expect("page")
                .status()
                .as_u16()
        }
    };
    assert_eq!(page(pair.clone()).await, 200, "signed in");
    // A cookie holding the token itself (what earlier versions set) signs nobody in.
    assert_eq!(page(format!("mozpool_token={ADMIN_TOKEN}")).await, 303);
    assert_eq!(page("mozpool_session=0123abcd".into()).await, 303);
    // Sign-out from another site is refused and the session lives on.
    let r = client
        .post(s.url("/ui/signout/"))
        .header("cookie", &pair)
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("signout");
    assert_eq!(r.status(), 403);
    assert_eq!(page(pair.clone()).await, 200);
    // Sign-out ends the session on the server: the same cookie, replayed, is dead.
    let own = format!("http://{}", s.addr);
    let r = client
        .post(s.url("/ui/signout/"))
        .header("cookie", &pair)
        .header("origin", &own)
        .send()
        .await
        .expect("signout");
    assert_eq!(r.status(), 303);
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("mozpool_session=;") && c.contains("Max-Age=0"))
    );
    assert_eq!(s.app.sessions.len(), 0);
    assert_eq!(page(pair).await, 303, "the replayed cookie is signed out");
}

/// Behind https (`public_url`), the session cookie is `Secure`.
#[tokio::test]
async fn session_cookie_is_secure_behind_https() {
    let s = TestServer::start(&format!(
        "[server]\npublic_url = \"https://mozpool.lab.example\"\n{}",
        config_with_auth("read")
    ))
    .await;
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(s.url("/ui/signin/"))
        .header("origin", "https://mozpool.lab.example")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status(), 303);
    let cookies = set_cookies(&r);
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("mozpool_session=") && c.contains("; Secure")),
        "{cookies:?}"
    );
}

/// Renewing with `duration` 0 is refused like creating with it, and the request stays open.
#[tokio::test]
async fn renew_with_zero_duration_is_refused() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (status, v) = s
        .post(
            "/api/device/any/request/",
            json!({"assignee": "ci", "duration": 600, "image": "b2g", "b2gbase": "http://x/"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["request"]["id"].as_u64().expect("id");
    let (status, before) = s.get(&format!("/api/request/{id}/details/")).await;
    assert_eq!(status, 200);
    for duration in [json!(0), json!("0"), json!(-5)] {
        let (status, v) = s
            .post(
                &format!("/api/request/{id}/renew/"),
                json!({ "duration": duration }),
            )
            .await;
        assert_eq!(status, 400, "{duration}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("positive")),
            "{v}"
        );
    }
    let (_, after) = s.get(&format!("/api/request/{id}/details/")).await;
    assert_eq!(after["state"], before["state"], "still open: {after}");
    assert_eq!(after["expires"], before["expires"]);
    let (status, _) = s
        .post(
            &format!("/api/request/{id}/renew/"),
            json!({"duration": 60}),
        )
        .await;
    assert_eq!(status, 204);
}

/// Duplicate JSON keys are refused by the shared body parser, also where a handler reads a
/// free-form object (registration, request creation); the same bodies without the duplicate
/// are accepted.
#[tokio::test]
async fn duplicate_json_keys_are_refused_everywhere() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (status, v) = call(
        &s,
        Method::POST,
        "/api/device/register/",
        &[],
        r#"{"NAME": "dup-1", "IPADDR": "127.0.0.1", "NAME": "panda-1"}"#,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("duplicate key")),
        "{v}"
    );
    let (_, list) = s.get("/api/device/list/").await;
    assert_eq!(list["devices"], json!(["panda-1", "panda-2"]), "{list}");
    let (status, v) = call(
        &s,
        Method::POST,
        "/api/device/any/request/",
        &[],
        r#"{"assignee": "ci", "duration": 600, "duration": 0, "image": "b2g", "b2gbase": "http://x/"}"#,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = call(
        &s,
        Method::POST,
        "/api/device/any/request/",
        &[],
        r#"{"assignee": "ci", "duration": 600, "image": "b2g", "b2gbase": "http://x/"}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = call(
        &s,
        Method::PUT,
        "/api/image/dup/",
        &[],
        r#"{"steps": [{"partition": "boot", "file": "a.img", "file": "b.img"}]}"#,
    )
    .await;
    assert_eq!(status, 400, "{v}");
}

/// JSON answers (and error answers) carry `X-Content-Type-Options: nosniff`.
#[tokio::test]
async fn json_answers_are_nosniff() {
    let s = TestServer::start(TWO_DEVICES).await;
    for path in [
        "/api/version/",
        "/api/device/list/",
        "/api/device/nope/details/",
    ] {
        let r = s.http.get(s.url(path)).send().await.expect("get");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .is_ok_and(|t| t.starts_with("application/json")),
            "{path}"
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
    }
}
