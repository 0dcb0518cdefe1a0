//! Signed update bundles, checked with the tools a user would use: `tar` lists
//! the members, the real `minisign` verifies the manifest, and `berth bundle
//! inspect --verify-payload` refuses every kind of tampered copy. No VM.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use berth_tests::{binaries, build_image, extract_partition, run_tool};
use sha2::{Digest, Sha256};

const MEMBERS: [&str; 5] = [
    "manifest.json",
    "manifest.json.minisig",
    "rootfs.img.zst",
    "vmlinuz.zst",
    "initramfs.img.zst",
];

/// The hello image, a key pair and a bundle of the image signed with it, made
/// once for all tests of this file.
struct Fixture {
    image: PathBuf,
    dir: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn public_key(&self) -> PathBuf {
        self.key.with_extension("pub")
    }

    fn bytes(&self) -> Vec<u8> {
        fs::read(&self.bundle).unwrap()
    }

    /// Offset and size of each member's data in the bundle, in archive order.
    fn members(&self) -> Vec<(String, u64, u64)> {
        let mut archive = tar::Archive::new(File::open(&self.bundle).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.raw_file_position(),
                    e.size(),
                )
            })
            .collect()
    }

    fn member(&self, name: &str) -> (usize, usize) {
        let (_, at, size) = self
            .members()
            .into_iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no member {name}"));
        (usize::try_from(at).unwrap(), usize::try_from(size).unwrap())
    }
}

fn berth(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(&binaries().berth)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running berth: {e}"))
}

fn berth_ok(cmd: &mut Command) -> String {
    run_tool(cmd)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let image = build_image("recipes/hello.toml");
        // Under target/e2e, not a temporary folder: a static is never dropped.
        let dir = berth_tests::e2e_dir().join("bundle-test");
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        fs::create_dir_all(&dir).unwrap();
        let base = dir.join("keys/release");
        berth_ok(
            Command::new(&binaries().berth)
                .args(["key", "generate"])
                .arg(&base),
        );
        let key = dir.join("keys/release.key");
        let bundle = dir.join("hello.bundle");
        berth_ok(
            Command::new(&binaries().berth)
                .arg("bundle")
                .arg(&image)
                .arg("--key")
                .arg(&key)
                .arg("--out")
                .arg(&bundle)
                .arg("--quiet"),
        );
        Fixture {
            image,
            dir,
            key,
            bundle,
        }
    })
}

