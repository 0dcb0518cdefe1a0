//! Repairing the ESP after a cut, before the main stage mounts it read-write.
//!
//! Linux's vfat marks the FAT dirty when it mounts it read-write and clean when
//! it unmounts it; a power cut or a crash leaves the mark. vfat has no journal,
//! and one state a cut can leave is not harmless: a rename whose new name and
//! old name sit in different folder sectors, cut between the two, leaves both
//! names on one cluster chain, and removing either later (berth removes stale
//! temporaries and duplicate entries) frees the chain the other still uses —
//! the next file written takes it. So when the mark is set, `fsck.fat -a` runs
//! first, as systemd runs it on an ESP: it truncates the second of two names
//! that share clusters to nothing (the entry reader then skips it, as
//! systemd-boot does), frees leaked clusters and clears the mark. A clean FAT
//! is not checked, so a normal boot pays nothing.
//!
//! Not covered: the early stage's short read-write mount when it refuses a
//! slot (the initramfs has no `fsck.fat`); the next main stage repairs.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use berth_format::layout::FSCK_FAT_PATH;

/// The boot sector's size and its signature's place.
const BOOT_SECTOR: usize = 512;
const SIGNATURE_AT: usize = 510;
/// Where Linux keeps the dirty mark (`fat_boot_sector.fat32.state` or
/// `.fat16.state`; bit 0 is `FAT_STATE_DIRTY`).
const STATE_FAT32: usize = 0x41;
const STATE_FAT16: usize = 0x25;
const STATE_DIRTY: u8 = 0x01;

/// Whether the FAT whose boot sector is `sector` was left mounted read-write
/// (dirty); `None` when it is not a FAT boot sector.
pub fn is_dirty(sector: &[u8]) -> Option<bool> {
    if sector.len() < BOOT_SECTOR || sector[SIGNATURE_AT..SIGNATURE_AT + 2] != [0x55, 0xAA] {
        return None;
    }
    let u16_at = |at: usize| u16::from_le_bytes([sector[at], sector[at + 1]]);
    let bytes_per_sector = u16_at(11);
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
        return None;
    }
    // FAT32: no fixed root folder and no 16-bit FAT size.
    let fat32 = u16_at(17) == 0 && u16_at(22) == 0;
    let state = sector[if fat32 { STATE_FAT32 } else { STATE_FAT16 }];
    Some(state & STATE_DIRTY != 0)
}

/// What became of the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Unmounted cleanly last time: not checked.
    Clean,
    /// Checked: nothing but the mark, or damage `fsck.fat -a` repaired.
    Checked { repaired: bool },
    /// Not checked or not repaired; the text says why.
    Failed(String),
}

/// Reads the boot sector of `device` and, when the FAT is marked dirty, runs
/// `fsck.fat -a` on it. Every line it prints is logged.
pub fn check_if_unclean(device: &Path) -> Outcome {
    let mut sector = vec![0u8; BOOT_SECTOR];
    if let Err(err) = std::fs::File::open(device).and_then(|mut f| f.read_exact(&mut sector)) {
        return Outcome::Failed(format!("reading its boot sector: {err}"));
    }
    match is_dirty(&sector) {
        None => return Outcome::Failed("its boot sector is not a FAT's".to_string()),
        Some(false) => return Outcome::Clean,
        Some(true) => {}
    }
    log!(
        "ESP {} was not unmounted cleanly: checking it with fsck.fat -a",
        device.display()
    );
    match repair(Path::new(FSCK_FAT_PATH), device) {
        Ok(outcome) => outcome,
        Err(err) => Outcome::Failed(format!("running {FSCK_FAT_PATH}: {err}")),
    }
}

