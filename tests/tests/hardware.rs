//! Real x86_64 hardware: an image with Debian's generic kernel
//! (`linux-image-amd64`, tests/recipes/generic.toml) boots through OVMF and
//! systemd-boot with its disk on NVMe, on SATA (q35's AHCI controller) and on a
//! USB stick (xHCI), as QEMU presents each, finds its root and data partitions
//! there, and arms the i6300esb hardware watchdog. The default cloud kernel
//! has none of those disk drivers but virtio's.

use berth_qemu::DiskBus;
use berth_tests::{boot, build_image, literal, BootOptions, TestVm, BOOT_TIMEOUT};

const RECIPE: &str = "tests/recipes/generic.toml";

fn expect(vm: &TestVm, text: &str) -> String {
    vm.expect(&literal(text), BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"))
}

/// Boots the generic image with its disk on `bus`, which the guest names
/// `disk` (`/dev/nvme0n1`, `/dev/sda`).
fn boots_on(bus: DiskBus, disk: &str) {
    let image = build_image(RECIPE);
    let vm = boot(
        &image,
        BootOptions {
            disk_bus: bus,
            watchdog: true,
            ..BootOptions::default()
        },
    );
    let part = |n: u32| {
        if disk.ends_with(|c: char| c.is_ascii_digit()) {
            format!("{disk}p{n}")
        } else {
            format!("{disk}{n}")
        }
    };
    let found = expect(&vm, "berth-init: loaded ");
    assert!(
        found.contains(&format!("root {} found", part(2))),
        "{found}"
    );
    expect(&vm, "berth-init: generic 1.0.0 (slot a)");
    expect(
        &vm,
        &format!("berth-init: mounted data partition {} on /var", part(4)),
    );
    expect(&vm, &format!("berth-init: mounted ESP {} on /efi", part(1)));
    expect(&vm, "berth-init: watchdog /dev/watchdog armed");
    expect(&vm, "[hello] Hello from berth on the generic kernel");
}

#[test]
fn the_generic_kernel_boots_from_nvme() {
    boots_on(DiskBus::Nvme, "/dev/nvme0n1");
}

#[test]
fn the_generic_kernel_boots_from_sata() {
    boots_on(DiskBus::Sata, "/dev/sda");
}

#[test]
fn the_generic_kernel_boots_from_a_usb_stick() {
    boots_on(DiskBus::Usb, "/dev/sda");
}
