//! The block map (`NAME-VERSION.bmap`) of a built image, in the bmap 2.0 XML
//! format Debian's `bmaptool` reads: the image's size, 4 KiB blocks, and the
//! ranges of blocks that hold data, each with its sha256. A flasher writes only
//! those ranges (the holes need not reach the device) and checks each range.
//!
//! The ranges are the image file's data extents (`SEEK_DATA`/`SEEK_HOLE`),
//! rounded out to whole blocks. The text is laid out exactly as bmaptool's
//! `BmapCreate` writes it, and `BmapFileChecksum` is computed the same way: the
//! sha256 of the whole file with that field's value as 64 ASCII zeros.
//!
//! [`BlockMap::parse`] reads a bmap back (berth's, or one bmaptool wrote), and
//! checks its file checksum.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The block size of every berth block map.
pub const BLOCK_SIZE: u64 = 4096;
/// The bmap format version written.
pub const VERSION: &str = "2.0";

/// Failure making or reading a block map.
#[derive(Debug, thiserror::Error)]
pub enum BmapError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: finding the image's data extents (SEEK_DATA/SEEK_HOLE): {source}")]
    Extents {
        path: PathBuf,
        source: rustix::io::Errno,
    },
    #[error("{path} is empty: no block map for an empty image")]
    Empty { path: PathBuf },
    #[error("block map {path}: not XML: {reason}")]
    Xml { path: PathBuf, reason: String },
    #[error("block map {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("block map {path}: its BmapFileChecksum is {stated} but the file's is {computed} (the file was changed or cut)")]
    FileChecksum {
        path: PathBuf,
        stated: String,
        computed: String,
    },
}

/// A run of mapped blocks, `first..=last`, and the sha256 of their bytes (up to
/// the end of the image, when the last block is a partial one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRange {
    pub first: u64,
    pub last: u64,
    /// Lowercase hex.
    pub sha256: String,
}

impl MappedRange {
    /// The bytes this range covers in an image of `image_size` bytes:
    /// (offset, length).
    pub fn bytes(&self, block_size: u64, image_size: u64) -> (u64, u64) {
        let start = self.first * block_size;
        let end = ((self.last + 1) * block_size).min(image_size);
        (start, end.saturating_sub(start))
    }
}

/// A block map: which blocks of an image hold data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    pub image_size: u64,
    pub block_size: u64,
    pub ranges: Vec<MappedRange>,
}

