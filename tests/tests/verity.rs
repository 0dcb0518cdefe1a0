//! The root-a partition carries a dm-verity hash tree after the squashfs, and the
//! slot's boot entry its parameters: `veritysetup verify` (the standard tool)
//! accepts the partition with the root hash from the entry's command line, and
//! refuses it once a byte of a file's data is flipped. The initramfs carries the
//! modules the init needs to set verity up. An image built with `verity = false`
//! has no tree and no verity parameters, and boots with its root mounted as it is.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use berth_format::layout::VerityParams;
use berth_format::KernelCmdline;
use berth_tests::{
    boot as boot_vm, build_image, extract_partition, literal, run_tool, BootOptions, BOOT_TIMEOUT,
};

/// The verity parameters on the slot A entry's command line.
fn entry_verity(image: &Path, dir: &Path) -> (VerityParams, berth_qemu::DirectBoot) {
    let boot = berth_qemu::direct::extract_direct_boot(image, dir).unwrap();
    let cmdline = KernelCmdline::parse(&boot.cmdline);
    assert_eq!(cmdline.verity_error, None, "{}", boot.cmdline);
    let verity = cmdline
        .verity
        .unwrap_or_else(|| panic!("no berth.verity.* on the command line: {}", boot.cmdline));
    (verity, boot)
}

/// `veritysetup verify` of a slot (data and hash tree in the same file).
fn veritysetup_verify(slot: &Path, v: &VerityParams) -> std::process::Output {
    Command::new("veritysetup")
        .arg("verify")
        .arg("--no-superblock")
        .arg("--format=1")
        .arg("--hash=sha256")
        .arg(format!("--hash-offset={}", v.hash_offset))
        .arg(format!("--data-blocks={}", v.data_blocks))
        .arg(format!("--salt={}", v.salt))
        .arg(slot)
        .arg(slot)
        .arg(&v.root_hash)
        .output()
        .expect("veritysetup (cryptsetup-bin) is installed")
}

#[test]
fn veritysetup_accepts_root_a_and_refuses_a_flipped_byte() {
    let image = build_image("recipes/hello.toml");
    let dir = tempfile::tempdir().unwrap();
    let (verity, _) = entry_verity(&image, dir.path());
    assert_eq!(verity.salt.len(), 64, "a 32-byte salt: {verity:?}");
    assert_eq!(verity.hash_offset, verity.data_blocks * 4096);

    // The build report records the same parameters.
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(image.with_extension("json")).unwrap()).unwrap();
    let reported = &report["outputs"]["root"]["verity"];
    assert_eq!(reported["root_hash"], verity.root_hash.as_str());
    assert_eq!(reported["salt"], verity.salt.as_str());
    assert_eq!(reported["data_blocks"], verity.data_blocks);
    assert_eq!(reported["hash_offset"], verity.hash_offset);

    let slot = dir.path().join("root-a.img");
    extract_partition(&image, "root-a", &slot);
    let ok = veritysetup_verify(&slot, &verity);
    assert!(
        ok.status.success(),
        "veritysetup verify refused root-a:\n{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    // The squashfs is still readable as it is, tree and all.
    let listing = run_tool(Command::new("unsquashfs").arg("-l").arg(&slot));
    assert!(listing.contains("squashfs-root/sbin/init"), "{listing}");

    // Flip one bit in the middle of the squashfs's data area, which holds
    // nothing but the files' (compressed) data blocks and fragments.
    let flip_at = find_file_data(&slot, verity.data_blocks * 4096);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slot)
        .unwrap();
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(flip_at)).unwrap();
    file.read_exact(&mut byte).unwrap();
    byte[0] ^= 0x01;
    file.seek(SeekFrom::Start(flip_at)).unwrap();
    file.write_all(&byte).unwrap();
    drop(file);
    let bad = veritysetup_verify(&slot, &verity);
    assert!(
        !bad.status.success(),
        "veritysetup verify accepted root-a with byte {flip_at} flipped"
    );
    let text = String::from_utf8_lossy(&bad.stderr);
    assert!(
        text.contains("corrupted") || text.contains("Verification failed"),
        "{text}"
    );
}

/// An offset inside file data: the middle of the squashfs's data area, between
/// the superblock and the inode table (squashfs writes the tables after the
/// files' data blocks and fragments).
fn find_file_data(slot: &Path, limit: u64) -> u64 {
    let mut superblock = [0u8; 96];
    File::open(slot)
        .unwrap()
        .read_exact(&mut superblock)
        .unwrap();
    assert_eq!(
        &superblock[..4],
        b"hsqs",
        "root-a does not start with a squashfs"
    );
    let inode_table = u64::from_le_bytes(superblock[64..72].try_into().unwrap());
    assert!(inode_table > 4096 && inode_table < limit, "{inode_table}");
    inode_table / 2
}

#[test]
fn initramfs_holds_the_verity_modules_in_order() {
    let image = build_image("recipes/hello.toml");
    let list = berth_tests::initramfs_module_list(&image);
    let pos = |name: &str| berth_tests::module_position(&list, name);
    for dep in ["dm-mod", "dm-bufio", "reed_solomon"] {
        assert!(pos(dep) < pos("dm-verity"), "{list}");
    }
}

#[test]
fn verity_false_leaves_the_tree_out() {
    let image = build_image("tests/recipes/no-verity.toml");
    let dir = tempfile::tempdir().unwrap();
    let boot = berth_qemu::direct::extract_direct_boot(&image, dir.path()).unwrap();
    let cmdline = KernelCmdline::parse(&boot.cmdline);
    assert!(
        cmdline.verity.is_none() && cmdline.verity_error.is_none(),
        "{}",
        boot.cmdline
    );
    assert!(!boot.cmdline.contains("berth.verity"), "{}", boot.cmdline);

    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(image.with_extension("json")).unwrap()).unwrap();
    assert!(report["outputs"]["root"]["verity"].is_null(), "{report}");
    // root-a holds the squashfs as written (backhand pads it to 4 KiB): no tree.
    let slot = dir.path().join("root-a.img");
    extract_partition(&image, "root-a", &slot);
    let mut superblock = [0u8; 96];
    File::open(&slot)
        .unwrap()
        .read_exact(&mut superblock)
        .unwrap();
    let bytes_used = u64::from_le_bytes(superblock[40..48].try_into().unwrap());
    let size = report["outputs"]["root"]["size"].as_u64().unwrap();
    assert!(
        size >= bytes_used && size - bytes_used <= 4096,
        "root {size} bytes, squashfs {bytes_used}"
    );

    let raw = zstd::stream::decode_all(File::open(&boot.initrd).unwrap()).unwrap();
    assert!(
        !raw.windows(12).any(|w| w == b"dm-verity.ko"),
        "dm-verity.ko in the initramfs of an image without verity"
    );

    // And it boots: the root partition mounted as it is, its container run.
    let vm = boot_vm(
        &image,
        BootOptions {
            direct: true,
            ..BootOptions::default()
        },
    );
    for line in [
        "no berth.verity.* on the command line: mounting",
        "[hello] Hello from an unverified root",
    ] {
        vm.expect(&literal(line), BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e} (log: {})", vm.log().display()));
    }
}
