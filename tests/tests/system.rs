//! A production PID 1, end to end (direct kernel boot: the UEFI path is not the
//! point here):
//! - DHCP on the wired interface, the DNS servers in every host-network
//!   container's /etc/resolv.conf, and a file fetched over HTTP from a server on
//!   the host (10.0.2.2) from inside a container;
//! - `network = "none"`: only loopback; the device's host name in containers;
//! - start order by `depends_on`;
//! - a container over its memory limit is OOM-killed, logged and restarted,
//!   and the init stays up;
//! - a named volume and a writable root survive a reboot; the data partition of
//!   a disk image enlarged before the first boot is grown with its file system;
//! - a provisioning file on the ESP sets the host name containers see, adds to
//!   their environment (over the recipe's value) and sets a DNS server: a
//!   small DNS server in the test resolves a made-up name that a container
//!   fetches a file from;
//! - SNTP: the provisioned server (a small one in the test, answering 2031)
//!   sets the clock containers see;
//! - two NICs: both get a DHCP lease;
//! - logs: stamped, rotated at the recipe's cap, kept across reboots, with the
//!   kernel's ring buffer; the watchdog is armed and stopped on poweroff.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_tests::{
    boot, build_image, expect_all, extract_partition, literal, run_tool, write_esp_file,
    BootOptions, DnsServer, FileServer, SntpServer, TestVm, BOOT_TIMEOUT,
};
use regex::Regex;

const RECIPE: &str = "tests/recipes/system.toml";

fn expect(vm: &TestVm, text: &str) -> String {
    vm.expect(&literal(text), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e} (log: {})", vm.log().display()))
}

/// Types `command` into the debug shell and returns its exit code. A line typed
/// while the console is flooded (the kernel's OOM reports) was seen to get lost:
/// it is typed again after a minute without an answer.
fn shell(vm: &mut TestVm, command: &str) -> i32 {
    let re = Regex::new(r"@@rc=\d+").expect("regex");
    for _ in 0..5 {
        vm.send_line(&format!("{command}; echo @@rc\"\"=$?"))
            .unwrap_or_else(|err| panic!("typing into the console: {err}"));
        let Ok(line) = vm.expect(&re, Duration::from_secs(60)) else {
            continue;
        };
        return line
            .rsplit('=')
            .next()
            .and_then(|code| code.trim().parse().ok())
            .unwrap_or_else(|| panic!("no exit code in {line:?}"));
    }
    panic!(
        "the shell did not answer {command:?} (log: {})",
        vm.log().display()
    );
}

fn direct(persist: bool) -> BootOptions {
    BootOptions {
        direct: true,
        persist,
        ..BootOptions::default()
    }
}

