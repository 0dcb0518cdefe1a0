//! A minimal GPT reader: enough for the init to find a partition by its PARTUUID or
//! label on a disk, without pulling a full GPT crate into PID 1. The builder writes
//! tables with the `gpt` crate; tests here check both agree.

use std::io::{Read, Seek, SeekFrom};

use crate::layout::SECTOR_SIZE;

const SIGNATURE: &[u8; 8] = b"EFI PART";

/// Failure to read a partition table.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// I/O on the disk failed.
    #[error("reading the partition table: {0}")]
    Io(#[from] std::io::Error),
    /// LBA 1 holds no GPT header.
    #[error("no GPT header (signature \"EFI PART\" missing at LBA 1)")]
    NoHeader,
    /// The header names an entry size or count berth does not accept.
    #[error("unsupported GPT header: {0}")]
    Unsupported(String),
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

/// Reads the primary GPT of a disk with berth's logical sector size
/// ([`SECTOR_SIZE`], 512 bytes).
pub fn read_partitions<R: Read + Seek>(disk: &mut R) -> Result<Vec<GptPartition>, GptError> {
    read_partitions_with_block(disk, SECTOR_SIZE)
}

/// Reads the primary GPT of a disk with the given logical block size.
pub fn read_partitions_with_block<R: Read + Seek>(
    disk: &mut R,
    block: u64,
) -> Result<Vec<GptPartition>, GptError> {
    let mut header = [0u8; 92];
    disk.seek(SeekFrom::Start(block))?;
    disk.read_exact(&mut header)?;
    if &header[0..8] != SIGNATURE {
        return Err(GptError::NoHeader);
    }
    let entries_lba = u64::from_le_bytes(header[72..80].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(header[80..84].try_into().expect("4 bytes"));
    let size = u32::from_le_bytes(header[84..88].try_into().expect("4 bytes"));
    if !(128..=4096).contains(&size) || count > 1024 {
        return Err(GptError::Unsupported(format!(
            "{count} entries of {size} bytes"
        )));
    }
    let mut table = vec![0u8; count as usize * size as usize];
    disk.seek(SeekFrom::Start(entries_lba * block))?;
    disk.read_exact(&mut table)?;
    let mut out = Vec::new();
    for (index, raw) in table.chunks_exact(size as usize).enumerate() {
        if raw[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let name: Vec<u16> = raw[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|c| *c != 0)
            .collect();
        out.push(GptPartition {
            number: u32::try_from(index + 1).unwrap_or(u32::MAX),
            type_guid: guid_string(&raw[0..16]),
            part_guid: guid_string(&raw[16..32]),
            label: String::from_utf16_lossy(&name),
            first_lba: u64::from_le_bytes(raw[32..40].try_into().expect("8 bytes")),
            last_lba: u64::from_le_bytes(raw[40..48].try_into().expect("8 bytes")),
        });
    }
    Ok(out)
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
        let parts = read_partitions(&mut Cursor::new(disk)).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].number, 2);
        assert_eq!(parts[0].label, "data");
        assert_eq!(parts[0].part_guid, "000000aa-0000-0000-0000-000000000000");
        assert_eq!(parts[0].size_bytes(512), 6 * 512);
    }
}
