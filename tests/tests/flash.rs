//! Issue 16, points 1 and 2: the block map next to every image, read by
//! Debian's `bmaptool`, and `berth flash` onto a file and onto a loop device,
//! which then boots with its provisioning file; every refusal leaves the
//! target's bytes as they were. One VM boot in all.
//!
//! The image is `tests/recipes/flash.toml`: hello, saying its host name.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_tests::{binaries, boot, build_image, literal, BootOptions, BOOT_TIMEOUT};
use serde_json::Value;
use sha2::{Digest, Sha256};

const RECIPE: &str = "tests/recipes/flash.toml";

fn berth(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(&binaries().berth)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running berth: {err}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `berth flash IMAGE TARGET [EXTRA] --json`: succeeded, one JSON document.
fn flash_json(image: &Path, target: &Path, extra: &[&str]) -> (Value, String) {
    let mut args = vec![
        "flash".as_ref(),
        image.as_os_str(),
        target.as_os_str(),
        "--json".as_ref(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    let output = berth(&args);
    assert!(
        output.status.success(),
        "berth flash failed ({}):\n{}",
        output.status,
        text(&output)
    );
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("not one JSON document ({err}):\n{}", text(&output)));
    (json, String::from_utf8_lossy(&output.stderr).into_owned())
}

fn sha256_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// The first and last MiB of a (possibly huge) device or file; for a device
/// this process may not read (the host's own disk in a sandbox), what stops it.
fn ends_sha256(path: &Path) -> String {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "{} cannot be read here ({e}): its bytes are not compared",
                path.display()
            );
            return format!("unreadable: {e}");
        }
        Err(e) => panic!("{}: {e}", path.display()),
    };
    let size = file.seek(SeekFrom::End(0)).unwrap();
    let mut hasher = Sha256::new();
    for offset in [0, size.saturating_sub(1 << 20)] {
        let mut buf = vec![0u8; usize::try_from(size.min(1 << 20)).unwrap()];
        file.read_exact_at(&mut buf, offset).unwrap();
        hasher.update(&buf);
    }
    hex::encode(hasher.finalize())
}

