//! dm-verity end to end (full UEFI path): the verity image boots, and a byte
//! flipped inside root-a's file data (offline) is never run: the init refuses the
//! slot with a clear message and halts (a single-slot image has nothing to fall
//! back to), unless its boot entry is on trial: then it reboots, so the counter
//! runs down.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};

use berth_tests::{boot, build_image, literal, BootOptions, BOOT_TIMEOUT};
use regex::Regex;

#[test]
fn verity_image_boots_and_verifies_its_root() {
    let image = build_image("recipes/hello.toml");
    let vm = boot(&image, BootOptions::default());
    let verified = Regex::new(r"berth-init: verified root \(\d+ blocks\)").unwrap();
    vm.expect(&verified, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.expect(&literal("[hello] Hello from berth!"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Flips one byte inside root-a's file data (1 MiB in, before the squashfs inode
/// table).
fn flip_root_data_byte(image: &std::path::Path) {
    let mut disk = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let (start, _) = berth_image::Image::open(image)
        .and_then(|image| image.partition_range("root-a"))
        .unwrap_or_else(|e| panic!("{e}"));
    // The squashfs superblock says where file data ends: its inode table follows
    // the data blocks. 1 MiB in is inside busybox's or crun's data.
    let mut superblock = [0u8; 96];
    disk.seek(SeekFrom::Start(start)).unwrap();
    disk.read_exact(&mut superblock).unwrap();
    assert_eq!(&superblock[0..4], b"hsqs", "root-a is not a squashfs");
    let inode_table = u64::from_le_bytes(superblock[64..72].try_into().unwrap());
    let offset = 1 << 20;
    assert!(offset < inode_table, "the flip must land in file data");
    let mut byte = [0u8; 1];
    disk.seek(SeekFrom::Start(start + offset)).unwrap();
    disk.read_exact(&mut byte).unwrap();
    disk.seek(SeekFrom::Start(start + offset)).unwrap();
    disk.write_all(&[byte[0] ^ 0x01]).unwrap();
    disk.sync_all().unwrap();
}

#[test]
fn flipped_byte_in_root_data_is_refused() {
    let built = build_image("recipes/hello.toml");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("corrupt.img");
    fs::copy(&built, &image).unwrap();
    flip_root_data_byte(&image);

    let vm = boot(&image, BootOptions::default());
    let refused = literal("failed dm-verity verification");
    let hello = literal("[hello] Hello from berth!");
    let (which, line) = vm
        .expect_any(&[&refused, &hello], BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(which, 0, "the corrupted image ran its container: {line}");
    assert!(line.contains("refusing to boot it"), "{line}");
    vm.expect(&literal("berth-init: system halted"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    // Halted means halted: the container never starts afterwards either.
    let later = vm.expect(&hello, std::time::Duration::from_secs(10));
    assert!(later.is_err(), "container started after the refusal");
}

/// A corrupt slot whose entry is on trial reboots instead of halting, so the boot
/// counter runs down (toward the other slot, when there is one).
#[test]
fn corrupt_slot_on_trial_reboots() {
    let built = build_image("recipes/hello.toml");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("corrupt-trial.img");
    fs::copy(&built, &image).unwrap();
    flip_root_data_byte(&image);
    berth_tests::rename_esp_entry(&image, "berth-a.conf", "berth-a+3.conf");

    let vm = boot(&image, BootOptions::default());
    vm.expect(&literal("failed dm-verity verification"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.expect(
        &literal("berth-init: the boot entry is on trial (2 tries left): rebooting"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // The next try: refused again, one try fewer.
    vm.expect(
        &literal("berth-init: the boot entry is on trial (1 tries left): rebooting"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
