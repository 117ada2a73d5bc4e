//! Checking and rebooting devices through Debian's `adb`, with [`Tool`]'s discipline (argv
//! only, own process group, killed at the deadline), against the service's own adb server
//! on a private port so it never shares (or kills) a person's adb server on the same box.
//!
//! Devices are named by their adb serial: the USB serial number, or `host:port` for adb
//! over TCP, which is `adb connect`ed before each use (a no-op when it already is, and what
//! brings a device back after it rebooted). Devices are assumed to lack adb's shell
//! protocol (older adbd), so a shell command's status is echoed and parsed, never taken
//! from adb's exit code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::names::check_name;
use crate::hw::tool::{Stream, Tool};
use crate::hw::{Error, Result};

/// File the storage check writes, reads back and removes.
pub const CHECK_FILE: &str = "/data/local/tmp/.mozpool-check";

/// What kept adb from using a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdbProblem {
    /// The device has not accepted this server's RSA key.
    Unauthorized,
    /// The device is known but does not answer (booting, rebooting, cable).
    Offline,
    /// adb does not see the device at all.
    NotFound,
    /// Anything else adb or the device reported.
    Failed,
}

impl std::fmt::Display for AdbProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdbProblem::Unauthorized => "unauthorized",
            AdbProblem::Offline => "offline",
            AdbProblem::NotFound => "not found",
            AdbProblem::Failed => "failed",
        })
    }
}

/// Runs `adb`.
#[derive(Debug, Clone)]
pub struct Adb {
    tool: Tool,
}

/// Output of one adb run.
#[derive(Debug, Default)]
struct Output {
    out: Vec<String>,
    err: Vec<String>,
}

impl Output {
    fn all(&self) -> impl Iterator<Item = &String> {
        self.err.iter().chain(self.out.iter())
    }

    /// The first line adb uses to say why it could not reach the device, classified.
    fn problem(&self) -> Option<(AdbProblem, String)> {
        self.all().find_map(|l| {
            let t = l.trim();
            let lower = t.to_ascii_lowercase();
            let kind =
                if lower.contains("unauthorized") || lower.starts_with("failed to authenticate") {
                    AdbProblem::Unauthorized
                } else if lower.contains("offline") {
                    AdbProblem::Offline
                } else if lower.contains("not found")
                    && (lower.starts_with("error: device") || lower.contains("no devices"))
                    || lower.starts_with("error: no devices")
                {
                    AdbProblem::NotFound
                } else if lower.starts_with("error:")
                    || lower.starts_with("adb: error")
                    || lower.starts_with("failed to connect")
                    || lower.starts_with("cannot connect")
                {
                    AdbProblem::Failed
                } else {
                    return None;
                };
            Some((kind, t.to_owned()))
        })
    }
}

/// Whether the serial names a device adb reaches over TCP (`host:port`).
#[must_use]
pub fn is_network_serial(serial: &str) -> bool {
    serial.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
    })
}

impl Adb {
    /// An adb runner: `adb_path` by absolute path, its server on `server_port`, its keys
    /// under `home/.android`.
    #[must_use]
    pub fn new(adb_path: impl Into<PathBuf>, server_port: u16, home: impl Into<PathBuf>) -> Self {
        let home: PathBuf = home.into();
        Adb {
            tool: Tool::new(adb_path)
                .with_env("ANDROID_ADB_SERVER_PORT", server_port.to_string())
                .with_env("HOME", &home)
                // adb writes its server log to $TMPDIR; keep it beside its keys.
                .with_env("TMPDIR", &home),
        }
    }

