//! What `berth flash` writes onto, checked before a byte is written: a whole
//! disk that nothing uses and that is big enough, or a regular file. Everything
//! else is refused with the reason.
//!
//! The checks read `/proc/self/mountinfo`, `/proc/swaps` and sysfs
//! (`/sys/dev/block/MAJ:MIN`: `partition`, `holders/`, `slaves/`, the disk's
//! partitions); the roots are parameters so tests can use a fake tree.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a target is refused (nothing was written).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{path}: the folder it would be created in does not exist ({parent})")]
    NoParent { path: PathBuf, parent: PathBuf },
    #[error("{path} is a directory: give a whole disk (/dev/sdX) or an image file")]
    Directory { path: PathBuf },
    #[error("{path} is a {kind}, not a block device or a regular file")]
    NotBlockOrFile { path: PathBuf, kind: &'static str },
    #[error("{path} is the image itself")]
    IsTheImage { path: PathBuf },
    #[error("{path} is partition {number} of {disk}: flash the whole disk ({disk})")]
    Partition {
        path: PathBuf,
        number: String,
        disk: PathBuf,
    },
    #[error("{path} is in use: {what} is mounted on {mountpoint}; unmount it first")]
    Mounted {
        path: PathBuf,
        what: String,
        mountpoint: String,
    },
    #[error("{path} is in use: {what} is active swap; swapoff it first")]
    Swap { path: PathBuf, what: String },
    #[error("{path} is in use: {what} is held by {holders} (device mapper, RAID or LVM)")]
    Held {
        path: PathBuf,
        what: String,
        holders: String,
    },
    #[error("{path} holds this host's root file system ({root}): refusing to overwrite the running system")]
    HostRoot { path: PathBuf, root: String },
    #[error("{path} is {size} bytes, smaller than the image ({image_size} bytes)")]
    TooSmall {
        path: PathBuf,
        size: u64,
        image_size: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the checks look.
#[derive(Debug, Clone)]
pub struct SystemRoots {
    /// `/sys`.
    pub sys: PathBuf,
    /// `/proc/self/mountinfo`.
    pub mountinfo: PathBuf,
    /// `/proc/swaps`.
    pub swaps: PathBuf,
    /// The host's root, whose disk is never written (`/`).
    pub host_root: PathBuf,
}

impl SystemRoots {
    pub fn system() -> SystemRoots {
        SystemRoots {
            sys: PathBuf::from("/sys"),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            swaps: PathBuf::from("/proc/swaps"),
            host_root: PathBuf::from("/"),
        }
    }
}

/// What kind of target it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// A whole disk, `MAJ:MIN`, with its size in bytes.
    BlockDevice { dev: (u32, u32), size: u64 },
    /// A regular file (created when missing), made the image's size.
    File { exists: bool },
}

impl TargetKind {
    /// `block device` or `file`, for messages and `--json`.
    pub fn name(&self) -> &'static str {
        match self {
            TargetKind::BlockDevice { .. } => "block device",
            TargetKind::File { .. } => "file",
        }
    }
}

/// A target that passed every check.
#[derive(Debug, Clone)]
pub struct Target {
    pub path: PathBuf,
    pub kind: TargetKind,
}

