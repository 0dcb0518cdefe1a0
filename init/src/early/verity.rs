//! dm-verity for the root file system, without dmsetup: the device-mapper ioctls on
//! `/dev/mapper/control` (`DM_VERSION`, `DM_DEV_CREATE`, `DM_TABLE_LOAD` with one
//! read-only `verity` target, `DM_DEV_SUSPEND` to resume), then one read of the
//! whole device so every data block is checked against the root hash before the
//! system switches to it.
//!
//! The table has no optional arguments, so dm-verity runs in its default EIO mode: a
//! block that does not match its hash is never returned to a reader, the read fails
//! with EIO (and the kernel logs "data block N is corrupted"). Neither
//! `restart_on_corruption` nor `panic_on_corruption` is used: the whole-device read
//! finds a corrupted slot before anything runs from it, and the init then refuses the
//! slot itself (see `power::refused_slot_action`) instead of letting the kernel
//! restart into the same slot over and over.
//!
//! The hash tree (format 1, sha256, 4096-byte data and hash blocks, no superblock)
//! follows the file system in the same partition; its first block is
//! `hash_offset / 4096`.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_format::layout::{VerityParams, VERITY_BLOCK_SIZE};
use nix::errno::Errno;
use nix::sys::stat::{major, makedev, minor, mknod, Mode, SFlag};

/// The device-mapper control node (created by devtmpfs when dm-mod loads).
pub const CONTROL_PATH: &str = "/dev/mapper/control";
/// The control node's device number: misc device 10, minor `MAPPER_CTRL_MINOR`.
const CONTROL_DEV: (u64, u64) = (10, 236);
/// Name of the verity device over the booted slot's root partition.
pub const DEVICE_NAME: &str = "berth-root";
/// Where block devices are listed by number (`<major>:<minor>/uevent`).
const SYS_DEV_BLOCK: &str = "/sys/dev/block";
/// Where device nodes live.
const DEV_DIR: &str = "/dev";
/// How long to wait for devtmpfs to create the verity device's node before making it.
const NODE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often to look for it.
const NODE_POLL: Duration = Duration::from_millis(10);
/// Size of each read of the whole-device verification.
const VERIFY_CHUNK: usize = 1 << 20;
/// 512-byte sectors per 4096-byte verity block.
const SECTORS_PER_BLOCK: u64 = VERITY_BLOCK_SIZE / 512;
/// The only hash algorithm berth images use.
const HASH_ALGORITHM: &str = "sha256";
/// dm-verity on-disk format: 1 is the one veritysetup writes (salt before the data).
const VERITY_FORMAT: u32 = 1;

// linux/dm-ioctl.h
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;
/// The interface major version; any minor the kernel has (0 here) is accepted.
const DM_VERSION_MAJOR: u32 = 4;
/// `DM_READONLY_FLAG`: the table opens its devices read-only and the disk is read-only.
const DM_READONLY_FLAG: u32 = 1 << 0;
/// The ioctl type of device-mapper.
const DM_IOCTL_TYPE: u32 = 0xfd;
/// `sizeof(struct dm_ioctl)`, part of every request number.
const DM_IOCTL_SIZE: u32 = 312;
/// Room for the verity target's parameters (the longest berth line is ~700 bytes
/// with a 256-byte salt).
const PARAMS_MAX: usize = 1024;
/// `sizeof(DmBuffer)`, passed as `data_size`.
const DM_BUFFER_SIZE: u32 = 1376;

const _: () = assert!(std::mem::size_of::<DmIoctl>() == DM_IOCTL_SIZE as usize);
const _: () = assert!(std::mem::size_of::<DmBuffer>() == DM_BUFFER_SIZE as usize);

