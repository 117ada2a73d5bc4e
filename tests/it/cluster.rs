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

use crate::support::{FAST_RACK, TestServer, require_tool};

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
        Etcd::start_with(test, false)
    }

    /// [`Etcd::start`], with TLS and client certificates on the client URLs when `tls`
    /// (`tests/fixtures/etcd-tls/`).
    fn start_with(test: &str, tls: bool) -> Option<Etcd> {
        require_tool(test, ETCD)?;
        require_tool(test, ETCDCTL)?;
        let tls = tls.then(|| EtcdTls {
            ca: tls_file("ca.pem"),
            member_cert: tls_file("member.pem"),
            member_key: tls_file("member-key.pem"),
            client_cert: tls_file("client.pem"),
            client_key: tls_file("client-key.pem"),
        });
        Some(Etcd(EtcdCluster::start(tls).expect("etcd cluster")))
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
        let mut last = None;
        while start.elapsed() < within {
            last = self.status().await;
            if pred(last.as_ref()) {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{}: {what} not within {within:?}; last status {last:?}\nlog:\n{}",
            self.name,
            self.log_tail()
        );
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = etcd.keys(&devices);
        let of = |c: &str| {
            keys.iter()
                .filter(|k| k.starts_with(&format!("{devices}{c}/")))
                .count()
        };
        if of("rack-a") == 3 && of("rack-b") == 2 {
            assert!(
                keys.contains(&format!("{devices}rack-a/sim-0001")),
                "{keys:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "devices not published: {keys:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = twin.get("/api/cluster/").await;
        if body["publish_error"]
            .as_str()
            .is_some_and(|e| e.contains("in use by another live controller"))
        {
            assert_eq!(body["published_devices"], 0, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "name clash not reported: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    twin.stop().await;
    let keys = etcd.keys(&format!("{devices}rack-b/"));
    assert_eq!(keys.len(), 2, "rack-b's own devices untouched: {keys:?}");

    // SIGKILL: no revoke, no goodbye. Its keys go when its lease expires.
    signal(&a.child, Signal::SIGKILL);
    let _ = a.child.wait();
    let killed = Instant::now();
    loop {
        let keys = etcd.keys(&devices);
        if !keys
            .iter()
            .any(|k| k.starts_with(&format!("{devices}rack-a/")))
        {
            assert_eq!(keys.len(), 2, "rack-b's devices stay: {keys:?}");
            break;
        }
        assert!(
            killed.elapsed() < TTL + Duration::from_secs(2),
            "rack-a's devices still published {:?} after SIGKILL: {keys:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let deadline = Instant::now() + Duration::from_secs(10);
    let (leader, other) = loop {
        let (sa, sb) = (a.status().await, b.status().await);
        let (la, lb) = (is_scheduler(sa.as_ref()), is_scheduler(sb.as_ref()));
        assert!(!(la && lb), "two schedulers: {sa:?} {sb:?}");
        let agreed =
            |s: &Option<Value>, name: &str| s.as_ref().is_some_and(|s| s["scheduler"] == name);
        if la && agreed(&sb, "rack-a") {
            break (&a, &b);
        }
        if lb && agreed(&sa, "rack-b") {
            break (&b, &a);
        }
        assert!(Instant::now() < deadline, "no scheduler: {sa:?} {sb:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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

    // Two of three members down: no quorum.
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
    let metrics = reqwest::get(format!("{}/metrics", a.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
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
}

/// Without `[cluster]` nothing of cluster mode exists: no client, no etcd connection, the
/// API says `enabled: false` and health has no `cluster` entry. Needs no etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cluster_section_no_etcd_is_involved() {
    let s = TestServer::start_rack(1, "").await;
    assert!(s.app.cluster.is_none());
    let metrics = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(!metrics.contains("mozpool_cluster_"), "{metrics}");
    let (status, body) = s.get("/api/cluster/").await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"enabled": false}));
    let (status, health) = s.get("/api/health/").await;
    assert_eq!(status, 200);
    assert!(health.get("cluster").is_none(), "{health}");
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
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = s.get("/api/cluster/").await;
        assert_eq!(status, 200);
        if body["etcd_error"].is_string() {
            assert_eq!(body["etcd_ok"], false, "{body}");
            assert!(body["lease"].is_null(), "{body}");
            assert_eq!(body["is_scheduler"], false, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.wait_all_ready(20).await;
    s.stop().await;
}

/// TLS (rustls) with client certificates against etcd 3.4: a controller with `ca`, `cert`
/// and `key` takes its lease, wins the election and publishes; one without a client
/// certificate is refused and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let test = "cluster_tls";
    let Some(etcd) = Etcd::start_with(test, true) else {
        return;
    };
    let p = prefix(test);
    let s = TestServer::start_rack(1, &etcd.section("rack-tls", &p)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = s.get("/api/cluster/").await;
        if body["etcd_ok"] == true
            && body["lease"].is_object()
            && body["is_scheduler"] == true
            && body["published_devices"] == 1
            && body["members"].as_array().is_some_and(|m| m.len() == 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "over TLS: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(etcd.keys(&format!("{p}devices/rack-tls/")).len(), 1);
    let metrics = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
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
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = t.get("/api/cluster/").await;
        if body["etcd_error"].is_string() {
            assert_eq!(body["etcd_ok"], false, "{body}");
            assert!(body["lease"].is_null(), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "without a client certificate: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    loop {
        let s = get_json(c, &format!("/api/request/{id}/status/?wait=1")).await;
        if s["state"] == "ready" {
            return s;
        }
        assert!(
            start.elapsed() < within
                && !s["state"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("failed") || s == "closed"),
            "request {id} not ready through {} after {:?}: {s}\n{}",
            c.name,
            start.elapsed(),
            c.log_tail()
        );
    }
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
    let test = "cluster_mozharness";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let p = prefix(test);
    let a = Controller::start(&etcd, "rack-a", &p, 1).await;
    let b = Controller::start(&etcd, "rack-b", &p, 1).await;
    let start = Instant::now();
    while etcd.keys(&format!("{p}devices/")).len() < 2
        || etcd.keys(&format!("{p}scheduler")).is_empty()
    {
        assert!(start.elapsed() < Duration::from_secs(10), "not published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
        while !etcd.keys(&format!("{p}assign/")).is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "assignments not freed\n{}\n{}",
                a.log_tail(),
                b.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "cluster: both devices back in the pool {:?} after the returns",
            t.elapsed()
        );
    }
    let list = get_json(&b, "/api/request/list/?include_closed=1").await;
    assert_eq!(list["requests"].as_array().map(Vec::len), Some(4), "{list}");
    assert_eq!(check_assignment_history(&etcd, &p), 4);
}

/// Wait until all controllers' devices (`n`) and a scheduler are in etcd.
async fn until_pooled(etcd: &Etcd, p: &str, n: usize) {
    let start = Instant::now();
    while etcd.keys(&format!("{p}devices/")).len() < n
        || etcd.keys(&format!("{p}scheduler")).is_empty()
    {
        assert!(start.elapsed() < Duration::from_secs(10), "not published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// Issue 22, test 2: all devices held; two waiters of different priority queued through
/// two controllers; a device returned on a third goes to the higher priority within 2 s,
/// the next one to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_freed_device_serves_the_highest_priority_waiter() {
    let test = "cluster_priority";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let p = prefix(test);
    let a = Controller::start(&etcd, "rack-a", &p, 1).await;
    let b = Controller::start(&etcd, "rack-b", &p, 1).await;
    let c = Controller::start(&etcd, "rack-c", &p, 1).await;
    until_pooled(&etcd, &p, 3).await;
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
    let test = "cluster_survive";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let p = prefix(test);
    let a = Controller::start(&etcd, "rack-a", &p, 1).await;
    let b = Controller::start(&etcd, "rack-b", &p, 1).await;
    let c = Controller::start(&etcd, "rack-c", &p, 1).await;
    until_pooled(&etcd, &p, 3).await;
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
    let test = "cluster_burst_failover";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let p = prefix(test);
    let ctrls = [
        Controller::start(&etcd, "rack-a", &p, 2).await,
        Controller::start(&etcd, "rack-b", &p, 2).await,
        Controller::start(&etcd, "rack-c", &p, 2).await,
    ];
    until_pooled(&etcd, &p, 6).await;
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
    // Every request of the burst is assigned by the new scheduler within TTL + 2 s.
    loop {
        let mut queued = 0;
        for id in &ids {
            let s = get_json(others[0], &format!("/api/request/{id}/status/")).await;
            if s["state"] == "queued" {
                queued += 1;
            }
        }
        if queued == 0 {
            break;
        }
        assert!(
            paused.elapsed() < TTL + Duration::from_secs(2),
            "{queued} requests still queued {:?} after the scheduler was paused",
            paused.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// Issue 22, test 5: one etcd member down changes nothing for request calls; two down →
/// creates answer 503 `cluster_unavailable` within 5 s and nothing is reassigned; members
/// back → requests are served again and the history has no double booking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_calls_through_etcd_member_loss_and_quorum_loss() {
    let test = "cluster_queue_quorum";
    let Some(mut etcd) = Etcd::start(test) else {
        return;
    };
    let p = prefix(test);
    let a = Controller::start(&etcd, "rack-a", &p, 1).await;
    let b = Controller::start(&etcd, "rack-b", &p, 1).await;
    until_pooled(&etcd, &p, 2).await;
    etcd.kill_member(2);
    let held = request_any(&a, "one-down", 0, None).await["id"]
        .as_u64()
        .expect("id");
    let s = until_ready(&b, held, Duration::from_secs(30)).await;
    etcd.kill_member(1);
    let t = Instant::now();
    let r = http()
        .post(format!("{}/api/device/any/request/", b.url))
        .json(&serde_json::json!({"assignee": "no-quorum", "duration": 600, "image": "android"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "cluster_unavailable", "{body}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    eprintln!(
        "cluster: create without quorum answered 503 in {:?}",
        t.elapsed()
    );
    // Members back: the ready request kept its device; new requests are served.
    etcd.start_member(1);
    etcd.start_member(2);
    etcd.wait_writable(Duration::from_secs(20));
    let t = Instant::now();
    let after = loop {
        let r = http()
            .post(format!("{}/api/device/any/request/", a.url))
            .json(&serde_json::json!({"assignee": "after", "duration": 600, "image": "android"}))
            .send()
            .await
            .expect("create");
        if r.status() == 200 {
            let v: Value = r.json().await.expect("json");
            break v["request"]["id"].as_u64().expect("id");
        }
        assert!(t.elapsed() < Duration::from_secs(20), "creates still fail");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let d = get_json(&a, &format!("/api/request/{held}/details/")).await;
    assert_eq!(d["state"], "ready", "{d}");
    assert_eq!(d["assigned_device"], s["assigned_device"]);
    let s2 = until_ready(&b, after, Duration::from_secs(40)).await;
    assert_ne!(s2["controller"], s["controller"], "{s} {s2}");
    eprintln!(
        "cluster: after quorum came back a new request was ready in {:?}",
        t.elapsed()
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
    let start = Instant::now();
    loop {
        let r = client.request(id).await.ok().flatten();
        if let Some(r) = r.filter(|r| pred(&r.value)) {
            return r;
        }
        assert!(
            start.elapsed() < within,
            "request {id}: {what} not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    let start = Instant::now();
    while !free_devices(&etcd, &p).contains(&"rack-x/sim-0001".to_owned()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rack-x not pooled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let start = Instant::now();
    while !String::from_utf8_lossy(&etcd.etcdctl(&["get", &x_key]).stdout).contains("\"held\":true")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "rack-x never held its device\n{}",
            x.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    while !free_devices(&etcd, &p).contains(&"rack-x/sim-0001".to_owned()) {
        assert!(
            resumed.elapsed() < Duration::from_secs(30),
            "rack-x's device not back in the pool\n{}",
            x.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let test = "cluster_chaos";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let p = prefix(test);
    let mut ctrls = vec![
        Controller::start(&etcd, "rack-a", &p, 2).await,
        Controller::start(&etcd, "rack-b", &p, 2).await,
        Controller::start(&etcd, "rack-c", &p, 2).await,
    ];
    until_pooled(&etcd, &p, 6).await;
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
    while free_devices(&etcd, &p).len() < 6 {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "devices not back after the load: free {:?}, assignments {:?}\n{}",
            free_devices(&etcd, &p),
            etcd.keys(&format!("{p}assign/")),
            String::from_utf8_lossy(
                &etcd
                    .etcdctl(&["get", "--prefix", &format!("{p}devices/")])
                    .stdout
            )
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    let test = "cluster_keep_closed";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let p = prefix(test);
    let a = Controller::start_with(&etcd, "rack-a", &p, 1, "keep_closed_s = 2\n").await;
    until_pooled(&etcd, &p, 1).await;
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
    while !etcd.keys(&key).is_empty() {
        assert!(
            returned.elapsed() < Duration::from_secs(20),
            "request {id} not deleted\n{}",
            a.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
