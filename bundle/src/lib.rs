//! Signed update bundles: the manifest, the trust anchors and the streaming reader
//! the device agent installs from.
//!
//! A bundle is a POSIX ustar archive with exactly these members, in this order:
//! `manifest.json`, `manifest.json.minisig` (a minisign signature of the manifest's
//! exact bytes), then one zstd-compressed member per payload in manifest order:
//! `rootfs.img.zst`, `vmlinuz.zst`, `initramfs.img.zst`. The archive ends with two
//! zero blocks. Anyone can check a bundle by hand with `tar xf` and
//! `minisign -Vm manifest.json -p KEY.pub`.
//!
//! [`BundleReader`] reads the archive front to back without seeking, so it works
//! on a download as it arrives: the signature is checked before any payload byte
//! is read, each payload is decompressed with its size capped at the manifest's and
//! hashed as it streams, and every member name, size and header checksum is
//! checked. Sizes of the manifest and signature members are capped, so a hostile
//! bundle cannot make the device allocate without bound.
//!
//! [`channel`] holds the signed channel index of an update repository.

pub mod channel;
#[doc(hidden)]
pub mod testkit;
pub mod version;

pub use version::{ImageVersion, VersionError};

use std::fmt;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use berth_format::layout::{VerityParams, VERITY_BLOCK_SIZE};

/// Version of the bundle format this crate reads and writes.
pub const BUNDLE_FORMAT: u32 = 1;
/// Name of the first member: the manifest.
pub const MANIFEST_MEMBER: &str = "manifest.json";
/// Name of the second member: the manifest's minisign signature.
pub const SIGNATURE_MEMBER: &str = "manifest.json.minisig";
/// Largest manifest member accepted.
pub const MAX_MANIFEST_SIZE: u64 = 1024 * 1024;
/// Largest signature member accepted.
pub const MAX_SIGNATURE_SIZE: u64 = 4096;
/// Size of a tar block.
pub const TAR_BLOCK: u64 = 512;
/// Largest zstd window a payload may ask for: the decoder allocates its window up
/// front, so this bounds the memory a hostile payload can claim. The levels
/// `berth bundle` uses need at most 8 MiB.
pub const MAX_ZSTD_WINDOW: u64 = 32 * 1024 * 1024;
/// log2 of [`MAX_ZSTD_WINDOW`], the decoder's own limit (the frame header is
/// checked first, for a clearer error).
const MAX_ZSTD_WINDOW_LOG: u32 = 25;
/// Read-ahead between a payload member and the zstd decoder.
const DECODER_BUFFER: usize = 128 * 1024;
/// Zero bytes tolerated after the end-of-archive marker (a tar record's padding).
const MAX_TRAILING_ZEROS: u64 = 20 * TAR_BLOCK;

/// Failure reading, checking or verifying a bundle, or loading trusted keys.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle could not be read.
    #[error("reading the bundle: {0}")]
    Io(#[source] io::Error),
    /// A trusted key file or folder could not be read.
    #[error("reading trusted keys {path}: {source}")]
    KeyIo { path: PathBuf, source: io::Error },
    /// A trusted key is not a minisign public key.
    #[error("{origin}: not a minisign public key ({reason})")]
    BadKey { origin: String, reason: String },
    /// The archive does not start like a bundle.
    #[error("not a berth bundle: {0}")]
    NotABundle(String),
    /// The archive ends early.
    #[error("bundle is truncated: it ends {0}")]
    Truncated(String),
    /// The tar structure is broken or holds something a bundle never does.
    #[error("bundle archive is malformed: {0}")]
    Malformed(String),
    /// The manifest or signature member is larger than allowed.
    #[error("bundle member {name} is {size} bytes, more than the {limit} allowed")]
    TooLarge { name: String, size: u64, limit: u64 },
    /// The signature member is not a minisign signature.
    #[error("bundle signature is malformed: {0}")]
    BadSignatureFormat(String),
    /// The signature names a key that is not trusted.
    #[error("bundle is signed by key {key_id} which is not one of the trusted keys ({trusted})")]
    UntrustedKey { key_id: String, trusted: String },
    /// The signature does not match the manifest.
    #[error("bundle signature does not verify: the manifest or its signature was altered")]
    SignatureMismatch,
    /// The manifest does not parse or breaks a rule.
    #[error("bundle manifest is invalid: {0}")]
    InvalidManifest(String),
    /// A payload's bytes do not have the manifest's digest.
    #[error("payload {file}: sha256 mismatch (expected {expected}, got {actual})")]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    /// A payload's compressed member does not have the manifest's digest.
    #[error("payload {file}: sha256 mismatch of the compressed data (expected {expected}, got {actual})")]
    StoredHashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    /// A payload is damaged: wrong size, bad compressed data, trailing bytes.
    #[error("payload {file}: {reason}")]
    Payload { file: String, reason: String },
    /// The next payload was asked for before the previous one was finished.
    #[error("payload {0} was not finished before the next member was read")]
    Unfinished(String),
    /// Something follows the last payload.
    #[error("bundle has an extra member {0:?} after the last payload")]
    ExtraMember(String),
}

