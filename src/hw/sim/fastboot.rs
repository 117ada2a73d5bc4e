//! The `fastboot` stand-in executable's logic (`mozpool sim-fastboot --rack DIR ...`).
//! The real [`crate::hw::Flasher`] runs it by path exactly like real fastboot. It finds
//! the simulated device by serial through the rack directory's index (`DIR/devices`, a
//! line `SERIAL ADDR ID` per device), waits with `< waiting for SERIAL >` while the device is not
//! in its bootloader, prints fastboot-like lines on stderr and uses fastboot's exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::device::{ControlPort, control_request, read_rack_index};

/// Entry point of the stand-in: `args` are the arguments after `sim-fastboot`.
/// Returns the process exit code. May never return (waiting, or the `fastboot_hangs`
/// fault): the caller kills it, as it must kill real fastboot.
#[must_use]
pub fn sim_fastboot_main(args: Vec<String>) -> i32 {
    let mut rack: Option<PathBuf> = None;
    let mut serial: Option<String> = None;
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rack" => rack = it.next().map(PathBuf::from),
            "-s" => serial = it.next(),
            _ => rest.push(a),
        }
    }
    let Some(rack) = rack else {
        return usage("sim-fastboot needs --rack DIR");
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match rest.as_slice() {
        [] => usage("no command"),
        ["devices"] => devices(&rack),
        _ => {
            let Some(serial) = serial else {
                return usage("sim-fastboot needs -s SERIAL");
            };
            if serial.contains('/') || serial.starts_with('.') || serial.is_empty() {
                return usage("bad serial");
            }
            let started = Instant::now();
            let addr = wait_for_device(&rack, &serial);
            match rest.as_slice() {
                ["getvar", var] => getvar(addr, var, started),
                ["flash", part, file] => flash(addr, part, Path::new(file), started),
                ["reboot"] => reboot(addr, started),
                [cmd, ..] => usage(&format!("unknown command {cmd}")),
                [] => usage("no command"),
            }
        }
    }
}

fn say(line: &str) {
    let mut e = std::io::stderr();
    let _ = writeln!(e, "{line}");
    let _ = e.flush();
}

fn usage(msg: &str) -> i32 {
    say(&format!("fastboot: usage: {msg}"));
    1
}

fn secs(started: Instant) -> String {
    format!("{:.3}s", started.elapsed().as_secs_f64())
}

fn forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn devices(rack: &Path) -> i32 {
    let mut all = read_rack_index(rack);
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (serial, port) in all {
        if control_request(port, "state").is_ok_and(|s| s == "bootloader") {
            println!("{serial}\tfastboot");
        }
    }
    0
}

fn read_addr(rack: &Path, serial: &str) -> Option<ControlPort> {
    read_rack_index(rack)
        .into_iter()
        .find_map(|(s, port)| (s == serial).then_some(port))
}

/// Block until the device is in its bootloader and caught; never returns under the
/// `fastboot_hangs` fault or while the device stays away.
fn wait_for_device(rack: &Path, serial: &str) -> ControlPort {
    let mut announced = false;
    loop {
        if let Some(addr) = read_addr(rack, serial) {
            match control_request(addr, "catch").as_deref() {
                Ok("ok") => return addr,
                Ok("hang") => forever(),
                _ => {}
            }
        }
        if !announced {
            say(&format!("< waiting for {serial} >"));
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn remote(addr: ControlPort, req: &str) -> Result<String, String> {
    match control_request(addr, req) {
        Ok(r) => match r.split_once(' ') {
            Some(("ok", v)) => Ok(v.to_owned()),
            None if r == "ok" => Ok(String::new()),
            Some(("err", m)) => Err(m.to_owned()),
            _ => Err(format!("bad reply {r:?}")),
        },
        Err(e) => Err(format!("device gone: {e}")),
    }
}

fn getvar(addr: ControlPort, var: &str, started: Instant) -> i32 {
    match remote(addr, &format!("getvar {var}")) {
        Ok(v) => say(&format!("{var}: {v}")),
        // Like modern fastboot: the failure is printed but the exit status stays 0.
        Err(m) => say(&format!("getvar:{var}  FAILED (remote: '{m}')")),
    }
    say(&format!("Finished. Total time: {}", secs(started)));
    0
}

fn flash(addr: ControlPort, part: &str, file: &Path, started: Instant) -> i32 {
    let data = match std::fs::read(file) {
        Ok(d) => d,
        Err(e) => {
            say(&format!(
                "fastboot: error: cannot load '{}': {e}",
                file.display()
            ));
            return 1;
        }
    };
    let sha = hex_digest(&data);
    say(&format!(
        "Sending '{part}' ({} KB)   OKAY [  {}]",
        data.len().div_ceil(1024),
        secs(started)
    ));
    match remote(addr, &format!("flash {part} {sha}")) {
        Ok(_) => {
            say(&format!("Writing '{part}'   OKAY [  {}]", secs(started)));
            say(&format!("Finished. Total time: {}", secs(started)));
            0
        }
        Err(m) => {
            say(&format!("Writing '{part}'   FAILED (remote: '{m}')"));
            say("fastboot: error: Command failed");
            1
        }
    }
}

fn reboot(addr: ControlPort, started: Instant) -> i32 {
    match remote(addr, "reboot") {
        Ok(_) => {
            say(&format!("Rebooting   OKAY [  {}]", secs(started)));
            say(&format!("Finished. Total time: {}", secs(started)));
            0
        }
        Err(m) => {
            say(&format!("Rebooting   FAILED (remote: '{m}')"));
            say("fastboot: error: Command failed");
            1
        }
    }
}

/// Lower-case hex SHA-256.
#[must_use]
pub fn hex_digest(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
