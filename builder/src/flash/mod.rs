//! `berth flash IMAGE TARGET`: writes a built image onto a disk (or into a
//! file) the way bmaptool does, and checks it.
//!
//! Plan, check, write, verify: the block map is read (`IMAGE.bmap` next to the
//! image, else made from the image's holes), the provisioning file checked with
//! the init's own parser, and the target checked ([`target`]) — all before a
//! byte is written. Then only the mapped ranges are written, in large aligned
//! writes, hashed as they are read from the image; the target is fsynced, its
//! cached pages dropped, and every range read back from the device and checked
//! against the map's sha256. Last, `--provision` writes `berth/provision.toml`
//! onto the flashed ESP and reads it back.

pub mod target;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::disk::bmap::{BlockMap, BmapError};
use crate::disk::DiskError;
use crate::progress::Progress;
use target::{SystemRoots, Target, TargetError, TargetKind};

/// The size of one write (and one read back): large, and a multiple of every
/// block size a disk has.
pub const CHUNK: usize = 4 << 20;

/// Where the provisioning file goes on the ESP (the init reads `/efi/…`).
pub const PROVISION_ESP_PATH: &str = "berth/provision.toml";

/// Failure of a flash.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// A refusal: nothing was written.
    #[error(transparent)]
    Refused(#[from] TargetError),
    #[error(transparent)]
    Bmap(#[from] BmapError),
    #[error("{bmap} is for an image of {mapped} bytes, but {image} is {actual} bytes: not its block map")]
    BmapSize {
        bmap: PathBuf,
        image: PathBuf,
        mapped: u64,
        actual: u64,
    },
    #[error("provisioning file {path}: {problems}; nothing was written")]
    Provision { path: PathBuf, problems: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{image}: blocks {first}-{last} have sha256 {actual}, but the block map says {expected}: the image does not match its block map")]
    ImageMismatch {
        image: PathBuf,
        first: u64,
        last: u64,
        expected: String,
        actual: String,
    },
    #[error("{target}: blocks {first}-{last} read back with sha256 {actual}, not {expected}: the write did not stick (a failing or fake-capacity device?)")]
    Verify {
        target: PathBuf,
        first: u64,
        last: u64,
        expected: String,
        actual: String,
    },
    #[error("{target}: the image has no ESP partition to provision ({reason})")]
    NoEsp { target: PathBuf, reason: String },
    #[error("{target}: writing the provisioning file onto the ESP: {source}")]
    Esp { target: PathBuf, source: DiskError },
    #[error("{target}: the provisioning file read back from the ESP differs from {path}")]
    ProvisionReadBack { target: PathBuf, path: PathBuf },
}

impl FlashError {
    /// Whether the target was left as it was (a refusal or a problem found
    /// before writing).
    pub fn nothing_written(&self) -> bool {
        matches!(
            self,
            FlashError::Refused(_)
                | FlashError::Bmap(_)
                | FlashError::BmapSize { .. }
                | FlashError::Provision { .. }
        )
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FlashError + '_ {
    move |source| FlashError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to flash where.
#[derive(Debug, Clone)]
pub struct FlashOptions {
    pub image: PathBuf,
    pub target: PathBuf,
    /// The block map; `None`: `IMAGE.bmap` when it exists, else one is made.
    pub bmap: Option<PathBuf>,
    /// A provisioning file to put on the flashed ESP.
    pub provision: Option<PathBuf>,
    pub roots: SystemRoots,
}

/// Where the block map came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapSource {
    /// Read from this file.
    File(PathBuf),
    /// Made from the image's holes (no `.bmap` next to it).
    Computed,
}

/// What a flash did.
#[derive(Debug, Clone)]
pub struct Flashed {
    pub image: PathBuf,
    pub image_size: u64,
    pub map: MapSource,
    pub target: Target,
    /// The target's size after the flash.
    pub target_size: u64,
    /// Bytes in mapped ranges (all of them were written).
    pub mapped_bytes: u64,
    pub written_bytes: u64,
    /// Bytes read back and checked.
    pub verified_bytes: u64,
    pub ranges: usize,
    pub write_time: Duration,
    pub verify_time: Duration,
    /// The provisioning file written onto the ESP, with its sha256.
    pub provisioned: Option<(PathBuf, String)>,
}

impl Flashed {
    /// Megabytes (10^6) written per second of writing (with the fsync).
    pub fn write_rate(&self) -> f64 {
        let secs = self.write_time.as_secs_f64();
        if secs > 0.0 {
            #[allow(clippy::cast_precision_loss)] // a rate for people
            let mb = self.written_bytes as f64 / 1e6;
            mb / secs
        } else {
            0.0
        }
    }
}

/// The block map for `image`: the given file, else `IMAGE.bmap`, else made.
pub fn load_map(image: &Path, given: Option<&Path>) -> Result<(BlockMap, MapSource), FlashError> {
    let next_to = image.with_extension("bmap");
    let path = match given {
        Some(p) => Some(p.to_path_buf()),
        None => next_to.exists().then_some(next_to),
    };
    let actual = std::fs::metadata(image).map_err(io_err(image))?.len();
    match path {
        Some(path) => {
            let map = BlockMap::read(&path)?;
            if map.image_size != actual {
                return Err(FlashError::BmapSize {
                    bmap: path,
                    image: image.to_path_buf(),
                    mapped: map.image_size,
                    actual,
                });
            }
            Ok((map, MapSource::File(path)))
        }
        None => Ok((BlockMap::of_file(image)?, MapSource::Computed)),
    }
}

/// Checks a provisioning file with the init's parser: every field must be
/// valid and at least one set. Returns its bytes.
pub fn check_provision(path: &Path) -> Result<Vec<u8>, FlashError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let refuse = |problems: String| FlashError::Provision {
        path: path.to_path_buf(),
        problems,
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| refuse("not UTF-8 text".into()))?;
    let (settings, problems) = berth_format::provision::parse(text);
    if !problems.is_empty() {
        return Err(refuse(problems.join("; ")));
    }
    if settings.is_empty() {
        return Err(refuse("it sets nothing".into()));
    }
    Ok(bytes)
}

/// Flashes `options.image` onto `options.target`.
pub fn flash(options: &FlashOptions, progress: &mut Progress) -> Result<Flashed, FlashError> {
    let image_path = &options.image;
    progress.step("block map");
    let (map, source) = load_map(image_path, options.bmap.as_deref())?;
    if source == MapSource::Computed {
        progress.say(&format!(
            "no block map next to {} ({}): mapping the image's holes itself",
            image_path.display(),
            image_path.with_extension("bmap").display()
        ));
    }
    let provision = options
        .provision
        .as_deref()
        .map(check_provision)
        .transpose()?;
    progress.step("checking the target");
    let target = target::check(&options.target, image_path, map.image_size, &options.roots)?;
    let image = File::open(image_path).map_err(io_err(image_path))?;
    let target_path = &target.path;
    let out = open_target(&target)?;

    progress.step(&format!("writing {}", target_path.display()));
    let started = Instant::now();
    if let TargetKind::File { .. } = target.kind {
        // The file becomes the image: its size, zeros (holes) where the image
        // has holes, whatever it held before gone.
        out.set_len(0).map_err(io_err(target_path))?;
        out.set_len(map.image_size).map_err(io_err(target_path))?;
    }
    let bytes = progress.bytes(Some(map.mapped_bytes()));
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0;
    for range in &map.ranges {
        let (offset, len) = range.bytes(map.block_size, map.image_size);
        let mut hasher = Sha256::new();
        let mut done = 0;
        while done < len {
            let n = usize::try_from((len - done).min(CHUNK as u64)).unwrap_or(CHUNK);
            image
                .read_exact_at(&mut buf[..n], offset + done)
                .map_err(io_err(image_path))?;
            hasher.update(&buf[..n]);
            out.write_all_at(&buf[..n], offset + done)
                .map_err(io_err(target_path))?;
            done += n as u64;
            bytes.inc(n as u64);
        }
        written += len;
        let actual = hex::encode(hasher.finalize());
        if actual != range.sha256 {
            return Err(FlashError::ImageMismatch {
                image: image_path.clone(),
                first: range.first,
                last: range.last,
                expected: range.sha256.clone(),
                actual,
            });
        }
    }
    drop(bytes);
    out.sync_all().map_err(io_err(target_path))?;
    let write_time = started.elapsed();

    progress.step("verifying");
    let started = Instant::now();
    drop_cache(&out, &target).map_err(io_err(target_path))?;
    let bytes = progress.bytes(Some(map.mapped_bytes()));
    let mut verified = 0;
    for range in &map.ranges {
        let (offset, len) = range.bytes(map.block_size, map.image_size);
        let mut hasher = Sha256::new();
        let mut done = 0;
        while done < len {
            let n = usize::try_from((len - done).min(CHUNK as u64)).unwrap_or(CHUNK);
            out.read_exact_at(&mut buf[..n], offset + done)
                .map_err(io_err(target_path))?;
            hasher.update(&buf[..n]);
            done += n as u64;
            bytes.inc(n as u64);
        }
        verified += len;
        let actual = hex::encode(hasher.finalize());
        if actual != range.sha256 {
            return Err(FlashError::Verify {
                target: target_path.clone(),
                first: range.first,
                last: range.last,
                expected: range.sha256.clone(),
                actual,
            });
        }
    }
    drop(bytes);
    let verify_time = started.elapsed();

    let provisioned = match (provision, &options.provision) {
        (Some(content), Some(source)) => {
            progress.step("provisioning");
            write_provision(&out, target_path, source, &content)?;
            Some((source.clone(), hex::encode(Sha256::digest(&content))))
        }
        _ => None,
    };
    progress.finish();
    let target_size = match target.kind {
        TargetKind::BlockDevice { size, .. } => size,
        TargetKind::File { .. } => out.metadata().map_err(io_err(target_path))?.len(),
    };
    Ok(Flashed {
        image: image_path.clone(),
        image_size: map.image_size,
        map: source,
        target_size,
        mapped_bytes: map.mapped_bytes(),
        written_bytes: written,
        verified_bytes: verified,
        ranges: map.ranges.len(),
        write_time,
        verify_time,
        provisioned,
        target,
    })
}

/// Opens the target for writing and reading back. A disk is opened
/// exclusively: the kernel refuses that while anything (a mount, device mapper,
/// RAID) holds it, a last check after the ones in [`target::check`].
fn open_target(target: &Target) -> Result<File, FlashError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    match target.kind {
        TargetKind::BlockDevice { .. } => {
            options.custom_flags(libc_o_excl());
        }
        TargetKind::File { .. } => {
            options.create(true);
        }
    }
    options.open(&target.path).map_err(|source| {
        if source.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
            FlashError::Refused(TargetError::Held {
                path: target.path.clone(),
                what: target.path.display().to_string(),
                holders: "the kernel (opening it exclusively failed: EBUSY)".into(),
            })
        } else {
            FlashError::Io {
                path: target.path.clone(),
                source,
            }
        }
    })
}