    /// The executable's path.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        self.tool.path()
    }

    async fn run(&self, argv: &[&str], limit: Duration) -> Result<(Output, bool)> {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let mut o = Output::default();
        let ran = self
            .tool
            .run(&argv, limit, &mut |stream, line: &str| match stream {
                Stream::Out => o.out.push(line.to_owned()),
                Stream::Err => o.err.push(line.to_owned()),
            })
            .await?;
        if ran.timed_out {
            return Err(Error::Timeout {
                op: format!("adb {}", argv_text(&argv)),
                after: limit,
            });
        }
        Ok((o, ran.status.is_some_and(|s| s.success())))
    }

    /// `adb connect` a network serial (nothing for a USB one).
    async fn connect(&self, serial: &str, limit: Duration) -> Result<()> {
        if !is_network_serial(serial) {
            return Ok(());
        }
        let (o, _) = self.run(&["connect", serial], limit).await?;
        if o.all().any(|l| l.contains("connected to")) {
            return Ok(());
        }
        let (kind, detail) = o.problem().unwrap_or((
            AdbProblem::Failed,
            o.all()
                .next()
                .cloned()
                .unwrap_or_else(|| "no output".into()),
        ));
        Err(Error::Adb {
            serial: serial.to_owned(),
            // A device that is not listening is not there as far as adb is concerned.
            kind: if kind == AdbProblem::Failed {
                AdbProblem::NotFound
            } else {
                kind
            },
            detail,
        })
    }

    /// `adb -s SERIAL ARGS...` on a connected device; the lines it printed on stdout. A
    /// network device that adb holds as offline (it rebooted and came back, and adb's own
    /// reconnect is still seconds away) is disconnected and connected again, once.
    async fn device_command(
        &self,
        serial: &str,
        args: &[&str],
        limit: Duration,
    ) -> Result<Vec<String>> {
        let end = Instant::now() + limit;
        match self.device_command_once(serial, args, end).await {
            Err(Error::Adb {
                kind: AdbProblem::Offline,
                ..
            }) if is_network_serial(serial) => {
                let left = end.saturating_duration_since(Instant::now());
                self.run(&["disconnect", serial], left).await?;
                self.device_command_once(serial, args, end).await
            }
            r => r,
        }
    }

    async fn device_command_once(
        &self,
        serial: &str,
        args: &[&str],
        end: Instant,
    ) -> Result<Vec<String>> {
        check_name("adb serial", serial).map_err(|e| Error::BadConfig(e.to_string()))?;
        self.connect(serial, end.saturating_duration_since(Instant::now()))
            .await?;
        let mut argv = vec!["-s", serial];
        argv.extend_from_slice(args);
        let (o, ok) = self
            .run(&argv, end.saturating_duration_since(Instant::now()))
            .await?;
        if let Some((kind, detail)) = o.problem() {
            return Err(Error::Adb {
                serial: serial.to_owned(),
                kind,
                detail,
            });
        }
        if !ok {
            return Err(Error::Adb {
                serial: serial.to_owned(),
                kind: AdbProblem::Failed,
                detail: format!(
                    "adb {} failed: {}",
                    args.join(" "),
                    o.all().next().map_or("no output", String::as_str)
                ),
            });
        }
        Ok(o.out)
    }

    /// The OS has finished booting: `getprop sys.boot_completed` is `1`.
    ///
    /// # Errors
    /// [`Error::Adb`] (unauthorized, offline, not found, or not booted), [`Error::Timeout`].
    pub async fn verify(&self, serial: &str, limit: Duration) -> Result<()> {
        let out = self
            .device_command(serial, &["shell", "getprop sys.boot_completed"], limit)
            .await?;
        match out.iter().map(|l| l.trim()).find(|l| !l.is_empty()) {
            Some("1") => Ok(()),
            got => Err(Error::Adb {
                serial: serial.to_owned(),
                kind: AdbProblem::Failed,
                detail: format!("not booted: sys.boot_completed is {:?}", got.unwrap_or("")),
            }),
        }
    }

    /// Storage works: a file written in `/data/local/tmp` reads back the same and is removed.
    ///
    /// # Errors
    /// [`Error::Adb`] with what the shell said (read-only, full), [`Error::Timeout`].
    pub async fn check_storage(&self, serial: &str, limit: Duration) -> Result<()> {
        let token = format!(
            "mozpool-check-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let cmd = format!(
            "echo {token} > {CHECK_FILE} && cat {CHECK_FILE} && rm {CHECK_FILE}; echo rc=$?"
        );
        let out = self.device_command(serial, &["shell", &cmd], limit).await?;
        let lines: Vec<&str> = out
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();
        let rc = lines.last().and_then(|l| l.strip_prefix("rc="));
        if rc == Some("0") && lines.contains(&token.as_str()) {
            return Ok(());
        }
        Err(Error::Adb {
            serial: serial.to_owned(),
            kind: AdbProblem::Failed,
            detail: format!(
                "storage check failed in /data/local/tmp: {}",
                lines
                    .iter()
                    .filter(|l| **l != token)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
        })
    }

    /// `adb reboot` (to the OS) or `adb reboot bootloader`.
    ///
    /// # Errors
    /// [`Error::Adb`], [`Error::Timeout`].
    pub async fn reboot(&self, serial: &str, bootloader: bool, limit: Duration) -> Result<()> {
        let args: &[&str] = if bootloader {
            &["reboot", "bootloader"]
        } else {
            &["reboot"]
        };
        self.device_command(serial, args, limit).await.map(|_| ())
    }

    /// Stop this service's adb server (at shutdown), so it does not outlive the service.
    pub async fn kill_server(&self) {
        let _ = self.run(&["kill-server"], Duration::from_secs(5)).await;
    }
}

fn argv_text(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(err: &[&str]) -> Option<AdbProblem> {
        Output {
            out: Vec::new(),
            err: err.iter().map(|s| (*s).to_owned()).collect(),
        }
        .problem()
        .map(|(k, _)| k)
    }

    #[test]
    fn classifies_what_adb_says() {
        assert_eq!(
            problem(&["error: device unauthorized."]),
            Some(AdbProblem::Unauthorized)
        );
        assert_eq!(
            problem(&["error: device offline"]),
            Some(AdbProblem::Offline)
        );
        assert_eq!(
            problem(&["error: device 'x' not found"]),
            Some(AdbProblem::NotFound)
        );
        assert_eq!(
            problem(&["error: no devices/emulators found"]),
            Some(AdbProblem::NotFound)
        );
        assert_eq!(problem(&["error: closed"]), Some(AdbProblem::Failed));
        assert_eq!(
            problem(&["failed to authenticate to 127.0.0.1:5555"]),
            Some(AdbProblem::Unauthorized)
        );
        assert_eq!(problem(&["* daemon started successfully"]), None);
    }

    #[test]
    fn network_serials() {
        assert!(is_network_serial("127.0.0.1:5555"));
        assert!(is_network_serial("phone.lab:5555"));
        assert!(!is_network_serial("0123456789ABCDEF"));
        assert!(!is_network_serial("usb:1-1.2"));
    }
}
