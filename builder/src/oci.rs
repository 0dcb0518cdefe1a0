//! OCI images from the local disk: an image layout folder (`oci:DIR[:TAG]`) or a
//! tar of one (`oci-archive:FILE[:TAG]`). Every blob is checked against its digest
//! before use; layers are unpacked into a [`Tree`] with whiteouts applied.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os,
};

use crate::cache::sha256_file;
use crate::recipe::ImageRef;
use crate::tree::{normalize, Tree, TreeError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

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
}

/// The parts of an image's configuration berth uses as container defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

/// An image unpacked into a tree.
#[derive(Debug)]
pub struct Unpacked {
    pub tree: Tree,
    pub defaults: ImageDefaults,
    /// Digest (`sha256:…`) of the manifest used.
    pub manifest_digest: String,
}

/// Unpacks the image `reference` into a new tree staged in `staging`; `scratch`
/// is a folder for an archive's contents.
pub fn unpack(reference: &ImageRef, staging: &Path, scratch: &Path) -> Result<Unpacked, OciError> {
    let image = reference.to_string();
    let (layout, tag) = match reference {
        ImageRef::Layout { dir, tag } => (dir.clone(), tag.clone()),
        ImageRef::Archive { file, tag } => {
            extract_archive(file, scratch)?;
            (scratch.to_path_buf(), tag.clone())
        }
    };
    let reader = Layout {
        dir: layout,
        image: image.clone(),
    };
    let index: ImageIndex = reader.json_file(&reader.dir.join("index.json"))?;
    let descriptor = select(&index, tag.as_deref(), &image)?;
    let manifest_descriptor = reader.resolve_index(descriptor)?;
    let manifest: ImageManifest = reader.blob_json(&manifest_descriptor)?;
    let config: ImageConfiguration = reader.blob_json(manifest.config())?;
    let mut tree = Tree::new(staging);
    for layer in manifest.layers() {
        let path = reader.blob(layer)?;
        let file = File::open(&path).map_err(|source| OciError::Io {
            path: path.clone(),
            source,
        })?;
        let file = BufReader::new(file);
        let stream: Box<dyn Read> = match layer.media_type() {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Box::new(file),
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Box::new(flate2::read::GzDecoder::new(file))
            }
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Box::new(
                zstd::stream::read::Decoder::new(file).map_err(|source| OciError::Io {
                    path: path.clone(),
                    source,
                })?,
            ),
            MediaType::Other(t) if t == "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                Box::new(flate2::read::GzDecoder::new(file))
            }
            other => {
                return Err(OciError::Unsupported {
                    image,
                    what: "layer media type",
                    value: other.to_string(),
                })
            }
        };
        tree.unpack_tar(&mut tar::Archive::new(stream), true)
            .map_err(|source| OciError::Layer {
                image: image.clone(),
                digest: layer.digest().to_string(),
                source,
            })?;
    }
    let defaults = config
        .config()
        .as_ref()
        .map(|c| ImageDefaults {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            workdir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
        })
        .unwrap_or_default();
    Ok(Unpacked {
        tree,
        defaults,
        manifest_digest: manifest_descriptor.digest().to_string(),
    })
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

struct Layout {
    dir: PathBuf,
    image: String,
}

impl Layout {
    fn json_file<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<T, OciError> {
        let file = File::open(path).map_err(|source| OciError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_reader(BufReader::new(file)).map_err(|e| OciError::Json {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// The verified path of a blob.
    fn blob(&self, descriptor: &Descriptor) -> Result<PathBuf, OciError> {
        let digest = descriptor.digest();
        let algorithm = digest.algorithm().as_ref().to_string();
        let hex = digest.digest();
        if algorithm != "sha256" || hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(OciError::Unsupported {
                image: self.image.clone(),
                what: "digest",
                value: digest.to_string(),
            });
        }
        let path = self.dir.join("blobs/sha256").join(hex);
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

    fn blob_json<T: serde::de::DeserializeOwned>(&self, d: &Descriptor) -> Result<T, OciError> {
        let path = self.blob(d)?;
        self.json_file(&path)
    }

    /// Follows nested indexes to the linux/amd64 manifest.
    fn resolve_index(&self, descriptor: &Descriptor) -> Result<Descriptor, OciError> {
        let mut current = descriptor.clone();
        for _ in 0..4 {
            if *current.media_type() != MediaType::ImageIndex {
                return Ok(current);
            }
            let nested: ImageIndex = self.blob_json(&current)?;
            current = nested
                .manifests()
                .iter()
                .find(|m| {
                    m.platform()
                        .as_ref()
                        .is_some_and(|p| *p.architecture() == Arch::Amd64 && *p.os() == Os::Linux)
                })
                .cloned()
                .ok_or_else(|| OciError::Select {
                    image: self.image.clone(),
                    reason: "the image index has no linux/amd64 manifest".into(),
                })?;
        }
        Err(OciError::Select {
            image: self.image.clone(),
            reason: "image indexes nested too deep".into(),
        })
    }
}

/// Extracts an OCI archive (a tar of a layout) into `dir`: regular files and
/// folders only, every path confined to `dir`.
fn extract_archive(file: &Path, dir: &Path) -> Result<(), OciError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OciError::Io { path, source }
    };
    let f = File::open(file).map_err(io(file))?;
    let mut archive = tar::Archive::new(BufReader::new(f));
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