impl BundleError {
    fn into_io(self) -> io::Error {
        match self {
            BundleError::Truncated(_) => io::Error::new(io::ErrorKind::UnexpectedEof, self),
            _ => io::Error::new(io::ErrorKind::InvalidData, self),
        }
    }

    /// The `BundleError` inside an `io::Error` a [`PayloadReader`] returned, if any.
    pub fn from_io(error: &io::Error) -> Option<&BundleError> {
        error.get_ref()?.downcast_ref::<BundleError>()
    }
}

/// What a payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// The slot's root filesystem: squashfs, zero padding to 4096 bytes and the
    /// dm-verity hash tree.
    Rootfs,
    /// The slot's kernel, installed on the ESP.
    Kernel,
    /// The slot's initramfs, installed on the ESP.
    Initramfs,
}

impl PayloadKind {
    /// Every kind, in the order payloads appear in a bundle.
    pub const ALL: [PayloadKind; 3] = [
        PayloadKind::Rootfs,
        PayloadKind::Kernel,
        PayloadKind::Initramfs,
    ];

    /// The tar member name of this payload: `rootfs.img.zst`, …
    pub fn member_name(self) -> &'static str {
        match self {
            PayloadKind::Rootfs => "rootfs.img.zst",
            PayloadKind::Kernel => "vmlinuz.zst",
            PayloadKind::Initramfs => "initramfs.img.zst",
        }
    }
}

impl fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PayloadKind::Rootfs => "rootfs",
            PayloadKind::Kernel => "kernel",
            PayloadKind::Initramfs => "initramfs",
        })
    }
}

/// One payload of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadInfo {
    pub kind: PayloadKind,
    /// Tar member name, e.g. `rootfs.img.zst`.
    pub file: String,
    /// Uncompressed bytes: what is written to the slot or the ESP.
    pub size: u64,
    /// sha256 of the uncompressed bytes, lowercase hex.
    pub sha256: String,
    /// Compressed bytes in the bundle.
    pub stored_size: u64,
    /// sha256 of the compressed bytes, lowercase hex: a decompressor may ignore
    /// some bits of its input, this catches a change to any of them.
    pub stored_sha256: String,
}

/// dm-verity parameters of the rootfs payload (see [`VerityParams`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityInfo {
    /// Root hash, lowercase hex.
    pub root_hash: String,
    /// Salt, lowercase hex (empty for none).
    pub salt: String,
    /// 4096-byte data blocks covered.
    pub data_blocks: u64,
    /// Byte offset of the hash tree in the slot.
    pub hash_offset: u64,
}

impl From<VerityParams> for VerityInfo {
    fn from(p: VerityParams) -> VerityInfo {
        VerityInfo {
            root_hash: p.root_hash,
            salt: p.salt,
            data_blocks: p.data_blocks,
            hash_offset: p.hash_offset,
        }
    }
}

impl From<VerityInfo> for VerityParams {
    fn from(v: VerityInfo) -> VerityParams {
        VerityParams {
            root_hash: v.root_hash,
            salt: v.salt,
            data_blocks: v.data_blocks,
            hash_offset: v.hash_offset,
        }
    }
}

/// The signed description of a bundle (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format: u32,
    /// Image name.
    pub name: String,
    /// Devices accept only bundles with their own compatible string.
    pub compatible: String,
    /// Image version (semantic versioning).
    pub version: ImageVersion,
    /// [`berth_format::layout::ARCHITECTURE`].
    pub architecture: String,
    /// Lowest running version this bundle may update from.
    pub min_version: Option<ImageVersion>,
    /// Unix seconds: the image's build epoch.
    pub created: u64,
    /// Boot entry title, e.g. `berth hello 1.1.0`.
    pub title: String,
    /// The entry's extra (recipe) kernel command line.
    pub cmdline: String,
    /// dm-verity parameters of the rootfs payload, when it has a hash tree.
    pub verity: Option<VerityInfo>,
    /// Exactly rootfs, kernel and initramfs, in that order.
    pub payloads: Vec<PayloadInfo>,
}

