//! `berth bundle`: a signed update bundle made from a built disk image, and
//! `berth bundle inspect`.
//!
//! Everything comes from the image itself: the GPT, slot A's boot entry, kernel
//! and initramfs on the ESP, the slot content of root-a (squashfs, padding and
//! verity hash tree) and `/etc/berth/image.toml` inside the squashfs, read with
//! `berth_image`. The bundle is written by `berth_bundle::writer` (fixed tar
//! metadata, single-threaded zstd), so the same image and key give the same
//! bytes.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use berth_bundle::writer::{compress, write_bundle, WriteError};
use berth_bundle::{
    self as format, BundleReader, ImageVersion, Manifest, PayloadKind, SecretKey, SecretKeyError,
    TrustedKeys, VersionError, BUNDLE_FORMAT,
};
use berth_format::layout::{self, BootEntry, Slot, VERITY_BLOCK_SIZE};
use berth_format::ImageConfig;
use berth_image::{Image, ImageError};

use crate::filesystem::verity;
use crate::progress::Progress;

pub use berth_bundle::writer::{trusted_comment, BOOT_FILES_LEVEL, ROOTFS_LEVEL};

/// Failure making or inspecting a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{path} is not a berth disk image: {reason}")]
    NotAnImage { path: PathBuf, reason: String },
    #[error(transparent)]
    Key(#[from] SecretKeyError),
    #[error("{path}: {source}")]
    Write { path: PathBuf, source: WriteError },
    #[error("{0}")]
    Format(#[from] format::BundleError),
    #[error("--min-version: {0}")]
    MinVersion(#[source] VersionError),
    #[error("{path}: the image's version: {source}")]
    Version { path: PathBuf, source: VersionError },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `berth bundle` is asked to do.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    /// The built disk image.
    pub image: PathBuf,
    /// The unencrypted minisign secret key.
    pub key: PathBuf,
    /// Output file; `IMAGE` with the extension `.bundle` when `None`.
    pub out: Option<PathBuf>,
    /// Lowest running version the bundle may update from.
    pub min_version: Option<String>,
}

/// A written bundle.
#[derive(Debug)]
pub struct Created {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub key_id: String,
    pub size: u64,
}

/// The default output of `berth bundle IMAGE`: `IMAGE` with the extension
/// `.bundle` (`images/hello-1.0.0.bundle`).
pub fn default_output(image: &Path) -> PathBuf {
    image.with_extension("bundle")
}

/// What the bundle takes from the image.
#[derive(Debug)]
struct ImageParts {
    entry: BootEntry,
    config: ImageConfig,
    created: u64,
    kernel: Vec<u8>,
    initramfs: Vec<u8>,
    /// Length of the slot content (squashfs, padding, verity hash tree) at the
    /// start of root-a.
    rootfs_len: u64,
}

/// Reads slot A of a built image, and checks that its parts agree: the boot
/// entry boots root-a, its verity parameters fit the squashfs, the slot content
/// fits the partition, and the image configuration has the entry's version.
fn read_image(image: &Image) -> Result<ImageParts, BundleError> {
    let not_image = |reason: String| BundleError::NotAnImage {
        path: image.path().to_path_buf(),
        reason,
    };
    let root_label = Slot::A.partition_label();
    let root = image.partition(root_label)?;
    let esp = image.esp()?;
    let (_, entry) = esp.slot_entry(Slot::A)?;
    if entry.root_partuuid != root.part_guid {
        return Err(not_image(format!(
            "the slot a entry boots PARTUUID {}, but root-a is {}",
            entry.root_partuuid, root.part_guid
        )));
    }
    let kernel = esp.kernel(Slot::A)?;
    let initramfs = esp.initramfs(Slot::A)?;
    drop(esp);

    let (_, root_size) = image.partition_range(root_label)?;
    let squashfs = image.squashfs(Slot::A)?;
    let bytes_used = squashfs.bytes_used;
    let content = match &entry.verity {
        Some(v) => {
            if v.hash_offset < bytes_used || v.hash_offset != v.data_blocks * VERITY_BLOCK_SIZE {
                return Err(not_image(format!(
                    "the entry's verity parameters (blocks {}, hash offset {}) do not match the squashfs ({bytes_used} bytes)",
                    v.data_blocks, v.hash_offset
                )));
            }
            v.hash_offset + verity::hash_blocks(v.data_blocks) * VERITY_BLOCK_SIZE
        }
        None => bytes_used.div_ceil(VERITY_BLOCK_SIZE) * VERITY_BLOCK_SIZE,
    };
    if content > root_size {
        return Err(not_image(format!(
            "the slot content ({content} bytes) is larger than root-a ({root_size} bytes)"
        )));
    }

    let config = image.image_config(Slot::A)?;
    if config.image.version != entry.version {
        return Err(not_image(format!(
            "{} says version {}, the boot entry {}",
            layout::IMAGE_CONFIG_PATH,
            config.image.version,
            entry.version
        )));
    }
    Ok(ImageParts {
        entry,
        config,
        created: squashfs.created,
        kernel,
        initramfs,
        rootfs_len: content,
    })
}

/// Makes a signed bundle from a built image.
pub fn create(options: &BundleOptions, progress: &mut Progress) -> Result<Created, BundleError> {
    let min_version = options
        .min_version
        .as_deref()
        .map(ImageVersion::parse)
        .transpose()
        .map_err(BundleError::MinVersion)?;
    let key = SecretKey::load(&options.key)?;
    progress.step("reading the image");
    let image = Image::open(&options.image)?;
    let parts = read_image(&image)?;
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| default_output(&options.image));
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;

    progress.step("compressing the root filesystem");
    let rootfs = BufReader::with_capacity(
        1 << 20,
        image
            .partition_window(Slot::A.partition_label())?
            .take(parts.rootfs_len),
    );
    let mut payloads =
        vec![compress(PayloadKind::Rootfs, rootfs, ROOTFS_LEVEL, &dir).map_err(io_err(&dir))?];
    progress.step("compressing the kernel and initramfs");
    for (kind, data) in [
        (PayloadKind::Kernel, &parts.kernel),
        (PayloadKind::Initramfs, &parts.initramfs),
    ] {
        payloads
            .push(compress(kind, data.as_slice(), BOOT_FILES_LEVEL, &dir).map_err(io_err(&dir))?);
    }

    let manifest = Manifest {
        format: BUNDLE_FORMAT,
        name: parts.config.image.name.clone(),
        compatible: parts.config.image.compatible.clone(),
        version: ImageVersion::parse(&parts.config.image.version).map_err(|source| {
            BundleError::Version {
                path: options.image.clone(),
                source,
            }
        })?,
        // The image's own, as its boot entry tells it (the console it names).
        architecture: parts.entry.arch.manifest_name().to_string(),
        min_version,
        created: parts.created,
        title: parts.entry.title.clone(),
        cmdline: parts.entry.extra_cmdline.clone(),
        verity: parts.entry.verity.clone().map(Into::into),
        payloads: payloads.iter().map(|p| p.info().clone()).collect(),
    };
    manifest.validate()?;

    progress.step("writing the bundle");
    let mut temp = tempfile::Builder::new()
        .prefix(".berth-bundle-")
        .tempfile_in(&dir)
        .map_err(io_err(&dir))?;
    write_bundle(
        io::BufWriter::new(temp.as_file_mut()),
        &manifest,
        &key,
        &mut payloads,
    )
    .map_err(|e| match e {
        WriteError::Manifest(e) => BundleError::Format(e),
        source => BundleError::Write {
            path: out.clone(),
            source,
        },
    })?;
    // A bundle is public: readable by all, like the image it was made from.
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err(&out))?;
    temp.as_file().sync_all().map_err(io_err(&out))?;
    let size = temp.as_file().metadata().map_err(io_err(&out))?.len();
    temp.persist(&out).map_err(|e| BundleError::Io {
        path: out.clone(),
        source: e.error,
    })?;
    progress.finish();
    Ok(Created {
        path: out,
        manifest,
        key_id: key.key_id(),
        size,
    })
}

