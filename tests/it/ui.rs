//! The web page over real HTTP: every page answers HTML, `/` redirects, unknown devices get
//! an HTML 404, static files are cached by hash with ETag/304, the pool feed long-polls, and
//! data from clients comes out escaped. (The browser test is `ui_browser.rs`.)

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{TWO_DEVICES, TestServer};

async fn page(s: &TestServer, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let r = s.http.get(s.url(path)).send().await.expect("GET");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.text().await.expect("body"), headers)
}

#[tokio::test]
async fn pages_render_and_escape() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (st, _) = s
        .post(
            "/api/device/panda-1/set-comments/",
            json!({ "comments": "<script>alert(1)</script>" }),
        )
        .await;
    assert_eq!(st, 200);
    for path in [
        "/ui/",
        "/ui/device/panda-1/",
        "/ui/requests/",
        "/ui/requests/?closed=1",
        "/ui/relays/",
    ] {
        let (st, body, headers) = page(&s, path).await;
        assert_eq!(st, 200, "{path}: {body}");
        assert!(
            headers["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with("text/html"),
            "{path}"
        );
        assert!(headers.contains_key("content-security-policy"), "{path}");
        assert!(body.contains("id=\"auth-banner\""), "{path}: banner slot");
        assert!(
            !body.contains("<script>alert"),
            "{path} let a script through"
        );
    }
    let (_, device, _) = page(&s, "/ui/device/panda-1/").await;
    assert!(device.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"));
    let (_, pool, _) = page(&s, "/ui/").await;
    assert!(pool.contains("panda-1") && pool.contains("panda-2"));

    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(s.url("/"))
        .send()
        .await
        .expect("GET /");
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/ui/");

    let (st, body, headers) = page(&s, "/ui/device/nope/").await;
    assert_eq!(st, 404);
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    assert!(body.contains("no device named nope"));
    s.stop().await;
}

#[tokio::test]
async fn static_files_are_hashed_and_revalidated() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (_, pool, _) = page(&s, "/ui/").await;
    let start = pool.find("/static/").expect("an asset link");
    let end = start + pool[start..].find('"').expect("end of link");
    let css = pool[start..end].replace("app.js", "app.css");
    let r = s.http.get(s.url(&css)).send().await.expect("GET css");
    assert_eq!(r.status().as_u16(), 200, "{css}");
    let etag = r.headers()["etag"].clone();
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .expect("ascii")
            .contains("immutable")
    );
    let r = s
        .http
        .get(s.url(&css))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("conditional GET");
    assert_eq!(r.status().as_u16(), 304);
    let (st, _, _) = page(&s, "/static/00/../Cargo.toml").await;
    assert_eq!(st, 404);
    s.stop().await;
}