impl Manifest {
    /// The manifest's bytes as they go into a bundle: pretty JSON, fields in
    /// declaration order, one trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// Parses and validates a manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::InvalidManifest(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every rule a manifest must follow.
    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |reason: String| Err(BundleError::InvalidManifest(reason));
        if self.format != BUNDLE_FORMAT {
            return bad(format!(
                "format {} is not supported (this berth reads format {BUNDLE_FORMAT})",
                self.format
            ));
        }
        for (field, value) in [
            ("name", &self.name),
            ("compatible", &self.compatible),
            ("architecture", &self.architecture),
            ("title", &self.title),
        ] {
            if value.trim().is_empty() {
                return bad(format!("{field} is empty"));
            }
            if value.chars().any(char::is_control) {
                return bad(format!("{field} holds a control character"));
            }
        }
        if self.cmdline.chars().any(char::is_control) {
            return bad("cmdline holds a control character".into());
        }
        // version and min_version are semantic versions by their type.
        let kinds: Vec<PayloadKind> = self.payloads.iter().map(|p| p.kind).collect();
        if kinds != PayloadKind::ALL {
            return bad(format!(
                "payloads must be exactly rootfs, kernel, initramfs in that order, not {}",
                kinds
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for p in &self.payloads {
            if p.file != p.kind.member_name() {
                return bad(format!(
                    "the {} payload must be stored as {}, not {:?}",
                    p.kind,
                    p.kind.member_name(),
                    p.file
                ));
            }
            if p.size == 0 || p.stored_size == 0 {
                return bad(format!("payload {} is empty", p.file));
            }
            for (field, value) in [("sha256", &p.sha256), ("stored_sha256", &p.stored_sha256)] {
                if !is_lower_hex(value, 64) {
                    return bad(format!(
                        "payload {}: {field} {value:?} is not 64 lowercase hex digits",
                        p.file
                    ));
                }
            }
        }
        if let Some(v) = &self.verity {
            let rootfs = &self.payloads[0];
            if !is_lower_hex(&v.root_hash, 64) {
                return bad("verity root_hash is not 64 lowercase hex digits".into());
            }
            if !is_lower_hex(&v.salt, v.salt.len()) || v.salt.len() % 2 != 0 {
                return bad("verity salt is not lowercase hex bytes".into());
            }
            if v.data_blocks == 0
                || v.hash_offset != v.data_blocks.saturating_mul(VERITY_BLOCK_SIZE)
                || rootfs.size < v.hash_offset
                || rootfs.size % VERITY_BLOCK_SIZE != 0
            {
                return bad(format!(
                    "verity parameters (data_blocks {}, hash_offset {}) do not fit the rootfs payload ({} bytes)",
                    v.data_blocks, v.hash_offset, rootfs.size
                ));
            }
        }
        Ok(())
    }

    /// The payload of a kind.
    pub fn payload(&self, kind: PayloadKind) -> Option<&PayloadInfo> {
        self.payloads.iter().find(|p| p.kind == kind)
    }
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The minisign key id of an 8-byte key number: 16 uppercase hex digits of the
/// number read little-endian, as `minisign` prints it.
pub fn key_id(keynum: [u8; 8]) -> String {
    format!("{:016X}", u64::from_le_bytes(keynum))
}

/// A decoder for the standard base64 alphabet with padding, enough for minisign's
/// key and signature lines.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len() % 4 != 0 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i + 1 == bytes.len() / 4;
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for c in &chunk[..4 - pad] {
            n = (n << 6) | value(*c)?;
        }
        n <<= 6 * pad;
        let [_, a, b, c] = n.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..3 - pad]);
    }
    Some(out)
}

/// The key number named by a minisign signature or public key line.
fn keynum_of(line: &str, expected_len: usize) -> Option<[u8; 8]> {
    let raw = base64_decode(line)?;
    if raw.len() != expected_len {
        return None;
    }
    raw[2..10].try_into().ok()
}

/// One trusted minisign public key.
#[derive(Debug, Clone)]
struct TrustedKey {
    id: String,
    key: minisign_verify::PublicKey,
}

/// The update trust anchors: minisign public keys.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

