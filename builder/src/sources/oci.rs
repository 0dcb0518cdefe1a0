//! Container images: from a registry (`REGISTRY/REPO[:TAG][@DIGEST]`), an OCI
//! image layout folder (`oci:DIR[:TAG]`), a tar of one (`oci-archive:FILE[:TAG]`)
//! or a `docker save` tarball (`docker-archive:FILE`).
//!
//! [`resolve`] finds the image's linux/amd64 manifest (following image indexes),
//! its configuration and its layers, every blob checked against its digest, and
//! pins the result: the digest the reference stood for, which a lock file keeps
//! and hands back on the next build. [`unpack`] then unpacks the layers into a
//! [`Tree`] with whiteouts applied, checking each layer's uncompressed content
//! against the configuration's `diff_ids`.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os};
use sha2::{Digest as _, Sha256};

use crate::recipe::{ImageRef, RegistryRef};
use crate::sources::cache::{sha256_file, Cache};
use crate::sources::registry::{BlobKind, Registries, RegistryError};
use crate::tree::{normalize, TarGuard, Tree, TreeError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Image indexes nested deeper than this are refused.
const MAX_NESTING: usize = 4;

/// Failure to read an OCI image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not valid OCI JSON: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("{image}: {reason}")]
    Select { image: String, reason: String },
    #[error("{image}: blob {digest} is corrupt (sha256 is {actual})")]
    Digest {
        image: String,
        digest: String,
        actual: String,
    },
    #[error("{image}: unsupported {what} {value}")]
    Unsupported {
        image: String,
        what: &'static str,
        value: String,
    },
    #[error("{image}: layer {digest}: {source}")]
    Layer {
        image: String,
        digest: String,
        source: TreeError,
    },
    #[error("{image}: layer {digest} unpacks to content with sha256:{actual}, but the image configuration says {expected} (diff_id)")]
    DiffId {
        image: String,
        digest: String,
        expected: String,
        actual: String,
    },
    #[error("{image}: the lock file pins {locked}, but {reason}; run `berth lock --update RECIPE {container}` to take the image as it is now")]
    LockedGone {
        image: String,
        container: String,
        locked: String,
        reason: String,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The parts of an image's configuration berth uses as container defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// `80/tcp`, ... (informational: containers share the device's network).
    pub exposed_ports: Vec<String>,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Not said (docker archives): told by the first bytes.
    Sniff,
}

/// A layer blob on the local disk, verified.
#[derive(Debug, Clone)]
struct Layer {
    path: PathBuf,
    digest: String,
    compression: Compression,
}

/// An image found and pinned, its blobs verified on the local disk.
#[derive(Debug)]
pub struct Resolved {
    /// The reference as the recipe wrote it.
    pub reference: String,
    /// What the reference stands for now: the digest of the manifest or index
    /// it names (a docker archive's: its configuration's, the image ID).
    pub digest: String,
    /// The `linux/<arch>` image manifest used (the configuration's digest for a
    /// docker archive).
    pub manifest: String,
    config: ImageConfiguration,
    layers: Vec<Layer>,
    // An archive's contents, kept until the layers are unpacked.
    _scratch: Option<tempfile::TempDir>,
}

/// An image unpacked into a tree.
#[derive(Debug)]
pub struct Unpacked {
    pub tree: Tree,
    pub defaults: ImageDefaults,
}

/// What [`resolve`] reads from.
#[derive(Debug)]
pub struct Sources<'a> {
    pub cache: &'a Cache,
    pub registries: &'a Registries,
    /// The image's architecture: an index resolves to its `linux/<arch>` entry.
    pub arch: berth_format::Arch,
}