impl BlockMap {
    /// Every block of the image.
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    /// The blocks in a range.
    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// The bytes a flasher writes (the last block may be partial).
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| r.bytes(self.block_size, self.image_size).1)
            .sum()
    }

    /// The map of the image file at `path`, from its data extents, each range
    /// hashed.
    pub fn of_file(path: &Path) -> Result<BlockMap, BmapError> {
        let file = File::open(path).map_err(io_err(path))?;
        let image_size = file.metadata().map_err(io_err(path))?.len();
        if image_size == 0 {
            return Err(BmapError::Empty {
                path: path.to_path_buf(),
            });
        }
        let extents = data_extents(&file, image_size).map_err(|source| BmapError::Extents {
            path: path.to_path_buf(),
            source,
        })?;
        let blocks = block_ranges(&extents, BLOCK_SIZE);
        let mut ranges = Vec::with_capacity(blocks.len());
        for (first, last) in blocks {
            let mut range = MappedRange {
                first,
                last,
                sha256: String::new(),
            };
            let (offset, len) = range.bytes(BLOCK_SIZE, image_size);
            range.sha256 = hash_range(&file, offset, len).map_err(io_err(path))?;
            ranges.push(range);
        }
        Ok(BlockMap {
            image_size,
            block_size: BLOCK_SIZE,
            ranges,
        })
    }

    /// The bmap file's text, as bmaptool 3.x's `BmapCreate` lays it out, with
    /// its file checksum filled in.
    pub fn render(&self) -> String {
        let zeros = "0".repeat(64);
        let text = self.render_with_checksum(&zeros);
        let checksum = hex::encode(Sha256::digest(text.as_bytes()));
        text.replacen(&zeros, &checksum, 1)
    }

    fn render_with_checksum(&self, checksum: &str) -> String {
        let blocks = self.blocks_count();
        let mapped = self.mapped_blocks();
        // bmaptool's percentage is of blocks, its size of whole mapped blocks.
        #[allow(clippy::cast_precision_loss)] // a percentage with one decimal
        let percent = if blocks == 0 {
            0.0
        } else {
            mapped as f64 * 100.0 / blocks as f64
        };
        let mut s = String::new();
        s.push_str(concat!(
            "<?xml version=\"1.0\" ?>\n",
            "<!-- This file contains the block map for an image file, which is basically\n",
            "     a list of useful (mapped) block numbers in the image file. In other words,\n",
            "     it lists only those blocks which contain data (boot sector, partition\n",
            "     table, file-system metadata, files, directories, extents, etc). These\n",
            "     blocks have to be copied to the target device. The other blocks do not\n",
            "     contain any useful data and do not have to be copied to the target\n",
            "     device.\n",
            "\n",
            "     The block map is an optimization which allows to copy or flash the image\n",
            "     to the image quicker than copying of flashing the entire image. This is\n",
            "     because with bmap less data is copied: <MappedBlocksCount> blocks instead\n",
            "     of <BlocksCount> blocks.\n",
            "\n",
            "     Besides the machine-readable data, this file contains useful commentaries\n",
            "     which contain human-readable information like image size, percentage of\n",
            "     mapped data, etc.\n",
            "\n",
            "     The 'version' attribute is the block map file format version in the\n",
            "     'major.minor' format. The version major number is increased whenever an\n",
            "     incompatible block map format change is made. The minor number changes\n",
            "     in case of minor backward-compatible changes. -->\n",
            "\n",
        ));
        let _ = write!(
            s,
            "<bmap version=\"{VERSION}\">\n    <!-- Image size in bytes: {} -->\n    <ImageSize> {} </ImageSize>\n\n",
            human_size(self.image_size),
            self.image_size
        );
        let _ = write!(
            s,
            "    <!-- Size of a block in bytes -->\n    <BlockSize> {} </BlockSize>\n\n",
            self.block_size
        );
        let _ = write!(
            s,
            "    <!-- Count of blocks in the image file -->\n    <BlocksCount> {blocks} </BlocksCount>\n\n"
        );
        // bmaptool writes these two values over space padding sized for the
        // longest possible ones; the padding is kept so the text is the same.
        let human = human_size(mapped * self.block_size);
        let comment = format!("{human} or {percent:.1}%");
        let room = human_size(self.image_size).len() + " or ".len() + "100.0%".len();
        let _ = writeln!(
            s,
            "    <!-- Count of mapped blocks: {}",
            overwrite(&format!("{}   -->", " ".repeat(room)), &comment)
        );
        let count_room = blocks.to_string().len();
        let _ = write!(
            s,
            "    <MappedBlocksCount> {mapped:<count_room$} </MappedBlocksCount>\n\n"
        );
        s.push_str("    <!-- Type of checksum used in this file -->\n");
        s.push_str("    <ChecksumType> sha256 </ChecksumType>\n\n");
        s.push_str(
            "    <!-- The checksum of this bmap file. When it is calculated, the value of\n",
        );
        s.push_str("         the checksum has to be zero (all ASCII \"0\" symbols).  -->\n");
        let _ = write!(
            s,
            "    <BmapFileChecksum> {checksum} </BmapFileChecksum>\n\n"
        );
        s.push_str("    <!-- The block map which consists of elements which may either be a\n");
        s.push_str("         range of blocks or a single block. The 'chksum' attribute\n");
        s.push_str("         (if present) is the checksum of this blocks range. -->\n");
        s.push_str("    <BlockMap>\n");
        for r in &self.ranges {
            if r.first == r.last {
                let _ = writeln!(
                    s,
                    "        <Range chksum=\"{}\"> {} </Range>",
                    r.sha256, r.first
                );
            } else {
                let _ = writeln!(
                    s,
                    "        <Range chksum=\"{}\"> {}-{} </Range>",
                    r.sha256, r.first, r.last
                );
            }
        }
        s.push_str("    </BlockMap>\n</bmap>\n");
        s
    }

    /// Writes the map to `path`.
    pub fn write(&self, path: &Path) -> Result<(), BmapError> {
        std::fs::write(path, self.render()).map_err(io_err(path))
    }

    /// Reads a bmap 2.x file with sha256 checksums (berth's or bmaptool's),
    /// checking its file checksum.
    pub fn read(path: &Path) -> Result<BlockMap, BmapError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        BlockMap::parse(&text, path)
    }

    /// Parses a bmap's text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<BlockMap, BmapError> {
        let invalid = |reason: String| BmapError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let doc = roxmltree::Document::parse(text).map_err(|e| BmapError::Xml {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let root = doc.root_element();
        if root.tag_name().name() != "bmap" {
            return Err(invalid(format!(
                "the root element is <{}>, not <bmap>",
                root.tag_name().name()
            )));
        }
        let version = root.attribute("version").unwrap_or("");
        if !version.starts_with("2.") {
            return Err(invalid(format!(
                "version {version:?}: only bmap 2.x is read"
            )));
        }
        let field = |name: &str| -> Result<&str, BmapError> {
            root.children()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .map(str::trim)
                .ok_or_else(|| invalid(format!("no <{name}>")))
        };
        let number = |name: &str| -> Result<u64, BmapError> {
            let text = field(name)?;
            text.parse()
                .map_err(|_| invalid(format!("<{name}> {text:?} is not a number")))
        };
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        let blocks_count = number("BlocksCount")?;
        let mapped_count = number("MappedBlocksCount")?;
        if block_size == 0 || image_size.div_ceil(block_size) != blocks_count {
            return Err(invalid(format!(
                "{blocks_count} blocks of {block_size} bytes do not make an image of {image_size} bytes"
            )));
        }
        let checksum_type = field("ChecksumType")?;
        if checksum_type != "sha256" {
            return Err(invalid(format!(
                "checksum type {checksum_type:?}: only sha256 is read"
            )));
        }
        let stated = field("BmapFileChecksum")?.to_string();
        let computed = {
            // As bmaptool checks it: the file with that value as zeros.
            let zeroed = text.replacen(&stated, &"0".repeat(stated.len()), 1);
            hex::encode(Sha256::digest(zeroed.as_bytes()))
        };
        if computed != stated {
            return Err(BmapError::FileChecksum {
                path: path.to_path_buf(),
                stated,
                computed,
            });
        }
        let map = root
            .children()
            .find(|n| n.has_tag_name("BlockMap"))
            .ok_or_else(|| invalid("no <BlockMap>".into()))?;
        let mut ranges = Vec::new();
        let mut next = 0;
        for node in map.children().filter(|n| n.has_tag_name("Range")) {
            let text = node.text().unwrap_or("").trim();
            let parse = |t: &str| {
                t.trim()
                    .parse::<u64>()
                    .map_err(|_| invalid(format!("range {text:?} is not FIRST-LAST")))
            };
            let (first, last) = match text.split_once('-') {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => (parse(text)?, parse(text)?),
            };
            if first > last || first < next || last >= blocks_count {
                return Err(invalid(format!(
                    "range {text} is out of order, reversed or past the image's {blocks_count} blocks"
                )));
            }
            next = last + 1;
            let sha256 = node
                .attribute("chksum")
                .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| invalid(format!("range {text} has no sha256 chksum")))?
                .to_ascii_lowercase();
            ranges.push(MappedRange {
                first,
                last,
                sha256,
            });
        }
        let parsed = BlockMap {
            image_size,
            block_size,
            ranges,
        };
        if parsed.mapped_blocks() != mapped_count {
            return Err(invalid(format!(
                "<MappedBlocksCount> says {mapped_count} but the ranges hold {}",
                parsed.mapped_blocks()
            )));
        }
        Ok(parsed)
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BmapError + '_ {
    move |source| BmapError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// bmaptool's `human_size`: bytes below 512, else KiB, MiB, … with one decimal.
fn human_size(size: u64) -> String {
    if size == 1 {
        return "1 byte".into();
    }
    if size < 512 {
        return format!("{size} bytes");
    }
    #[allow(clippy::cast_precision_loss)] // one decimal is shown
    let mut value = size as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB"] {
        value /= 1024.0;
        if value < 1024.0 {
            return format!("{value:.1} {unit}");
        }
    }
    format!("{value:.1} EiB")
}

