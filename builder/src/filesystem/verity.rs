//! The dm-verity hash tree of a slot's root filesystem, computed in Rust.
//!
//! Format 1 without a superblock, as `veritysetup format --no-superblock` writes
//! it: sha256, 4096-byte data and hash blocks, each hashed block prefixed with the
//! salt (`sha256(salt || block)`), 128 digests per hash block, zero-padded. The
//! filesystem is padded with zeros to whole blocks and the tree follows it in the
//! same partition, top level first, so `hash_offset = data_blocks * 4096`. The root
//! hash is the digest of the top hash block, or of the only data block when there
//! is just one (the kernel then needs no hash block at all).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use berth_format::layout::{VerityParams, VERITY_BLOCK_SIZE};
use sha2::{Digest, Sha256};

/// Bytes of a block (data and hash), as a `usize` for buffers.
const BLOCK: usize = 4096;
/// Bytes of a sha256 digest.
const DIGEST: usize = 32;
/// Digests held by one hash block.
const PER_BLOCK: u64 = (BLOCK / DIGEST) as u64;
/// log2 of [`PER_BLOCK`].
const PER_BLOCK_BITS: u32 = PER_BLOCK.trailing_zeros();

/// Failure computing or writing a hash tree.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// The filesystem image could not be read, padded or extended.
    #[error("verity hash tree of {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The filesystem is empty: there is nothing to protect.
    #[error("verity hash tree of {path}: the filesystem image is empty")]
    Empty { path: PathBuf },
    /// Filesystem and tree together are larger than the slot partition.
    #[error("the root filesystem ({data} bytes) and its verity hash tree ({tree} bytes) do not fit the root partition ({room} bytes): raise [disk] root in the recipe")]
    TooBig { data: u64, tree: u64, room: u64 },
}

/// The parameters of a written hash tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashTree {
    /// sha256 root hash.
    pub root_hash: [u8; DIGEST],
    /// The salt every block was hashed with.
    pub salt: Vec<u8>,
    /// 4096-byte blocks of (zero-padded) filesystem covered by the tree.
    pub data_blocks: u64,
    /// Byte offset of the tree in the partition (right after the data).
    pub hash_offset: u64,
    /// 4096-byte blocks of the tree itself (0 when there is one data block).
    pub hash_blocks: u64,
}

impl HashTree {
    /// The parameters the boot entry carries to the init.
    pub fn params(&self) -> VerityParams {
        VerityParams {
            root_hash: hex::encode(self.root_hash),
            salt: hex::encode(&self.salt),
            data_blocks: self.data_blocks,
            hash_offset: self.hash_offset,
        }
    }

    /// Bytes of the slot content: the padded filesystem and the tree.
    pub fn total_size(&self) -> u64 {
        (self.data_blocks + self.hash_blocks) * VERITY_BLOCK_SIZE
    }
}

/// The salt of an image: 32 bytes derived from its name and version, so a rebuild
/// gets the same salt (and the same root hash) while different images do not
/// share one.
pub fn derive_salt(name: &str, version: &str) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(b"berth verity salt\0");
    h.update(name.as_bytes());
    h.update(b"\0");
    h.update(version.as_bytes());
    h.finalize().into()
}

/// Number of hash blocks at each level, lowest level first, as the kernel and
/// veritysetup count them: as many levels as it takes for one block's 128 digests
/// to cover all the data blocks (none for a single data block).
fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let mut levels = 0u32;
    while PER_BLOCK_BITS * levels < 64 && (data_blocks - 1) >> (PER_BLOCK_BITS * levels) != 0 {
        levels += 1;
    }
    (1..=levels)
        .map(|i| {
            let shift = PER_BLOCK_BITS * i;
            // ceil(data_blocks / 128^i), without overflowing near u64::MAX.
            (data_blocks >> shift) + u64::from(data_blocks & ((1u64 << shift) - 1) != 0)
        })
        .collect()
}

/// 4096-byte hash blocks of the tree over `data_blocks` data blocks (0 for one
/// data block): with the padded filesystem, the slot's content ends at
/// `hash_offset + hash_blocks * 4096`.
pub fn hash_blocks(data_blocks: u64) -> u64 {
    if data_blocks == 0 {
        return 0;
    }
    level_sizes(data_blocks).iter().sum()
}