impl TrustedKeys {
    /// Every `*.pub` file in `dir`, in name order. An empty folder gives an empty
    /// set (which verifies nothing).
    pub fn load_dir(dir: &Path) -> Result<TrustedKeys, BundleError> {
        let io_err = |source| BundleError::KeyIo {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            if path.extension().is_some_and(|e| e == "pub") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut out = TrustedKeys::default();
        for path in paths {
            out.extend(TrustedKeys::load_file(&path)?);
        }
        Ok(out)
    }

    /// One minisign `.pub` file.
    pub fn load_file(path: &Path) -> Result<TrustedKeys, BundleError> {
        let text = std::fs::read_to_string(path).map_err(|source| BundleError::KeyIo {
            path: path.to_path_buf(),
            source,
        })?;
        TrustedKeys::parse_named(&text, &path.display().to_string())
    }

    /// The text of one minisign `.pub` file: an `untrusted comment:` line, then the
    /// base64 key line.
    pub fn parse(text: &str) -> Result<TrustedKeys, BundleError> {
        TrustedKeys::parse_named(text, "public key")
    }

    fn parse_named(text: &str, origin: &str) -> Result<TrustedKeys, BundleError> {
        let bad = |reason: &str| BundleError::BadKey {
            origin: origin.to_string(),
            reason: reason.to_string(),
        };
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().ok_or_else(|| bad("the file is empty"))?;
        let key_line = if first.starts_with("untrusted comment:") {
            lines
                .next()
                .ok_or_else(|| bad("no key line after the comment"))?
        } else {
            first
        };
        if lines.next().is_some() {
            return Err(bad("more than one key line"));
        }
        let key_line = key_line.trim();
        let keynum =
            keynum_of(key_line, 42).ok_or_else(|| bad("the key line is not 42 bytes of base64"))?;
        let key = minisign_verify::PublicKey::from_base64(key_line)
            .map_err(|e| bad(&format!("{e:?}")))?;
        Ok(TrustedKeys {
            keys: vec![TrustedKey {
                id: key_id(keynum),
                key,
            }],
        })
    }

    /// Adds the keys of `other`.
    pub fn extend(&mut self, other: TrustedKeys) {
        for key in other.keys {
            if !self.keys.iter().any(|k| k.id == key.id && k.key == key.key) {
                self.keys.push(key);
            }
        }
    }

    /// Whether there are no keys (then no bundle verifies).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, minisign style (16 uppercase hex digits).
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// Checks a minisign signature file (`signature`, pre-hashed `ED`) over the
    /// exact bytes of `data` with one of these keys. Returns the signing key's id
    /// and the signature's trusted comment (both covered by the signature).
    /// The errors are [`BundleError::BadSignatureFormat`],
    /// [`BundleError::UntrustedKey`] and [`BundleError::SignatureMismatch`].
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> Result<Verified, BundleError> {
        let signature = parse_signature(signature)?;
        self.verify_parsed(data, &signature)?;
        Ok(Verified {
            key_id: signature.key_id,
            trusted_comment: signature.trusted_comment,
        })
    }

    fn verify_parsed(&self, data: &[u8], signature: &ParsedSignature) -> Result<(), BundleError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == signature.key_id)
            .ok_or_else(|| BundleError::UntrustedKey {
                key_id: signature.key_id.clone(),
                trusted: if self.is_empty() {
                    "no trusted keys are installed".into()
                } else {
                    format!("trusted: {}", self.key_ids().join(", "))
                },
            })?;
        key.key
            .verify(data, &signature.signature, false)
            .map_err(|_| BundleError::SignatureMismatch)
    }
}

/// What a good signature said (see [`TrustedKeys::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signing key's id (16 uppercase hex digits).
    pub key_id: String,
    /// The signature's trusted comment.
    pub trusted_comment: String,
}

/// A parsed minisign signature file.
struct ParsedSignature {
    key_id: String,
    trusted_comment: String,
    signature: minisign_verify::Signature,
}

fn parse_signature(bytes: &[u8]) -> Result<ParsedSignature, BundleError> {
    let bad = |reason: &str| BundleError::BadSignatureFormat(reason.to_string());
    let text = std::str::from_utf8(bytes).map_err(|_| bad("it is not UTF-8 text"))?;
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != 4 {
        return Err(bad(&format!(
            "a minisign signature has 4 lines, this one {}",
            lines.len()
        )));
    }
    if !lines[0].starts_with("untrusted comment:") {
        return Err(bad("the first line is not an untrusted comment"));
    }
    let keynum = keynum_of(lines[1], 74)
        .ok_or_else(|| bad("the signature line is not 74 bytes of base64"))?;
    let raw = base64_decode(lines[1]).unwrap_or_default();
    if raw.get(..2) != Some(b"ED".as_slice()) {
        return Err(bad(
            "the signature is not a pre-hashed ed25519 signature (algorithm ED)",
        ));
    }
    let signature = minisign_verify::Signature::decode(text).map_err(|e| bad(&format!("{e:?}")))?;
    Ok(ParsedSignature {
        key_id: key_id(keynum),
        trusted_comment: signature.trusted_comment().to_string(),
        signature,
    })
}

/// A ustar member header, as far as a bundle needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemberHeader {
    name: String,
    size: u64,
}

/// Parses an octal tar number field (digits, then NUL or space padding).
fn octal(field: &[u8]) -> Option<u64> {
    let digits: &[u8] = {
        let start = field.iter().position(|b| *b != b' ')?;
        let rest = &field[start..];
        let end = rest
            .iter()
            .position(|b| *b == 0 || *b == b' ')
            .unwrap_or(rest.len());
        if rest[end..].iter().any(|b| *b != 0 && *b != b' ') {
            return None;
        }
        &rest[..end]
    };
    if digits.is_empty() || digits.len() > 11 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| match d {
        b'0'..=b'7' => Some(n * 8 + u64::from(d - b'0')),
        _ => None,
    })
}

