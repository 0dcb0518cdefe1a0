//! The dm-log-writes log format, as QEMU's `blklogwrites` block driver writes
//! it (`-drive driver=blklogwrites,…,log-sector-size=512`), and the disk states
//! it can replay.
//!
//! The format (Linux `Documentation/admin-guide/device-mapper/log-writes.rst`,
//! `drivers/md/dm-log-writes.c`, QEMU `block/blklogwrites.c`), little-endian:
//!
//! - sector 0: the super block: magic `0x6a736677736872`, version 1, the
//!   number of entries, the sector size (u32);
//! - from sector 1, one entry per request in the order the guest's requests
//!   completed: a sector holding `sector`, `nr_sectors`, `flags`, `data_len`
//!   (u64 each), then for a write its `nr_sectors` sectors of data. A flush is
//!   an entry with the flush flag and no data; a discard has no data either;
//!   a mark (the kernel's only) carries `data_len` bytes of text.
//!
//! QEMU counts entries in the super block only at a flush, so entries after
//! the last flush are beyond the count: they are read too (to the end of the
//! file or the first entry that is cut short), since a crash state may hold any
//! of them. `sector` is in units of the log's sector size.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The log's magic number (`"rhswfsj"` little-endian).
pub const MAGIC: u64 = 0x006a_7366_7773_6872;
/// The only version there is.
pub const VERSION: u64 = 1;
/// The request was a flush (a preflush, for the kernel's target).
pub const FLUSH: u64 = 1 << 0;
/// The write had forced unit access: durable when it completed.
pub const FUA: u64 = 1 << 1;
/// A discard: the range reads back as anything (berth replays it as zeros).
pub const DISCARD: u64 = 1 << 2;
/// A mark: no write, a named point in the log (dm-log-writes only).
pub const MARK: u64 = 1 << 3;
/// Metadata (the kernel's target, informational).
pub const METADATA: u64 = 1 << 4;

/// Why a log cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a dm-log-writes log (magic {magic:#x}, version {version})", path.display())]
    NotALog {
        path: PathBuf,
        magic: u64,
        version: u64,
    },
    #[error("{}: unusable sector size {size}", path.display())]
    SectorSize { path: PathBuf, size: u32 },
    #[error("{}: the super block counts {counted} entries, the log holds {found}", path.display())]
    Short {
        path: PathBuf,
        counted: u64,
        found: u64,
    },
}

/// One request of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// First sector written, in log sectors.
    pub sector: u64,
    pub nr_sectors: u64,
    pub flags: u64,
    /// Where the entry's data starts in the log file.
    data_at: u64,
}

impl Entry {
    pub fn is_flush(&self) -> bool {
        self.flags & FLUSH != 0
    }
    pub fn is_fua(&self) -> bool {
        self.flags & FUA != 0
    }
    pub fn is_discard(&self) -> bool {
        self.flags & DISCARD != 0
    }
    pub fn is_mark(&self) -> bool {
        self.flags & MARK != 0
    }
    /// A request that changes sectors: a write (data) or a discard.
    pub fn writes(&self) -> bool {
        self.nr_sectors > 0 && !self.is_mark()
    }
    /// The sectors it changes, as `first..end`.
    pub fn sectors(&self) -> std::ops::Range<u64> {
        if self.writes() {
            self.sector..self.sector + self.nr_sectors
        } else {
            0..0
        }
    }
    /// After this request completed, everything before it is durable.
    pub fn is_barrier(&self) -> bool {
        self.is_flush()
    }
}

