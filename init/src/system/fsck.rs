//! Checking and repairing the data partition before it is mounted on /var.
//!
//! A normal boot only reads the ext4 superblock ([`check_needed`]): a file
//! system the kernel marked as having errors, one not marked clean, or a
//! superblock that is not ext4's at all is checked with `e2fsck` before the
//! mount; so is one whose mount failed. `e2fsck -p` (preen) first, which fixes
//! what is safe without asking; when it leaves errors, `e2fsck -y`, which fixes
//! everything it can ([`next_step`]). The init decides what it means for the
//! boot; this module only runs the checker and says how it ended.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use berth_format::layout::E2FSCK_PATH;

/// Where the ext4 superblock starts, and its size.
const SUPERBLOCK_OFFSET: u64 = 1024;
const SUPERBLOCK_SIZE: usize = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
/// `s_state` bits: unmounted cleanly, errors detected.
const STATE_VALID: u16 = 0x0001;
const STATE_ERRORS: u16 = 0x0002;
/// Lines of e2fsck's output kept for the report (the last says why it stopped).
const KEPT_LINES: usize = 1;

/// Why the file system in `superblock` (the 1024 bytes at offset 1024) must be
/// checked before it is mounted; `None` when it looks clean.
pub fn check_needed(superblock: &[u8]) -> Option<String> {
    let u16_at = |at: usize| {
        superblock
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    if superblock.len() < SUPERBLOCK_SIZE || u16_at(0x38) != Some(EXT4_MAGIC) {
        return Some("its superblock is not an ext4 superblock".to_string());
    }
    let state = u16_at(0x3A).unwrap_or(0);
    if state & STATE_ERRORS != 0 {
        return Some("the kernel marked the file system as having errors".to_string());
    }
    if state & STATE_VALID == 0 {
        return Some("the file system is not marked clean".to_string());
    }
    None
}

/// Reads the superblock of `device` and says why it needs a check ([`check_needed`]).
pub fn read_check_needed(device: &Path) -> Option<String> {
    let mut buf = vec![0u8; SUPERBLOCK_SIZE];
    let read = std::fs::File::open(device).and_then(|mut file| {
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(SUPERBLOCK_OFFSET))?;
        file.read_exact(&mut buf)
    });
    match read {
        Ok(()) => check_needed(&buf),
        Err(err) => Some(format!("its superblock could not be read: {err}")),
    }
}

/// Which e2fsck run this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// `e2fsck -p`: fixes what is safe to fix without a person.
    Preen,
    /// `e2fsck -y`: answers yes to every repair.
    Force,
}

impl Pass {
    fn flag(self) -> &'static str {
        match self {
            Pass::Preen => "-p",
            Pass::Force => "-y",
        }
    }
}

/// How the check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was wrong.
    Clean,
    /// Errors were found and fixed.
    Repaired,
    /// Errors are left, or e2fsck could not work on it (no superblock it can
    /// use, an I/O error); the text says which.
    Failed(String),
}

/// What to do after `pass` exited with `code` (`None`: killed, or e2fsck did
/// not run). e2fsck's exit status is a bit mask: 1 errors corrected, 2 the
/// same and a reboot wanted (only for a mounted root, not here), 4 errors left
/// uncorrected, 8 operational error, 16 usage error, 32 cancelled, 128 a
/// shared library error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Done(Outcome),
    /// Run `e2fsck -y` next.
    Force,
}

pub fn next_step(pass: Pass, code: Option<i32>, repaired_before: bool) -> Step {
    match code {
        Some(0) if repaired_before => Step::Done(Outcome::Repaired),
        Some(0) => Step::Done(Outcome::Clean),
        Some(code) if code & !3 == 0 => Step::Done(Outcome::Repaired),
        // Preen stops at what needs a person (4) and at a superblock it
        // cannot use (8: -y then tries the backups and fixes what it finds).
        Some(code) if pass == Pass::Preen && code & (4 | 8) != 0 && code & (16 | 32 | 128) == 0 => {
            Step::Force
        }
        Some(code) => Step::Done(Outcome::Failed(format!(
            "e2fsck {} exited with status {code}{}",
            pass.flag(),
            match code {
                c if c & 4 != 0 => " (errors left uncorrected)",
                c if c & 8 != 0 => " (operational error)",
                _ => "",
            }
        ))),
        None => Step::Done(Outcome::Failed(format!(
            "e2fsck {} did not finish",
            pass.flag()
        ))),
    }
}

/// Checks `device` (not mounted) with e2fsck: preen, then force when preen
/// leaves errors. Every line e2fsck prints is logged.
pub fn check_and_repair(device: &Path) -> Outcome {
    let mut pass = Pass::Preen;
    let mut repaired_before = false;
    loop {
        let (code, tail) = match run(pass, device) {
            Ok(ran) => ran,
            Err(err) => {
                return Outcome::Failed(format!("running {E2FSCK_PATH}: {err}"));
            }
        };
        match next_step(pass, code, repaired_before) {
            Step::Done(Outcome::Failed(why)) if !tail.is_empty() => {
                return Outcome::Failed(format!("{why}: {}", tail.join(" / ")));
            }
            Step::Done(outcome) => return outcome,
            Step::Force => {
                repaired_before = code.is_some_and(|c| c & 3 != 0);
                pass = Pass::Force;
            }
        }
    }
}