/// Parses one header block; `None` for a zero block (end of archive).
fn parse_header(block: &[u8; 512]) -> Result<Option<MemberHeader>, BundleError> {
    if block.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let bad = |reason: String| BundleError::Malformed(reason);
    let stored = octal(&block[148..156])
        .ok_or_else(|| bad("a member header has an unreadable checksum".into()))?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(*b)
            }
        })
        .sum();
    if sum != stored {
        return Err(bad(format!(
            "a member header's checksum is wrong (stored {stored}, computed {sum}): the header was altered"
        )));
    }
    if &block[257..263] != b"ustar\0" || &block[263..265] != b"00" {
        return Err(bad("a member header is not POSIX ustar".into()));
    }
    let name_field = &block[0..100];
    let end = name_field.iter().position(|b| *b == 0).unwrap_or(100);
    if name_field[end..].iter().any(|b| *b != 0) || block[345..500].iter().any(|b| *b != 0) {
        return Err(bad("a member name is not a plain short name".into()));
    }
    let name = std::str::from_utf8(&name_field[..end])
        .map_err(|_| bad("a member name is not UTF-8".into()))?
        .to_string();
    if name.is_empty() || name.contains('/') || name.chars().any(|c| c.is_control()) {
        return Err(bad(format!(
            "member name {name:?} is not a plain file name"
        )));
    }
    if !matches!(block[156], b'0' | 0) {
        return Err(bad(format!(
            "member {name} is not a regular file (type {:?})",
            char::from(block[156])
        )));
    }
    let size = octal(&block[124..136])
        .ok_or_else(|| bad(format!("member {name} has an unreadable size")))?;
    Ok(Some(MemberHeader { name, size }))
}

/// Padding after a member of `size` bytes up to the next block.
fn padding(size: u64) -> u64 {
    (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK
}

/// The archive being read: the source and how far into it we are.
#[derive(Debug)]
struct Archive<R> {
    reader: R,
    /// Bytes read so far.
    offset: u64,
    /// The payload handed out and not finished yet.
    open_payload: Option<String>,
}

/// Why the member being streamed could not be read, kept beside the decompressor
/// because it turns the errors of its source into plain text.
type Failure = Arc<Mutex<Option<BundleError>>>;

fn take_failure(failure: &Failure) -> Option<BundleError> {
    failure.lock().unwrap_or_else(|e| e.into_inner()).take()
}

fn set_failure(failure: &Failure, error: BundleError) {
    *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
}

impl<R: Read> Archive<R> {
    /// Fills `buf` as far as the source goes; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, BundleError> {
        let mut got = 0;
        while got < buf.len() {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BundleError::Io(e)),
            }
        }
        self.offset += got as u64;
        Ok(got)
    }

    /// Reads a header block. `what` says where the bundle ends if it is cut here.
    fn header(&mut self, what: &str) -> Result<Option<MemberHeader>, BundleError> {
        let mut block = [0u8; 512];
        let got = self.read_full(&mut block)?;
        if got < block.len() {
            return Err(BundleError::Truncated(format!(
                "{what} (got {got} of 512 header bytes)"
            )));
        }
        parse_header(&block)
    }

    /// Reads a whole small member and its padding.
    fn small_member(&mut self, header: &MemberHeader, limit: u64) -> Result<Vec<u8>, BundleError> {
        if header.size > limit {
            return Err(BundleError::TooLarge {
                name: header.name.clone(),
                size: header.size,
                limit,
            });
        }
        let mut data = vec![0u8; usize::try_from(header.size).unwrap_or(usize::MAX)];
        let got = self.read_full(&mut data)?;
        if got < data.len() {
            return Err(BundleError::Truncated(format!(
                "inside {} (got {got} of {} bytes)",
                header.name, header.size
            )));
        }
        self.padding(&header.name, header.size)?;
        Ok(data)
    }

    /// Reads and checks the zero padding after a member.
    fn padding(&mut self, name: &str, size: u64) -> Result<(), BundleError> {
        let mut pad = [0u8; 512];
        let want = usize::try_from(padding(size)).unwrap_or(0);
        let got = self.read_full(&mut pad[..want])?;
        if got < want {
            return Err(BundleError::Truncated(format!(
                "in the padding after {name}"
            )));
        }
        if pad[..want].iter().any(|b| *b != 0) {
            return Err(BundleError::Malformed(format!(
                "the padding after {name} is not zeros"
            )));
        }
        Ok(())
    }
}

/// Reads a bundle front to back: [`open`](BundleReader::open) checks the
/// signature and the manifest, [`next_payload`](BundleReader::next_payload) streams
/// each payload, [`finish`](BundleReader::finish) checks the end of the archive.
pub struct BundleReader<R: Read> {
    archive: Archive<R>,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signature_key_id: String,
    trusted_comment: String,
    verified: bool,
    /// Whether each payload's stored (compressed) bytes are hashed and checked
    /// against `stored_sha256`, besides the decompressed bytes against `sha256`.
    stored_digests: bool,
    /// Index of the next payload in the manifest.
    next: usize,
}

impl<R: Read> fmt::Debug for BundleReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleReader")
            .field("manifest", &self.manifest)
            .field("signature_key_id", &self.signature_key_id)
            .field("verified", &self.verified)
            .field("offset", &self.archive.offset)
            .field("next", &self.next)
            .finish()
    }
}

/// Whether [`BundleReader::read_head`] checks the signature.
enum Check<'k> {
    Signature(&'k TrustedKeys),
    Unverified,
}

