//! A/B updates end to end, on the full UEFI path (OVMF + systemd-boot 252 boot
//! counting): install over HTTP and from a file, the health gate blessing a good
//! release, a bad release rolled back by the boot counter on its own, a manual
//! rollback, refusals before any write, power cuts at every checkpoint of an
//! install, and a container's named volume kept across an update and a
//! rollback while its writable root is wiped.
//!
//! The tests drive the device through its debug shell on the serial console
//! (`[debug] console_shell = true`), as a developer would, and serve bundles from
//! the host over HTTP (10.0.2.2 from the guest). Each test boots its own copy of
//! the built image, so they can run side by side.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use berth_tests::{
    boot, build_image, e2e_dir, esp_state, expect_all, literal, make_bundle, release_key, run_tool,
    shell, BootOptions, FileServer, TestVm, BOOT_TIMEOUT,
};
use berth_updater::layout::Slot;
use regex::Regex;
use sha2::{Digest, Sha256};

const NAME: &str = "updemo";
/// The bad release's health gate: short, so its three tries take minutes, not ten.
const BAD_HEALTH_TIMEOUT: &str = "20s";

/// Keys, images and bundles shared by the tests of this file, made once.
struct Fixture {
    dir: PathBuf,
    images: Images,
    server: FileServer,
}

struct Images {
    v100: PathBuf,
    v110: PathBuf,
    /// A release whose critical container never becomes healthy.
    v120_bad: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = e2e_dir().join("update");
        let recipes = dir.join("recipes");
        let keys = dir.join("keys");
        let bundles = dir.join("bundles");
        for d in [&recipes, &keys, &bundles] {
            fs::create_dir_all(d).unwrap_or_else(|err| panic!("{}: {err}", d.display()));
        }
        let release = keys.join("release");
        let other = keys.join("other");
        release_key(&release);
        release_key(&other);
        let pubkey = release.with_extension("pub");
        let image = |version: &str, compatible: &str, healthy: bool| {
            let recipe = recipes.join(format!("{compatible}-{version}.toml"));
            write_if_changed(&recipe, &recipe_text(version, compatible, healthy, &pubkey));
            build_image(&recipe)
        };
        let images = Images {
            v100: image("1.0.0", NAME, true),
            v110: image("1.1.0", NAME, true),
            v120_bad: image("1.2.0", NAME, false),
        };
        let other_board = image("1.3.0", "other-board", true);

        let bundle =
            |image: &Path, key: &Path, name: &str| make_bundle(image, key, bundles.join(name));
        bundle(&images.v110, &release, "1.1.0.bundle");
        let bad = bundle(&images.v120_bad, &release, "1.2.0.bundle");
        bundle(&images.v100, &release, "older.bundle");
        bundle(&other_board, &release, "other-compatible.bundle");
        bundle(&images.v120_bad, &other, "other-key.bundle");
        let bytes = fs::read(&bad).expect("reading the 1.2.0 bundle");
        let members = tar_members(&bytes);
        let member = |name: &str| {
            members
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("the bundle has no {name}: {members:?}"))
        };
        let manifest = member("manifest.json");
        let signature = member("manifest.json.minisig");
        let rootfs = member("rootfs.img.zst");
        let tampered = |name: &str, change: &dyn Fn(&mut Vec<u8>)| {
            let mut copy = bytes.clone();
            change(&mut copy);
            fs::write(bundles.join(name), copy).expect("writing a tampered bundle");
        };
        // One flipped bit in the manifest's version field area, in the signature's
        // base64 line, and in the middle of the compressed root filesystem.
        tampered("flipped-manifest.bundle", &|b| {
            b[manifest.offset + manifest.size / 2] ^= 0x04
        });
        tampered("flipped-signature.bundle", &|b| {
            let line = signature_line_offset(&b[signature.offset..][..signature.size]);
            b[signature.offset + line + 20] ^= 0x01;
        });
        tampered("flipped-payload.bundle", &|b| {
            b[rootfs.offset + rootfs.size / 2] ^= 0x10
        });
        tampered("truncated-header.bundle", &|b| {
            b.truncate(signature.offset + signature.size / 2)
        });
        tampered("truncated-payload.bundle", &|b| {
            b.truncate(rootfs.offset + rootfs.size / 2)
        });
        let server = FileServer::start(&bundles);
        Fixture {
            dir,
            images,
            server,
        }
    })
}

