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
use std::sync::OnceLock;

use berth_format::layout::Slot;
use berth_tests::{
    berth_cli, boot_persistent, device_copy, esp_state, expect_all, expect_line, make_bundle,
    shell, FileServer, ReleaseWorkspace, TestVm, BOOT_TIMEOUT,
};
use regex::Regex;
use sha2::{Digest, Sha256};

const NAME: &str = "updemo";
/// The bad release's health gate: short, so its tries take minutes, not ten.
const BAD_HEALTH_TIMEOUT: &str = "20s";

/// Keys, images and bundles shared by the tests of this file, made once.
struct Fixture {
    dir: PathBuf,
    images: Images,
    server: FileServer,
    /// An update repository (`berth publish`, with chunks) holding 1.0.0,
    /// 1.0.5 and 1.1.0: a 1.0.0 device is two releases behind. Tests copy it.
    repo: PathBuf,
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
        let ws = ReleaseWorkspace::new("update");
        let (release, other, bundles) = (&ws.release, &ws.other, &ws.bundles);
        let pubkey = release.with_extension("pub");
        let image = |version: &str, compatible: &str, healthy: bool| {
            let text = recipe_text(version, compatible, healthy, &pubkey);
            ws.build(&format!("{compatible}-{version}.toml"), &text)
        };
        let images = Images {
            v100: image("1.0.0", NAME, true),
            v110: image("1.1.0", NAME, true),
            v120_bad: image("1.2.0", NAME, false),
        };
        let other_board = image("1.3.0", "other-board", true);
        let v105 = image("1.0.5", NAME, true);

