//! Golden API test: one fixed, scripted session against a simulated two-device rack, every
//! response recorded and compared with the transcript in
//! `tests/fixtures/api_golden/session.txt`, so a refactor can show that the API answers
//! byte for byte as before.
//!
//! Each step records the method, path and request body sent, and the status, a fixed set
//! of headers and the body received. The body is compared as the raw text the server sent
//! (key order, spacing, escapes and all), after a small, explicit normalisation of what
//! differs from run to run by nature (see [`Normalizer`]). In the fixture a JSON body is
//! laid out one value per line by [`layout`], which only inserts line breaks and indents,
//! so nothing of the raw text is lost.
//!
//! Run `MOZPOOL_BLESS=1 cargo test --test it api_golden` to rewrite the fixture (after an
//! intended API change; review the diff).
//!
//! The session waits for well-defined states (device `ready`, request `ready`, a device's
//! verification finished) instead of sleeping, and its rack has timings with wide margins
//! (the OS is up long before the first probe; no idle health check during the run), so the
//! devices' histories are the same on every run.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::support::TestServer;

/// The recorded transcript.
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/api_golden/session.txt"
);

/// The rack's timings (Lifeguard values before the 1/100 time scale). A device's OS answers
/// about 1.6 s after power-on (1.5 s bootloader window, long enough for fastboot to catch
/// it, + 0.1 s boot); Lifeguard waits 3.5 s after a power cycle or a flash before its first
/// probe, so the first probe always succeeds and no retry lines enter the logs. The idle
/// health check of a `ready` device (every 6 s at this scale by default) is pushed out to
/// an hour so it never runs during the session.
const RACK: &str = r#"
[lifeguard]
ready_check_ms = 360000000
pc_rebooting_ms = 350000
flash_rebooting_ms = 350000

[simulate]
time_scale = 0.01
boot_time_ms = 100
bootloader_window_ms = 1500
"#;

/// Response headers recorded with each step (others, like `date` and `content-length`,
/// are left out: the first varies, the second follows from the body).
const HEADERS: [&str; 4] = ["content-type", "location", "allow", "cache-control"];

/// Keys whose values are times: naive ISO-8601 strings, display times or epoch
/// milliseconds. Their values differ on every run.
const TIME_KEYS: [&str; 9] = [
    "at",
    "created",
    "expires",
    "last_log_time",
    "last_ok",
    "started",
    "timestamp",
    "until",
    "updated",
];

/// What a masked value stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mask {
    /// A time (see [`TIME_KEYS`]).
    Time,
    /// A durable-log sequence number: the log is shared by every device, the relay board
    /// and the audit trail, whose writes interleave differently on each run.
    Seq,
    /// A counter that depends on timing: the storage's commits and log records (commit
    /// batching; the session's own polling reads, audited under `api`), and the pool
    /// overview's change `version` (it counts every committed device and request change,
    /// timer-driven ones included: the same script gave 58 and 60 with other rack timings).
    Count,
}

/// Which value at this key path (object keys, `[]` for array elements) is masked.
fn mask_for(path: &[String]) -> Option<Mask> {
    let last = path.last()?.as_str();
    let parent = |i: usize| path.len().checked_sub(i).and_then(|j| path.get(j));
    if TIME_KEYS.contains(&last) {
        return Some(Mask::Time);
    }
    if last == "next_before"
        || (last == "id"
            && parent(2).is_some_and(|p| p == "[]")
            && parent(3).is_some_and(|p| p == "log"))
    {
        return Some(Mask::Seq);
    }
    if (parent(2).is_some_and(|p| p == "storage") && (last == "commits" || last == "log_records"))
        || (path.len() == 1 && last == "version")
    {
        return Some(Mask::Count);
    }
    None
}