/// The file's data extents `(start, end)` in bytes, in order, from
/// `SEEK_DATA`/`SEEK_HOLE`. A file system without hole support reports one
/// extent: the whole file.
pub fn data_extents(file: &File, size: u64) -> Result<Vec<(u64, u64)>, rustix::io::Errno> {
    use rustix::fs::{seek, SeekFrom};
    let mut extents = Vec::new();
    let mut at = 0;
    while at < size {
        let start = match seek(file, SeekFrom::Data(at)) {
            Ok(start) => start,
            // No data past `at`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e),
        };
        let end = seek(file, SeekFrom::Hole(start))?.min(size);
        if end > start {
            extents.push((start, end));
        }
        at = end;
    }
    Ok(extents)
}

/// Byte extents rounded out to whole blocks, touching ones merged:
/// `(first, last)` block numbers.
pub fn block_ranges(extents: &[(u64, u64)], block_size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(start, end) in extents {
        if end <= start {
            continue;
        }
        let first = start / block_size;
        let last = (end - 1) / block_size;
        match out.last_mut() {
            Some((_, prev_last)) if first <= *prev_last + 1 => {
                *prev_last = (*prev_last).max(last);
            }
            _ => out.push((first, last)),
        }
    }
    out
}

/// The sha256 of `len` bytes of `file` at `offset`.
pub fn hash_range(file: &File, offset: u64, len: u64) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let want = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
        file.read_exact_at(&mut buf[..want], offset + done)?;
        hasher.update(&buf[..want]);
        done += want as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `text` written over the start of `padding`, as bmaptool seeks back and