fn power_off(mut vm: TestVm) {
    vm.powerdown().unwrap_or_else(|e| panic!("{e}"));
    // The watchdog is disarmed (magic close) before the poweroff.
    expect(&vm, "berth-init: watchdog stopped");
    expect(&vm, "berth-init: powering off");
    vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn network_dns_limits_and_isolation() {
    let image = build_image(RECIPE);
    let files = tempfile::tempdir().unwrap();
    fs::write(files.path().join("hello.txt"), "hello from the host\n").unwrap();
    let server = FileServer::start(files.path());

    let mut vm = boot(&image, direct(false));
    expect(
        &vm,
        "berth-init: dhcp: eth0 bound to 10.0.2.15/24 via 10.0.2.2",
    );
    expect(&vm, "berth-init: debug shell on the console");
    expect(&vm, "berth-init: watchdog /dev/watchdog armed");
    // depends_on: db starts before web although web comes first in the recipe.
    expect(&vm, "berth-init: starting container db");
    expect(&vm, "berth-init: starting container web");
    expect(&vm, "[db] db: 1 boots, hostname system");
    // Without provisioning, the recipe's environment.
    expect(&vm, "[db] db: site recipe");
    // Only loopback in a container with network = "none".
    assert_eq!(
        shell(
            &mut vm,
            "test \"$(crun exec isolated /bin/busybox ls /sys/class/net </dev/null)\" = lo"
        ),
        0
    );

    // The lease's DNS server is in the container's resolv.conf.
    assert_eq!(
        shell(
            &mut vm,
            "crun exec web /bin/busybox grep -q 'nameserver 10.0.2.3' /etc/resolv.conf </dev/null"
        ),
        0
    );
    // HTTP from inside a container to the host: routing through the DHCP gateway.
    let url = server.guest_url("hello.txt");
    assert_eq!(
        shell(
            &mut vm,
            &format!(
                "test \"$(crun exec web /bin/busybox wget -q -O - {url} </dev/null)\" = 'hello from the host'"
            )
        ),
        0
    );
    // The limits reached the cgroup.
    assert_eq!(
        shell(
            &mut vm,
            "grep -qx 67108864 /sys/fs/cgroup/berth/web/ctr/memory.max"
        ),
        0
    );
    assert_eq!(
        shell(
            &mut vm,
            "grep -qx '50000 100000' /sys/fs/cgroup/berth/web/ctr/cpu.max"
        ),
        0
    );
    assert_eq!(
        shell(
            &mut vm,
            "grep -qx 100 /sys/fs/cgroup/berth/web/ctr/pids.max"
        ),
        0
    );
    // The data partition is mounted nosuid,nodev (and so are the volumes bound
    // from it).
    assert_eq!(
        shell(
            &mut vm,
            "grep -Eq '^[^ ]+ /var ext4 [^ ]*nosuid,nodev' /proc/mounts"
        ),
        0
    );
    // Seccomp and capabilities: a confined container cannot mount.
    assert_ne!(
        shell(
            &mut vm,
            "crun exec web /bin/busybox mount -t tmpfs none /tmp </dev/null"
        ),
        0
    );

    // The memory hog: killed by the OOM killer, logged, restarted.
    expect(&vm, "[hog] hog: eating");
    expect(
        &vm,
        "berth-init: container hog was killed by the kernel's OOM killer",
    );
    expect(&vm, "berth-init: restarting container hog in");
    expect(&vm, "[hog] hog: eating");
    // The init is still there.
    assert_eq!(shell(&mut vm, "kill -0 1"), 0);

    // Logs: stamped lines, rotation at the recipe's cap (8K, 3 kept), the
    // kernel's (its boot lines are rotated out by then; the OOM reports, no
    // longer on the console, are there).
    assert_eq!(
        shell(
            &mut vm,
            "test -e /var/log/berth/chatty.log.2 && test ! -e /var/log/berth/chatty.log.4"
        ),
        0
    );
    assert_eq!(
        shell(
            &mut vm,
            "test $(wc -c < /var/log/berth/chatty.log.1) -le 8300"
        ),
        0
    );
    assert_eq!(
        shell(
            &mut vm,
            "grep -q '^20[0-9-]*T[0-9:.]*Z chatty: line 299 of' /var/log/berth/chatty.log"
        ),
        0
    );
    assert_eq!(
        shell(
            &mut vm,
            "grep -q 'Z berth-init: starting container db$' /var/log/berth/init.log*"
        ),
        0
    );
    assert_eq!(
        shell(
            &mut vm,
            "grep -q 'Z \\[ *[0-9]*\\.[0-9]*\\] Memory cgroup out of memory: Killed process' /var/log/berth/kernel.log*"
        ),
        0
    );
    power_off(vm);
}

/// The made-up name the test's DNS server answers (with the host, 10.0.2.2).
const FILES_NAME: &str = "files.berth.test";
/// What the test's SNTP server says the time is: 2031-01-01T00:00:00Z.
const SNTP_TIME: u64 = 1_924_992_000;

#[test]
fn provisioning_dns_by_name_volumes_and_two_nics_across_reboots() {
    let built = build_image(RECIPE);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join(built.file_name().unwrap());
    fs::copy(&built, &image).unwrap();
    let before = data_partition_bytes(&image);
    // A provisioning file on the ESP: valid fields and an unknown one. The DNS
    // server is the host (10.0.2.2:53 in the guest is 127.0.0.1:53 here).
    write_esp_file(
        &image,
        "berth/provision.toml",
        "hostname = \"edge-17\"\ncolor = \"blue\"\n\
         [network]\ndns = [\"10.0.2.2\"]\n\
         [env]\nSITE = \"north\"\nZONE = \"z1\"\n\
         [time]\nntp = [\"10.0.2.2\"]\n",
    );
    let files = tempfile::tempdir().unwrap();
    fs::write(files.path().join("hello.txt"), "hello by name\n").unwrap();
    let server = FileServer::start(files.path());
    let _dns = DnsServer::start(53, &[(FILES_NAME, Ipv4Addr::new(10, 0, 2, 2))]);
    let _sntp = SntpServer::start(123, SNTP_TIME);
    run_tool(
        Command::new("qemu-img")
            .args(["resize", "-q", "-f", "raw"])
            .arg(&image)
            .arg("+256M"),
    );

    // QEMU's i6300esb too (the cloud kernel has no driver for it: the
    // recipe's softdog is the /dev/watchdog the init pets).
    let mut vm = boot(
        &image,
        BootOptions {
            watchdog: true,
            ..direct(true)
        },
    );
    let grown = expect(&vm, "berth-init: data partition /dev/vda");
    assert!(grown.contains("grown from"), "{grown}");
    expect(&vm, "berth-init: data file system grown online from");
    expect(
        &vm,
        "berth-init: provisioning /efi/berth/provision.toml: color is not a setting",
    );
    expect(
        &vm,
        "berth-init: provisioning from /efi/berth/provision.toml applied",
    );
    expect(
        &vm,
        "berth-init: container db: provisioned SITE overrides the image's value",
    );
    // The SNTP thread's line comes in no fixed order with the containers'.
    expect_all(
        &vm,
        &[
            "berth-init: sntp: clock stepped by",
            "[db] db: 1 boots, hostname edge-17",
            "[db] db: site north",
            "[db] db: root is writable",
        ],
    );
    // A provisioned variable the recipe does not have is added, and `crun
    // exec` sees it too.
    assert_eq!(
        shell(
            &mut vm,
            "crun exec web /bin/busybox env </dev/null | grep -qx ZONE=z1"
        ),
        0
    );
    // DNS by name: the provisioned server, asked through the container's
    // resolv.conf by its C library, answers the made-up name.
    assert_eq!(
        shell(
            &mut vm,
            "crun exec web /bin/busybox grep -qx 'nameserver 10.0.2.2' /etc/resolv.conf </dev/null"
        ),
        0
    );
    let url = format!("http://{FILES_NAME}:{}/hello.txt", server.port);
    assert_eq!(
        shell(
            &mut vm,
            &format!(
                "test \"$(crun exec web /bin/busybox wget -q -O - {url} </dev/null)\" = 'hello by name'"
            )
        ),
        0
    );
    // SNTP: the containers see the server's 2031.
    assert_eq!(
        shell(
            &mut vm,
            "test \"$(crun exec web /bin/busybox date -u +%Y </dev/null)\" = 2031"
        ),
        0
    );
    power_off(vm);

    // Two NICs, each on its own user-mode network: both get a lease.
    let mut vm = boot(
        &image,
        BootOptions {
            extra_nics: 1,
            ..direct(true)
        },
    );
    // In any order: a late lease comes after the containers started.
    expect_all(
        &vm,
        &[
            "berth-init: dhcp: eth0 bound to 10.0.2.15/24",
            "berth-init: dhcp: eth1 bound to 10.0.2.15/24",
            "[db] db: 2 boots, hostname edge-17",
        ],
    );
    expect(&vm, "[db] db: root file kept");
    // The first boot's log lines are still on the data partition.
    assert_eq!(
        shell(
            &mut vm,
            "test $(cat /var/log/berth/init.log* | grep -c 'berth-init: system 1.0.0 (slot') -ge 2"
        ),
        0
    );
    power_off(vm);

    // Offline: the partition and its file system fill the enlarged disk.
    let after = data_partition_bytes(&image);
    assert!(
        after >= before + 250 * 1024 * 1024,
        "data partition {before} -> {after} bytes"
    );
    let data = dir.path().join("data.ext4");
    extract_partition(&image, "data", &data);
    let header = run_tool(Command::new("dumpe2fs").arg("-h").arg(&data));
    let field = |name: &str| -> u64 {
        header
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {header}"))
    };
    let fs_bytes = field("Block count:") * field("Block size:");
    assert!(
        fs_bytes + 2 * 1024 * 1024 >= after && fs_bytes <= after,
        "file system {fs_bytes} bytes on a partition of {after}"
    );
}

fn data_partition_bytes(image: &Path) -> u64 {
    berth_image::Image::open(image)
        .and_then(|image| image.partition_range("data"))
        .map(|(_, len)| len)
        .unwrap_or_else(|e| panic!("{e}"))
}