/// The placeholder for a masked value, or the value itself when it does not have the
/// expected shape (so a format change still shows in the diff). `null` is kept.
fn placeholder(mask: Mask, token: &str) -> String {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match mask {
        Mask::Time => {
            if digits(token) {
                return "<epoch-ms>".into();
            }
            let Some(inner) = token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
                return token.into();
            };
            match time_shape(inner.as_bytes()) {
                Some(b'T') => "\"<iso-time>\"".into(),
                Some(b' ') => "\"<display-time>\"".into(),
                _ => token.into(),
            }
        }
        Mask::Seq if digits(token) => "<seq>".into(),
        Mask::Count if digits(token) => "<count>".into(),
        Mask::Seq | Mask::Count => token.into(),
    }
}

/// `YYYY-MM-DD?HH:MM:SS[.f+]`: the separator byte, if `b` has that shape.
fn time_shape(b: &[u8]) -> Option<u8> {
    let (head, frac) = b.split_at_checked(19)?;
    let pattern = b"0000-00-00?00:00:00";
    let head_ok = head.iter().zip(pattern).all(|(c, p)| match p {
        b'0' => c.is_ascii_digit(),
        b'?' => true,
        _ => c == p,
    });
    let frac_ok = frac.is_empty()
        || (frac.len() >= 2 && frac[0] == b'.' && frac[1..].iter().all(u8::is_ascii_digit));
    (head_ok && frac_ok).then_some(head[10])
}

/// Copies a JSON text byte for byte, replacing the values [`mask_for`] names. Expects
/// valid JSON (checked with serde first); returns `None` if it is not.
struct Masker<'a> {
    src: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    path: Vec<String>,
}

impl<'a> Masker<'a> {
    fn run(text: &'a str) -> Option<String> {
        let mut m = Masker {
            src: text.as_bytes(),
            pos: 0,
            out: Vec::with_capacity(text.len()),
            path: Vec::new(),
        };
        m.ws();
        m.value()?;
        m.ws();
        (m.pos == m.src.len()).then_some(())?;
        String::from_utf8(m.out).ok()
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn copy(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.src.get(self.pos..self.pos + n)?;
        self.out.extend_from_slice(s);
        self.pos += n;
        Some(s)
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
            self.out.push(self.src[self.pos - 1]);
        }
    }

    /// Length of the value token at `pos` (a whole object or array included).
    fn value_len(&self) -> Option<usize> {
        let mut i = self.pos;
        let mut depth = 0usize;
        loop {
            let Some(&b) = self.src.get(i) else {
                return (depth == 0 && i > self.pos).then_some(i - self.pos);
            };
            match b {
                b'"' => i += string_len(self.src, i)?,
                b'{' | b'[' => {
                    depth += 1;
                    i += 1;
                }
                b'}' | b']' if depth > 0 => {
                    depth -= 1;
                    i += 1;
                }
                b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n' if depth == 0 => {
                    return Some(i - self.pos);
                }
                _ => i += 1,
            }
            if depth == 0 && matches!(b, b'"' | b'}' | b']') {
                return Some(i - self.pos);
            }
        }
    }

    fn value(&mut self) -> Option<()> {
        if let Some(mask) = mask_for(&self.path) {
            let n = self.value_len()?;
            let token = std::str::from_utf8(self.src.get(self.pos..self.pos + n)?).ok()?;
            self.out
                .extend_from_slice(placeholder(mask, token).as_bytes());
            self.pos += n;
            return Some(());
        }
        match self.peek()? {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => {
                let n = string_len(self.src, self.pos)?;
                self.copy(n).map(|_| ())
            }
            _ => {
                let n = self.value_len()?;
                self.copy(n).map(|_| ())
            }
        }
    }

    fn object(&mut self) -> Option<()> {
        self.copy(1)?;
        self.ws();
        if self.peek()? == b'}' {
            return self.copy(1).map(|_| ());
        }
        loop {
            let n = string_len(self.src, self.pos)?;
            let key = self.copy(n)?;
            let key: String = serde_json::from_slice(key).ok()?;
            self.ws();
            (self.peek()? == b':').then_some(())?;
            self.copy(1)?;
            self.ws();
            self.path.push(key);
            self.value()?;
            self.path.pop();
            self.ws();
            match self.copy(1)? {
                b"," => self.ws(),
                b"}" => return Some(()),
                _ => return None,
            }
        }
    }

    fn array(&mut self) -> Option<()> {
        self.copy(1)?;
        self.ws();
        if self.peek()? == b']' {
            return self.copy(1).map(|_| ());
        }
        loop {
            self.path.push("[]".into());
            self.value()?;
            self.path.pop();
            self.ws();
            match self.copy(1)? {
                b"," => self.ws(),
                b"]" => return Some(()),
                _ => return None,
            }
        }
    }
}

