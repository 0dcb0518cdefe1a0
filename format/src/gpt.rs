//! A minimal GPT reader: enough for the init to find a partition by its PARTUUID or
//! label on a disk, without pulling a full GPT crate into PID 1. The builder writes
//! tables with the `gpt` crate; tests here check both agree.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::layout::SECTOR_SIZE;

const SIGNATURE: &[u8; 8] = b"EFI PART";

/// Failure to read a partition table.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// I/O on the disk failed.
    #[error("reading the partition table: {0}")]
    Io(#[from] std::io::Error),
    /// Neither LBA 1 nor the last LBA holds a GPT header.
    #[error("no GPT header (signature \"EFI PART\" missing at LBA 1)")]
    NoHeader,
    /// The header names an entry size or count berth does not accept.
    #[error("unsupported GPT header: {0}")]
    Unsupported(String),
    /// Both copies of the table are damaged.
    #[error("the partition table is damaged: primary: {primary}; backup: {backup}")]
    Damaged { primary: String, backup: String },
}

/// CRC-32 (IEEE 802.3, reflected), as the GPT uses.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// One used entry of a GPT partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    /// 1-based partition number (the `N` of `/dev/vdaN`).
    pub number: u32,
    /// Partition type GUID, lowercase hyphenated.
    pub type_guid: String,
    /// Unique partition GUID (PARTUUID), lowercase hyphenated.
    pub part_guid: String,
    /// Partition label (GPT name).
    pub label: String,
    pub first_lba: u64,
    pub last_lba: u64,
}

impl GptPartition {
    /// Size in bytes for the given logical block size.
    pub fn size_bytes(&self, block: u64) -> u64 {
        (self.last_lba + 1 - self.first_lba) * block
    }
}

/// Which copy of the table a read used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableCopy {
    /// The primary, at LBA 1.
    Primary,
    /// The backup at the disk's last LBA: the primary is damaged.
    Backup,
}

/// A partition table as read, and from which copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub partitions: Vec<GptPartition>,
    pub copy: TableCopy,
}

/// One valid copy of the table: its header sector and entry array, checked.
struct Valid {
    header: Vec<u8>,
    header_size: usize,
    entries: Vec<u8>,
    entry_size: usize,
}

