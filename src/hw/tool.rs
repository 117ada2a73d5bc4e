//! Running the external Android tools (`fastboot`, `adb`) with one discipline: argv vectors
//! only (never a shell), `ANDROID_SERIAL` scrubbed, the child in its own process group,
//! stdout and stderr read line by line as they come, the whole group killed at the deadline
//! and always reaped.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::hw::{Error, Result};

/// Longest output line kept; longer lines are cut.
const MAX_LINE: usize = 4096;
/// How long output is still read after the tool exited.
const DRAIN: Duration = Duration::from_millis(200);

/// Which of the child's pipes a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

/// How one run ended.
#[derive(Debug, Clone, Default)]
pub struct Ran {
    /// Exit status; `None` when killed at the deadline.
    pub status: Option<ExitStatus>,
    /// Killed at the deadline.
    pub timed_out: bool,
}

/// An external tool, by absolute path (no `PATH` lookup), with the environment it gets.
#[derive(Debug, Clone)]
pub struct Tool {
    /// The executable.
    pub path: PathBuf,
    /// Variables set on the child (on top of the service's environment).
    pub env: Vec<(OsString, OsString)>,
}

impl Tool {
    /// A tool at `path` with no extra environment.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Tool {
            path: path.into(),
            env: Vec::new(),
        }
    }

    /// Set `key=value` on every child.
    #[must_use]
    pub fn with_env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The executable's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn spawn(&self, argv: &[OsString]) -> Result<Child> {
        let mut tries = 0;
        loop {
            let mut cmd = Command::new(&self.path);
            cmd.args(argv)
                .env_remove("ANDROID_SERIAL")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            for (k, v) in &self.env {
                cmd.env(k, v);
            }
            match cmd.spawn() {
                Ok(c) => return Ok(c),
                // A freshly written executable can be briefly busy (rust-lang/rust#114554).
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 10 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10 * tries)).await;
                }
                Err(e) => {
                    return Err(Error::io(format!("spawn {}", self.path.display()), e));
                }
            }
        }
    }

    /// Run the tool with `argv` under a wall-clock `limit`, handing every output line to
    /// `on_line` as it arrives. At the limit the whole process group is killed and reaped.
    ///
    /// # Errors
    /// Only when the tool cannot be started or waited for; the [`Ran`] reports the rest.
    pub async fn run(
        &self,
        argv: &[OsString],
        limit: Duration,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<Ran> {
        let deadline = Instant::now() + limit;
        let mut child = self.spawn(argv).await?;
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let (mut ol, mut el) = (Lines::default(), Lines::default());
        let (mut ob, mut eb) = ([0u8; 4096], [0u8; 4096]);
        let mut ran = Ran::default();
        // After the tool exits, read what is left in its pipes for a moment only: a
        // leftover grandchild holding them open (adb's server) must not turn success into a
        // timeout.
        let mut drain_until: Option<Instant> = None;
        loop {
            if out.is_none() && err.is_none() && ran.status.is_some() {
                break;
            }
            let wake = drain_until.map_or(deadline, |d| d.min(deadline));
            let mut lines = Vec::new();
            tokio::select! {
                r = read_some(&mut out, &mut ob) => match r {
                    Ok(n) if n > 0 => ol.push(&ob[..n], Stream::Out, &mut lines),
                    _ => { ol.flush(Stream::Out, &mut lines); out = None; }
                },
                r = read_some(&mut err, &mut eb) => match r {
                    Ok(n) if n > 0 => el.push(&eb[..n], Stream::Err, &mut lines),
                    _ => { el.flush(Stream::Err, &mut lines); err = None; }
                },
                r = child.wait(), if ran.status.is_none() => {
                    ran.status = Some(r.map_err(|e| Error::io(format!("wait for {}", self.path.display()), e))?);
                    drain_until = Some(Instant::now() + DRAIN);
                }
                () = tokio::time::sleep_until(wake) => {
                    if ran.status.is_none() {
                        ran.timed_out = true;
                    }
                }
            }
            for (stream, l) in &lines {
                on_line(*stream, l);
            }
            if ran.timed_out || drain_until.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        if ran.timed_out {
            kill_group(&child);
            let _ = child.wait().await;
        }
        Ok(ran)
    }
}

/// Splits a byte stream into lines (LF or CR), capping each line.
#[derive(Default)]
struct Lines {
    cur: Vec<u8>,
}

impl Lines {
    fn push(&mut self, bytes: &[u8], stream: Stream, out: &mut Vec<(Stream, String)>) {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                self.flush(stream, out);
            } else if self.cur.len() < MAX_LINE {
                self.cur.push(b);
            }
        }
    }
    fn flush(&mut self, stream: Stream, out: &mut Vec<(Stream, String)>) {
        if !self.cur.is_empty() {
            out.push((stream, String::from_utf8_lossy(&self.cur).into_owned()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_on_cr_and_lf_and_caps_them() {
        let mut l = Lines::default();
        let mut out = Vec::new();
        l.push(b"a\r\nb\rc", Stream::Err, &mut out);
        l.push(&vec![b'x'; MAX_LINE + 10], Stream::Err, &mut out);
        l.flush(Stream::Err, &mut out);
        let text: Vec<&str> = out.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(text[..2], ["a", "b"]);
        assert_eq!(text[2].len(), MAX_LINE);
        assert!(text[2].starts_with("cx"));
    }
}