fn recipe_text(version: &str, compatible: &str, healthy: bool, key: &Path) -> String {
    let store = if healthy {
        STORE.replace("VERSION", version)
    } else {
        String::new()
    };
    let (health, timeout) = if healthy {
        ("{ http = \"http://127.0.0.1:80/\" }", "120s")
    } else {
        // Nothing listens on 81: the gate never opens.
        ("{ tcp = 81, interval = \"2s\" }", BAD_HEALTH_TIMEOUT)
    };
    format!(
        r#"# Generated by tests/tests/update.rs.
[image]
name = "{NAME}"
version = "{version}"
compatible = "{compatible}"
epoch = 1700000000

[update]
keys = ["{key}"]
health_timeout = "{timeout}"

[debug]
console_shell = true

[[container]]
name = "web"
packages = ["busybox-static"]
command = ["/bin/busybox", "sh", "-c", "/bin/busybox mkdir -p /tmp/www && echo '{compatible} {version}' > /tmp/www/index.html && exec /bin/busybox httpd -f -p 80 -h /tmp/www"]
restart = "always"
critical = true
health = {health}
{store}"#,
        key = key.display()
    )
}

/// A container that reports what it finds in its named volume and its writable
/// root, then appends its release to both (in the healthy releases only: the
/// bad one stays as it was, so its image is not rebuilt).
const STORE: &str = r#"
[[container]]
name = "store"
packages = ["busybox-static"]
command = ["/bin/busybox", "sh", "-c", """
echo store: volume has $(/bin/busybox cat /data/releases 2>/dev/null), root has $(/bin/busybox cat /root-mark 2>/dev/null).
echo VERSION >> /data/releases
echo VERSION >> /root-mark
exec /bin/busybox sleep 100000
"""]
restart = "always"
volumes = ["store-data:/data"]
writable = true
"#;

fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    }
}

#[derive(Debug)]
struct Member {
    name: String,
    /// Offset of the member's data in the bundle.
    offset: usize,
    size: usize,
}

/// The members of a ustar stream.
fn tar_members(bytes: &[u8]) -> Vec<Member> {
    let mut members = Vec::new();
    let mut at = 0;
    while at + 512 <= bytes.len() && bytes[at..at + 512].iter().any(|&b| b != 0) {
        let header = &bytes[at..at + 512];
        let name = String::from_utf8_lossy(&header[..100])
            .trim_end_matches('\0')
            .to_string();
        let size_text = String::from_utf8_lossy(&header[124..136]);
        let size =
            usize::from_str_radix(size_text.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .unwrap_or_else(|_| panic!("bad tar size {size_text:?}"));
        members.push(Member {
            name,
            offset: at + 512,
            size,
        });
        at += 512 + size.div_ceil(512) * 512;
    }
    members
}

/// Offset of the signature line (the second line) of a minisign signature file.
fn signature_line_offset(sig: &[u8]) -> usize {
    sig.iter()
        .position(|&b| b == b'\n')
        .expect("a minisign file has lines")
        + 1
}

/// A scratch copy of `image` for one test (sparse, so cheap), in a folder of its own.
fn device(image: &Path, name: &str) -> PathBuf {
    let dir = fixture().dir.join("devices");
    fs::create_dir_all(&dir).expect("creating the devices folder");
    let disk = dir.join(format!("{name}.img"));
    let _ = fs::remove_file(&disk);
    run_tool(
        Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(image)
            .arg(&disk),
    );
    disk
}

fn start(disk: &Path, log: &str) -> TestVm {
    boot(
        disk,
        BootOptions {
            persist: true,
            log_name: Some(log.to_string()),
            ..BootOptions::default()
        },
    )
}

fn expect(vm: &TestVm, text: &str) -> String {
    vm.expect(&literal(text), BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"))
}

fn expect_re(vm: &TestVm, pattern: &str) -> String {
    let re = Regex::new(pattern).expect("a valid regex");
    vm.expect(&re, BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"))
}

/// Waits until the image `version` runs from `slot` and its shell is up.
fn running(vm: &TestVm, version: &str, slot: &str) {
    expect(vm, &format!("berth-init: {NAME} {version} (slot {slot})"));
    expect(vm, "debug shell on the console");
    expect(vm, "starting container web");
}

/// Runs `berth-update status --json` in the shell and parses what it prints.
///
/// The console is shared: the init's and the containers' log lines (`[store] …`,
/// `berth-init: …`) can land between the JSON's lines. Pretty JSON lines start
/// with a brace or an indent, log lines never do, so only those are kept.
fn status(vm: &mut TestVm) -> serde_json::Value {
    vm.send_line("echo @@json\"\"-begin; berth-update status --json; echo @@json\"\"-end")
        .unwrap_or_else(|err| panic!("typing into the console: {err}"));
    expect_re(vm, r"^\s*@@json-begin\s*$");
    let any = Regex::new(".*").expect("regex");
    let mut text = String::new();
    loop {
        let line = vm
            .expect(&any, BOOT_TIMEOUT)
            .unwrap_or_else(|err| panic!("{err}"));
        if line.trim() == "@@json-end" {
            break;
        }
        if !line.starts_with(['{', '}', ' ']) {
            continue;
        }
        text.push_str(&line);
        text.push('\n');
    }
    serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("status --json printed {text:?}: {err}"))
}

fn slot_status<'a>(status: &'a serde_json::Value, slot: &str) -> &'a serde_json::Value {
    status["slots"]
        .as_array()
        .and_then(|slots| slots.iter().find(|s| s["slot"] == slot))
        .unwrap_or_else(|| panic!("no slot {slot} in {status:#}"))
}