/// `struct dm_ioctl` from linux/dm-ioctl.h: the header of every device-mapper ioctl.
#[repr(C)]
#[derive(Debug, Clone)]
struct DmIoctl {
    /// In: the interface version the caller speaks. Out: the kernel's.
    version: [u32; 3],
    /// Size of the whole buffer, this header included.
    data_size: u32,
    /// Offset of the payload (the target specs) from the start of this header.
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    /// Out: the device number (in the kernel's `huge_encode_dev` form).
    dev: u64,
    /// The device's name, NUL-terminated.
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`; the target's parameters follow it, NUL-terminated.
#[repr(C)]
#[derive(Debug, Clone)]
struct DmTargetSpec {
    sector_start: u64,
    /// Length in 512-byte sectors.
    length: u64,
    status: i32,
    /// Offset of the next spec from the start of this one.
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

/// The buffer every call passes: the header, room for one target spec and its
/// parameters. Calls without a table leave `target_count` at 0 and the rest unread.
#[repr(C)]
#[derive(Debug, Clone)]
struct DmBuffer {
    header: DmIoctl,
    spec: DmTargetSpec,
    params: [u8; PARAMS_MAX],
}

/// The device-mapper commands the init uses (the `nr` of their ioctl numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DmCommand {
    Version = 0,
    DevCreate = 3,
    DevSuspend = 6,
    TableLoad = 9,
}

impl DmCommand {
    /// `_IOWR(0xfd, nr, struct dm_ioctl)`.
    fn request(self) -> u32 {
        const IOC_READ_WRITE: u32 = 3;
        (IOC_READ_WRITE << 30) | (DM_IOCTL_SIZE << 16) | (DM_IOCTL_TYPE << 8) | self as u32
    }
}

/// A verity table that cannot be built from the command line's parameters.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The block count does not fit in a sector count.
    #[error("{data_blocks} data blocks is more than a device can hold")]
    TooManyBlocks { data_blocks: u64 },
    /// The hash tree would start inside the data it covers.
    #[error("the hash tree offset {hash_offset} lies inside the {data_bytes} data bytes")]
    HashInsideData { hash_offset: u64, data_bytes: u64 },
    /// The target line does not fit the ioctl buffer.
    #[error("the verity target line is {len} bytes, more than {PARAMS_MAX}")]
    TooLong { len: usize },
}

/// Failure to set up the verity device; each ioctl has its own variant.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Table(#[from] TableError),
    /// The root partition's node could not be examined.
    #[error("examining {path}: {source}")]
    Partition {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The root partition's node is not a block device.
    #[error("{path} is not a block device")]
    NotBlockDevice { path: PathBuf },
    /// devtmpfs made no control node and making one failed.
    #[error("creating {path} (character device 10:236): {errno}")]
    CreateControl { path: PathBuf, errno: Errno },
    /// The control node could not be opened.
    #[error("opening {path} (is dm-mod loaded?): {source}")]
    OpenControl {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `DM_VERSION` failed: the kernel does not speak device-mapper interface 4.
    #[error("DM_VERSION on {path}: {errno}")]
    Version { path: PathBuf, errno: Errno },
    /// `DM_DEV_CREATE` failed.
    #[error("DM_DEV_CREATE of {name}: {errno}")]
    Create { name: &'static str, errno: Errno },
    /// `DM_TABLE_LOAD` failed; the kernel log says which parameter it refused.
    #[error("DM_TABLE_LOAD of {name} ({table}): {errno}")]
    TableLoad {
        name: &'static str,
        table: String,
        errno: Errno,
    },
    /// `DM_DEV_SUSPEND` (resume, with flags 0) failed.
    #[error("DM_DEV_SUSPEND (resume) of {name}: {errno}")]
    Resume { name: &'static str, errno: Errno },
    /// devtmpfs made no node for the device and making one failed.
    #[error("creating device node {path} ({major}:{minor}) for {name}: {errno}")]
    Node {
        name: &'static str,
        path: PathBuf,
        major: u64,
        minor: u64,
        errno: Errno,
    },
}

/// Failure of the whole-device read that checks every data block.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// dm-verity refused a block: its content does not match the root hash.
    #[error("failed dm-verity verification (block {block})")]
    Corrupt { path: PathBuf, block: u64 },
    /// The device could not be opened.
    #[error("cannot be verified: opening {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A read failed with something other than EIO.
    #[error("cannot be verified: reading {path} at block {block}: {source}")]
    Read {
        path: PathBuf,
        block: u64,
        source: std::io::Error,
    },
    /// The device ended before the block count the command line names.
    #[error(
        "cannot be verified: {path} ends at block {block}, before the {expected} blocks to check"
    )]
    Truncated {
        path: PathBuf,
        block: u64,
        expected: u64,
    },
}

/// The `verity` target over one partition holding both the data and the hash tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTable {
    /// Major and minor number of the partition (data and hash device alike).
    pub device: (u64, u64),
    pub data_blocks: u64,
    /// First block of the hash tree, in 4096-byte blocks from the partition start.
    pub hash_start_block: u64,
    pub root_hash: String,
    /// Lowercase hex; empty for none.
    pub salt: String,
}

impl VerityTable {
    /// The table for `params` on the partition numbered `device`.
    pub fn new(params: &VerityParams, device: (u64, u64)) -> Result<VerityTable, TableError> {
        let data_bytes =
            params
                .data_blocks
                .checked_mul(VERITY_BLOCK_SIZE)
                .ok_or(TableError::TooManyBlocks {
                    data_blocks: params.data_blocks,
                })?;
        if params.hash_offset < data_bytes {
            return Err(TableError::HashInsideData {
                hash_offset: params.hash_offset,
                data_bytes,
            });
        }
        Ok(VerityTable {
            device,
            data_blocks: params.data_blocks,
            hash_start_block: params.hash_offset / VERITY_BLOCK_SIZE,
            root_hash: params.root_hash.clone(),
            salt: params.salt.clone(),
        })
    }

    /// Length of the device in 512-byte sectors (fits: `new` checked the bytes).
    pub fn sectors(&self) -> u64 {
        self.data_blocks * SECTORS_PER_BLOCK
    }

    /// The target's parameters, as dmsetup would show them after `verity`:
    /// `1 <dev> <dev> 4096 4096 <blocks> <hash start> sha256 <root hash> <salt|->`,
    /// with no optional arguments (EIO on corruption).
    pub fn target_params(&self) -> String {
        let (major, minor) = self.device;
        let salt = if self.salt.is_empty() {
            "-"
        } else {
            &self.salt
        };
        format!(
            "{VERITY_FORMAT} {major}:{minor} {major}:{minor} {VERITY_BLOCK_SIZE} {VERITY_BLOCK_SIZE} {} {} {HASH_ALGORITHM} {} {salt}",
            self.data_blocks, self.hash_start_block, self.root_hash
        )
    }
}

impl std::fmt::Display for VerityTable {
    /// The whole table line: `0 <sectors> verity <params>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0 {} verity {}", self.sectors(), self.target_params())
    }
}

