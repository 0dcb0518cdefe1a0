//! Booting a VM and recording its console with host arrival times.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_qemu::{extract_direct_boot, BootMode, DiskWrites, Vm, VmConfig, VmOptions};
use berth_tests::{e2e_dir, VmPermit, BOOT_TIMEOUT};
use regex::Regex;

use crate::timeline::Line;

/// How an image boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPath {
    /// `-kernel/-initrd` with the default entry's files.
    Direct,
    /// OVMF, then systemd-boot.
    Uefi,
}

impl BootPath {
    pub fn label(self) -> &'static str {
        match self {
            BootPath::Direct => "direct",
            BootPath::Uefi => "UEFI",
        }
    }
}

/// A running VM with its slot and the time QEMU was started.
#[derive(Debug)]
pub struct Running {
    // The VM dies before its slot is given back.
    pub vm: Vm,
    _permit: VmPermit,
    _files: Option<tempfile::TempDir>,
    pub started: Instant,
}

impl Running {
    /// Console lines with their arrival times until one contains `stop` (included)
    /// or `timeout`.
    pub fn record_until(&self, stop: &Regex, timeout: Duration) -> anyhow::Result<Vec<Line>> {
        let any = Regex::new(".*")?;
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            match self.vm.poll_any(&[&any], deadline) {
                Ok(Some((_, text))) => {
                    let host_s = self.started.elapsed().as_secs_f64();
                    let done = stop.is_match(&text);
                    lines.push(crate::timeline::Line { host_s, text });
                    if done {
                        return Ok(lines);
                    }
                }
                Ok(None) => bail!("no console line matched {stop} within {timeout:?}"),
                Err(err) => bail!("{err}"),
            }
        }
    }

    /// Types `command` into the debug shell and returns what it printed between
    /// two markers the typed line itself does not contain.
    pub fn shell(&mut self, command: &str) -> anyhow::Result<Vec<String>> {
        self.vm
            .send_line(&format!("echo @@b\"\"egin; {command}; echo @@e\"\"nd=$?"))
            .context("typing into the console")?;
        let begin = Regex::new(r"^\s*@@begin\s*$")?;
        self.vm.expect(&begin, BOOT_TIMEOUT)?;
        let any = Regex::new(".*")?;
        let mut out = Vec::new();
        loop {
            let line = self.vm.expect(&any, BOOT_TIMEOUT)?;
            if let Some(code) = line.trim().strip_prefix("@@end=") {
                if code != "0" {
                    bail!("`{command}` failed ({code}):\n{}", out.join("\n"));
                }
                return Ok(out);
            }
            out.push(line);
        }
    }
}

/// Boots `image` (a berth disk image) along `path`, writes discarded.
pub fn boot_image(image: &Path, path: BootPath, log: &str) -> anyhow::Result<Running> {
    let mut config = VmConfig::new(image)?;
    config.writes = DiskWrites::Discard;
    let mut files = None;
    if path == BootPath::Direct {
        let dir = tempfile::Builder::new().prefix("berth-bench-").tempdir()?;
        config.boot = BootMode::Direct(extract_direct_boot(image, dir.path())?);
        files = Some(dir);
    }
    start(config, log, files)
}

/// Starts a VM described by `config`, its console logged to
/// `target/e2e/logs/<log>.log`.
pub fn start(
    config: VmConfig,
    log: &str,
    files: Option<tempfile::TempDir>,
) -> anyhow::Result<Running> {
    let permit = VmPermit::acquire();
    let log = e2e_dir().join("logs").join(format!("{log}.log"));
    let _ = std::fs::remove_file(&log);
    let accel = crate::accel()?;
    let started = Instant::now();
    let vm = Vm::start(
        &config,
        VmOptions {
            echo: None,
            log: Some(log),
            accel: Some(accel),
        },
    )?;
    Ok(Running {
        vm,
        _permit: permit,
        _files: files,
        started,
    })
}