/// Length of the JSON string token at `at` in `src` (quotes included).
fn string_len(src: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        match src.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1 - at),
            _ => i += 1,
        }
    }
}

/// Run-dependent text: addresses and numbers the server reports that depend on the run.
struct Normalizer {
    /// Exact text replacements, longest first: the service's address (its port is
    /// ephemeral) and each simulated SUTAgent's address (an own loopback address per agent,
    /// numbered per test process, and an ephemeral port).
    exact: Vec<(String, String)>,
}

impl Normalizer {
    fn text(&self, raw: &str) -> String {
        let mut s = if serde_json::from_str::<Value>(raw).is_ok() {
            Masker::run(raw).unwrap_or_else(|| raw.to_owned())
        } else {
            raw.to_owned()
        };
        for (from, to) in &self.exact {
            s = s.replace(from.as_str(), to);
        }
        // Times inside messages (`Request renewed until 2026-11-25T08:43:31.250000.`).
        s = replace_iso_times(&s);
        // Audit rows, `... -> 200 (3 ms) from 127.0.0.1:53124`: the call's duration and the
        // client's ephemeral port.
        s = replace_number(&s, " (", " ms)", "<n>");
        s = replace_number(&s, "from 127.0.0.1:", "", "<port>");
        // fastboot's timings in its output lines (`OKAY [  0.014s]`, `Total time: 0.018s`).
        s = replace_number(&s, "OKAY [", "s]", "<secs>");
        replace_number(&s, "Total time: ", "s", "<secs>")
    }
}

