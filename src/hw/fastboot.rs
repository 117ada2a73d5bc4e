//! Flashing through the external `fastboot` tool: argv vectors only (never a shell),
//! `-s SERIAL` always, `ANDROID_SERIAL` scrubbed, the child in its own process group,
//! stdout+stderr streamed line by line, the whole group killed at each deadline, output
//! parsed (`FAILED` anywhere fails the step even with exit 0).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::domain::names::check_name;
use crate::hw::{Error, Result};

/// Longest output line kept; longer lines are cut.
const MAX_LINE: usize = 4096;
/// How long output is still read after fastboot exited.
const DRAIN: Duration = Duration::from_millis(200);

/// Runs a `fastboot` executable.
#[derive(Debug, Clone)]
pub struct Flasher {
    /// The `fastboot` binary (or a stand-in), by absolute path: no `PATH` lookup.
    pub fastboot_path: PathBuf,
}

/// One `fastboot flash PARTITION FILE` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashStep {
    /// Partition name (validated like every name: cannot look like an option).
    pub partition: String,
    /// Local image file, already resolved from the image store or cache.
    pub file: PathBuf,
}

/// Wall-clock limits of each phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashDeadlines {
    /// For `getvar product`: how long the device may take to show up in its bootloader.
    pub appear: Duration,
    /// For each `flash` step.
    pub per_step: Duration,
    /// For the final `reboot`.
    pub reboot: Duration,
}

impl Default for FlashDeadlines {
    /// Devil-like defaults: 60 s to appear, 300 s per flash step and for reboot.
    fn default() -> Self {
        FlashDeadlines {
            appear: Duration::from_secs(60),
            per_step: Duration::from_secs(300),
            reboot: Duration::from_secs(300),
        }
    }
}

/// What one fastboot run produced.
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    /// Exit status; `None` when killed at the deadline.
    pub status: Option<ExitStatus>,
    /// Killed at the deadline.
    pub timed_out: bool,
    /// A `< waiting for ... >` line was seen.
    pub waiting: bool,
    /// The first line containing `FAILED`.
    pub failed: Option<String>,
    /// The first `fastboot: error:` / `fastboot: usage:` line.
    pub error: Option<String>,
    /// `name: value` lines (getvar output).
    pub vars: Vec<(String, String)>,
}

/// Outcome of parsing one output line.
fn note_line(o: &mut RunOutcome, line: &str) {
    let t = line.trim();
    if t.starts_with("< waiting for") {
        o.waiting = true;
    }
    if o.failed.is_none() && t.contains("FAILED") {
        o.failed = Some(t.to_owned());
    }
    if o.error.is_none() && (t.starts_with("fastboot: error:") || t.starts_with("fastboot: usage:"))
    {
        o.error = Some(t.to_owned());
    }
    if let Some((k, v)) = t.split_once(": ")
        && !k.is_empty()
        && !k.contains(' ')
        && k != "fastboot"
    {
        o.vars.push((k.to_owned(), v.trim().to_owned()));
    }
}

/// The device message of a `FAILED (remote: '...')` line, else the line.
#[must_use]
pub fn failure_message(line: &str) -> String {
    if let Some(start) = line.find("(remote: ") {
        let rest = &line[start + "(remote: ".len()..];
        let rest = rest.trim_end_matches(')');
        return rest.trim_matches(['\'', '"']).to_owned();
    }
    line.to_owned()
}

/// Splits a byte stream into lines (LF or CR), capping each line.
#[derive(Default)]
struct Lines {
    cur: Vec<u8>,
}

impl Lines {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<String>) {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                self.flush(out);
            } else if self.cur.len() < MAX_LINE {
                self.cur.push(b);
            }
        }
    }
    fn flush(&mut self, out: &mut Vec<String>) {
        if !self.cur.is_empty() {
            out.push(String::from_utf8_lossy(&self.cur).into_owned());
            self.cur.clear();
        }
    }
}

