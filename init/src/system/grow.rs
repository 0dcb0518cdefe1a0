//! First-boot growth of the data partition: when the disk is larger than the
//! image (an enlarged disk image, a bigger eMMC), the GPT is edited so the data
//! partition — the last one — ends near the disk's end (primary and backup
//! header and entry array, CRCs, the protective MBR), the kernel is told the new
//! size with `BLKPG_RESIZE_PARTITION` (the root is on the same disk, so the whole
//! table cannot be re-read), and the mounted ext4 is grown online with
//! `EXT4_IOC_RESIZE_FS`. No mkfs or resize2fs in the image.
//!
//! The GPT arithmetic is [`grow_gpt`], over any `Read + Write + Seek`, unit-tested
//! on a disk in memory; the ioctls are thin wrappers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use berth_format::gpt::{crc32, seal_header};

/// The only logical sector size handled (virtio, SATA and most eMMC).
const SECTOR: u64 = berth_format::layout::SECTOR_SIZE;
/// The same, as a buffer length.
#[allow(clippy::cast_possible_truncation)] // 512 fits every usize
const SECTOR_BYTES: usize = SECTOR as usize;
/// Partition ends are aligned down to 1 MiB.
const ALIGN_SECTORS: u64 = 2048;
/// `BLKPG`, `_IO(0x12, 105)`.
const BLKPG: libc::Ioctl = 0x1269;
/// `BLKPG_RESIZE_PARTITION`.
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
/// `EXT4_IOC_RESIZE_FS`, `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: libc::Ioctl = 0x4008_6610;

/// Growing the data partition failed (the system runs on at the old size).
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The disk does not hold a GPT this code understands.
    #[error("{0}")]
    Table(String),
    /// An ioctl failed.
    #[error("{op} on {path}: {source}")]
    Ioctl {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A partition whose end moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub first_lba: u64,
    pub old_last_lba: u64,
    pub new_last_lba: u64,
}

