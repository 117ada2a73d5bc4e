//! Cluster mode against a real etcd: a 3-member cluster on loopback (free ports, temporary
//! data directories, shortened heartbeat and election timeout, killed on drop) and
//! `mozpool serve --simulate N` controllers as child processes with `[cluster]` pointing at
//! it, killed and paused with real signals. Lease TTL 2 s, so the file runs in seconds.
//!
//! Without Debian's `etcd` (package `etcd-server`) the etcd tests print
//! `SKIPPED <test>: etcd not installed` and pass, except under CI or
//! `MOZPOOL_REQUIRE_TOOLS=1`, where they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mozpool::app::config::Config;
use mozpool::cli::bench::etcd::{ETCD, ETCDCTL, EtcdCluster, EtcdTls, free_port};
use mozpool::cluster::requests::{SharedRequest, Versioned};
use mozpool::cluster::{Cluster, ClusterError, Leadership};
use mozpool::domain::request_state::RequestState;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::{FAST_RACK, TestServer, ok_if, poll, require_tool};

/// The controllers' lease TTL in these tests.
const TTL: Duration = Duration::from_secs(2);

/// A file of the test-only TLS fixtures.
fn tls_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/etcd-tls")
        .join(name)
}

fn signal(child: &Child, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    kill(pid, sig).expect("signal");
}

/// The 3-member etcd cluster the bench uses too (`mozpool::cli::bench::etcd`), with the
/// tests' ways in: a skip when etcd is absent, panics instead of errors, TTL 2 s sections.
struct Etcd(EtcdCluster);

impl std::ops::Deref for Etcd {
    type Target = EtcdCluster;
    fn deref(&self) -> &EtcdCluster {
        &self.0
    }
}

impl std::ops::DerefMut for Etcd {
    fn deref_mut(&mut self) -> &mut EtcdCluster {
        &mut self.0
    }
}

impl Etcd {
    /// Start three members and wait until the cluster takes writes; `None` (after printing
    /// `SKIPPED`) when etcd is not installed outside CI.
    fn start(test: &str) -> Option<Etcd> {
        Etcd::start_with(test, false, &[])
    }

    /// [`Etcd::start`], with TLS and client certificates on the client URLs when `tls`
    /// (`tests/fixtures/etcd-tls/`), and more `flags` for every member.
    fn start_with(test: &str, tls: bool, flags: &[&str]) -> Option<Etcd> {
        require_tool(test, ETCD)?;
        require_tool(test, ETCDCTL)?;
        let tls = tls.then(|| EtcdTls {
            ca: tls_file("ca.pem"),
            member_cert: tls_file("member.pem"),
            member_key: tls_file("member-key.pem"),
            client_cert: tls_file("client.pem"),
            client_key: tls_file("client-key.pem"),
        });
        Some(Etcd(
            EtcdCluster::start_with(tls, flags).expect("etcd cluster"),
        ))
    }

    /// etcd's current revision.
    fn revision(&self) -> i64 {
        // Any read answers with the revision; `/probe` is written at start-up.
        let out = self.etcdctl(&["get", "/probe", "-w", "json"]);
        assert!(
            out.status.success(),
            "etcdctl get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("get json");
        v["header"]["revision"].as_i64().expect("revision")
    }

    fn start_member(&mut self, i: usize) {
        self.0.start_member(i).expect("start etcd member");
    }

    fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        self.0.etcdctl(args).expect("etcdctl")
    }

    fn wait_writable(&self, within: Duration) {
        self.0.wait_writable(within).expect("etcd writable");
    }

    /// The member that is etcd's raft leader now: killing it is the harder case for
    /// clients (the others answer "no leader" until they elect a new one).
    fn leader(&self) -> usize {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        assert!(
            out.status.success(),
            "etcdctl endpoint status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("endpoint status json");
        let endpoints = self.endpoints();
        all.iter()
            .find(|e| e["Status"]["leader"] == e["Status"]["header"]["member_id"])
            .and_then(|e| endpoints.iter().position(|u| e["Endpoint"] == *u.as_str()))
            .expect("a member reports itself as leader")
    }

    /// The keys under `prefix`.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.etcdctl(&["get", prefix, "--prefix", "--keys-only"]);
        assert!(
            out.status.success(),
            "etcdctl get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// `[cluster]` for a controller named `name`, keys under `prefix`.
    fn section(&self, name: &str, prefix: &str) -> String {
        self.0.section(name, prefix, TTL.as_secs())
    }

    /// An in-process client on the same etcd (not started: no lease, no publication).
    fn client(&self, prefix: &str) -> Cluster {
        let text = self.section("test-client", prefix);
        let config = Config::parse(Path::new("test.toml"), &text).expect("config");
        let c = config.cluster.expect("cluster section");
        Cluster::new(&c, "test-client".into()).expect("client")
    }
}

/// `mozpool serve --simulate N` as a child process with a `[cluster]` section.
struct Controller {
    name: String,
    child: Child,
    url: String,
    dir: PathBuf,
    port: u16,
    devices: u32,
    _tmp: tempfile::TempDir,
    http: reqwest::Client,
}

impl Controller {
    async fn start(etcd: &Etcd, name: &str, prefix: &str, devices: u32) -> Controller {
        Self::start_with(etcd, name, prefix, devices, "").await
    }

    /// As [`Controller::start`], with `extra` lines appended to its `[cluster]` section.
    async fn start_with(
        etcd: &Etcd,
        name: &str,
        prefix: &str,
        devices: u32,
        extra: &str,
    ) -> Controller {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let port = free_port();
        let config = dir.join("mozpool.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nname = \"{name}\"\n[log]\nlevel = \"info\"\n{FAST_RACK}\n{}{extra}",
                etcd.section(name, prefix)
            ),
        )
        .expect("config");
        let c = Controller {
            name: name.to_owned(),
            child: Self::spawn(&dir, port, devices),
            url: format!("http://127.0.0.1:{port}"),
            dir,
            port,
            devices,
            _tmp: tmp,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("client"),
        };
        c.wait_for("its API", Duration::from_secs(20), |s| s.is_some())
            .await;
        c
    }

    /// `mozpool serve` on `dir`'s config and data, listening on `port`; its log appended
    /// to `dir/serve.log` (a restart keeps the earlier lines).
    fn spawn(dir: &Path, port: u16, devices: u32) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serve.log"))
            .expect("log");
        Command::new(env!("CARGO_BIN_EXE_mozpool"))
            .args(["serve", "--simulate", &devices.to_string(), "--config"])
            .arg(dir.join("mozpool.toml"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mozpool serve")
    }

    /// SIGKILL the controller and start it again on the same data directory and port, as
    /// after a crash and a restart by systemd. Does not wait for its API.
    fn kill_and_restart(&mut self) {
        signal(&self.child, Signal::SIGKILL);
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir, self.port, self.devices);
    }

    /// `GET /api/cluster/`, or `None` when it does not answer.
    async fn status(&self) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/api/cluster/", self.url))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Poll `/api/cluster/` until `pred` holds; panics (with the controller's log) after
    /// `within`. Returns how long it took.
    async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(Option<&Value>) -> bool,
    ) -> Duration {
        let start = Instant::now();
        poll(within, Duration::from_millis(100), async || {
            let s = self.status().await;
            ok_if(pred(s.as_ref()), s)
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "{}: {what} not within {within:?}; last status {last:?}\nlog:\n{}",
                self.name,
                self.log_tail()
            )
        });
        start.elapsed()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // A paused controller must be woken to die cleanly.
        let _ = kill(
            Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)),
            Signal::SIGCONT,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_scheduler(s: Option<&Value>) -> bool {
    s.is_some_and(|s| s["is_scheduler"] == true)
}