async fn read_some<R: AsyncReadExt + Unpin>(
    r: &mut Option<R>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

fn kill_group(child: &Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Flasher {
    /// A flasher for this executable.
    #[must_use]
    pub fn new(fastboot_path: impl Into<PathBuf>) -> Self {
        Flasher {
            fastboot_path: fastboot_path.into(),
        }
    }

    async fn spawn(&self, argv: &[OsString]) -> Result<Child> {
        let mut tries = 0;
        loop {
            let r = Command::new(&self.fastboot_path)
                .args(argv)
                .env_remove("ANDROID_SERIAL")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn();
            match r {
                Ok(c) => return Ok(c),
                // A freshly written executable can be briefly busy (rust-lang/rust#114554).
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 10 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10 * tries)).await;
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("spawn {}", self.fastboot_path.display()),
                        e,
                    ));
                }
            }
        }
    }

    /// Run `fastboot -s SERIAL ARGS...` under a wall-clock limit, streaming every output
    /// line to `on_line`. At the limit the whole process group is killed and reaped.
    ///
    /// # Errors
    /// Only for spawn failures or a bad serial; the outcome reports everything else.
    pub async fn run(
        &self,
        serial: &str,
        args: &[OsString],
        limit: Duration,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<RunOutcome> {
        check_name("fastboot serial", serial).map_err(|e| Error::BadConfig(e.to_string()))?;
        let mut argv: Vec<OsString> = vec!["-s".into(), serial.into()];
        argv.extend(args.iter().cloned());
        let deadline = Instant::now() + limit;
        let mut child = self.spawn(&argv).await?;
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let (mut ol, mut el) = (Lines::default(), Lines::default());
        let (mut ob, mut eb) = ([0u8; 4096], [0u8; 4096]);
        let mut o = RunOutcome::default();
        // After fastboot exits, read what is left in its pipes for a moment only: a
        // leftover grandchild holding them open must not turn success into a timeout.
        let mut drain_until: Option<Instant> = None;
        loop {
            if out.is_none() && err.is_none() && o.status.is_some() {
                break;
            }
            let wake = drain_until.map_or(deadline, |d| d.min(deadline));
            let mut lines = Vec::new();
            tokio::select! {
                r = read_some(&mut out, &mut ob) => match r {
                    Ok(n) if n > 0 => ol.push(&ob[..n], &mut lines),
                    _ => { ol.flush(&mut lines); out = None; }
                },
                r = read_some(&mut err, &mut eb) => match r {
                    Ok(n) if n > 0 => el.push(&eb[..n], &mut lines),
                    _ => { el.flush(&mut lines); err = None; }
                },
                r = child.wait(), if o.status.is_none() => {
                    o.status = Some(r.map_err(|e| Error::io("wait for fastboot", e))?);
                    drain_until = Some(Instant::now() + DRAIN);
                }
                () = tokio::time::sleep_until(wake) => {
                    if o.status.is_none() {
                        o.timed_out = true;
                    }
                }
            }
            for l in &lines {
                note_line(&mut o, l);
                on_line(l);
            }
            if o.timed_out || drain_until.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        if o.timed_out {
            kill_group(&child);
            let _ = child.wait().await;
        }
        Ok(o)
    }

    /// Run one phase and turn its outcome into a result.
    async fn phase(
        &self,
        serial: &str,
        args: &[&str],
        limit: Duration,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<RunOutcome> {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        let o = self.run(serial, &argv, limit, on_line).await?;
        let what = format!("fastboot {}", args.join(" "));
        if o.timed_out {
            return Err(if o.waiting {
                Error::DeviceAbsent {
                    serial: serial.to_owned(),
                    detail: format!("{what}: still waiting for the device after {limit:?}"),
                }
            } else {
                Error::Timeout {
                    op: what,
                    after: limit,
                }
            });
        }
        if let Some(f) = &o.failed {
            return Err(Error::FastbootFailed {
                msg: format!("{what}: {}", failure_message(f)),
            });
        }
        match o.status {
            Some(s) if s.success() => Ok(o),
            s => Err(Error::FastbootFailed {
                msg: format!(
                    "{what}: {}",
                    o.error.clone().unwrap_or_else(|| match s {
                        Some(s) => format!("exit status {s}"),
                        None => "no exit status".into(),
                    })
                ),
            }),
        }
    }

    /// `getvar product` (waits for the device in its bootloader), `flash` per step,
    /// then `reboot`. Partition names are validated and files must exist.
    ///
    /// # Errors
    /// [`Error::DeviceAbsent`], [`Error::FastbootFailed`], [`Error::Timeout`],
    /// [`Error::BadConfig`] for bad partition names, [`Error::Io`] for missing files.
    pub async fn flash(
        &self,
        serial: &str,
        steps: &[FlashStep],
        deadlines: &FlashDeadlines,
        mut on_line: impl FnMut(&str) + Send,
    ) -> Result<()> {
        for s in steps {
            check_name("partition", &s.partition).map_err(|e| Error::BadConfig(e.to_string()))?;
            std::fs::metadata(&s.file)
                .map_err(|e| Error::io(format!("image file {}", s.file.display()), e))?;
        }
        let o = self
            .phase(
                serial,
                &["getvar", "product"],
                deadlines.appear,
                &mut on_line,
            )
            .await?;
        if !o.vars.iter().any(|(k, _)| k == "product") {
            return Err(Error::FastbootFailed {
                msg: "getvar product: no product in the output".into(),
            });
        }
        for s in steps {
            let file = s.file.to_string_lossy().into_owned();
            let args = ["flash", s.partition.as_str(), file.as_str()];
            self.phase(serial, &args, deadlines.per_step, &mut on_line)
                .await?;
        }
        self.phase(serial, &["reboot"], deadlines.reboot, &mut on_line)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_output_lines() {
        let mut o = RunOutcome::default();
        for l in [
            "< waiting for abc >",
            "product: panda",
            "Sending 'boot' (8192 KB)   OKAY [  0.312s]",
            "Writing 'boot'   FAILED (remote: 'Partition not found')",
            "fastboot: error: Command failed",
        ] {
            note_line(&mut o, l);
        }
        assert!(o.waiting);
        assert_eq!(o.vars, vec![("product".to_owned(), "panda".to_owned())]);
        assert_eq!(
            failure_message(o.failed.as_deref().unwrap_or("")),
            "Partition not found"
        );
        assert_eq!(o.error.as_deref(), Some("fastboot: error: Command failed"));
        assert_eq!(
            failure_message("getvar:foo  FAILED (remote: 'GetVar Variable Not found')"),
            "GetVar Variable Not found"
        );
    }

    #[test]
    fn splits_lines_on_cr_and_lf_and_caps_them() {
        let mut l = Lines::default();
        let mut out = Vec::new();
        l.push(b"a\r\nb\rc", &mut out);
        l.push(&vec![b'x'; MAX_LINE + 10], &mut out);
        l.flush(&mut out);
        assert_eq!(out[..2], ["a".to_owned(), "b".to_owned()]);
        assert_eq!(out[2].len(), MAX_LINE);
        assert!(out[2].starts_with("cx"));
    }
}