#[tokio::test]
async fn overview_long_polls_until_a_change() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (st, v) = s.get("/api/pool/overview/").await;
    assert_eq!(st, 200);
    assert_eq!(v["total"], 2);
    assert_eq!(v["devices"][0]["name"], "panda-1");
    let mut version = v["version"].as_u64().expect("version");
    // Nothing changes: the poll waits about `wait` seconds, then answers the same version.
    // (The API answers while the Lifeguard is still resuming the devices after the start,
    // and each resumed device is a change: poll until that has settled.)
    let mut settled = false;
    for _ in 0..10 {
        let t = Instant::now();
        let (_, same) = s
            .get(&format!("/api/pool/overview/?since={version}&wait=1"))
            .await;
        if same["version"] == version {
            assert!(t.elapsed() >= Duration::from_millis(900));
            settled = true;
            break;
        }
        version = same["version"].as_u64().expect("version");
    }
    assert!(settled, "the overview kept changing with nothing happening");
    // A device transition ends the wait early.
    let poll = {
        let url = s.url(&format!("/api/pool/overview/?since={version}&wait=30"));
        let http = s.http.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let v: serde_json::Value = http
                .get(url)
                .send()
                .await
                .expect("poll")
                .json()
                .await
                .expect("json");
            (t.elapsed(), v)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, state) = s.get("/api/device/panda-2/state/").await;
    let from = state["state"].as_str().expect("state").to_owned();
    let (st, body) = s
        .post(
            &format!("/api/device/panda-2/state-change/{from}/to/locked_out/"),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let (elapsed, v) = poll.await.expect("poll task");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_ne!(v["version"], version);
    let row = &v["devices"][1];
    assert_eq!(row["state"], "locked_out");
    assert_eq!(row["look"]["class"], "out");
    // Non-state changes (comments, environment) wake the feed too.
    let version = v["version"].as_u64().expect("version");
    let poll = {
        let url = s.url(&format!("/api/pool/overview/?since={version}&wait=30"));
        let http = s.http.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let v: serde_json::Value = http
                .get(url)
                .send()
                .await
                .expect("poll")
                .json()
                .await
                .expect("json");
            (t.elapsed(), v)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (st, _) = s
        .post(
            "/api/device/panda-1/set-environment/",
            json!({ "environment": "staging" }),
        )
        .await;
    assert_eq!(st, 200);
    let (elapsed, v) = poll.await.expect("poll task");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(v["devices"][0]["environment"], "staging");
    // The feed and the pages are not written to the audit log.
    let (_, log) = s.get("/api/log/?subject=api&limit=1000").await;
    let rows = log["log"].as_array().expect("rows");
    assert!(rows.iter().all(|r| {
        !r["message"]
            .as_str()
            .unwrap_or_default()
            .contains("/api/pool/overview/")
    }));
    s.stop().await;
}

#[tokio::test]
async fn relay_feed_long_polls_and_lists_failures() {
    let s = TestServer::start_rack(1, "").await;
    let rack = s.app.sim.clone().expect("a simulated rack");
    let dev = &rack.devices[0];
    let (board, channel) = {
        let text = dev.relay.to_string();
        let (b, c) = text.split_once(':').expect("board:channel");
        (b.to_owned(), c.to_owned())
    };
    // The device's first self-test power-cycles it: once it is ready its relay is on and
    // stays on, so the "off" below must switch it (a relay stuck while off would not need to).
    s.wait_state(dev.name.as_str(), 60, |st| st == "ready")
        .await;
    let (st, v) = s.get("/api/relay/overview/").await;
    assert_eq!(st, 200, "{v}");
    let version = v["version"].as_u64().expect("version");
    assert_eq!(v["boards"][0]["name"], board.as_str());
    // A relay that does not switch: the next operation fails, the poll wakes, and the board
    // lists the failure with the device wired to that relay.
    let (bank, relay) = match dev.relay.channel {
        mozpool::hw::Channel::Relay { bank, relay } => (bank, relay),
        mozpool::hw::Channel::Pin(_) => unreachable!("the rack uses ProXR boards"),
    };
    rack.boards[0].set_relay_faults(
        bank,
        relay,
        Some(mozpool::hw::sim::SimRelayFaults {
            stuck: true,
            ..Default::default()
        }),
    );
    let poll = {
        let url = s.url(&format!("/api/relay/overview/?since={version}&wait=30"));
        let http = s.http.clone();
        tokio::spawn(async move {
            let v: serde_json::Value = http
                .get(url)
                .send()
                .await
                .expect("poll")
                .json()
                .await
                .expect("json");
            v
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (st, body) = s
        .post(&format!("/api/relay/{board}/{channel}/off/"), json!({}))
        .await;
    assert_eq!(st, 502, "a stuck relay fails: {body}");
    let v = poll.await.expect("poll task");
    assert_ne!(v["version"], version);
    // The failure may land after the store change that woke the poll: read until it shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    let failure = loop {
        let (_, v) = s.get("/api/relay/overview/").await;
        if let Some(f) = v["boards"][0]["failures"].get(0) {
            break f.clone();
        }
        assert!(Instant::now() < deadline, "no failure listed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failure["device"], dev.name.as_str());
    assert_eq!(failure["relay"], dev.relay.to_string());
    assert!(failure["op"].as_str().expect("op").contains("power off"));
    let (_, html, _) = page(&s, "/ui/relays/").await;
    assert!(html.contains("Recent failures"), "{html}");
    s.stop().await;
}

#[tokio::test]
async fn request_page_shows_details_and_log() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (st, r) = s
        .post(
            "/api/device/any/request/",
            json!({ "assignee": "<b>x</b>", "duration": 600, "image": "b2g", "b2gbase": "http://x/" }),
        )
        .await;
    assert!(st == 200 || st == 201, "{st} {r}");
    let id = r["request"]["id"].as_u64().expect("id");
    let (st, body, _) = page(&s, &format!("/ui/request/{id}/")).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&format!("Request #{id}")));
    assert!(
        body.contains("&lt;b&gt;x&lt;&#x2f;b&gt;"),
        "assignee escaped"
    );
    assert!(
        body.contains("http:&#x2f;&#x2f;x&#x2f;"),
        "boot config shown"
    );
    assert!(
        body.contains("<tbody>\n      <tr data-id="),
        "the log has rows"
    );
    let (_, list, _) = page(&s, "/ui/requests/").await;
    assert!(list.contains(&format!("href=\"/ui/request/{id}/\"")));
    let (st, _, _) = page(&s, "/ui/request/999999/").await;
    assert_eq!(st, 404);
    // The history switch: each window draws its bands; a bad window is a 400 page.
    for (w, bands) in [("24h", 1), ("7d", 7), ("30d", 30)] {
        let (st, body, _) = page(&s, &format!("/ui/device/panda-1/?window={w}")).await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(body.matches(r#"<g class="band""#).count(), bands, "{w}");
        assert!(body.contains(&format!(
            r#"aria-current="true" class="current" data-window="{w}""#
        )));
    }
    for path in ["/ui/", "/ui/requests/"] {
        let (st, body, _) = page(&s, &format!("{path}?window=7d")).await;
        assert_eq!(st, 200, "{body}");
        assert!(body.contains("last 7d"), "{path}");
    }
    let (st, body, _) = page(&s, "/ui/device/panda-1/?window=1y").await;
    assert_eq!(st, 400);
    assert!(body.contains("unknown window"), "{body}");
    s.stop().await;
}