impl DmBuffer {
    /// A zeroed buffer for a call on the device `name` (empty for none).
    fn new(name: &str) -> DmBuffer {
        let mut buffer = DmBuffer {
            header: DmIoctl {
                version: [DM_VERSION_MAJOR, 0, 0],
                data_size: DM_BUFFER_SIZE,
                data_start: DM_IOCTL_SIZE,
                target_count: 0,
                open_count: 0,
                flags: 0,
                event_nr: 0,
                padding: 0,
                dev: 0,
                name: [0; DM_NAME_LEN],
                uuid: [0; DM_UUID_LEN],
                data: [0; 7],
            },
            spec: DmTargetSpec {
                sector_start: 0,
                length: 0,
                status: 0,
                next: 0,
                target_type: [0; DM_MAX_TYPE_NAME],
            },
            params: [0; PARAMS_MAX],
        };
        // Names are this module's constants, far below the limit.
        copy_c_string(&mut buffer.header.name, name);
        buffer
    }

    /// A `DM_TABLE_LOAD` buffer: one read-only target holding `table`.
    fn table_load(name: &str, table: &VerityTable) -> Result<DmBuffer, TableError> {
        let params = table.target_params();
        let mut buffer = DmBuffer::new(name);
        if !copy_c_string(&mut buffer.params, &params) {
            return Err(TableError::TooLong { len: params.len() });
        }
        buffer.header.flags = DM_READONLY_FLAG;
        buffer.header.target_count = 1;
        buffer.spec.sector_start = 0;
        buffer.spec.length = table.sectors();
        // The only target: `next` points just past its parameters, as libdevmapper does.
        buffer.spec.next = DM_BUFFER_SIZE - DM_IOCTL_SIZE;
        copy_c_string(&mut buffer.spec.target_type, "verity");
        Ok(buffer)
    }
}

