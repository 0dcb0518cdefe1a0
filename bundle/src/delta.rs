//! Delta updates: content-defined chunks of a bundle's payloads and the signed
//! chunk index that lists them.
//!
//! ```text
//! REPO/chunks/<aa>/<sha256>.zst          one chunk, zstd-compressed, named by the
//!                                         sha256 of its uncompressed bytes (aa: the
//!                                         first two hex digits); never overwritten
//! REPO/chunk-index/<bundle-sha256>.json  the chunk index of one bundle
//! REPO/chunk-index/<bundle-sha256>.json.minisig  its signature, by the release key
//! REPO/chunk-index/<bundle-sha256>.json.zst      the same index, zstd-compressed:
//!                                         what a device fetches (the signature is
//!                                         of the uncompressed bytes)
//! ```
//!
//! A chunk index belongs to one bundle, named by the sha256 the signed channel
//! index lists for it, and says so inside (`bundle_sha256`). It carries the
//! bundle's manifest and manifest signature verbatim, so a device checks the
//! manifest exactly as it would at the head of the bundle — every refusal
//! (foreign, older, too large) happens before a single chunk is fetched — and
//! then, for each payload in manifest order, its chunks in order.
//!
//! Why a file of its own, signed by the release key, rather than a new field in
//! the channel index entry or the manifest: both of those are read with
//! `deny_unknown_fields` by every agent already in the field, so a new field
//! would make older devices refuse the whole channel (or every new bundle).
//! A separate file changes nothing an older device reads; an older repository
//! simply has no `chunk-index/` and devices install the full bundle.
//!
//! What a device trusts: the chunk index's own signature (a trusted key), its
//! `bundle_sha256` equal to the signed channel entry's, the embedded manifest's
//! signature, every chunk against its sha256 before it is used, and each whole
//! payload against the manifest's signed sha256 before the commit point.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::writer::{BOOT_FILES_LEVEL, ROOTFS_LEVEL};
use crate::{BundleError, BundleReader, Manifest, PayloadKind, SecretKey, TrustedKeys};

/// Version of the chunk index format this crate reads and writes.
pub const CHUNK_INDEX_FORMAT: u32 = 1;
/// Folder of the chunks inside a repository.
pub const CHUNKS_DIR: &str = "chunks";
/// Folder of the chunk indexes inside a repository.
pub const CHUNK_INDEX_DIR: &str = "chunk-index";
/// Largest chunk index a device accepts (it reads it into memory). A 1 GiB
/// root at the default chunking is about 65,000 chunks, ~7 MB of JSON.
pub const MAX_CHUNK_INDEX_SIZE: u64 = 16 * 1024 * 1024;
/// The compression level of `<index>.json.zst`. A chunk's name is 64 hex
/// digits, 32 bytes of information in 64: compressed, the index is about a
/// third of its JSON, which for a release that changed nothing is most of
/// what a device fetches.
pub const INDEX_LEVEL: i32 = 19;
/// Largest chunk a device accepts, whatever an index says: bounds its memory.
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;

/// FastCDC parameters (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunking {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// The chunking `berth publish` uses.
///
/// 16 KiB on average, 4 KiB at least, 64 KiB at most. Measured
/// (`berth-bench delta`, docs/benchmarks.md) against 64/16/256 KiB on the same
/// releases of a one-container image: a re-release with only the version
/// changed fetches 1.3 % of the full bundle instead of 2.2 %, one changed file
/// 1.5 % instead of 2.8 %, an added Debian package 26.6 % instead of 27.7 %.
/// A small change touches a few places of the root (the file's compressed
/// squashfs block or shared fragment block, the inode and directory tables, a
/// few dm-verity tree blocks, the superblock); each costs at least one chunk,
/// so smaller chunks fetch less, down to the point where the chunk index
/// itself (~110 bytes of JSON a chunk, ~1,400 chunks for a 22 MB payload set)
/// dominates — which it already does for a re-release here. The price is more
/// requests (330 instead of 89 for the added package), which the agent's
/// parallel keep-alive fetches absorb. The minimum keeps boundaries from
/// clustering in runs of zeros; the maximum bounds a chunk in memory.
pub const CHUNKING: Chunking = Chunking {
    min: 4 * 1024,
    avg: 16 * 1024,
    max: 64 * 1024,
};

