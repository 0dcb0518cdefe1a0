//! The early stage, run from the initramfs: mount the kernel's API file systems,
//! load the listed modules, wait for the root partition named on the command line,
//! put dm-verity over it and check every block when the command line carries a root
//! hash, mount it on /sysroot, switch to it and exec its /sbin/init (berth-init
//! again, which then runs the main stage).
//!
//! Its parts, in the order they run: [`kmod`] loads the modules, [`table`]
//! repairs a root disk whose primary GPT is damaged, [`verity`] puts dm-verity
//! over the root partition. The mounts, the kernel command line and the
//! console come from [`crate::shared`], which the main stage uses too.

mod kmod;
mod table;
mod verity;

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_format::layout;
use berth_format::{KernelCmdline, Slot};
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
use nix::unistd::{chdir, chroot, execv};

use crate::early::verity::{SetupError, VerifyError};
use crate::shared::cmdline::{self, CmdlineError};
use crate::shared::mounts::{self, MountError};
use berth_format::blockdev::{self, BlockError, Roots};

/// Where the root file system is mounted before the switch.
pub const SYSROOT: &str = "/sysroot";
/// What runs next, inside the root.
pub const NEXT_INIT: &str = "/sbin/init";
/// `RAMFS_MAGIC` from linux/magic.h (nix only names TMPFS_MAGIC).
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
/// How long to wait for the root partition.
pub const ROOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often to look for it.
pub const ROOT_POLL: Duration = Duration::from_millis(50);

/// The kernel's API file systems: source, mount point, type.
pub const API_FILESYSTEMS: [(&str, &str, &str); 3] = [
    ("proc", "/proc", "proc"),
    ("sysfs", "/sys", "sysfs"),
    ("devtmpfs", "/dev", "devtmpfs"),
];

/// A step of the early stage that failed. [`EarlyError::SlotRefused`] ends in
/// `power::refuse_slot`, every other one in a reboot.
#[derive(Debug, thiserror::Error)]
pub enum EarlyError {
    /// The booted slot's root must not be used: it failed dm-verity, or could not
    /// be checked although the command line asks for it.
    #[error("root filesystem of {slot} {refusal}: refusing to boot it")]
    SlotRefused { slot: SlotName, refusal: Refusal },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// The command line has no `root=PARTUUID=…`.
    #[error("the kernel command line names no root=PARTUUID=<uuid>")]
    NoRoot,
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The initramfs is not a ramfs/tmpfs, so its contents must not be deleted.
    #[error("refusing to switch root: / is not the initramfs (statfs: {0})")]
    NotInitramfs(String),
    /// A step of the root switch failed.
    #[error("switching root: {step}: {errno}")]
    Switch { step: &'static str, errno: Errno },
    /// The root's init could not be executed.
    #[error("executing {path} in the new root: {errno}")]
    Exec { path: String, errno: Errno },
}

/// Why a slot's root is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Some `berth.verity.*` words are missing or malformed; mounting without
    /// verity would silently drop the check the boot entry asked for.
    #[error("cannot be verified: {0}")]
    Cmdline(String),
    /// The verity device could not be set up.
    #[error("cannot be verified: {0}")]
    Setup(#[from] SetupError),
    /// The whole-device read found a corrupted block, or could not finish.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// The booted slot as the console names it: `slot a`, or `the booted slot` when the
/// root partition is not found to be a slot's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotName(pub Option<Slot>);

impl std::fmt::Display for SlotName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(slot) => write!(f, "slot {slot}"),
            None => f.write_str("the booted slot"),
        }
    }
}

/// Runs the early stage; only returns through an exec, so any return is an error.
pub fn run() -> EarlyError {
    match boot() {
        Ok(never) => match never {},
        Err(err) => err,
    }
}