impl Grown {
    pub fn old_bytes(&self) -> u64 {
        (self.old_last_lba + 1 - self.first_lba) * SECTOR
    }
    pub fn new_bytes(&self) -> u64 {
        (self.new_last_lba + 1 - self.first_lba) * SECTOR
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn table(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

/// Moves the backup GPT to the end of a disk of `disk_bytes` and extends
/// partition `number` (1-based), which must be the last one on the disk, to the
/// last usable sector (aligned down to 1 MiB). Returns `None` when there is
/// nothing to do (the backup header is at the end and the partition cannot grow).
///
/// The order keeps a valid table on the disk whatever a power cut leaves: the
/// new backup (entries, then header) is written and `sync`ed while the old
/// primary still describes the disk; only then the primary (entries, header)
/// and the protective MBR, synced again. A cut during the primary's writes
/// leaves a primary whose CRCs do not match and the new backup, which the
/// init's early stage copies back to the primary (see `early::table`).
pub fn grow_gpt<D: Read + Write + Seek>(
    disk: &mut D,
    disk_bytes: u64,
    number: u32,
    sync: &mut dyn FnMut(&mut D) -> std::io::Result<()>,
) -> std::io::Result<Option<Grown>> {
    let total = disk_bytes / SECTOR;
    let mut header = [0u8; SECTOR_BYTES];
    disk.seek(SeekFrom::Start(SECTOR))?;
    disk.read_exact(&mut header)?;
    if &header[..8] != b"EFI PART" {
        return Err(table("no GPT header at sector 1"));
    }
    let header_size = u32_at(&header, 12) as usize;
    if !(92..=SECTOR_BYTES).contains(&header_size) {
        return Err(table(format!("GPT header size {header_size}")));
    }
    let alternate = u64_at(&header, 32);
    let entries_lba = u64_at(&header, 72);
    let count = u64::from(u32_at(&header, 80));
    let entry_size = u64::from(u32_at(&header, 84));
    if !(128..=4096).contains(&entry_size) || count == 0 || count > 1024 {
        return Err(table(format!(
            "GPT with {count} entries of {entry_size} bytes"
        )));
    }
    let entries_len = count * entry_size;
    let entry_sectors = entries_len.div_ceil(SECTOR);
    let mut entries = vec![0u8; usize::try_from(entries_len).map_err(table_err)?];
    disk.seek(SeekFrom::Start(entries_lba * SECTOR))?;
    disk.read_exact(&mut entries)?;
    if crc32(&entries) != u32_at(&header, 88) {
        return Err(table("GPT entry array CRC mismatch"));
    }
    let index = usize::try_from(number.checked_sub(1).ok_or_else(|| table("partition 0"))?)
        .map_err(table_err)?;
    let size = usize::try_from(entry_size).map_err(table_err)?;
    if index >= usize::try_from(count).map_err(table_err)? {
        return Err(table(format!("no GPT entry {number}")));
    }
    let entry_at = index * size;
    let first = u64_at(&entries, entry_at + 32);
    let last = u64_at(&entries, entry_at + 40);
    if entries[entry_at..entry_at + 16].iter().all(|&b| b == 0) {
        return Err(table(format!("GPT entry {number} is empty")));
    }
    let later = entries
        .chunks(size)
        .enumerate()
        .any(|(i, e)| i != index && e[..16].iter().any(|&b| b != 0) && u64_at(e, 32) > first);
    if later {
        return Err(table(format!(
            "partition {number} is not the last on the disk"
        )));
    }
    let new_alternate = total.checked_sub(1).ok_or_else(|| table("empty disk"))?;
    let new_last_usable = new_alternate
        .checked_sub(entry_sectors + 1)
        .ok_or_else(|| table("disk too small"))?;
    if new_alternate < alternate {
        return Err(table("the disk is smaller than its GPT says"));
    }
    let aligned_end = ((new_last_usable + 1) / ALIGN_SECTORS * ALIGN_SECTORS).saturating_sub(1);
    let new_last = aligned_end.max(last);
    if new_alternate == alternate && new_last == last {
        return Ok(None);
    }
    put_u64(&mut entries, entry_at + 40, new_last);
    let entries_crc = crc32(&entries);

    put_u64(&mut header, 32, new_alternate);
    put_u64(&mut header, 48, new_last_usable);
    put_u32(&mut header, 88, entries_crc);
    seal_header(&mut header, header_size);
    let backup_entries_lba = new_alternate - entry_sectors;
    let mut backup = header;
    put_u64(&mut backup, 24, new_alternate);
    put_u64(&mut backup, 32, 1);
    put_u64(&mut backup, 72, backup_entries_lba);
    seal_header(&mut backup, header_size);

    // Backup first: until the primary is written, the old table stands.
    disk.seek(SeekFrom::Start(backup_entries_lba * SECTOR))?;
    disk.write_all(&entries)?;
    disk.seek(SeekFrom::Start(new_alternate * SECTOR))?;
    disk.write_all(&backup)?;
    sync(disk)?;
    disk.seek(SeekFrom::Start(entries_lba * SECTOR))?;
    disk.write_all(&entries)?;
    disk.seek(SeekFrom::Start(SECTOR))?;
    disk.write_all(&header)?;
    // The protective MBR's partition covers the disk (up to 2 TiB).
    let mut mbr = [0u8; SECTOR_BYTES];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut mbr)?;
    if mbr[510..512] == [0x55, 0xAA] && mbr[446 + 4] == 0xEE {
        let sectors = u32::try_from(total - 1).unwrap_or(u32::MAX);
        put_u32(&mut mbr, 446 + 12, sectors);
        disk.seek(SeekFrom::Start(0))?;
        disk.write_all(&mbr)?;
    }
    disk.flush()?;
    sync(disk)?;
    Ok(Some(Grown {
        first_lba: first,
        old_last_lba: last,
        new_last_lba: new_last,
    }))
}

fn table_err<E: std::fmt::Display>(err: E) -> std::io::Error {
    table(err.to_string())
}

/// The disk and partition number of a partition's device node, from sysfs.
fn disk_of(node: &Path) -> Result<(String, u32, u64), GrowError> {
    let name = node
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sys = Path::new("/sys/class/block").join(&name);
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path)
            .map(|text| text.trim().to_string())
            .map_err(|source| GrowError::Io { path, source })
    };
    let number: u32 = read(sys.join("partition"))?
        .parse()
        .map_err(|_| GrowError::Table(format!("{name} is not a partition")))?;
    let real = std::fs::canonicalize(&sys).map_err(|source| GrowError::Io {
        path: sys.clone(),
        source,
    })?;
    let disk_dir = real
        .parent()
        .ok_or_else(|| GrowError::Table(format!("{name} has no parent disk")))?;
    let disk = disk_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let block: u64 = read(disk_dir.join("queue/logical_block_size"))?
        .parse()
        .unwrap_or(0);
    if block != SECTOR {
        return Err(GrowError::Table(format!(
            "{disk} has {block}-byte sectors; only 512 is handled"
        )));
    }
    let sectors: u64 = read(disk_dir.join("size"))?
        .parse()
        .map_err(|_| GrowError::Table(format!("size of {disk}")))?;
    Ok((disk, number, sectors * SECTOR))
}