/// One chunk of a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// sha256 of the uncompressed bytes, lowercase hex: its name.
    pub sha256: String,
    /// Uncompressed bytes.
    pub size: u32,
    /// Bytes of `chunks/<aa>/<sha256>.zst`.
    pub stored_size: u32,
}

impl ChunkRef {
    /// Its file in the repository: `chunks/<aa>/<sha256>.zst`.
    pub fn path(&self) -> String {
        chunk_path(&self.sha256)
    }
}

/// The repository path of the chunk named `sha256`.
pub fn chunk_path(sha256: &str) -> String {
    format!(
        "{CHUNKS_DIR}/{}/{sha256}.zst",
        &sha256[..2.min(sha256.len())]
    )
}

/// The repository path of the chunk index of the bundle named `bundle_sha256`.
pub fn chunk_index_path(bundle_sha256: &str) -> String {
    format!("{CHUNK_INDEX_DIR}/{bundle_sha256}.json")
}

/// One payload, as chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkedPayload {
    pub kind: PayloadKind,
    /// Uncompressed bytes (the manifest's).
    pub size: u64,
    /// sha256 of the whole payload (the manifest's).
    pub sha256: String,
    /// Its chunks, in order; their sizes add up to `size`.
    pub chunks: Vec<ChunkRef>,
}

/// The chunk index of one bundle (`chunk-index/<bundle-sha256>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkIndex {
    /// [`CHUNK_INDEX_FORMAT`].
    pub format: u32,
    /// sha256 of the bundle file this index describes (as the channel index lists it).
    pub bundle_sha256: String,
    /// Bytes of that bundle file: what a full install fetches.
    pub bundle_size: u64,
    /// The bundle's `manifest.json`, exact text.
    pub manifest: String,
    /// The bundle's `manifest.json.minisig`, exact text.
    pub manifest_signature: String,
    /// How the payloads were cut.
    pub chunking: Chunking,
    /// Every payload of the manifest, in its order.
    pub payloads: Vec<ChunkedPayload>,
}

