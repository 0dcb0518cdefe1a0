//! dm-verity end to end (full UEFI path): the verity image boots, and a byte
//! flipped inside root-a's file data (offline) is never run: the init refuses the
//! slot with a clear message and halts (a single-slot image has nothing to fall
//! back to), unless its boot entry is on trial: then it reboots, so the counter
//! runs down; or unless the other slot holds a release: then the init makes that
//! slot boot next and reboots into it.

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

/// Gives slot b of `image` the release in slot a, offline: root-a's bytes in
/// root-b, the kernel and initramfs under `berth/b/`, and a blessed entry for
/// b that ranks below a's (so a boots first).
fn same_release_in_slot_b(image: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let disk = berth_image::Image::open_writable(image).unwrap_or_else(|e| panic!("{e}"));
    let (a_start, a_len) = disk.partition_range("root-a").unwrap();
    let (b_start, b_len) = disk.partition_range("root-b").unwrap();
    assert_eq!(a_len, b_len);
    let a_uuid = disk.partition("root-a").unwrap().part_guid.clone();
    let b_uuid = disk.partition("root-b").unwrap().part_guid.clone();
    {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < a_len {
            let n = usize::try_from((a_len - done).min(buf.len() as u64)).unwrap();
            file.read_exact_at(&mut buf[..n], a_start + done).unwrap();
            file.write_all_at(&buf[..n], b_start + done).unwrap();
            done += n as u64;
        }
        file.sync_all().unwrap();
    }
    let esp = disk.esp().unwrap_or_else(|e| panic!("{e}"));
    esp.create_dir("berth/b").unwrap();
    for file in ["vmlinuz", "initramfs.img"] {
        let bytes = esp.read(&format!("berth/a/{file}")).unwrap();
        esp.write(&format!("berth/b/{file}"), &bytes).unwrap();
    }
    let a = String::from_utf8(esp.read("loader/entries/berth-a.conf").unwrap()).unwrap();
    let b: String = a
        .replace("/berth/a/", "/berth/b/")
        .replace("berth.slot=a", "berth.slot=b")
        .replace(&a_uuid, &b_uuid)
        .lines()
        .map(|line| {
            if line.starts_with("version ") {
                "version 0.0.1\n".to_string()
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_ne!(a, b);
    esp.write("loader/entries/berth-b.conf", b.as_bytes())
        .unwrap();
    esp.unmount().unwrap_or_else(|e| panic!("{e}"));
    let state = berth_tests::esp_state(image);
    assert_eq!(
        state.next_boot(),
        Some(berth_format::Slot::A),
        "{:?}",
        state.entries()
    );
    assert!(state
        .slot(berth_format::Slot::B)
        .is_some_and(|b| b.can_boot()));
}

/// A bad block in a slot that is blessed (it booted well before) while the
/// other slot holds a release: the init does not halt; it makes the other slot
/// boot next, records why on the ESP and reboots into it.
#[test]
fn a_refused_blessed_slot_falls_back_to_the_other_slot() {
    let built = build_image("recipes/hello.toml");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fallback.img");
    fs::copy(&built, &image).unwrap();
    same_release_in_slot_b(&image);
    flip_root_data_byte(&image);

    let vm = boot(&image, BootOptions::default());
    vm.expect(&literal("failed dm-verity verification"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.expect(
        &literal("slot b can boot: it boots next; rebooting into it"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    vm.expect(
        &literal("berth-init: last fallback: slot a refused, slot b boots next:"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    vm.expect(&literal("[hello] Hello from berth!"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
}
