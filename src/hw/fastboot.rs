//! Flashing through the external `fastboot` tool ([`Tool`]'s discipline: argv only,
//! `-s SERIAL` always, own process group, killed at each deadline), output parsed
//! (`FAILED` anywhere fails the step even with exit 0).
//!
//! fastboot waits for an absent device forever, printing `< waiting for … >` once: over USB
//! and over its TCP transport (`tcp:HOST:PORT`, which it keeps reconnecting) alike. Every
//! run therefore has a deadline, and a deadline passed after that line means "absent".

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::domain::model::FlashStep;
use crate::domain::names::check_name;
use crate::hw::tool::{Stream, Tool};
use crate::hw::{Error, Result};

/// Runs a `fastboot` executable.
#[derive(Debug, Clone)]
pub struct Flasher {
    tool: Tool,
}

/// One fastboot step with its file resolved to a local path.
pub type FastbootStep = FlashStep<PathBuf>;

impl FlashStep<PathBuf> {
    /// The words after `fastboot -s SERIAL`.
    fn args(&self) -> Vec<OsString> {
        match self {
            FastbootStep::Flash { partition, file } => {
                vec!["flash".into(), partition.into(), file.into()]
            }
            FastbootStep::Erase { partition } => vec!["erase".into(), partition.into()],
            FastbootStep::Format { partition } => vec!["format".into(), partition.into()],
            FastbootStep::Wipe => vec!["-w".into()],
            FastbootStep::SetActive { slot } => vec!["set_active".into(), slot.into()],
            FastbootStep::RebootFastboot => vec!["reboot".into(), "fastboot".into()],
        }
    }

    /// Names in the step that reach the command line must not look like options.
    fn check(&self) -> Result<()> {
        let bad = |e: crate::domain::names::NameError| Error::BadConfig(e.to_string());
        match self {
            FastbootStep::Flash { partition, file } => {
                check_name("partition", partition).map_err(bad)?;
                std::fs::metadata(file)
                    .map_err(|e| Error::io(format!("image file {}", file.display()), e))?;
            }
            FastbootStep::Erase { partition } | FastbootStep::Format { partition } => {
                check_name("partition", partition).map_err(bad)?;
            }
            FastbootStep::SetActive { slot } => check_name("slot", slot).map_err(bad)?,
            FastbootStep::Wipe | FastbootStep::RebootFastboot => {}
        }
        Ok(())
    }
}

/// Wall-clock limits of each phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashDeadlines {
    /// For `getvar product`: how long the device may take to show up in fastboot.
    pub appear: Duration,
    /// For each step.
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

impl Flasher {
    /// A flasher for this executable.
    #[must_use]
    pub fn new(fastboot_path: impl Into<PathBuf>) -> Self {
        Flasher {
            tool: Tool::new(fastboot_path),
        }
    }

    /// The executable's path.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        self.tool.path()
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
        let mut o = RunOutcome::default();
        let ran = self
            .tool
            .run(&argv, limit, &mut |_: Stream, line: &str| {
                note_line(&mut o, line);
                on_line(line);
            })
            .await?;
        o.status = ran.status;
        o.timed_out = ran.timed_out;
        Ok(o)
    }

    /// Run one phase and turn its outcome into a result.
    async fn phase(
        &self,
        serial: &str,
        args: &[OsString],
        limit: Duration,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<RunOutcome> {
        let o = self.run(serial, args, limit, on_line).await?;
        let what = format!(
            "fastboot {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
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

    /// `getvar product` until the device answers or `limit` passes. fastboot waits for the
    /// device by itself (`< waiting for … >`), over USB and over TCP alike, so one run under
    /// the deadline is the whole wait.
    ///
    /// # Errors
    /// [`Error::DeviceAbsent`] when it never answered; a device's own failure as it came.
    pub async fn wait_for_device(
        &self,
        serial: &str,
        limit: Duration,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<()> {
        let args: Vec<OsString> = vec!["getvar".into(), "product".into()];
        let o = self.phase(serial, &args, limit, on_line).await?;
        if o.vars.iter().any(|(k, _)| k == "product") {
            Ok(())
        } else {
            Err(Error::FastbootFailed {
                msg: "getvar product: no product in the output".into(),
            })
        }
    }

    /// Wait for the device in fastboot ([`Flasher::wait_for_device`]), run every step, then
    /// `reboot`. Names are validated and files must exist before anything runs.
    ///
    /// # Errors
    /// [`Error::DeviceAbsent`], [`Error::FastbootFailed`], [`Error::Timeout`],
    /// [`Error::BadConfig`] for bad names, [`Error::Io`] for missing files.
    pub async fn flash(
        &self,
        serial: &str,
        steps: &[FastbootStep],
        deadlines: &FlashDeadlines,
        mut on_line: impl FnMut(&str) + Send,
    ) -> Result<()> {
        for s in steps {
            s.check()?;
        }
        self.wait_for_device(serial, deadlines.appear, &mut on_line)
            .await?;
        for s in steps {
            self.phase(serial, &s.args(), deadlines.per_step, &mut on_line)
                .await?;
            if *s == FastbootStep::RebootFastboot {
                // The device comes back as fastbootd; the next step needs it there.
                self.wait_for_device(serial, deadlines.appear, &mut on_line)
                    .await?;
            }
        }
        self.phase(serial, &["reboot".into()], deadlines.reboot, &mut on_line)
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
    fn steps_become_fastboot_words() {
        let words = |s: FastbootStep| {
            s.args()
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            words(FastbootStep::Flash {
                partition: "boot".into(),
                file: "/x/boot.img".into()
            }),
            "flash boot /x/boot.img"
        );
        assert_eq!(
            words(FastbootStep::Erase {
                partition: "cache".into()
            }),
            "erase cache"
        );
        assert_eq!(
            words(FastbootStep::Format {
                partition: "userdata".into()
            }),
            "format userdata"
        );
        assert_eq!(words(FastbootStep::Wipe), "-w");
        assert_eq!(
            words(FastbootStep::SetActive { slot: "b".into() }),
            "set_active b"
        );
        assert_eq!(words(FastbootStep::RebootFastboot), "reboot fastboot");
        assert!(
            FastbootStep::Erase {
                partition: "-w".into()
            }
            .check()
            .is_err()
        );
    }
}