/// Failure reading or checking a chunk index.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The index or its signature is larger than allowed.
    #[error("the chunk index is larger than the {0} bytes allowed")]
    TooLarge(u64),
    /// The chunk index's own signature does not verify.
    #[error("the chunk index signature: {0}")]
    Signature(#[source] BundleError),
    /// The embedded manifest's signature does not verify, or the manifest is invalid.
    #[error("the chunk index's manifest: {0}")]
    Manifest(#[source] BundleError),
    /// The index does not parse or breaks a rule.
    #[error("the chunk index is invalid: {0}")]
    Invalid(String),
    /// The index is for another bundle than the channel index lists.
    #[error("the chunk index is for bundle {found}, the channel index lists {wanted}")]
    WrongBundle { wanted: String, found: String },
    /// Reading a payload to cut it failed.
    #[error("cutting a payload into chunks: {0}")]
    Io(#[from] io::Error),
}

/// A chunk index whose signature, manifest and rules were checked.
#[derive(Debug, Clone)]
pub struct VerifiedChunkIndex {
    pub index: ChunkIndex,
    /// The embedded manifest, its signature verified.
    pub manifest: Manifest,
    /// The key that signed the manifest.
    pub manifest_key_id: String,
}

impl ChunkIndex {
    /// The index's bytes as published: JSON, one trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("a chunk index always serializes");
        out.push(b'\n');
        out
    }

    /// Checks the rules that need no key: format, chunking bounds, hex names,
    /// chunk sizes adding up, payloads matching `manifest`.
    pub fn validate(&self, manifest: &Manifest) -> Result<(), DeltaError> {
        let bad = |reason: String| Err(DeltaError::Invalid(reason));
        if self.format != CHUNK_INDEX_FORMAT {
            return bad(format!(
                "format {} is not supported (this berth reads format {CHUNK_INDEX_FORMAT})",
                self.format
            ));
        }
        if !is_sha256(&self.bundle_sha256) {
            return bad("bundle_sha256 is not 64 lowercase hex digits".into());
        }
        let c = self.chunking;
        if c.min == 0 || c.min > c.avg || c.avg > c.max || c.max > MAX_CHUNK_SIZE {
            return bad(format!(
                "chunking {}/{}/{} is not min <= avg <= max <= {MAX_CHUNK_SIZE}",
                c.min, c.avg, c.max
            ));
        }
        if self.payloads.len() != manifest.payloads.len() {
            return bad(format!(
                "{} payloads, the manifest has {}",
                self.payloads.len(),
                manifest.payloads.len()
            ));
        }
        for (chunked, info) in self.payloads.iter().zip(&manifest.payloads) {
            if (chunked.kind, chunked.size, &chunked.sha256) != (info.kind, info.size, &info.sha256)
            {
                return bad(format!(
                    "payload {} does not match the manifest's {}",
                    chunked.kind, info.kind
                ));
            }
            let mut total = 0u64;
            for chunk in &chunked.chunks {
                if !is_sha256(&chunk.sha256) {
                    return bad(format!(
                        "a chunk of {} is not named by 64 lowercase hex digits",
                        chunked.kind
                    ));
                }
                if chunk.size == 0 || chunk.size > c.max || chunk.stored_size == 0 {
                    return bad(format!(
                        "chunk {} of {} has size {} (stored {}), outside 1..={}",
                        chunk.sha256, chunked.kind, chunk.size, chunk.stored_size, c.max
                    ));
                }
                total += u64::from(chunk.size);
            }
            if total != chunked.size {
                return bad(format!(
                    "the chunks of {} add up to {total} bytes, not {}",
                    chunked.kind, chunked.size
                ));
            }
        }
        Ok(())
    }
}

/// Checks a chunk index as a device does: its size, its signature with a key in
/// `keys` (before parsing), that it is for the bundle the channel index lists
/// (`bundle_sha256`), the embedded manifest's signature, and every rule.
pub fn verify_chunk_index(
    bytes: &[u8],
    signature: &[u8],
    keys: &TrustedKeys,
    bundle_sha256: &str,
) -> Result<VerifiedChunkIndex, DeltaError> {
    if bytes.len() as u64 > MAX_CHUNK_INDEX_SIZE {
        return Err(DeltaError::TooLarge(MAX_CHUNK_INDEX_SIZE));
    }
    keys.verify(bytes, signature)
        .map_err(DeltaError::Signature)?;
    let index: ChunkIndex =
        serde_json::from_slice(bytes).map_err(|e| DeltaError::Invalid(e.to_string()))?;
    if index.bundle_sha256 != bundle_sha256 {
        return Err(DeltaError::WrongBundle {
            wanted: bundle_sha256.to_string(),
            found: index.bundle_sha256,
        });
    }
    let verified = keys
        .verify(
            index.manifest.as_bytes(),
            index.manifest_signature.as_bytes(),
        )
        .map_err(DeltaError::Manifest)?;
    let manifest = Manifest::from_json(index.manifest.as_bytes()).map_err(DeltaError::Manifest)?;
    index.validate(&manifest)?;
    Ok(VerifiedChunkIndex {
        index,
        manifest,
        manifest_key_id: verified.key_id,
    })
}

/// The signature's trusted comment for a chunk index.
pub fn trusted_comment(index: &ChunkIndex, manifest: &Manifest) -> String {
    format!(
        "file:{}\tberth chunk index {} {}",
        chunk_index_path(&index.bundle_sha256),
        manifest.name,
        manifest.version
    )
}

/// `PATH.zst`: where a chunk index's compressed copy is.
pub fn compressed_path(index: &Path) -> PathBuf {
    let mut name = index.as_os_str().to_owned();
    name.push(".zst");
    PathBuf::from(name)
}

/// The JSON of a compressed chunk index (`<index>.json.zst`), refused when it
/// would be larger than [`MAX_CHUNK_INDEX_SIZE`].
pub fn decompress_index(compressed: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(compressed)
        .and_then(|decoder| {
            decoder
                .take(MAX_CHUNK_INDEX_SIZE + 1)
                .read_to_end(&mut json)
        })
        .map_err(|e| DeltaError::Invalid(format!("its compressed copy: {e}")))?;
    if json.len() as u64 > MAX_CHUNK_INDEX_SIZE {
        return Err(DeltaError::TooLarge(MAX_CHUNK_INDEX_SIZE));
    }
    Ok(json)
}

/// `PATH.minisig`: where a chunk index's signature is.
pub fn signature_path(index: &Path) -> PathBuf {
    let mut name = index.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

/// The publishing side: cuts the payloads of the bundle at `bundle` (listed in
/// the channel index with `bundle_sha256` and `bundle_size`) into chunks,
/// stores the ones `repo` lacks, compressed, and writes the bundle's chunk
/// index and its signature by `key` — unless both exist already (the index is
/// a function of the bundle, the key and [`CHUNKING`]: deterministic
/// signatures make it the same bytes). The bundle is verified with `keys` (the
/// key's public half) on the way. Every file goes through a temporary file,
/// fsync and rename; chunks are named by their content, so an existing one is
/// never rewritten. Returns whether it wrote an index.
pub fn write_chunks(
    repo: &Path,
    bundle: &Path,
    bundle_sha256: &str,
    bundle_size: u64,
    key: &SecretKey,
    keys: &TrustedKeys,
) -> Result<bool, DeltaError> {
    let index_path = repo.join(chunk_index_path(bundle_sha256));
    let sig_path = signature_path(&index_path);
    let zst_path = compressed_path(&index_path);
    if index_path.exists() && sig_path.exists() {
        // A repository published before the compressed copy existed gets it.
        if !zst_path.exists() {
            let json = fs::read(&index_path)?;
            write_atomic(&zst_path, &zstd::bulk::compress(&json, INDEX_LEVEL)?)?;
        }
        return Ok(false);
    }
    let file = File::open(bundle)?;
    let mut reader = BundleReader::open(io::BufReader::with_capacity(1 << 20, file), keys)
        .map_err(DeltaError::Manifest)?;
    let manifest = reader.manifest().clone();
    let text = |bytes: &[u8], what: &str| {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| DeltaError::Invalid(format!("the bundle's {what} is not UTF-8")))
    };
    let manifest_text = text(reader.manifest_bytes(), "manifest")?;
    let signature_text = text(reader.signature_bytes(), "manifest signature")?;
    let mut payloads = Vec::new();
    while let Some(mut payload) = reader.next_payload().map_err(DeltaError::Manifest)? {
        let info = payload.info().clone();
        // The bundle's own levels: squashfs data is compressed already.
        let level = match info.kind {
            PayloadKind::Rootfs => ROOTFS_LEVEL,
            PayloadKind::Kernel | PayloadKind::Initramfs => BOOT_FILES_LEVEL,
        };
        let mut chunks = Vec::new();
        cut(&mut payload, CHUNKING, |_, bytes| {
            chunks.push(store_chunk(repo, bytes, level)?);
            Ok(())
        })
        .map_err(|e| match BundleError::from_io(&e) {
            Some(bundle) => DeltaError::Invalid(bundle.to_string()),
            None => DeltaError::Io(e),
        })?;
        payload.finish().map_err(DeltaError::Manifest)?;
        payloads.push(ChunkedPayload {
            kind: info.kind,
            size: info.size,
            sha256: info.sha256,
            chunks,
        });
    }
    let index = ChunkIndex {
        format: CHUNK_INDEX_FORMAT,
        bundle_sha256: bundle_sha256.to_string(),
        bundle_size,
        manifest: manifest_text,
        manifest_signature: signature_text,
        chunking: CHUNKING,
        payloads,
    };
    index.validate(&manifest)?;
    let json = index.to_json();
    let signature = key.sign(&json, &trusted_comment(&index, &manifest));
    // The compressed copy first: an index with its signature is what says
    // "published", and the device takes the plain one when there is no copy.
    write_atomic(&zst_path, &zstd::bulk::compress(&json, INDEX_LEVEL)?)?;
    write_atomic(&index_path, &json)?;
    write_atomic(&sig_path, signature.as_bytes())?;
    Ok(true)
}

/// Stores one chunk compressed under its name unless it is there already.
fn store_chunk(repo: &Path, bytes: &[u8], level: i32) -> io::Result<ChunkRef> {
    let sha256 = sha256_hex(bytes);
    let path = repo.join(chunk_path(&sha256));
    let size = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    let stored_size = match fs::metadata(&path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let compressed = zstd::bulk::compress(bytes, level)?;
            write_atomic(&path, &compressed)?;
            compressed.len() as u64
        }
        Err(e) => return Err(e),
    };
    Ok(ChunkRef {
        sha256,
        size,
        stored_size: u32::try_from(stored_size).map_err(io::Error::other)?,
    })
}