/// writes a value over the spaces it left for it (a longer value runs on over
/// what follows).
fn overwrite(padding: &str, text: &str) -> String {
    match padding.get(text.len()..) {
        Some(rest) => format!("{text}{rest}"),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn extents_round_out_to_blocks_and_merge() {
        assert_eq!(
            block_ranges(&[(0, 1), (4096, 8192), (8192, 8193), (40960, 45000)], 4096),
            vec![(0, 2), (10, 10)]
        );
        assert_eq!(block_ranges(&[(5000, 5001)], 4096), vec![(1, 1)]);
        assert!(block_ranges(&[], 4096).is_empty());
    }

    #[test]
    fn human_sizes_are_bmaptools() {
        assert_eq!(human_size(1), "1 byte");
        assert_eq!(human_size(511), "511 bytes");
        assert_eq!(human_size(512), "0.5 KiB");
        assert_eq!(human_size(272_629_760), "260.0 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    /// A sparse file with data at known places gives those blocks, each with the
    /// sha256 of its bytes, and a text whose checksum checks out.
    #[test]
    fn a_sparse_file_maps_its_data_blocks_with_their_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        let mut file = File::create(&path).unwrap();
        file.set_len(64 * 1024 * 1024).unwrap();
        let a = vec![0xa5u8; 10_000];
        file.write_all_at(&a, 4096).unwrap();
        let b = vec![0x5au8; 4096];
        file.write_all_at(&b, 32 * 1024 * 1024).unwrap();
        file.flush().unwrap();
        drop(file);
        let map = BlockMap::of_file(&path).unwrap();
        // tmpfs and ext4 keep holes at 4 KiB: block 1..=3 and block 8192.
        assert_eq!(map.image_size, 64 * 1024 * 1024);
        assert_eq!(map.blocks_count(), 16384);
        let spans: Vec<(u64, u64)> = map.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(spans, vec![(1, 3), (8192, 8192)]);
        let mut first = vec![0u8; 3 * 4096];
        first[..a.len()].copy_from_slice(&a);
        assert_eq!(map.ranges[0].sha256, hex::encode(Sha256::digest(&first)));
        assert_eq!(map.ranges[1].sha256, hex::encode(Sha256::digest(&b)));
        assert_eq!(map.mapped_blocks(), 4);
        assert_eq!(map.mapped_bytes(), 4 * 4096);

        let text = map.render();
        assert!(text.contains("<Range chksum=\""), "{text}");
        assert!(text.contains("> 1-3 </Range>"), "{text}");
        assert!(text.contains("> 8192 </Range>"), "{text}");
        assert!(
            text.contains("<MappedBlocksCount> 4     </MappedBlocksCount>"),
            "{text}"
        );
        assert!(
            text.contains("<!-- Count of mapped blocks: 16.0 KiB or 0.0%"),
            "{text}"
        );
        // The file checksum is over the text with the checksum as zeros.
        let parsed = BlockMap::parse(&text, &path).unwrap();
        assert_eq!(parsed, map);
        // The same file maps to the same text.
        assert_eq!(BlockMap::of_file(&path).unwrap().render(), text);
    }

    #[test]
    fn a_changed_bmap_fails_its_file_checksum() {
        let map = BlockMap {
            image_size: 8192,
            block_size: 4096,
            ranges: vec![MappedRange {
                first: 0,
                last: 1,
                sha256: "ab".repeat(32),
            }],
        };
        let text = map.render();
        let changed = text.replace("> 0-1 </Range>", "> 0 </Range>");
        let err = BlockMap::parse(&changed, Path::new("x.bmap")).unwrap_err();
        assert!(matches!(err, BmapError::FileChecksum { .. }), "{err}");
        let cut = &text[..text.len() / 2];
        assert!(BlockMap::parse(cut, Path::new("x.bmap")).is_err());
    }

    #[test]
    fn ranges_past_the_image_are_refused() {
        let map = BlockMap {
            image_size: 4096,
            block_size: 4096,
            ranges: vec![MappedRange {
                first: 0,
                last: 1,
                sha256: "cd".repeat(32),
            }],
        };
        // BlocksCount is 1, the range reaches block 1.
        let err = BlockMap::parse(&map.render(), Path::new("x.bmap")).unwrap_err();
        assert!(err.to_string().contains("past the image"), "{err}");
    }
}