/// The bytes of the partition labelled `label` in a raw disk image.
fn partition_range(disk: &Path, label: &str) -> (u64, u64) {
    let mut file = fs::File::open(disk).expect("opening the disk");
    let parts = berth_updater::gpt::read_partitions(&mut file).expect("reading the GPT");
    let part = parts
        .iter()
        .find(|p| p.label == label)
        .unwrap_or_else(|| panic!("no partition {label} in {}", disk.display()));
    (part.first_lba * 512, part.size_bytes(512))
}

fn sha256_range(disk: &Path, offset: u64, len: u64) -> String {
    let mut file = fs::File::open(disk).expect("opening the disk");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    let mut hasher = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = usize::try_from(left.min(1 << 20)).expect("a MiB fits");
        file.read_exact(&mut buf[..want]).expect("read");
        hasher.update(&buf[..want]);
        left -= want as u64;
    }
    hex::encode(hasher.finalize())
}

/// What must not change when a bundle is refused: the whole ESP and the first
/// MiB of the target slot.
fn untouched_fingerprint(disk: &Path, target: &str) -> (String, String) {
    let (esp_at, esp_len) = partition_range(disk, "esp");
    let (slot_at, _) = partition_range(disk, target);
    (
        sha256_range(disk, esp_at, esp_len),
        sha256_range(disk, slot_at, 1 << 20),
    )
}

#[test]
fn update_over_http_is_blessed_and_rolled_back_by_hand() {
    let fx = fixture();
    let disk = device(&fx.images.v100, "update-http");
    let mut vm = start(&disk, "update_over_http");
    running(&vm, "1.0.0", "a");
    expect(&vm, "[store] store: volume has , root has .");

    let url = fx.server.guest_url("1.1.0.bundle");
    assert_eq!(shell(&mut vm, &format!("berth-update install {url}")), 0);
    let after = status(&mut vm);
    assert_eq!(after["next"], "b", "{after:#}");
    assert_eq!(slot_status(&after, "b")["version"], "1.1.0", "{after:#}");
    assert_eq!(slot_status(&after, "b")["tries_left"], 3, "{after:#}");
    assert_eq!(after["install"]["outcome"], "committed", "{after:#}");

    vm.send_line("kill -INT 1").expect("typing");
    running(&vm, "1.1.0", "b");
    // The volume kept what 1.0.0 wrote; the writable root is 1.1.0's own.
    expect_all(
        &vm,
        &[
            "berth-init: container store: writable layer of 1.0.0 wiped (image is now 1.1.0)",
            "[store] store: volume has 1.0.0, root has .",
            "slot b (1.1.0) is healthy: marked good",
        ],
    );
    let blessed = status(&mut vm);
    assert_eq!(blessed["booted"], "b", "{blessed:#}");
    let b = slot_status(&blessed, "b");
    assert_eq!(b["good"], true, "{blessed:#}");
    assert_eq!(b["version"], "1.1.0", "{blessed:#}");
    assert_eq!(blessed["assessment"]["outcome"], "good", "{blessed:#}");
    assert_eq!(
        slot_status(&blessed, "a")["version"],
        "1.0.0",
        "{blessed:#}"
    );

    // Manual rollback to the good 1.0.0. (With --reboot the shell is stopped
    // before it could print an exit code: the agent's own line tells.)
    vm.send_line("berth-update rollback --reboot")
        .expect("typing");
    expect(
        &vm,
        "berth-update: rolled back: slot a (1.0.0) boots next instead of slot b (1.1.0)",
    );
    running(&vm, "1.0.0", "a");
    // Back on 1.0.0: both releases' lines in the volume, a fresh root again.
    expect(&vm, "[store] store: volume has 1.0.0 1.1.0, root has .");
    let back = status(&mut vm);
    assert_eq!(back["booted"], "a", "{back:#}");
    assert_eq!(back["next"], "a", "{back:#}");
    assert_eq!(back["rollback"]["from_version"], "1.1.0", "{back:#}");
    assert_eq!(back["rollback"]["to_version"], "1.0.0", "{back:#}");
    assert_eq!(slot_status(&back, "b")["good"], true, "{back:#}");
    vm.powerdown().expect("power button");
    vm.wait_exit(BOOT_TIMEOUT).expect("QEMU exits");

    let entries = esp_state(&disk);
    assert_eq!(entries.next_boot(), Some(Slot::A));
    assert!(entries.slot(Slot::B).is_some_and(|b| b.is_good()));
}