/// `bytes` to `path` through a temporary file in the same folder (created
/// when missing), fsync, mode 0644 (a repository is public), rename, fsync of
/// the folder.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".berth-publish-")
        .tempfile_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    temp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// Cuts `source` into content-defined chunks with `chunking` and hands each
/// (offset, bytes) to `each`, in order. Memory: one chunk and FastCDC's buffer.
pub fn cut<R: Read>(
    source: R,
    chunking: Chunking,
    mut each: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let chunker = fastcdc::v2020::StreamCDC::new(
        source,
        to_usize(chunking.min),
        to_usize(chunking.avg),
        to_usize(chunking.max),
    );
    for chunk in chunker {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
        each(chunk.offset, &chunk.data)?;
    }
    Ok(())
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{content, make, Key};

    fn cuts(data: &[u8]) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        cut(data, CHUNKING, |offset, bytes| {
            out.push((offset, sha256_hex(bytes)));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn a_compressed_index_larger_than_allowed_is_refused() {
        let json = vec![b' '; usize::try_from(MAX_CHUNK_INDEX_SIZE).unwrap() + 1];
        let bomb = zstd::bulk::compress(&json, 3).unwrap();
        assert!(bomb.len() < 4096);
        assert!(matches!(
            decompress_index(&bomb),
            Err(DeltaError::TooLarge(MAX_CHUNK_INDEX_SIZE))
        ));
        assert!(matches!(
            decompress_index(b"not zstd"),
            Err(DeltaError::Invalid(_))
        ));
        let small = zstd::bulk::compress(b"{}", INDEX_LEVEL).unwrap();
        assert_eq!(decompress_index(&small).unwrap(), b"{}");
    }

    #[test]
    fn cutting_is_content_defined_an_insertion_moves_few_chunks() {
        let data = content(7, 4 << 20);
        let before = cuts(&data);
        let total: usize = before.len();
        assert!(
            (128..=512).contains(&total),
            "4 MiB at 16 KiB on average: {total} chunks"
        );
        // 100 bytes inserted near the middle: the chunks before and after it are
        // the same bytes (at shifted offsets), only one or two are new.
        let mut edited = data.clone();
        edited.splice(2 << 20..2 << 20, std::iter::repeat_n(b'x', 100));
        let after = cuts(&edited);
        let old: std::collections::HashSet<_> = before.iter().map(|(_, h)| h.clone()).collect();
        let new = after.iter().filter(|(_, h)| !old.contains(h)).count();
        assert!(
            (1..=3).contains(&new),
            "{new} new chunks of {}",
            after.len()
        );
        // Offsets are contiguous from 0.
        let mut expected = 0u64;
        cut(edited.as_slice(), CHUNKING, |offset, bytes| {
            assert_eq!(offset, expected);
            expected += bytes.len() as u64;
            Ok(())
        })
        .unwrap();
        assert_eq!(expected, edited.len() as u64);
    }

    fn index_for(made: &crate::testkit::Made) -> ChunkIndex {
        let manifest = made.manifest.clone();
        let (start, len) = made.member(crate::MANIFEST_MEMBER);
        let manifest_text = String::from_utf8(made.bytes[start..start + len].to_vec()).unwrap();
        let (start, len) = made.member(crate::SIGNATURE_MEMBER);
        let signature_text = String::from_utf8(made.bytes[start..start + len].to_vec()).unwrap();
        let payloads = manifest
            .payloads
            .iter()
            .zip(&made.payloads)
            .map(|(info, data)| {
                let mut chunks = Vec::new();
                cut(data.as_slice(), CHUNKING, |_, bytes| {
                    chunks.push(ChunkRef {
                        sha256: sha256_hex(bytes),
                        size: u32::try_from(bytes.len()).unwrap(),
                        stored_size: 1,
                    });
                    Ok(())
                })
                .unwrap();
                ChunkedPayload {
                    kind: info.kind,
                    size: info.size,
                    sha256: info.sha256.clone(),
                    chunks,
                }
            })
            .collect();
        ChunkIndex {
            format: CHUNK_INDEX_FORMAT,
            bundle_sha256: "cd".repeat(32),
            bundle_size: made.bytes.len() as u64,
            manifest: manifest_text,
            manifest_signature: signature_text,
            chunking: CHUNKING,
            payloads,
        }
    }

    #[test]
    fn a_signed_index_verifies_and_every_alteration_is_refused() {
        let key = Key::new();
        let made = make(&key);
        let index = index_for(&made);
        let json = index.to_json();
        let signature = key.sign(&json);
        let keys = key.trusted();
        let verified =
            verify_chunk_index(&json, signature.as_bytes(), &keys, &"cd".repeat(32)).unwrap();
        assert_eq!(verified.manifest, made.manifest);
        assert_eq!(verified.index, index);

        // Another bundle than the channel lists.
        let err = verify_chunk_index(&json, signature.as_bytes(), &keys, &"ef".repeat(32))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is for bundle"), "{err}");
        // Another key.
        let other = Key::new();
        let err = verify_chunk_index(
            &json,
            signature.as_bytes(),
            &other.trusted(),
            &"cd".repeat(32),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not one of the trusted keys"), "{err}");
        // A changed chunk name, re-signed by someone else's key: refused by
        // the signature; re-signed by the release key but with chunk sizes that
        // do not add up: refused by the rules.
        let mut altered = index.clone();
        altered.payloads[0].chunks[0].sha256 = "00".repeat(32);
        let err = verify_chunk_index(
            &altered.to_json(),
            signature.as_bytes(),
            &keys,
            &"cd".repeat(32),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("does not verify"), "{err}");
        let mut altered = index.clone();
        altered.payloads[1].chunks[0].size -= 1;
        let json = altered.to_json();
        let err = verify_chunk_index(&json, key.sign(&json).as_bytes(), &keys, &"cd".repeat(32))
            .unwrap_err()
            .to_string();
        assert!(err.contains("add up to"), "{err}");
        // A manifest that is not the signed one.
        let mut altered = index.clone();
        altered.manifest = altered.manifest.replace("1.1.0", "9.9.9");
        let json = altered.to_json();
        let err = verify_chunk_index(&json, key.sign(&json).as_bytes(), &keys, &"cd".repeat(32))
            .unwrap_err()
            .to_string();
        assert!(err.contains("manifest"), "{err}");
    }

    #[test]
    fn repository_paths() {
        let h = "ab".repeat(32);
        assert_eq!(chunk_path(&h), format!("chunks/ab/{h}.zst"));
        assert_eq!(chunk_index_path(&h), format!("chunk-index/{h}.json"));
    }
}