/// Copies `text` and a terminating NUL into `dest`; false (and nothing copied) when
/// it does not fit or contains a NUL itself.
fn copy_c_string(dest: &mut [u8], text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() >= dest.len() || bytes.contains(&0) {
        return false;
    }
    dest[..bytes.len()].copy_from_slice(bytes);
    dest[bytes.len()] = 0;
    true
}

/// The open `/dev/mapper/control`.
#[derive(Debug)]
struct Control {
    file: File,
    path: PathBuf,
}

impl Control {
    /// Opens the control node, creating it first if devtmpfs did not.
    fn open(path: &Path) -> Result<Control, SetupError> {
        if std::fs::symlink_metadata(path).is_err() {
            make_control_node(path)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| SetupError::OpenControl {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Control {
            file,
            path: path.to_path_buf(),
        })
    }

    /// One device-mapper ioctl on `buffer`.
    fn call(&self, command: DmCommand, buffer: &mut DmBuffer) -> Result<(), Errno> {
        debug_assert_eq!(buffer.header.data_size, DM_BUFFER_SIZE);
        // The request type is u32 in the kernel; libc declares it c_ulong (glibc) or
        // c_int (musl), and the bits pass through unchanged either way.
        let request = command.request() as libc::Ioctl;
        // SAFETY: `request` is `_IOWR(0xfd, nr, struct dm_ioctl)` and the pointer is
        // to a `#[repr(C)]` buffer starting with a `struct dm_ioctl` whose
        // `data_size` is the buffer's own size (asserted above and at compile
        // time), so the kernel reads and writes only memory `buffer` owns; the
        // exclusive borrow keeps it alive and unaliased for the call, and the
        // descriptor is open for as long as `self` lives.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request, std::ptr::from_mut(buffer)) };
        if rc < 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }

    /// `DM_VERSION`: checks the kernel speaks interface 4 and returns its version.
    fn version(&self) -> Result<[u32; 3], SetupError> {
        let mut buffer = DmBuffer::new("");
        self.call(DmCommand::Version, &mut buffer)
            .map_err(|errno| SetupError::Version {
                path: self.path.clone(),
                errno,
            })?;
        Ok(buffer.header.version)
    }

    /// `DM_DEV_CREATE`: a new device without a table; returns its major and minor.
    fn create(&self, name: &'static str) -> Result<(u64, u64), SetupError> {
        let mut buffer = DmBuffer::new(name);
        self.call(DmCommand::DevCreate, &mut buffer)
            .map_err(|errno| SetupError::Create { name, errno })?;
        let dev = buffer.header.dev;
        Ok((major(dev), minor(dev)))
    }

    /// `DM_TABLE_LOAD`: the read-only verity table, inactive until the resume.
    fn load_table(&self, name: &'static str, table: &VerityTable) -> Result<(), SetupError> {
        let mut buffer = DmBuffer::table_load(name, table)?;
        self.call(DmCommand::TableLoad, &mut buffer)
            .map_err(|errno| SetupError::TableLoad {
                name,
                table: table.to_string(),
                errno,
            })
    }

    /// `DM_DEV_SUSPEND` with flags 0: resume, which makes the loaded table live.
    fn resume(&self, name: &'static str) -> Result<(), SetupError> {
        let mut buffer = DmBuffer::new(name);
        self.call(DmCommand::DevSuspend, &mut buffer)
            .map_err(|errno| SetupError::Resume { name, errno })
    }
}

/// Creates the control node (and `/dev/mapper`) by hand.
fn make_control_node(path: &Path) -> Result<(), SetupError> {
    if let Some(parent) = path.parent() {
        // A failure shows up as the mknod's error just below.
        let _ = std::fs::create_dir_all(parent);
    }
    let (major, minor) = CONTROL_DEV;
    match mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        makedev(major, minor),
    ) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(errno) => Err(SetupError::CreateControl {
            path: path.to_path_buf(),
            errno,
        }),
    }
}

