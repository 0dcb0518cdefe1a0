//! Documented device behaviours on a production image (no debug shell),
//! observed through the console:
//! - a static IPv4 address (`[network] ipv4`): the init configures the address
//!   and the default route instead of asking DHCP, containers see them and the
//!   recipe's DNS server, and traffic leaves through the gateway (a file
//!   fetched from a server on the host);
//! - a container whose health check starts failing is killed and restarted.

use std::fs;

use berth_tests::{
    boot, build_image, literal, write_esp_file, BootOptions, FileServer, BOOT_TIMEOUT,
};
use regex::Regex;

#[test]
fn a_static_address_replaces_dhcp_and_an_unhealthy_container_is_restarted() {
    let built = build_image("tests/recipes/device.toml");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join(built.file_name().unwrap());
    fs::copy(&built, &image).unwrap();
    let files = tempfile::tempdir().unwrap();
    let nonce = format!("static route {}", std::process::id());
    fs::write(files.path().join("hello.txt"), format!("{nonce}\n")).unwrap();
    let server = FileServer::start(files.path());
    write_esp_file(
        &image,
        "berth/provision.toml",
        &format!("[env]\nURL = \"{}\"\n", server.guest_url("hello.txt")),
    );
    let vm = boot(
        &image,
        BootOptions {
            direct: true,
            ..BootOptions::default()
        },
    );

    // The two containers' lines interleave: each probe line is waited for in
    // any order, the sick container's life in its own order.
    let mut probe: Vec<(Regex, Option<String>)> = [
        "berth-init: network: eth0 10.0.2.77/24 via 10.0.2.2",
        "[probe] addr:",
        "[probe] route:",
        "[probe] resolv:",
        &format!("[probe] fetched: {nonce}"),
    ]
    .iter()
    .map(|text| (literal(text), None))
    .collect();
    let sick = [
        literal("[sick] sick: serving"),
        literal("berth-init: container sick is healthy"),
        literal("[sick] sick: no longer serving"),
        literal("berth-init: container sick is unhealthy"),
        Regex::new(r"berth-init: container sick (killed by signal SIGKILL|exited with status 137)")
            .unwrap(),
        literal("berth-init: restarting container sick"),
        literal("[sick] sick: serving"),
    ];
    let mut next = 0;
    while next < sick.len() || probe.iter().any(|(_, line)| line.is_none()) {
        let open: Vec<usize> = (0..probe.len()).filter(|&i| probe[i].1.is_none()).collect();
        let mut patterns: Vec<&Regex> = open.iter().map(|&i| &probe[i].0).collect();
        if next < sick.len() {
            patterns.push(&sick[next]);
        }
        let (which, line) = vm.expect_any(&patterns, BOOT_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "{e}: the sick container at step {next}, waiting for {:?} (log: {})",
                patterns.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                vm.log().display()
            )
        });
        if which < open.len() {
            probe[open[which]].1 = Some(line);
        } else {
            next += 1;
        }
    }
    let seen = |i: usize| probe[i].1.clone().unwrap_or_default();
    assert!(seen(1).contains("inet 10.0.2.77/24"), "{}", seen(1));
    assert!(
        seen(2).contains("default via 10.0.2.2 dev eth0"),
        "{}",
        seen(2)
    );
    assert!(seen(3).ends_with("nameserver 10.0.2.3"), "{}", seen(3));
    let log = server.log();
    assert!(
        log.requests.iter().any(|r| r == "GET /hello.txt 200"),
        "{:?}",
        log.requests
    );
    // No DHCP client ran: it would have logged its lease.
    let console = fs::read_to_string(vm.log()).unwrap_or_default();
    assert!(
        !console.contains("dhcp: "),
        "a DHCP line on a device with a static address:\n{console}"
    );
}