/// The mapped ranges of a bmap, in blocks: `(first, last)`.
fn bmap_ranges(bmap: &Path) -> Vec<(u64, u64)> {
    let text = fs::read_to_string(bmap).unwrap();
    let re =
        regex::Regex::new(r#"<Range chksum="[0-9a-f]{64}"> (\d+)(?:-(\d+))? </Range>"#).unwrap();
    re.captures_iter(&text)
        .map(|c| {
            let first: u64 = c[1].parse().unwrap();
            let last = c.get(2).map_or(first, |m| m.as_str().parse().unwrap());
            (first, last)
        })
        .collect()
}

/// A loop device over a file, detached when dropped.
struct Loop {
    device: PathBuf,
}

impl Loop {
    /// `losetup -f --show [-P] FILE`, or `None` with the reason printed when this
    /// host has no loop devices to give (a container without /dev/loop*).
    fn attach(file: &Path, partitions: bool) -> Option<Loop> {
        let mut cmd = Command::new("losetup");
        cmd.args(["-f", "--show"]);
        if partitions {
            cmd.arg("-P");
        }
        let output = match cmd.arg(file).output() {
            Ok(output) => output,
            Err(err) => {
                eprintln!("SKIPPED: cannot run losetup: {err}");
                return None;
            }
        };
        if !output.status.success() {
            eprintln!(
                "SKIPPED: no loop device here: losetup -f --show: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return None;
        }
        let device = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        Some(Loop { device })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// A mount, unmounted when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn bmaptool_copies_the_image_with_berths_block_map() {
    let image = build_image(RECIPE);
    let bmap = image.with_extension("bmap");
    assert!(bmap.is_file(), "no {}", bmap.display());
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.img");
    let output = Command::new("bmaptool")
        .arg("copy")
        .arg(&image)
        .arg("--bmap")
        .arg(&bmap)
        .arg(&copy)
        .output()
        .unwrap_or_else(|err| {
            panic!("running bmaptool (scripts/install-deps installs bmap-tools): {err}")
        });
    assert!(
        output.status.success(),
        "bmaptool copy failed:\n{}",
        text(&output)
    );
    // bmaptool checked every range's sha256 and the file's own checksum.
    let said = text(&output);
    assert!(!said.contains("checksum mismatch"), "{said}");
    assert_eq!(sha256_file(&copy), sha256_file(&image));
    // The map is the image's data: less than the whole image, more than nothing.
    let ranges = bmap_ranges(&bmap);
    let mapped: u64 = ranges.iter().map(|(a, b)| (b - a + 1) * 4096).sum();
    let size = fs::metadata(&image).unwrap().len();
    assert!(
        mapped > 4 << 20 && mapped < size / 2,
        "{mapped} of {size} bytes mapped"
    );
}

#[test]
fn flash_onto_a_file_writes_the_mapped_blocks_and_says_so_in_json() {
    let image = build_image(RECIPE);
    let bmap = image.with_extension("bmap");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    // An old, bigger file: it becomes the image, holes and all.
    fs::write(&target, vec![0xa5u8; 8 << 20]).unwrap();
    let (json, _) = flash_json(&image, &target, &[]);
    let size = fs::metadata(&image).unwrap().len();
    assert_eq!(sha256_file(&target), sha256_file(&image));
    assert_eq!(json["image"], image.to_str().unwrap(), "{json:#}");
    assert_eq!(json["image_size"], size, "{json:#}");
    assert_eq!(json["bmap"]["path"], bmap.to_str().unwrap(), "{json:#}");
    assert_eq!(json["bmap"]["sha256"], sha256_file(&bmap), "{json:#}");
    assert_eq!(json["bmap"]["size"], fs::metadata(&bmap).unwrap().len());
    assert_eq!(json["target"]["kind"], "file", "{json:#}");
    assert_eq!(json["target"]["size"], size, "{json:#}");
    let ranges = bmap_ranges(&bmap);
    let mapped: u64 = ranges.iter().map(|(a, b)| (b - a + 1) * 4096).sum();
    assert_eq!(json["mapped_bytes"], mapped, "{json:#}");
    assert_eq!(json["written_bytes"], mapped, "{json:#}");
    assert_eq!(json["verified_bytes"], mapped, "{json:#}");
    assert_eq!(json["ranges"], ranges.len(), "{json:#}");
    assert!(json["provision"].is_null(), "{json:#}");
    for field in [
        "write_seconds",
        "verify_seconds",
        "write_mb_per_s",
        "seconds",
    ] {
        assert!(json[field].is_f64(), "{field}: {json:#}");
    }
    // Holes stay holes: the file holds about what was written.
    let allocated = fs::metadata(&target).unwrap().blocks() * 512;
    assert!(
        allocated < mapped + (8 << 20),
        "{allocated} bytes allocated for {mapped} mapped"
    );

    // Without a block map next to the image, berth maps the holes itself.
    let lone = dir.path().join("lone.img");
    assert!(Command::new("cp")
        .args(["--sparse=always"])
        .arg(&image)
        .arg(&lone)
        .status()
        .unwrap()
        .success());
    let target2 = dir.path().join("disk2.img");
    let (json, stderr) = flash_json(&lone, &target2, &[]);
    assert!(json["bmap"].is_null(), "{json:#}");
    assert!(stderr.contains("no block map next to"), "{stderr}");
    assert_eq!(sha256_file(&target2), sha256_file(&image));
}

#[test]
fn flash_onto_a_loop_device_boots_with_its_provisioning() {
    let image = build_image(RECIPE);
    let size = fs::metadata(&image).unwrap().len();
    let dir = tempfile::tempdir().unwrap();
    // A used disk: every byte something else, so an unmapped block that
    // mattered would show.
    let backing = dir.path().join("device.img");
    let junk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 ^ 0x5a).collect();
    let file = File::create(&backing).unwrap();
    let mut at = 0;
    while at < size + (16 << 20) {
        file.write_all_at(&junk, at).unwrap();
        at += junk.len() as u64;
    }
    drop(file);
    let Some(device) = Loop::attach(&backing, false) else {
        return;
    };
    let provision = dir.path().join("provision.toml");
    fs::write(&provision, "hostname = \"edge-flash-7\"\n").unwrap();
    let (json, stderr) = flash_json(
        &image,
        &device.device,
        &["--provision", provision.to_str().unwrap()],
    );
    assert_eq!(json["target"]["kind"], "block device", "{json:#}");
    assert_eq!(json["target"]["size"], size + (16 << 20), "{json:#}");
    assert_eq!(
        json["provision"]["sha256"],
        sha256_file(&provision),
        "{json:#}"
    );
    assert!(stderr.contains("MB/s"), "{stderr}");
    // Every mapped range outside the ESP (which the provisioning file changed)
    // is the image's.
    let esp = 1 << 20..(1 << 20) + esp_size(&image);
    let (img, dev) = (
        File::open(&image).unwrap(),
        File::open(&device.device).unwrap(),
    );
    for (first, last) in bmap_ranges(&image.with_extension("bmap")) {
        let (start, len) = (first * 4096, (last - first + 1) * 4096);
        if esp.contains(&start) {
            continue;
        }
        let len = usize::try_from(len).unwrap();
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        img.read_exact_at(&mut a, start).unwrap();
        dev.read_exact_at(&mut b, start).unwrap();
        assert!(
            a == b,
            "blocks {first}-{last} differ on {}",
            device.device.display()
        );
    }
    drop((img, dev));

    // The flashed disk boots through its own firmware path and boot loader,
    // and the init applies the provisioning file from its ESP.
    let vm = boot(&device.device, BootOptions::default());
    vm.expect(
        &literal("berth-init: provisioning from /efi/berth/provision.toml applied"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|err| panic!("{err}"));
    vm.expect(&literal("Hello from berth on edge-flash-7!"), BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
}

/// The ESP's size, from the build report next to the image.
fn esp_size(image: &Path) -> u64 {
    let report: Value =
        serde_json::from_str(&fs::read_to_string(image.with_extension("json")).unwrap()).unwrap();
    report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "esp")
        .and_then(|p| p["size"].as_u64())
        .expect("the esp in the report")
}

/// `berth flash IMAGE TARGET [EXTRA]` is refused: exit 3, `expected` in the
/// message, nothing on stdout, and `hash` of the target the same after.
fn refused(image: &Path, target: &Path, extra: &[&str], expected: &str, hash: &dyn Fn() -> String) {
    let before = hash();
    let mut args = vec![
        "flash".as_ref(),
        image.as_os_str(),
        target.as_os_str(),
        "--json".as_ref(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    let output = berth(&args);
    let said = text(&output);
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}: {said}",
        target.display()
    );
    assert!(
        said.contains(expected),
        "{}: wanted {expected:?}:\n{said}",
        target.display()
    );
    assert!(said.contains("nothing was written"), "{said}");
    assert!(output.stdout.is_empty(), "{said}");
    assert_eq!(hash(), before, "{} changed", target.display());
}

#[test]
fn every_refusal_leaves_the_target_as_it_was() {
    let image = build_image(RECIPE);
    let size = fs::metadata(&image).unwrap().len();
    let dir = tempfile::tempdir().unwrap();
    let none = || String::new();

    // Not a block device or a regular file, or nowhere to create one.
    refused(&image, dir.path(), &[], "is a directory", &none);
    refused(
        &image,
        Path::new("/dev/null"),
        &[],
        "is a character device",
        &none,
    );
    let missing = dir.path().join("no/such/folder/disk.img");
    refused(&image, &missing, &[], "does not exist", &|| {
        missing.exists().to_string()
    });
    // The image itself.
    let image_hash = || sha256_file(&image);
    refused(&image, &image, &[], "is the image itself", &image_hash);
    // A provisioning file the init would not take, onto a good target.
    let file = dir.path().join("file.img");
    fs::write(&file, b"old content").unwrap();
    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "hostname = \"not a name\"\n").unwrap();
    refused(
        &image,
        &file,
        &["--provision", bad.to_str().unwrap()],
        "hostname",
        &|| sha256_file(&file),
    );

    // The disk this host runs from.
    let root_disk = host_root_disk();
    refused(
        &image,
        &root_disk,
        &[],
        "holds this host's root file system",
        &|| ends_sha256(&root_disk),
    );

    // Loop devices: too small, a partition, mounted, with a mounted partition.
    let small = dir.path().join("small.img");
    File::create(&small).unwrap().set_len(64 << 20).unwrap();
    let Some(small_dev) = Loop::attach(&small, false) else {
        return;
    };
    let hash_small = || sha256_file(&small_dev.device);
    refused(
        &image,
        &small_dev.device,
        &[],
        "smaller than the image",
        &hash_small,
    );

    let parted = dir.path().join("parted.img");
    File::create(&parted)
        .unwrap()
        .set_len(size + (64 << 20))
        .unwrap();
    berth_tests::run_tool(
        Command::new("sgdisk")
            .args(["-n", "1:2048:+32M", "-n", "2:0:+32M"])
            .arg(&parted),
    );
    let Some(parted_dev) = Loop::attach(&parted, true) else {
        return;
    };
    let part1 = PathBuf::from(format!("{}p1", parted_dev.device.display()));
    let part2 = PathBuf::from(format!("{}p2", parted_dev.device.display()));
    // Where losetup -P's scan does not show (a sandbox), partx adds them
    // (it fails, harmlessly, for partitions already there).
    let _ = Command::new("partx")
        .arg("-a")
        .arg(&parted_dev.device)
        .output();
    let _nodes = (wait_for(&part1), wait_for(&part2));
    refused(&image, &part1, &[], "is partition 1 of", &|| {
        sha256_file(&part1)
    });
    berth_tests::run_tool(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&part2));
    let mountpoint = dir.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    berth_tests::run_tool(Command::new("mount").arg(&part2).arg(&mountpoint));
    let mounted = Mount(mountpoint.clone());
    let hash_parted = || ends_sha256(&parted_dev.device) + &sha256_file(&part2);
    refused(
        &image,
        &parted_dev.device,
        &[],
        "is mounted on",
        &hash_parted,
    );
    drop(mounted);

    // A whole disk with a file system mounted straight from it.
    let whole = dir.path().join("whole.img");
    File::create(&whole)
        .unwrap()
        .set_len(size + (64 << 20))
        .unwrap();
    berth_tests::run_tool(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&whole));
    let Some(whole_dev) = Loop::attach(&whole, false) else {
        return;
    };
    berth_tests::run_tool(
        Command::new("mount")
            .arg(&whole_dev.device)
            .arg(&mountpoint),
    );
    let mounted = Mount(mountpoint.clone());
    let hash_whole = || ends_sha256(&whole_dev.device);
    refused(&image, &whole_dev.device, &[], "is mounted on", &hash_whole);
    drop(mounted);
}