/// Why one copy is not valid.
enum Invalid {
    NoSignature,
    Unsupported(String),
    Damaged(String),
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Recomputes a header's CRC (over its first `size` bytes, the CRC field zeroed).
pub fn seal_header(header: &mut [u8], size: usize) {
    header[16..20].fill(0);
    let crc = crc32(&header[..size]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// Reads and checks the copy whose header is at `lba`: signature, header CRC,
/// its own LBA, entry geometry and the entry array's CRC, as the UEFI
/// specification (and the kernel) check a table before trusting it.
fn read_copy<R: Read + Seek>(disk: &mut R, lba: u64, block: u64) -> Result<Valid, Invalid> {
    let io = |err: std::io::Error| Invalid::Damaged(format!("reading LBA {lba}: {err}"));
    let block_len = usize::try_from(block).map_err(|e| Invalid::Unsupported(e.to_string()))?;
    let mut header = vec![0u8; block_len];
    disk.seek(SeekFrom::Start(lba * block)).map_err(io)?;
    disk.read_exact(&mut header).map_err(io)?;
    if &header[0..8] != SIGNATURE {
        return Err(Invalid::NoSignature);
    }
    let header_size = u32_at(&header, 12) as usize;
    if !(92..=block_len).contains(&header_size) {
        return Err(Invalid::Damaged(format!("header size {header_size}")));
    }
    let mut sealed = header.clone();
    seal_header(&mut sealed, header_size);
    if sealed[16..20] != header[16..20] {
        return Err(Invalid::Damaged("header CRC mismatch".into()));
    }
    if u64_at(&header, 24) != lba {
        return Err(Invalid::Damaged(format!(
            "the header at LBA {lba} says it is at LBA {}",
            u64_at(&header, 24)
        )));
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80);
    let size = u32_at(&header, 84);
    if !(128..=4096).contains(&size) || count > 1024 {
        return Err(Invalid::Unsupported(format!(
            "{count} entries of {size} bytes"
        )));
    }
    let mut entries = vec![0u8; count as usize * size as usize];
    // The header's own number: one past any disk's end must not overflow.
    let entries_at = entries_lba
        .checked_mul(block)
        .ok_or_else(|| Invalid::Damaged(format!("entry array at LBA {entries_lba}")))?;
    disk.seek(SeekFrom::Start(entries_at)).map_err(io)?;
    disk.read_exact(&mut entries).map_err(io)?;
    if crc32(&entries) != u32_at(&header, 88) {
        return Err(Invalid::Damaged("entry array CRC mismatch".into()));
    }
    Ok(Valid {
        header,
        header_size,
        entries,
        entry_size: size as usize,
    })
}

/// The LBA of the disk's last sector, where the backup header belongs.
fn last_lba<R: Seek>(disk: &mut R, block: u64) -> Result<u64, GptError> {
    let len = disk.seek(SeekFrom::End(0))?;
    (len / block).checked_sub(1).ok_or(GptError::NoHeader)
}

/// Reads the table: the primary when it is valid, else the backup at the
/// disk's last LBA (what firmware does, and the kernel with `gpt` on its
/// command line), so one damaged copy never loses the partitions.
fn read_valid<R: Read + Seek>(disk: &mut R, block: u64) -> Result<(Valid, TableCopy), GptError> {
    let primary = match read_copy(disk, 1, block) {
        Ok(valid) => return Ok((valid, TableCopy::Primary)),
        Err(invalid) => invalid,
    };
    let last = last_lba(disk, block)?;
    match (primary, read_copy(disk, last, block)) {
        (_, Ok(valid)) => Ok((valid, TableCopy::Backup)),
        (Invalid::NoSignature, Err(Invalid::NoSignature)) => Err(GptError::NoHeader),
        (Invalid::Unsupported(what), _)
        | (Invalid::NoSignature, Err(Invalid::Unsupported(what))) => {
            Err(GptError::Unsupported(what))
        }
        (primary, Err(backup)) => {
            let text = |invalid: Invalid| match invalid {
                Invalid::NoSignature => "no GPT signature".to_string(),
                Invalid::Unsupported(what) | Invalid::Damaged(what) => what,
            };
            Err(GptError::Damaged {
                primary: text(primary),
                backup: text(backup),
            })
        }
    }
}

/// Reads the partitions of a disk with berth's logical sector size
/// ([`SECTOR_SIZE`], 512 bytes), from the primary table or, when that is
/// damaged, the backup.
pub fn read_partitions<R: Read + Seek>(disk: &mut R) -> Result<Vec<GptPartition>, GptError> {
    read_partitions_with_block(disk, SECTOR_SIZE)
}

/// [`read_partitions`] with the given logical block size.
pub fn read_partitions_with_block<R: Read + Seek>(
    disk: &mut R,
    block: u64,
) -> Result<Vec<GptPartition>, GptError> {
    read_table(disk, block).map(|table| table.partitions)
}

/// The partitions and the copy of the table they came from.
pub fn read_table<R: Read + Seek>(disk: &mut R, block: u64) -> Result<Table, GptError> {
    let (valid, copy) = read_valid(disk, block)?;
    let mut partitions = Vec::new();
    for (index, raw) in valid.entries.chunks_exact(valid.entry_size).enumerate() {
        if raw[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let name: Vec<u16> = raw[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|c| *c != 0)
            .collect();
        partitions.push(GptPartition {
            number: u32::try_from(index + 1).unwrap_or(u32::MAX),
            type_guid: guid_string(&raw[0..16]),
            part_guid: guid_string(&raw[16..32]),
            label: String::from_utf16_lossy(&name),
            first_lba: u64_at(raw, 32),
            last_lba: u64_at(raw, 40),
        });
    }
    Ok(Table { partitions, copy })
}

/// Rewrites a damaged primary table from a valid backup: the same entries at
/// LBA 2 and a header pointing at them and at the backup. Returns `false` when
/// the primary is valid (nothing written). The caller syncs the disk.
/// Written entries first, header last: a cut in between leaves the primary as
/// damaged as before and the backup untouched.
pub fn repair_primary<D: Read + Write + Seek>(disk: &mut D, block: u64) -> Result<bool, GptError> {
    let (backup, copy) = read_valid(disk, block)?;
    if copy == TableCopy::Primary {
        return Ok(false);
    }
    let last = last_lba(disk, block)?;
    let entries_lba = 2;
    let entry_blocks = (backup.entries.len() as u64).div_ceil(block);
    let first_usable = u64_at(&backup.header, 40);
    if entries_lba + entry_blocks > first_usable {
        return Err(GptError::Unsupported(format!(
            "the entry array ({entry_blocks} blocks) does not fit before LBA {first_usable}"
        )));
    }
    let mut header = backup.header.clone();
    header[24..32].copy_from_slice(&1u64.to_le_bytes());
    header[32..40].copy_from_slice(&last.to_le_bytes());
    header[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    seal_header(&mut header, backup.header_size);
    disk.seek(SeekFrom::Start(entries_lba * block))?;
    disk.write_all(&backup.entries)?;
    disk.seek(SeekFrom::Start(block))?;
    disk.write_all(&header)?;
    disk.flush()?;
    Ok(true)
}

/// Formats a GUID stored in GPT's mixed-endian layout as a lowercase string.
pub fn guid_string(raw: &[u8]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6],
        raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn guid_is_mixed_endian() {
        // The ESP type GUID as stored on disk.
        let raw = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(guid_string(&raw), crate::layout::ESP_TYPE_GUID);
    }

    #[test]
    fn refuses_a_disk_without_gpt() {
        let mut disk = Cursor::new(vec![0u8; 8192]);
        assert!(matches!(
            read_partitions(&mut disk),
            Err(GptError::NoHeader)
        ));
    }

    /// Found writing the gpt fuzz target: a sealed header whose entry array
    /// LBA times the block size overflows u64 panicked with overflow checks
    /// on, and seeked to a wrapped offset without them.
    #[test]
    fn an_entry_array_past_any_disk_is_damage() {
        let mut disk = vec![0u8; 512 * 8];
        disk[512..520].copy_from_slice(SIGNATURE);
        disk[512 + 12..512 + 16].copy_from_slice(&92u32.to_le_bytes());
        disk[512 + 24..512 + 32].copy_from_slice(&1u64.to_le_bytes());
        disk[512 + 72..512 + 80].copy_from_slice(&(1u64 << 60).to_le_bytes());
        disk[512 + 80..512 + 84].copy_from_slice(&4u32.to_le_bytes());
        disk[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        seal_header(&mut disk[512..1024], 92);
        let err = read_partitions(&mut Cursor::new(disk)).unwrap_err();
        assert!(
            matches!(&err, GptError::Damaged { primary, .. } if primary.contains("entry array at LBA")),
            "{err:?}"
        );
    }

    #[test]
    fn reads_a_handmade_table() {
        let mut disk = vec![0u8; 512 * 40];
        disk[512..520].copy_from_slice(SIGNATURE);
        disk[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        disk[512 + 80..512 + 84].copy_from_slice(&4u32.to_le_bytes());
        disk[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        // Entry 2 (index 1) only.
        let e = 1024 + 128;
        disk[e] = 1;
        disk[e + 16] = 0xaa;
        disk[e + 32..e + 40].copy_from_slice(&34u64.to_le_bytes());
        disk[e + 40..e + 48].copy_from_slice(&39u64.to_le_bytes());
        for (i, c) in "data".encode_utf16().enumerate() {
            disk[e + 56 + 2 * i..e + 58 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
        disk[512 + 12..512 + 16].copy_from_slice(&92u32.to_le_bytes());
        disk[512 + 24..512 + 32].copy_from_slice(&1u64.to_le_bytes());
        let entries_crc = crc32(&disk[1024..1024 + 4 * 128]);
        disk[512 + 88..512 + 92].copy_from_slice(&entries_crc.to_le_bytes());
        seal_header(&mut disk[512..1024], 92);
        let parts = read_partitions(&mut Cursor::new(disk)).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].number, 2);
        assert_eq!(parts[0].label, "data");
        assert_eq!(parts[0].part_guid, "000000aa-0000-0000-0000-000000000000");
        assert_eq!(parts[0].size_bytes(512), 6 * 512);
    }

    /// A 4 MiB disk with two partitions, written by sgdisk.
    fn sgdisk_disk(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("disk.img");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(4 << 20))
            .expect("creating the disk");
        let status = std::process::Command::new("sgdisk")
            .args([
                "-n",
                "1:2048:+1M",
                "-c",
                "1:esp",
                "-n",
                "2:0:0",
                "-c",
                "2:data",
            ])
            .arg(&path)
            .output()
            .expect("running sgdisk");
        assert!(status.status.success(), "{status:?}");
        path
    }

    fn sgdisk_verify(path: &std::path::Path) -> String {
        let out = std::process::Command::new("sgdisk")
            .arg("-v")
            .arg(path)
            .output()
            .expect("running sgdisk -v");
        // A damaged copy is reported on stderr; stdout still says "No problems
        // found" once sgdisk has fallen back to the other copy.
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn zero(path: &std::path::Path, lba: u64, count: usize) {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&vec![0u8; 512 * count], lba * 512)
            .unwrap();
    }

    #[test]
    fn a_damaged_primary_is_read_from_the_backup_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = sgdisk_disk(dir.path());
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let good = read_table(&mut open(), 512).unwrap();
        assert_eq!(good.copy, TableCopy::Primary);
        assert_eq!(good.partitions.len(), 2);
        assert!(
            !repair_primary(&mut open(), 512).unwrap(),
            "nothing to repair"
        );

        // A torn entry array (its CRC no longer matches), then a lost header.
        for (lba, count) in [(2, 1), (1, 1)] {
            zero(&path, lba, count);
            assert!(
                sgdisk_verify(&path).contains("ERROR"),
                "sgdisk saw no damage"
            );
            let read = read_table(&mut open(), 512).unwrap();
            assert_eq!(read.copy, TableCopy::Backup);
            assert_eq!(read.partitions, good.partitions);
            assert!(repair_primary(&mut open(), 512).unwrap());
            let again = read_table(&mut open(), 512).unwrap();
            assert_eq!(again, good);
            let verdict = sgdisk_verify(&path);
            assert!(
                verdict.contains("No problems found") && !verdict.contains("ERROR"),
                "{verdict}"
            );
        }
    }

    #[test]
    fn both_copies_damaged_is_an_error_that_names_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = sgdisk_disk(dir.path());
        zero(&path, 2, 1);
        let last = (4 << 20) / 512 - 1;
        // The backup's header with a wrong CRC.
        {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(&[0xff], last * 512 + 40).unwrap();
        }
        let err = read_partitions(&mut std::fs::File::open(&path).unwrap()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("primary: entry array CRC mismatch")
                && text.contains("backup: header CRC mismatch"),
            "{text}"
        );
    }
}