#[test]
fn bad_release_rolls_back_by_itself() {
    let fx = fixture();
    let disk = device(&fx.images.v100, "update-bad");
    let mut vm = start(&disk, "bad_release_rolls_back");
    running(&vm, "1.0.0", "a");

    // 1.1.0 from a file on the device: fetched first, then installed.
    let url = fx.server.guest_url("1.1.0.bundle");
    vm.send_line(&format!(
        "busybox mkdir -p /var/tmp && busybox wget -q -O /var/tmp/update.bundle {url} && berth-update install /var/tmp/update.bundle --reboot"
    ))
    .expect("typing");
    expect(&vm, "berth-update: installed 1.1.0 into slot b");
    running(&vm, "1.1.0", "b");
    expect(&vm, "slot b (1.1.0) is healthy: marked good");

    // 1.2.0's critical container never gets healthy: three tries, then 1.1.0.
    let url = fx.server.guest_url("1.2.0.bundle");
    vm.send_line(&format!("berth-update install {url} --reboot"))
        .expect("typing");
    expect(&vm, "berth-update: installed 1.2.0 into slot a");
    for tries_left in [2, 1, 0] {
        expect(&vm, &format!("berth-init: {NAME} 1.2.0 (slot a)"));
        expect_re(
            &vm,
            &format!(
                r"slot a \(1\.2\.0\) did not become healthy within 20 s: .*; rebooting \({tries_left} tries left\)"
            ),
        );
    }
    running(&vm, "1.1.0", "b");
    let after = status(&mut vm);
    assert_eq!(after["booted"], "b", "{after:#}");
    assert_eq!(after["next"], "b", "{after:#}");
    let a = slot_status(&after, "a");
    assert_eq!(a["version"], "1.2.0", "{after:#}");
    assert_eq!(a["tries_left"], 0, "{after:#}");
    assert_eq!(a["good"], false, "{after:#}");
    assert_eq!(after["assessment"]["slot"], "a", "{after:#}");
    assert_eq!(after["assessment"]["version"], "1.2.0", "{after:#}");
    assert_eq!(after["assessment"]["outcome"], "failed", "{after:#}");
    let reason = after["assessment"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("web"),
        "the reason names the container: {after:#}"
    );
    // The failed slot is not a rollback target.
    assert_eq!(shell(&mut vm, "berth-update rollback"), 1);
}