        let bundle =
            |image: &Path, key: &Path, name: &str| make_bundle(image, key, bundles.join(name));
        bundle(&images.v110, release, "1.1.0.bundle");
        let bad = bundle(&images.v120_bad, release, "1.2.0.bundle");
        bundle(&images.v100, release, "older.bundle");
        bundle(&other_board, release, "other-compatible.bundle");
        bundle(&images.v120_bad, other, "other-key.bundle");
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
        let repo = ws.dir.join("repo");
        let _ = fs::remove_dir_all(&repo);
        for (image, name) in [
            (&images.v100, "repo-1.0.0.bundle"),
            (&v105, "repo-1.0.5.bundle"),
            (&images.v110, "repo-1.1.0.bundle"),
        ] {
            let bundle = bundle(image, release, name);
            berth_cli(&[
                "publish".as_ref(),
                bundle.as_os_str(),
                "--repo".as_ref(),
                repo.as_os_str(),
                "--key".as_ref(),
                release.with_extension("key").as_os_str(),
                "--expires".as_ref(),
                "30d".as_ref(),
            ]);
        }
        let server = FileServer::start(bundles);
        Fixture {
            dir: ws.dir.clone(),
            images,
            server,
            repo,
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

#[derive(Debug)]
struct Member {
    name: String,
    /// Offset of the member's data in the bundle.
    offset: usize,
    size: usize,
}

/// The members of a bundle (a ustar stream), read with the `tar` crate.
fn tar_members(bytes: &[u8]) -> Vec<Member> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .expect("reading the bundle as tar")
        .map(|entry| {
            let entry = entry.expect("a tar member");
            let name = entry.path().expect("a member name").display().to_string();
            Member {
                name,
                offset: usize::try_from(entry.raw_file_position()).expect("offset fits"),
                size: usize::try_from(entry.size()).expect("size fits"),
            }
        })
        .collect()
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
    device_copy(image, &fixture().dir.join("devices"), name)
}

fn start(disk: &Path, log: &str) -> TestVm {
    boot_persistent(disk, log)
}

fn expect(vm: &TestVm, text: &str) -> String {
    expect_line(vm, text)
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
    berth_image::Image::open(disk)
        .and_then(|image| image.partition_range(label))
        .unwrap_or_else(|e| panic!("{e}"))
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

    // 1.2.0's critical container never gets healthy: two tries (`--tries 2`;
    // the default is three), then 1.1.0.
    let url = fx.server.guest_url("1.2.0.bundle");
    vm.send_line(&format!("berth-update install {url} --tries 2 --reboot"))
        .expect("typing");
    expect(&vm, "berth-update: installed 1.2.0 into slot a");
    for tries_left in [1, 0] {
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

/// The reason of the last install as `status` recorded it, with every mention
/// of the bundle's URL and file name taken out: those hold words a reason is
/// checked for ("flipped-signature.bundle"), which must not pass for it.
fn recorded_reason(status: &serde_json::Value, url: &str, bundle: &str) -> String {
    let reason = status["install"]["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no install reason recorded: {status:#}"));
    reason.replace(url, "<url>").replace(bundle, "<bundle>")
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
        assert_eq!(
            untouched_fingerprint(&disk, "root-b"),
            before,
            "{bundle} changed the ESP or slot b"
        );
        let now = status(&mut vm);
        assert_eq!(now["install"]["outcome"], "failed", "{bundle}: {now:#}");
        let reason = recorded_reason(&now, &url, bundle);
        assert!(
            reason.starts_with("refused <url>: "),
            "{bundle}: {reason:?}"
        );
        assert!(
            reason.contains(why),
            "{bundle}: expected {why:?} in the recorded reason {reason:?}"
        );
    }

    // A payload damaged in transit is only found while streaming it: slot b
    // has been written to, but stays unbootable and slot a keeps booting.
    for (bundle, why) in [
        ("flipped-payload.bundle", "rootfs.img.zst"),
        ("truncated-payload.bundle", "truncated"),
    ] {
        let url = fx.server.guest_url(bundle);
        assert_eq!(shell(&mut vm, &format!("berth-update install {url}")), 1);
        let now = status(&mut vm);
        let reason = recorded_reason(&now, &url, bundle);
        assert!(
            reason.starts_with("install from <url> failed: "),
            "{bundle}: {reason:?}"
        );
        assert!(
            reason.contains(why),
            "{bundle}: expected {why:?} in the recorded reason {reason:?}"
        );
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

/// Runs `command` on `vm` with the install to pause at `point`, cuts the
/// power there and boots `disk` again (console log `log`): the device must
/// come back on 1.0.0 from slot a, with slot a to boot next. Returns the new
/// VM and its status.
fn cut_at(
    mut vm: TestVm,
    disk: &Path,
    point: &str,
    command: &str,
    log: &str,
) -> (TestVm, serde_json::Value) {
    vm.send_line(&format!("BERTH_UPDATE_TEST_PAUSE={point} {command}"))
        .expect("typing");
    expect(&vm, &format!("berth-update: test pause at {point}"));
    vm.kill().expect("killing QEMU");
    drop(vm);
    let mut vm = start(disk, log);
    running(&vm, "1.0.0", "a");
    let now = status(&mut vm);
    assert_eq!(now["next"], "a", "{point}: {now:#}");
    (vm, now)
}

/// Power cuts: QEMU is killed at each named checkpoint of an install of 1.1.0
/// onto a 1.0.0 device; the device must come back on 1.0.0 before the commit
/// point and on 1.1.0 after it. The twelve checkpoints cover every state the slot
/// and the ESP go through: before anything is written, right after the slot lost
/// its entry, three points inside the root filesystem write (not yet synced),
/// after it is synced and read back, the kernel half written, kernel and
/// initramfs in place, the new entry durable but not yet renamed, just after the
/// commit rename, and after the outcome was recorded.
///
/// The cuts before the commit point run as chains on one device: after each
/// cut the device comes back on 1.0.0, and the next install, over the slot the
/// cut left half written, goes on to the next checkpoint; the last install of
/// a chain runs to its end. So every such cut is also shown to leave a device
/// that updates. Split in three tests so two VMs work at once.
fn power_cut_chain(name: &str, points: &[&str]) {
    let fx = fixture();
    let url = fx.server.guest_url("1.1.0.bundle");
    let disk = device(&fx.images.v100, &format!("power-cuts-{name}"));
    let mut vm = start(&disk, &format!("power_cuts_{name}"));
    running(&vm, "1.0.0", "a");
    for point in points {
        let now;
        (vm, now) = cut_at(
            vm,
            &disk,
            point,
            &format!("berth-update install {url}"),
            &format!("power_cut_{point}_after"),
        );
        assert_eq!(now["booted"], "a", "{point}: {now:#}");
    }
    assert_eq!(shell(&mut vm, &format!("berth-update install {url}")), 0);
    let now = status(&mut vm);
    assert_eq!(now["next"], "b", "after the cuts: {now:#}");
    assert_eq!(now["install"]["outcome"], "committed", "{now:#}");
    vm.kill().expect("killing QEMU");
    drop(vm);
    let _ = fs::remove_file(&disk);
}

#[test]
fn power_cuts_before_the_root_filesystem_is_synced() {
    power_cut_chain(
        "root",
        &[
            "verified",
            "unbootable",
            "rootfs-10",
            "rootfs-50",
            "rootfs-90",
        ],
    );
}

#[test]
fn power_cuts_while_the_slot_is_completed() {
    power_cut_chain(
        "slot",
        &[
            "rootfs-written",
            "kernel-partial",
            "kernel-written",
            "initramfs-written",
            "entry-written",
        ],
    );
}

/// A cut after the commit point: the device comes back on 1.1.0 from slot b
/// and blesses it. One device each, since the device then runs the newest
/// release.
#[test]
fn power_cut_after_the_commit_point() {
    let fx = fixture();
    let url = fx.server.guest_url("1.1.0.bundle");
    for point in ["committed", "recorded"] {
        let disk = device(&fx.images.v100, &format!("power-cut-{point}"));
        let mut vm = start(&disk, &format!("power_cut_{point}"));
        running(&vm, "1.0.0", "a");
        vm.send_line(&format!(
            "BERTH_UPDATE_TEST_PAUSE={point} berth-update install {url}"
        ))
        .expect("typing");
        expect(&vm, &format!("berth-update: test pause at {point}"));
        vm.kill().expect("killing QEMU");
        drop(vm);
        let mut vm = start(&disk, &format!("power_cut_{point}_after"));
        running(&vm, "1.1.0", "b");
        expect(&vm, "slot b (1.1.0) is healthy: marked good");
        let now = status(&mut vm);
        assert_eq!(now["booted"], "b", "{point}: {now:#}");
        vm.kill().expect("killing QEMU");
        drop(vm);
        let _ = fs::remove_file(&disk);
    }
}

/// A copy of the fixture's repository for one test (which may damage it),
/// served on its own port, and what 1.1.0 needs that 1.0.0 does not have.
struct DeltaRepo {
    dir: PathBuf,
    server: FileServer,
    /// 1.1.0's bundle, relative to the repository.
    bundle: String,
    /// The chunks of 1.1.0 that no chunk of 1.0.0 matches, relative to the
    /// repository: what a 1.0.0 device fetches.
    new_chunks: Vec<String>,
}

fn delta_repo(name: &str) -> DeltaRepo {
    let fx = fixture();
    let dir = fx.dir.join("repos").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&fx.repo)
        .arg(&dir)
        .status()
        .expect("running cp");
    assert!(copied.success(), "copying the repository");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("stable.json")).unwrap()).unwrap();
    let entry = |version: &str| {
        index["bundles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["version"] == version)
            .unwrap_or_else(|| panic!("no {version} in {index:#}"))
            .clone()
    };
    let chunks = |version: &str| -> Vec<String> {
        let sha = entry(version)["sha256"].as_str().unwrap().to_string();
        let chunk_index: berth_bundle::delta::ChunkIndex = serde_json::from_slice(
            &fs::read(dir.join(berth_bundle::delta::chunk_index_path(&sha))).unwrap(),
        )
        .unwrap();
        chunk_index
            .payloads
            .iter()
            .flat_map(|p| &p.chunks)
            .map(|c| c.sha256.clone())
            .collect()
    };
    let old: std::collections::BTreeSet<String> = chunks("1.0.0").into_iter().collect();
    let new_chunks: std::collections::BTreeSet<String> = chunks("1.1.0")
        .into_iter()
        .filter(|c| !old.contains(c))
        .collect();
    assert!(
        new_chunks.len() >= 2,
        "1.1.0 has new chunks: {new_chunks:?}"
    );
    DeltaRepo {
        server: FileServer::start(&dir),
        bundle: entry("1.1.0")["path"].as_str().unwrap().to_string(),
        new_chunks: new_chunks
            .iter()
            .map(|c| berth_bundle::delta::chunk_path(c))
            .collect(),
        dir,
    }
}

impl DeltaRepo {
    fn update(&self) -> String {
        format!(
            "berth-update update --repo {}",
            self.server.guest_url("").trim_end_matches('/')
        )
    }