impl<R: Read> BundleReader<R> {
    /// Reads manifest + signature, verifies the signature (over the exact manifest
    /// bytes) with a key in `keys`, then parses and validates the manifest. Nothing
    /// after the signature is read.
    pub fn open(reader: R, keys: &TrustedKeys) -> Result<BundleReader<R>, BundleError> {
        BundleReader::read_head(reader, Check::Signature(keys))
    }

    /// Same without checking the signature (for `inspect` without a key); the
    /// signature must still be well-formed, and names the signing key id.
    pub fn open_unverified(reader: R) -> Result<BundleReader<R>, BundleError> {
        BundleReader::read_head(reader, Check::Unverified)
    }

    fn read_head(reader: R, check: Check<'_>) -> Result<BundleReader<R>, BundleError> {
        let mut archive = Archive {
            reader,
            offset: 0,
            open_payload: None,
        };
        let first = match archive.header("inside the header of its first member") {
            Err(BundleError::Malformed(reason)) => {
                return Err(BundleError::NotABundle(format!(
                    "it does not start with a tar header ({reason})"
                )))
            }
            other => other?,
        };
        let first = first.ok_or_else(|| BundleError::NotABundle("the archive is empty".into()))?;
        if first.name != MANIFEST_MEMBER {
            return Err(BundleError::NotABundle(format!(
                "first member is {} (expected {MANIFEST_MEMBER})",
                first.name
            )));
        }
        let manifest_bytes = archive.small_member(&first, MAX_MANIFEST_SIZE)?;
        let second = archive
            .header(&format!("after {MANIFEST_MEMBER}, before its signature"))?
            .ok_or_else(|| {
                BundleError::NotABundle(format!("{MANIFEST_MEMBER} is not followed by a signature"))
            })?;
        if second.name != SIGNATURE_MEMBER {
            return Err(BundleError::NotABundle(format!(
                "second member is {} (expected {SIGNATURE_MEMBER})",
                second.name
            )));
        }
        let signature_bytes = archive.small_member(&second, MAX_SIGNATURE_SIZE)?;
        let signature = parse_signature(&signature_bytes)?;
        let verified = match check {
            Check::Unverified => false,
            Check::Signature(keys) => {
                keys.verify_parsed(&manifest_bytes, &signature)?;
                true
            }
        };
        let manifest = Manifest::from_json(&manifest_bytes)?;
        Ok(BundleReader {
            archive,
            manifest,
            manifest_bytes,
            signature_key_id: signature.key_id,
            trusted_comment: signature.trusted_comment,
            verified,
            stored_digests: true,
            next: 0,
        })
    }

    /// Stops checking the payloads' `stored_sha256` (the digest of their
    /// compressed bytes); `sha256`, over what they decompress to, is still
    /// checked. For installing: the stored digest only catches changed bits the
    /// decoder ignores, which cannot change what is written, and hashing the
    /// compressed stream too costs a device a second sha256 pass.
    pub fn without_stored_digests(mut self) -> Self {
        self.stored_digests = false;
        self
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's exact bytes (what the signature covers).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The key id named in the signature (16 uppercase hex digits).
    pub fn signature_key_id(&self) -> &str {
        &self.signature_key_id
    }

    /// The signature's trusted comment (covered by the signature when verified).
    pub fn trusted_comment(&self) -> &str {
        &self.trusted_comment
    }

    /// Whether the signature was checked against a trusted key.
    pub fn verified(&self) -> bool {
        self.verified
    }

    /// Bytes of the bundle read so far.
    pub fn offset(&self) -> u64 {
        self.archive.offset
    }

    /// The next payload in manifest order; checks the tar member name and stored
    /// size against the manifest. `None` after the last one.
    pub fn next_payload(&mut self) -> Result<Option<PayloadReader<'_, R>>, BundleError> {
        if let Some(name) = &self.archive.open_payload {
            return Err(BundleError::Unfinished(name.clone()));
        }
        let Some(info) = self.manifest.payloads.get(self.next).cloned() else {
            return Ok(None);
        };
        let previous = match self.next {
            0 => SIGNATURE_MEMBER,
            n => &self.manifest.payloads[n - 1].file,
        };
        let header = self
            .archive
            .header(&format!("after {previous}, before {}", info.file))?
            .ok_or_else(|| {
                BundleError::Truncated(format!(
                    "after {previous}: the archive ends without {}",
                    info.file
                ))
            })?;
        if header.name != info.file {
            return Err(BundleError::Malformed(format!(
                "member {} where the manifest has {}",
                header.name, info.file
            )));
        }
        if header.size != info.stored_size {
            return Err(BundleError::Malformed(format!(
                "member {} is {} bytes, the manifest says {}",
                header.name, header.size, info.stored_size
            )));
        }
        self.next += 1;
        self.archive.open_payload = Some(info.file.clone());
        let failure = Failure::default();
        let member = MemberReader {
            archive: &mut self.archive,
            name: info.file.clone(),
            size: info.stored_size,
            remaining: info.stored_size,
            hasher: self.stored_digests.then(Sha256::new),
            failure: Arc::clone(&failure),
        };
        let mut member = member;
        let head = zstd_frame_header(&mut member)?;
        let input = BufReader::with_capacity(DECODER_BUFFER, io::Cursor::new(head).chain(member));
        let decoder = zstd::stream::read::Decoder::with_buffer(input)
            .and_then(|mut decoder| {
                decoder.window_log_max(MAX_ZSTD_WINDOW_LOG)?;
                Ok(decoder.single_frame())
            })
            .map_err(|e| {
                take_failure(&failure).unwrap_or(BundleError::Payload {
                    file: info.file.clone(),
                    reason: format!("not zstd-compressed data: {e}"),
                })
            })?;
        Ok(Some(PayloadReader {
            info,
            decoder,
            failure,
            hasher: Sha256::new(),
            produced: 0,
            ended: false,
        }))
    }