/// Replace each number (digits and `.`, after optional spaces) that follows `before`
/// and is followed by `after` with `with`.
fn replace_number(s: &str, before: &str, after: &str, with: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(before) {
        let (head, tail) = rest.split_at(i + before.len());
        out.push_str(head);
        let spaces = tail.bytes().take_while(|b| *b == b' ').count();
        let n = spaces
            + tail[spaces..]
                .bytes()
                .take_while(|b| b.is_ascii_digit() || *b == b'.')
                .count();
        if tail[spaces..n].bytes().any(|b| b.is_ascii_digit()) && tail[n..].starts_with(after) {
            out.push_str(with);
            rest = &tail[n..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Replace every naive ISO-8601 time (`2026-11-25T08:43:31`, `.ffffff` optional) with
/// `<iso-time>`.
fn replace_iso_times(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut i = 0;
    while i + 19 <= b.len() {
        if b[i].is_ascii_digit() && time_shape(&b[i..i + 19]) == Some(b'T') {
            let mut end = i + 19;
            if b.get(end) == Some(&b'.') && b.get(end + 1).is_some_and(u8::is_ascii_digit) {
                end += 1;
                while b.get(end).is_some_and(u8::is_ascii_digit) {
                    end += 1;
                }
            }
            out.push_str(&s[copied..i]);
            out.push_str("<iso-time>");
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[copied..]);
    out
}

/// Lay out a JSON text one value per line: a line break and indent after `{`, `[` and `,`
/// and before `}` and `]` (outside strings; empty containers stay as they are). Only
/// inserts, so the raw text can be read back from the layout exactly.
fn layout(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                if !matches!(chars.peek(), Some('}' | ']')) {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                if !matches!(out.chars().last(), Some('{' | '[')) {
                    depth = depth.saturating_sub(1);
                    newline(&mut out, depth);
                }
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            _ => out.push(c),
        }
    }
    out
}

/// The scripted session: a running service, a client that does not follow redirects, and
/// the transcript so far.
struct Session {
    server: TestServer,
    http: reqwest::Client,
    norm: Normalizer,
    transcript: String,
    steps: usize,
}

impl Session {
    /// Call the API and record the exchange as a step named `name`. Returns the body as
    /// JSON (`null` when it is not JSON) for the script to use.
    async fn call(&mut self, name: &str, method: Method, path: &str, body: Option<&str>) -> Value {
        let mut req = self.http.request(method.clone(), self.server.url(path));
        if let Some(b) = body {
            req = req.body(b.to_owned());
        }
        let resp = req.send().await.expect("the call gets an answer");
        let status = resp.status();
        let headers: Vec<String> = HEADERS
            .iter()
            .filter_map(|h| {
                let v = resp.headers().get(*h)?;
                Some(format!(
                    "{h}: {}",
                    self.norm.text(&String::from_utf8_lossy(v.as_bytes()))
                ))
            })
            .collect();
        let bytes = resp.bytes().await.expect("the body arrives");
        let raw = String::from_utf8(bytes.to_vec()).expect("a UTF-8 body");
        let value = serde_json::from_str(&raw).unwrap_or(Value::Null);

        self.steps += 1;
        let t = &mut self.transcript;
        t.push_str(&format!("=== {:03} {name}\n", self.steps));
        t.push_str(&format!("> {method} {path}\n"));
        match body {
            Some("") => t.push_str("> body: (empty)\n"),
            Some(b) => t.push_str(&format!("> body: {b}\n")),
            None => {}
        }
        t.push_str(&format!("< {}\n", status.as_u16()));
        for h in headers {
            t.push_str(&format!("< {h}\n"));
        }
        let text = self.norm.text(&raw);
        if text.is_empty() {
            t.push_str("(empty body)\n");
        } else if serde_json::from_str::<Value>(&raw).is_ok() {
            t.push_str(&layout(&text));
            t.push('\n');
        } else {
            t.push_str(&text);
            t.push_str("\n(end of text body)\n");
        }
        t.push('\n');
        value
    }

    async fn get(&mut self, name: &str, path: &str) -> Value {
        self.call(name, Method::GET, path, None).await
    }

    async fn post(&mut self, name: &str, path: &str, body: &str) -> Value {
        self.call(name, Method::POST, path, Some(body)).await
    }

    /// An unrecorded read (for waiting).
    async fn peek(&self, path: &str) -> Value {
        let r = self
            .server
            .http
            .get(self.server.url(path))
            .send()
            .await
            .expect("GET");
        r.json().await.unwrap_or(Value::Null)
    }

    /// Messages of a device's log (unrecorded).
    async fn messages(&self, device: &str) -> Vec<String> {
        let log = self.peek(&format!("/api/device/{device}/log/")).await;
        log["log"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["message"].as_str().map(str::to_owned))
            .collect()
    }

    /// How many times `device` has entered `ready` so far.
    async fn times_ready(&self, device: &str) -> usize {
        self.messages(device)
            .await
            .iter()
            .filter(|m| m.contains(" -> ready: "))
            .count()
    }

    /// Wait until `device` has entered `ready` `n` times and is in `ready` now.
    async fn wait_ready(&self, device: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = self.peek(&format!("/api/device/{device}/state/")).await;
            if state["state"] == "ready" && self.times_ready(device).await >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{device} did not become ready ({state}); log: {:#?}",
                self.messages(device).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until request `id` is in `state` (long polls, unrecorded).
    async fn wait_request(&self, id: u64, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = self
                .peek(&format!("/api/request/{id}/status/?wait=2"))
                .await;
            if st["state"] == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "request {id} is not {state}: {st:#}"
            );
        }
    }

    /// A write, so that the audit rows of earlier calls are in the log: a call's audit row
    /// is queued as its answer goes out and committed with a later batch, and the store
    /// commits in order, so once this write is answered every earlier row is committed.
    async fn barrier(&mut self) {
        self.call(
            "barrier: rewrite an environment (earlier audit rows are now committed)",
            Method::PUT,
            "/api/environment/sim/",
            Some(r#"{"description": "the simulated rack"}"#),
        )
        .await;
    }
}

/// The request id in a `{"request": {...}}` answer.
fn request_id(v: &Value) -> u64 {
    v["request"]["id"].as_u64().expect("a request id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_golden_session() {
    let server = TestServer::start_rack(2, RACK).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut s = Session {
        norm: Normalizer {
            exact: vec![(server.addr.to_string(), "<service-addr>".into())],
        },
        server,
        http,
        transcript: String::new(),
        steps: 0,
    };
    let devices = ["sim-0001", "sim-0002"];
    for d in devices {
        s.wait_ready(d, 1).await;
    }
    // The SUTAgents' addresses, from the inventory.
    let list = s.peek("/api/device/list/?details=1").await;
    for d in list["devices"].as_array().expect("devices") {
        let name = d["name"].as_str().expect("name");
        let sut = d["sut"].as_str().expect("sut address");
        let host = sut.rsplit_once(':').map_or(sut, |(h, _)| h);
        s.norm
            .exact
            .push((sut.to_owned(), format!("<sut-host:{name}>:<sut-port>")));
        s.norm
            .exact
            .push((host.to_owned(), format!("<sut-host:{name}>")));
    }
    s.norm
        .exact
        .sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));

    // --- The idle pool ---
    s.get("health", "/api/health/").await;
    s.get("version", "/api/version/").await;
    s.get("device list", "/api/device/list/").await;
    s.get("device list with details", "/api/device/list/?details=1")
        .await;
    s.get("device list, details=0", "/api/device/list/?details=0")
        .await;
    s.get("device details", "/api/device/sim-0001/details/")
        .await;
    s.get("device status", "/api/device/sim-0001/status/").await;
    s.get("device state", "/api/device/sim-0001/state/").await;
    s.get("device state, cache", "/api/device/sim-0001/state/?cache=1")
        .await;
    s.get("device log", "/api/device/sim-0001/log/").await;
    s.get("device log, limit 2", "/api/device/sim-0001/log/?limit=2")
        .await;
    s.get("device ping", "/api/device/sim-0001/ping/").await;
    s.get(
        "device bootconfig (none)",
        "/api/device/sim-0001/bootconfig/",
    )
    .await;
    s.get("image list", "/api/image/list/").await;
    s.get("image details", "/api/image/android/details/").await;
    s.get(
        "pxe config list, active only (bmm.html)",
        "/api/bmm/pxe_config/list/?active_only=1",
    )
    .await;
    s.get("pxe config details", "/api/bmm/pxe_config/android/details/")
        .await;
    s.get(
        "pxe config details, unknown",
        "/api/bmm/pxe_config/nothing/details/",
    )
    .await;
    s.get("environment list", "/api/environment/list/").await;
    s.get("hardware type list", "/api/hardware-type/list/")
        .await;
    s.get("relay list", "/api/relay/list/").await;
    s.get("relay test", "/api/relay/sim-relay-1/test/").await;
    s.get(
        "relay channel status",
        "/api/relay/sim-relay-1/bank1:relay1/status/",
    )
    .await;
    s.get("pool overview", "/api/pool/overview/").await;
    s.get(
        "log query: one device, newest 5",
        "/api/log/?device=sim-0002&limit=5",
    )
    .await;

    // --- Inventory edits ---
    s.post(
        "set comments",
        "/api/device/sim-0002/set-comments/",
        r#"{"comments": "golden run"}"#,
    )
    .await;
    s.barrier().await;
    s.get(
        "device details with comments",
        "/api/device/sim-0002/details/",
    )
    .await;
    s.get(
        "device log after set-comments, newest 3",
        "/api/device/sim-0002/log/?limit=3",
    )
    .await;

    // --- Request lifecycle ---
    let r1 = s
        .post(
            "request a named device",
            "/api/device/sim-0001/request/",
            r#"{"assignee": "golden", "duration": 600, "image": "android"}"#,
        )
        .await;
    let r1 = request_id(&r1);
    s.wait_request(r1, "ready").await;
    s.get(
        "request status, ready",
        &format!("/api/request/{r1}/status/"),
    )
    .await;
    s.get("request details", &format!("/api/request/{r1}/details/"))
        .await;
    s.get(
        "device details, held by the request",
        "/api/device/sim-0001/details/",
    )
    .await;
    s.get(
        "device bootconfig (installed image)",
        "/api/device/sim-0001/bootconfig/",
    )
    .await;
    let r2 = s
        .post(
            "request any device",
            "/api/device/any/request/",
            r#"{"assignee": "golden-any", "duration": "3600", "image": "android", "environment": "sim"}"#,
        )
        .await;
    let r2 = request_id(&r2);
    s.wait_request(r2, "ready").await;
    s.get(
        "request status of 'any', ready",
        &format!("/api/request/{r2}/status/"),
    )
    .await;
    s.post(
        "conflict: request a held device",
        "/api/device/sim-0001/request/",
        r#"{"assignee": "other", "duration": 60, "image": "android"}"#,
    )
    .await;
    s.get("request list, two held", "/api/request/list/").await;
    s.post(
        "renew",
        &format!("/api/request/{r1}/renew/"),
        r#"{"duration": 60}"#,
    )
    .await;
    s.get(
        "request details after renew",
        &format!("/api/request/{r1}/details/"),
    )
    .await;
    let before = s.times_ready("sim-0001").await;
    s.post("return", &format!("/api/request/{r1}/return/"), "")
        .await;
    s.get(
        "request status, closed",
        &format!("/api/request/{r1}/status/"),
    )
    .await;
    s.wait_ready("sim-0001", before + 1).await;
    s.post(
        "return again (already closed)",
        &format!("/api/request/{r1}/return/"),
        "",
    )
    .await;
    let before = s.times_ready("sim-0002").await;
    s.post(
        "request event close",
        &format!("/api/request/{r2}/event/close/"),
        "",
    )
    .await;
    s.post(
        "request event close again (already closed)",
        &format!("/api/request/{r2}/event/close/"),
        "",
    )
    .await;
    s.post(
        "conflict: request event expire on a closed request",
        &format!("/api/request/{r2}/event/expire/"),
        "",
    )
    .await;
    s.wait_ready("sim-0002", before + 1).await;
    s.get("request list, none open", "/api/request/list/").await;
    s.get(
        "request list, closed included",
        "/api/request/list/?include_closed=1",
    )
    .await;
    s.get("request log", &format!("/api/request/{r1}/log/"))
        .await;
    s.get("request log of 'any'", &format!("/api/request/{r2}/log/"))
        .await;
    s.barrier().await;
    // sim-0002 was requested as `any`, so no call named it during the lifecycle: its log
    // holds no audit row racing the flash's first lines.
    s.get(
        "device log after the lifecycle ('any' device)",
        "/api/device/sim-0002/log/",
    )
    .await;
    // sim-0001's tail from the refused request on (made while it was idle and held).
    s.get(
        "device log after the return, newest 9",
        "/api/device/sim-0001/log/?limit=9",
    )
    .await;
    s.get(
        "device details after the lifecycle",
        "/api/device/sim-0001/details/",
    )
    .await;
    s.get("relay list after the lifecycle", "/api/relay/list/")
        .await;
    s.get("pool overview after the lifecycle", "/api/pool/overview/")
        .await;

    // --- Errors ---
    s.get("unknown device: details", "/api/device/nope/details/")
        .await;
    s.get("unknown device: status", "/api/device/nope/status/")
        .await;
    s.get("bad device name", "/api/device/bad%20name/status/")
        .await;
    s.get("unknown path", "/api/nothing/here/").await;
    s.call("wrong method", Method::POST, "/api/device/list/", None)
        .await;
    s.call(
        "wrong method on an inventory entry",
        Method::GET,
        "/api/image/android/",
        None,
    )
    .await;
    s.get(
        "missing trailing slash (redirect)",
        "/api/device/list?details=1",
    )
    .await;
    s.post(
        "bad JSON",
        "/api/device/sim-0001/set-comments/",
        r#"{"comments": "x""#,
    )
    .await;
    s.post(
        "unknown field",
        "/api/device/sim-0001/set-comments/",
        r#"{"comment": "x"}"#,
    )
    .await;
    s.post(
        "wrong field type",
        "/api/device/sim-0001/set-comments/",
        r#"{"comments": 5}"#,
    )
    .await;
    s.post(
        "request: missing assignee",
        "/api/device/any/request/",
        r#"{"duration": 60, "image": "android"}"#,
    )
    .await;
    s.post(
        "request: missing duration",
        "/api/device/any/request/",
        r#"{"assignee": "a", "image": "android"}"#,
    )
    .await;
    s.post(
        "request: bad duration",
        "/api/device/any/request/",
        r#"{"assignee": "a", "duration": "soon", "image": "android"}"#,
    )
    .await;
    s.post(
        "request: missing image",
        "/api/device/any/request/",
        r#"{"assignee": "a", "duration": 60}"#,
    )
    .await;
    s.post(
        "request: unknown image",
        "/api/device/any/request/",
        r#"{"assignee": "a", "duration": 60, "image": "nope"}"#,
    )
    .await;
    s.post(
        "request: bad name in a criterion",
        "/api/device/any/request/",
        r#"{"assignee": "a", "duration": 60, "image": "android", "hardware_type": "../x"}"#,
    )
    .await;
    s.post(
        "request: unknown device",
        "/api/device/nosuch/request/",
        r#"{"assignee": "a", "duration": 60, "image": "android"}"#,
    )
    .await;
    s.get("request id not a number", "/api/request/abc/details/")
        .await;
    s.get("unknown request", "/api/request/999/status/").await;
    s.post(
        "renew: missing duration",
        &format!("/api/request/{r1}/renew/"),
        "{}",
    )
    .await;
    s.post(
        "request event: internal event",
        &format!("/api/request/{r1}/event/find_device/"),
        "{}",
    )
    .await;
    s.post(
        "device event: internal event",
        "/api/device/sim-0001/event/ping_ok/",
        "",
    )
    .await;
    s.post(
        "device event: unknown event",
        "/api/device/sim-0001/event/please_dance/",
        "",
    )
    .await;
    s.post(
        "state change: not in the from-state",
        "/api/device/sim-0001/state-change/off/to/ready/",
        "",
    )
    .await;
    s.post(
        "state change: unknown state",
        "/api/device/sim-0001/state-change/ready/to/dancing/",
        "",
    )
    .await;
    s.post(
        "power cycle: unknown pxe_config",
        "/api/device/sim-0001/power-cycle/",
        r#"{"pxe_config": "x"}"#,
    )
    .await;
    s.post(
        "flash: unknown image",
        "/api/device/sim-0001/flash/",
        r#"{"image": "nope"}"#,
    )
    .await;
    s.get("log query: bad limit", "/api/log/?limit=abc").await;
    s.get("relay test: unknown board", "/api/relay/nope/test/")
        .await;
    s.get("image details: unknown image", "/api/image/nope/details/")
        .await;

    // --- Registration (last: the new device then self-tests on its own schedule) ---
    s.post(
        "register: missing IPADDR",
        "/api/device/register/",
        r#"{"NAME": "00:11:22:33:44:55"}"#,
    )
    .await;
    s.post(
        "register: a new address for a wired device (held for a tech)",
        "/api/device/register/",
        r#"{"NAME": "sim-0001", "IPADDR": "10.0.0.9", "CMDPORT": 20701}"#,
    )
    .await;
    s.post(
        "register a new device",
        "/api/device/register/",
        r#"{"NAME": "00:11:22:33:44:55", "IPADDR": "10.0.0.5", "CMDPORT": 20701, "OS": "Android-IMM76D", "HARDWARE": "panda", "POOL": "mobile"}"#,
    )
    .await;
    s.get("device list with the new device", "/api/device/list/")
        .await;
    s.get("cluster status, single rack", "/api/cluster/").await;
    s.get("health at the end", "/api/health/").await;

    check_transcript(&s.transcript);
    let _ = s.server.stop().await;
}

/// Bless (`MOZPOOL_BLESS=1`) or compare with the fixture.
fn check_transcript(actual: &str) {
    if std::env::var("MOZPOOL_BLESS").is_ok_and(|v| v == "1") {
        let path = std::path::Path::new(FIXTURE);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("fixture directory");
        }
        std::fs::write(path, actual).expect("write the fixture");
        eprintln!("api_golden: wrote {FIXTURE}");
        return;
    }
    let expected = std::fs::read_to_string(FIXTURE)
        .unwrap_or_else(|e| panic!("cannot read {FIXTURE} ({e}); record it with MOZPOOL_BLESS=1"));
    if expected == actual {
        return;
    }
    let exp = blocks(&expected);
    let act = blocks(actual);
    for i in 0..exp.len().max(act.len()) {
        let (e, a) = (exp.get(i).copied(), act.get(i).copied());
        if e == a {
            continue;
        }
        let name = a
            .or(e)
            .and_then(|b| b.lines().next())
            .map_or("?", |l| l.trim_start_matches("=== "));
        let line = match (e, a) {
            (Some(e), Some(a)) => {
                let n = e
                    .lines()
                    .zip(a.lines())
                    .position(|(x, y)| x != y)
                    .unwrap_or_else(|| e.lines().count().min(a.lines().count()));
                format!(
                    "first differing line {}:\n  expected: {}\n  actual:   {}\n",
                    n + 1,
                    e.lines().nth(n).unwrap_or("(none)"),
                    a.lines().nth(n).unwrap_or("(none)")
                )
            }
            _ => String::new(),
        };
        panic!(
            "the API answered differently from {FIXTURE}\nfirst differing step: {name}\n{line}\
             --- expected ---\n{}\n--- actual ---\n{}\n(after an intended API change, re-record \
             with MOZPOOL_BLESS=1 and review the fixture's diff)",
            e.unwrap_or("(no such step)"),
            a.unwrap_or("(no such step)"),
        );
    }
    panic!("the transcript differs from {FIXTURE} outside any step");
}

/// The transcript's steps (each starts with a `=== ` line).
fn blocks(t: &str) -> Vec<&str> {
    let mut starts: Vec<usize> = t
        .match_indices("=== ")
        .filter(|(i, _)| *i == 0 || t.as_bytes().get(i - 1) == Some(&b'\n'))
        .map(|(i, _)| i)
        .collect();
    starts.push(t.len());
    starts.windows(2).map(|w| &t[w[0]..w[1]]).collect()
}

#[test]
fn the_normalizer_masks_only_what_it_names() {
    let raw = r#"{"log":[{"id":12,"timestamp":"2026-12-04T18:44:56.529000","message":"GET /x -> 200 (3 ms) from 127.0.0.1:5312"}],"id":7,"expires":"soon","created":null,"last_ok":1796409896969,"until":"2026-11-25 09:44:28","storage":{"commits":71,"ok":true}}"#;
    let n = Normalizer { exact: Vec::new() };
    assert_eq!(
        n.text(raw),
        r#"{"log":[{"id":<seq>,"timestamp":"<iso-time>","message":"GET /x -> 200 (<n> ms) from 127.0.0.1:<port>"}],"id":7,"expires":"soon","created":null,"last_ok":<epoch-ms>,"until":"<display-time>","storage":{"commits":<count>,"ok":true}}"#
    );
    assert_eq!(n.text(r#"{"version":58}"#), r#"{"version":<count>}"#);
    for kept in [
        r#"{"version":"0.1.0"}"#,
        r#"{"message":"request created (duration capped at 864 s)","expires":"2026-11-25Z"}"#,
    ] {
        assert_eq!(n.text(kept), kept);
    }
    assert_eq!(
        n.text(r#"["renewed until 2026-11-25T08:43:31.25.","OKAY [ 10.014s]"]"#),
        r#"["renewed until <iso-time>.","OKAY [<secs>s]"]"#
    );
    assert_eq!(
        layout(r#"{"a":[1,{}],"b":"x,{y}","c":[]}"#),
        "{\n  \"a\":[\n    1,\n    {}\n  ],\n  \"b\":\"x,{y}\",\n  \"c\":[]\n}"
    );
}
