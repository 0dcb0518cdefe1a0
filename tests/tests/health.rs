//! Health checks and boot assessment, end to end on the full UEFI path
//! (OVMF, systemd-boot's boot counting, the init on the ESP):
//! - a slot on trial whose critical container becomes healthy is blessed: its
//!   entry loses the counter and the update state on the data partition says good;
//! - a slot on trial whose critical container never becomes healthy reboots when
//!   `health_timeout` passes;
//! - a slot on trial whose (non-critical) container crashes a few seconds after
//!   each start is not blessed: it reboots at the deadline, its entry still
//!   counting;
//! - the slot that boots after the other one's counter ran out records that
//!   release as failed;
//! - `[debug] console_shell = true` gives a shell on the serial console.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::{
    boot, build_image, esp_entry_names, extract_partition, literal, read_esp_file,
    rename_esp_entry, run_tool, write_esp_file, BootOptions, BOOT_TIMEOUT,
};
use regex::Regex;

/// Copies a built image into `dir` (a test boots its own copy when it writes).
fn copy_image(built: &Path, dir: &Path) -> std::path::PathBuf {
    let image = dir.join(built.file_name().unwrap());
    fs::copy(built, &image).unwrap();
    image
}

#[test]
fn healthy_slot_on_trial_is_blessed_and_recorded_good() {
    let built = build_image("tests/recipes/health-good.toml");
    let dir = tempfile::tempdir().unwrap();
    let image = copy_image(&built, dir.path());
    assert_eq!(esp_entry_names(&image), ["berth-a.conf"]);
    rename_esp_entry(&image, "berth-a.conf", "berth-a+3.conf");

    let mut vm = boot(
        &image,
        BootOptions {
            persist: true,
            ..BootOptions::default()
        },
    );
    // systemd-boot counted this boot: two tries left.
    vm.expect(
        &literal("slot a (1.1.0) is on trial (2 tries left)"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // The critical http-checked web server, then the blessing; the worker's exec
    // check (not critical) passes too, before or after.
    let wanted = [
        literal("berth-init: container web is healthy"),
        literal("berth-init: slot a (1.1.0) is healthy: marked good"),
        literal("berth-init: container worker is healthy"),
    ];
    let mut seen = [false; 3];
    while !seen.iter().all(|&s| s) {
        let patterns: Vec<&Regex> = wanted.iter().collect();
        let (index, line) = vm
            .expect_any(&patterns, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        if index == 1 {
            assert!(
                seen[0],
                "blessed before the critical container was healthy: {line}"
            );
        }
        seen[index] = true;
    }
    vm.powerdown().unwrap_or_else(|e| panic!("{e}"));
    vm.expect(&literal("berth-init: powering off"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    drop(vm);

    // Offline: the entry is blessed, and the data partition says why.
    assert_eq!(esp_entry_names(&image), ["berth-a.conf"]);
    let state = update_state(&image, dir.path());
    assert!(state.contains("outcome = \"good\""), "{state}");
    assert!(state.contains("slot = \"a\""), "{state}");
    assert!(state.contains("version = \"1.1.0\""), "{state}");
}

/// The update state file of an image's data partition, read offline.
fn update_state(image: &Path, dir: &Path) -> String {
    let data = dir.join("data.img");
    extract_partition(image, "data", &data);
    run_tool(
        Command::new("debugfs")
            .arg("-R")
            .arg("cat /lib/berth/update/state.toml")
            .arg(&data),
    )
}

#[test]
fn old_slot_records_a_release_whose_counter_ran_out() {
    let built = build_image("tests/recipes/health-good.toml");
    let dir = tempfile::tempdir().unwrap();
    let image = copy_image(&built, dir.path());
    // Slot B as an update leaves it after three failed tries: no tries left, so
    // systemd-boot sorts it last and boots slot A (blessed) instead. Its kernel
    // line names slot A's kernel, which exists: an entry whose kernel is missing
    // would be skipped rather than sorted.
    let a = read_esp_file(&image, "loader/entries/berth-a.conf");
    let b: String = a
        .lines()
        .map(|line| match line.split_once(' ') {
            Some(("title", _)) => "title berth health-good 1.2.0".to_string(),
            Some(("version", _)) => "version 2\n# berth-image-version 1.2.0".to_string(),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    write_esp_file(&image, "loader/entries/berth-b+0-3.conf", &format!("{b}\n"));

    let mut vm = boot(
        &image,
        BootOptions {
            persist: true,
            ..BootOptions::default()
        },
    );
    vm.expect(
        &literal("berth-init: health-good 1.1.0 (slot a)"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    vm.expect(
        &literal("berth-init: boot counter ran out: slot b (1.2.0) never came up healthy"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    vm.expect(
        &literal("berth-init: container web is healthy"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    vm.powerdown().unwrap_or_else(|e| panic!("{e}"));
    vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    drop(vm);

    let state = update_state(&image, dir.path());
    assert!(state.contains("outcome = \"failed\""), "{state}");
    assert!(state.contains("slot = \"b\""), "{state}");
    assert!(state.contains("version = \"1.2.0\""), "{state}");
    assert!(state.contains("never came up healthy"), "{state}");
    // Slot A was blessed all along: nothing renamed.
    assert_eq!(
        esp_entry_names(&image),
        ["berth-a.conf", "berth-b+0-3.conf"]
    );
}

#[test]
fn unhealthy_slot_on_trial_reboots_after_the_deadline() {
    let built = build_image("tests/recipes/health-bad.toml");
    let dir = tempfile::tempdir().unwrap();
    let image = copy_image(&built, dir.path());
    rename_esp_entry(&image, "berth-a.conf", "berth-a+3.conf");

    let vm = boot(&image, BootOptions::default());
    let failed = Regex::new(
        r"berth-init: slot a \(1\.2\.0\) did not become healthy within 15 s: container web .+; rebooting \(2 tries left\)",
    )
    .unwrap();
    vm.expect(&failed, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.expect(&literal("berth-init: rebooting"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    // The machine starts over: the early stage of the next boot, now with one try
    // left.
    let early = Regex::new(r"berth-init: loaded \d+ modules, root").unwrap();
    vm.expect(&early, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.expect(
        &literal("slot a (1.2.0) is on trial (1 tries left)"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn crashing_container_keeps_the_slot_on_trial_without_critical_containers() {
    let built = build_image("tests/recipes/health-crash.toml");
    let dir = tempfile::tempdir().unwrap();
    let image = copy_image(&built, dir.path());
    rename_esp_entry(&image, "berth-a.conf", "berth-a+3.conf");

    let vm = boot(
        &image,
        BootOptions {
            persist: true,
            ..BootOptions::default()
        },
    );
    vm.expect(
        &literal("slot a (1.3.0) is on trial (2 tries left)"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Started, and restarted after its crash: still not blessed.
    vm.expect(&literal("[app] app crashing"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let blessed = literal("marked good");
    let failed = Regex::new(
        r"berth-init: slot a \(1\.3\.0\) did not become healthy within 15 s: container app .+; rebooting \(2 tries left\)",
    )
    .unwrap();
    let (index, line) = vm
        .expect_any(&[&blessed, &failed], BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(index, 1, "a crashing release was blessed: {line}");
    vm.expect(&literal("berth-init: rebooting"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    drop(vm);

    // Offline: the entry still counts (systemd-boot may have counted the next
    // boot already), and the data partition says why.
    let names = esp_entry_names(&image);
    let counting = Regex::new(r"^berth-a\+\d+-\d+\.conf$").unwrap();
    assert!(
        names.len() == 1 && counting.is_match(&names[0]),
        "the entry was blessed: {names:?}"
    );
    let state = update_state(&image, dir.path());
    assert!(state.contains("outcome = \"failed\""), "{state}");
    assert!(state.contains("container app"), "{state}");
}

#[test]
fn console_shell_runs_commands_typed_on_the_serial_console() {
    let image = build_image("tests/recipes/health-good.toml");
    let mut vm = boot(&image, BootOptions::default());
    vm.expect(
        &literal("berth-init: debug shell on the console (development image)"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    vm.expect(&literal("berth-init: system ready in"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    // The shell may not be reading yet: type again until it answers.
    let answer = literal("berth-42");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        vm.send_line("echo berth-$((6*7))")
            .unwrap_or_else(|e| panic!("typing on the console: {e}"));
        let next = Instant::now() + Duration::from_secs(10);
        if vm
            .poll_any(&[&answer], next.min(deadline))
            .unwrap_or_else(|e| panic!("{e}"))
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer from the console shell; last lines:\n{}",
            vm.tail().join("\n")
        );
    }
}