/// Major and minor number of the block device node at `path`.
fn block_device_number(path: &Path) -> Result<(u64, u64), SetupError> {
    let meta = std::fs::metadata(path).map_err(|source| SetupError::Partition {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Err(SetupError::NotBlockDevice {
            path: path.to_path_buf(),
        });
    }
    Ok((major(meta.rdev()), minor(meta.rdev())))
}

/// Sets up the read-only verity device `berth-root` over the root `partition` and
/// returns its device node. Nothing is verified yet beyond the table's syntax: call
/// [`verify_all`] before trusting the content.
pub fn open_root(partition: &Path, params: &VerityParams) -> Result<PathBuf, SetupError> {
    let device = block_device_number(partition)?;
    let table = VerityTable::new(params, device)?;
    let control = Control::open(Path::new(CONTROL_PATH))?;
    let [v_major, v_minor, v_patch] = control.version()?;
    let (major, minor) = control.create(DEVICE_NAME)?;
    control.load_table(DEVICE_NAME, &table)?;
    control.resume(DEVICE_NAME)?;
    let node = wait_for_node(Path::new(SYS_DEV_BLOCK), Path::new(DEV_DIR), (major, minor))?;
    log!(
        "dm-verity: {} ({major}:{minor}) over {}, device-mapper {v_major}.{v_minor}.{v_patch}, table: {table}",
        node.display(),
        partition.display()
    );
    Ok(node)
}

/// The node of block device `major:minor`: the `DEVNAME` sysfs gives it (`dm-N`),
/// once devtmpfs has created it; after [`NODE_TIMEOUT`] the init makes it itself.
fn wait_for_node(
    sys: &Path,
    dev: &Path,
    (major, minor): (u64, u64),
) -> Result<PathBuf, SetupError> {
    let sys_dir = sys.join(format!("{major}:{minor}"));
    let node = berth_format::blockdev::device_node(&sys_dir, dev, &format!("dm-{minor}"));
    let start = Instant::now();
    while start.elapsed() < NODE_TIMEOUT {
        if is_block_device(&node) {
            return Ok(node);
        }
        std::thread::sleep(NODE_POLL);
    }
    log!(
        "{} did not appear after {} ms; creating it",
        node.display(),
        NODE_TIMEOUT.as_millis()
    );
    match mknod(
        &node,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o600),
        makedev(major, minor),
    ) {
        Ok(()) | Err(Errno::EEXIST) => Ok(node),
        Err(errno) => Err(SetupError::Node {
            name: DEVICE_NAME,
            path: node,
            major,
            minor,
            errno,
        }),
    }
}

fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.file_type().is_block_device())
}