/// The whole disk under `/`.
fn host_root_disk() -> PathBuf {
    let dev = fs::metadata("/").unwrap().dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let sys = fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).unwrap();
    let disk = if sys.join("partition").exists() {
        sys.parent().unwrap().to_path_buf()
    } else {
        sys
    };
    Path::new("/dev").join(disk.file_name().unwrap())
}

/// Waits (up to 5 s) for a partition's device node; where no udev or
/// devtmpfs makes one (a sandbox's /dev), makes it from sysfs (removed when
/// the returned guard drops).
fn wait_for(node: &Path) -> Option<MadeNode> {
    for _ in 0..50 {
        if node.exists() {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let name = node.file_name().unwrap().to_string_lossy().into_owned();
    let dev = fs::read_to_string(format!("/sys/class/block/{name}/dev")).unwrap_or_else(|e| {
        panic!(
            "{} did not appear, and sysfs has no {name}: {e}",
            node.display()
        )
    });
    let (major, minor) = dev.trim().split_once(':').unwrap();
    berth_tests::run_tool(Command::new("mknod").arg(node).args(["b", major, minor]));
    Some(MadeNode(node.to_path_buf()))
}

/// A device node the test made, removed when dropped.
struct MadeNode(PathBuf);

impl Drop for MadeNode {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