/// `berth bundle inspect FILE --key PUB --verify-payload`.
fn inspect(file: &Path, key: &Path) -> Output {
    berth(&[
        "bundle".as_ref(),
        "inspect".as_ref(),
        file.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
        "--verify-payload".as_ref(),
    ])
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Writes `bytes` as a bundle and asserts `inspect --key --verify-payload`
/// refuses it with `message`.
fn assert_refused(f: &Fixture, name: &str, bytes: &[u8], message: &str) {
    let path = f.path(name);
    fs::write(&path, bytes).unwrap();
    let output = inspect(&path, &f.public_key());
    let all = text(&output);
    assert!(!output.status.success(), "{name} was accepted:\n{all}");
    assert!(
        all.contains(message),
        "{name}: expected {message:?} in:\n{all}"
    );
    fs::remove_file(&path).unwrap();
}

#[test]
fn key_generate_writes_a_private_secret_key() {
    let f = fixture();
    let mode = fs::metadata(&f.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "secret key mode {mode:o}");
    let public = fs::read_to_string(f.public_key()).unwrap();
    assert!(
        public.starts_with("untrusted comment: minisign public key "),
        "{public}"
    );
    // A second generate refuses to overwrite the key.
    let again = berth(&[
        "key".as_ref(),
        "generate".as_ref(),
        f.path("keys/release").as_os_str(),
    ]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    // The secret never reaches the terminal.
    let secret_line = fs::read_to_string(&f.key)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let other = f.path("keys/printed");
    let out = berth(&["key".as_ref(), "generate".as_ref(), other.as_os_str()]);
    let printed = text(&out);
    let other_secret = fs::read_to_string(other.with_extension("key")).unwrap();
    assert!(
        !printed.contains(other_secret.lines().nth(1).unwrap()),
        "{printed}"
    );
    assert!(!printed.contains(&secret_line));
}

#[test]
fn bundle_members_are_listed_by_tar_in_order() {
    let f = fixture();
    let listing = run_tool(Command::new("tar").arg("tf").arg(&f.bundle));
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(names, MEMBERS, "{listing}");
    let verbose = run_tool(Command::new("tar").args(["tvf"]).arg(&f.bundle));
    for line in verbose.lines() {
        assert!(line.starts_with("-rw-r--r-- 0/0"), "{line}");
    }
}

#[test]
fn minisign_verifies_the_manifest() {
    let f = fixture();
    let out = f.path("extracted");
    fs::create_dir_all(&out).unwrap();
    run_tool(
        Command::new("tar")
            .arg("xf")
            .arg(&f.bundle)
            .arg("-C")
            .arg(&out),
    );
    let verified = run_tool(
        Command::new("minisign")
            .args(["-V", "-m", "manifest.json", "-p"])
            .arg(f.public_key())
            .current_dir(&out),
    );
    assert!(
        verified.contains("Signature and comment signature verified"),
        "{verified}"
    );

    // One changed byte in the manifest and minisign refuses it too.
    let manifest = out.join("manifest.json");
    let mut bytes = fs::read(&manifest).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    fs::write(&manifest, &bytes).unwrap();
    let refused = Command::new("minisign")
        .args(["-V", "-m", "manifest.json", "-p"])
        .arg(f.public_key())
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{}", text(&refused));
}

#[test]
fn inspect_verifies_signature_and_payloads() {
    let f = fixture();
    let output = inspect(&f.bundle, &f.public_key());
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let key_id = fs::read_to_string(f.public_key())
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(
        all.contains(&format!("signature: verified with {key_id}")),
        "{all}"
    );
    for member in &MEMBERS[2..] {
        assert!(all.contains(&format!("{member}: ok")), "{all}");
    }
    assert!(all.contains("name:          hello"), "{all}");
    assert!(all.contains("version:       1.0.0"), "{all}");

    let unchecked = berth(&["bundle".as_ref(), "inspect".as_ref(), f.bundle.as_os_str()]);
    let all = text(&unchecked);
    assert!(unchecked.status.success(), "{all}");
    assert!(
        all.contains("signature: NOT checked (no --key given)"),
        "{all}"
    );
    assert!(all.contains(&format!("signed by key: {key_id}")), "{all}");

    let json = berth(&[
        "bundle".as_ref(),
        "inspect".as_ref(),
        f.bundle.as_os_str(),
        "--json".as_ref(),
    ]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["manifest"]["name"], "hello");
    assert_eq!(value["signature"], "not checked");
}

#[test]
fn rootfs_payload_is_the_slot_content_of_root_a() {
    let f = fixture();
    let manifest: serde_json::Value = {
        let (at, size) = f.member("manifest.json");
        serde_json::from_slice(&f.bytes()[at..at + size]).unwrap()
    };
    let rootfs = &manifest["payloads"][0];
    assert_eq!(rootfs["kind"], "rootfs");
    let size = usize::try_from(rootfs["size"].as_u64().unwrap()).unwrap();
    let (at, stored) = f.member("rootfs.img.zst");
    let payload = zstd::stream::decode_all(&f.bytes()[at..at + stored]).unwrap();
    assert_eq!(payload.len(), size);
    assert_eq!(hex::encode(Sha256::digest(&payload)), rootfs["sha256"]);

    let root_a = f.path("root-a.img");
    extract_partition(&f.image, "root-a", &root_a);
    let partition = fs::read(&root_a).unwrap();
    fs::remove_file(&root_a).unwrap();
    assert!(
        payload == partition[..size],
        "rootfs payload differs from root-a"
    );
    // The slot content ends with the verity hash tree: past it root-a is empty.
    assert!(partition[size..].iter().all(|b| *b == 0));
    let verity = &manifest["verity"];
    assert_eq!(
        verity["hash_offset"].as_u64().unwrap(),
        verity["data_blocks"].as_u64().unwrap() * 4096
    );
    assert!(size as u64 > verity["hash_offset"].as_u64().unwrap());

    // Kernel and initramfs are the ESP's.
    let boot_dir = f.path("boot");
    fs::create_dir_all(&boot_dir).unwrap();
    let boot = berth_qemu::direct::extract_direct_boot(&f.image, &boot_dir).unwrap();
    for (member, file) in [
        ("vmlinuz.zst", &boot.kernel),
        ("initramfs.img.zst", &boot.initrd),
    ] {
        let (at, stored) = f.member(member);
        let payload = zstd::stream::decode_all(&f.bytes()[at..at + stored]).unwrap();
        assert!(
            payload == fs::read(file).unwrap(),
            "{member} differs from the ESP's"
        );
    }
}

#[test]
fn bundling_the_same_image_twice_gives_the_same_bytes() {
    let f = fixture();
    let second = f.path("second.bundle");
    berth_ok(
        Command::new(&binaries().berth)
            .arg("bundle")
            .arg(&f.image)
            .arg("--key")
            .arg(&f.key)
            .arg("--out")
            .arg(&second)
            .arg("--quiet"),
    );
    assert!(
        fs::read(&second).unwrap() == f.bytes(),
        "two bundles of one image differ"
    );
    fs::remove_file(&second).unwrap();
}

#[test]
fn tampered_bundles_are_refused() {
    let f = fixture();
    let original = f.bytes();

    let (at, size) = f.member("manifest.json");
    let mut bytes = original.clone();
    bytes[at + size / 2] ^= 0x01;
    assert_refused(
        f,
        "manifest-bit.bundle",
        &bytes,
        "bundle signature does not verify: the manifest or its signature was altered",
    );

    // A bit of the signature proper (past the key number) that keeps the
    // line valid base64, and a bit of the trusted comment.
    let (at, size) = f.member("manifest.json.minisig");
    let signature = &original[at..at + size];
    let line_start = signature.iter().position(|b| *b == b'\n').unwrap() + 1;
    let flip = (line_start + 30..)
        .find(|i| matches!(signature[*i], b'b'..=b'y'))
        .unwrap();
    let mut bytes = original.clone();
    bytes[at + flip] ^= 0x01;
    assert_refused(
        f,
        "signature-bit.bundle",
        &bytes,
        "bundle signature does not verify",
    );
    let comment = find(signature, b"trusted comment: timestamp") + 17;
    let mut bytes = original.clone();
    bytes[at + comment] ^= 0x01;
    assert_refused(
        f,
        "comment-bit.bundle",
        &bytes,
        "bundle signature does not verify",
    );

    for member in &MEMBERS[2..] {
        let (at, size) = f.member(member);
        let mut bytes = original.clone();
        bytes[at + size / 2] ^= 0x10;
        assert_refused(
            f,
            &format!("{member}-bit.bundle"),
            &bytes,
            &format!("payload {member}"),
        );
    }

    // Cut inside each member and before the end-of-archive marker.
    for member in MEMBERS {
        let (at, size) = f.member(member);
        let cut = at + size / 2;
        assert_refused(
            f,
            &format!("{member}-cut.bundle"),
            &original[..cut],
            &format!(
                "bundle is truncated: it ends inside {member} (got {} of {size} bytes)",
                size / 2
            ),
        );
    }
    for cut in [original.len() - 1024, original.len() - 1] {
        assert_refused(f, "end-cut.bundle", &original[..cut], "bundle is truncated");
    }
    assert_refused(f, "empty.bundle", &[], "bundle is truncated");

    // Another key.
    let other = f.path("keys/other");
    berth_ok(
        Command::new(&binaries().berth)
            .args(["key", "generate"])
            .arg(&other),
    );
    let output = inspect(&f.bundle, &other.with_extension("pub"));
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(
        all.contains("which is not one of the trusted keys"),
        "{all}"
    );
}

#[test]
fn default_output_is_next_to_the_image() {
    let f = fixture();
    let expected = f.image.with_extension("bundle");
    let _ = fs::remove_file(&expected);
    berth_ok(
        Command::new(&binaries().berth)
            .arg("bundle")
            .arg(&f.image)
            .arg("--key")
            .arg(&f.key)
            .arg("--min-version")
            .arg("0.9.0")
            .arg("--quiet"),
    );
    let output = inspect(&expected, &f.public_key());
    let all = text(&output);
    fs::remove_file(&expected).unwrap();
    assert!(output.status.success(), "{all}");
    assert!(all.contains("min version:   0.9.0"), "{all}");
    let bad = berth(&[
        "bundle".as_ref(),
        f.image.as_os_str(),
        "--key".as_ref(),
        f.key.as_os_str(),
        "--min-version".as_ref(),
        "soon".as_ref(),
    ]);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("not a semantic version"),
        "{}",
        text(&bad)
    );
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

#[test]
fn an_image_without_verity_bundles_its_padded_squashfs() {
    let f = fixture();
    let image = build_image("tests/recipes/no-verity.toml");
    let bundle = f.path("no-verity.bundle");
    berth_ok(
        Command::new(&binaries().berth)
            .arg("bundle")
            .arg(&image)
            .arg("--key")
            .arg(&f.key)
            .arg("--out")
            .arg(&bundle)
            .arg("--quiet"),
    );
    let output = inspect(&bundle, &f.public_key());
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains("verity:        none"), "{all}");

    let out = f.path("no-verity");
    fs::create_dir_all(&out).unwrap();
    run_tool(
        Command::new("tar")
            .arg("xf")
            .arg(&bundle)
            .arg("-C")
            .arg(&out),
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["verity"].is_null(), "{manifest}");
    let payload =
        zstd::stream::decode_all(File::open(out.join("rootfs.img.zst")).unwrap()).unwrap();
    assert_eq!(payload.len() % 4096, 0);
    assert_eq!(&payload[..4], b"hsqs");
    let root_a = out.join("root-a.img");
    extract_partition(&image, "root-a", &root_a);
    let partition = fs::read(&root_a).unwrap();
    assert!(
        payload == partition[..payload.len()],
        "rootfs payload differs from root-a"
    );
    assert!(partition[payload.len()..].iter().all(|b| *b == 0));
    // The squashfs's own size, rounded up to a block, is the payload's.
    let bytes_used = u64::from_le_bytes(payload[40..48].try_into().unwrap());
    assert_eq!(bytes_used.div_ceil(4096) * 4096, payload.len() as u64);
    fs::remove_dir_all(&out).unwrap();
}
