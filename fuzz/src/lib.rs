//! One fuzz target for every parser of outside input: each function here takes
//! arbitrary bytes and feeds them to the library function a build host or a
//! device uses on a file or packet it did not make. None of them may panic,
//! hang or allocate without bound, whatever the bytes.
//!
//! `fuzz_targets/NAME.rs` wraps each in libFuzzer (`scripts/fuzz` builds and
//! runs them with coverage instrumentation); `tests/fuzz_smoke.rs` replays the
//! committed corpora (`corpus/NAME/`) through the same functions and mutates
//! them for a few seconds, in the ordinary test suite.

use std::io::{self, Cursor, Write};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use berth_builder::sources::{deb, oci};
use berth_builder::tree::Tree;
use berth_bundle::channel::{ChannelIndex, Running};
use berth_bundle::delta::ChunkIndex;
use berth_bundle::reader::BundleReader;
use berth_bundle::rollout::Position;
use berth_bundle::version::ImageVersion;
use berth_bundle::{Manifest, TrustedKeys};
use berth_format::entries::{parse_slot_file_name, split_counter, EntryFile};
use berth_format::{gpt, provision};
use berth_init::{dhcp, ntp};

/// A fuzz target: bytes in, nothing out; it returns only if the parser did.
pub type Target = fn(&[u8]);

/// Every target by name; the name is its corpus folder and its libFuzzer binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("recipe", recipe),
    ("provision", provision),
    ("bundle", bundle),
    ("signature", signature),
    ("manifest", manifest),
    ("channel_index", channel_index),
    ("chunk_index", chunk_index),
    ("oci_manifest", oci_manifest),
    ("oci_config", oci_config),
    ("layer_tar", layer_tar),
    ("gpt", gpt),
    ("boot_entry", boot_entry),
    ("dhcp", dhcp),
    ("sntp", sntp),
    ("deb", deb),
];

/// The key of the tests' update repository (`tests/recipes/keys/test.pub`):
/// signatures by any other key are refused as untrusted, by this one checked.
fn trusted_keys() -> &'static TrustedKeys {
    static KEYS: OnceLock<TrustedKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        TrustedKeys::parse(include_str!("../../tests/recipes/keys/test.pub"))
            .expect("the tests' public key parses")
    })
}

/// A folder for what a target must write to disk, made once per process.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("berth-fuzz")
            .tempdir()
            .expect("a scratch folder")
    })
    .path()
}

/// Splits `data` into the pieces a target with several inputs takes: each is
/// a little-endian u16 length and that many bytes (the last one, the rest).
fn pieces(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let len = len.min(rest.len());
        out.push(&rest[..len]);
        data = &rest[len..];
    }
    out
}

/// A recipe (`berth build RECIPE`): TOML, then every section's checks.
pub fn recipe(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = scratch().join("recipe.toml");
    if let Ok(plan) = berth_builder::recipe::parse(&path, text) {
        let _ = plan.lock_path();
        let _ = plan.kernel_package();
    }
}

/// The provisioning file a device reads from its ESP at boot.
pub fn provision(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (found, _warnings) = provision::parse(&text);
    let _ = found.ntp_servers();
    // What berth writes back must read as the same settings.
    let rendered = found.render();
    let (again, warnings) = provision::parse(&rendered);
    assert!(
        warnings.is_empty(),
        "rendered provisioning {rendered:?} warns: {warnings:?}"
    );
    assert_eq!(again.render(), rendered, "render is not stable");
}