fn hash_block(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// The hash area (top level first) and the root hash of `data_blocks` blocks read
/// from `data`.
fn compute<R: Read>(
    data: &mut R,
    data_blocks: u64,
    salt: &[u8],
) -> io::Result<(Vec<u8>, [u8; DIGEST])> {
    let sizes = level_sizes(data_blocks);
    let mut block = vec![0u8; BLOCK];
    // The digests of the level being built: first the data blocks'.
    let mut digests: Vec<u8> = Vec::new();
    for _ in 0..data_blocks {
        data.read_exact(&mut block)?;
        digests.extend_from_slice(&hash_block(salt, &block));
    }
    if sizes.is_empty() {
        let root: [u8; DIGEST] = digests[..DIGEST].try_into().map_err(io::Error::other)?;
        return Ok((Vec::new(), root));
    }
    let mut levels: Vec<Vec<u8>> = Vec::with_capacity(sizes.len());
    for blocks in &sizes {
        // This level's blocks: the digests below, 128 to a block, zero-padded.
        let len = usize::try_from(*blocks)
            .ok()
            .and_then(|b| b.checked_mul(BLOCK))
            .ok_or_else(|| io::Error::other("hash tree too large for memory"))?;
        let mut level = std::mem::take(&mut digests);
        level.resize(len, 0);
        digests = level
            .chunks_exact(BLOCK)
            .flat_map(|b| hash_block(salt, b))
            .collect();
        levels.push(level);
    }
    let root: [u8; DIGEST] = digests[..DIGEST].try_into().map_err(io::Error::other)?;
    let area = levels.into_iter().rev().flatten().collect();
    Ok((area, root))
}

/// Pads the filesystem image at `path` with zeros to whole 4096-byte blocks and
/// appends its hash tree, refusing when the result would not fit `room` bytes (the
/// slot partition). The file then holds exactly what goes into the slot.
pub fn append(path: &Path, salt: &[u8], room: u64) -> Result<HashTree, VerityError> {
    let io_err = |source| VerityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size == 0 {
        return Err(VerityError::Empty {
            path: path.to_path_buf(),
        });
    }
    let data_blocks = size.div_ceil(VERITY_BLOCK_SIZE);
    let hash_blocks: u64 = level_sizes(data_blocks).iter().sum();
    let data = data_blocks * VERITY_BLOCK_SIZE;
    let tree = hash_blocks * VERITY_BLOCK_SIZE;
    if data.saturating_add(tree) > room {
        return Err(VerityError::TooBig { data, tree, room });
    }
    // Zeros up to the block boundary: the kernel reads whole blocks.
    file.set_len(data).map_err(io_err)?;
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let (area, root_hash) =
        compute(&mut BufReader::new(&mut file), data_blocks, salt).map_err(io_err)?;
    debug_assert_eq!(area.len() as u64, tree);
    file.seek(SeekFrom::Start(data)).map_err(io_err)?;
    file.write_all(&area).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    Ok(HashTree {
        root_hash,
        salt: salt.to_vec(),
        data_blocks,
        hash_offset: data,
        hash_blocks,
    })
}

/// Checks a slot's content (filesystem then tree, as [`append`] wrote it) against
/// a root hash: recomputes the tree from the data and compares both the stored
/// tree and the root hash.
pub fn verify(path: &Path, params: &VerityParams) -> Result<bool, VerityError> {
    let io_err = |source| VerityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let salt = hex::decode(&params.salt).map_err(|e| io_err(io::Error::other(e)))?;
    let mut file = File::open(path).map_err(io_err)?;
    let (area, root) =
        compute(&mut BufReader::new(&mut file), params.data_blocks, &salt).map_err(io_err)?;
    let mut stored = vec![0u8; area.len()];
    file.seek(SeekFrom::Start(params.hash_offset))
        .map_err(io_err)?;
    file.read_exact(&mut stored).map_err(io_err)?;
    Ok(stored == area && hex::encode(root) == params.root_hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn levels_follow_the_kernel() {
        assert_eq!(level_sizes(1), Vec::<u64>::new());
        assert_eq!(level_sizes(2), vec![1]);
        assert_eq!(level_sizes(128), vec![1]);
        assert_eq!(level_sizes(129), vec![2, 1]);
        assert_eq!(level_sizes(128 * 128), vec![128, 1]);
        assert_eq!(level_sizes(128 * 128 + 1), vec![129, 2, 1]);
    }

    #[test]
    fn salt_is_stable_and_per_image() {
        assert_eq!(derive_salt("hello", "1.0.0"), derive_salt("hello", "1.0.0"));
        assert_ne!(derive_salt("hello", "1.0.0"), derive_salt("hello", "1.0.1"));
        assert_ne!(derive_salt("hell", "o1.0.0"), derive_salt("hello", "1.0.0"));
    }

    /// Deterministic, non-repeating test data (so no two blocks hash alike).
    fn data(len: usize) -> Vec<u8> {
        let mut state = 0x1234_5678_9abc_def0u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    }

    fn veritysetup(args: &[&str]) -> (bool, String) {
        let out = Command::new("veritysetup")
            .args(args)
            .output()
            .expect("veritysetup (cryptsetup-bin) is installed");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Appends a tree to `len` bytes of data, then checks it with veritysetup both
    /// ways: `format` on a copy of the data gives the same root hash and hash area,
    /// and `verify` accepts our file with our root hash.
    fn matches_veritysetup(len: usize) -> HashTree {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("ours.img");
        std::fs::write(&ours, data(len)).unwrap();
        let salt = derive_salt("test", "1.0.0");
        let tree = append(&ours, &salt, 1 << 30).unwrap();
        assert_eq!(tree.data_blocks, (len as u64).div_ceil(4096));
        assert_eq!(tree.hash_offset, tree.data_blocks * 4096);
        let ours_len = std::fs::metadata(&ours).unwrap().len();
        assert_eq!(ours_len, tree.total_size());
        let p = tree.params();
        assert!(verify(&ours, &p).unwrap());

        let path = ours.to_str().unwrap();
        let offset = format!("--hash-offset={}", p.hash_offset);
        let blocks = format!("--data-blocks={}", p.data_blocks);
        let salt_arg = format!("--salt={}", p.salt);
        let common = [
            "--no-superblock",
            "--format=1",
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
            &offset,
            &blocks,
            &salt_arg,
        ];
        let mut args = vec!["verify"];
        args.extend(common);
        args.extend([path, path, &p.root_hash]);
        let (ok, text) = veritysetup(&args);
        assert!(ok, "veritysetup verify refused our tree:\n{text}");

        // Theirs: the same padded data, tree written by veritysetup format.
        let theirs = dir.path().join("theirs.img");
        let mut padded = data(len);
        padded.resize(usize::try_from(p.hash_offset).unwrap(), 0);
        std::fs::write(&theirs, &padded).unwrap();
        let theirs_path = theirs.to_str().unwrap();
        let mut args = vec!["format"];
        args.extend(common);
        args.extend([theirs_path, theirs_path]);
        let (ok, text) = veritysetup(&args);
        assert!(ok, "veritysetup format failed:\n{text}");
        let root = text
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .unwrap_or_else(|| panic!("no root hash in:\n{text}"))
            .trim();
        assert_eq!(root, p.root_hash);
        let theirs_bytes = std::fs::read(&theirs).unwrap();
        let ours_bytes = std::fs::read(&ours).unwrap();
        assert_eq!(theirs_bytes.len(), ours_bytes.len());
        assert!(theirs_bytes == ours_bytes, "hash areas differ");
        tree
    }

    #[test]
    fn one_block_matches_veritysetup() {
        // Less than a block: padded to one; the root hash is the block's own.
        let tree = matches_veritysetup(1000);
        assert_eq!((tree.data_blocks, tree.hash_blocks), (1, 0));
    }

    #[test]
    fn one_level_matches_veritysetup() {
        let tree = matches_veritysetup(100 * 4096 + 17);
        assert_eq!((tree.data_blocks, tree.hash_blocks), (101, 1));
    }

    #[test]
    fn two_levels_match_veritysetup() {
        let tree = matches_veritysetup(129 * 4096);
        assert_eq!((tree.data_blocks, tree.hash_blocks), (129, 3));
    }

    #[test]
    fn a_flipped_byte_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.img");
        std::fs::write(&path, data(200 * 4096)).unwrap();
        let tree = append(&path, &derive_salt("t", "1"), 1 << 30).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[150 * 4096 + 7] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(!verify(&path, &tree.params()).unwrap());
    }

    #[test]
    fn too_big_names_the_recipe_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.img");
        std::fs::write(&path, data(129 * 4096)).unwrap();
        let err = append(&path, b"", 130 * 4096).unwrap_err();
        assert!(matches!(err, VerityError::TooBig { .. }));
        assert!(err.to_string().contains("[disk] root"), "{err}");
        // Nothing was changed.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 129 * 4096);
    }
}
