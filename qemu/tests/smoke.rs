//! Real QEMU, no berth image: the accelerator probe, and OVMF on an empty disk read
//! through the console and ended through QMP. Needs qemu-system-x86 and ovmf.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_qemu::accel::{self, Accel};
use berth_qemu::{DiskWrites, RunOptions, RunOutcome, Vm, VmConfig, VmOptions};
use regex::Regex;

/// Generous: OVMF under TCG prints its first lines after a few seconds.
const FIRMWARE_TIMEOUT: Duration = Duration::from_secs(180);

fn empty_disk(dir: &Path) -> PathBuf {
    let image = dir.join("empty.img");
    fs::write(&image, vec![0u8; 1 << 20]).expect("write empty disk");
    image
}

fn firmware_line() -> Regex {
    // OVMF's boot manager names what it tries; with nothing bootable it ends in
    // its shell.
    Regex::new(r"BdsDxe|UEFI Interactive Shell|Shell>").expect("regex")
}

#[test]
fn accelerator_probe_answers() {
    let (accel, reason) = accel::probe(Path::new("qemu-system-x86_64")).expect("probe runs");
    eprintln!("probe: {accel} ({reason})");
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        assert_eq!(accel, Accel::Tcg, "{reason}");
    }
}

#[test]
fn firmware_boots_and_quits_over_qmp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = VmConfig::new(empty_disk(dir.path())).expect("config");
    config.writes = DiskWrites::Discard;
    config.memory_mib = 256;
    let log = dir.path().join("logs").join("firmware.log");
    let mut vm = Vm::start(
        &config,
        VmOptions {
            echo: None,
            log: Some(log.clone()),
            accel: Some(Accel::Tcg),
        },
    )
    .expect("start QEMU");
    let line = vm
        .expect(&firmware_line(), FIRMWARE_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        !line.contains('\x1b'),
        "escape sequences are stripped: {line:?}"
    );
    let status = vm.qmp("query-status", None).expect("query-status");
    assert_eq!(status["running"], true, "{status}");
    vm.quit().expect("QMP quit");
    let status = vm
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(status.success(), "QEMU exit status after quit: {status}");
    let logged = fs::read_to_string(&log).expect("console log");
    assert!(
        logged.starts_with("=== berth-qemu: qemu-system-x86_64 "),
        "{logged}"
    );
    assert!(logged.contains(&line), "{logged}");
}

#[test]
fn persistent_vars_are_made_next_to_the_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = VmConfig::new(empty_disk(dir.path())).expect("config");
    let mut vm = Vm::start(
        &config,
        VmOptions {
            accel: Some(Accel::Tcg),
            ..VmOptions::default()
        },
    )
    .expect("start QEMU");
    let vars = dir.path().join("empty.img.q35.vars.fd");
    assert!(vars.exists(), "{} missing", vars.display());
    vm.expect(&firmware_line(), FIRMWARE_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    vm.stop().expect("stop");
}

#[test]
fn dropping_a_vm_kills_qemu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = VmConfig::new(empty_disk(dir.path())).expect("config");
    config.writes = DiskWrites::Discard;
    let vm = Vm::start(
        &config,
        VmOptions {
            accel: Some(Accel::Tcg),
            ..VmOptions::default()
        },
    )
    .expect("start QEMU");
    let pid = vm.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(vm);
    // Killed and reaped: the pid is gone (or, rarely, reused by another process).
    let stat = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !stat.contains("qemu-system"),
        "QEMU {pid} survived the drop"
    );
}

#[test]
fn expect_reports_qemu_ending_early() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = VmConfig::new(empty_disk(dir.path())).expect("config");
    config.writes = DiskWrites::Discard;
    config.extra_args = vec!["-no-such-option".into()];
    let vm = Vm::start(
        &config,
        VmOptions {
            accel: Some(Accel::Tcg),
            ..VmOptions::default()
        },
    )
    .expect("start QEMU");
    let err = vm
        .expect(&firmware_line(), FIRMWARE_TIMEOUT)
        .expect_err("QEMU refuses the option");
    let text = err.to_string();
    assert!(text.contains("QEMU ended"), "{text}");
    assert!(
        text.contains("no-such-option"),
        "QEMU's stderr is shown: {text}"
    );
}

#[test]
fn run_exits_on_expect_and_on_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = empty_disk(dir.path());
    let mut opts = RunOptions::new(&image);
    opts.snapshot = true;
    opts.echo = false;
    opts.memory_mib = 256;
    opts.expect = Some(firmware_line());
    opts.timeout = Some(FIRMWARE_TIMEOUT);
    let outcome = berth_qemu::run(&opts).expect("run");
    assert!(matches!(outcome, RunOutcome::Matched { .. }), "{outcome:?}");
    assert_eq!(outcome.exit_code(), 0);

    opts.expect = Some(Regex::new("this line never comes").expect("regex"));
    opts.timeout = Some(Duration::from_secs(2));
    let outcome = berth_qemu::run(&opts).expect("run");
    assert!(
        matches!(outcome, RunOutcome::TimedOut { .. }),
        "{outcome:?}"
    );
    assert_eq!(outcome.exit_code(), 1);
}