fn boot() -> Result<Infallible, EarlyError> {
    let start = Instant::now();
    for (source, target, fstype) in API_FILESYSTEMS {
        let flags = match fstype {
            "devtmpfs" => MsFlags::MS_NOSUID,
            _ => MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        };
        mounts::mount_on_dir(source, Path::new(target), fstype, flags, None)?;
    }
    crate::shared::console::ensure();
    let loaded = crate::early::kmod::load_all(Path::new(layout::INITRAMFS_MODULES_PATH));
    let cmdline = cmdline::read(Path::new(cmdline::PROC_CMDLINE))?;
    let partuuid = cmdline::root_partuuid(&cmdline).ok_or(EarlyError::NoRoot)?;
    let mut tried = std::collections::BTreeSet::new();
    let root = blockdev::wait_for_partition_with(
        &Roots::system(),
        partuuid,
        ROOT_TIMEOUT,
        ROOT_POLL,
        &mut |disks| {
            // A disk that holds the root only in its backup GPT: repaired once.
            for disk in disks {
                if disk.by_partuuid(partuuid).is_none() || !tried.insert(disk.name.clone()) {
                    continue;
                }
                match table::repair(disk) {
                    Ok(true) => log!(
                        "{}: the primary partition table was damaged; rewrote it from the backup",
                        disk.node.display()
                    ),
                    Ok(false) => {}
                    Err(err) => log!("{err}"),
                }
            }
        },
    )?;
    log!(
        "loaded {loaded} modules, root {} found after {} ms",
        root.display(),
        start.elapsed().as_millis()
    );
    let device = root_device(&root, &cmdline).map_err(|refusal| EarlyError::SlotRefused {
        slot: SlotName(cmdline::booted_slot(&Roots::system(), &cmdline).ok()),
        refusal,
    })?;
    let sysroot = Path::new(SYSROOT);
    mounts::mount_on_dir(
        &device.to_string_lossy(),
        sysroot,
        "squashfs",
        MsFlags::MS_RDONLY,
        None,
    )?;
    switch_root(sysroot, NEXT_INIT)
}

/// The device to mount as the root. With `berth.verity.*` on the command line: the
/// dm-verity device over `partition`, after one read of all its blocks found none
/// corrupted (checking before the mount also covers the squashfs superblock, whose
/// corruption would otherwise surface as an unclear mount error). Without them: the
/// partition itself (an image built without verity). With only some of them, or
/// malformed ones: refused, never mounted unverified.
fn root_device(partition: &Path, cmdline: &KernelCmdline) -> Result<PathBuf, Refusal> {
    if let Some(error) = &cmdline.verity_error {
        return Err(Refusal::Cmdline(error.clone()));
    }
    let Some(params) = &cmdline.verity else {
        log!(
            "no berth.verity.* on the command line: mounting {} without dm-verity",
            partition.display()
        );
        return Ok(partition.to_path_buf());
    };
    let node = verity::open_root(partition, params)?;
    let start = Instant::now();
    verity::verify_all(&node, params.data_blocks)?;
    log!(
        "verified root ({} blocks) in {} ms",
        params.data_blocks,
        start.elapsed().as_millis()
    );
    Ok(node)
}