/// What `berth bundle inspect` is asked to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadCheck {
    /// Read the manifest and signature only.
    ManifestOnly,
    /// Also stream every payload and check its size and digest.
    Stream,
}

/// The outcome of checking one payload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PayloadOutcome {
    pub file: String,
    pub ok: bool,
    pub error: Option<String>,
}

/// What `berth bundle inspect` found.
#[derive(Debug, serde::Serialize)]
pub struct Inspection {
    pub manifest: Option<Manifest>,
    pub signature_key_id: Option<String>,
    pub trusted_comment: Option<String>,
    /// `verified`, `not checked` or `failed`.
    pub signature: &'static str,
    pub payloads: Vec<PayloadOutcome>,
    /// The first error, which makes the inspection fail.
    pub error: Option<String>,
}

impl Inspection {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Reads a bundle: the manifest and signature (checked against `keys` when
/// given), and with [`PayloadCheck::Stream`] every payload. Errors in the bundle
/// end up in the returned inspection; `Err` is for a file that cannot be opened.
pub fn inspect(
    path: &Path,
    keys: Option<&TrustedKeys>,
    check: PayloadCheck,
) -> Result<Inspection, BundleError> {
    let file = File::open(path).map_err(io_err(path))?;
    let source = BufReader::with_capacity(1 << 20, file);
    let mut inspection = Inspection {
        manifest: None,
        signature_key_id: None,
        trusted_comment: None,
        signature: if keys.is_some() {
            "failed"
        } else {
            "not checked"
        },
        payloads: Vec::new(),
        error: None,
    };
    let opened = match keys {
        Some(keys) => BundleReader::open(source, keys),
        None => BundleReader::open_unverified(source),
    };
    let mut reader = match opened {
        Ok(reader) => reader,
        Err(e) => {
            inspection.error = Some(e.to_string());
            return Ok(inspection);
        }
    };
    inspection.manifest = Some(reader.manifest().clone());
    inspection.signature_key_id = Some(reader.signature_key_id().to_string());
    inspection.trusted_comment = Some(reader.trusted_comment().to_string());
    if reader.verified() {
        inspection.signature = "verified";
    }
    if check == PayloadCheck::ManifestOnly {
        return Ok(inspection);
    }
    loop {
        let mut payload = match reader.next_payload() {
            Ok(Some(payload)) => payload,
            Ok(None) => break,
            Err(e) => {
                inspection.error = Some(e.to_string());
                return Ok(inspection);
            }
        };
        let file = payload.info().file.clone();
        let outcome = io::copy(&mut payload, &mut io::sink())
            .map_err(|e| {
                format::BundleError::from_io(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.to_string())
            })
            .and_then(|_| payload.finish().map_err(|e| e.to_string()));
        let error = outcome.err();
        inspection.payloads.push(PayloadOutcome {
            file,
            ok: error.is_none(),
            error: error.clone(),
        });
        if error.is_some() {
            inspection.error = error;
            return Ok(inspection);
        }
    }
    if let Err(e) = reader.finish() {
        inspection.error = Some(e.to_string());
    }
    Ok(inspection)
}