/// A bundle as a device downloads it: tar members, the minisign signature,
/// the manifest, each payload's zstd stream checked against the manifest.
pub fn bundle(data: &[u8]) {
    // Signed by the trusted key or not, the head is read the same way up to
    // the signature check.
    let _ = BundleReader::open(Cursor::new(data), trusted_keys());
    let Ok(mut reader) = BundleReader::open_unverified(Cursor::new(data)) else {
        return;
    };
    let _ = reader.manifest().payload(berth_bundle::PayloadKind::Rootfs);
    loop {
        match reader.next_payload() {
            Ok(Some(mut payload)) => {
                if io::copy(&mut payload, &mut io::sink()).is_err() {
                    return;
                }
                if payload.finish().is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let _ = reader.finish();
}

/// A minisign signature file (of a manifest, an index, a chunk index), and a
/// public key file (`--key`, `/etc/berth/keys/`).
pub fn signature(data: &[u8]) {
    let _ = trusted_keys().verify(b"berth\n", data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = TrustedKeys::parse(text);
    }
}

/// A bundle's manifest.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::from_json(data) {
        // What berth writes must read back the same.
        let again = Manifest::from_json(&m.to_json()).expect("a manifest's own JSON reads back");
        assert_eq!(again, m);
    }
}

/// A channel index as a device reads it, then the device's pick from it.
pub fn channel_index(data: &[u8]) {
    let Ok(index) = ChannelIndex::from_json(data) else {
        return;
    };
    for version in ["0.0.1", "1.0.0", "2.3.4-rc.1"] {
        let version = ImageVersion::parse(version).expect("a valid version");
        for compatible in ["hello", "x86_64", ""] {
            for (position, now) in [(0, 0), (5000, 1_700_000_000), (9999, u64::MAX)] {
                let _ = index.plan(Running {
                    compatible,
                    version: &version,
                    position: Position::from_hundredths(position),
                    now,
                });
            }
        }
    }
}

/// A delta chunk index (`chunk-index/*.json`) past its signatures: the JSON,
/// the manifest it embeds and every rule between the two.
pub fn chunk_index(data: &[u8]) {
    let Ok(index) = serde_json::from_slice::<ChunkIndex>(data) else {
        return;
    };
    let Ok(manifest) = Manifest::from_json(index.manifest.as_bytes()) else {
        return;
    };
    let _ = index.validate(&manifest);
}

/// An OCI image manifest or image index, from a registry or a layout.
pub fn oci_manifest(data: &[u8]) {
    for arch in [berth_format::Arch::X86_64, berth_format::Arch::Arm64] {
        let _ = oci::manifest_step(data, "fuzz", arch, Path::new("fuzz"));
    }
}

/// An OCI image configuration: the container defaults berth takes from it.
pub fn oci_config(data: &[u8]) {
    if let Ok(config) = oci::read_config(data, Path::new("fuzz")) {
        let _ = oci::image_defaults(&config);
        let _ = config.rootfs().diff_ids().first();
        let _ = config.architecture().to_string();
    }
}

/// A container image layer: a tar unpacked into the image's tree (whiteouts,
/// links, owners, sizes), within the limits of one container.
pub fn layer_tar(data: &[u8]) {
    let dir = scratch().join("layer");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a staging folder");
    let mut tree = Tree::new(&dir);
    tree.set_limit(1 << 20);
    tree.set_entry_limit(1000);
    let _ = tree.unpack_layer(Cursor::new(data));
    // A second layer over the first: whiteouts and replacements.
    let half = &data[data.len() / 2..];
    let _ = tree.unpack_layer(Cursor::new(half));
}

/// A disk's GPT, as the init, the agent and `berth flash` read it; and its
/// repair from the backup copy.
pub fn gpt(data: &[u8]) {
    // The protective MBR (LBA 0) is not read: its first bit asks for both
    // tables' CRCs to be made right, so mutations get past the CRC checks.
    let data = if data.first().is_some_and(|b| b & 1 == 1) {
        sealed(data)
    } else {
        data.to_vec()
    };
    for block in [512, 4096] {
        let _ = gpt::read_table(&mut Cursor::new(&data), block);
    }
    let mut disk = Cursor::new(data);
    if gpt::repair_primary(&mut disk, 512).unwrap_or(false) {
        // A repaired table reads as the primary.
        let table = gpt::read_table(&mut disk, 512).expect("a repaired table reads");
        assert_eq!(table.copy, gpt::TableCopy::Primary);
    }
}

/// `disk` with the entry array CRC and header CRC of the tables at LBA 1
/// and at the last LBA (512-byte blocks) recomputed, where they fit.
fn sealed(disk: &[u8]) -> Vec<u8> {
    let mut disk = disk.to_vec();
    let blocks = disk.len() / 512;
    for lba in [1, blocks.saturating_sub(1)] {
        let at = lba * 512;
        if lba == 0 || at + 512 > disk.len() {
            continue;
        }
        let field = |d: &[u8], o: usize, n: usize| {
            d[at + o..at + o + n]
                .iter()
                .rev()
                .fold(0u64, |v, b| v << 8 | u64::from(*b))
        };
        let (entries_lba, count, size) = (
            field(&disk, 72, 8),
            field(&disk, 80, 4),
            field(&disk, 84, 4),
        );
        let start = usize::try_from(entries_lba.saturating_mul(512)).unwrap_or(usize::MAX);
        let len = usize::try_from(count * size).unwrap_or(usize::MAX);
        if let Some(entries) = disk.get(start..start.saturating_add(len)) {
            let crc = gpt::crc32(entries);
            disk[at + 88..at + 92].copy_from_slice(&crc.to_le_bytes());
        }
        let header_size = usize::try_from(field(&disk, 12, 4)).unwrap_or(0);
        if (92..=512).contains(&header_size) {
            gpt::seal_header(&mut disk[at..at + 512], header_size);
        }
    }
    disk
}

/// A boot entry file on the ESP: its first line is taken as the file name.
pub fn boot_entry(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (name, body) = text.split_once('\n').unwrap_or((&text, ""));
    let entry = EntryFile::parse(name, body);
    let _ = entry.id();
    let _ = entry.image_version();
    let _ = split_counter(name);
    if let Some((_, Some(counter))) = parse_slot_file_name(name) {
        let _ = counter.after_boot();
        let _ = counter.suffix();
    }
}

/// DHCP replies to the init's client: each piece is one datagram, with the
/// client's transaction id and MAC written in (a reply without them is
/// dropped before its options are read), between time steps that drive the
/// client through renewing, rebinding and expiry.
pub fn dhcp(data: &[u8]) {
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let mut client = dhcp::Client::new(mac, 7, Some("berth".into()));
    let mut now = Instant::now();
    let _ = client.poll(now);
    for piece in pieces(data) {
        let mut datagram = piece.to_vec();
        if datagram.len() >= 34 {
            datagram[4..8].copy_from_slice(&client.xid().to_be_bytes());
            datagram[28..34].copy_from_slice(&mac);
        }
        let _ = client.handle(&datagram, now);
        // The first byte of a piece picks how far the clock moves next.
        let step = match piece.first().map_or(0, |b| b % 4) {
            0 => Duration::ZERO,
            1 => Duration::from_secs(5),
            _ => client
                .next_wakeup()
                .map_or(Duration::ZERO, |at| at.saturating_duration_since(now)),
        };
        now += step;
        let _ = client.poll(now);
        if let Some(lease) = client.lease() {
            let _ = (lease.renew_at(), lease.rebind_at(), lease.expires_at());
        }
    }
}

/// An SNTP server's answer, checked against the request's time, and the
/// clock offset computed from a good one.
pub fn sntp(data: &[u8]) {
    let _ = ntp::parse(data, 0);
    let Some(origin) = data.get(24..32) else {
        return;
    };
    let sent = u64::from_be_bytes(origin.try_into().expect("8 bytes"));
    if let Ok(answer) = ntp::parse(data, sent) {
        for received in [0, sent, u64::MAX, answer.transmit] {
            let _ = ntp::offset_nanos(sent, &answer, received);
        }
    }
}

/// A Debian package (`.deb`): the `ar` archive, its control and data members
/// decompressed by their suffix, the data tar's entries read through.
pub fn deb(data: &[u8]) {
    let path = scratch().join("package.deb");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(data))
        .expect("the package file is written");
    let _ = deb::has_install_scripts(&path);
    let Ok(mut archive) = deb::data_tar(&path) else {
        return;
    };
    // Into a tree, as the builder unpacks a package, within its limits.
    let dir = scratch().join("deb");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a staging folder");
    let mut tree = Tree::new(&dir);
    tree.set_limit(1 << 20);
    tree.set_entry_limit(1000);
    let _ = tree.unpack_tar(&mut archive, false);
}
