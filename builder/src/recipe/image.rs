//! `[image]`: the image's name, version, architecture, compatible string, host
//! name, file times and whether its root is protected by dm-verity.

use berth_bundle::ImageVersion;
use berth_format::Arch;
use serde::Deserialize;
use toml::Spanned;

use super::files::{FileCopy, FilesInto, RawFile};
use super::{RecipeError, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImage {
    name: Spanned<String>,
    version: Spanned<String>,
    /// `x86_64` (the default) or `arm64`.
    #[serde(default)]
    arch: Option<Spanned<String>>,
    #[serde(default)]
    compatible: Option<Spanned<String>>,
    #[serde(default)]
    hostname: Option<Spanned<String>>,
    /// Fixed timestamp of every file in the image (seconds since 1970); overridden
    /// by `SOURCE_DATE_EPOCH`.
    #[serde(default)]
    epoch: Option<Spanned<i64>>,
    /// dm-verity hash tree for the root filesystem (default true).
    #[serde(default)]
    verity: Option<bool>,
    /// Files and folders copied into the image's root.
    #[serde(default)]
    files: Vec<Spanned<RawFile>>,
}

/// The `[image]` table, checked; [`Validator::plan`] spreads it over the plan.
#[derive(Debug)]
pub(super) struct ImagePlan {
    pub(super) name: String,
    pub(super) version: ImageVersion,
    pub(super) arch: Arch,
    pub(super) compatible: String,
    pub(super) hostname: String,
    pub(super) epoch: Option<u64>,
    pub(super) verity: RootVerity,
    pub(super) files: Vec<FileCopy>,
}

/// How the slot's root filesystem is protected against changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootVerity {
    /// A dm-verity hash tree follows the filesystem in the slot and the boot entry
    /// carries its root hash: the init mounts the root only through verity, so a
    /// changed block is never read. The default.
    HashTree,
    /// No hash tree: the root is mounted as it is (`[image] verity = false`).
    Off,
}

impl Validator<'_> {
    pub(super) fn image(&self, raw: Spanned<RawImage>) -> Result<ImagePlan, RecipeError> {
        let image = raw.into_inner();
        let name = self.name(&image.name, "image name")?;
        let version = ImageVersion::parse(image.version.get_ref()).map_err(|e| {
            self.at(&image.version.span()).error(format!(
                "version {:?} is not a semantic version (MAJOR.MINOR.PATCH, e.g. \"1.0.0\"): {}",
                image.version.get_ref(),
                e.reason
            ))
        })?;
        let arch = match &image.arch {
            Some(a) => a.get_ref().parse::<Arch>().map_err(|e| {
                self.at(&a.span())
                    .error(format!("{e} (the image's CPU architecture)"))
            })?,
            None => Arch::default(),
        };
        let compatible = match &image.compatible {
            Some(c) => self.name(c, "compatible string")?,
            None => name.clone(),
        };
        let hostname = match &image.hostname {
            Some(h) => self.hostname(h)?,
            None => name.clone(),
        };
        let epoch = match image.epoch {
            Some(e) if *e.get_ref() < 0 => {
                return self.err(&e.span(), "epoch must be seconds since 1970, not negative")
            }
            Some(e) => Some(e.into_inner().unsigned_abs()),
            None => None,
        };
        let verity = match image.verity {
            Some(false) => RootVerity::Off,
            Some(true) | None => RootVerity::HashTree,
        };
        let files = self.files(image.files, FilesInto::Image)?;
        Ok(ImagePlan {
            name,
            version,
            arch,
            compatible,
            hostname,
            epoch,
            verity,
            files,
        })
    }

    fn hostname(&self, value: &Spanned<String>) -> Result<String, RecipeError> {
        let s = value.get_ref();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !ok {
            return self.err(
                &value.span(),
                format!("hostname {s:?} is not a valid host name (letters, digits, '-', dots between labels)"),
            );
        }
        Ok(s.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::recipe::{parse, RootVerity};

    #[test]
    fn verity_can_be_turned_off_but_only_with_a_boolean() {
        let plan = parse(
            Path::new("x.toml"),
            "[image]\nname = \"x\"\nversion = \"1.2.3\"\nverity = false\n",
        )
        .unwrap();
        assert_eq!(plan.verity, RootVerity::Off);
        let err = parse(
            Path::new("x.toml"),
            "[image]\nname = \"x\"\nversion = \"1.2.3\"\nverity = \"no\"\n",
        )
        .unwrap_err();
        let at = err.location().unwrap();
        assert_eq!((at.line, at.column), (4, 10), "{err}");
    }

    #[test]
    fn the_architecture_defaults_to_x86_64_and_unknown_ones_are_refused_where_written() {
        let head = "[image]\nname = \"x\"\nversion = \"1.2.3\"\n";
        let plan = parse(Path::new("x.toml"), head).unwrap();
        assert_eq!(plan.arch, berth_format::Arch::X86_64);
        let plan = parse(Path::new("x.toml"), &format!("{head}arch = \"arm64\"\n")).unwrap();
        assert_eq!(plan.arch, berth_format::Arch::Arm64);
        assert_eq!(
            plan.kernel_package(),
            Some("linux-image-cloud-arm64"),
            "the default kernel follows the architecture"
        );
        let err = parse(Path::new("x.toml"), &format!("{head}arch = \"riscv64\"\n")).unwrap_err();
        let at = err.location().unwrap();
        assert_eq!((at.line, at.column), (4, 8), "{err}");
        assert!(err.to_string().contains("\"x86_64\" or \"arm64\""), "{err}");
    }
}