/// A dm-log-writes log, its entries read, their data left in the file.
#[derive(Debug)]
pub struct WriteLog {
    path: PathBuf,
    file: File,
    pub sector_size: u32,
    /// Entries the super block counts (up to the last flush QEMU saw).
    pub counted: u64,
    pub entries: Vec<Entry>,
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

impl WriteLog {
    /// Reads the super block and every entry header of the log at `path`.
    pub fn open(path: &Path) -> Result<WriteLog, LogError> {
        let io = |op| {
            move |source| LogError::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        let mut file = File::open(path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        let mut super_block = [0u8; 32];
        file.read_exact(&mut super_block).map_err(io("read"))?;
        let (magic, version) = (u64_at(&super_block, 0), u64_at(&super_block, 8));
        if magic != MAGIC || version != VERSION {
            return Err(LogError::NotALog {
                path: path.to_path_buf(),
                magic,
                version,
            });
        }
        let counted = u64_at(&super_block, 16);
        let sector_size = u32::from_le_bytes(super_block[24..28].try_into().expect("4 bytes"));
        if !sector_size.is_power_of_two() || !(512..=1 << 23).contains(&sector_size) {
            return Err(LogError::SectorSize {
                path: path.to_path_buf(),
                size: sector_size,
            });
        }
        let size = u64::from(sector_size);
        let mut entries = Vec::new();
        let mut at = size;
        let mut header = [0u8; 32];
        while at + size <= len {
            file.read_exact_at(&mut header, at).map_err(io("read"))?;
            let entry = Entry {
                sector: u64_at(&header, 0),
                nr_sectors: u64_at(&header, 8),
                flags: u64_at(&header, 16),
                data_at: at + size,
            };
            let data_len = u64_at(&header, 24);
            // Writes carry their sectors; marks carry data_len bytes of text.
            let data = if entry.is_mark() {
                data_len.div_ceil(size) * size
            } else if entry.is_discard() || entry.is_flush() && entry.nr_sectors == 0 {
                0
            } else {
                entry.nr_sectors.saturating_mul(size)
            };
            let next = entry.data_at.saturating_add(data);
            if next > len {
                // The last request was being logged when QEMU died.
                break;
            }
            entries.push(entry);
            at = next;
        }
        if (entries.len() as u64) < counted {
            return Err(LogError::Short {
                path: path.to_path_buf(),
                counted,
                found: entries.len() as u64,
            });
        }
        Ok(WriteLog {
            path: path.to_path_buf(),
            file,
            sector_size,
            counted,
            entries,
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The data of sector `index` of entry `entry` (zeros for a discard).
    pub fn sector_data(&self, entry: &Entry, index: u64, buf: &mut [u8]) -> Result<(), LogError> {
        if entry.is_discard() {
            buf.fill(0);
            return Ok(());
        }
        let size = u64::from(self.sector_size);
        self.file
            .read_exact_at(buf, entry.data_at + index * size)
            .map_err(|source| LogError::Io {
                op: "read",
                path: self.path.clone(),
                source,
            })
    }

    /// Indexes of the flush entries.
    pub fn flushes(&self) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| self.entries[i].is_barrier())
            .collect()
    }
}

/// A disk as it was before the log began, with sectors of the log laid over it
/// (only those inside `keep`, so replaying a long log costs little memory);
/// reads as the state it describes through [`Read`] and [`Seek`].
#[derive(Debug)]
pub struct Replay {
    base: File,
    base_path: PathBuf,
    len: u64,
    sector_size: u64,
    keep: Vec<std::ops::Range<u64>>,
    sectors: HashMap<u64, Box<[u8]>>,
    pos: u64,
}

impl Clone for Replay {
    fn clone(&self) -> Replay {
        Replay {
            base: self.base.try_clone().expect("duplicating a file handle"),
            base_path: self.base_path.clone(),
            len: self.len,
            sector_size: self.sector_size,
            keep: self.keep.clone(),
            sectors: self.sectors.clone(),
            pos: 0,
        }
    }
}

impl Replay {
    /// The disk `base` before any entry of a log with `sector_size` sectors;
    /// only sectors within `keep` (byte ranges) are recorded when applied.
    pub fn new(
        base: &Path,
        sector_size: u32,
        keep: Vec<std::ops::Range<u64>>,
    ) -> Result<Replay, LogError> {
        let io = |op| {
            move |source| LogError::Io {
                op,
                path: base.to_path_buf(),
                source,
            }
        };
        let file = File::open(base).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        Ok(Replay {
            base: file,
            base_path: base.to_path_buf(),
            len,
            sector_size: u64::from(sector_size),
            keep,
            sectors: HashMap::new(),
            pos: 0,
        })
    }

    fn kept(&self, sector: u64) -> bool {
        let at = sector * self.sector_size;
        self.keep.iter().any(|r| r.contains(&at))
    }

    /// Applies sector `index` of `entry`.
    pub fn apply_sector(
        &mut self,
        log: &WriteLog,
        entry: &Entry,
        index: u64,
    ) -> Result<(), LogError> {
        let sector = entry.sector + index;
        if !self.kept(sector) {
            return Ok(());
        }
        let mut buf = vec![0u8; log.sector_size as usize].into_boxed_slice();
        log.sector_data(entry, index, &mut buf)?;
        self.sectors.insert(sector, buf);
        Ok(())
    }

    /// Applies every sector of `entry`.
    pub fn apply(&mut self, log: &WriteLog, entry: &Entry) -> Result<(), LogError> {
        for index in 0..entry.sectors().count() as u64 {
            self.apply_sector(log, entry, index)?;
        }
        Ok(())
    }

    /// The size of the disk.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads `buf.len()` bytes at `at`.
    pub fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let size = self.sector_size;
        // A sector is at most 8 MiB (checked when the log was read).
        let size_usize = usize::try_from(size).unwrap_or(usize::MAX);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = at + done as u64;
            let sector = pos / size;
            let within = usize::try_from(pos % size).unwrap_or(0);
            let take = (size_usize - within).min(buf.len() - done);
            let out = &mut buf[done..done + take];
            match self.sectors.get(&sector) {
                Some(data) => out.copy_from_slice(&data[within..within + take]),
                None if pos >= self.len => out.fill(0),
                None => self.base.read_exact_at(out, pos)?,
            }
            done += take;
        }
        Ok(())
    }
}

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        self.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Replay {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            pos.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before 0"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration;

    /// A log QEMU really writes: qemu-storage-daemon exports a blklogwrites node
    /// over FUSE, writes and fsyncs go through it, and replaying the log onto
    /// the disk as it was gives the disk as it is.
    #[test]
    fn reads_and_replays_a_log_qemu_wrote() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (disk, log, export) = (
            dir.path().join("disk.img"),
            dir.path().join("log.bin"),
            dir.path().join("export"),
        );
        let base: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&disk, &base).expect("disk");
        std::fs::write(&log, b"").expect("log");
        std::fs::write(&export, b"").expect("mount point");
        // Not daemonized: the test kills it with SIGKILL itself, since any
        // process spawned while the export is open would close a copy of the
        // descriptor on exec, and FUSE turns every close into a flush.
        let mut daemon = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=disk,filename={}",
                disk.display()
            ))
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=log,filename={}",
                log.display()
            ))
            .args([
                "--blockdev",
                "driver=blklogwrites,node-name=lw,file=disk,log=log,log-sector-size=512",
            ])
            .arg("--export")
            .arg(format!(
                "type=fuse,id=e,node-name=lw,writable=on,mountpoint={}",
                export.display()
            ))
            .spawn()
            .expect("running qemu-storage-daemon");
        // The export is mounted when the file shows the disk's size.
        let mut waited = 0;
        while std::fs::metadata(&export).map(|m| m.len()).unwrap_or(0) != 1 << 20 {
            assert!(waited < 500, "the FUSE export never appeared");
            std::thread::sleep(Duration::from_millis(20));
            waited += 1;
        }

        let dev = std::fs::OpenOptions::new()
            .write(true)
            .open(&export)
            .expect("opening the export");
        dev.write_all_at(&[0xaa; 512], 3 * 512).expect("write");
        dev.sync_all().expect("fsync");
        dev.write_all_at(&[0xbb; 1536], 10 * 512).expect("write");
        dev.write_all_at(b"tail", 20 * 512 + 7)
            .expect("unaligned write");
        dev.sync_all().expect("fsync");
        dev.write_all_at(&[0xcc; 512], 30 * 512)
            .expect("write after the last flush");
        // SIGKILL: the writes after the last flush are beyond the super block's
        // count, as after a power cut.
        daemon.kill().expect("killing qemu-storage-daemon");
        daemon.wait().expect("reaping it");
        // Closed only now: FUSE sends a flush on close.
        drop(dev);
        let _ = Command::new("umount").arg(&export).status();

        let log = WriteLog::open(&log).expect("reading the log");
        assert_eq!(log.sector_size, 512);
        let writes: Vec<(u64, u64)> = log
            .entries
            .iter()
            .filter(|e| e.writes())
            .map(|e| (e.sector, e.nr_sectors))
            .collect();
        assert!(writes.contains(&(3, 1)), "{writes:?}");
        assert!(writes.contains(&(10, 3)), "{writes:?}");
        assert!(writes.contains(&(20, 1)), "{writes:?}");
        assert_eq!(writes.last(), Some(&(30, 1)), "{writes:?}");
        assert!(log.flushes().len() >= 2, "{:?}", log.entries);
        let last_flush = *log.flushes().last().expect("a flush");
        assert!(
            log.counted > last_flush as u64 && log.counted < log.len() as u64,
            "counted {}, last flush {last_flush}, {} entries",
            log.counted,
            log.len()
        );

        let mut replay = Replay::new(
            &disk_before(&base, dir.path()),
            512,
            std::iter::once(0..1 << 20).collect(),
        )
        .expect("replay");
        for entry in &log.entries {
            replay.apply(&log, entry).expect("apply");
        }
        let mut state = Vec::new();
        replay.read_to_end(&mut state).expect("read");
        assert_eq!(state, std::fs::read(&disk).expect("disk after"));
        // And the durable state, up to the last flush, lacks the last write.
        let mut durable = Replay::new(
            &disk_before(&base, dir.path()),
            512,
            std::iter::once(0..1 << 20).collect(),
        )
        .expect("replay");
        for entry in &log.entries[..last_flush] {
            durable.apply(&log, entry).expect("apply");
        }
        let mut sector = [0u8; 512];
        durable.read_at(&mut sector, 30 * 512).expect("read");
        assert_eq!(&sector[..], &base[30 * 512..31 * 512]);
        durable.read_at(&mut sector, 20 * 512).expect("read");
        assert_eq!(&sector[7..11], b"tail");
    }

    fn disk_before(base: &[u8], dir: &Path) -> PathBuf {
        let path = dir.join("before.img");
        std::fs::write(&path, base).expect("before");
        path
    }

    #[test]
    fn refuses_what_is_not_a_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x");
        std::fs::write(&path, [0u8; 1024]).expect("write");
        let err = WriteLog::open(&path).expect_err("zeros");
        assert!(matches!(err, LogError::NotALog { .. }), "{err}");
        assert!(err.to_string().contains("not a dm-log-writes log"), "{err}");
    }
}
