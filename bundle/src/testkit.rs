//! Test kit for crates that read bundles (this one, the agent): bundles made here
//! with the `minisign` crate (an independent implementation of
//! the signature format) and a handmade ustar writer, so broken archives can be
//! crafted byte by byte.

use std::io::{self, Cursor, Read};

use sha2::{Digest, Sha256};

use crate::tar::{padding, parse_header};
use crate::*;

/// A ustar header block for a regular file.
pub fn header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

pub fn us(n: u64) -> usize {
    usize::try_from(n).unwrap()
}

pub fn push_member(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(&header(name, data.len() as u64));
    out.extend_from_slice(data);
    out.resize(out.len() + us(padding(data.len() as u64)), 0);
}

pub fn end_archive(out: &mut Vec<u8>) {
    out.resize(out.len() + 1024, 0);
}

/// Deterministic bytes that compress somewhat.
pub fn content(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|i| {
            if i % 7 < 3 {
                b'a' + u8::try_from(i % 13).unwrap()
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()[0]
            }
        })
        .collect()
}

pub struct Key {
    pair: minisign::KeyPair,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(test key)")
    }
}

impl Default for Key {
    fn default() -> Key {
        Key::new()
    }
}

impl Key {
    pub fn new() -> Key {
        Key {
            pair: minisign::KeyPair::generate_unencrypted_keypair().unwrap(),
        }
    }

    pub fn public_text(&self) -> String {
        self.pair.pk.to_box().unwrap().into_string()
    }

    pub fn trusted(&self) -> TrustedKeys {
        TrustedKeys::parse(&self.public_text()).unwrap()
    }

    pub fn sign(&self, data: &[u8]) -> String {
        minisign::sign(
            Some(&self.pair.pk),
            &self.pair.sk,
            Cursor::new(data),
            Some("timestamp:1700000000\tfile:manifest.json\thashed"),
            None,
        )
        .unwrap()
        .into_string()
    }
}

/// A bundle and what went into it.
#[derive(Debug)]
pub struct Made {
    pub bytes: Vec<u8>,
    pub manifest: Manifest,
    pub payloads: Vec<Vec<u8>>,
}

impl Made {
    /// Offset and length of a member's data in the archive.
    pub fn member(&self, name: &str) -> (usize, usize) {
        let mut at = 0;
        loop {
            let block: &[u8; 512] = self.bytes[at..at + 512].try_into().unwrap();
            let h = parse_header(block).unwrap().expect("member exists");
            let size = us(h.size);
            if h.name == name {
                return (at + 512, size);
            }
            at += 512 + size + us(padding(h.size));
        }
    }
}

pub fn manifest_for(payloads: &[Vec<u8>], stored: &[Vec<u8>]) -> Manifest {
    Manifest {
        format: BUNDLE_FORMAT,
        name: "hello".into(),
        compatible: "berth-hello".into(),
        version: "1.1.0".parse().unwrap(),
        architecture: berth_format::layout::ARCHITECTURE.into(),
        min_version: Some("1.0.0".parse().unwrap()),
        created: 1_700_000_000,
        title: "berth hello 1.1.0".into(),
        cmdline: "quiet".into(),
        verity: Some(VerityInfo {
            root_hash: "ab".repeat(32),
            salt: "01".repeat(32),
            data_blocks: 2,
            hash_offset: 2 * 4096,
        }),
        payloads: PayloadKind::ALL
            .iter()
            .zip(payloads.iter().zip(stored))
            .map(|(kind, (raw, packed))| PayloadInfo {
                kind: *kind,
                file: kind.member_name().into(),
                size: raw.len() as u64,
                sha256: hex::encode(Sha256::digest(raw)),
                stored_size: packed.len() as u64,
                stored_sha256: hex::encode(Sha256::digest(packed)),
            })
            .collect(),
    }
}

/// A well-formed bundle signed by `key`; `edit` may change the manifest first.
pub fn make_with(key: &Key, edit: impl FnOnce(&mut Manifest, &mut Vec<Vec<u8>>)) -> Made {
    let payloads = vec![content(1, 3 * 4096), content(2, 5000), content(3, 777)];
    let mut stored: Vec<Vec<u8>> = payloads
        .iter()
        .map(|p| zstd::encode_all(p.as_slice(), 19).unwrap())
        .collect();
    let mut manifest = manifest_for(&payloads, &stored);
    edit(&mut manifest, &mut stored);
    for (info, data) in manifest.payloads.iter_mut().zip(&stored) {
        info.stored_sha256 = hex::encode(Sha256::digest(data));
    }
    let json = manifest.to_json();
    let mut bytes = Vec::new();
    push_member(&mut bytes, MANIFEST_MEMBER, &json);
    push_member(&mut bytes, SIGNATURE_MEMBER, key.sign(&json).as_bytes());
    for (info, data) in manifest.payloads.iter().zip(&stored) {
        push_member(&mut bytes, &info.file, data);
    }
    end_archive(&mut bytes);
    Made {
        bytes,
        manifest,
        payloads,
    }
}

pub fn make(key: &Key) -> Made {
    make_with(key, |_, _| {})
}

/// The `BundleError` inside an `io::Error` a payload reader returned.
pub fn bundle_error(e: io::Error) -> BundleError {
    match e.into_inner().map(|inner| inner.downcast::<BundleError>()) {
        Some(Ok(b)) => *b,
        Some(Err(other)) => BundleError::Io(io::Error::other(other)),
        None => BundleError::Io(io::Error::other("io error without a cause")),
    }
}

/// Reads a whole bundle the way the device agent does; returns the payloads.
pub fn read_all(bytes: &[u8], keys: &TrustedKeys) -> Result<Vec<Vec<u8>>, BundleError> {
    let mut reader = BundleReader::open(bytes, keys)?;
    let mut out = Vec::new();
    while let Some(mut payload) = reader.next_payload()? {
        let mut data = Vec::new();
        payload.read_to_end(&mut data).map_err(bundle_error)?;
        payload.finish()?;
        out.push(data);
    }
    reader.finish()?;
    Ok(out)
}

/// Standard base64 with padding (independent of the crate's own).
pub fn encode64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A bundle of `payloads` (rootfs, kernel, initramfs) for compatible
/// `berth-hello` at `version`, written by the real writer and signed with
/// `key`, as `berth bundle` makes one.
pub fn bundle_signed_by(key: &SecretKey, version: &str, payloads: &[Vec<u8>]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut compressed: Vec<writer::CompressedPayload> = PayloadKind::ALL
        .iter()
        .zip(payloads)
        .map(|(kind, data)| {
            let level = match kind {
                PayloadKind::Rootfs => writer::ROOTFS_LEVEL,
                _ => writer::BOOT_FILES_LEVEL,
            };
            writer::compress(*kind, data.as_slice(), level, dir.path()).expect("compressed")
        })
        .collect();
    let mut manifest = manifest_for(payloads, payloads);
    manifest.version = version.parse().expect("a version");
    manifest.title = format!("berth hello {version}");
    manifest.min_version = None;
    let blocks = (payloads[0].len() as u64 / 4096).saturating_sub(1).max(1);
    if let Some(v) = manifest.verity.as_mut() {
        v.data_blocks = blocks;
        v.hash_offset = blocks * 4096;
    }
    manifest.payloads = compressed.iter().map(|p| p.info().clone()).collect();
    writer::write_bundle(Vec::new(), &manifest, key, &mut compressed).expect("a bundle")
}