/// A unique key prefix per test, so tests could share an etcd.
fn prefix(test: &str) -> String {
    format!("/mozpool-test/{test}/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controllers_devices_leave_the_pool_within_its_lease() {
    let test = "cluster_killed_controller";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let p = prefix(test);
    let mut a = Controller::start(&etcd, "rack-a", &p, 3).await;
    let b = Controller::start(&etcd, "rack-b", &p, 2).await;
    // Both publish their devices under their leases.
    let devices = format!("{p}devices/");
    let keys = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let keys = etcd.keys(&devices);
            let of = |c: &str| {
                keys.iter()
                    .filter(|k| k.starts_with(&format!("{devices}{c}/")))
                    .count()
            };
            ok_if(of("rack-a") == 3 && of("rack-b") == 2, keys)
        },
    )
    .await
    .unwrap_or_else(|keys| panic!("devices not published: {keys:?}"));
    assert!(
        keys.contains(&format!("{devices}rack-a/sim-0001")),
        "{keys:?}"
    );
    // Each sees both members.
    b.wait_for("both members", Duration::from_secs(5), |s| {
        s.is_some_and(|s| s["members"].as_array().is_some_and(|m| m.len() == 2))
    })
    .await;
    let status = a.status().await.expect("status");
    assert_eq!(status["enabled"], true);
    assert_eq!(status["published_devices"], 3);
    assert!(status["lease"]["id"].is_string(), "{status}");

    // A second live controller under rack-b's name publishes nothing and says why.
    let twin = TestServer::start_rack(1, &etcd.section("rack-b", &p)).await;
    let body = poll(
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || {
            let (_, body) = twin.get("/api/cluster/").await;
            let said = body["publish_error"]
                .as_str()
                .is_some_and(|e| e.contains("in use by another live controller"));
            ok_if(said, body)
        },
    )
    .await
    .unwrap_or_else(|body| panic!("name clash not reported: {body}"));
    assert_eq!(body["published_devices"], 0, "{body}");
    twin.stop().await;
    let keys = etcd.keys(&format!("{devices}rack-b/"));
    assert_eq!(keys.len(), 2, "rack-b's own devices untouched: {keys:?}");

    // SIGKILL: no revoke, no goodbye. Its keys go when its lease expires.
    signal(&a.child, Signal::SIGKILL);
    let _ = a.child.wait();
    let killed = Instant::now();
    let keys = poll(
        TTL + Duration::from_secs(2),
        Duration::from_millis(100),
        async || {
            let keys = etcd.keys(&devices);
            let left = keys
                .iter()
                .any(|k| k.starts_with(&format!("{devices}rack-a/")));
            ok_if(!left, keys)
        },
    )
    .await
    .unwrap_or_else(|keys| {
        let after = killed.elapsed();
        panic!("rack-a's devices still published {after:?} after SIGKILL: {keys:?}")
    });
    assert_eq!(keys.len(), 2, "rack-b's devices stay: {keys:?}");
    eprintln!(
        "cluster: rack-a's devices left the pool {:?} after SIGKILL (TTL {TTL:?})",
        killed.elapsed()
    );
    b.wait_for("rack-a gone from members", Duration::from_secs(3), |s| {
        s.is_some_and(|s| s["members"].as_array().is_some_and(|m| m.len() == 1))
    })
    .await;

    // SIGTERM: a clean stop revokes the lease, so rack-b's keys are gone when it exits,
    // not a TTL later.
    let mut b = b;
    signal(&b.child, Signal::SIGTERM);
    let status = b.child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");
    let keys = etcd.keys(&p);
    assert!(keys.is_empty(), "keys left after a clean stop: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_scheduler_is_replaced_and_its_old_election_cannot_write() {
    let test = "cluster_scheduler_failover";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let p = prefix(test);
    let a = Controller::start(&etcd, "rack-a", &p, 1).await;
    let b = Controller::start(&etcd, "rack-b", &p, 1).await;
    // Exactly one scheduler, and both agree who.
    let (leader, other) = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let (sa, sb) = (a.status().await, b.status().await);
            let (la, lb) = (is_scheduler(sa.as_ref()), is_scheduler(sb.as_ref()));
            assert!(!(la && lb), "two schedulers: {sa:?} {sb:?}");
            let agreed =
                |s: &Option<Value>, name: &str| s.as_ref().is_some_and(|s| s["scheduler"] == name);
            if la && agreed(&sb, "rack-a") {
                return Ok((&a, &b));
            }
            if lb && agreed(&sa, "rack-b") {
                return Ok((&b, &a));
            }
            Err((sa, sb))
        },
    )
    .await
    .unwrap_or_else(|(sa, sb)| panic!("no scheduler: {sa:?} {sb:?}"));
    // Stays exactly one for a while.
    for _ in 0..10 {
        assert!(is_scheduler(leader.status().await.as_ref()));
        assert!(!is_scheduler(other.status().await.as_ref()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old = leader.status().await.expect("status");
    let old_rev = old["election_revision"].as_i64().expect("revision");
    let old_lease =
        i64::from_str_radix(old["lease"]["id"].as_str().expect("lease"), 16).expect("hex lease");
    // A write guarded by the live election succeeds (the guard is not always false).
    let client = etcd.client(&p);
    let live = Leadership {
        revision: old_rev,
        lease: old_lease,
    };
    client
        .put_as_leader(&live, "guard-probe", b"1")
        .await
        .expect("guarded write while the election holds");

    // SIGSTOP the scheduler: its keep-alives stop; the other takes over within TTL + 2 s.
    signal(&leader.child, Signal::SIGSTOP);
    let took = other
        .wait_for(
            "take over as scheduler",
            TTL + Duration::from_secs(2),
            is_scheduler,
        )
        .await;
    eprintln!(
        "cluster: {} took over {took:?} after SIGSTOP (TTL {TTL:?})",
        other.name
    );
    let new = other.status().await.expect("status");
    let new_rev = new["election_revision"].as_i64().expect("revision");
    assert!(new_rev > old_rev, "{new_rev} > {old_rev}");

    // SIGCONT: the old one learns it lost its lease and is no longer the scheduler.
    signal(&leader.child, Signal::SIGCONT);
    leader
        .wait_for("step down", Duration::from_secs(5), |s| {
            s.is_some_and(|s| s["is_scheduler"] == false && s["scheduler"] == other.name.as_str())
        })
        .await;
    assert!(is_scheduler(other.status().await.as_ref()));
    // Its old election revision no longer guards anything.
    match client.put_as_leader(&live, "guard-probe", b"2").await {
        Err(ClusterError::NotLeader(r)) => assert_eq!(r, old_rev),
        other => panic!("a write guarded by the old election must fail: {other:?}"),
    }
    let current = Leadership {
        revision: new_rev,
        lease: 0,
    };
    client
        .put_as_leader(&current, "guard-probe", b"3")
        .await
        .expect("the new election guards writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_is_reported_and_recovers_without_a_restart() {
    let test = "cluster_quorum_loss";
    let Some(mut etcd) = Etcd::start(test) else {
        return;
    };
    let p = prefix(test);
    let a = Controller::start(&etcd, "rack-a", &p, 2).await;
    a.wait_for(
        "etcd ok, lease, scheduler, devices",
        Duration::from_secs(10),
        |s| {
            s.is_some_and(|s| {
                s["etcd_ok"] == true
                    && s["lease"].is_object()
                    && s["is_scheduler"] == true
                    && s["published_devices"] == 2
                    && s["members"].as_array().is_some_and(|m| m.len() == 1)
            })
        },
    )
    .await;
    let client = etcd.client(&p);
    let lease = |s: &Value| s["lease"]["id"].as_str().map(str::to_owned);
    let first = lease(&a.status().await.expect("status"));

    // One member down changes nothing: still a quorum, same lease, still the scheduler.
    // (If it was etcd's raft leader, the others elect a new one first: for about an
    // election timeout etcd answers "no leader", which the probe may report; the lease and
    // the scheduler role ride it out.)
    etcd.kill_member(2);
    let killed = Instant::now();
    while killed.elapsed() < TTL + Duration::from_secs(1) {
        let s = a.status().await.expect("status");
        assert!(
            s["is_scheduler"] == true && lease(&s) == first,
            "with one member down: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.wait_for(
        "etcd ok with one member down",
        Duration::from_secs(3),
        |s| s.is_some_and(|s| s["etcd_ok"] == true),
    )
    .await;
    let guard = Leadership {
        revision: a.status().await.expect("status")["election_revision"]
            .as_i64()
            .expect("revision"),
        lease: 0,
    };
    client
        .put_as_leader(&guard, "guard-probe", b"1")
        .await
        .expect("writes work with one member down");

    // The pool page's feed has no warning while etcd answers; its long poll from this
    // version must return once quorum is lost, even though nothing else changes.
    let overview = get_json(&a, "/api/pool/overview/").await;
    assert_eq!(overview["cluster_warning"], Value::Null, "{overview}");
    let before = overview["version"].as_u64().expect("version");
    let page = get_text(format!("{}/ui/", a.url)).await;
    assert!(
        page.contains(r#"id="cluster-warning" role="status" hidden"#),
        "{page}"
    );

    // Two of three members down: no quorum.
    let feed = tokio::spawn({
        let url = format!("{}/api/pool/overview/?since={before}&wait=20", a.url);
        async move {
            let t = Instant::now();
            let v: Value = http()
                .get(url)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .expect("feed")
                .json()
                .await
                .expect("json");
            (t.elapsed(), v)
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    etcd.kill_member(1);
    let lost = a
        .wait_for("report quorum loss", Duration::from_secs(5), |s| {
            s.is_some_and(|s| s["etcd_ok"] == false && s["etcd_error"].is_string())
        })
        .await;
    eprintln!("cluster: quorum loss reported after {lost:?}");
    // The health check says so too, and the rack itself stays up.
    let health: Value = reqwest::get(format!("{}/api/health/", a.url))
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["cluster"]["etcd_ok"], false, "{health}");
    assert_eq!(health["storage"]["ok"], true, "{health}");
    // An open pool page hears of it through its feed, and every page shows the banner.
    let (took, overview) = feed.await.expect("feed task");
    assert_eq!(
        overview["cluster_warning"]["kind"], "etcd_unreachable",
        "after {took:?}: {overview}"
    );
    assert_ne!(overview["version"].as_u64(), Some(before));
    eprintln!("cluster: the pool feed carried the etcd warning after {took:?}");
    let page = get_text(format!("{}/ui/", a.url)).await;
    assert!(
        page.contains("etcd is unreachable or has lost quorum"),
        "{page}"
    );
    assert!(
        !page.contains(r#"id="cluster-warning" role="status" hidden"#),
        "{page}"
    );
    let metrics = get_text(format!("{}/metrics", a.url)).await;
    assert!(
        metrics.lines().any(|l| l == "mozpool_cluster_etcd_up 0"),
        "{metrics}"
    );
    // A write now fails as "unavailable": the API answers it with 503.
    let started = Instant::now();
    let err = client
        .put_as_leader(&guard, "guard-probe", b"x")
        .await
        .expect_err("no quorum, no write");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let api = mozpool::http::error::ApiError::from(err);
    assert_eq!(api.status.as_u16(), 503);
    assert_eq!(api.code, "cluster_unavailable");
    // Past the TTL without keep-alives the lease is lost, and with it the scheduler role.
    a.wait_for(
        "lose lease and scheduler",
        TTL + Duration::from_secs(2),
        |s| s.is_some_and(|s| s["lease"].is_null() && s["is_scheduler"] == false),
    )
    .await;

    // Members back: everything resumes without restarting mozpool.
    etcd.start_member(1);
    etcd.start_member(2);
    let back = a
        .wait_for("recover", Duration::from_secs(15), |s| {
            s.is_some_and(|s| {
                s["etcd_ok"] == true
                    && s["lease"].is_object()
                    && s["is_scheduler"] == true
                    && s["published_devices"] == 2
            })
        })
        .await;
    eprintln!("cluster: recovered {back:?} after the members restarted");
    let keys = etcd.keys(&format!("{p}devices/rack-a/"));
    assert_eq!(keys.len(), 2, "{keys:?}");
    let overview = get_json(&a, "/api/pool/overview/").await;
    assert_eq!(overview["cluster_warning"], Value::Null, "{overview}");
}

/// Without `[cluster]` nothing of cluster mode exists: no client, no etcd connection, the
/// API says `enabled: false` and health has no `cluster` entry. Needs no etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cluster_section_no_etcd_is_involved() {
    let s = TestServer::start_rack(1, "").await;
    assert!(s.app.cluster.is_none());
    let metrics = get_text(s.url("/metrics")).await;
    assert!(!metrics.contains("mozpool_cluster_"), "{metrics}");
    let (status, body) = s.get("/api/cluster/").await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"enabled": false}));
    let (status, health) = s.get("/api/health/").await;
    assert_eq!(status, 200);
    assert!(health.get("cluster").is_none(), "{health}");
    let page = get_text(s.url("/ui/")).await;
    assert!(
        !page.contains("cluster-warning"),
        "no cluster banner: {page}"
    );
    let (_, overview) = s.get("/api/pool/overview/").await;
    assert!(overview.get("cluster_warning").is_none(), "{overview}");
    s.wait_all_ready(20).await;
    s.stop().await;
}

/// A `[cluster]` whose etcd is down does not stop the controller: it serves its rack, says
/// etcd is unreachable, and has no lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_starts_while_etcd_is_down() {
    let port = free_port();
    let text = format!(
        "[cluster]\nname = \"rack-x\"\nendpoints = [\"http://127.0.0.1:{port}\"]\nlease_ttl_s = 2\ntimeout_ms = 300\n"
    );
    let s = TestServer::start_rack(1, &text).await;
    let body = poll(
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || {
            let (status, body) = s.get("/api/cluster/").await;
            assert_eq!(status, 200);
            ok_if(body["etcd_error"].is_string(), body)
        },
    )
    .await
    .unwrap_or_else(|body| panic!("no etcd_error: {body}"));
    assert_eq!(body["etcd_ok"], false, "{body}");
    assert!(body["lease"].is_null(), "{body}");
    assert_eq!(body["is_scheduler"], false, "{body}");
    s.wait_all_ready(20).await;
    s.stop().await;
}

/// TLS (rustls) with client certificates against etcd 3.4: a controller with `ca`, `cert`
/// and `key` takes its lease, wins the election and publishes; one without a client
/// certificate is refused and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let test = "cluster_tls";
    let Some(etcd) = Etcd::start_with(test, true, &[]) else {
        return;
    };
    let p = prefix(test);
    let s = TestServer::start_rack(1, &etcd.section("rack-tls", &p)).await;
    poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let (_, body) = s.get("/api/cluster/").await;
            let up = body["etcd_ok"] == true
                && body["lease"].is_object()
                && body["is_scheduler"] == true
                && body["published_devices"] == 1
                && body["members"].as_array().is_some_and(|m| m.len() == 1);
            ok_if(up, body)
        },
    )
    .await
    .unwrap_or_else(|body| panic!("over TLS: {body}"));
    assert_eq!(etcd.keys(&format!("{p}devices/rack-tls/")).len(), 1);
    let metrics = get_text(s.url("/metrics")).await;
    for line in [
        "mozpool_cluster_etcd_up 1",
        "mozpool_cluster_lease_held 1",
        "mozpool_cluster_scheduler 1",
        "mozpool_cluster_members 1",
        "mozpool_cluster_published_devices 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }

    // Without a client certificate the members refuse the connection.
    let no_cert: String = etcd
        .section("rack-nocert", &p)
        .lines()
        .filter(|l| !l.starts_with("cert =") && !l.starts_with("key ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let t = TestServer::start_rack(1, &no_cert).await;
    let body = poll(
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || {
            let (_, body) = t.get("/api/cluster/").await;
            ok_if(body["etcd_error"].is_string(), body)
        },
    )
    .await
    .unwrap_or_else(|body| panic!("without a client certificate: {body}"));
    assert_eq!(body["etcd_ok"], false, "{body}");
    assert!(body["lease"].is_null(), "{body}");
    t.stop().await;
    s.stop().await;
}

// ---- The shared queue (issue 22) ----

/// A client on one controller's MozPool API.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// `POST /api/device/any/request/` through `c`; the request's JSON.
async fn request_any(c: &Controller, assignee: &str, priority: i32, idem: Option<&str>) -> Value {
    let mut req = http()
        .post(format!("{}/api/device/any/request/", c.url))
        .json(&serde_json::json!({
            "assignee": assignee, "duration": 600, "image": "android",
            "priority": priority, "wait": 120
        }));
    if let Some(k) = idem {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.expect("create");
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, 200, "create through {}: {body}", c.name);
    body["request"].clone()
}

async fn get_json(c: &Controller, path: &str) -> Value {
    let r = http()
        .get(format!("{}{path}", c.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200, "GET {path} through {}", c.name);
    r.json().await.expect("json")
}

/// Poll `id`'s status through `c` (long polls) until `ready`; panics after `within`.
async fn until_ready(c: &Controller, id: u64, within: Duration) -> Value {
    let start = Instant::now();
    let why = |s: &Value| {
        let (name, after) = (&c.name, start.elapsed());
        format!(
            "request {id} not ready through {name} after {after:?}: {s}\n{}",
            c.log_tail()
        )
    };
    let ready = async || {
        let s = get_json(c, &format!("/api/request/{id}/status/?wait=1")).await;
        if s["state"] == "ready" {
            return Ok(s);
        }
        // An ended request will never be ready: no need to wait out `within`.
        let ended = s["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("failed") || s == "closed");
        assert!(!ended, "{}", why(&s));
        Err(s)
    };
    // The status call long-polls itself: no pause between calls.
    poll(within, Duration::ZERO, ready)
        .await
        .unwrap_or_else(|s| panic!("{}", why(&s)))
}

async fn post(c: &Controller, path: &str, body: Value) -> u16 {
    http()
        .post(format!("{}{path}", c.url))
        .json(&body)
        .send()
        .await
        .expect("post")
        .status()
        .as_u16()
}

/// The invariant over etcd's whole history of `<prefix>assign/`: no device has two
/// holders at once (a PUT on a key that is already present, for another request) and no
/// request holds two devices at once. Returns how many assignments it saw.
fn check_assignment_history(etcd: &Etcd, prefix: &str) -> usize {
    let out = Command::new("timeout")
        .arg("2")
        .arg(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoints().join(",")))
        .args(["watch", "--prefix", "--rev=1", &format!("{prefix}assign/")])
        .output()
        .expect("etcdctl watch");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let mut holder: std::collections::HashMap<String, String> = Default::default();
    let mut puts = 0;
    while let Some(l) = lines.next() {
        match l {
            "PUT" => {
                let key = lines.next().expect("key").to_owned();
                let value = lines.next().expect("value").to_owned();
                if let Some(old) = holder.get(&key) {
                    assert_eq!(
                        old, &value,
                        "device {key} given to {value} while {old} held it"
                    );
                }
                assert!(
                    !holder.iter().any(|(k, v)| *v == value && *k != key),
                    "request {value} holds two devices: {key} and another ({holder:?})"
                );
                holder.insert(key, value);
                puts += 1;
            }
            "DELETE" => {
                let key = lines.next().expect("key");
                holder.remove(key);
            }
            _ => {}
        }
    }
    puts
}

/// Issue 22, test 7: the mozharness sequence (request any, poll status until ready,
/// details, renew, return) against each controller; the device may be on another rack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mozharness_sequence_works_against_each_controller() {
    let racks = [("rack-a", 1), ("rack-b", 1)];
    let Some((etcd, p, [a, b])) = pooled("cluster_mozharness", racks).await else {
        return;
    };
    for c in [&a, &b] {
        let t = Instant::now();
        let r = request_any(c, "mozharness", 0, None).await;
        let id = r["id"].as_u64().expect("integer id");
        assert_eq!(r["url"], format!("{}/api/request/{id}/", c.url));
        let s = until_ready(c, id, Duration::from_secs(30)).await;
        let device = s["assigned_device"].as_str().expect("device").to_owned();
        assert!(device.starts_with("sim-"), "{s}");
        eprintln!(
            "cluster: request {id} through {} ready on {device} of {} in {:?}",
            c.name,
            s["controller"],
            t.elapsed()
        );
        // Details and status through the other controller agree.
        let other = if c.name == a.name { &b } else { &a };
        let d = get_json(other, &format!("/api/request/{id}/details/")).await;
        assert_eq!(d["state"], "ready");
        assert_eq!(d["assigned_device"], device.as_str());
        assert_eq!(d["imaging_server"], c.name.as_str());
        assert_eq!(
            post(
                c,
                &format!("/api/request/{id}/renew/"),
                serde_json::json!({"duration": 900})
            )
            .await,
            204
        );
        let d2 = get_json(c, &format!("/api/request/{id}/details/")).await;
        assert_ne!(d2["expires"], d["expires"], "renew moved the expiry");
        // While it holds its device, a second request (through the same controller) is
        // served by the other rack's device.
        let r2 = request_any(c, "mozharness-2", 0, None).await;
        let id2 = r2["id"].as_u64().expect("id");
        // The open requests through the other controller include the one just created.
        let open = list_ids(other, "/api/request/list/").await;
        assert!(open.contains(&id) && open.contains(&id2), "{open:?}");
        let s2 = until_ready(c, id2, Duration::from_secs(30)).await;
        assert_ne!(
            s2["controller"], s["controller"],
            "served by the other rack: {s} {s2}"
        );
        for id in [id, id2] {
            assert_eq!(
                post(
                    c,
                    &format!("/api/request/{id}/return/"),
                    serde_json::json!({})
                )
                .await,
                204
            );
            let st = get_json(other, &format!("/api/request/{id}/status/")).await;
            assert_eq!(st["state"], "closed");
        }
        // Both devices come back (self-tested, assignment freed) before the next round.
        let t = Instant::now();
        poll(
            Duration::from_secs(30),
            Duration::from_millis(100),
            async || {
                let left = etcd.keys(&format!("{p}assign/"));
                ok_if(left.is_empty(), left)
            },
        )
        .await
        .unwrap_or_else(|left| {
            let (la, lb) = (a.log_tail(), b.log_tail());
            panic!("assignments not freed: {left:?}\n{la}\n{lb}")
        });
        eprintln!(
            "cluster: both devices back in the pool {:?} after the returns",
            t.elapsed()
        );
    }
    assert_eq!(list_ids(&b, "/api/request/list/").await, [0u64; 0]);
    let all = list_ids(&b, "/api/request/list/?include_closed=1").await;
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all.is_sorted(), "by id, as on a single rack: {all:?}");
    assert_eq!(check_assignment_history(&etcd, &p), 4);
}

/// The request ids of a request list.
async fn list_ids(c: &Controller, path: &str) -> Vec<u64> {
    get_json(c, path).await["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| r["id"].as_u64().expect("id"))
        .collect()
}

/// Wait until all controllers' devices (`n`) and a scheduler are in etcd.
async fn until_pooled(etcd: &Etcd, p: &str, n: usize) {
    poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let devices = etcd.keys(&format!("{p}devices/"));
            let scheduler = etcd.keys(&format!("{p}scheduler"));
            ok_if(
                devices.len() >= n && !scheduler.is_empty(),
                (devices, scheduler),
            )
        },
    )
    .await
    .unwrap_or_else(|(devices, scheduler)| {
        panic!("not published: {devices:?}, scheduler {scheduler:?}")
    });
}

/// The etcd cluster of `test` (keys under its [`prefix`]) and a controller per `(name,
/// devices)` of `racks`, started in turn, once all their devices and a scheduler are in etcd
/// ([`until_pooled`]); `None` (after `SKIPPED`) where [`Etcd::start`] skips.
async fn pooled<const N: usize>(
    test: &str,
    racks: [(&str, u32); N],
) -> Option<(Etcd, String, [Controller; N])> {
    pooled_with(test, racks, "").await
}

/// [`pooled`], with `extra` lines in every controller's `[cluster]` section.
async fn pooled_with<const N: usize>(
    test: &str,
    racks: [(&str, u32); N],
    extra: &str,
) -> Option<(Etcd, String, [Controller; N])> {
    let etcd = Etcd::start(test)?;
    let p = prefix(test);
    let mut ctrls = Vec::new();
    for (name, devices) in racks {
        ctrls.push(Controller::start_with(&etcd, name, &p, devices, extra).await);
    }
    let total = racks.iter().map(|(_, n)| *n as usize).sum();
    until_pooled(&etcd, &p, total).await;
    let Ok(ctrls) = ctrls.try_into() else {
        unreachable!("one controller per rack");
    };
    Some((etcd, p, ctrls))
}

/// Published devices that are available and have no assignment: what the scheduler may
/// hand out now, as `controller/device`.
fn free_devices(etcd: &Etcd, p: &str) -> Vec<String> {
    let out = etcd.etcdctl(&["get", "--prefix", &format!("{p}devices/")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let assigned = etcd.keys(&format!("{p}assign/"));
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .filter(|kv| kv.len() == 2 && kv[1].contains("\"available\":true"))
        .filter_map(|kv| kv[0].strip_prefix(&format!("{p}devices/")))
        .filter(|d| !assigned.contains(&format!("{p}assign/{d}")))
        .map(str::to_owned)
        .collect()
}

/// Wait (30 s, polling every 100 ms) until the [`free_devices`] satisfy `pred`; panics
/// saying `what`, with the free devices last seen and, given `log_of`, its log tail.
async fn until_free(
    etcd: &Etcd,
    p: &str,
    what: &str,
    pred: impl Fn(&[String]) -> bool,
    log_of: Option<&Controller>,
) {
    poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            let free = free_devices(etcd, p);
            ok_if(pred(&free), free)
        },
    )
    .await
    .unwrap_or_else(|free| {
        let log = log_of.map_or(String::new(), |c| format!("\n{}", c.log_tail()));
        panic!("{what}: free {free:?}{log}")
    });
}

/// Issue 22, test 2: all devices held; two waiters of different priority queued through
/// two controllers; a device returned on a third goes to the higher priority within 2 s,
/// the next one to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_freed_device_serves_the_highest_priority_waiter() {
    let racks = [("rack-a", 1), ("rack-b", 1), ("rack-c", 1)];
    let Some((etcd, p, [a, b, c])) = pooled("cluster_priority", racks).await else {
        return;
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let r = request_any(&c, "holder", 0, None).await;
        held.push(r["id"].as_u64().expect("id"));
    }
    for id in &held {
        until_ready(&c, *id, Duration::from_secs(30)).await;
    }
    let low = request_any(&a, "low", 0, None).await["id"]
        .as_u64()
        .expect("id");
    let high = request_any(&b, "high", 5, None).await["id"]
        .as_u64()
        .expect("id");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in [low, high] {
        let s = get_json(&c, &format!("/api/request/{id}/status/")).await;
        assert_eq!(s["state"], "queued", "{s}");
    }
    let assigned = |s: &Value| s["state"] != "queued";
    for (round, expect) in [(0usize, high), (1, low)] {
        assert_eq!(
            post(
                &c,
                &format!("/api/request/{}/return/", held[round]),
                serde_json::json!({})
            )
            .await,
            204
        );
        // The returned device is self-tested by its rack first (as in single-rack mode);
        // the 2 s run from the moment it is published available again.
        let t = Instant::now();
        let mut freed: Option<Instant> = None;
        loop {
            let s = get_json(&c, &format!("/api/request/{expect}/status/")).await;
            if assigned(&s) {
                break;
            }
            if freed.is_none() && !free_devices(&etcd, &p).is_empty() {
                freed = Some(Instant::now());
            }
            assert!(
                freed.is_none_or(|f| f.elapsed() < Duration::from_secs(2))
                    && t.elapsed() < Duration::from_secs(30),
                "request {expect} not served within 2 s of a device freed: {s}; assignments {:?}\n{}",
                etcd.keys(&format!("{p}assign/")),
                c.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "cluster: freed device went to request {expect} {:?} after the return, {:?} after it was published available",
            t.elapsed(),
            freed.map(|f| f.elapsed())
        );
        if round == 0 {
            let s = get_json(&a, &format!("/api/request/{low}/status/")).await;
            assert_eq!(s["state"], "queued", "the lower priority still waits: {s}");
        }
    }
    check_assignment_history(&etcd, &p);
}

/// Issue 22, test 3: a request survives the controller that took it, and a create retried
/// on another controller with the same idempotency key yields one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_request_survives_its_controller_and_retries_are_idempotent() {
    let racks = [("rack-a", 1), ("rack-b", 1), ("rack-c", 1)];
    let Some((etcd, p, [a, b, c])) = pooled("cluster_survive", racks).await else {
        return;
    };
    let id = request_any(&a, "survivor", 0, None).await["id"]
        .as_u64()
        .expect("id");
    signal(&a.child, Signal::SIGKILL);
    let t = Instant::now();
    let s = until_ready(&b, id, Duration::from_secs(30)).await;
    assert_ne!(s["controller"], "rack-a", "served by a live rack: {s}");
    eprintln!(
        "cluster: request {id} taken by a killed controller ready in {:?}",
        t.elapsed()
    );
    // The same idempotency key through two controllers: one request.
    let first = request_any(&b, "retry", 0, Some("job-42-attempt")).await;
    let again = request_any(&c, "retry", 0, Some("job-42-attempt")).await;
    assert_eq!(first["id"], again["id"], "{first} {again}");
    let list = get_json(&c, "/api/request/list/?include_closed=1").await;
    let n = list["requests"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["assignee"] == "retry")
        .count();
    assert_eq!(n, 1, "{list}");
    let other = request_any(&c, "retry", 0, Some("job-43")).await;
    assert_ne!(other["id"], first["id"]);
    check_assignment_history(&etcd, &p);
}

