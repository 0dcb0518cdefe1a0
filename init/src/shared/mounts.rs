//! Mounting and unmounting, with errors that name the path and the file system.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// A mount operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// mount(2) failed.
    #[error("mounting {fstype} {device} on {target}: {errno}")]
    Mount {
        device: String,
        target: PathBuf,
        fstype: String,
        errno: Errno,
    },
    /// Moving a mount (MS_MOVE) failed.
    #[error("moving mount {from} to {to}: {errno}")]
    Move {
        from: PathBuf,
        to: PathBuf,
        errno: Errno,
    },
    /// A mount point could not be created.
    #[error("creating mount point {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Mounts `source` of type `fstype` on `target`, which must exist.
pub fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    mount(Some(source), target, Some(fstype), flags, data).map_err(|errno| MountError::Mount {
        device: source.to_string(),
        target: target.to_path_buf(),
        fstype: fstype.to_string(),
        errno,
    })
}

/// Creates `path` (and its parents) when it is missing.
pub fn ensure_dir(path: &Path) -> Result<(), MountError> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|source| MountError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates the mount point if needed, then mounts.
pub fn mount_on_dir(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    ensure_dir(target)?;
    mount_fs(source, target, fstype, flags, data)
}

/// Moves the mount at `from` to `to` (MS_MOVE).
pub fn move_mount(from: &Path, to: &Path) -> Result<(), MountError> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|errno| {
        MountError::Move {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            errno,
        }
    })
}

/// Whether something is mounted on `path`: it sits on another device than its
/// parent. (A bind mount of the same file system is not seen; the init makes none.)
pub fn is_mountpoint(path: &Path) -> bool {
    let (Ok(own), Ok(parent)) = (
        std::fs::symlink_metadata(path),
        std::fs::symlink_metadata(path.join("..")),
    ) else {
        return false;
    };
    own.dev() != parent.dev() || own.ino() == parent.ino()
}

/// Mount points to unmount at shutdown, innermost first: everything in `mounts`
/// (the text of `/proc/self/mounts`) except the root and the kernel's API file
/// systems (`/proc`, `/sys`, `/dev` and what is under them), which must outlive PID 1.
pub fn unmount_order(mounts: &str) -> Vec<PathBuf> {
    let mut targets: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(unescape)
        .filter(|target| {
            let path = Path::new(target);
            path != Path::new("/")
                && !["/proc", "/sys", "/dev"]
                    .iter()
                    .any(|api| path.starts_with(api))
        })
        .map(PathBuf::from)
        .collect();
    targets.reverse();
    targets.dedup();
    targets
}

/// Undoes the octal escapes of /proc/self/mounts (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(value) = octal_escape(&bytes[i..]) {
            out.push(value);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte of a `\NNN` escape at the start of `bytes`.
fn octal_escape(bytes: &[u8]) -> Option<u8> {
    let [b'\\', a, b, c, ..] = *bytes else {
        return None;
    };
    let digit = |d: u8| (b'0'..=b'7').contains(&d).then(|| u32::from(d - b'0'));
    let value = digit(a)? * 64 + digit(b)? * 8 + digit(c)?;
    u8::try_from(value).ok()
}

/// Unmounts everything [`unmount_order`] lists, best effort: a busy file system is
/// detached lazily (after a sync its data is on disk already).
pub fn unmount_all() {
    let text = match std::fs::read_to_string("/proc/self/mounts") {
        Ok(text) => text,
        Err(err) => {
            log!("reading /proc/self/mounts: {err}");
            return;
        }
    };
    for target in unmount_order(&text) {
        match umount2(&target, MntFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EBUSY) => {
                if let Err(errno) = umount2(&target, MntFlags::MNT_DETACH) {
                    log!("unmounting {}: {errno}", target.display());
                }
            }
            // Already gone with its parent, or never ours to unmount.
            Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(errno) => log!("unmounting {}: {errno}", target.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
/dev/root / squashfs ro,relatime 0 0
devtmpfs /dev devtmpfs rw,relatime 0 0
proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
tmpfs /run tmpfs rw 0 0
tmpfs /tmp tmpfs rw 0 0
/dev/vda4 /var ext4 rw,noatime 0 0
tmpfs /var/my\\040dir tmpfs rw 0 0
";

    #[test]
    fn unmounts_innermost_first_and_keeps_api_filesystems() {
        let order: Vec<String> = unmount_order(MOUNTS)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(order, ["/var/my dir", "/var", "/tmp", "/run"]);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
    }

    #[test]
    fn mountpoints() {
        assert!(is_mountpoint(Path::new("/")));
        assert!(!is_mountpoint(Path::new("/nonexistent/path")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mountpoint(dir.path()));
    }
}
