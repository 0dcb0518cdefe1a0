//! Recipes: TOML in, a validated [`BuildPlan`] out.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere) and every error names the
//! file, line and column. The raw serde types are private to this module: the rest
//! of the builder only ever sees the typed plan.
//!
//! One submodule per recipe section holds its raw type, the plan value it becomes
//! and the [`Validator`] step between them, with its tests: [`image`], [`kernel`],
//! [`disk`], [`network`], [`update`], [`debug`], [`logs`], [`registry`] and
//! [`container`] (with its health check, limits, capabilities and image
//! reference). [`units`] reads the sizes and durations several sections write.
//! They share this module's one error type, [`RecipeError`], as they are steps of
//! one validation.

mod container;
mod debug;
mod disk;
mod files;
mod image;
mod kernel;
mod logs;
mod network;
mod registry;
mod units;
mod update;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use berth_bundle::ImageVersion;
use berth_format::image_config::LogsConfig;
use berth_format::NetworkConfig;
use serde::Deserialize;
use toml::Spanned;

use container::RawContainer;
use debug::RawDebug;
use disk::RawDisk;
use image::RawImage;
use kernel::RawKernel;
use logs::RawLogs;
use network::RawNetwork;
use registry::RawRegistry;
use update::RawUpdate;

pub use container::{
    ContainerNetwork, ContainerPlan, ImageRef, Limits, Privileges, RegistryRef, RootfsSource,
    CAPABILITIES,
};
pub use debug::ConsoleShell;
pub use disk::DiskSizes;
pub use files::FileCopy;
pub use image::RootVerity;
pub use kernel::{KernelPlan, KernelSource, DEFAULT_KERNEL_PACKAGE};
pub use registry::Transport;
pub use update::{PublicKeyFile, UpdatePlan};

/// Where in a recipe a value was written, to point at it in later errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The text of that line, for the error snippet.
    pub text: String,
}

impl Location {
    fn of(file: &Path, source: &str, span: &Range<usize>) -> Location {
        let start = span.start.min(source.len());
        let before = &source[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = source[line_start..start].chars().count() + 1;
        let text = source[line_start..]
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        Location {
            file: file.to_path_buf(),
            line,
            column,
            text,
        }
    }

    /// An error at this location.
    pub fn error(&self, message: impl Into<String>) -> RecipeError {
        RecipeError::At {
            at: Box::new(self.clone()),
            message: message.into(),
        }
    }
}

/// A recipe that cannot be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The recipe file could not be read.
    #[error("cannot read recipe {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Something at a given place of the recipe is wrong.
    #[error("{}", render_at(at, message))]
    At { at: Box<Location>, message: String },
}

impl RecipeError {
    /// The location the error points at, if any.
    pub fn location(&self) -> Option<&Location> {
        match self {
            RecipeError::At { at, .. } => Some(at),
            RecipeError::Read { .. } => None,
        }
    }
}

fn render_at(at: &Location, message: &str) -> String {
    let number = at.line.to_string();
    let pad = " ".repeat(number.len());
    let caret_pad: String = at
        .text
        .chars()
        .take(at.column.saturating_sub(1))
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!(
        "{}:{}:{}: {}\n{pad} |\n{number} | {}\n{pad} | {caret_pad}^",
        at.file.display(),
        at.line,
        at.column,
        message,
        at.text
    )
}

// ---------------------------------------------------------------------------
// Raw recipe, as written: one table per section, each section's type in its module.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    image: Spanned<RawImage>,
    #[serde(default)]
    kernel: Option<Spanned<RawKernel>>,
    #[serde(default)]
    disk: Option<RawDisk>,
    #[serde(default)]
    network: Option<RawNetwork>,
    #[serde(default)]
    update: Option<RawUpdate>,
    #[serde(default)]
    debug: Option<RawDebug>,
    #[serde(default)]
    logs: Option<RawLogs>,
    #[serde(default, rename = "container")]
    containers: Vec<Spanned<RawContainer>>,
    /// Per-registry settings, keyed by `HOST[:PORT]`.
    #[serde(default)]
    registry: BTreeMap<Spanned<String>, RawRegistry>,
}

// ---------------------------------------------------------------------------
// The validated plan.

/// Everything the builder needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    /// The recipe file.
    pub recipe: PathBuf,
    pub name: String,
    pub version: ImageVersion,
    pub compatible: String,
    /// The CPU architecture the image is for (`[image] arch`).
    pub arch: berth_format::Arch,
    pub hostname: String,
    /// Recipe's fixed timestamp, if any (`SOURCE_DATE_EPOCH` wins over it).
    pub epoch: Option<u64>,
    /// Whether the root filesystem is protected by dm-verity.
    pub verity: RootVerity,
    pub kernel: KernelPlan,
    pub disk: DiskSizes,
    pub network: NetworkConfig,
    /// Update trust anchors and the boot assessment's deadline.
    pub update: UpdatePlan,
    /// Whether a debug shell runs on the serial console.
    pub console_shell: ConsoleShell,
    /// Log rotation.
    pub logs: LogsConfig,
    pub containers: Vec<ContainerPlan>,
    /// The user's files and folders copied into the image's root (`[image] files`).
    pub files: Vec<FileCopy>,
    /// How to reach each registry the recipe names a setting for.
    pub registries: BTreeMap<String, Transport>,
}

