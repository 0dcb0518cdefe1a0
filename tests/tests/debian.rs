//! Containers from Debian packages, installed as Debian installs them, with the
//! user's own files: one image, one boot (tests/recipes/debian.toml).
//! - nginx from Debian's packages serves the recipe's own page with the
//!   recipe's own site configuration through a forwarded port; its workers run
//!   as base-passwd's www-data (nginx looks the name up as it starts); it is
//!   critical and its health check passes;
//! - a container runs by name as `mosquitto`, the system user mosquitto's
//!   postinst made: `id` shows it, a file the recipe put in its root is owned
//!   by it with the recipe's mode, and its open-file limit is berth's default.

use std::time::Instant;

use berth_qemu::PortForward;
use berth_tests::{boot, build_image, free_port, http_get, literal, BootOptions, BOOT_TIMEOUT};
use regex::Regex;

#[test]
fn nginx_and_a_maintainer_script_user_run_as_on_debian() {
    let image = build_image("tests/recipes/debian.toml");
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
    let fail = |err: String| -> ! {
        panic!(
            "{err}\nconsole log: {}\nlast console lines:\n{}",
            vm.log().display(),
            vm.tail().join("\n")
        )
    };
    let id = Regex::new(r"\[broker-user\] id: uid=\d+\(mosquitto\) gid=\d+\(mosquitto\)")
        .expect("regex");
    vm.expect(&id, BOOT_TIMEOUT)
        .unwrap_or_else(|e| fail(e.to_string()));
    vm.expect(
        &literal("[broker-user] nofile: 1048576 1048576"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| fail(e.to_string()));
    vm.expect(
        &literal("[broker-user] owner: mosquitto:mosquitto 640"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| fail(e.to_string()));
    vm.expect(
        &literal("berth-init: container web is healthy"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| fail(e.to_string()));
    let page = http_get(port, "/", Instant::now() + BOOT_TIMEOUT).unwrap_or_else(|e| fail(e));
    assert!(
        page.contains("Debian's nginx on berth"),
        "unexpected page:\n{page}"
    );
}
