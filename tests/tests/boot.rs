//! Issue 2's acceptance, end to end: build real images from recipes, boot them in
//! QEMU, read the serial console. Console logs: `target/e2e/logs/<test>.log`.

use std::time::{Duration, Instant};

use berth_qemu::PortForward;
use berth_tests::{
    boot, build_image, free_port, http_get, literal, BootOptions, TestVm, BOOT_TIMEOUT,
};
use regex::Regex;

/// How long a guest may take to power itself off once asked.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn hello_prints_through_uefi_and_systemd_boot() {
    let image = build_image("recipes/hello.toml");
    let vm = boot(&image, BootOptions::default());
    vm.expect(&literal("Hello from berth!"), BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
}

#[test]
fn hello_prints_with_direct_kernel_boot() {
    let image = build_image("recipes/hello.toml");
    let vm = boot(
        &image,
        BootOptions {
            direct: true,
            ..BootOptions::default()
        },
    );
    vm.expect(&literal("Hello from berth!"), BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
}

/// A torn write or a bad block in the primary GPT: the kernel makes no
/// partitions of the disk (it reads the backup only with `gpt` on its command
/// line). The init's early stage rewrites the primary from the backup, has the
/// kernel read it again and boots; afterwards the disk's table is whole.
#[test]
fn a_damaged_primary_partition_table_is_rewritten_from_the_backup_at_boot() {
    use std::os::unix::fs::FileExt;
    let built = build_image("recipes/hello.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("hello.img");
    let copied = std::process::Command::new("cp")
        .args(["--sparse=always"])
        .arg(&built)
        .arg(&image)
        .status()
        .expect("cp");
    assert!(copied.success());
    // The primary header (LBA 1) reads as zeros, as after a torn write.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .and_then(|file| file.write_all_at(&[0u8; 512], 512))
        .expect("damaging the primary GPT header");
    let sgdisk = |image: &std::path::Path| {
        let out = std::process::Command::new("sgdisk")
            .arg("-v")
            .arg(image)
            .output()
            .expect("sgdisk -v");
        // It reports a damaged copy on stderr, and still "No problems found"
        // on stdout once it has read the backup.
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let damaged = sgdisk(&image);
    assert!(damaged.contains("Main header: ERROR"), "{damaged}");
    let mut vm = boot(
        &image,
        BootOptions {
            direct: true,
            persist: true,
            ..BootOptions::default()
        },
    );
    vm.expect(
        &literal("/dev/vda: the primary partition table was damaged; rewrote it from the backup"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|err| panic!("{err}"));
    vm.expect(&literal("Hello from berth!"), BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    vm.kill().expect("killing QEMU");
    let verdict = sgdisk(&image);
    assert!(
        verdict.contains("No problems found")
            && !verdict.contains("ERROR")
            && !verdict.contains("corrupt"),
        "{verdict}"
    );
}

#[test]
fn web_serves_its_page_on_a_forwarded_port() {
    let image = build_image("recipes/web.toml");
    let port = free_port();
    let vm = boot(
        &image,
        BootOptions {
            ports: vec![PortForward {
                host: port,
                guest: 80,
            }],
            ..BootOptions::default()
        },
    );
    // The recipe has no static address: the forwarded port reaches the guest only
    // if QEMU's DHCP server gave it 10.0.2.15.
    vm.expect(
        &literal("berth-init: dhcp: eth0 bound to 10.0.2.15/24 via 10.0.2.2"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let page = http_get(port, "/", Instant::now() + BOOT_TIMEOUT).unwrap_or_else(|err| {
        panic!(
            "{err}\nconsole log: {}\nlast console lines:\n{}",
            vm.log().display(),
            vm.tail().join("\n")
        )
    });
    assert!(
        page.contains("Welcome to berth"),
        "unexpected page:\n{page}"
    );
}

#[test]
fn failing_container_is_restarted() {
    let image = build_image("tests/recipes/restart.toml");
    let vm = boot(&image, BootOptions::default());
    let run = literal("[flaky] flaky run");
    vm.expect(&run, BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("first run: {err}"));
    vm.expect(
        &literal("berth-init: restarting container flaky"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|err| panic!("restart: {err}"));
    vm.expect(&run, BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("second run: {err}"));
}

/// The ACPI power button: the containers are asked to stop in reverse start
/// order, those that leave on TERM leave, the one that ignores it is killed
/// after the grace period, then the power goes off.
#[test]
fn acpi_powerdown_stops_containers_in_reverse_order_then_kills_and_powers_off() {
    let image = build_image("tests/recipes/shutdown.toml");
    let mut vm = boot(&image, BootOptions::default());
    let expect = |vm: &TestVm, pattern: &Regex| {
        vm.expect(pattern, BOOT_TIMEOUT)
            .unwrap_or_else(|err| panic!("{err} (log: {})", vm.log().display()))
    };
    // Started in order (each depends on the one before).
    for name in ["first", "second", "stubborn"] {
        expect(
            &vm,
            &literal(&format!("berth-init: container {name} started")),
        );
    }
    // Each is up (the TERM handlers installed), their lines in any order.
    let up = Regex::new(r"\[(first|second|stubborn)\] (first|second|stubborn): up$").unwrap();
    let mut ups = std::collections::BTreeSet::new();
    // A line printed before the last `started` line was read with it.
    for line in vm.tail() {
        if let Some(c) = up.captures(&line) {
            ups.insert(c[1].to_string());
        }
    }
    while ups.len() < 3 {
        let line = expect(&vm, &up);
        ups.insert(up.captures(&line).unwrap()[1].to_string());
    }
    vm.powerdown()
        .unwrap_or_else(|err| panic!("QMP system_powerdown: {err}"));
    expect(
        &vm,
        &literal("berth-init: stopping containers: TERM to stubborn, second, first"),
    );
    // Both TERM handlers ran and their containers ended by themselves, in
    // either order, before the grace period ran out.
    let left = Regex::new(r"\[(first|second)\] (first|second): got TERM|container (first|second) exited with status 0|still running after").unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let line = expect(&vm, &left);
        assert!(
            !line.contains("still running after"),
            "the grace period ended before first and second left: {seen:?}, then {line}"
        );
        seen.push(line);
    }
    let killing = expect(&vm, &literal("still running after 10 s:"));
    assert!(
        killing.ends_with("still running after 10 s: stubborn; killing"),
        "{killing}"
    );
    expect(
        &vm,
        &Regex::new(r"container stubborn (killed by signal SIGKILL|exited with status 137)")
            .unwrap(),
    );
    expect(&vm, &literal("berth-init: powering off"));
    let status = vm
        .wait_exit(POWEROFF_TIMEOUT)
        .unwrap_or_else(|err| panic!("the guest did not power QEMU off: {err}"));
    assert!(
        status.success(),
        "QEMU exit status after poweroff: {status}"
    );
}