    /// After the last payload: the archive must end cleanly (two zero blocks),
    /// with no extra members.
    pub fn finish(mut self) -> Result<(), BundleError> {
        if let Some(name) = &self.archive.open_payload {
            return Err(BundleError::Unfinished(name.clone()));
        }
        if let Some(missing) = self.manifest.payloads.get(self.next) {
            return Err(BundleError::Payload {
                file: missing.file.clone(),
                reason: "was never read".into(),
            });
        }
        let last = self
            .manifest
            .payloads
            .last()
            .map_or(SIGNATURE_MEMBER, |p| p.file.as_str())
            .to_string();
        for _ in 0..2 {
            if let Some(extra) = self
                .archive
                .header(&format!("after {last}, before the end-of-archive marker"))?
            {
                return Err(BundleError::ExtraMember(extra.name));
            }
        }
        // A tar record may be padded with zeros; nothing else may follow.
        let mut rest = [0u8; 512];
        let mut trailing = 0u64;
        loop {
            let got = self.archive.read_full(&mut rest)?;
            if rest[..got].iter().any(|b| *b != 0) {
                return Err(BundleError::Malformed(
                    "data follows the end-of-archive marker".into(),
                ));
            }
            trailing += got as u64;
            if got < rest.len() {
                return Ok(());
            }
            if trailing > MAX_TRAILING_ZEROS {
                return Err(BundleError::Malformed(
                    "too much data follows the end-of-archive marker".into(),
                ));
            }
        }
    }
}

/// The compressed bytes of one tar member.
struct MemberReader<'a, R> {
    archive: &'a mut Archive<R>,
    name: String,
    size: u64,
    remaining: u64,
    /// None when stored digests are not checked.
    hasher: Option<Sha256>,
    failure: Failure,
}

impl<R: Read> Read for MemberReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = loop {
            match self.archive.reader.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let kind = e.kind();
                    set_failure(&self.failure, BundleError::Io(e));
                    return Err(io::Error::new(kind, "reading the bundle failed"));
                }
                Ok(n) => break n,
            }
        };
        if n == 0 {
            let error = BundleError::Truncated(format!(
                "inside {} (got {} of {} bytes)",
                self.name,
                self.size - self.remaining,
                self.size
            ));
            let message = error.to_string();
            set_failure(&self.failure, error);
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, message));
        }
        self.archive.offset += n as u64;
        self.remaining -= n as u64;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Reads the zstd frame header at the start of a payload member and returns its
/// bytes, refusing anything but one plain frame with a window of at most
/// [`MAX_ZSTD_WINDOW`].
fn zstd_frame_header<R: Read>(member: &mut MemberReader<'_, R>) -> Result<Vec<u8>, BundleError> {
    let name = member.name.clone();
    let bad = |reason: String| BundleError::Payload {
        file: name.clone(),
        reason,
    };
    let mut head = vec![0u8; 5];
    let read = |member: &mut MemberReader<'_, R>, buf: &mut [u8]| {
        member.read_exact(buf).map_err(|_| {
            take_failure(&member.failure).unwrap_or_else(|| BundleError::Payload {
                file: member.name.clone(),
                reason: "the compressed data ends inside its zstd frame header".into(),
            })
        })
    };
    read(member, &mut head)?;
    if head[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(bad("not zstd-compressed data".into()));
    }
    let descriptor = head[4];
    let single_segment = descriptor & 0x20 != 0;
    let dictionary = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let content_size_len = match descriptor >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    head.resize(
        5 + usize::from(!single_segment) + dictionary + content_size_len,
        0,
    );
    read(member, &mut head[5..])?;
    if dictionary != 0 {
        return Err(bad("the zstd frame needs a dictionary".into()));
    }
    let window = if single_segment {
        let size = head[5..]
            .iter()
            .rev()
            .fold(0u64, |n, b| (n << 8) | u64::from(*b));
        if content_size_len == 2 {
            size + 256
        } else {
            size
        }
    } else {
        let exponent = u32::from(head[5] >> 3);
        let base = 1u64 << (10 + exponent);
        base + (base >> 3) * u64::from(head[5] & 7)
    };
    if window > MAX_ZSTD_WINDOW {
        return Err(bad(format!(
            "the zstd frame asks for a {window}-byte window, more than the {MAX_ZSTD_WINDOW} allowed"
        )));
    }
    Ok(head)
}