/// Finds and verifies the image `reference` names, for `container`. With `pin`
/// (a digest from the lock file), the image with that digest is used, whatever
/// the reference's tag says now.
pub fn resolve(
    reference: &ImageRef,
    pin: Option<&str>,
    container: &str,
    sources: &Sources<'_>,
) -> Result<Resolved, OciError> {
    let image = reference.to_string();
    let resolved = match reference {
        ImageRef::Layout { dir, tag } => {
            let layout = Layout {
                dir: dir.clone(),
                image,
                arch: sources.arch,
            };
            layout.resolve(tag.as_deref(), pin, container, None)
        }
        ImageRef::Archive { file, tag } => {
            let scratch = sources.cache.tempdir().map_err(|e| OciError::Io {
                path: sources.cache.root().to_path_buf(),
                source: io::Error::other(e.to_string()),
            })?;
            extract_archive(file, scratch.path())?;
            let layout = Layout {
                dir: scratch.path().to_path_buf(),
                image,
                arch: sources.arch,
            };
            layout.resolve(tag.as_deref(), pin, container, Some(scratch))
        }
        ImageRef::DockerArchive { file } => docker_archive(file, &image, pin, container, sources),
        ImageRef::Registry(r) => from_registry(r, &image, pin, sources),
    }?;
    // A single-platform image names its architecture only in its configuration:
    // an amd64 program in an arm64 image would fail only on the device.
    let arch = resolved.config.architecture().to_string();
    if arch != sources.arch.oci() {
        return Err(OciError::Select {
            image: resolved.reference.clone(),
            reason: format!(
                "the image is for linux/{arch}, and this image is {} (linux/{})",
                sources.arch,
                sources.arch.oci()
            ),
        });
    }
    Ok(resolved)
}

/// Most archive entries the layers of one image may hold together. Real
/// images have tens of thousands; millions of empty files cost no bytes but an
/// inode and a staging file each, and memory for the tree.
pub const MAX_ENTRIES: u64 = 1 << 20;

/// What one image may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// File content, in bytes, of all layers together.
    pub bytes: u64,
    /// Archive entries of all layers together (see [`MAX_ENTRIES`]).
    pub entries: u64,
}