/// Runs `fsck -a device` with the checker at `fsck`. dosfstools' exit status:
/// 0 nothing found, 1 errors found (corrected, with `-a`), anything else a
/// failure.
fn repair(fsck: &Path, device: &Path) -> std::io::Result<Outcome> {
    let mut command = Command::new(fsck);
    command.arg("-a").arg(device);
    let (code, lines) = super::fsck::run_logged(&mut command, "fsck.fat")?;
    Ok(match code {
        Some(0) => Outcome::Checked { repaired: false },
        Some(1) => Outcome::Checked { repaired: true },
        code => Outcome::Failed(format!(
            "fsck.fat -a exited with {}{}",
            code.map_or("a signal".to_string(), |c| format!("status {c}")),
            lines.last().map(|l| format!(": {l}")).unwrap_or_default()
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::{Seek, SeekFrom, Write};

    /// A FAT32 like the builder's ESP, made by mkfs.fat, with `files` written
    /// into its root folder through the fatfs crate (whose folders dosfstools
    /// finds fault with; the builder fixes them, these tests need none).
    fn esp(dir: &Path, files: &[(&str, &[u8])]) -> std::path::PathBuf {
        let path = dir.join("esp.img");
        fs::File::create(&path)
            .and_then(|f| f.set_len(64 << 20))
            .expect("image");
        let status = Command::new("mkfs.fat")
            .args(["-F", "32"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("mkfs.fat is needed for this test (dosfstools)");
        assert!(status.success());
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).expect("fat");
        let root = fs.root_dir();
        for (name, data) in files {
            let mut f = root.create_file(name).expect("create");
            f.write_all(data).expect("write");
        }
        drop(root);
        fs.unmount().expect("unmount");
        path
    }

    fn read(path: &Path, name: &str) -> Vec<u8> {
        let file = fs::File::open(path).expect("open");
        let fs = fatfs::FileSystem::new(ReadOnly(file), fatfs::FsOptions::new()).expect("fat");
        let mut data = Vec::new();
        fs.root_dir()
            .open_file(name)
            .expect("file")
            .read_to_end(&mut data)
            .expect("read");
        data
    }

    struct ReadOnly(fs::File);
    impl Read for ReadOnly {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Seek for ReadOnly {
        fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
            self.0.seek(to)
        }
    }
    impl Write for ReadOnly {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("read-only"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn set_dirty(path: &Path, dirty: bool) {
        let mut bytes = fs::read(path).expect("read");
        bytes[STATE_FAT32] = if dirty { STATE_DIRTY } else { 0 };
        fs::write(path, bytes).expect("write");
    }

    /// Points the short-name entry with extension `from_ext` at the first
    /// cluster of the one with `to_ext`: both names on one chain, as a cut
    /// rename across two folder sectors leaves them.
    fn share_clusters(path: &Path, to_ext: &[u8; 3], from_ext: &[u8; 3]) {
        let mut bytes = fs::read(path).expect("read");
        let find = |bytes: &[u8], ext: &[u8; 3]| {
            (0..bytes.len() / 32)
                .map(|i| i * 32)
                .find(|&at| {
                    bytes[at..at + 6] == *b"BERTH-"
                        && bytes[at + 8..at + 11] == *ext
                        && bytes[at + 11] != 0x0F
                })
                .expect("short entry")
        };
        let (to, from) = (find(&bytes, to_ext), find(&bytes, from_ext));
        let (hi, lo) = (
            [bytes[to + 20], bytes[to + 21]],
            [bytes[to + 26], bytes[to + 27]],
        );
        bytes[from + 20..from + 22].copy_from_slice(&hi);
        bytes[from + 26..from + 28].copy_from_slice(&lo);
        fs::write(path, bytes).expect("write");
    }

    fn fsck_n(path: &Path) -> (bool, String) {
        let out = Command::new("fsck.fat")
            .arg("-n")
            .arg(path)
            .output()
            .expect("fsck.fat");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    }

    #[test]
    fn the_dirty_mark_is_read_where_linux_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = esp(dir.path(), &[]);
        let sector = |path: &Path| fs::read(path).expect("read")[..BOOT_SECTOR].to_vec();
        assert_eq!(is_dirty(&sector(&path)), Some(false));
        set_dirty(&path, true);
        assert_eq!(is_dirty(&sector(&path)), Some(true));
        assert_eq!(is_dirty(&[0u8; BOOT_SECTOR]), None);
        assert_eq!(is_dirty(&[0u8; 16]), None);
        // A clean FAT is left alone.
        set_dirty(&path, false);
        assert_eq!(check_if_unclean(&path), Outcome::Clean);
    }

    #[test]
    fn two_names_on_one_chain_are_repaired_before_the_esp_is_mounted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = b"title berth hello 1.1.0\nversion 3\nlinux /berth/b/vmlinuz\n";
        let path = esp(
            dir.path(),
            &[
                ("berth-b+3.conf", entry),
                (".berth-b+3.conf.tmp", b"stale temporary"),
            ],
        );
        share_clusters(&path, b"CON", b"TMP");
        let (clean, report) = fsck_n(&path);
        assert!(!clean && report.contains("share clusters"), "{report}");

        // The mark of a cut: the check runs and repairs.
        set_dirty(&path, true);
        assert_eq!(
            repair(Path::new("fsck.fat"), &path).expect("fsck.fat"),
            Outcome::Checked { repaired: true }
        );
        let (clean, report) = fsck_n(&path);
        assert!(clean, "{report}");
        assert!(!report.contains("share clusters"), "{report}");
        assert_eq!(is_dirty(&fs::read(&path).expect("read")), Some(false));
        // The entry keeps its content; the other name is left empty, so
        // removing it frees nothing the entry uses.
        assert_eq!(read(&path, "berth-b+3.conf"), entry);
        assert!(read(&path, ".berth-b+3.conf.tmp").is_empty());
    }

    #[test]
    fn a_missing_checker_is_a_failure_not_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = esp(dir.path(), &[]);
        let err = repair(&dir.path().join("no-fsck"), &path).expect_err("no checker");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