/// Runs one e2fsck pass; returns its exit code and its last lines.
fn run(pass: Pass, device: &Path) -> std::io::Result<(Option<i32>, Vec<String>)> {
    log!("checking {} with e2fsck {}", device.display(), pass.flag());
    let mut command = Command::new(E2FSCK_PATH);
    command.arg(pass.flag()).arg(device);
    let (code, mut lines) = run_logged(&mut command, "e2fsck")?;
    let skip = lines.len().saturating_sub(KEPT_LINES);
    lines.drain(..skip);
    Ok((code, lines))
}

/// Runs a checker with no input, logs every line it prints as `label: …`,
/// and returns its exit code (`None`: killed) and those lines.
pub(super) fn run_logged(
    command: &mut Command,
    label: &str,
) -> std::io::Result<(Option<i32>, Vec<String>)> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::run::unblock_signals(command);
    let output = command.output()?;
    let mut lines = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
    {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        log!("{label}: {line}");
        lines.push(line.to_string());
    }
    Ok((output.status.code(), lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(state: u16) -> Vec<u8> {
        let mut sb = vec![0u8; SUPERBLOCK_SIZE];
        sb[0x38..0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        sb[0x3A..0x3C].copy_from_slice(&state.to_le_bytes());
        sb
    }

    #[test]
    fn only_a_damaged_or_flagged_file_system_is_checked_before_mounting() {
        assert_eq!(check_needed(&superblock(STATE_VALID)), None);
        let errors = check_needed(&superblock(STATE_VALID | STATE_ERRORS)).unwrap();
        assert!(errors.contains("errors"), "{errors}");
        let unclean = check_needed(&superblock(0)).unwrap();
        assert!(unclean.contains("not marked clean"), "{unclean}");
        let zeroed = check_needed(&[0u8; SUPERBLOCK_SIZE]).unwrap();
        assert!(zeroed.contains("not an ext4 superblock"), "{zeroed}");
        assert!(check_needed(&superblock(STATE_VALID)[..100]).is_some());
    }

    #[test]
    fn a_real_superblock_from_mkfs_is_clean_and_a_zeroed_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("data.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .status();
        let Ok(status) = made else {
            panic!("mkfs.ext4 is needed for this test (e2fsprogs)");
        };
        assert!(status.success());
        assert_eq!(read_check_needed(&image), None);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0u8; 1024], SUPERBLOCK_OFFSET).unwrap();
        assert!(read_check_needed(&image).is_some());
        assert!(read_check_needed(&dir.path().join("missing")).is_some());
    }

    #[test]
    fn preen_then_force_only_when_preen_leaves_errors() {
        use Outcome::*;
        assert_eq!(next_step(Pass::Preen, Some(0), false), Step::Done(Clean));
        assert_eq!(next_step(Pass::Preen, Some(1), false), Step::Done(Repaired));
        assert_eq!(next_step(Pass::Preen, Some(2), false), Step::Done(Repaired));
        // Errors preen will not fix, and a superblock it cannot use: force.
        assert_eq!(next_step(Pass::Preen, Some(4), false), Step::Force);
        assert_eq!(next_step(Pass::Preen, Some(5), false), Step::Force);
        assert_eq!(next_step(Pass::Preen, Some(8), false), Step::Force);
        // A usage error, a cancel, a missing library, a kill: no second try.
        for code in [Some(16), Some(32), Some(128), Some(12 | 128), None] {
            assert!(
                matches!(next_step(Pass::Preen, code, false), Step::Done(Failed(_))),
                "{code:?}"
            );
        }
        // Force: fixed is fixed (also a clean second pass after preen fixed some).
        assert_eq!(next_step(Pass::Force, Some(1), false), Step::Done(Repaired));
        assert_eq!(next_step(Pass::Force, Some(0), true), Step::Done(Repaired));
        assert_eq!(next_step(Pass::Force, Some(0), false), Step::Done(Clean));
        let Step::Done(Failed(why)) = next_step(Pass::Force, Some(4), false) else {
            panic!("errors left after -y must fail");
        };
        assert!(why.contains("-y") && why.contains("uncorrected"), "{why}");
        let Step::Done(Failed(why)) = next_step(Pass::Force, Some(8), false) else {
            panic!("an operational error after -y must fail");
        };
        assert!(why.contains("operational"), "{why}");
    }

    /// The real e2fsck of the host on a damaged image: the primary superblock
    /// zeroed is repaired from a backup; a wholly zeroed image is not.
    #[test]
    fn the_hosts_e2fsck_repairs_a_lost_superblock_and_gives_up_on_nothing() {
        if !Path::new(E2FSCK_PATH).exists() {
            panic!("{E2FSCK_PATH} is needed for this test (e2fsprogs)");
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("data.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .status()
            .unwrap();
        assert!(status.success());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0u8; 1024], SUPERBLOCK_OFFSET).unwrap();
        assert!(read_check_needed(&image).is_some());
        assert_eq!(check_and_repair(&image), Outcome::Repaired);
        assert_eq!(read_check_needed(&image), None);
        file.set_len(0).unwrap();
        file.set_len(64 << 20).unwrap();
        let Outcome::Failed(why) = check_and_repair(&image) else {
            panic!("a zeroed image cannot be repaired");
        };
        assert!(why.contains("e2fsck -y exited with status 8"), "{why}");
    }
}