/// `struct blkpg_partition` of linux/blkpg.h.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// `struct blkpg_ioctl_arg` of linux/blkpg.h.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// Grows the GPT entry of the partition at `node` (before it is mounted) and
/// tells the kernel its new size. `None`: nothing to grow.
pub fn grow_partition(node: &Path) -> Result<Option<Grown>, GrowError> {
    let (disk, number, disk_bytes) = disk_of(node)?;
    let disk_node = Path::new("/dev").join(&disk);
    let io = |source| GrowError::Io {
        path: disk_node.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_node)
        .map_err(io)?;
    let Some(grown) = grow_gpt(&mut file, disk_bytes, number, &mut |f: &mut File| {
        f.sync_all()
    })
    .map_err(io)?
    else {
        return Ok(None);
    };
    let to_i64 = |v: u64| libc::c_longlong::try_from(v).unwrap_or(libc::c_longlong::MAX);
    let mut part = BlkpgPartition {
        start: to_i64(grown.first_lba * SECTOR),
        length: to_i64(grown.new_bytes()),
        pno: libc::c_int::try_from(number).unwrap_or(0),
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: libc::c_int::try_from(std::mem::size_of::<BlkpgPartition>()).unwrap_or(0),
        data: std::ptr::addr_of_mut!(part).cast(),
    };
    // SAFETY: `file` is an open block device; `arg` and the partition it points
    // to are valid, correctly laid out (repr(C)) and live through the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKPG, std::ptr::addr_of_mut!(arg)) };
    if rc < 0 {
        return Err(GrowError::Ioctl {
            op: "BLKPG_RESIZE_PARTITION",
            path: disk_node,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(Some(grown))
}

/// Block count and block size of the ext4 on `node`, from its superblock.
fn ext4_blocks(node: &Path) -> Result<(u64, u64), GrowError> {
    let io = |source| GrowError::Io {
        path: node.to_path_buf(),
        source,
    };
    let mut file = File::open(node).map_err(io)?;
    let mut sb = [0u8; 1024];
    file.seek(SeekFrom::Start(1024)).map_err(io)?;
    file.read_exact(&mut sb).map_err(io)?;
    if sb[0x38..0x3A] != [0x53, 0xEF] {
        return Err(GrowError::Table(format!(
            "{} holds no ext4",
            node.display()
        )));
    }
    let log = u32_at(&sb, 0x18);
    let block = 1024u64 << log.min(6);
    let mut blocks = u64::from(u32_at(&sb, 0x04));
    if u32_at(&sb, 0x60) & 0x80 != 0 {
        blocks |= u64::from(u32_at(&sb, 0x150)) << 32;
    }
    Ok((blocks, block))
}

/// Grows the ext4 on `node`, mounted on `mountpoint`, online to fill its
/// partition. Returns the (old, new) size in bytes when it grew.
pub fn grow_filesystem(node: &Path, mountpoint: &Path) -> Result<Option<(u64, u64)>, GrowError> {
    let (blocks, block) = ext4_blocks(node)?;
    let io = |source| GrowError::Io {
        path: node.to_path_buf(),
        source,
    };
    let device = File::open(node).map_err(io)?;
    let partition_bytes = device.metadata().map_err(io).and_then(|_| {
        let mut file = &device;
        file.seek(SeekFrom::End(0)).map_err(io)
    })?;
    let mut target = partition_bytes / block;
    if target <= blocks {
        return Ok(None);
    }
    let dir = File::open(mountpoint).map_err(|source| GrowError::Io {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    // SAFETY: `dir` is open on the mounted file system; the argument is a valid
    // pointer to a u64 for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            dir.as_raw_fd(),
            EXT4_IOC_RESIZE_FS,
            std::ptr::addr_of_mut!(target),
        )
    };
    if rc < 0 {
        return Err(GrowError::Ioctl {
            op: "EXT4_IOC_RESIZE_FS",
            path: mountpoint.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(Some((blocks * block, target * block)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const MIB: u64 = 1024 * 1024;

    fn no_sync(_: &mut Cursor<Vec<u8>>) -> std::io::Result<()> {
        Ok(())
    }

    /// A disk of `bytes` with a GPT of 128 entries and partitions at the given
    /// (first, last) sectors, its backup at the end.
    fn disk(bytes: u64, parts: &[(u64, u64)]) -> Vec<u8> {
        let total = bytes / SECTOR;
        let mut disk = vec![0u8; usize::try_from(bytes).unwrap()];
        let mut entries = vec![0u8; 128 * 128];
        for (i, &(first, last)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&[0x11; 16]);
            e[16..32].copy_from_slice(&[u8::try_from(i).unwrap() + 1; 16]);
            put_u64(e, 32, first);
            put_u64(e, 40, last);
        }
        let mut header = [0u8; 512];
        header[..8].copy_from_slice(b"EFI PART");
        put_u32(&mut header, 8, 0x0001_0000);
        put_u32(&mut header, 12, 92);
        put_u64(&mut header, 24, 1);
        put_u64(&mut header, 32, total - 1);
        put_u64(&mut header, 40, 34);
        put_u64(&mut header, 48, total - 34);
        put_u64(&mut header, 72, 2);
        put_u32(&mut header, 80, 128);
        put_u32(&mut header, 84, 128);
        put_u32(&mut header, 88, crc32(&entries));
        seal_header(&mut header, 92);
        disk[512..1024].copy_from_slice(&header);
        disk[1024..1024 + entries.len()].copy_from_slice(&entries);
        disk[510] = 0x55;
        disk[511] = 0xAA;
        disk[446 + 4] = 0xEE;
        disk
    }

    #[test]
    fn grows_the_last_partition_and_moves_the_backup() {
        let small = 8 * MIB;
        let mut image = disk(small, &[(2048, 4095), (4096, 14335)]);
        image.resize(usize::try_from(16 * MIB).unwrap(), 0);
        let mut cursor = Cursor::new(image);
        let grown = grow_gpt(&mut cursor, 16 * MIB, 2, &mut no_sync)
            .unwrap()
            .unwrap();
        assert_eq!(grown.first_lba, 4096);
        assert_eq!(grown.old_last_lba, 14335);
        // 16 MiB = 32768 sectors; last usable 32734; aligned down to 1 MiB.
        assert_eq!(grown.new_last_lba, 30719);
        let image = cursor.into_inner();
        // The updater's reader accepts the new table and sees the new end.
        let parts = berth_format::gpt::read_partitions(&mut Cursor::new(image.clone())).unwrap();
        let data = parts.iter().find(|p| p.number == 2).unwrap();
        assert_eq!(data.size_bytes(512), (30719 + 1 - 4096) * 512);
        // Backup header at the last sector, CRC valid, pointing back at LBA 1.
        let backup = &image[image.len() - 512..];
        assert_eq!(&backup[..8], b"EFI PART");
        assert_eq!(u64_at(backup, 24), 32767);
        assert_eq!(u64_at(backup, 32), 1);
        let mut check = backup[..92].to_vec();
        let crc = u32_at(&check, 16);
        put_u32(&mut check, 16, 0);
        assert_eq!(crc32(&check), crc);
        let entries_lba = usize::try_from(u64_at(backup, 72)).unwrap();
        assert_eq!(entries_lba, 32767 - 32);
        assert_eq!(
            crc32(&image[entries_lba * 512..entries_lba * 512 + 128 * 128]),
            u32_at(backup, 88)
        );
        // The protective MBR covers the new disk.
        assert_eq!(u32_at(&image, 446 + 12), 32767);
        // Twice is nothing to do.
        let mut cursor = Cursor::new(image);
        assert_eq!(
            grow_gpt(&mut cursor, 16 * MIB, 2, &mut no_sync).unwrap(),
            None
        );
    }

    #[test]
    fn refuses_a_partition_that_is_not_the_last() {
        let mut image = disk(8 * MIB, &[(2048, 4095), (4096, 14335)]);
        image.resize(usize::try_from(16 * MIB).unwrap(), 0);
        let err = grow_gpt(&mut Cursor::new(image), 16 * MIB, 1, &mut no_sync).unwrap_err();
        assert!(err.to_string().contains("not the last"), "{err}");
    }

    #[test]
    fn same_size_disk_is_left_alone() {
        let image = disk(8 * MIB, &[(2048, 14335)]);
        assert_eq!(
            grow_gpt(&mut Cursor::new(image), 8 * MIB, 1, &mut no_sync).unwrap(),
            None
        );
    }

    #[test]
    fn refuses_a_corrupt_entry_array() {
        let mut image = disk(8 * MIB, &[(2048, 14335)]);
        image[1024 + 40] ^= 1;
        assert!(grow_gpt(&mut Cursor::new(image), 8 * MIB, 1, &mut no_sync).is_err());
    }

    /// A disk in memory that records every write and every sync, to replay
    /// the states a power cut can leave.
    struct Recorder {
        disk: Cursor<Vec<u8>>,
        /// Writes (offset, bytes); `None` is a sync.
        log: Vec<Option<(u64, Vec<u8>)>>,
    }

    impl Read for Recorder {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.disk.read(buf)
        }
    }

    impl Seek for Recorder {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.disk.seek(pos)
        }
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let at = self.disk.position();
            let n = self.disk.write(buf)?;
            self.log.push(Some((at, buf[..n].to_vec())));
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Every state a cut can leave: all writes before the last completed sync,
    /// then any subset of the writes after it, each whole or torn after its
    /// first sector (a disk may persist writes between flushes in any order,
    /// and a multi-sector write partly).
    fn crash_states(start: &[u8], log: &[Option<(u64, Vec<u8>)>]) -> Vec<Vec<u8>> {
        let epochs: Vec<Vec<(u64, Vec<u8>)>> = log
            .split(Option::is_none)
            .map(|epoch| epoch.iter().flatten().cloned().collect())
            .collect();
        let mut states = Vec::new();
        let mut base = start.to_vec();
        let apply = |disk: &mut Vec<u8>, (at, bytes): &(u64, Vec<u8>), len: usize| {
            let at = usize::try_from(*at).unwrap();
            disk[at..at + len].copy_from_slice(&bytes[..len]);
        };
        for epoch in &epochs {
            // Each write: 0 = lost, 1 = torn (first sector only), 2 = whole.
            let combos = 3usize.pow(u32::try_from(epoch.len()).unwrap());
            for mut combo in 0..combos {
                let mut disk = base.clone();
                for write in epoch {
                    match combo % 3 {
                        1 => apply(&mut disk, write, SECTOR_BYTES.min(write.1.len())),
                        2 => apply(&mut disk, write, write.1.len()),
                        _ => {}
                    }
                    combo /= 3;
                }
                states.push(disk);
            }
            for write in epoch {
                apply(&mut base, write, write.1.len());
            }
        }
        states
    }

    #[test]
    fn every_state_a_cut_leaves_has_a_valid_table_and_the_next_boot_finishes() {
        let mut image = disk(8 * MIB, &[(2048, 4095), (4096, 14335)]);
        image.resize(usize::try_from(16 * MIB).unwrap(), 0);
        let mut recorder = Recorder {
            disk: Cursor::new(image.clone()),
            log: Vec::new(),
        };
        let grown = grow_gpt(&mut recorder, 16 * MIB, 2, &mut |r: &mut Recorder| {
            r.log.push(None);
            Ok(())
        })
        .unwrap()
        .unwrap();
        let syncs = recorder.log.iter().filter(|w| w.is_none()).count();
        assert_eq!(syncs, 2, "backup synced, then primary synced");
        let states = crash_states(&image, &recorder.log);
        assert!(states.len() > 30, "{} states", states.len());
        for (n, state) in states.into_iter().enumerate() {
            // The table a reader (the init, the agent, firmware) finds: the
            // data partition at its old or its new size, never nothing.
            let mut cursor = Cursor::new(state);
            let table = berth_format::gpt::read_table(&mut cursor, SECTOR)
                .unwrap_or_else(|err| panic!("state {n}: {err}"));
            let data = table.partitions.iter().find(|p| p.number == 2).unwrap();
            assert!(
                [grown.old_last_lba, grown.new_last_lba].contains(&data.last_lba),
                "state {n}: data ends at {}",
                data.last_lba
            );
            // The next boot: the early stage repairs a damaged primary, then
            // the growth runs again and finishes.
            berth_format::gpt::repair_primary(&mut cursor, SECTOR).unwrap();
            grow_gpt(&mut cursor, 16 * MIB, 2, &mut no_sync).unwrap();
            let table = berth_format::gpt::read_table(&mut cursor, SECTOR).unwrap();
            assert_eq!(
                table.copy,
                berth_format::gpt::TableCopy::Primary,
                "state {n}"
            );
            let data = table.partitions.iter().find(|p| p.number == 2).unwrap();
            assert_eq!(data.last_lba, grown.new_last_lba, "state {n}");
        }
    }
}
