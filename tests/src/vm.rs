//! Booting images in QEMU, at most [`MAX_VMS`] at a time, and reading their
//! consoles.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use berth_qemu::{extract_direct_boot, BootMode, DiskWrites, PortForward, Vm, VmConfig, VmOptions};
use fs4::FileExt;
use regex::Regex;

use crate::build::{e2e_dir, run_tool};

/// How long a test waits for a boot milestone: generous, QEMU runs under TCG here.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// VMs running at once on the machine (it has 2 cores): across a test
/// process's threads and across test processes, since the test command runs
/// the benchmark smoke beside the other test binaries.
pub const MAX_VMS: usize = 2;

/// One of the [`MAX_VMS`] VM slots, given back on drop.
///
/// A slot is an exclusive `flock` on `target/e2e/vm-slots/<n>.lock`: flock
/// locks belong to an open file, so they exclude other threads of this
/// process as well as other processes, and the kernel frees them when a test
/// process dies.
#[derive(Debug)]
pub struct VmPermit(#[allow(dead_code)] File);

impl VmPermit {
    /// Waits for a free slot.
    pub fn acquire() -> VmPermit {
        let dir = e2e_dir().join("vm-slots");
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("creating {}: {err}", dir.display()));
        loop {
            for n in 0..MAX_VMS {
                let path = dir.join(format!("{n}.lock"));
                let file = File::create(&path)
                    .unwrap_or_else(|err| panic!("creating {}: {err}", path.display()));
                match FileExt::try_lock(&file) {
                    Ok(()) => return VmPermit(file),
                    Err(fs4::TryLockError::WouldBlock) => {}
                    Err(fs4::TryLockError::Error(err)) => {
                        panic!("locking {}: {err}", path.display())
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// How a test boots an image. Writes go to a throwaway overlay unless
/// `keep_writes`, so tests can share one image.
#[derive(Debug, Clone, Default)]
pub struct BootOptions {
    /// Boot the default entry's kernel directly instead of through OVMF and
    /// systemd-boot.
    pub direct: bool,
    pub ports: Vec<PortForward>,
    /// Guest memory; the library default when `None`.
    pub memory_mib: Option<u32>,
    /// Console log name under `target/e2e/logs/`; the test's name when `None`.
    pub log_name: Option<String>,
    /// Echo the console to the test's stderr as well.
    pub echo: bool,
    /// Write to the image file itself (and keep UEFI variables next to it) instead
    /// of a throwaway overlay: for tests that check the disk after the VM is gone.
    /// Boot a copy of a built image, never the shared one.
    pub persist: bool,
    /// Add QEMU's i6300esb watchdog device.
    pub watchdog: bool,
    /// NICs after the first, each on its own user-mode network (`eth1`, …).
    pub extra_nics: u32,
    /// How the disk is attached (virtio by default).
    pub disk_bus: berth_qemu::DiskBus,
    /// Record the guest's disk requests into this dm-log-writes file (an
    /// existing, empty file; with `persist` only): see
    /// [`crate::crashstates`].
    pub write_log: Option<PathBuf>,
}

/// A booted VM holding one VM slot; derefs to [`Vm`]. Dropping it kills QEMU, then
/// frees the slot.
#[derive(Debug)]
pub struct TestVm {
    // Field order matters: the VM dies before the slot is given back.
    vm: Vm,
    _permit: VmPermit,
    _direct_files: Option<tempfile::TempDir>,
}

impl TestVm {
    /// The console log of this VM.
    pub fn log(&self) -> &Path {
        self.vm.log_path().unwrap_or(Path::new("(no log)"))
    }
}

impl Deref for TestVm {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        &self.vm
    }
}

impl DerefMut for TestVm {
    fn deref_mut(&mut self) -> &mut Vm {
        &mut self.vm
    }
}

/// The current test's name, as libtest names its thread, made safe for a file name.
pub fn test_name() -> String {
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed-test")
        .to_string();
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Boots `image` and returns the running VM, its console logged to
/// `target/e2e/logs/<test>.log` (emptied on the first boot of that name in this
/// process).
pub fn boot(image: &Path, opts: BootOptions) -> TestVm {
    static LOGS_SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let permit = VmPermit::acquire();
    let mut config = VmConfig::new(image)
        .unwrap_or_else(|err| panic!("describing a VM for {}: {err}", image.display()));
    config.writes = if opts.persist {
        DiskWrites::Persist
    } else {
        DiskWrites::Discard
    };
    config.ports = opts.ports.clone();
    config.watchdog = opts.watchdog;
    config.extra_nics = opts.extra_nics;
    config.disk_bus = opts.disk_bus;
    if opts.write_log.is_some() {
        assert!(
            opts.persist,
            "a write log records the image's own writes: persist"
        );
        config.write_log = opts.write_log.clone();
    }
    if let Some(memory) = opts.memory_mib {
        config.memory_mib = memory;
    }
    let mut direct_files = None;
    if opts.direct {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-direct-")
            .tempdir()
            .unwrap_or_else(|err| panic!("creating a temporary folder: {err}"));
        let direct = extract_direct_boot(image, dir.path()).unwrap_or_else(|err| panic!("{err}"));
        config.boot = BootMode::Direct(direct);
        direct_files = Some(dir);
    }

    let name = opts.log_name.clone().unwrap_or_else(test_name);
    let log = e2e_dir().join("logs").join(format!("{name}.log"));
    {
        let mut seen = LOGS_SEEN.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get_or_insert_with(HashSet::new).insert(name) {
            // A log from an earlier run of the tests; a missing one is fine.
            let _ = fs::remove_file(&log);
        }
    }
    let echo: Option<Box<dyn Write + Send>> = if opts.echo {
        Some(Box::new(std::io::stderr()))
    } else {
        None
    };
    let vm = Vm::start(
        &config,
        VmOptions {
            echo,
            log: Some(log),
            accel: None,
        },
    )
    .unwrap_or_else(|err| panic!("booting {}: {err}", image.display()));
    TestVm {
        vm,
        _permit: permit,
        _direct_files: direct_files,
    }
}

/// A regex matching `text` literally.
pub fn literal(text: &str) -> Regex {
    Regex::new(&regex::escape(text)).expect("an escaped literal is a valid regex")
}

/// Waits until each of `texts` was on the console, in any order (lines that
/// come in no fixed order: a late DHCP lease, a container's output around a
/// health check); panics after [`BOOT_TIMEOUT`] for one of them.
/// A copy of `image` at `disk` that a test may write to: sparse (cheap), with
/// any earlier copy and its UEFI variable stores removed first.
pub fn scratch_copy(image: &Path, disk: &Path) {
    let _ = fs::remove_file(disk);
    for machine in [
        berth_qemu::command::MACHINE,
        berth_qemu::command::MACHINE_AARCH64,
    ] {
        let mut vars = disk.as_os_str().to_os_string();
        vars.push(format!(".{machine}.vars.fd"));
        let _ = fs::remove_file(vars);
    }
    crate::run_tool(
        Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(image)
            .arg(disk),
    );
}

/// [`scratch_copy`] of `image` as `<dir>/<name>.img` (the folder made if need be).
pub fn device_copy(image: &Path, dir: &Path, name: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|err| panic!("creating {}: {err}", dir.display()));
    let disk = dir.join(format!("{name}.img"));
    scratch_copy(image, &disk);
    disk
}

/// Boots `disk` writing to it (a scratch copy), its console logged as `log`.
pub fn boot_persistent(disk: &Path, log: &str) -> TestVm {
    boot(
        disk,
        BootOptions {
            persist: true,
            log_name: Some(log.to_string()),
            ..BootOptions::default()
        },
    )
}

/// Waits up to [`BOOT_TIMEOUT`] for a console line holding `text` and returns
/// it; panics naming the console log.
pub fn expect_line(vm: &TestVm, text: &str) -> String {
    vm.expect(&literal(text), BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err} (log: {})", vm.log().display()))
}

pub fn expect_all(vm: &TestVm, texts: &[&str]) {
    let patterns: Vec<Regex> = texts.iter().map(|t| literal(t)).collect();
    let mut waiting: Vec<usize> = (0..texts.len()).collect();
    while !waiting.is_empty() {
        let open: Vec<&Regex> = waiting.iter().map(|&i| &patterns[i]).collect();
        let (index, _) = vm
            .expect_any(&open, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e} (log: {})", vm.log().display()));
        waiting.remove(index);
    }
}

/// Types `command` into an image's debug shell (`[debug] console_shell = true`)
/// and returns its exit code, which the shell prints after a marker the typed
/// line itself does not contain.
pub fn shell(vm: &mut TestVm, command: &str) -> i32 {
    vm.send_line(&format!("{command}; echo @@rc\"\"=$?"))
        .unwrap_or_else(|err| panic!("typing into the console: {err}"));
    let marker = Regex::new(r"@@rc=\d+").expect("a valid regex");
    let line = vm
        .expect(&marker, BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    line.rsplit('=')
        .next()
        .and_then(|code| code.trim().parse().ok())
        .unwrap_or_else(|| panic!("no exit code in {line:?}"))
}

/// A qcow2 overlay in `dir` over the raw image `base`: the guest writes to the
/// overlay and the base stays as built, so each test gets a device of its own
/// without copying the whole disk.
pub fn overlay(base: &Path, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.qcow2"));
    let _ = fs::remove_file(&path);
    run_tool(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(base)
            .arg(&path),
    );
    path
}

/// Converts a qcow2 overlay (or any image QEMU reads) into a raw file, for
/// checking a device's disk offline with the standard tools.
pub fn to_raw(image: &Path, raw: &Path) {
    run_tool(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(image)
            .arg(raw),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_never_exceed_the_limit() {
        let peak = std::sync::Arc::new(Mutex::new((0usize, 0usize)));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let peak = std::sync::Arc::clone(&peak);
                std::thread::spawn(move || {
                    let _permit = VmPermit::acquire();
                    {
                        let mut p = peak.lock().expect("lock");
                        p.0 += 1;
                        p.1 = p.1.max(p.0);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    peak.lock().expect("lock").0 -= 1;
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let peak = peak.lock().expect("lock").1;
        assert!((1..=MAX_VMS).contains(&peak), "peak {peak}");
    }

    #[test]
    fn literals_are_escaped() {
        assert!(literal("[flaky] flaky run").is_match("x [flaky] flaky run"));
        assert!(!literal("a.b").is_match("axb"));
    }
}