impl BuildPlan {
    /// How to reach `registry` (`HOST[:PORT]`): HTTPS unless the recipe says
    /// `[registry."HOST"] insecure = true`.
    pub fn transport(&self, registry: &str) -> Transport {
        self.registries
            .get(registry)
            .copied()
            .unwrap_or(Transport::Https)
    }

    /// The lock file that goes with this recipe, next to it as Cargo.lock is
    /// next to Cargo.toml: `web.toml` → `web.lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.recipe.with_extension("lock")
    }

    /// The Debian kernel package, when the kernel comes from one.
    pub fn kernel_package(&self) -> Option<&str> {
        match &self.kernel.source {
            KernelSource::Package { name, .. } => Some(name),
            KernelSource::Local { .. } => None,
        }
    }
}

/// Reads and validates a recipe file.
pub fn load(path: &Path) -> Result<BuildPlan, RecipeError> {
    let source = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &source)
}

/// Parses and validates recipe text; `path` names the file in errors and anchors
/// relative paths.
pub fn parse(path: &Path, source: &str) -> Result<BuildPlan, RecipeError> {
    let raw: RawRecipe = toml::from_str(source).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        Location::of(path, source, &span).error(e.message().trim().to_string())
    })?;
    Validator { path, source }.plan(raw)
}

/// Checks a raw recipe against the file it came from, turning spans into
/// [`Location`]s; each section's step is in the section's module.
struct Validator<'a> {
    path: &'a Path,
    source: &'a str,
}

impl Validator<'_> {
    fn at(&self, span: &Range<usize>) -> Location {
        Location::of(self.path, self.source, span)
    }

    fn err<T>(&self, span: &Range<usize>, message: impl Into<String>) -> Result<T, RecipeError> {
        Err(self.at(span).error(message))
    }

    /// Resolves a path written in the recipe against the recipe's folder.
    fn local_path(&self, value: &Spanned<String>, what: &str) -> Result<PathBuf, RecipeError> {
        if value.get_ref().is_empty() {
            return self.err(&value.span(), format!("{what} path is empty"));
        }
        let base = self.path.parent().unwrap_or(Path::new("."));
        let path = base.join(value.get_ref());
        if !path.exists() {
            return self.err(
                &value.span(),
                format!("{what} {} does not exist", path.display()),
            );
        }
        Ok(path)
    }

    /// Validates section by section. The order decides which error a recipe
    /// with several is refused with: keep it.
    fn plan(&self, raw: RawRecipe) -> Result<BuildPlan, RecipeError> {
        let image = self.image(raw.image)?;
        let kernel = self.kernel(raw.kernel, image.arch)?;
        let disk = self.disk(raw.disk)?;
        let network = self.network(raw.network)?;
        let update = self.update(raw.update)?;
        let console_shell = debug::console_shell(raw.debug);
        let containers = self.containers(raw.containers)?;
        let registries = self.registries(raw.registry)?;
        let containers = self.start_order(containers)?;
        let logs = self.logs(raw.logs)?;
        Ok(BuildPlan {
            recipe: self.path.to_path_buf(),
            name: image.name,
            version: image.version,
            compatible: image.compatible,
            arch: image.arch,
            hostname: image.hostname,
            epoch: image.epoch,
            verity: image.verity,
            files: image.files,
            kernel,
            disk,
            network,
            update,
            console_shell,
            logs,
            containers,
            registries,
        })
    }

    /// Image, compatible and container names: they become file and folder names.
    fn name(&self, value: &Spanned<String>, what: &str) -> Result<String, RecipeError> {
        let s = value.get_ref();
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || c == '.'
            });
        if !ok {
            return self.err(
                &value.span(),
                format!(
                    "{what} {s:?} is not valid: use 1 to 63 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
                ),
            );
        }
        Ok(s.clone())
    }

    fn package_name(&self, value: &Spanned<String>) -> Result<String, RecipeError> {
        let s = value.get_ref();
        // Debian policy 5.6.1: lowercase letters, digits, + - . ; at least two
        // characters, starting with an alphanumeric.
        let ok = s.len() >= 2
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '+' || c == '-' || c == '.'
            });
        if !ok {
            return self.err(&value.span(), format!("{s:?} is not a Debian package name"));
        }
        Ok(s.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_points_at_line_and_column() {
        let src = "a = 1\nbb = 2\n";
        let at = Location::of(Path::new("r.toml"), src, &(8..9));
        assert_eq!((at.line, at.column, at.text.as_str()), (2, 3, "bb = 2"));
    }

    #[test]
    fn minimal_recipe_gets_defaults() {
        let plan = parse(
            Path::new("x.toml"),
            "[image]\nname = \"x\"\nversion = \"1.2.3\"\n",
        )
        .unwrap();
        assert_eq!(plan.compatible, "x");
        assert_eq!(plan.hostname, "x");
        assert_eq!(plan.disk, DiskSizes::default());
        assert!(
            matches!(plan.kernel.source, KernelSource::Package { ref name, .. } if name == DEFAULT_KERNEL_PACKAGE)
        );
        assert!(plan.containers.is_empty());
        assert_eq!(plan.verity, RootVerity::HashTree);
    }
}