/// Issue 22, test 6: the scheduler is paused during a burst of creates; another controller
/// assigns within the lease TTL + 2 s; after SIGCONT the old scheduler assigns nothing
/// (its election is gone) and the history has no double booking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_scheduler_during_a_burst_is_replaced() {
    let racks = [("rack-a", 2), ("rack-b", 2), ("rack-c", 2)];
    let Some((etcd, p, ctrls)) = pooled("cluster_burst_failover", racks).await else {
        return;
    };
    let mut leader = None;
    for (i, c) in ctrls.iter().enumerate() {
        if is_scheduler(c.status().await.as_ref()) {
            leader = Some(i);
        }
    }
    let leader = leader.expect("a scheduler");
    let old_rev = ctrls[leader].status().await.expect("status")["election_revision"].clone();
    assert!(old_rev.is_i64(), "{old_rev}");
    let others: Vec<&Controller> = ctrls
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, c)| c)
        .collect();
    signal(&ctrls[leader].child, Signal::SIGSTOP);
    let paused = Instant::now();
    let mut ids = Vec::new();
    for i in 0..4 {
        let r = request_any(others[i % 2], "burst", 0, None).await;
        ids.push(r["id"].as_u64().expect("id"));
    }
    // Every request of the burst is assigned by the new scheduler within TTL + 2 s of the
    // pause (the creates above count against it).
    poll(
        (TTL + Duration::from_secs(2)).saturating_sub(paused.elapsed()),
        Duration::from_millis(50),
        async || {
            let mut queued = 0;
            for id in &ids {
                let s = get_json(others[0], &format!("/api/request/{id}/status/")).await;
                if s["state"] == "queued" {
                    queued += 1;
                }
            }
            ok_if(queued == 0, queued)
        },
    )
    .await
    .unwrap_or_else(|queued| {
        let after = paused.elapsed();
        panic!("{queued} requests still queued {after:?} after the scheduler was paused")
    });
    eprintln!(
        "cluster: burst assigned {:?} after pausing the scheduler",
        paused.elapsed()
    );
    signal(&ctrls[leader].child, Signal::SIGCONT);
    for id in &ids {
        until_ready(others[1], *id, Duration::from_secs(40)).await;
    }
    // The resumed controller no longer holds the election it held (its assignment
    // transactions compare that revision, so they fail).
    let s = ctrls[leader].status().await.expect("status");
    assert_ne!(s["election_revision"], old_rev, "{s}");
    check_assignment_history(&etcd, &p);
}

/// `POST /api/device/any/request/` for `assignee` (queueing up to 120 s) through `c`,
/// whatever it answers.
async fn send_any(c: &Controller, assignee: &str) -> reqwest::Response {
    http()
        .post(format!("{}/api/device/any/request/", c.url))
        .json(&serde_json::json!({
            "assignee": assignee, "duration": 600, "image": "android", "wait": 120
        }))
        .send()
        .await
        .expect("create")
}