#[test]
fn bad_bundles_are_refused_before_any_write() {
    let fx = fixture();
    let disk = device(&fx.images.v110, "update-refused");
    let mut vm = start(&disk, "bad_bundles_are_refused");
    running(&vm, "1.1.0", "a");
    let before = untouched_fingerprint(&disk, "root-b");

    let refusals = [
        ("other-key.bundle", "not one of the trusted keys"),
        ("flipped-manifest.bundle", "signature"),
        ("flipped-signature.bundle", "signature"),
        ("truncated-header.bundle", "truncated"),
        ("other-compatible.bundle", "\"other-board\""),
        ("older.bundle", "not newer than the running 1.1.0"),
    ];
    for (bundle, why) in refusals {
        let url = fx.server.guest_url(bundle);
        assert_eq!(
            shell(&mut vm, &format!("berth-update install {url}")),
            1,
            "{bundle} was accepted"
        );
        let tail = vm.tail().join("\n");
        assert!(tail.contains(why), "{bundle}: expected {why:?} in:\n{tail}");
        assert_eq!(
            untouched_fingerprint(&disk, "root-b"),
            before,
            "{bundle} changed the ESP or slot b"
        );
        let now = status(&mut vm);
        assert_eq!(now["install"]["outcome"], "failed", "{bundle}: {now:#}");
    }

    // A payload damaged in transit is only found while streaming it: slot b
    // has been written to, but stays unbootable and slot a keeps booting.
    for (bundle, why) in [
        ("flipped-payload.bundle", "rootfs.img.zst"),
        ("truncated-payload.bundle", "truncated"),
    ] {
        let url = fx.server.guest_url(bundle);
        assert_eq!(shell(&mut vm, &format!("berth-update install {url}")), 1);
        let tail = vm.tail().join("\n");
        assert!(tail.contains(why), "{bundle}: expected {why:?} in:\n{tail}");
        let now = status(&mut vm);
        assert_eq!(now["next"], "a", "{bundle}: {now:#}");
        assert_eq!(
            slot_status(&now, "b")["entry"],
            serde_json::Value::Null,
            "{now:#}"
        );
        let reason = now["install"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("slot a still boots"), "{now:#}");
    }
    vm.send_line("kill -INT 1").expect("typing");
    running(&vm, "1.1.0", "a");
}

/// Power cuts: QEMU is killed at each named checkpoint of an install of 1.1.0
/// onto a 1.0.0 device; the device must come back on 1.0.0 before the commit
/// point and on 1.1.0 after it. The twelve checkpoints cover every state the slot
/// and the ESP go through: before anything is written, right after the slot lost
/// its entry, three points inside the root filesystem write (not yet synced),
/// after it is synced and read back, the kernel half written, kernel and
/// initramfs in place, the new entry durable but not yet renamed, just after the
/// commit rename, and after the outcome was recorded. Split in three tests so
/// two VMs work at once.
fn power_cuts(points: &[(&str, bool)]) {
    let fx = fixture();
    let url = fx.server.guest_url("1.1.0.bundle");
    for &(point, after_commit) in points {
        let disk = device(&fx.images.v100, &format!("power-cut-{point}"));
        let log = format!("power_cut_{point}");
        let mut vm = start(&disk, &log);
        running(&vm, "1.0.0", "a");
        vm.send_line(&format!(
            "BERTH_UPDATE_TEST_PAUSE={point} berth-update install {url}"
        ))
        .expect("typing");
        expect(&vm, &format!("berth-update: test pause at {point}"));
        vm.kill().expect("killing QEMU");
        drop(vm);

        let mut vm = start(&disk, &format!("{log}_after"));
        let (version, slot) = if after_commit {
            ("1.1.0", "b")
        } else {
            ("1.0.0", "a")
        };
        running(&vm, version, slot);
        if after_commit {
            expect(&vm, "slot b (1.1.0) is healthy: marked good");
        }
        let now = status(&mut vm);
        assert_eq!(now["booted"], slot, "{point}: {now:#}");
        vm.kill().expect("killing QEMU");
        drop(vm);
        let _ = fs::remove_file(&disk);
    }
}

#[test]
fn power_cut_before_the_root_filesystem_is_written() {
    power_cuts(&[
        ("verified", false),
        ("unbootable", false),
        ("rootfs-10", false),
        ("rootfs-50", false),
    ]);
}

#[test]
fn power_cut_while_the_slot_is_completed() {
    power_cuts(&[
        ("rootfs-90", false),
        ("rootfs-written", false),
        ("kernel-partial", false),
        ("kernel-written", false),
    ]);
}

#[test]
fn power_cut_around_the_commit_point() {
    power_cuts(&[
        ("initramfs-written", false),
        ("entry-written", false),
        ("committed", true),
        ("recorded", true),
    ]);
}
