//! `[cluster]`: where this controller's etcd is and how it identifies itself there. Parsed
//! with the rest of the configuration ([`crate::app::config`]); absent, the controller runs
//! alone and no cluster code runs.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::names::ServerName;

/// Shortest lease TTL accepted: etcd refuses leases shorter than about 1.5 election
/// timeouts, and a TTL under 2 s leaves no room for one lost keep-alive.
pub const MIN_LEASE_TTL_S: u64 = 2;
/// Longest lease TTL accepted: a dead controller's devices stay in the pool this long.
pub const MAX_LEASE_TTL_S: u64 = 300;

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This controller's id in the cluster (keys `<prefix>devices/<name>/…`); unset, the
    /// controller's `server.name`. Must be unique among the controllers sharing the etcd.
    pub name: Option<ServerName>,
    /// etcd client URLs (`https://rack1.lab:2379`); at least one, normally all members.
    pub endpoints: Vec<String>,
    /// Prefix of every key mozpool writes, so several labs (or a test) can share one etcd.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The controller's lease TTL in seconds: how long after its last keep-alive a dead or
    /// cut-off controller's devices stay in the pool and its scheduler role stays taken.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_s: u64,
    /// Longest wait for one etcd call, in ms; past it the call counts as etcd unreachable.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a closed or failed request (and its idempotency key) stays in etcd after it
    /// ended, in seconds, before the scheduler deletes it: clients may still read its final
    /// state, and a create retried with the same key within this time gets it back.
    #[serde(default = "default_keep_closed_s")]
    pub keep_closed_s: u64,
    /// Every this many seconds the scheduler compacts etcd's history to the revision it
    /// saw one interval earlier, so etcd keeps one to two intervals of old revisions (as
    /// Kubernetes' API server does). 0: mozpool never compacts, and the members need
    /// `--auto-compaction-retention` instead: without either, etcd's database grows with
    /// every write until its quota, then etcd refuses every write (`NOSPACE`).
    #[serde(default = "default_compaction_interval_s")]
    pub compaction_interval_s: u64,
    /// CA certificate (PEM) that signed the etcd members' certificates; needs `https://`
    /// endpoints.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), with `key`, when the members require client certificates
    /// (`--client-cert-auth`).
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// etcd user, when etcd authentication is on.
    pub user: Option<String>,
    /// The etcd user's password.
    pub password: Option<String>,
}

fn default_prefix() -> String {
    "/mozpool/".to_owned()
}

fn default_lease_ttl() -> u64 {
    10
}

fn default_timeout_ms() -> u64 {
    2000
}

fn default_keep_closed_s() -> u64 {
    86_400
}

fn default_compaction_interval_s() -> u64 {
    300
}

impl ClusterConfig {
    /// The checks parsing cannot do: endpoints, prefix, TTL range, TLS files in pairs.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("cluster.endpoints must list at least one etcd URL".into());
        }
        let tls = self.ca.is_some() || self.cert.is_some();
        for e in &self.endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            if !rest.is_some_and(|r| crate::domain::names::valid_host_port(r.trim_end_matches('/')))
            {
                return Err(format!(
                    "cluster.endpoints: {e:?} is not an http:// or https:// URL with host and port (https://rack1.lab:2379)"
                ));
            }
            if e.starts_with("https://") && self.ca.is_none() {
                return Err(format!(
                    "cluster.endpoints: {e:?} is https:// but cluster.ca is not set: name the CA that signed the etcd members' certificates"
                ));
            }
            if tls && e.starts_with("http://") {
                return Err(format!(
                    "cluster.endpoints: {e:?} is plain http:// but cluster.ca or cluster.cert is set; use https://"
                ));
            }
        }
        if !(self.prefix.starts_with('/') && self.prefix.ends_with('/') && self.prefix.len() > 1)
            || self.prefix.contains("//")
        {
            return Err(format!(
                "cluster.prefix {:?} must start and end with / (\"/mozpool/\")",
                self.prefix
            ));
        }
        if !(MIN_LEASE_TTL_S..=MAX_LEASE_TTL_S).contains(&self.lease_ttl_s) {
            return Err(format!(
                "cluster.lease_ttl_s must be between {MIN_LEASE_TTL_S} and {MAX_LEASE_TTL_S}"
            ));
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return Err("cluster.timeout_ms must be between 100 and 60000".into());
        }
        if self.keep_closed_s == 0 {
            return Err("cluster.keep_closed_s must be at least 1".into());
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err("cluster.cert and cluster.key go together: set both or neither".into());
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(
                "cluster.user and cluster.password go together: set both or neither".into(),
            );
        }
        Ok(())
    }

    /// [`ClusterConfig::lease_ttl_s`] as a duration.
    #[must_use]
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_s)
    }

    /// [`ClusterConfig::compaction_interval_s`] as a duration; `None` when mozpool does not
    /// compact.
    #[must_use]
    pub fn compaction_interval(&self) -> Option<Duration> {
        (self.compaction_interval_s > 0).then(|| Duration::from_secs(self.compaction_interval_s))
    }

    /// [`ClusterConfig::timeout_ms`] as a duration.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, String> {
        let c: ClusterConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    #[test]
    fn defaults_and_checks() {
        let c = parse("endpoints = [\"http://127.0.0.1:2379\"]\n").expect("minimal");
        assert_eq!(c.prefix, "/mozpool/");
        assert_eq!(c.lease_ttl_s, 10);
        assert_eq!(c.keep_closed_s, 86_400);
        assert_eq!(c.compaction_interval(), Some(Duration::from_secs(300)));
        assert!(c.name.is_none());
        for (text, want) in [
            ("endpoints = []\n", "at least one"),
            ("endpoints = [\"127.0.0.1:2379\"]\n", "http://"),
            ("endpoints = [\"http://:2379\"]\n", "host and port"),
            (
                "endpoints = [\"http://a:1\"]\nprefix = \"mozpool\"\n",
                "cluster.prefix",
            ),
            (
                "endpoints = [\"http://a:1\"]\nlease_ttl_s = 1\n",
                "lease_ttl_s",
            ),
            (
                "endpoints = [\"http://a:1\"]\nkeep_closed_s = 0\n",
                "keep_closed_s",
            ),
            (
                "endpoints = [\"http://a:1\"]\nca = \"/etc/ca.pem\"\n",
                "use https://",
            ),
            (
                "endpoints = [\"https://a:1\"]\nca = \"/ca.pem\"\ncert = \"/etc/c.pem\"\n",
                "cert and cluster.key",
            ),
            ("endpoints = [\"https://a:1\"]\n", "cluster.ca is not set"),
            (
                "endpoints = [\"http://a:1\"]\nuser = \"mozpool\"\n",
                "password",
            ),
            (
                "endpoints = [\"http://a:1\"]\nname = \"a/b\"\n",
                "server name",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
        let c = parse(
            "name = \"rack2\"\nendpoints = [\"https://a:2379\", \"https://b:2379\"]\nca = \"/etc/mozpool/etcd-ca.pem\"\ncert = \"/etc/mozpool/etcd.pem\"\nkey = \"/etc/mozpool/etcd-key.pem\"\nlease_ttl_s = 5\n",
        )
        .expect("tls");
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.lease_ttl(), Duration::from_secs(5));
        let c = parse("endpoints = [\"http://a:1\"]\ncompaction_interval_s = 0\n").expect("off");
        assert_eq!(c.compaction_interval(), None);
    }
}