    fn gets(&self, prefix: &str) -> Vec<String> {
        let prefix = format!("GET /{prefix}");
        self.server
            .log()
            .requests
            .into_iter()
            .filter(|r| r.starts_with(&prefix))
            .collect()
    }
}

/// A device two releases behind (1.0.0, the repository has 1.0.5 and 1.1.0)
/// updates to 1.1.0 by delta through three power cuts: before the first
/// chunk, in the middle of the fetch, and after the last chunk is written
/// and the entry made, just before the commit. After each one slot a boots
/// 1.0.0; the update after them commits by delta, fetching no bundle, and
/// 1.1.0 boots and is blessed.
#[test]
fn a_delta_update_two_releases_behind_survives_power_cuts() {
    let fx = fixture();
    let repo = delta_repo("cuts");
    let disk = device(&fx.images.v100, "delta-cuts");
    let mut vm = start(&disk, "delta_cuts");
    running(&vm, "1.0.0", "a");
    for point in ["chunks-0", "chunks-50", "entry-written"] {
        let now;
        (vm, now) = cut_at(
            vm,
            &disk,
            point,
            &repo.update(),
            &format!("delta_cut_{point}_after"),
        );
        assert_eq!(
            slot_status(&now, "b")["entry"],
            serde_json::Value::Null,
            "{point}: {now:#}"
        );
    }
    assert_eq!(shell(&mut vm, &repo.update()), 0);
    let installed = status(&mut vm);
    assert_eq!(installed["next"], "b", "{installed:#}");
    assert_eq!(
        slot_status(&installed, "b")["version"],
        "1.1.0",
        "{installed:#}"
    );
    let delivery = &installed["install"]["delivery"];
    assert_eq!(delivery["method"], "delta", "{installed:#}");
    let (fetched, bundle) = (
        delivery["fetched"].as_u64().unwrap(),
        delivery["bundle_size"].as_u64().unwrap(),
    );
    assert!(fetched < bundle / 5, "{installed:#}");
    assert!(repo.gets("bundles/").is_empty(), "a bundle was fetched");
    // Every new chunk came over the network, and only new chunks did: what
    // the device holds is never fetched. (A chunk may come more than once: the
    // staging folder is written without fsync, so a cut loses what was
    // fetched before it.)
    let chunk_gets = repo.gets("chunks/");
    for chunk in &repo.new_chunks {
        assert!(
            chunk_gets.iter().any(|r| r.contains(chunk.as_str())),
            "{chunk} never fetched: {chunk_gets:#?}"
        );
    }
    for request in &chunk_gets {
        assert!(
            repo.new_chunks.iter().any(|c| request.contains(c.as_str())),
            "a chunk the device holds was fetched: {request}"
        );
    }

    vm.send_line("kill -INT 1").expect("typing");
    running(&vm, "1.1.0", "b");
    expect(&vm, "slot b (1.1.0) is healthy: marked good");
    vm.kill().expect("killing QEMU");
    drop(vm);
    let _ = fs::remove_file(&disk);
}

/// A chunk missing from the repository, and then a tampered one: each is
/// found before anything is written from it. With the bundle unreachable too
/// the update fails and says why, slot b has no entry and slot a boots; with
/// the bundle back, the device falls back to it, says so, and commits.
#[test]
fn a_missing_or_tampered_chunk_falls_back_to_the_full_bundle() {
    let fx = fixture();
    let repo = delta_repo("damaged");
    let disk = device(&fx.images.v100, "delta-damaged");
    let mut vm = start(&disk, "delta_damaged");
    running(&vm, "1.0.0", "a");

    let missing = repo.dir.join(&repo.new_chunks[0]);
    let bundle = repo.dir.join(&repo.bundle);
    let hidden = bundle.with_extension("hidden");
    fs::remove_file(&missing).unwrap();
    fs::rename(&bundle, &hidden).unwrap();
    assert_eq!(shell(&mut vm, &repo.update()), 1);
    let failed = status(&mut vm);
    assert_eq!(failed["next"], "a", "{failed:#}");
    assert_eq!(
        slot_status(&failed, "b")["entry"],
        serde_json::Value::Null,
        "{failed:#}"
    );
    assert_eq!(failed["install"]["outcome"], "failed", "{failed:#}");
    assert_eq!(
        failed["install"]["delivery"]["method"], "full",
        "{failed:#}"
    );
    let why_full = failed["install"]["delivery"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why_full.contains(&repo.new_chunks[0]) && why_full.contains("missing from the repository"),
        "the record names the missing chunk: {failed:#}"
    );
    let why_failed = failed["install"]["reason"].as_str().unwrap_or_default();
    assert!(
        why_failed.contains(&repo.bundle) && why_failed.contains("404"),
        "the record names the bundle it could not fetch: {failed:#}"
    );
    vm.kill().expect("killing QEMU");
    drop(vm);
    let mut vm = start(&disk, "delta_damaged_after");
    running(&vm, "1.0.0", "a");

    // The bundle is back; the chunk is there again, one of its bytes flipped.
    fs::rename(&hidden, &bundle).unwrap();
    let mut damaged = fs::read(fx.repo.join(&repo.new_chunks[0])).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x20;
    fs::write(&missing, damaged).unwrap();
    assert_eq!(shell(&mut vm, &repo.update()), 0);
    let installed = status(&mut vm);
    assert_eq!(installed["next"], "b", "{installed:#}");
    let delivery = &installed["install"]["delivery"];
    assert_eq!(delivery["method"], "full", "{installed:#}");
    let why_full = delivery["reason"].as_str().unwrap_or_default();
    assert!(
        why_full.contains(&repo.new_chunks[0])
            && (why_full.contains("does not match its name")
                || why_full.contains("not a zstd frame")),
        "the record names the damaged chunk: {installed:#}"
    );
    // The first try's GET of the hidden bundle got a 404; this one fetched it.
    let bundle_gets = repo.gets("bundles/");
    assert_eq!(
        bundle_gets.iter().filter(|r| r.ends_with(" 200")).count(),
        1,
        "the bundle was fetched once: {bundle_gets:#?}"
    );
    vm.kill().expect("killing QEMU");
    drop(vm);
    let _ = fs::remove_file(&disk);
}