/// Issue 22, test 5: one etcd member down changes nothing for request calls; with all
/// devices held and a request waiting, two members down → a create and a return answer 503
/// `cluster_unavailable` within 5 s and nothing is reassigned through the outage (longer
/// than the lease TTL); members back → the retried return frees a device, the request that
/// waited through the outage is served, then a new one, and the history has no double
/// booking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_calls_through_etcd_member_loss_and_quorum_loss() {
    let racks = [("rack-a", 1), ("rack-b", 1)];
    let Some((mut etcd, p, [a, b])) = pooled("cluster_queue_quorum", racks).await else {
        return;
    };
    // One member down, the raft leader first, changes nothing: the create right after
    // rides out etcd's election and both devices are handed out as usual.
    let first = etcd.leader();
    let second = (first + 1) % 3;
    etcd.kill_member(first);
    let held = request_any(&a, "one-down", 0, None).await["id"]
        .as_u64()
        .expect("id");
    let s = until_ready(&b, held, Duration::from_secs(30)).await;
    let held2 = request_any(&b, "one-down-2", 0, None).await["id"]
        .as_u64()
        .expect("id");
    let s_held2 = until_ready(&a, held2, Duration::from_secs(30)).await;
    // All devices held; a request waits (its reason written) before quorum is lost.
    let waiter = request_any(&a, "waiter", 0, None).await["id"]
        .as_u64()
        .expect("id");
    poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || {
            let st = get_json(&b, &format!("/api/request/{waiter}/status/")).await;
            assert_eq!(st["state"], "queued", "{st}");
            ok_if(st["waiting_because"].is_string(), st)
        },
    )
    .await
    .unwrap_or_else(|st| panic!("no reason: {st}"));
    let assigned_before = etcd.keys(&format!("{p}assign/"));
    let history_before = check_assignment_history(&etcd, &p);
    assert_eq!(history_before, 2);
    etcd.kill_member(second);
    let t = Instant::now();
    let r = send_any(&b, "no-quorum").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "cluster_unavailable", "{body}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    eprintln!(
        "cluster: create without quorum answered 503 in {:?}",
        t.elapsed()
    );
    // A return is a write too: 503, to be retried once etcd is back.
    let t = Instant::now();
    let ret = http()
        .post(format!("{}/api/request/{held}/return/", a.url))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("return");
    assert_eq!(ret.status(), 503);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    eprintln!(
        "cluster: return without quorum answered 503 in {:?}",
        t.elapsed()
    );
    // Stay down past the lease TTL (2 s): every controller loses its lease and the
    // scheduler role meanwhile.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    etcd.start_member(second);
    etcd.start_member(first);
    etcd.wait_writable(Duration::from_secs(20));
    let back = Instant::now();
    // Nothing was reassigned through the outage: the same assignments, no new ones in
    // etcd's history, the ready requests on their devices, the waiter still waiting.
    a.wait_for("a lease again", Duration::from_secs(10), |s| {
        s.is_some_and(|s| s["lease"].is_object())
    })
    .await;
    until_pooled(&etcd, &p, 2).await;
    assert_eq!(etcd.keys(&format!("{p}assign/")), assigned_before);
    assert_eq!(check_assignment_history(&etcd, &p), history_before);
    for (id, st) in [(held, &s), (held2, &s_held2)] {
        let d = get_json(&a, &format!("/api/request/{id}/details/")).await;
        assert_eq!(d["state"], "ready", "{d}");
        assert_eq!(d["assigned_device"], st["assigned_device"]);
        assert_eq!(d["controller"], st["controller"]);
    }
    let st = get_json(&b, &format!("/api/request/{waiter}/status/")).await;
    assert_eq!(st["state"], "queued", "{st}");
    // A create is taken again; the return is retried and its device serves the request
    // that waited through the outage (it is older than the new one).
    let after = poll(
        Duration::from_secs(20),
        Duration::from_millis(200),
        async || {
            let r = send_any(&a, "after").await;
            if r.status() != 200 {
                return Err(r.status());
            }
            let v: Value = r.json().await.expect("json");
            Ok(v["request"]["id"].as_u64().expect("id"))
        },
    )
    .await
    .unwrap_or_else(|status| panic!("creates still fail: {status}"));
    assert_eq!(
        post(
            &b,
            &format!("/api/request/{held}/return/"),
            serde_json::json!({})
        )
        .await,
        204
    );
    let sw = until_ready(&b, waiter, Duration::from_secs(40)).await;
    assert_eq!(sw["controller"], s["controller"], "{s} {sw}");
    eprintln!(
        "cluster: the request that waited through the outage was ready {:?} after quorum came back",
        back.elapsed()
    );
    let st = get_json(&a, &format!("/api/request/{after}/status/")).await;
    assert_eq!(st["state"], "queued", "{st}");
    assert_eq!(
        post(
            &a,
            &format!("/api/request/{held2}/return/"),
            serde_json::json!({})
        )
        .await,
        204
    );
    let s2 = until_ready(&b, after, Duration::from_secs(40)).await;
    assert_eq!(s2["controller"], s_held2["controller"], "{s_held2} {s2}");
    assert_eq!(check_assignment_history(&etcd, &p), 4);
    // A create answered 503 whose write etcd committed once quorum was back (a member
    // took the proposal before it lost quorum) must not stay open: its client does not
    // know it. The controller that answered closes it.
    let all = get_json(&a, "/api/request/list/?include_closed=1").await;
    for r in all["requests"].as_array().expect("requests") {
        let id = r["id"].as_u64().expect("id");
        if [waiter, after].contains(&id) {
            continue;
        }
        assert_ne!(r["state"], "ready", "{r}");
        let open = r["open"] == true;
        if open || ![held, held2].contains(&id) {
            let st = get_json(&a, &format!("/api/request/{id}/status/")).await;
            let closed_late = st["log"].as_array().is_some_and(|l| {
                l.iter().any(|e| {
                    e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("answered 503"))
                })
            });
            assert!(
                closed_late && st["state"] == "closed",
                "request {id} is neither the test's nor a late create closed: {st}"
            );
            eprintln!(
                "cluster: request {id}, a create answered 503 and committed later, was closed"
            );
        }
    }
}

/// Messages of a status or log answer's `log`, checking the rows' shape on the way.
fn log_messages(v: &Value) -> Vec<String> {
    let rows = v["log"].as_array().expect("log rows");
    let mut last = 0;
    rows.iter()
        .map(|row| {
            let id = row["id"].as_u64().expect("row id");
            assert!(id > last, "oldest first: {v}");
            last = id;
            assert!(row["timestamp"].is_string(), "{row}");
            assert!(row["source"].is_string(), "{row}");
            row["message"].as_str().expect("message").to_owned()
        })
        .collect()
}

/// Cluster mode's queue answers like single-rack mode's: fair share counts what each
/// assignee holds on every rack (and the queue position follows it), a waiting request says
/// why it waits, the request's log tells where it was taken, assigned, prepared and
/// returned, and the request event route acts on the shared request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasons_logs_and_fair_share_across_racks() {
    let racks = [("rack-a", 2), ("rack-b", 1)];
    let Some((etcd, p, [a, b])) = pooled("cluster_reasons", racks).await else {
        return;
    };
    // Alice holds two devices, carol the third: every device is held.
    let mut holders = Vec::new();
    for (c, who) in [(&a, "alice"), (&b, "alice"), (&b, "carol")] {
        holders.push(
            request_any(c, who, 0, None).await["id"]
                .as_u64()
                .expect("id"),
        );
    }
    for id in &holders {
        until_ready(&a, *id, Duration::from_secs(30)).await;
    }
    // Alice (priority 5, first) and bob (priority 0) wait. Alice holds 2 of 3, her share:
    // bob goes first, as single-rack mode decides.
    let alice = request_any(&a, "alice", 5, None).await["id"]
        .as_u64()
        .expect("id");
    let bob = request_any(&b, "bob", 0, None).await["id"]
        .as_u64()
        .expect("id");
    let t = Instant::now();
    let (sa, sb) = poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || {
            let sa = get_json(&b, &format!("/api/request/{alice}/status/")).await;
            let sb = get_json(&a, &format!("/api/request/{bob}/status/")).await;
            ok_if(
                sa["waiting_because"].is_string() && sb["waiting_because"].is_string(),
                (sa, sb),
            )
        },
    )
    .await
    .unwrap_or_else(|(sa, sb)| panic!("no reasons: {sa} {sb}"));
    eprintln!(
        "cluster: waiting_because written {:?} after the creates",
        t.elapsed()
    );
    let why = sb["waiting_because"].as_str().expect("reason");
    assert_eq!(sa["waiting_because"], why);
    assert!(why.ends_with("of 3 matching all criteria: 3 held"), "{why}");
    assert_eq!(sb["queue_position"], 1, "{sb}");
    assert_eq!(sa["queue_position"], 2, "{sa}");
    let created = log_messages(&sb);
    assert!(
        created[0].starts_with("created on controller rack-b"),
        "{created:?}"
    );
    assert!(
        created.iter().any(|m| *m == format!("queued: {why}")),
        "{created:?}"
    );
    // Carol returns her device: bob gets it; alice still waits.
    assert_eq!(
        post(
            &a,
            &format!("/api/request/{}/return/", holders[2]),
            serde_json::json!({})
        )
        .await,
        204
    );
    let sb = until_ready(&a, bob, Duration::from_secs(30)).await;
    let sa = get_json(&b, &format!("/api/request/{alice}/status/")).await;
    assert_eq!(sa["state"], "queued", "{sa}");
    assert_eq!(sa["queue_position"], 1, "{sa}");
    let lines = log_messages(&sb);
    eprintln!("cluster: request {bob}'s log: {lines:#?}");
    eprintln!(
        "cluster: request {}'s log: {:#?}",
        holders[0],
        log_messages(&get_json(&a, &format!("/api/request/{}/log/", holders[0])).await)
    );
    for id in [bob, holders[0]] {
        let out = etcd.etcdctl(&["get", &format!("{p}requests/{id}"), "--print-value-only"]);
        eprintln!(
            "cluster: request {id}'s record in etcd is {} bytes",
            out.stdout.len()
        );
    }
    let device = sb["assigned_device"].as_str().expect("device");
    let rack = sb["controller"].as_str().expect("controller");
    for want in [
        format!("assigned device {device} on controller {rack}"),
        format!("controller {rack} holds device {device} for it"),
        format!("device {device} on controller {rack} is ready"),
    ] {
        assert!(
            lines.iter().any(|m| m.starts_with(&want)),
            "{want}: {lines:?}"
        );
    }
    assert_eq!(
        log_messages(&get_json(&b, &format!("/api/request/{bob}/log/")).await),
        lines
    );
    let carol = log_messages(&get_json(&b, &format!("/api/request/{}/log/", holders[2])).await);
    assert!(
        carol
            .last()
            .is_some_and(|m| m.starts_with("Request returned through controller rack-a")),
        "{carol:?}"
    );
    // Request events: close acts on the shared request, once; lifeguard_finished has no
    // meaning here.
    let event = |c: &Controller, id: u64, ev: &str| {
        let url = format!("{}/api/request/{id}/event/{ev}/", c.url);
        async move {
            let r = http()
                .post(url)
                .json(&serde_json::json!({"imaging_result": "complete"}))
                .send()
                .await
                .expect("event");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    assert_eq!(event(&b, alice, "close").await.0, 200);
    let (status, body) = event(&a, alice, "close").await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = event(&a, bob, "lifeguard_finished").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no meaning")),
        "{body}"
    );
    let st = get_json(&a, &format!("/api/request/{alice}/status/")).await;
    assert_eq!(st["state"], "closed");
    assert!(
        log_messages(&st)
            .last()
            .is_some_and(|m| m.starts_with("Request closed (event close)")),
        "{st}"
    );
    check_assignment_history(&etcd, &p);
}

/// Until `pred` holds for request `id` as etcd has it; panics after `within`.
async fn until_shared(
    client: &Cluster,
    id: u64,
    within: Duration,
    what: &str,
    pred: impl Fn(&SharedRequest) -> bool,
) -> Versioned<SharedRequest> {
    let read = async || match client.request(id).await {
        Ok(Some(r)) if pred(&r.value) => Ok(r),
        other => Err(other),
    };
    poll(within, Duration::from_millis(10), read)
        .await
        .unwrap_or_else(|last| panic!("request {id}: {what} not within {within:?}: {last:?}"))
}

/// Issue 22, test 4: a request assigned to a device of rack-x; rack-x is SIGSTOPped while
/// it prepares the device; its lease expires, the request goes back to the queue and is
/// served by rack-a; the report rack-x would make (ready, compared on the request as it read
/// it) is refused; after SIGCONT rack-x's device is self-tested and offered again, and the
/// request stays on rack-a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_cannot_report_stale_results() {
    let test = "cluster_paused_owner";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let p = prefix(test);
    let client = etcd.client(&p);
    let a = Controller::start(&etcd, "rack-a", &p, 1).await;
    until_pooled(&etcd, &p, 1).await;
    // rack-a's only device is held first, so the next request can only go to rack-x's;
    // rack-a is the scheduler (the only candidate), so pausing rack-x leaves it alone.
    let holder = request_any(&a, "holder", 0, None).await["id"]
        .as_u64()
        .expect("id");
    until_ready(&a, holder, Duration::from_secs(30)).await;
    let x = Controller::start(&etcd, "rack-x", &p, 1).await;
    let x_free = |free: &[String]| free.iter().any(|d| d == "rack-x/sim-0001");
    until_free(&etcd, &p, "rack-x not pooled", x_free, None).await;
    assert!(is_scheduler(a.status().await.as_ref()));
    let id = request_any(&a, "victim", 0, None).await["id"]
        .as_u64()
        .expect("id");
    // Pause rack-x once it holds its device for the request (published `held`) and is
    // preparing it (the simulated flash takes seconds): the request is still `pending`.
    let stale = until_shared(&client, id, Duration::from_secs(10), "assigned", |r| {
        r.state != RequestState::Queued
    })
    .await;
    assert_eq!(stale.value.owner.as_deref(), Some("rack-x"), "{stale:?}");
    let x_key = format!("{p}devices/rack-x/sim-0001");
    poll(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || {
            let value =
                String::from_utf8_lossy(&etcd.etcdctl(&["get", &x_key]).stdout).into_owned();
            ok_if(value.contains("\"held\":true"), value)
        },
    )
    .await
    .unwrap_or_else(|value| panic!("rack-x never held its device: {value}\n{}", x.log_tail()));
    signal(&x.child, Signal::SIGSTOP);
    let paused = Instant::now();
    let now = client.request(id).await.expect("etcd").expect("request");
    assert_eq!(
        now.value.state,
        RequestState::Pending,
        "paused while preparing: {now:?}"
    );
    assert_eq!(now.mod_revision, stale.mod_revision, "{now:?}");
    // Its lease expires; the scheduler sends the request back to the queue.
    until_shared(
        &client,
        id,
        TTL + Duration::from_secs(3),
        "back in the queue",
        |r| r.owner.as_deref() != Some("rack-x"),
    )
    .await;
    eprintln!(
        "cluster: request {id} back in the queue {:?} after its owner was paused",
        paused.elapsed()
    );
    // rack-a's device is freed and serves it.
    assert_eq!(
        post(
            &a,
            &format!("/api/request/{holder}/return/"),
            serde_json::json!({})
        )
        .await,
        204
    );
    let s = until_ready(&a, id, Duration::from_secs(30)).await;
    assert_eq!(s["controller"], "rack-a", "{s}");
    // The report rack-x would make from what it read before the pause is refused.
    let mut report = stale.value.clone();
    report.state = RequestState::Ready;
    assert!(
        !client
            .update_request(&report, stale.mod_revision, None)
            .await
            .expect("etcd"),
        "a stale ready report was accepted"
    );
    signal(&x.child, Signal::SIGCONT);
    let resumed = Instant::now();
    // rack-x drops its local hold; its device is self-tested and offered again.
    let gone = "rack-x's device not back in the pool";
    until_free(&etcd, &p, gone, x_free, Some(&x)).await;
    eprintln!(
        "cluster: rack-x's device available again {:?} after SIGCONT",
        resumed.elapsed()
    );
    assert!(
        std::fs::read_to_string(x.dir.join("serve.log"))
            .unwrap_or_default()
            .contains("cluster: preparing an assigned device"),
        "rack-x never prepared the device"
    );
    let s = get_json(&x, &format!("/api/request/{id}/status/")).await;
    assert_eq!(s["state"], "ready", "{s}");
    assert_eq!(s["controller"], "rack-a", "{s}");
    // holder on rack-a, the request on rack-x, then on rack-a.
    assert_eq!(check_assignment_history(&etcd, &p), 3);
}