/// The zstd decoder (libzstd) over a payload member, after its frame header was
/// read to check it.
type PayloadDecoder<'a, R> = zstd::stream::read::Decoder<
    'static,
    BufReader<io::Chain<io::Cursor<Vec<u8>>, MemberReader<'a, R>>>,
>;

/// One payload, decompressed as it is read (`impl Read`), hashed on the way.
///
/// Reading fails (with an `io::Error` wrapping a [`BundleError`], see
/// [`BundleError::from_io`]) as soon as more than the manifest's size comes out,
/// the data ends early, or the bundle is cut. [`finish`](PayloadReader::finish)
/// checks the size and digest once everything was read.
pub struct PayloadReader<'a, R: Read> {
    info: PayloadInfo,
    decoder: PayloadDecoder<'a, R>,
    failure: Failure,
    hasher: Sha256,
    produced: u64,
    ended: bool,
}

impl<R: Read> fmt::Debug for PayloadReader<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadReader")
            .field("info", &self.info)
            .field("produced", &self.produced)
            .field("ended", &self.ended)
            .finish()
    }
}

impl<R: Read> PayloadReader<'_, R> {
    /// The manifest's entry for this payload.
    pub fn info(&self) -> &PayloadInfo {
        &self.info
    }

    fn error(&self, reason: String) -> BundleError {
        BundleError::Payload {
            file: self.info.file.clone(),
            reason,
        }
    }

    /// One decoder read, with errors turned into `BundleError`s.
    fn decode(&mut self, buf: &mut [u8]) -> Result<usize, BundleError> {
        loop {
            match self.decoder.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(take_failure(&self.failure).unwrap_or_else(|| {
                        self.error(format!("the compressed data is corrupt: {e}"))
                    }));
                }
            }
        }
    }

    fn read_checked(&mut self, buf: &mut [u8]) -> Result<usize, BundleError> {
        if self.ended || buf.is_empty() {
            return Ok(0);
        }
        // Never let more than one byte past the declared size out of the decoder.
        let room = self.info.size - self.produced;
        let want = usize::try_from(room.saturating_add(1)).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.decode(&mut buf[..want])?;
        if n == 0 {
            self.ended = true;
            if self.produced != self.info.size {
                return Err(self.error(format!(
                    "the compressed data ends after {} of {} bytes",
                    self.produced, self.info.size
                )));
            }
            return Ok(0);
        }
        if n as u64 > room {
            return Err(self.error(format!(
                "decompresses to more than the manifest's {} bytes",
                self.info.size
            )));
        }
        self.produced += n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    /// Checks the size and sha256 and that the compressed member was consumed
    /// exactly, then reads the member's tar padding. Call it after reading to EOF;
    /// it reads only to confirm the end of the compressed data.
    pub fn finish(mut self) -> Result<(), BundleError> {
        if !self.ended {
            if self.produced != self.info.size {
                return Err(self.error(format!(
                    "only {} of {} bytes were read before finishing",
                    self.produced, self.info.size
                )));
            }
            let mut probe = [0u8; 1];
            if self.read_checked(&mut probe)? != 0 {
                return Err(self.error(format!(
                    "decompresses to more than the manifest's {} bytes",
                    self.info.size
                )));
            }
        }
        let actual = hex::encode(self.hasher.finalize_reset());
        // The decoder stops at the end of its frame: whatever is left, read
        // ahead or not, follows the compressed data inside the member.
        let input = self.decoder.finish();
        let buffered = input.buffer().len() as u64;
        let (head, mut member) = input.into_inner().into_inner();
        let unread_head = head.get_ref().len() as u64 - head.position();
        let left = member.remaining + buffered + unread_head;
        if left != 0 {
            return Err(BundleError::Payload {
                file: member.name.clone(),
                reason: format!("{left} bytes of the member follow the end of its compressed data"),
            });
        }
        if actual != self.info.sha256 {
            return Err(BundleError::HashMismatch {
                file: self.info.file.clone(),
                expected: self.info.sha256.clone(),
                actual,
            });
        }
        if let Some(hasher) = member.hasher.take() {
            let stored = hex::encode(hasher.finalize());
            if stored != self.info.stored_sha256 {
                return Err(BundleError::StoredHashMismatch {
                    file: self.info.file.clone(),
                    expected: self.info.stored_sha256.clone(),
                    actual: stored,
                });
            }
        }
        member.archive.padding(&member.name, member.size)?;
        member.archive.open_payload = None;
        Ok(())
    }
}

impl<R: Read> Read for PayloadReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_checked(buf).map_err(BundleError::into_io)
    }
}

#[cfg(test)]
mod tests;