/// What busybox's switch_root does: move the API mounts into the new root, empty
/// the initramfs (freeing its memory), make the new root `/` and exec its init.
fn switch_root(new_root: &Path, init: &str) -> Result<Infallible, EarlyError> {
    for (_, target, _) in API_FILESYSTEMS {
        let from = Path::new(target);
        let to = new_root.join(target.trim_start_matches('/'));
        if let Err(err) = mounts::move_mount(from, &to) {
            // The main stage mounts whatever is missing; this one stays behind,
            // hidden under the new root.
            log!("{err}");
        }
    }
    chdir(new_root).map_err(|errno| EarlyError::Switch {
        step: "chdir to the new root",
        errno,
    })?;
    let fs = statfs("/").map_err(|errno| EarlyError::NotInitramfs(errno.to_string()))?;
    let fs_type = fs.filesystem_type();
    if fs_type != RAMFS_MAGIC && fs_type != TMPFS_MAGIC {
        return Err(EarlyError::NotInitramfs(format!(
            "file system type {fs_type:?}"
        )));
    }
    match std::fs::symlink_metadata("/") {
        Ok(meta) => delete_tree(Path::new("/"), meta.dev()),
        Err(err) => log!("not freeing the initramfs: {err}"),
    }
    mounts::move_mount(Path::new("."), Path::new("/"))?;
    chroot(".").map_err(|errno| EarlyError::Switch {
        step: "chroot",
        errno,
    })?;
    chdir("/").map_err(|errno| EarlyError::Switch {
        step: "chdir /",
        errno,
    })?;
    let path = CString::new(init).map_err(|_| EarlyError::Exec {
        path: init.to_string(),
        errno: Errno::EINVAL,
    })?;
    let Err(errno) = execv(&path, &[&path]);
    Err(EarlyError::Exec {
        path: init.to_string(),
        errno,
    })
}

/// Deletes the contents of `dir` that live on device `dev`, without following
/// symlinks or descending into other mounts (the new root among them). Errors are
/// skipped: this only frees memory.
fn delete_tree(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    for path in paths {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            delete_tree(&path, dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn delete_tree_removes_files_dirs_and_symlinks_but_not_targets() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("lib/modules/6.1")).unwrap();
        fs::write(root.join("lib/modules/6.1/virtio.ko"), "ko").unwrap();
        fs::write(root.join("init"), "elf").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        let dev = fs::metadata(root).unwrap().dev();
        delete_tree(root, dev);
        assert_eq!(fs::read_dir(root).unwrap().count(), 0);
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn refusals_name_the_slot_and_the_reason() {
        let err = EarlyError::SlotRefused {
            slot: SlotName(Some(Slot::A)),
            refusal: Refusal::Verify(VerifyError::Corrupt {
                path: PathBuf::from("/dev/dm-0"),
                block: 17,
            }),
        };
        assert_eq!(
            err.to_string(),
            "root filesystem of slot a failed dm-verity verification (block 17): refusing to boot it"
        );
        let err = EarlyError::SlotRefused {
            slot: SlotName(None),
            refusal: Refusal::Cmdline("incomplete berth.verity.* parameters".into()),
        };
        assert_eq!(
            err.to_string(),
            "root filesystem of the booted slot cannot be verified: incomplete berth.verity.* parameters: refusing to boot it"
        );
    }

    #[test]
    fn partial_verity_parameters_are_refused_not_ignored() {
        let cmdline = KernelCmdline::parse(
            "root=PARTUUID=11111111-2222-3333-4444-555555555555 berth.verity.roothash=abcd",
        );
        let err = root_device(Path::new("/dev/vda2"), &cmdline).unwrap_err();
        assert!(matches!(err, Refusal::Cmdline(_)), "{err}");
    }

    #[test]
    fn no_verity_parameters_mount_the_partition_itself() {
        let cmdline = KernelCmdline::parse("root=PARTUUID=11111111-2222-3333-4444-555555555555");
        assert_eq!(
            root_device(Path::new("/dev/vda2"), &cmdline).unwrap(),
            Path::new("/dev/vda2")
        );
    }

    #[test]
    fn verity_on_something_that_is_not_a_block_device_is_refused() {
        let cmdline = KernelCmdline::parse(&format!(
            "berth.verity.roothash={} berth.verity.salt=- berth.verity.blocks=1 berth.verity.hashoffset=4096",
            "ab".repeat(32)
        ));
        let dir = tempfile::tempdir().unwrap();
        let err = root_device(dir.path(), &cmdline).unwrap_err();
        assert!(
            matches!(err, Refusal::Setup(SetupError::NotBlockDevice { .. })),
            "{err}"
        );
    }

    #[test]
    fn delete_tree_skips_other_devices() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), "x").unwrap();
        delete_tree(dir.path(), u64::MAX);
        assert!(dir.path().join("file").exists());
    }
}