/// A small deterministic generator for the chaos clients (xorshift64).
struct Dice(u64);

impl Dice {
    fn pick(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % n as u64).expect("small")
    }
}

/// One call that may fail (the controller is dead or restarting, etcd is busy): the
/// status and JSON body, or `None`.
async fn try_call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
    idem: Option<&str>,
) -> Option<(u16, Value)> {
    let mut req = http.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(k) = idem {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.unwrap_or(Value::Null)))
}

/// What one chaos client saw: requests created and requests it saw ready.
#[derive(Default)]
struct ChaosTally {
    created: usize,
    ready: usize,
}

/// One client of the chaos test: create (retried with the same idempotency key on other
/// controllers), poll until ready, renew, return, each through a random controller, until
/// `until`.
async fn chaos_client(n: u64, urls: Vec<String>, until: Instant) -> ChaosTally {
    use reqwest::Method;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ (n + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut tally = ChaosTally::default();
    let mut round = 0;
    while Instant::now() < until {
        round += 1;
        let key = format!("chaos-{n}-{round}");
        let body = serde_json::json!({
            "assignee": format!("chaos-{n}"), "duration": 60, "image": "android", "wait": 20
        });
        let mut id = None;
        for _ in 0..20 {
            let url = format!("{}/api/device/any/request/", urls[dice.pick(urls.len())]);
            if let Some((200, v)) =
                try_call(&http, Method::POST, url, Some(body.clone()), Some(&key)).await
            {
                id = v["request"]["id"].as_u64();
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let Some(id) = id else { continue };
        tally.created += 1;
        // Poll until ready (or failed, or this round's time is up).
        let deadline = Instant::now() + Duration::from_secs(12);
        let mut device: Option<String> = None;
        while Instant::now() < deadline && device.is_none() {
            let url = format!(
                "{}/api/request/{id}/status/?wait=1",
                urls[dice.pick(urls.len())]
            );
            match try_call(&http, Method::GET, url, None, None).await {
                Some((200, s)) if s["state"] == "ready" => {
                    device = Some(format!("{}/{}", s["controller"], s["assigned_device"]));
                }
                Some((200, s)) if s["state"] != "queued" && s["state"] != "pending" => break,
                Some(_) => {}
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        if let Some(d) = &device {
            tally.ready += 1;
            // Renew, then read it back: a ready request stays on its device.
            let url = format!("{}/api/request/{id}/renew/", urls[dice.pick(urls.len())]);
            let _ = try_call(
                &http,
                Method::POST,
                url,
                Some(serde_json::json!({"duration": 90})),
                None,
            )
            .await;
            let url = format!("{}/api/request/{id}/status/", urls[dice.pick(urls.len())]);
            if let Some((200, s)) = try_call(&http, Method::GET, url, None, None).await
                && s["state"] == "ready"
            {
                let now = format!("{}/{}", s["controller"], s["assigned_device"]);
                assert_eq!(&now, d, "ready request {id} moved from {d} to {now}");
            }
        }
        // Return it (also when it never became ready), retrying on other controllers.
        for _ in 0..20 {
            let url = format!("{}/api/request/{id}/return/", urls[dice.pick(urls.len())]);
            if let Some((204 | 409, _)) =
                try_call(&http, Method::POST, url, Some(serde_json::json!({})), None).await
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tally
}

/// Issue 22, test 1: no double-booking under chaos. Eight clients create, poll, renew and
/// return requests through random controllers for 20 s while the three controllers are
/// SIGKILLed and restarted in turn (same data directory and port); etcd's whole assignment
/// history has no device with two holders at once and no request with two devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_double_booking_while_controllers_are_killed_and_restarted() {
    let racks = [("rack-a", 2), ("rack-b", 2), ("rack-c", 2)];
    let Some((etcd, p, mut ctrls)) = pooled("cluster_chaos", racks).await else {
        return;
    };
    let urls: Vec<String> = ctrls.iter().map(|c| c.url.clone()).collect();
    let start = Instant::now();
    let until = start + Duration::from_secs(20);
    let clients: Vec<_> = (0..8)
        .map(|n| tokio::spawn(chaos_client(n, urls.clone(), until)))
        .collect();
    // Kill one controller every 3 s in turn and restart it 1 s later.
    let mut kills = 0;
    while start.elapsed() < Duration::from_secs(18) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let c = &mut ctrls[kills % 3];
        c.kill_and_restart();
        kills += 1;
        eprintln!(
            "cluster: chaos: {} killed and restarted at {:?}",
            c.name,
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut created = 0;
    let mut ready = 0;
    for c in clients {
        let t = c.await.expect("client task");
        created += t.created;
        ready += t.ready;
    }
    eprintln!(
        "cluster: chaos: {kills} kills, {created} requests, {ready} ready, {:?}",
        start.elapsed()
    );
    // Every controller came back.
    for c in &ctrls {
        c.wait_for("its lease", Duration::from_secs(20), |s| {
            s.is_some_and(|s| !s["lease"].is_null())
        })
        .await;
    }
    // Everything was returned: every device comes back to the pool (its rack self-tests
    // it and frees its assignment), also those whose controller was killed while it held
    // them for a request.
    let back = Instant::now();
    poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let free = free_devices(&etcd, &p);
            ok_if(free.len() >= 6, free)
        },
    )
    .await
    .unwrap_or_else(|free| {
        let assigned = etcd.keys(&format!("{p}assign/"));
        let published = etcd.etcdctl(&["get", "--prefix", &format!("{p}devices/")]);
        panic!(
            "devices not back after the load: free {free:?}, assignments {assigned:?}\n{}",
            String::from_utf8_lossy(&published.stdout)
        )
    });
    eprintln!(
        "cluster: chaos: all devices back {:?} after the load",
        back.elapsed()
    );
    let left: usize = ctrls
        .iter()
        .map(|c| {
            std::fs::read_to_string(c.dir.join("serve.log"))
                .unwrap_or_default()
                .matches("left by an earlier process")
                .count()
        })
        .sum();
    let puts = check_assignment_history(&etcd, &p);
    eprintln!(
        "cluster: chaos: {puts} assignments checked; {left} mirrors taken over or closed after restarts"
    );
    assert!(
        ready >= 4,
        "too little was served to prove anything: {ready} ready"
    );
}

/// The retention sweep: an ended request stays readable for `cluster.keep_closed_s`, is
/// deleted with its idempotency key only after its device was freed, and the key then
/// creates a new request (ids are not reused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_requests_are_deleted_after_keep_closed() {
    let Some((etcd, p, [a])) = pooled_with(
        "cluster_keep_closed",
        [("rack-a", 1)],
        "keep_closed_s = 2\n",
    )
    .await
    else {
        return;
    };
    let id = request_any(&a, "sweep", 0, Some("sweep-1")).await["id"]
        .as_u64()
        .expect("id");
    until_ready(&a, id, Duration::from_secs(30)).await;
    // An open request is never swept, however old.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let key = format!("{p}requests/{id}");
    assert_eq!(etcd.keys(&key), vec![key.clone()]);
    assert_eq!(
        post(
            &a,
            &format!("/api/request/{id}/return/"),
            serde_json::json!({})
        )
        .await,
        204
    );
    let returned = Instant::now();
    let s = get_json(&a, &format!("/api/request/{id}/status/")).await;
    assert_eq!(s["state"], "closed", "{s}");
    // Deleted once kept 2 s and its device is freed (the self-test takes longer), never
    // while its assignment is still there.
    poll(
        Duration::from_secs(20).saturating_sub(returned.elapsed()),
        Duration::from_millis(50),
        async || {
            let left = etcd.keys(&key);
            ok_if(left.is_empty(), left)
        },
    )
    .await
    .unwrap_or_else(|left| panic!("request {id} not deleted: {left:?}\n{}", a.log_tail()));
    let gone = returned.elapsed();
    assert!(
        gone >= Duration::from_millis(1900),
        "deleted too early: {gone:?}"
    );
    assert!(
        etcd.keys(&format!("{p}assign/")).is_empty(),
        "deleted while its device was still assigned"
    );
    assert!(
        etcd.keys(&format!("{p}idem/")).is_empty(),
        "idempotency key left"
    );
    eprintln!("cluster: ended request {id} deleted {gone:?} after its return");
    let r = http()
        .get(format!("{}/api/request/{id}/status/", a.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let again = request_any(&a, "sweep", 0, Some("sweep-1")).await["id"]
        .as_u64()
        .expect("id");
    assert_eq!(again, id + 1, "a new request, with a new id");
    check_assignment_history(&etcd, &p);
}

// ---- Device calls on any controller, the whole-pool list and page (issue 22) ----

/// A client that shows redirects instead of following them.
fn http_no_redirect() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// `method path` through `c`: status, the `X-Mozpool-Controller` header, the body as JSON
/// (`Null` when it is not JSON).
async fn call(
    c: &Controller,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let mut req = http_no_redirect().request(method.clone(), format!("{}{path}", c.url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if method == reqwest::Method::POST {
        req = req.json(&serde_json::json!({}));
    }
    let r = req.send().await.expect("call");
    let status = r.status().as_u16();
    let by = r
        .headers()
        .get("x-mozpool-controller")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = r.text().await.expect("body");
    (
        status,
        by,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// The devices of `GET /api/device/list/?details=1` through `c`, as (name, controller,
/// state).
async fn pool_list(c: &Controller) -> Vec<(String, String, String)> {
    let list = get_json(c, "/api/device/list/?details=1").await;
    list["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap_or_default().to_owned(),
                d["controller"].as_str().unwrap_or_default().to_owned(),
                d["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Issue 22, "any controller answers any call": rack-a (1 device), rack-b (3) and rack-c
/// (2) all name their devices `sim-0001…`, so `sim-0003` is only on rack-b, `sim-0002` on
/// rack-b and rack-c, and `sim-0001` on all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_calls_reach_their_owner_through_any_controller() {
    use reqwest::Method;
    let racks = [("rack-a", 1), ("rack-b", 3), ("rack-c", 2)];
    let Some((etcd, p, [a, b, c])) = pooled("cluster_forwarding", racks).await else {
        return;
    };

    // The list through each controller: the whole pool, each device with its controller;
    // wait until every device has finished its first self-test.
    let start = Instant::now();
    let want: Vec<(String, String)> = [
        ("sim-0001", "rack-a"),
        ("sim-0001", "rack-b"),
        ("sim-0001", "rack-c"),
        ("sim-0002", "rack-b"),
        ("sim-0002", "rack-c"),
        ("sim-0003", "rack-b"),
    ]
    .iter()
    .map(|(n, c)| ((*n).to_owned(), (*c).to_owned()))
    .collect();
    for ctl in [&a, &b, &c] {
        // One 30 s budget for all three controllers.
        poll(
            Duration::from_secs(30).saturating_sub(start.elapsed()),
            Duration::from_millis(200),
            async || {
                let list = pool_list(ctl).await;
                let mut seen: Vec<(String, String)> = list
                    .iter()
                    .map(|(n, c, _)| (n.clone(), c.clone()))
                    .collect();
                seen.sort();
                let all_ready = list.iter().all(|(_, _, s)| s == "ready");
                ok_if(seen == want && all_ready, list)
            },
        )
        .await
        .unwrap_or_else(|list| panic!("list through {}: {list:?}", ctl.name));
        let plain = get_json(ctl, "/api/device/list/").await;
        assert_eq!(
            plain["devices"].as_array().map(Vec::len),
            Some(6),
            "plain list through {}: {plain}",
            ctl.name
        );
        assert!(plain["devices"][0].is_string(), "{plain}");
    }
    eprintln!(
        "cluster: whole-pool lists agree on every controller {:?} after start",
        start.elapsed()
    );

    // A local device always wins: answered by rack-a itself.
    let (s, by, d) = call(&a, Method::GET, "/api/device/sim-0001/details/", &[]).await;
    assert_eq!((s, by.as_deref()), (200, None), "{d}");
    assert_eq!(d["imaging_server"], "rack-a");

    // rack-b's device through rack-a: details, status, log and an event reach rack-b.
    let (s, by, d) = call(&a, Method::GET, "/api/device/sim-0003/details/", &[]).await;
    assert_eq!((s, by.as_deref()), (200, Some("rack-b")), "{d}");
    assert_eq!(d["imaging_server"], "rack-b");
    let (s, by, st) = call(&a, Method::GET, "/api/device/sim-0003/status/", &[]).await;
    assert_eq!((s, by.as_deref()), (200, Some("rack-b")), "{st}");
    assert_eq!(st["state"], "ready");
    let t = Instant::now();
    let (s, by, ev) = call(
        &a,
        Method::POST,
        "/api/device/sim-0003/event/please_self_test/",
        &[],
    )
    .await;
    assert_eq!((s, by.as_deref()), (200, Some("rack-b")), "{ev}");
    eprintln!("cluster: a forwarded event answered in {:?}", t.elapsed());
    // rack-b's own log of the device shows the event taken by its state machine; rack-a's
    // log has nothing about the device.
    let log = get_json(&b, "/api/device/sim-0003/log/").await.to_string();
    assert!(
        log.contains("ready -> start_self_test: please_self_test"),
        "{log}"
    );
    let (s, by, via_a) = call(&a, Method::GET, "/api/device/sim-0003/log/", &[]).await;
    assert_eq!((s, by.as_deref()), (200, Some("rack-b")));
    assert!(via_a.to_string().contains("please_self_test"), "{via_a}");
    let a_log = get_json(&a, "/api/log/?subject=device:sim-0003")
        .await
        .to_string();
    assert!(!a_log.contains("please_self_test"), "{a_log}");

    // What forwarding costs: sequential details of a local and of a forwarded device.
    let times = |ms: &mut Vec<f64>, t: Instant| ms.push(t.elapsed().as_secs_f64() * 1e3);
    let (mut local, mut forwarded) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(
            call(&a, Method::GET, "/api/device/sim-0001/details/", &[])
                .await
                .0,
            200
        );
        times(&mut local, t);
        let t = Instant::now();
        assert_eq!(
            call(&a, Method::GET, "/api/device/sim-0003/details/", &[])
                .await
                .0,
            200
        );
        times(&mut forwarded, t);
    }
    for v in [&mut local, &mut forwarded] {
        v.sort_by(f64::total_cmp);
    }
    eprintln!(
        "cluster: device details p50/max local {:.1}/{:.1} ms, forwarded {:.1}/{:.1} ms",
        local[25], local[49], forwarded[25], forwarded[49]
    );

    // A name published by two other racks: 409 with the candidates; ?controller= picks.
    let (s, _, amb) = call(&a, Method::GET, "/api/device/sim-0002/details/", &[]).await;
    assert_eq!(s, 409, "{amb}");
    assert_eq!(amb["code"], "ambiguous_device");
    let names: Vec<&str> = amb["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter_map(|c| c["controller"].as_str())
        .collect();
    assert_eq!(names, ["rack-b", "rack-c"], "{amb}");
    let (s, by, d) = call(
        &a,
        Method::GET,
        "/api/device/sim-0002/details/?controller=rack-c",
        &[],
    )
    .await;
    assert_eq!((s, by.as_deref()), (200, Some("rack-c")), "{d}");
    assert_eq!(d["imaging_server"], "rack-c");
    let (s, _, _) = call(
        &a,
        Method::GET,
        "/api/device/sim-0002/details/?controller=rack-q",
        &[],
    )
    .await;
    assert_eq!(s, 404);

    // A call that was already forwarded is never forwarded again.
    let (s, _, lp) = call(
        &c,
        Method::GET,
        "/api/device/sim-0003/details/",
        &[("X-Mozpool-Forwarded-By", "rack-a")],
    )
    .await;
    assert_eq!(s, 508, "{lp}");
    assert_eq!(lp["code"], "forward_loop");

    // An owner that does not answer, and one without a URL: a clear 5xx naming it. (Keys
    // written by hand, as a controller that died a moment ago would have left them.)
    let dead = format!("http://127.0.0.1:{}", free_port());
    let ghost = |name: &str| {
        serde_json::json!({
            "name": name, "available": false, "state": "ready", "failed": false,
            "retired": false, "held": false, "hardware_type": null, "processor": null,
            "pool": null, "os_version": null, "environment": null, "current_image": null
        })
        .to_string()
    };
    for (ctl, url, dev) in [
        ("rack-z", Some(dead.as_str()), "ghost-1"),
        ("rack-y", None, "ghost-2"),
    ] {
        let member = serde_json::json!({"name": ctl, "url": url, "devices": 1}).to_string();
        assert!(
            etcd.etcdctl(&["put", &format!("{p}controllers/{ctl}"), &member])
                .status
                .success()
        );
        assert!(
            etcd.etcdctl(&["put", &format!("{p}devices/{ctl}/{dev}"), &ghost(dev)])
                .status
                .success()
        );
    }
    // Until rack-a's copy has the ghost (404 before); if it never does, the assertions
    // below say what the last call answered.
    let known = async || {
        let r = call(&a, Method::GET, "/api/device/ghost-1/status/", &[]).await;
        ok_if(r.0 != 404, r)
    };
    let (s, by, e) = poll(Duration::from_secs(3), Duration::from_millis(100), known)
        .await
        .unwrap_or_else(|last| last);
    assert_eq!((s, by), (502, None), "{e}");
    assert_eq!(e["code"], "owner_unreachable");
    assert_eq!(e["controller"], "rack-z");
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("rack-z")),
        "{e}"
    );
    let (s, _, e) = call(&a, Method::POST, "/api/device/ghost-2/power-cycle/", &[]).await;
    assert_eq!(s, 503, "{e}");
    assert_eq!(e["controller"], "rack-y");
    // rack-a audits the refused call as an API call, not in a history of a device it does
    // not have (the audit line is written in the background: give it a moment).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let api = get_json(&a, "/api/log/?subject=api").await.to_string();
    assert!(api.contains("/api/device/ghost-2/power-cycle/"), "{api}");
    let ghost_log = get_json(&a, "/api/log/?subject=device:ghost-2")
        .await
        .to_string();
    assert!(!ghost_log.contains("power-cycle"), "{ghost_log}");

    // The web page through rack-a lists rack-b's devices with rack-b's name, linked to
    // rack-b's page; rack-a sends a browser asking for that page there.
    let page = get_text(format!("{}/ui/", a.url))
        .await
        // The template escapes the slashes of a URL it inserts.
        .replace("&#x2f;", "/");
    assert!(
        page.contains(">Controller</th>"),
        "no controller column: {page}"
    );
    assert!(
        page.contains(&format!("href=\"{}/ui/device/sim-0003/\"", b.url)),
        "no link to rack-b's page"
    );
    assert!(page.contains(">rack-b</td>") && page.contains(">rack-c</td>"));
    let feed = get_json(&a, "/api/pool/overview/").await;
    let row = feed["devices"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|d| d["name"] == "sim-0003")
        .cloned()
        .expect("sim-0003 in the feed");
    assert_eq!(row["controller"], "rack-b", "{row}");
    assert_eq!(feed["cluster"], true);
    let r = http_no_redirect()
        .get(format!("{}/ui/device/sim-0003/", a.url))
        .send()
        .await
        .expect("device page");
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some(format!("{}/ui/device/sim-0003/", b.url).as_str())
    );

    // rack-b's sim-0003 held through rack-a: rack-c, which takes no part in it, shows
    // the holder and expiry in its details list and on its page, from its queue copy;
    // rack-b's sim-0002, not held, shows none.
    let (status, body) = request_named(&a, "sim-0003", None, "dave").await;
    assert_eq!(status, 200, "{body}");
    let id = body["request"]["id"].as_u64().expect("id");
    let s = until_ready(&a, id, Duration::from_secs(30)).await;
    let expires = s["expires"].as_str().expect("expires").to_owned();
    let entry = |list: &Value, name: &str| {
        list["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .find(|d| d["name"] == name && d["controller"] == "rack-b")
            .cloned()
            .unwrap_or_else(|| panic!("{name} of rack-b not listed: {list}"))
    };
    let t = Instant::now();
    let held = poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || {
            let list = get_json(&c, "/api/device/list/?details=1").await;
            let held = entry(&list, "sim-0003");
            if held["request_id"] != id {
                return Err(held);
            }
            let free = entry(&list, "sim-0002");
            assert_eq!(
                (&free["request_id"], &free["assignee"], &free["expires"]),
                (&Value::Null, &Value::Null, &Value::Null),
                "{free}"
            );
            Ok(held)
        },
    )
    .await
    .unwrap_or_else(|held| panic!("rack-c shows no holder for sim-0003: {held}"));
    eprintln!(
        "cluster: another rack's holder listed {:?} after the request was ready",
        t.elapsed()
    );
    assert_eq!(held["assignee"], "dave", "{held}");
    assert_eq!(held["expires"], expires.as_str(), "{held}");
    let page = ui_page(&c, "/ui/").await;
    let row = |name: &str| pool_row(&page, name, "rack-b");
    // The page's format for times: `2026-11-25 09:44:28`.
    let until = expires.get(..19).expect("an ISO time").replace('T', " ");
    let held = row("sim-0003");
    assert!(
        held.contains(&format!(
            r#"<td data-label="Held by"><a href="/ui/request/{id}/">#{id}</a> dave</td>"#
        )) && held.contains(&format!(r#"<td data-label="Until">{until}</td>"#)),
        "{held}"
    );
    let free = row("sim-0002");
    assert!(
        free.contains(r#"<td data-label="Held by"></td>"#)
            && free.contains(r#"<td data-label="Until"></td>"#),
        "{free}"
    );

    // The owner itself names the shared request too, not its private local mirror.
    let own = get_json(&b, "/api/device/list/?details=1").await;
    assert_eq!(entry(&own, "sim-0003")["request_id"], id, "{own}");
    assert_eq!(entry(&own, "sim-0002")["request_id"], Value::Null, "{own}");
    let page = ui_page(&b, "/ui/").await;
    let own = pool_row(&page, "sim-0003", "rack-b");
    assert!(
        own.contains(&format!(
            r#"<td data-label="Held by"><a href="/ui/request/{id}/">#{id}</a> dave</td>"#
        )),
        "{own}"
    );
    let device = ui_page(&b, "/ui/device/sim-0003/").await;
    assert!(
        device.contains(&format!(
            r#"Held by request <a href="/ui/request/{id}/">#{id}</a> for dave"#
        )),
        "{device}"
    );
}

/// A forwarded call carries the caller's token: with `[auth]` on both controllers (the
/// same tokens, anonymous callers may only read), an admin's event for rack-b's device
/// through rack-a is taken by rack-b in the admin's name; without the token rack-a refuses
/// it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_call_carries_the_callers_token() {
    use reqwest::Method;
    let test = "cluster_forwarding_auth";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let p = prefix(test);
    // The digest of "forward-test-token".
    let auth = "\n[auth]\nanonymous = \"read\"\n[[auth.tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"b3d07754f871da1b1780fc75d6cdd206aba16b3f03b1764dc71834d081ee9f8d\"\n";
    let a = Controller::start_with(&etcd, "rack-a", &p, 1, auth).await;
    let b = Controller::start_with(&etcd, "rack-b", &p, 2, auth).await;
    until_pooled(&etcd, &p, 3).await;
    poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let list = pool_list(&a).await;
            let ready = list
                .iter()
                .any(|(n, c, s)| n == "sim-0002" && c == "rack-b" && s == "ready");
            ok_if(ready, list)
        },
    )
    .await
    .unwrap_or_else(|list| panic!("sim-0002 not ready: {list:?}"));
    let path = "/api/device/sim-0002/event/please_self_test/";
    let (s, by, e) = call(&a, Method::POST, path, &[]).await;
    assert_eq!(
        (s, by.as_deref()),
        (401, None),
        "refused by rack-a itself: {e}"
    );
    let (s, by, e) = call(
        &a,
        Method::POST,
        path,
        &[("Authorization", "Bearer forward-test-token")],
    )
    .await;
    assert_eq!((s, by.as_deref()), (200, Some("rack-b")), "{e}");
    let log = get_json(&b, "/api/device/sim-0002/log/").await;
    let taken = log["log"]
        .as_array()
        .expect("log")
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("please_self_test"))
        })
        .cloned()
        .unwrap_or_else(|| panic!("rack-b did not take the event: {log}"));
    assert_eq!(taken["actor"], "ops", "{taken}");
}

/// `POST /api/device/{name}/request/[?controller=NAME]` through `c`, queueing for up to
/// 120 s: status and body.
async fn request_named(
    c: &Controller,
    device: &str,
    controller: Option<&str>,
    assignee: &str,
) -> (u16, Value) {
    request_named_with(c, device, controller, assignee, Some(120), None).await
}

/// [`request_named`] with the request's `wait` (none: a busy device is refused) and an
/// `Idempotency-Key`.
async fn request_named_with(
    c: &Controller,
    device: &str,
    controller: Option<&str>,
    assignee: &str,
    wait: Option<u64>,
    idem: Option<&str>,
) -> (u16, Value) {
    let q = controller.map_or(String::new(), |n| format!("?controller={n}"));
    let mut body = serde_json::json!({
        "assignee": assignee, "duration": 600, "image": "android"
    });
    if let Some(w) = wait {
        body["wait"] = w.into();
    }
    let mut req = http()
        .post(format!("{}/api/device/{device}/request/{q}", c.url))
        .json(&body);
    if let Some(k) = idem {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.expect("create");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

/// `GET /ui/request/{id}/` through `c`: the page's HTML, with the slashes the template
/// escapes put back.
async fn request_page(c: &Controller, id: u64) -> String {
    ui_page(c, &format!("/ui/request/{id}/")).await
}

/// A page through `c` (200 expected), with the slashes the template escapes put back.
async fn ui_page(c: &Controller, path: &str) -> String {
    let r = http()
        .get(format!("{}{path}", c.url))
        .send()
        .await
        .expect("page");
    assert_eq!(r.status(), 200, "{path} through {}", c.name);
    r.text().await.expect("html").replace("&#x2f;", "/")
}

/// The pool page's row for `controller`'s `device`.
fn pool_row<'a>(page: &'a str, device: &str, controller: &str) -> &'a str {
    page.split("<tr class=")
        .find(|r| {
            r.contains(&format!("data-name=\"{device}\""))
                && r.contains(&format!(">{controller}</td>"))
        })
        .unwrap_or_else(|| panic!("no row for {controller}'s {device}: {page}"))
}

/// Named-device requests pick their rack (`?controller=`, or the only rack publishing the
/// name), are served by that rack's device only, and the request page shows the shared
/// request (state, device with its controller and link, queue position and reason, log)
/// through any controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_requests_pick_their_rack_and_the_request_page_shows_the_shared_request() {
    let racks = [("rack-a", 1), ("rack-b", 2)];
    let Some((etcd, p, [a, b])) = pooled("cluster_named", racks).await else {
        return;
    };

    // sim-0001 is on both racks: the client must pick; sim-0009 is nowhere; rack-q has no
    // sim-0001.
    let (status, body) = request_named(&a, "sim-0001", None, "alice").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "ambiguous_device");
    let mut candidates: Vec<&str> = body["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter_map(|c| c["controller"].as_str())
        .collect();
    candidates.sort_unstable();
    assert_eq!(candidates, vec!["rack-a", "rack-b"], "{body}");
    assert_eq!(body["candidates"][1]["url"], b.url.as_str(), "{body}");
    let (status, body) = request_named(&a, "sim-0009", None, "alice").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert_eq!(body["error"], "no device named sim-0009");
    let (status, body) = request_named(&a, "sim-0001", Some("rack-q"), "alice").await;
    assert_eq!(status, 404, "{body}");

    // Through rack-a, rack-b's sim-0001: served by rack-b's device.
    let (status, body) = request_named(&a, "sim-0001", Some("rack-b"), "alice").await;
    assert_eq!(status, 200, "{body}");
    let first = body["request"]["id"].as_u64().expect("id");
    let s = until_ready(&a, first, Duration::from_secs(30)).await;
    assert_eq!(s["controller"], "rack-b", "{s}");
    assert_eq!(s["assigned_device"], "sim-0001", "{s}");
    assert_eq!(
        etcd.keys(&format!("{p}assign/")),
        vec![format!("{p}assign/rack-b/sim-0001")]
    );
    // sim-0002 only on rack-b: no choice needed.
    let (status, body) = request_named(&b, "sim-0002", None, "carol").await;
    assert_eq!(status, 200, "{body}");
    let only = body["request"]["id"].as_u64().expect("id");
    let s = until_ready(&b, only, Duration::from_secs(30)).await;
    assert_eq!(s["controller"], "rack-b", "{s}");

    // Bob wants rack-b's sim-0001 too: it is held, and rack-a's free sim-0001 is not his.
    let (status, body) = request_named(&b, "sim-0001", Some("rack-b"), "bob").await;
    assert_eq!(status, 200, "{body}");
    let waiter = body["request"]["id"].as_u64().expect("id");
    let s = poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || {
            let s = get_json(&a, &format!("/api/request/{waiter}/status/")).await;
            ok_if(s["waiting_because"].is_string(), s)
        },
    )
    .await
    .unwrap_or_else(|s| panic!("no reason: {s}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s2 = get_json(&a, &format!("/api/request/{waiter}/status/")).await;
    assert_eq!(s2["state"], "queued", "not given rack-a's sim-0001: {s2}");
    assert_eq!(s["queue_position"], 1, "{s}");
    let why = s["waiting_because"].as_str().expect("reason").to_owned();
    // Explained over rack-b's devices only: rack-a's free sim-0001 is not his.
    assert!(why.ends_with("of 1 matching all criteria: 1 held"), "{why}");

    // The page of the ready request, through the controller that did not take it and
    // through the one that did: the shared request, its device linked to its owner's page.
    for (ctl, href) in [
        (&b, "/ui/device/sim-0001/".to_owned()),
        (&a, format!("{}/ui/device/sim-0001/", b.url)),
    ] {
        let page = request_page(ctl, first).await;
        assert!(page.contains(&format!("Request #{first}")), "{page}");
        assert!(
            page.contains(r#"id="rq-state" class="rstate">ready<"#),
            "{page}"
        );
        assert!(
            page.contains(&format!(
                r#"<a href="{href}">sim-0001</a> on controller rack-b"#
            )),
            "device link through {}: {page}",
            ctl.name
        );
        assert!(
            page.contains("assigned device sim-0001 on controller rack-b"),
            "{page}"
        );
        assert!(page.contains("created on controller rack-a"), "{page}");
        assert!(page.contains(r#"<p id="rq-queue" hidden>"#), "{page}");
    }
    // The waiter's page: its queue position and reason, no device.
    let page = request_page(&a, waiter).await;
    assert!(
        page.contains(r#"id="rq-state" class="rstate">queued<"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<strong id="rq-position">1</strong>"#),
        "{page}"
    );
    let escaped = why
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;");
    assert!(page.contains(&escaped), "reason {why:?}: {page}");
    assert!(page.contains("No device assigned."), "{page}");
    // What the page's live updates read, through either controller.
    for ctl in [&a, &b] {
        let s = get_json(ctl, &format!("/api/request/{waiter}/status/")).await;
        assert_eq!(s["queue_position"], 1, "{s}");
        let l = get_json(ctl, &format!("/api/request/{waiter}/log/")).await;
        assert!(
            log_messages(&l).iter().any(|m| m.starts_with("queued: ")),
            "{l}"
        );
    }
    let r = http()
        .get(format!("{}/ui/request/999999/", a.url))
        .send()
        .await
        .expect("page");
    assert_eq!(r.status(), 404);

    // The first returns: bob gets rack-b's sim-0001.
    assert_eq!(
        post(
            &a,
            &format!("/api/request/{first}/return/"),
            serde_json::json!({})
        )
        .await,
        204
    );
    let s = until_ready(&a, waiter, Duration::from_secs(30)).await;
    assert_eq!(s["controller"], "rack-b", "{s}");
    assert_eq!(s["assigned_device"], "sim-0001", "{s}");
    let page = request_page(&a, waiter).await;
    assert!(
        page.contains(r#"id="rq-state" class="rstate">ready<"#),
        "{page}"
    );
    assert!(check_assignment_history(&etcd, &p) >= 3);
}

/// How many requests the shared queue has (open and ended), through `c`.
async fn request_count(c: &Controller) -> usize {
    let list = get_json(c, "/api/request/list/?include_closed=1").await;
    list["requests"].as_array().map_or(0, Vec::len)
}

/// A named device that is busy is refused without `wait` (409 with a JSON body naming why,
/// nothing created), as on a single rack, through the controller owning it and through
/// another; only the rack the request names counts; a create retried with its
/// `Idempotency-Key` answers its first request; with `wait` the request queues and gets the
/// device once its holder returns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_named_device_is_refused_without_wait_and_queued_with_it() {
    let racks = [("rack-a", 1), ("rack-b", 1)];
    let Some((etcd, p, [a, b])) = pooled("cluster_named_busy", racks).await else {
        return;
    };
    let id = |body: &Value| body["request"]["id"].as_u64().expect("id");
    // Both devices past their first self-test (until then they are busy too).
    until_free(&etcd, &p, "devices not ready", |free| free.len() >= 2, None).await;

    // Request A, without wait, for rack-b's free sim-0001, through rack-a: taken.
    let (status, body) = request_named_with(
        &a,
        "sim-0001",
        Some("rack-b"),
        "alice",
        None,
        Some("named-busy-a"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let first = id(&body);
    until_ready(&a, first, Duration::from_secs(30)).await;

    // B without wait, through the owner and through the other controller: refused.
    let held = format!("device sim-0001 on controller rack-b is busy: held by request {first}");
    for c in [&a, &b] {
        let t = Instant::now();
        let (status, body) =
            request_named_with(c, "sim-0001", Some("rack-b"), "bob", None, None).await;
        assert_eq!(status, 409, "through {}: {body}", c.name);
        assert_eq!(body["code"], "conflict", "{body}");
        assert_eq!(body["error"], held.as_str(), "{body}");
        eprintln!(
            "cluster: busy named device refused through {} in {:?}",
            c.name,
            t.elapsed()
        );
    }
    // A's create retried with its Idempotency-Key (its answer lost, say): A again, not a
    // refusal, although the device is now busy with A.
    let (status, body) = request_named_with(
        &b,
        "sim-0001",
        Some("rack-b"),
        "alice",
        None,
        Some("named-busy-a"),
    )
    .await;
    assert_eq!((status, id(&body)), (200, first), "{body}");
    // rack-a's sim-0001 is free: the busy copy on rack-b does not count.
    let (status, body) =
        request_named_with(&b, "sim-0001", Some("rack-a"), "carol", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(request_count(&a).await, 2, "the refusals created nothing");

    // B with wait: queued behind A, then served by rack-b's device once A returns.
    let (status, body) =
        request_named_with(&b, "sim-0001", Some("rack-b"), "bob", Some(120), None).await;
    assert_eq!(status, 200, "{body}");
    let waiter = id(&body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = get_json(&a, &format!("/api/request/{waiter}/status/")).await;
    assert_eq!(s["state"], "queued", "{s}");
    assert_eq!(
        post(
            &a,
            &format!("/api/request/{first}/return/"),
            serde_json::json!({})
        )
        .await,
        204
    );
    // Returned, the device is self-tested by its rack before anyone gets it: still busy.
    let (status, body) =
        request_named_with(&a, "sim-0001", Some("rack-b"), "dave", None, None).await;
    assert_eq!(status, 409, "{body}");
    let why = body["error"].as_str().expect("error");
    assert!(
        why.starts_with("device sim-0001 on controller rack-b is busy: "),
        "{body}"
    );
    eprintln!("cluster: right after the return: {why}");
    let s = until_ready(&b, waiter, Duration::from_secs(30)).await;
    assert_eq!(
        (s["controller"].as_str(), s["assigned_device"].as_str()),
        (Some("rack-b"), Some("sim-0001")),
        "{s}"
    );
    let (status, body) =
        request_named_with(&a, "sim-0001", Some("rack-b"), "dave", None, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        format!("device sim-0001 on controller rack-b is busy: held by request {waiter}")
    );
    assert_eq!(request_count(&b).await, 3);
    check_assignment_history(&etcd, &p);
}

/// Poll `id`'s status through `c` until its state is no longer `queued`; panics after
/// `within`. Returns the status and how long it took.
async fn until_not_queued(c: &Controller, id: u64, within: Duration) -> (Value, Duration) {
    let start = Instant::now();
    // The status call long-polls itself: no pause between calls.
    let s = poll(within, Duration::ZERO, async || {
        let s = get_json(c, &format!("/api/request/{id}/status/?wait=1")).await;
        ok_if(s["state"] != "queued", s)
    })
    .await
    .unwrap_or_else(|s| {
        panic!(
            "request {id} still queued through {} after {:?}: {s}\n{}",
            c.name,
            start.elapsed(),
            c.log_tail()
        )
    });
    (s, start.elapsed())
}

/// An `any` request without `wait` searches a bounded time, as on a single rack: with
/// every device of the cluster held it fails `failed_device_not_found` once the 60th
/// search (`finding_tries_any`) is due, 59 × `finding_device` after it was created
/// (5.9 s here: the simulated rack scales the request timings by 0.01), not when its
/// lease expires; every controller shows the same outcome and log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_any_request_without_wait_fails_after_its_bounded_search() {
    let racks = [("rack-a", 1), ("rack-b", 1)];
    let Some((etcd, p, [a, b])) = pooled("cluster_bounded_any", racks).await else {
        return;
    };
    // Every device held (these two queue with `wait` until they are served).
    for c in [&a, &b] {
        let id = request_any(c, "holder", 0, None).await["id"]
            .as_u64()
            .expect("id");
        until_ready(c, id, Duration::from_secs(30)).await;
    }
    let t = Instant::now();
    let r = http()
        .post(format!("{}/api/device/any/request/", a.url))
        .json(&serde_json::json!({"assignee": "mozharness", "duration": 600, "image": "android"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    let id = body["request"]["id"].as_u64().expect("id");
    let (s, _) = until_not_queued(&b, id, Duration::from_secs(20)).await;
    let took = t.elapsed();
    assert_eq!(s["state"], "failed_device_not_found", "{s}");
    // The bound is 5.9 s from creation; the scheduler runs at that deadline.
    assert!(
        took >= Duration::from_millis(5_800) && took < Duration::from_secs(9),
        "failed after {took:?}: {s}"
    );
    eprintln!("cluster: an any request without wait failed after {took:?} (bound 5.9 s)");
    for c in [&a, &b] {
        let s = get_json(c, &format!("/api/request/{id}/status/")).await;
        assert_eq!(
            s["state"], "failed_device_not_found",
            "through {}: {s}",
            c.name
        );
        let log = log_messages(&get_json(c, &format!("/api/request/{id}/log/")).await);
        let last = log.last().expect("a log line");
        assert!(
            last.starts_with("no device found after 60 tries: ") && last.ends_with("2 held"),
            "through {}: {log:?}",
            c.name
        );
    }
    check_assignment_history(&etcd, &p);
}

/// A named device without `wait` that is failed is not refused at creation (as on a single
/// rack), and the request fails `failed_bad_device` at once instead of queueing, whichever
/// controller took it; the log says why, in single-rack mode's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_failed_device_without_wait_fails_as_a_bad_device() {
    let racks = [("rack-a", 1), ("rack-b", 1)];
    let Some((etcd, p, [a, b])) = pooled("cluster_bounded_bad", racks).await else {
        return;
    };
    until_free(&etcd, &p, "devices not ready", |free| free.len() >= 2, None).await;
    // rack-b's sim-0001 taken out of service as failed (through rack-a: proxied), until
    // rack-b publishes it so.
    assert_eq!(
        post(
            &a,
            "/api/device/sim-0001/state-change/ready/to/failed_self_test/?controller=rack-b",
            serde_json::json!({})
        )
        .await,
        200
    );
    let key = format!("{p}devices/rack-b/sim-0001");
    poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || {
            let out = etcd.etcdctl(&["get", &key, "--print-value-only"]);
            let value = String::from_utf8_lossy(&out.stdout).into_owned();
            ok_if(value.contains("\"failed\":true"), value)
        },
    )
    .await
    .unwrap_or_else(|value| panic!("not published failed: {value}"));
    let t = Instant::now();
    let (status, body) =
        request_named_with(&a, "sim-0001", Some("rack-b"), "mozharness", None, None).await;
    assert_eq!(status, 200, "{body}");
    let id = body["request"]["id"].as_u64().expect("id");
    let (s, _) = until_not_queued(&b, id, Duration::from_secs(10)).await;
    assert_eq!(s["state"], "failed_bad_device", "{s}");
    eprintln!(
        "cluster: a named failed device without wait failed after {:?}",
        t.elapsed()
    );
    let log = log_messages(&get_json(&a, &format!("/api/request/{id}/log/")).await);
    assert_eq!(
        log.last().map(String::as_str),
        Some(
            "device sim-0001 is failed: 1 device matches device=sim-0001; of 1 matching all criteria: 1 in failed_self_test"
        ),
        "{log:?}"
    );
    // rack-a's copy of the name is unaffected: a request for it is served.
    let (status, body) =
        request_named_with(&b, "sim-0001", Some("rack-a"), "mozharness", None, None).await;
    assert_eq!(status, 200, "{body}");
    until_ready(
        &b,
        body["request"]["id"].as_u64().expect("id"),
        Duration::from_secs(30),
    )
    .await;
}

/// etcd's current revision (one more per transaction that wrote).
fn etcd_revision(etcd: &Etcd) -> i64 {
    let out = etcd.etcdctl(&["get", "no-such-key", "-w", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("etcdctl get json");
    v["header"]["revision"].as_i64().expect("revision")
}

/// The queue's writes from one controller go out batched as nested transactions
/// (`cluster::batch`): concurrent writes share transactions, and each keeps its own guard
/// and its own answer: of 16 assignments of one device exactly one lands, assignments of
/// different devices all land, and one guarded by a stale election is refused while the
/// others of its batch land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_transactions_and_keep_their_guards() {
    use mozpool::domain::clock::{Clock, Millis, SystemClock};
    use mozpool::domain::request::{DeviceChoice, RequestSpec};
    use std::sync::Arc;
    let test = "cluster_write_batches";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    etcd.wait_writable(Duration::from_secs(20));
    let p = "/batch/";
    let client = etcd.client(p);
    let build = |id: u64| SharedRequest {
        id,
        spec: RequestSpec::new(
            DeviceChoice::Any,
            "alice",
            "android".parse().expect("image"),
            Millis(0),
        ),
        expires: Millis(u64::MAX / 2),
        state: RequestState::Queued,
        device: None,
        owner: None,
        taken_by: "test-client".into(),
        explanation: None,
        owner_token: None,
        since: Millis(0),
        requeued: None,
        ended: None,
        log: Vec::new(),
    };

    // 48 concurrent creates: 48 distinct ids in far fewer transactions.
    let before = etcd_revision(&etcd);
    let mut creates = tokio::task::JoinSet::new();
    for _ in 0..48 {
        let c = client.clone();
        creates.spawn(async move {
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            c.create_request(None, &clock, build).await
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = creates.join_next().await {
        let (r, new) = r.expect("task").expect("create");
        assert!(new);
        ids.push(r.id);
    }
    let txns = etcd_revision(&etcd) - before;
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 48, "distinct ids");
    eprintln!("cluster: 48 creates took {txns} write transactions");
    assert!(
        txns < 40,
        "48 creates took {txns} transactions: not batched"
    );

    // The scheduler key, made by hand, and a stale election revision beside it.
    let sched = format!("{p}scheduler");
    let out = etcd.etcdctl(&["put", &sched, "{}"]);
    assert!(out.status.success());
    let out = etcd.etcdctl(&["get", &sched, "-w", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let lead = Leadership {
        revision: v["kvs"][0]["create_revision"]
            .as_i64()
            .expect("create revision"),
        lease: 0,
    };
    let stale = Leadership {
        revision: lead.revision - 1,
        lease: 0,
    };
    let read = |id: u64| {
        let c = client.clone();
        async move { c.request(id).await.expect("read").expect("exists") }
    };
    let assign = |lead: Leadership, r: Versioned<SharedRequest>, device: String| {
        let c = client.clone();
        async move {
            let mut nv = r.value.clone();
            nv.state = RequestState::Pending;
            nv.device = Some(device.clone());
            nv.owner = Some("rack-x".into());
            c.assign(&lead, &nv, r.mod_revision, "rack-x", &device)
                .await
        }
    };

    // One device, 16 requests at once: exactly one gets it.
    let mut records = Vec::new();
    for &id in &ids[..41] {
        records.push(read(id).await);
    }
    let mut records = records.into_iter();
    let mut race = tokio::task::JoinSet::new();
    for r in records.by_ref().take(16) {
        race.spawn(assign(lead, r, "dev-one".into()));
    }
    let mut won = 0;
    while let Some(r) = race.join_next().await {
        if r.expect("task").expect("assign answers") {
            won += 1;
        }
    }
    assert_eq!(won, 1, "one device, one holder");
    assert_eq!(etcd.keys(&format!("{p}assign/")).len(), 1);

    // 24 devices for 24 requests, and one write under a stale election, at once.
    let before = etcd_revision(&etcd);
    let mut many = tokio::task::JoinSet::new();
    for (i, r) in records.by_ref().take(24).enumerate() {
        many.spawn(assign(lead, r, format!("dev-{i:02}")));
    }
    let r = records.next().expect("a 41st request");
    let refused = tokio::spawn(assign(stale, r, "dev-stale".into()));
    while let Some(r) = many.join_next().await {
        assert!(r.expect("task").expect("assign answers"), "a free device");
    }
    match refused.await.expect("task") {
        Err(ClusterError::NotLeader(rev)) => assert_eq!(rev, stale.revision),
        other => panic!("a stale election must not assign: {other:?}"),
    }
    let txns = etcd_revision(&etcd) - before;
    eprintln!("cluster: 24 assignments took {txns} write transactions");
    assert!(
        txns < 24,
        "24 assignments took {txns} transactions: not batched"
    );
    let assigned = etcd.keys(&format!("{p}assign/"));
    assert_eq!(assigned.len(), 25, "{assigned:?}");
    assert!(!assigned.iter().any(|k| k.ends_with("dev-stale")));
}

/// The scheduler compacts etcd's history (`compaction_interval_s`): revisions older than
/// about two intervals are gone from etcd, the controller says so in `/api/cluster/`, and
/// the shared queue keeps working on its watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_compacts_etcds_history() {
    let Some((etcd, p, [a])) = pooled_with(
        "cluster_compaction",
        [("rack-a", 1)],
        "compaction_interval_s = 1\n",
    )
    .await
    else {
        return;
    };
    let before = etcd.revision();
    // A request makes history: create, assignment, ready, return, the device's views.
    let id = request_any(&a, "history", 0, None).await["id"]
        .as_u64()
        .expect("id");
    until_ready(&a, id, Duration::from_secs(30)).await;
    assert_eq!(
        post(
            &a,
            &format!("/api/request/{id}/return/"),
            serde_json::json!({})
        )
        .await,
        204
    );
    let took = a
        .wait_for(
            "a compaction past the request",
            Duration::from_secs(15),
            |s| {
                s.and_then(|s| s["compaction"]["revision"].as_i64())
                    .is_some_and(|r| r > before)
            },
        )
        .await;
    eprintln!(
        "cluster: history compacted past the revision before the request {took:?} after its return"
    );
    let out = etcd.etcdctl(&[
        "get",
        &format!("{p}requests/"),
        "--prefix",
        &format!("--rev={before}"),
    ]);
    assert!(!out.status.success(), "an old revision is still readable");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("compacted"), "{err}");
    // The queue still works: a second request is served.
    let id = request_any(&a, "after", 0, None).await["id"]
        .as_u64()
        .expect("id");
    until_ready(&a, id, Duration::from_secs(30)).await;
}

/// etcd's database at its quota (`NOSPACE` raised): `/api/cluster/`, health and `/metrics`
/// say so, a create answers 503 saying etcd is out of space (not "unreachable"), reads still
/// work; after the runbook of docs/cluster.md (delete, compact, defragment, disarm) creates
/// work again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_etcd_answers_writes_with_a_clear_503_until_the_runbook_frees_it() {
    let test = "cluster_etcd_nospace";
    let Some(etcd) = Etcd::start_with(test, false, &["--quota-backend-bytes=8388608"]) else {
        return;
    };
    let p = prefix(test);
    let a = Controller::start(&etcd, "rack-a", &p, 1).await;
    until_pooled(&etcd, &p, 1).await;
    // Fill the database with 512 KiB values until etcd refuses.
    let filler = vec![b'x'; 512 * 1024];
    let refused = (0..64)
        .find_map(|i| {
            let out = etcd
                .etcdctl_input(&["put", &format!("/filler/{i}")], &filler)
                .expect("etcdctl");
            (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
        })
        .expect("etcd took 32 MiB under an 8 MiB quota");
    assert!(refused.contains("database space exceeded"), "{refused}");
    a.wait_for("the NOSPACE alarm", Duration::from_secs(15), |s| {
        s.is_some_and(|s| s["etcd_alarms"] == serde_json::json!(["NOSPACE"]))
    })
    .await;
    let r = send_any(&a, "full").await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("60")
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "cluster_unavailable", "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("out of space"), "{body}");
    assert!(!message.contains("unreachable"), "{body}");
    // Reads still work; health, metrics and the pages tell the operator.
    assert!(list_ids(&a, "/api/request/list/").await.is_empty());
    let overview = get_json(&a, "/api/pool/overview/").await;
    assert_eq!(
        overview["cluster_warning"]["kind"], "etcd_out_of_space",
        "{overview}"
    );
    let health = get_json(&a, "/api/health/").await;
    assert_eq!(
        health["cluster"]["etcd_alarms"],
        serde_json::json!(["NOSPACE"])
    );
    let metrics = get_text(format!("{}/metrics", a.url)).await;
    assert!(
        metrics.contains("mozpool_cluster_etcd_nospace 1"),
        "{metrics}"
    );
    // The runbook: free space, compact, defragment every member, disarm.
    for args in [
        vec!["del", "/filler/", "--prefix"],
        vec!["compact", "--physical", &etcd.revision().to_string()],
        vec!["defrag", "--cluster"],
        vec!["alarm", "disarm"],
    ] {
        let out = etcd.etcdctl(&args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Each member applies the disarm when raft delivers it: the member this controller
    // talks to may refuse for a moment longer.
    let t = Instant::now();
    let r = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let r = send_any(&a, "after").await;
            let ok = r.status() == 200;
            ok_if(ok, r.json::<Value>().await.expect("json"))
        },
    )
    .await
    .unwrap_or_else(|last| panic!("creates still refused after the runbook: {last}"));
    eprintln!(
        "cluster: a create went through {:?} after the disarm",
        t.elapsed()
    );
    let id = r["request"]["id"].as_u64().expect("id");
    until_ready(&a, id, Duration::from_secs(30)).await;
    a.wait_for("the alarm cleared", Duration::from_secs(15), |s| {
        s.is_some_and(|s| s["etcd_alarms"] == serde_json::json!([]))
    })
    .await;
}

/// The processes whose parent is `pid`, with their command names (`/proc/*/stat`).
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        // `pid (comm) state ppid …`: the name may hold spaces, so split after its `)`.
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == pid).then_some((child, comm))
    })
    .collect()
}

/// Whether `pid` still runs (a zombie nobody reaped counts as gone).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// `mozpool bench` stopped by SIGTERM (as `pkill` or `timeout` stop it) stops the etcd
/// members it started, instead of leaving them running to disturb the next measurement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_bench_stops_the_etcd_members_it_started() {
    if require_tool(
        "an_interrupted_bench_stops_the_etcd_members_it_started",
        ETCD,
    )
    .is_none()
    {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let log = std::fs::File::create(out.path().join("bench.log")).expect("log");
    let mut bench = Command::new(env!("CARGO_BIN_EXE_mozpool"))
        .args(["bench", "--quick", "--only", "cluster"])
        .current_dir(out.path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn mozpool bench");
    let pid = bench.id();
    let members = poll(
        Duration::from_secs(30),
        Duration::from_millis(50),
        async || {
            let etcd: Vec<u32> = children_of(pid)
                .into_iter()
                .filter(|(_, comm)| comm == "etcd")
                .map(|(p, _)| p)
                .collect();
            ok_if(etcd.len() == 3, etcd)
        },
    )
    .await
    .unwrap_or_else(|seen| panic!("the bench did not start 3 etcd members: {seen:?}"));
    signal(&bench, Signal::SIGTERM);
    let status = poll(
        Duration::from_secs(30),
        Duration::from_millis(50),
        async || {
            let s = bench.try_wait().expect("wait");
            ok_if(s.is_some(), s)
        },
    )
    .await
    .unwrap_or_else(|_| panic!("the bench did not stop on SIGTERM"))
    .expect("status");
    assert!(
        !status.success(),
        "an interrupted bench does not report success"
    );
    poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || {
            let left: Vec<u32> = members.iter().copied().filter(|&p| running(p)).collect();
            ok_if(left.is_empty(), left)
        },
    )
    .await
    .unwrap_or_else(|left| {
        for p in &left {
            let _ = kill(
                Pid::from_raw(i32::try_from(*p).expect("pid")),
                Signal::SIGKILL,
            );
        }
        panic!("etcd members still running after the bench stopped: {left:?}")
    });
}

/// The body of a GET as text (a page, `/metrics`).
async fn get_text(url: String) -> String {
    http()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .expect("text")
}