/// Checks `path` as a target for `image` (of `image_size` bytes).
pub fn check(
    path: &Path,
    image: &Path,
    image_size: u64,
    roots: &SystemRoots,
) -> Result<Target, TargetError> {
    let io = |source| TargetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(p) if p.as_os_str().is_empty() => Path::new("."),
                Some(p) => p,
                None => Path::new("/"),
            };
            if !parent.is_dir() {
                return Err(TargetError::NoParent {
                    path: path.to_path_buf(),
                    parent: parent.to_path_buf(),
                });
            }
            return Ok(Target {
                path: path.to_path_buf(),
                kind: TargetKind::File { exists: false },
            });
        }
        Err(e) => return Err(io(e)),
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(TargetError::Directory {
            path: path.to_path_buf(),
        });
    }
    if ft.is_file() {
        if let Ok(image_meta) = fs::metadata(image) {
            if image_meta.dev() == meta.dev() && image_meta.ino() == meta.ino() {
                return Err(TargetError::IsTheImage {
                    path: path.to_path_buf(),
                });
            }
        }
        return Ok(Target {
            path: path.to_path_buf(),
            kind: TargetKind::File { exists: true },
        });
    }
    if !ft.is_block_device() {
        let kind = if ft.is_char_device() {
            "character device"
        } else if ft.is_fifo() {
            "named pipe"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        };
        return Err(TargetError::NotBlockOrFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    let dev = (
        rustix::fs::major(meta.rdev()),
        rustix::fs::minor(meta.rdev()),
    );
    let sys_dir = sys_block_dir(&roots.sys, dev).map_err(io)?;
    if sys_dir.join("partition").exists() {
        let number = fs::read_to_string(sys_dir.join("partition"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        let disk = sys_dir
            .parent()
            .and_then(Path::file_name)
            .map(|n| Path::new("/dev").join(n))
            .unwrap_or_default();
        return Err(TargetError::Partition {
            path: path.to_path_buf(),
            number,
            disk,
        });
    }
    // The host's own disk first: it is also mounted, but this says why.
    if let Ok(root_meta) = fs::metadata(&roots.host_root) {
        let root_dev = (
            rustix::fs::major(root_meta.dev()),
            rustix::fs::minor(root_meta.dev()),
        );
        let disks = underlying_disks(&roots.sys, root_dev);
        if disks.contains(&dev) {
            return Err(TargetError::HostRoot {
                path: path.to_path_buf(),
                root: format!(
                    "{} on device {}:{}",
                    roots.host_root.display(),
                    root_dev.0,
                    root_dev.1
                ),
            });
        }
    }
    // The disk and every partition on it: none may be in use.
    let mut members = vec![(name_of(&sys_dir), dev)];
    for entry in fs::read_dir(&sys_dir).map_err(io)?.flatten() {
        let p = entry.path();
        if p.join("partition").exists() {
            if let Some(d) = read_dev(&p.join("dev")) {
                members.push((name_of(&p), d));
            }
        }
    }
    let mounts = fs::read_to_string(&roots.mountinfo).map_err(|source| TargetError::Io {
        path: roots.mountinfo.clone(),
        source,
    })?;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(devno), Some(mountpoint)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        if let Some((name, _)) = members.iter().find(|(_, d)| parse_dev(devno) == Some(*d)) {
            return Err(TargetError::Mounted {
                path: path.to_path_buf(),
                what: format!("/dev/{name}"),
                mountpoint: unescape(mountpoint),
            });
        }
    }
    if let Ok(swaps) = fs::read_to_string(&roots.swaps) {
        for line in swaps.lines().skip(1) {
            let Some(file) = line.split_whitespace().next() else {
                continue;
            };
            let Ok(meta) = fs::metadata(unescape(file)) else {
                continue;
            };
            let d = (
                rustix::fs::major(meta.rdev()),
                rustix::fs::minor(meta.rdev()),
            );
            if meta.file_type().is_block_device() && members.iter().any(|(_, m)| *m == d) {
                return Err(TargetError::Swap {
                    path: path.to_path_buf(),
                    what: file.to_string(),
                });
            }
        }
    }
    for (name, _) in &members {
        let dir = if *name == members[0].0 {
            sys_dir.clone()
        } else {
            sys_dir.join(name)
        };
        let holders: Vec<String> = fs::read_dir(dir.join("holders"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !holders.is_empty() {
            return Err(TargetError::Held {
                path: path.to_path_buf(),
                what: format!("/dev/{name}"),
                holders: holders.join(", "),
            });
        }
    }
    let size = device_size(&sys_dir).map_err(io)?;
    if size < image_size {
        return Err(TargetError::TooSmall {
            path: path.to_path_buf(),
            size,
            image_size,
        });
    }
    Ok(Target {
        path: path.to_path_buf(),
        kind: TargetKind::BlockDevice { dev, size },
    })
}

/// `/sys/dev/block/MAJ:MIN` resolved to its folder under `/sys/devices`.
fn sys_block_dir(sys: &Path, dev: (u32, u32)) -> std::io::Result<PathBuf> {
    fs::canonicalize(sys.join(format!("dev/block/{}:{}", dev.0, dev.1)))
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_dev(path: &Path) -> Option<(u32, u32)> {
    parse_dev(fs::read_to_string(path).ok()?.trim())
}

fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// mountinfo and /proc/swaps write space, tab, newline and backslash as `\ooo`.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(v) = text
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The whole disks under a block device: itself when it is one, its disk when
/// it is a partition, and the disks under a device-mapper or RAID device
/// (through `slaves/`), recursively.
pub fn underlying_disks(sys: &Path, dev: (u32, u32)) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![dev];
    let mut seen = 0;
    while let Some(d) = todo.pop() {
        seen += 1;
        if seen > 256 {
            break;
        }
        let Ok(dir) = sys_block_dir(sys, d) else {
            continue;
        };
        let slaves: Vec<(u32, u32)> = fs::read_dir(dir.join("slaves"))
            .map(|r| {
                r.flatten()
                    .filter_map(|e| read_dev(&e.path().join("dev")))
                    .collect()
            })
            .unwrap_or_default();
        if !slaves.is_empty() {
            todo.extend(slaves);
        } else if dir.join("partition").exists() {
            if let Some(disk) = dir.parent().and_then(|p| read_dev(&p.join("dev"))) {
                out.push(disk);
            }
        } else {
            out.push(d);
        }
    }
    out
}

/// The device's size from sysfs (512-byte sectors, whatever its block size).
fn device_size(sys_dir: &Path) -> std::io::Result<u64> {
    let text = fs::read_to_string(sys_dir.join("size"))?;
    text.trim()
        .parse::<u64>()
        .map(|sectors| sectors * 512)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> SystemRoots {
        SystemRoots::system()
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }

    #[test]
    fn files_directories_and_missing_parents() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.img");
        fs::write(&image, b"image").unwrap();
        let err = check(dir.path(), &image, 5, &roots()).unwrap_err();
        assert!(matches!(err, TargetError::Directory { .. }), "{err}");
        let err = check(&dir.path().join("no/such/file"), &image, 5, &roots()).unwrap_err();
        assert!(matches!(err, TargetError::NoParent { .. }), "{err}");
        let err = check(&image, &image, 5, &roots()).unwrap_err();
        assert!(matches!(err, TargetError::IsTheImage { .. }), "{err}");
        let new = check(&dir.path().join("new.img"), &image, 5, &roots()).unwrap();
        assert_eq!(new.kind, TargetKind::File { exists: false });
        let err = check(Path::new("/dev/null"), &image, 5, &roots()).unwrap_err();
        assert!(matches!(err, TargetError::NotBlockOrFile { .. }), "{err}");
    }
}