/// Reads the first `data_blocks` blocks of the verity device at `path`, so dm-verity
/// checks every one of them against the root hash. A block that fails comes back
/// as EIO: [`VerifyError::Corrupt`] names it.
pub fn verify_all(path: &Path, data_blocks: u64) -> Result<(), VerifyError> {
    let mut file = File::open(path).map_err(|source| VerifyError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    read_blocks(&mut file, data_blocks).map_err(|failure| match failure {
        ReadFailure::Corrupt { block } => VerifyError::Corrupt {
            path: path.to_path_buf(),
            block,
        },
        ReadFailure::Other { block, source } => VerifyError::Read {
            path: path.to_path_buf(),
            block,
            source,
        },
        ReadFailure::Truncated { block } => VerifyError::Truncated {
            path: path.to_path_buf(),
            block,
            expected: data_blocks,
        },
    })
}

/// How [`read_blocks`] stopped early, with the block it stopped at.
#[derive(Debug)]
enum ReadFailure {
    Corrupt { block: u64 },
    Other { block: u64, source: std::io::Error },
    Truncated { block: u64 },
}

/// Reads `data_blocks` 4096-byte blocks from `reader` in large chunks, discarding
/// them. A short read followed by EIO (what the page cache does when one page of a
/// large read fails) points at the first bad block.
fn read_blocks(reader: &mut impl Read, data_blocks: u64) -> Result<(), ReadFailure> {
    let total = data_blocks.saturating_mul(VERITY_BLOCK_SIZE);
    let mut buffer = vec![0u8; VERIFY_CHUNK];
    let mut done: u64 = 0;
    while done < total {
        let want =
            usize::try_from(total - done).map_or(VERIFY_CHUNK, |left| left.min(VERIFY_CHUNK));
        let block = done / VERITY_BLOCK_SIZE;
        match reader.read(&mut buffer[..want]) {
            Ok(0) => return Err(ReadFailure::Truncated { block }),
            Ok(n) => done += n as u64,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if err.raw_os_error() == Some(libc::EIO) => {
                return Err(ReadFailure::Corrupt { block })
            }
            Err(source) => return Err(ReadFailure::Other { block, source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    const HASH: &str = "4392ca6e5e0ab4a2fbd9ec1be8e5a1d1a8a0c4a98ef7f0b0d5b3f2b8e1f8e21c";

    fn params() -> VerityParams {
        VerityParams {
            root_hash: HASH.to_string(),
            salt: "a1b2c3d4".to_string(),
            data_blocks: 1000,
            hash_offset: 1000 * 4096,
        }
    }

    #[test]
    fn dm_ioctl_matches_the_kernel_layout() {
        assert_eq!(size_of::<DmIoctl>(), 312);
        assert_eq!(offset_of!(DmIoctl, version), 0);
        assert_eq!(offset_of!(DmIoctl, data_size), 12);
        assert_eq!(offset_of!(DmIoctl, data_start), 16);
        assert_eq!(offset_of!(DmIoctl, target_count), 20);
        assert_eq!(offset_of!(DmIoctl, open_count), 24);
        assert_eq!(offset_of!(DmIoctl, flags), 28);
        assert_eq!(offset_of!(DmIoctl, event_nr), 32);
        assert_eq!(offset_of!(DmIoctl, padding), 36);
        assert_eq!(offset_of!(DmIoctl, dev), 40);
        assert_eq!(offset_of!(DmIoctl, name), 48);
        assert_eq!(offset_of!(DmIoctl, uuid), 176);
        assert_eq!(offset_of!(DmIoctl, data), 305);
    }

    #[test]
    fn dm_target_spec_matches_the_kernel_layout() {
        assert_eq!(size_of::<DmTargetSpec>(), 40);
        assert_eq!(offset_of!(DmTargetSpec, sector_start), 0);
        assert_eq!(offset_of!(DmTargetSpec, length), 8);
        assert_eq!(offset_of!(DmTargetSpec, status), 16);
        assert_eq!(offset_of!(DmTargetSpec, next), 20);
        assert_eq!(offset_of!(DmTargetSpec, target_type), 24);
    }

    #[test]
    fn buffer_puts_the_spec_at_data_start_and_params_after_it() {
        assert_eq!(offset_of!(DmBuffer, spec), DM_IOCTL_SIZE as usize);
        assert_eq!(offset_of!(DmBuffer, params), 312 + 40);
        assert_eq!(size_of::<DmBuffer>(), DM_BUFFER_SIZE as usize);
    }

    #[test]
    fn ioctl_numbers_are_iowr_0xfd() {
        // As strace prints them for dmsetup.
        assert_eq!(DmCommand::Version.request(), 0xc138_fd00);
        assert_eq!(DmCommand::DevCreate.request(), 0xc138_fd03);
        assert_eq!(DmCommand::DevSuspend.request(), 0xc138_fd06);
        assert_eq!(DmCommand::TableLoad.request(), 0xc138_fd09);
    }

    #[test]
    fn table_line_has_no_optional_arguments() {
        let table = VerityTable::new(&params(), (254, 2)).unwrap();
        assert_eq!(
            table.to_string(),
            format!("0 8000 verity 1 254:2 254:2 4096 4096 1000 1000 sha256 {HASH} a1b2c3d4")
        );
    }

    #[test]
    fn table_without_salt_uses_a_dash_and_hash_start_is_in_blocks() {
        let mut p = params();
        p.salt.clear();
        p.hash_offset = 1024 * 4096;
        let table = VerityTable::new(&p, (8, 17)).unwrap();
        assert_eq!(
            table.target_params(),
            format!("1 8:17 8:17 4096 4096 1000 1024 sha256 {HASH} -")
        );
        assert_eq!(table.sectors(), 8000);
    }

    #[test]
    fn tables_that_cannot_work_are_refused() {
        let mut p = params();
        p.hash_offset = 999 * 4096;
        assert!(matches!(
            VerityTable::new(&p, (8, 1)),
            Err(TableError::HashInsideData { .. })
        ));
        p.data_blocks = u64::MAX / 1024;
        assert!(matches!(
            VerityTable::new(&p, (8, 1)),
            Err(TableError::TooManyBlocks { .. })
        ));
        let mut p = params();
        p.salt = "ab".repeat(600);
        let table = VerityTable::new(&p, (8, 1)).unwrap();
        assert!(matches!(
            DmBuffer::table_load(DEVICE_NAME, &table),
            Err(TableError::TooLong { .. })
        ));
    }

    #[test]
    fn table_load_buffer_carries_one_read_only_verity_target() {
        let table = VerityTable::new(&params(), (254, 2)).unwrap();
        let buffer = DmBuffer::table_load(DEVICE_NAME, &table).unwrap();
        assert_eq!(buffer.header.version, [4, 0, 0]);
        assert_eq!(buffer.header.data_size, DM_BUFFER_SIZE);
        assert_eq!(buffer.header.data_start, 312);
        assert_eq!(buffer.header.target_count, 1);
        assert_eq!(buffer.header.flags, DM_READONLY_FLAG);
        assert_eq!(&buffer.header.name[..11], b"berth-root\0");
        assert_eq!(buffer.spec.sector_start, 0);
        assert_eq!(buffer.spec.length, 8000);
        assert_eq!(&buffer.spec.target_type[..7], b"verity\0");
        let params = table.target_params();
        assert_eq!(&buffer.params[..params.len()], params.as_bytes());
        assert_eq!(buffer.params[params.len()], 0);
    }

    #[test]
    fn c_strings_must_fit_with_their_nul() {
        let mut dest = [0xffu8; 4];
        assert!(copy_c_string(&mut dest, "abc"));
        assert_eq!(dest, *b"abc\0");
        assert!(!copy_c_string(&mut dest, "abcd"));
        assert!(!copy_c_string(&mut dest, "a\0"));
    }

    /// A device of `len` bytes whose reads fail with EIO from byte `bad` on, and that
    /// returns short reads up to it, as the page cache does.
    struct FailingDevice {
        pos: u64,
        len: u64,
        bad: Option<u64>,
        errno: i32,
    }

    impl Read for FailingDevice {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let end = self.bad.unwrap_or(self.len).min(self.len);
            if self.pos >= end {
                if self.bad.is_some_and(|bad| self.pos >= bad) {
                    return Err(std::io::Error::from_raw_os_error(self.errno));
                }
                return Ok(0);
            }
            let n = buf.len().min(usize::try_from(end - self.pos).unwrap());
            self.pos += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn reads_every_block() {
        let mut device = FailingDevice {
            pos: 0,
            len: 300 * 4096,
            bad: None,
            errno: 0,
        };
        read_blocks(&mut device, 300).unwrap();
        assert_eq!(device.pos, 300 * 4096);
    }

    #[test]
    fn eio_names_the_first_bad_block() {
        let mut device = FailingDevice {
            pos: 0,
            len: 600 * 4096,
            bad: Some(517 * 4096),
            errno: libc::EIO,
        };
        assert!(matches!(
            read_blocks(&mut device, 600),
            Err(ReadFailure::Corrupt { block: 517 })
        ));
    }

    #[test]
    fn other_errors_and_short_devices_are_not_corruption() {
        let mut device = FailingDevice {
            pos: 0,
            len: 10 * 4096,
            bad: Some(3 * 4096),
            errno: libc::ENXIO,
        };
        assert!(matches!(
            read_blocks(&mut device, 10),
            Err(ReadFailure::Other { block: 3, .. })
        ));
        let mut short = FailingDevice {
            pos: 0,
            len: 5 * 4096,
            bad: None,
            errno: 0,
        };
        assert!(matches!(
            read_blocks(&mut short, 10),
            Err(ReadFailure::Truncated { block: 5 })
        ));
    }

    #[test]
    fn verify_all_reads_a_file_and_reports_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.img");
        std::fs::write(&path, vec![0u8; 3 * 4096]).unwrap();
        verify_all(&path, 3).unwrap();
        let err = verify_all(&path, 4).unwrap_err();
        assert!(matches!(err, VerifyError::Truncated { block: 3, .. }));
        assert!(err.to_string().contains("root.img"), "{err}");
        let err = verify_all(&dir.path().join("missing"), 1).unwrap_err();
        assert!(matches!(err, VerifyError::Open { .. }));
    }
}
