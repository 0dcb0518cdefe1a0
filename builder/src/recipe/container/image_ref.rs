//! A container's `image`: an OCI layout, an archive or a registry reference.

use std::fmt;
use std::path::PathBuf;

use toml::Spanned;

use crate::recipe::{RecipeError, Validator};

/// A reference to a container image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `oci:DIR[:TAG]`: an OCI image layout folder.
    Layout { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:TAG]`: a tar of an OCI image layout.
    Archive { file: PathBuf, tag: Option<String> },
    /// `docker-archive:FILE`: what `docker save` writes (one image).
    DockerArchive { file: PathBuf },
    /// `REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]`, normalized as Docker does
    /// (`busybox` is `docker.io/library/busybox:latest`).
    Registry(RegistryRef),
}

/// An image in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// `HOST[:PORT]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    /// `team/app`.
    pub repository: String,
    /// The tag, if any (`latest` when neither a tag nor a digest is given).
    pub tag: Option<String>,
    /// `sha256:<64 hex>`, if the recipe pins one.
    pub digest: Option<String>,
}

impl RegistryRef {
    /// Parses a registry reference the way Docker and skopeo do (an optional
    /// `docker://` in front is accepted).
    pub fn parse(text: &str) -> Result<RegistryRef, String> {
        let text = text.strip_prefix("docker://").unwrap_or(text);
        let parsed: oci_spec::distribution::Reference = text
            .parse()
            .map_err(|e: oci_spec::distribution::ParseError| e.to_string())?;
        if let Some(d) = parsed.digest() {
            let ok = d.strip_prefix("sha256:").is_some_and(|h| {
                h.len() == 64 && h.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
            });
            if !ok {
                return Err(format!(
                    "digest {d:?} is not sha256:<64 lowercase hex digits>"
                ));
            }
        }
        let tag = match (parsed.tag(), parsed.digest()) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(RegistryRef {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            tag,
            digest: parsed.digest().map(str::to_string),
        })
    }

    /// `REGISTRY/REPOSITORY` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same image pinned to `digest` (the tag is kept for people to read).
    pub fn pinned(&self, digest: &str) -> RegistryRef {
        RegistryRef {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, path, tag) = match self {
            ImageRef::Layout { dir, tag } => ("oci", dir, tag),
            ImageRef::Archive { file, tag } => ("oci-archive", file, tag),
            ImageRef::DockerArchive { file } => ("docker-archive", file, &None),
            ImageRef::Registry(r) => return write!(f, "{r}"),
        };
        write!(f, "{kind}:{}", path.display())?;
        if let Some(tag) = tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

impl Validator<'_> {
    pub(super) fn image_ref(&self, value: &Spanned<String>) -> Result<ImageRef, RecipeError> {
        let s = value.get_ref();
        let split = |rest: &str| -> (String, Option<String>) {
            // A tag follows the last ':' unless what follows is a path.
            match rest.rsplit_once(':') {
                Some((path, tag)) if !tag.is_empty() && !tag.contains('/') => {
                    (path.to_string(), Some(tag.to_string()))
                }
                _ => (rest.to_string(), None),
            }
        };
        let spanned = |p: String| Spanned::new(value.span(), p);
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split(rest);
            let dir = self.local_path(&spanned(dir), "OCI layout folder")?;
            if !dir.join("index.json").is_file() {
                return self.err(
                    &value.span(),
                    format!(
                        "{} is not an OCI image layout (no index.json)",
                        dir.display()
                    ),
                );
            }
            return Ok(ImageRef::Layout { dir, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, tag) = split(rest);
            let file = self.local_path(&spanned(file), "OCI archive")?;
            return Ok(ImageRef::Archive { file, tag });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let file = self.local_path(&spanned(rest.to_string()), "docker archive")?;
            if !file.is_file() {
                return self.err(
                    &value.span(),
                    format!("docker archive {} is not a file", file.display()),
                );
            }
            return Ok(ImageRef::DockerArchive { file });
        }
        const OTHER_TRANSPORTS: &[&str] = &[
            "dir:",
            "containers-storage:",
            "docker-daemon:",
            "ostree:",
            "sif:",
            "oci-dir:",
        ];
        if OTHER_TRANSPORTS.iter().any(|t| s.starts_with(t)) {
            return self.err(
                &value.span(),
                format!(
                    "unsupported image reference {s:?}: use REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST], \"oci:DIR[:TAG]\", \"oci-archive:FILE[:TAG]\" or \"docker-archive:FILE\""
                ),
            );
        }
        match RegistryRef::parse(s) {
            Ok(r) => Ok(ImageRef::Registry(r)),
            Err(why) => self.err(
                &value.span(),
                format!(
                    "image reference {s:?} is not valid ({why}): use REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST], \"oci:DIR[:TAG]\", \"oci-archive:FILE[:TAG]\" or \"docker-archive:FILE\""
                ),
            ),
        }
    }
}
