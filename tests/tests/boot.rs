//! Issue 2's acceptance, end to end: build real images from recipes, boot them in
//! QEMU, read the serial console. Console logs: `target/e2e/logs/<test>.log`.

use std::time::{Duration, Instant};

use berth_qemu::PortForward;
use berth_tests::{boot, build_image, free_port, http_get, literal, BootOptions, BOOT_TIMEOUT};

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

#[test]
fn acpi_powerdown_stops_containers_and_powers_off() {
    let image = build_image("recipes/web.toml");
    let mut vm = boot(&image, BootOptions::default());
    vm.expect(&literal("berth-init: starting container"), BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    vm.powerdown()
        .unwrap_or_else(|err| panic!("QMP system_powerdown: {err}"));
    vm.expect(&literal("berth-init: stopping containers"), BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    vm.expect(&literal("berth-init: powering off"), BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    let status = vm
        .wait_exit(POWEROFF_TIMEOUT)
        .unwrap_or_else(|err| panic!("the guest did not power QEMU off: {err}"));
    assert!(
        status.success(),
        "QEMU exit status after poweroff: {status}"
    );
}