/// `O_EXCL`, which on a block device means "no one else has it open
/// exclusively, and nothing is mounted from it".
fn libc_o_excl() -> i32 {
    i32::try_from(rustix::fs::OFlags::EXCL.bits()).unwrap_or(0o200)
}

/// `BLKFLSBUF`: write back and drop a block device's buffer cache.
const BLKFLSBUF: rustix::ioctl::Opcode = 0x1261;

/// Drops the target's cached pages so the read-back reads the device (or the
/// file's blocks), not what is still in memory from the write.
fn drop_cache(file: &File, target: &Target) -> io::Result<()> {
    if let TargetKind::BlockDevice { .. } = target.kind {
        // SAFETY: BLKFLSBUF takes no argument; the fd is an open block device.
        let flushed =
            unsafe { rustix::ioctl::ioctl(file, rustix::ioctl::NoArg::<BLKFLSBUF>::new()) };
        if flushed.is_ok() {
            return Ok(());
        }
    }
    // A file (or a disk without the ioctl's privilege): its clean pages, which
    // the fsync made them all, are dropped by this advice.
    rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed)?;
    Ok(())
}

/// Writes the provisioning file onto the flashed disk's ESP and reads it back.
fn write_provision(
    out: &File,
    target_path: &Path,
    source: &Path,
    content: &[u8],
) -> Result<(), FlashError> {
    let no_esp = |reason: String| FlashError::NoEsp {
        target: target_path.to_path_buf(),
        reason,
    };
    let mut reader = out;
    let partitions =
        berth_format::gpt::read_partitions(&mut reader).map_err(|e| no_esp(e.to_string()))?;
    let esp = partitions
        .iter()
        .find(|p| p.label == berth_format::layout::ESP_LABEL)
        .ok_or_else(|| no_esp("no partition labelled esp".into()))?;
    let sector = berth_format::layout::SECTOR_SIZE;
    let offset = esp.first_lba * sector;
    let size = (esp.last_lba + 1 - esp.first_lba) * sector;
    let esp_err = |source| FlashError::Esp {
        target: target_path.to_path_buf(),
        source,
    };
    crate::disk::write_esp_file(out, offset, size, PROVISION_ESP_PATH, content).map_err(esp_err)?;
    out.sync_all().map_err(io_err(target_path))?;
    let back =
        crate::disk::read_esp_file(out, offset, size, PROVISION_ESP_PATH).map_err(esp_err)?;
    if back != content {
        return Err(FlashError::ProvisionReadBack {
            target: target_path.to_path_buf(),
            path: source.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Verbosity;

    #[test]
    fn a_bad_provisioning_file_is_refused_with_its_problems() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("p.toml");
        std::fs::write(&bad, "hostname = \"-no-\"\n[network]\ndhcp = 3\n").unwrap();
        let err = check_provision(&bad).unwrap_err().to_string();
        assert!(err.contains("hostname"), "{err}");
        assert!(err.contains("network.dhcp"), "{err}");
        std::fs::write(&bad, "").unwrap();
        assert!(check_provision(&bad)
            .unwrap_err()
            .to_string()
            .contains("sets nothing"));
        std::fs::write(&bad, "hostname = \"edge-1\"\n").unwrap();
        assert!(check_provision(&bad).is_ok());
    }

    /// A sparse "image" flashed into a file: same bytes, holes kept, old
    /// content of the target gone.
    #[test]
    fn a_file_target_becomes_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.img");
        let f = File::create(&image).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&[7u8; 5000], 8192).unwrap();
        f.write_all_at(&[9u8; 4096], 10 << 20).unwrap();
        drop(f);
        let target = dir.path().join("t.img");
        std::fs::write(&target, vec![0xffu8; 20 << 20]).unwrap();
        let options = FlashOptions {
            image: image.clone(),
            target: target.clone(),
            bmap: None,
            provision: None,
            roots: SystemRoots::system(),
        };
        let done = flash(&options, &mut Progress::new(Verbosity::Quiet)).unwrap();
        assert_eq!(done.map, MapSource::Computed);
        assert_eq!(done.written_bytes, 3 * 4096);
        assert_eq!(done.verified_bytes, 3 * 4096);
        assert_eq!(
            std::fs::read(&target).unwrap(),
            std::fs::read(&image).unwrap()
        );
        let extents =
            crate::disk::bmap::data_extents(&File::open(&target).unwrap(), 16 << 20).unwrap();
        let data: u64 = extents.iter().map(|(a, b)| b - a).sum();
        assert!(
            data < 1 << 20,
            "the target's holes were filled: {extents:?}"
        );
    }

    #[test]
    fn a_bmap_for_another_image_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.img");
        File::create(&image).unwrap().set_len(8192).unwrap();
        let other = BlockMap {
            image_size: 4096,
            block_size: 4096,
            ranges: vec![],
        };
        other.write(&image.with_extension("bmap")).unwrap();
        let err = load_map(&image, None).unwrap_err();
        assert!(matches!(err, FlashError::BmapSize { .. }), "{err}");
        assert!(err.nothing_written());
    }
}
