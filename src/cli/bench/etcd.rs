//! A 3-member etcd cluster on loopback for the `cluster` bench section and the cluster
//! tests (`tests/it/cluster.rs`): Debian's `etcd` on free ports, temporary data
//! directories, shortened heartbeat and election timeout, killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's etcd server (package `etcd-server`).
pub const ETCD: &str = "/usr/bin/etcd";
/// Debian's etcdctl (package `etcd-client`).
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// A free TCP port on loopback (bound and released: another process may take it first,
/// which the callers accept).
///
/// # Panics
/// When no port can be bound at all.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Certificates for clients speaking TLS to the members and showing a certificate.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA both sides trust.
    pub ca: PathBuf,
    /// The members' certificate and key.
    pub member_cert: PathBuf,
    /// The members' key.
    pub member_key: PathBuf,
    /// A client certificate (for etcdctl here and for the controllers).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// Three etcd members on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    tls: Option<EtcdTls>,
    /// (name, client port, peer port)
    members: Vec<(String, u16, u16)>,
    children: Vec<Option<Child>>,
    /// More flags for every member.
    flags: Vec<String>,
}

impl EtcdCluster {
    /// Start three members and wait (up to 20 s) until the cluster takes writes.
    ///
    /// # Errors
    /// etcd or etcdctl missing, or the cluster not writable in time (with the members'
    /// last log lines).
    pub fn start(tls: Option<EtcdTls>) -> std::io::Result<EtcdCluster> {
        EtcdCluster::start_with(tls, &[])
    }

    /// [`EtcdCluster::start`], with more `flags` for every member (`--quota-backend-bytes=N`).
    ///
    /// # Errors
    /// As [`EtcdCluster::start`].
    pub fn start_with(tls: Option<EtcdTls>, flags: &[&str]) -> std::io::Result<EtcdCluster> {
        for tool in [ETCD, ETCDCTL] {
            if !Path::new(tool).is_file() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{tool} not installed (apt install etcd-server etcd-client)"),
                ));
            }
        }
        let members: Vec<(String, u16, u16)> = (0..3)
            .map(|i| (format!("m{i}"), free_port(), free_port()))
            .collect();
        let mut etcd = EtcdCluster {
            dir: tempfile::tempdir()?,
            tls,
            members,
            children: vec![None, None, None],
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        };
        for i in 0..3 {
            etcd.start_member(i)?;
        }
        etcd.wait_writable(Duration::from_secs(20))?;
        Ok(etcd)
    }

    /// Start member `i` (again, on its data directory and ports).
    ///
    /// # Errors
    /// The log file or the process cannot be created.
    pub fn start_member(&mut self, i: usize) -> std::io::Result<()> {
        let (name, client, peer) = self.members[i].clone();
        let scheme = self.scheme();
        let tls_flags: Vec<String> = self.tls.as_ref().map_or_else(Vec::new, |t| {
            vec![
                format!("--cert-file={}", t.member_cert.display()),
                format!("--key-file={}", t.member_key.display()),
                format!("--trusted-ca-file={}", t.ca.display()),
                "--client-cert-auth".into(),
            ]
        });
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|(n, _, p)| format!("{n}=http://127.0.0.1:{p}"))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))?;
        // Three members share the machine with the controllers, as members on controllers
        // do in a lab: one thread running Go code each (docs/cluster.md recommends it).
        let child = Command::new(ETCD)
            .env("GOMAXPROCS", "1")
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(self.dir.path().join(&name))
            .args([
                "--listen-client-urls",
                &format!("{scheme}://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                &format!("mozpool-test-{}", self.members[0].1),
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "300",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ])
            .args(&tls_flags)
            .args(&self.flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// SIGKILL member `i` and reap it.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process of member `i`, while it runs.
    #[must_use]
    pub fn member(&self, i: usize) -> Option<&Child> {
        self.children[i].as_ref()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The TLS files, when the members require client certificates.
    #[must_use]
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// The members' client URLs.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = self.scheme();
        self.members
            .iter()
            .map(|(_, c, _)| format!("{scheme}://127.0.0.1:{c}"))
            .collect()
    }

    /// Run etcdctl (v3 API, 2 s command timeout) against all members.
    ///
    /// # Errors
    /// etcdctl cannot be run.
    pub fn etcdctl(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        self.etcdctl_command(args).output()
    }

    /// Run etcdctl with `input` on its standard input (`put KEY` reads the value there).
    ///
    /// # Errors
    /// etcdctl cannot be run.
    pub fn etcdctl_input(
        &self,
        args: &[&str],
        input: &[u8],
    ) -> std::io::Result<std::process::Output> {
        use std::io::Write;
        let mut child = self
            .etcdctl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input)?;
        }
        child.wait_with_output()
    }

    fn etcdctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ETCDCTL);
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .arg("--command-timeout=2s")
            .args(args);
        cmd
    }

    /// Wait until a put succeeds.
    ///
    /// # Errors
    /// Not writable within `within` (with the members' last log lines).
    pub fn wait_writable(&self, within: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let out = self.etcdctl(&["put", "/probe", "x"])?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::other(format!(
                    "etcd cluster did not come up: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of each member's log.
    #[must_use]
    pub fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                let p = self.dir.path().join(format!("m{i}.log"));
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                format!("m{i}: {}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A controller's `[cluster]` section for this etcd: name, keys under `prefix`, lease
    /// TTL `ttl_s`, 1 s call timeout, plus the client certificate when TLS is on.
    #[must_use]
    pub fn section(&self, name: &str, prefix: &str, ttl_s: u64) -> String {
        let endpoints: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        let mut text = format!(
            "[cluster]\nname = \"{name}\"\nendpoints = [{}]\nprefix = \"{prefix}\"\nlease_ttl_s = {ttl_s}\ntimeout_ms = 1000\n",
            endpoints.join(", "),
        );
        if let Some(t) = &self.tls {
            for (key, file) in [
                ("ca", &t.ca),
                ("cert", &t.client_cert),
                ("key", &t.client_key),
            ] {
                text.push_str(&format!("{key} = {:?}\n", file.display().to_string()));
            }
        }
        text
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill_member(i);
        }
    }
}
