//! The built image, checked with the standard tools a user would use: `sgdisk -v`
//! on the partition table, `fsck.fat -n` on the ESP, `unsquashfs -l` on root-a, and
//! `cpio -t` on the initramfs.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::process::{Command, Stdio};

use berth_tests::{build_image, extract_partition as extract, run_tool as run};
use regex::Regex;

#[test]
fn hello_image_passes_the_standard_tools() {
    let image = build_image("recipes/hello.toml");
    let dir = tempfile::tempdir().unwrap();

    let gpt = run(Command::new("sgdisk").arg("-v").arg(&image));
    assert!(gpt.contains("No problems found"), "{gpt}");
    let table = run(Command::new("sgdisk").arg("-p").arg(&image));
    for label in ["esp", "root-a", "root-b", "data"] {
        assert!(table.contains(label), "{label} missing:\n{table}");
    }

    let esp = dir.path().join("esp.img");
    extract(&image, "esp", &esp);
    // run_tool fails on a non-zero exit (fsck.fat's "errors found"); the
    // summary line says what it checked: `esp.img: 12 files, 3000/16000 clusters`.
    let fsck = run(Command::new("fsck.fat").arg("-n").arg(&esp));
    let summary = Regex::new(r"(?m)^\S+: (\d+) files, (\d+)/(\d+) clusters$").unwrap();
    let counts = summary
        .captures(&fsck)
        .unwrap_or_else(|| panic!("no summary line in fsck.fat's output:\n{fsck}"));
    let number = |i: usize| counts[i].parse::<u64>().unwrap();
    // The loader, its configuration, slot a's entry, kernel and initramfs at least.
    assert!(number(1) >= 5, "{fsck}");
    assert!(number(2) > 0 && number(2) <= number(3), "{fsck}");
    assert!(!fsck.contains("Expected a valid"), "{fsck}");

    let root = dir.path().join("root.img");
    extract(&image, "root-a", &root);
    let listing = run(Command::new("unsquashfs").args(["-lln"]).arg(&root));
    for path in [
        "squashfs-root/sbin/init",
        "squashfs-root/usr/bin/crun",
        "squashfs-root/lib64/ld-linux-x86-64.so.2",
        "squashfs-root/etc/berth/image.toml",
        "squashfs-root/usr/lib/berth/containers/hello/config.json",
        "squashfs-root/usr/lib/berth/containers/hello/rootfs/bin/busybox",
    ] {
        assert!(
            listing.contains(path),
            "{path} missing from root-a:\n{listing}"
        );
    }
    // Ownership is recorded, not taken from the (unprivileged) build.
    for line in listing.lines().filter(|l| l.contains("sbin/init")) {
        assert!(line.contains(" 0/0 "), "{line}");
    }

    // Nothing is in root-b yet.
    let rootb = dir.path().join("rootb.img");
    extract(&image, "root-b", &rootb);
    let mut head = vec![0u8; 1 << 20];
    File::open(&rootb).unwrap().read_exact(&mut head).unwrap();
    assert!(head.iter().all(|b| *b == 0), "root-b is not empty");

    // The data partition is ext4 labelled data.
    let data = dir.path().join("data.img");
    extract(&image, "data", &data);
    // Five passes without a problem (exit 0, checked by run_tool), then
    // `data.img: 11/8192 files (0.0% non-contiguous), 1234/32768 blocks`.
    let fsck = run(Command::new("fsck.ext4").args(["-n", "-f"]).arg(&data));
    for pass in 1..=5 {
        assert!(
            fsck.contains(&format!("Pass {pass}:")),
            "pass {pass}:\n{fsck}"
        );
    }
    let summary =
        Regex::new(r"(?m)^\S+: (\d+)/(\d+) files \([0-9.]+% non-contiguous\), (\d+)/(\d+) blocks$")
            .unwrap();
    let counts = summary
        .captures(&fsck)
        .unwrap_or_else(|| panic!("no summary line in fsck.ext4's output:\n{fsck}"));
    let number = |i: usize| counts[i].parse::<u64>().unwrap();
    assert!(number(1) >= 11 && number(1) <= number(2), "inodes: {fsck}");
    assert!(number(3) > 0 && number(3) <= number(4), "blocks: {fsck}");
    let label = run(Command::new("e2label").arg(&data));
    assert_eq!(label.trim(), "data");
}

#[test]
fn initramfs_holds_init_and_modules_in_order() {
    let image = build_image("recipes/hello.toml");
    let dir = tempfile::tempdir().unwrap();
    let boot = berth_qemu::direct::extract_direct_boot(&image, dir.path()).unwrap();
    assert!(boot.cmdline.contains("root=PARTUUID="), "{}", boot.cmdline);
    assert!(boot.cmdline.contains("berth.slot=a"), "{}", boot.cmdline);
    let raw = zstd::stream::decode_all(File::open(&boot.initrd).unwrap()).unwrap();
    let mut cpio = Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    cpio.stdin.take().unwrap().write_all(&raw).unwrap();
    let out = cpio.wait_with_output().unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    for path in ["init", "dev/console", "etc/berth/initramfs-modules"] {
        assert!(
            listing.lines().any(|l| l == path),
            "{path} missing:\n{listing}"
        );
    }
    assert!(listing.contains("squashfs.ko"), "{listing}");
    assert!(listing.contains("virtio_blk.ko"), "{listing}");

    // The module list loads dependencies first: virtio_ring before virtio_blk.
    let list = berth_tests::initramfs_module_list(&image);
    let pos = |name: &str| berth_tests::module_position(&list, name);
    assert!(pos("virtio_ring") < pos("virtio_blk"), "{list}");
    assert!(pos("virtio") < pos("virtio_pci"), "{list}");
}

#[test]
fn build_report_lists_inputs_and_outputs() {
    let image = build_image("recipes/hello.toml");
    let report = image.with_extension("json");
    let text = fs::read_to_string(&report).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let disk_sha = json["outputs"]["disk"]["sha256"].as_str().unwrap();
    let actual = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut File::open(&image).unwrap(), &mut h).unwrap();
        hex::encode(h.finalize())
    };
    assert_eq!(disk_sha, actual);
    let packages: Vec<&str> = json["inputs"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(packages.contains(&"busybox-static"), "{packages:?}");
    assert!(packages.contains(&"crun"), "{packages:?}");
    assert!(json["inputs"]["kernel"]["package"]["name"]
        .as_str()
        .unwrap()
        .starts_with("linux-image-6"));
    assert_eq!(json["partitions"].as_array().unwrap().len(), 4);
}