/// Unpacks a resolved image into a new tree staged in `staging`, within
/// `limits`: a layer past either is refused.
pub fn unpack(
    resolved: &Resolved,
    staging: &Path,
    limits: UnpackLimits,
) -> Result<Unpacked, OciError> {
    let image = &resolved.reference;
    let mut tree = Tree::new(staging);
    tree.set_limit(limits.bytes);
    tree.set_entry_limit(limits.entries);
    let diff_ids = resolved.config.rootfs().diff_ids();
    for (i, layer) in resolved.layers.iter().enumerate() {
        let io = |source| OciError::Io {
            path: layer.path.clone(),
            source,
        };
        let mut file = BufReader::new(File::open(&layer.path).map_err(io)?);
        let compression = match layer.compression {
            Compression::Sniff => {
                let head = io::BufRead::fill_buf(&mut file).map_err(io)?;
                if head.starts_with(&[0x1f, 0x8b]) {
                    Compression::Gzip
                } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    Compression::Zstd
                } else {
                    Compression::None
                }
            }
            c => c,
        };
        let plain: Box<dyn Read> = match compression {
            Compression::None | Compression::Sniff => Box::new(file),
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file).map_err(io)?),
        };
        let mut hashing = HashingReader {
            inner: plain,
            hasher: Sha256::new(),
        };
        let layer_err = |source| OciError::Layer {
            image: image.clone(),
            digest: layer.digest.clone(),
            source,
        };
        tree.unpack_layer(&mut hashing).map_err(layer_err)?;
        // The tar's end may leave padding unread: the diff_id covers it too.
        io::copy(&mut hashing, &mut io::sink()).map_err(io)?;
        let actual = hex::encode(hashing.hasher.finalize());
        if let Some(expected) = diff_ids.get(i) {
            if expected.strip_prefix("sha256:") != Some(actual.as_str()) {
                return Err(OciError::DiffId {
                    image: image.clone(),
                    digest: layer.digest.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
    }
    let defaults = image_defaults(&resolved.config);
    Ok(Unpacked { tree, defaults })
}

/// What one manifest blob (an image manifest or an image index) says: the
/// index's `linux/<arch>` entry to follow, or the manifest with its config
/// and layer digests checked and each layer's compression.
#[derive(Debug)]
pub enum ManifestStep {
    /// An image index: the digest of its `linux/<arch>` entry.
    Index(String),
    /// An image manifest and how each of its layers is compressed.
    Image(Box<ImageManifest>, Vec<Compression>),
}

/// Reads one manifest blob as fetched from a registry or a layout; `path`
/// names it in errors. Everything in it is outside input, checked here.
pub fn manifest_step(
    bytes: &[u8],
    image: &str,
    arch: berth_format::Arch,
    path: &Path,
) -> Result<ManifestStep, OciError> {
    if is_index(&media_type_of(bytes)) {
        let index: ImageIndex = parse_json(bytes, path)?;
        let entry = platform(&index, image, arch)?;
        return Ok(ManifestStep::Index(entry.digest().to_string()));
    }
    let manifest: ImageManifest = parse_json(bytes, path)?;
    check_sha256(image, manifest.config().digest().as_ref())?;
    let mut compression = Vec::new();
    for l in manifest.layers() {
        check_sha256(image, l.digest().as_ref())?;
        compression.push(compression_of(image, l.media_type())?);
    }
    Ok(ManifestStep::Image(Box::new(manifest), compression))
}

/// Reads an image configuration blob; `path` names it in errors.
pub fn read_config(bytes: &[u8], path: &Path) -> Result<ImageConfiguration, OciError> {
    parse_json(bytes, path)
}

/// The container defaults an image configuration holds.
pub fn image_defaults(config: &ImageConfiguration) -> ImageDefaults {
    config
        .config()
        .as_ref()
        .map(|c| ImageDefaults {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            workdir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
            exposed_ports: {
                let mut p = c.exposed_ports().clone().unwrap_or_default();
                p.sort();
                p
            },
        })
        .unwrap_or_default()
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn compression_of(image: &str, media_type: &MediaType) -> Result<Compression, OciError> {
    Ok(match media_type {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Compression::Gzip,
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Compression::Zstd,
        MediaType::Other(t)
            if t == "application/vnd.docker.image.rootfs.diff.tar.gzip"
                || t == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" =>
        {
            Compression::Gzip
        }
        MediaType::Other(t) if t == "application/vnd.docker.image.rootfs.diff.tar" => {
            Compression::None
        }
        other => {
            return Err(OciError::Unsupported {
                image: image.to_string(),
                what: "layer media type",
                value: other.to_string(),
            })
        }
    })
}

fn is_index(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageIndex => true,
        MediaType::Other(t) => t == "application/vnd.docker.distribution.manifest.list.v2+json",
        _ => false,
    }
}

/// The `mediaType` a manifest or index says it is (an index when it has
/// `manifests` but no media type).
fn media_type_of(bytes: &[u8]) -> MediaType {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    match value.get("mediaType").and_then(|m| m.as_str()) {
        Some(t) => MediaType::from(t),
        None if value.get("manifests").is_some() => MediaType::ImageIndex,
        None => MediaType::ImageManifest,
    }
}

/// The `linux/<arch>` entry of an index (the first, whatever its variant: arm64
/// images are `v8`).
fn platform(
    index: &ImageIndex,
    image: &str,
    arch: berth_format::Arch,
) -> Result<Descriptor, OciError> {
    index
        .manifests()
        .iter()
        .find(|m| {
            m.platform()
                .as_ref()
                .is_some_and(|p| p.architecture().to_string() == arch.oci() && *p.os() == Os::Linux)
        })
        .cloned()
        .ok_or_else(|| {
            let platforms: Vec<String> = index
                .manifests()
                .iter()
                .filter_map(|m| m.platform().as_ref())
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
                .collect();
            OciError::Select {
                image: image.to_string(),
                reason: format!(
                    "the image index has no linux/{} manifest (it has: {})",
                    arch.oci(),
                    if platforms.is_empty() {
                        "no platforms".to_string()
                    } else {
                        platforms.join(", ")
                    }
                ),
            }
        })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|e| OciError::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, OciError> {
    fs::read(path).map_err(|source| OciError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn check_sha256(image: &str, digest: &str) -> Result<String, OciError> {
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(OciError::Unsupported {
            image: image.to_string(),
            what: "digest",
            value: digest.to_string(),
        });
    }
    Ok(hex.to_string())
}

fn from_registry(
    r: &RegistryRef,
    image: &str,
    pin: Option<&str>,
    sources: &Sources<'_>,
) -> Result<Resolved, OciError> {
    let registries = sources.registries;
    let cache = sources.cache;
    let first = match pin {
        Some(d) => r.pinned(d),
        None => r.clone(),
    };
    let (mut bytes, digest) = registries.manifest(&first, cache)?;
    let mut manifest_digest = digest.clone();
    let here = PathBuf::from(image);
    let mut nesting = 0;
    let (manifest, compression) = loop {
        match manifest_step(&bytes, image, sources.arch, &here)? {
            ManifestStep::Image(manifest, compression) => break (manifest, compression),
            ManifestStep::Index(_) if nesting == MAX_NESTING => {
                return Err(OciError::Select {
                    image: image.to_string(),
                    reason: "image indexes nested too deep".into(),
                })
            }
            ManifestStep::Index(entry) => {
                nesting += 1;
                let (b, d) = registries.manifest(&r.pinned(&entry), cache)?;
                bytes = b;
                manifest_digest = d;
            }
        }
    };
    let config_d = manifest.config();
    let config_path = registries.blob(
        r,
        (config_d.digest().as_ref(), config_d.size()),
        BlobKind::Config,
        &format!("config of {}", r.name()),
        cache,
    )?;
    let config = read_config(&read(&config_path)?, &config_path)?;
    let mut layers = Vec::new();
    for (i, (l, &compression)) in manifest.layers().iter().zip(&compression).enumerate() {
        let path = registries.blob(
            r,
            (l.digest().as_ref(), l.size()),
            BlobKind::Layer,
            &format!(
                "layer {}/{} of {}",
                i + 1,
                manifest.layers().len(),
                r.name()
            ),
            cache,
        )?;
        layers.push(Layer {
            path,
            digest: l.digest().to_string(),
            compression,
        });
    }
    Ok(Resolved {
        reference: image.to_string(),
        digest,
        manifest: manifest_digest,
        config,
        layers,
        _scratch: None,
    })
}

struct Layout {
    dir: PathBuf,
    image: String,
    arch: berth_format::Arch,
}

impl Layout {
    fn json_file<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<T, OciError> {
        parse_json(&read(path)?, path)
    }

    /// The verified path of the blob `digest`.
    fn blob(&self, digest: &str) -> Result<PathBuf, OciError> {
        let hex = check_sha256(&self.image, digest)?;
        let path = self.dir.join("blobs/sha256").join(&hex);
        let actual = sha256_file(&path).map_err(|source| OciError::Io {
            path: path.clone(),
            source,
        })?;
        if actual != hex {
            return Err(OciError::Digest {
                image: self.image.clone(),
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(path)
    }

    fn resolve(
        &self,
        tag: Option<&str>,
        pin: Option<&str>,
        container: &str,
        scratch: Option<tempfile::TempDir>,
    ) -> Result<Resolved, OciError> {
        let top = match pin {
            Some(locked) => {
                let path = self
                    .dir
                    .join("blobs/sha256")
                    .join(locked.strip_prefix("sha256:").unwrap_or(locked));
                if !path.is_file() {
                    return Err(OciError::LockedGone {
                        image: self.image.clone(),
                        container: container.to_string(),
                        locked: locked.to_string(),
                        reason: "the layout no longer has it".into(),
                    });
                }
                locked.to_string()
            }
            None => {
                let index: ImageIndex = self.json_file(&self.dir.join("index.json"))?;
                select(&index, tag, &self.image)?.digest().to_string()
            }
        };
        let mut digest = top.clone();
        let mut nesting = 0;
        let (manifest, compression) = loop {
            let bytes = read(&self.blob(&digest)?)?;
            match manifest_step(&bytes, &self.image, self.arch, &self.dir)? {
                ManifestStep::Image(manifest, compression) => break (manifest, compression),
                ManifestStep::Index(_) if nesting == MAX_NESTING => {
                    return Err(OciError::Select {
                        image: self.image.clone(),
                        reason: "image indexes nested too deep".into(),
                    })
                }
                ManifestStep::Index(entry) => {
                    nesting += 1;
                    digest = entry;
                }
            }
        };
        let config_path = self.blob(manifest.config().digest().as_ref())?;
        let config = read_config(&read(&config_path)?, &config_path)?;
        let mut layers = Vec::new();
        for (l, &compression) in manifest.layers().iter().zip(&compression) {
            layers.push(Layer {
                path: self.blob(l.digest().as_ref())?,
                digest: l.digest().to_string(),
                compression,
            });
        }
        Ok(Resolved {
            reference: self.image.clone(),
            digest: top,
            manifest: digest,
            config,
            layers,
            _scratch: scratch,
        })
    }
}

/// Picks the manifest named `tag` (or the only one) from an index.
fn select<'a>(
    index: &'a ImageIndex,
    tag: Option<&str>,
    image: &str,
) -> Result<&'a Descriptor, OciError> {
    let manifests = index.manifests();
    let name_of = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME).cloned())
    };
    let names: Vec<String> = manifests.iter().filter_map(name_of).collect();
    let found = match tag {
        Some(tag) => manifests
            .iter()
            .find(|d| name_of(d).as_deref() == Some(tag)),
        None if manifests.len() == 1 => manifests.first(),
        None => None,
    };
    found.ok_or_else(|| OciError::Select {
        image: image.to_string(),
        reason: match tag {
            Some(tag) => format!(
                "no manifest tagged {tag:?} (tags here: {})",
                names.join(", ")
            ),
            None => format!(
                "{} manifests and no tag given: add one of these tags: {}",
                manifests.len(),
                names.join(", ")
            ),
        },
    })
}

/// One image of a docker archive's `manifest.json`.
#[derive(Debug, serde::Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// A `docker save` (or `skopeo copy ... docker-archive:`) tarball: its
/// `manifest.json` names the configuration and the layer tars by path.
fn docker_archive(
    file: &Path,
    image: &str,
    pin: Option<&str>,
    container: &str,
    sources: &Sources<'_>,
) -> Result<Resolved, OciError> {
    let scratch = sources.cache.tempdir().map_err(|e| OciError::Io {
        path: sources.cache.root().to_path_buf(),
        source: io::Error::other(e.to_string()),
    })?;
    let dir = scratch.path();
    extract_archive(file, dir)?;
    let manifest_path = dir.join("manifest.json");
    let manifests: Vec<DockerManifest> = parse_json(&read(&manifest_path)?, &manifest_path)?;
    let one = match manifests.as_slice() {
        [one] => one,
        many => {
            return Err(OciError::Select {
                image: image.to_string(),
                reason: format!(
                    "the archive holds {} images ({}): berth takes archives of exactly one",
                    many.len(),
                    many.iter()
                        .flat_map(|m| m.repo_tags.clone().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
    };
    let member = |name: &str| -> Result<PathBuf, OciError> {
        let key = normalize(name).ok_or_else(|| OciError::Select {
            image: image.to_string(),
            reason: format!("manifest.json names {name:?}, which is not a file"),
        })?;
        let path = dir.join(key);
        if !path.is_file() {
            return Err(OciError::Select {
                image: image.to_string(),
                reason: format!("manifest.json names {name:?}, which the archive lacks"),
            });
        }
        Ok(path)
    };
    let config_path = member(&one.config)?;
    let config_hex = sha256_file(&config_path).map_err(|source| OciError::Io {
        path: config_path.clone(),
        source,
    })?;
    let digest = format!("sha256:{config_hex}");
    if let Some(locked) = pin {
        if locked != digest {
            return Err(OciError::LockedGone {
                image: image.to_string(),
                container: container.to_string(),
                locked: locked.to_string(),
                reason: format!("the archive now holds image {digest}"),
            });
        }
    }
    let config = read_config(&read(&config_path)?, &config_path)?;
    let mut layers = Vec::new();
    for name in &one.layers {
        let path = member(name)?;
        let hex = sha256_file(&path).map_err(|source| OciError::Io {
            path: path.clone(),
            source,
        })?;
        layers.push(Layer {
            path,
            digest: format!("sha256:{hex}"),
            compression: Compression::Sniff,
        });
    }
    Ok(Resolved {
        reference: image.to_string(),
        digest: digest.clone(),
        manifest: digest,
        config,
        layers,
        _scratch: Some(scratch),
    })
}

/// Extracts an archive (a tar of an OCI layout, or a docker archive) into `dir`:
/// regular files and folders only, every path confined to `dir`.
fn extract_archive(file: &Path, dir: &Path) -> Result<(), OciError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OciError::Io { path, source }
    };
    let f = File::open(file).map_err(io(file))?;
    let mut archive = tar::Archive::new(TarGuard::new(BufReader::new(f)));
    for entry in archive.entries().map_err(io(file))? {
        let mut entry = entry.map_err(io(file))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).to_string();
        let Some(key) = normalize(&raw) else { continue };
        let target = dir.join(key);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut out = File::create(&target).map_err(io(&target))?;
        io::copy(&mut entry, &mut out).map_err(io(&target))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Verbosity;
    use serde_json::json;
    use std::collections::BTreeMap;

    /// Writes `bytes` as a blob of the layout `dir`; returns its descriptor.
    fn blob(dir: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let hex = crate::sources::cache::sha256_bytes(bytes);
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
    }

    fn layer(name: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    }

    /// A manifest for one image whose only layer holds the file `name`; the
    /// config's diff_id is `diff_id` or the layer's own.
    fn image(dir: &Path, name: &str, diff_id: Option<&str>) -> serde_json::Value {
        // `arm64-file` is an arm64 image's only file; anything else an amd64 one's.
        let arch = if name.starts_with("arm64") {
            "arm64"
        } else {
            "amd64"
        };
        image_for(dir, layer(name), diff_id, arch)
    }

    /// A manifest for one image whose only layer is `tar`.
    fn image_of(dir: &Path, tar: Vec<u8>, diff_id: Option<&str>) -> serde_json::Value {
        image_for(dir, tar, diff_id, "amd64")
    }

    /// [`image_of`] for the OCI architecture `arch`.
    fn image_for(dir: &Path, tar: Vec<u8>, diff_id: Option<&str>, arch: &str) -> serde_json::Value {
        let l = blob(
            dir,
            "application/vnd.oci.image.layer.v1.tar+zstd",
            &zstd::encode_all(&tar[..], 3).unwrap(),
        );
        let diff = diff_id.map_or_else(
            || format!("sha256:{}", crate::sources::cache::sha256_bytes(&tar)),
            str::to_string,
        );
        let config = json!({"architecture": arch, "os": "linux",
            "config": {"Cmd": ["/x"], "ExposedPorts": {"80/tcp": {}, "53/udp": {}}},
            "rootfs": {"type": "layers", "diff_ids": [diff]}});
        let c = blob(
            dir,
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let m = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": c, "layers": [l]});
        blob(
            dir,
            "application/vnd.oci.image.manifest.v1+json",
            m.to_string().as_bytes(),
        )
    }

    fn write_index(dir: &Path, top: serde_json::Value) {
        let mut top = top;
        top["annotations"] = json!({REF_NAME: "1.0"});
        fs::write(
            dir.join("index.json"),
            json!({"schemaVersion": 2, "manifests": [top]}).to_string(),
        )
        .unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    fn resolve_layout(dir: &Path, cache_dir: &Path) -> Result<(Resolved, Unpacked), OciError> {
        resolve_layout_within(dir, cache_dir, MAX_ENTRIES)
    }

    fn resolve_layout_within(
        dir: &Path,
        cache_dir: &Path,
        entries: u64,
    ) -> Result<(Resolved, Unpacked), OciError> {
        resolve_layout_as(dir, cache_dir, entries, berth_format::Arch::X86_64)
    }

    fn resolve_layout_as(
        dir: &Path,
        cache_dir: &Path,
        entries: u64,
        arch: berth_format::Arch,
    ) -> Result<(Resolved, Unpacked), OciError> {
        let cache = Cache::open(cache_dir).unwrap();
        let registries = Registries::new(&BTreeMap::new(), Verbosity::Quiet).unwrap();
        let sources = Sources {
            cache: &cache,
            registries: &registries,
            arch,
        };
        let reference = ImageRef::Layout {
            dir: dir.to_path_buf(),
            tag: Some("1.0".into()),
        };
        let resolved = resolve(&reference, None, "c", &sources)?;
        let staging = cache_dir.join("staging");
        fs::create_dir_all(&staging).unwrap();
        let limits = UnpackLimits {
            bytes: 1 << 30,
            entries,
        };
        let unpacked = unpack(&resolved, &staging, limits)?;
        Ok((resolved, unpacked))
    }

    #[test]
    fn a_layer_of_too_many_entries_is_refused_by_count() {
        // Empty files: no byte limit ever sees them.
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..300 {
            let mut h = tar::Header::new_ustar();
            h.set_size(0);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("f{i}"), io::empty()).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        write_index(&layout, image_of(&layout, tar, None));
        let err = match resolve_layout_within(&layout, &dir.path().join("c1"), 299) {
            Ok(_) => panic!("300 entries unpacked within a limit of 299"),
            Err(err) => err.to_string(),
        };
        assert!(err.contains("more than 299 entries"), "{err}");
        let (_, unpacked) = resolve_layout_within(&layout, &dir.path().join("c2"), 300).unwrap();
        assert!(unpacked.tree.get("f299").is_some());
    }

    #[test]
    fn multi_arch_index_resolves_to_linux_amd64() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let arm = image(&layout, "arm64-file", None);
        let amd = image(&layout, "amd64-file", None);
        let mut arm_entry = arm.clone();
        arm_entry["platform"] = json!({"architecture": "arm64", "os": "linux"});
        let mut amd_entry = amd.clone();
        amd_entry["platform"] = json!({"architecture": "amd64", "os": "linux"});
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [arm_entry, amd_entry]});
        let nested = blob(
            &layout,
            "application/vnd.oci.image.index.v1+json",
            index.to_string().as_bytes(),
        );
        write_index(&layout, nested.clone());
        let (resolved, unpacked) = resolve_layout(&layout, &dir.path().join("cache")).unwrap();
        assert_eq!(resolved.digest, nested["digest"].as_str().unwrap());
        assert_eq!(resolved.manifest, amd["digest"].as_str().unwrap());
        assert!(unpacked.tree.get("amd64-file").is_some());
        assert!(unpacked.tree.get("arm64-file").is_none());
        assert_eq!(unpacked.defaults.exposed_ports, ["53/udp", "80/tcp"]);
        // An arm64 build takes the index's other entry.
        let arm64 = berth_format::Arch::Arm64;
        let (resolved, unpacked) =
            resolve_layout_as(&layout, &dir.path().join("cache"), MAX_ENTRIES, arm64).unwrap();
        assert_eq!(resolved.manifest, arm["digest"].as_str().unwrap());
        assert!(unpacked.tree.get("arm64-file").is_some());
        assert!(unpacked.tree.get("amd64-file").is_none());
        // A single-platform amd64 image is refused by an arm64 build.
        write_index(&layout, amd.clone());
        let err = resolve_layout_as(&layout, &dir.path().join("cache"), MAX_ENTRIES, arm64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the image is for linux/amd64, and this image is arm64"),
            "{err}"
        );
        write_index(&layout, nested.clone());

        // An index without linux/amd64 is refused, naming what it has.
        let only_arm = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [arm_entry]});
        let nested = blob(
            &layout,
            "application/vnd.oci.image.index.v1+json",
            only_arm.to_string().as_bytes(),
        );
        write_index(&layout, nested);
        let err = resolve_layout(&layout, &dir.path().join("cache"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no linux/amd64 manifest (it has: linux/arm64)"),
            "{err}"
        );
    }

    #[test]
    fn layer_content_must_match_its_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let wrong = format!("sha256:{}", "0".repeat(64));
        write_index(&layout, image(&layout, "f", Some(&wrong)));
        let err = resolve_layout(&layout, &dir.path().join("cache")).unwrap_err();
        assert!(matches!(err, OciError::DiffId { .. }), "{err}");
        assert!(err.to_string().contains("diff_id"), "{err}");
    }

    #[test]
    fn docker_archives_of_several_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("two.tar");
        let mut b = tar::Builder::new(File::create(&archive).unwrap());
        let manifest = br#"[{"Config":"a.json","RepoTags":["a:1"],"Layers":[]},{"Config":"b.json","RepoTags":["b:2"],"Layers":[]}]"#;
        let mut h = tar::Header::new_ustar();
        h.set_size(manifest.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "manifest.json", &manifest[..])
            .unwrap();
        b.into_inner().unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let registries = Registries::new(&BTreeMap::new(), Verbosity::Quiet).unwrap();
        let sources = Sources {
            cache: &cache,
            registries: &registries,
            arch: berth_format::Arch::X86_64,
        };
        let err = resolve(
            &ImageRef::DockerArchive { file: archive },
            None,
            "c",
            &sources,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("holds 2 images (a:1, b:2)"), "{err}");
    }
}
