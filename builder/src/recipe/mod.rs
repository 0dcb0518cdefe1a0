//! Recipes: TOML in, a validated [`BuildPlan`] out.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere) and every error names the
//! file, line and column. The raw serde types are private to this module: the rest
//! of the builder only ever sees the typed plan.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_format::image_config::{
    LogsConfig, StaticIpv4, DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_RETRIES,
    DEFAULT_HEALTH_TIMEOUT_CHECK_MS, DEFAULT_HEALTH_TIMEOUT_MS,
};
use berth_format::{HealthCheck, HealthProbe, NetworkConfig, RestartPolicy};
use serde::Deserialize;
use toml::Spanned;

/// Default Debian kernel package.
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
const MIB: u64 = 1024 * 1024;
/// FAT32 needs at least 65525 clusters; with 512-byte clusters that is ~33 MiB.
const MIN_ESP: u64 = 34 * MIB;
const MIN_ROOT: u64 = 8 * MIB;
const MIN_DATA: u64 = 8 * MIB;

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
// Raw recipe, as written.

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    /// Plain HTTP instead of HTTPS for this registry.
    #[serde(default)]
    insecure: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpdate {
    /// Minisign public keys (paths relative to the recipe) trusted for updates.
    #[serde(default)]
    keys: Vec<Spanned<String>>,
    /// How long a counting slot has to become healthy.
    #[serde(default)]
    health_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogs {
    /// Size at which a log file is rotated.
    #[serde(default)]
    max_size: Option<Spanned<RawSize>>,
    /// Rotated files kept.
    #[serde(default)]
    keep: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDebug {
    #[serde(default)]
    console_shell: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    exec: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    http: Option<Spanned<String>>,
    #[serde(default)]
    tcp: Option<Spanned<i64>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    retries: Option<Spanned<i64>>,
    #[serde(default)]
    start_period: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    name: Spanned<String>,
    version: Spanned<String>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    #[serde(default)]
    package: Option<Spanned<String>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    modules_dir: Option<Spanned<String>>,
    #[serde(default)]
    cmdline: Option<Spanned<String>>,
    #[serde(default)]
    modules: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    #[serde(default)]
    esp: Option<Spanned<RawSize>>,
    #[serde(default)]
    root: Option<Spanned<RawSize>>,
    #[serde(default)]
    data: Option<Spanned<RawSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    ipv4: Option<Spanned<RawIpv4>>,
    /// DHCPv4 on the first wired interface; on unless `ipv4` is given.
    #[serde(default)]
    dhcp: Option<Spanned<bool>>,
    /// Static DNS servers for every container's /etc/resolv.conf.
    #[serde(default)]
    dns: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpv4 {
    #[serde(default)]
    interface: Option<Spanned<String>>,
    address: Spanned<String>,
    #[serde(default)]
    gateway: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    name: Spanned<String>,
    #[serde(default)]
    packages: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    image: Option<Spanned<String>>,
    #[serde(default)]
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    workdir: Option<Spanned<String>>,
    #[serde(default)]
    user: Option<Spanned<String>>,
    #[serde(default)]
    restart: Option<RestartPolicy>,
    #[serde(default)]
    critical: Option<bool>,
    #[serde(default)]
    health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    network: Option<Spanned<String>>,
    #[serde(default)]
    volumes: Vec<Spanned<String>>,
    #[serde(default)]
    writable: Option<bool>,
    #[serde(default)]
    memory: Option<Spanned<RawSize>>,
    #[serde(default)]
    cpus: Option<Spanned<f64>>,
    #[serde(default)]
    pids: Option<Spanned<i64>>,
    #[serde(default)]
    cap_add: Vec<Spanned<String>>,
    #[serde(default)]
    cap_drop: Vec<Spanned<String>>,
    #[serde(default)]
    privileged: Option<bool>,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
}

// ---------------------------------------------------------------------------
// The validated plan.

/// Everything the builder needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    /// The recipe file.
    pub recipe: PathBuf,
    pub name: String,
    pub version: semver::Version,
    pub compatible: String,
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
}

/// How berth talks to a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS with certificate checks (the default).
    Https,
    /// Plain HTTP, no TLS at all: only when the recipe says `insecure = true`.
    PlainHttp,
}

/// The recipe's `[update]` table, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePlan {
    /// Update signing keys, copied into the image as `/etc/berth/keys/<stem>.pub`.
    pub keys: Vec<PublicKeyFile>,
    /// How long a counting slot has to become healthy.
    pub health_timeout: Duration,
}

impl Default for UpdatePlan {
    fn default() -> Self {
        UpdatePlan {
            keys: Vec::new(),
            health_timeout: Duration::from_millis(DEFAULT_HEALTH_TIMEOUT_MS),
        }
    }
}

/// A minisign public key file named in `[update] keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyFile {
    /// The file in the recipe's folder.
    pub path: PathBuf,
    /// Its file name without extension: the image gets `/etc/berth/keys/<stem>.pub`.
    pub stem: String,
    /// Its bytes, copied verbatim.
    pub content: Vec<u8>,
}

/// A shell on the serial console, for development images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleShell {
    /// No shell: the console only shows output (the default).
    Off,
    /// Debian's busybox-static at `/bin/busybox` (`/bin/sh` links to it), run on
    /// the console by the init and started again when it exits.
    Busybox,
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

/// Which kernel to boot, and how.
#[derive(Debug, Clone)]
pub struct KernelPlan {
    pub source: KernelSource,
    /// Extra kernel command line, appended to berth's own.
    pub cmdline: String,
    /// Extra modules to load in the initramfs, by name.
    pub modules: Vec<String>,
}

/// Where the kernel comes from.
#[derive(Debug, Clone)]
pub enum KernelSource {
    /// A Debian package (or a metapackage depending on one).
    Package { name: String, at: Location },
    /// A local kernel image and its `/lib/modules/<version>` folder.
    Local {
        image: PathBuf,
        modules_dir: PathBuf,
    },
}

/// Sizes of the partitions, in bytes, each a whole number of MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSizes {
    pub esp: u64,
    pub root: u64,
    pub data: u64,
}

impl Default for DiskSizes {
    fn default() -> Self {
        DiskSizes {
            esp: 128 * MIB,
            root: 256 * MIB,
            data: 256 * MIB,
        }
    }
}

/// One container of the recipe.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub name: String,
    pub source: RootfsSource,
    /// Overrides the image's entrypoint.
    pub command: Option<Vec<String>>,
    /// Overrides the image's default arguments (`Cmd`).
    pub args: Option<Vec<String>>,
    /// Added to (and overriding) the image's environment.
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    /// Overrides the image's user (`NAME`, `UID`, `UID:GID`, `NAME:GROUP`).
    pub user: Option<String>,
    pub restart: RestartPolicy,
    /// The boot assessment waits for this container to be healthy.
    pub critical: bool,
    /// Its health check.
    pub health: Option<HealthCheck>,
    /// The host's network, or a namespace of its own with only loopback.
    pub network: ContainerNetwork,
    /// Named volumes: (volume name, absolute path in the container).
    pub volumes: Vec<(String, String)>,
    /// Its root is a writable overlay (wiped on update) instead of read-only.
    pub writable: bool,
    /// cgroup v2 limits.
    pub limits: Limits,
    /// Capabilities added to, and dropped from, the OCI default set (`CAP_` names).
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileges: Privileges,
    /// Containers started before this one.
    pub depends_on: Vec<String>,
    /// Where the container was declared.
    pub at: Location,
}

/// A container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerNetwork {
    /// The host's network namespace (the default).
    Host,
    /// A network namespace of its own, with only loopback.
    None,
}

/// Whether a container runs confined (the default) or with every capability, no
/// seccomp filter and the host's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privileges {
    /// OCI default capabilities (plus `cap_add`), seccomp, masked paths.
    Confined,
    /// `privileged = true`.
    Privileged,
}

/// A container's cgroup v2 limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// memory.max, in bytes.
    pub memory: Option<u64>,
    /// CPU quota in thousandths of a CPU (cpu.max over a 100 ms period).
    pub millicpus: Option<u64>,
    /// pids.max.
    pub pids: Option<i64>,
}

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone)]
pub enum RootfsSource {
    /// Debian packages unpacked into an empty root (with their dependencies).
    Packages(Vec<(String, Location)>),
    /// An OCI image.
    Image { reference: ImageRef, at: Location },
}

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

    fn plan(&self, raw: RawRecipe) -> Result<BuildPlan, RecipeError> {
        let image_span = raw.image.span();
        let image = raw.image.into_inner();
        let name = self.name(&image.name, "image name")?;
        let version = semver::Version::parse(image.version.get_ref()).map_err(|e| {
            self.at(&image.version.span()).error(format!(
                "version {:?} is not a semantic version (MAJOR.MINOR.PATCH, e.g. \"1.0.0\"): {e}",
                image.version.get_ref()
            ))
        })?;
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
        let _ = image_span;
        let verity = match image.verity {
            Some(false) => RootVerity::Off,
            Some(true) | None => RootVerity::HashTree,
        };
        let kernel = self.kernel(raw.kernel)?;
        let disk = self.disk(raw.disk)?;
        let network = self.network(raw.network)?;
        let update = self.update(raw.update)?;
        let console_shell = match raw.debug.and_then(|d| d.console_shell) {
            Some(true) => ConsoleShell::Busybox,
            Some(false) | None => ConsoleShell::Off,
        };

        let mut seen = HashSet::new();
        let mut containers = Vec::new();
        for container in raw.containers {
            let span = container.span();
            let container = container.into_inner();
            let plan = self.container(container, &span)?;
            if !seen.insert(plan.name.clone()) {
                return Err(plan.at.error(format!(
                    "duplicate container name {:?}: each [[container]] needs its own name",
                    plan.name
                )));
            }
            containers.push(plan);
        }
        let mut registries = BTreeMap::new();
        for (host, settings) in raw.registry {
            if !is_registry_host(host.get_ref()) {
                return self.err(
                    &host.span(),
                    format!(
                        "registry {:?} is not HOST or HOST:PORT (as it appears in image references, without a scheme or path)",
                        host.get_ref()
                    ),
                );
            }
            let transport = match settings.insecure {
                Some(true) => Transport::PlainHttp,
                Some(false) | None => Transport::Https,
            };
            registries.insert(host.into_inner(), transport);
        }
        let containers = self.start_order(containers)?;
        let logs = self.logs(raw.logs)?;
        Ok(BuildPlan {
            recipe: self.path.to_path_buf(),
            name,
            version,
            compatible,
            hostname,
            epoch,
            verity,
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

    fn logs(&self, raw: Option<RawLogs>) -> Result<LogsConfig, RecipeError> {
        let mut logs = LogsConfig::default();
        let Some(raw) = raw else {
            return Ok(logs);
        };
        if let Some(size) = &raw.max_size {
            let bytes = match size.get_ref() {
                RawSize::Bytes(n) => u64::try_from(*n).ok(),
                RawSize::Text(t) => parse_size(t),
            };
            match bytes {
                Some(bytes) if bytes >= 4096 => logs.max_size = bytes,
                _ => {
                    return self.err(
                        &size.span(),
                        "logs max_size is a size of at least 4K, like \"1M\"",
                    )
                }
            }
        }
        if let Some(keep) = &raw.keep {
            match u32::try_from(*keep.get_ref()) {
                Ok(n) if (1..=100).contains(&n) => logs.keep = n,
                _ => return self.err(&keep.span(), "logs keep is a number of files from 1 to 100"),
            }
        }
        Ok(logs)
    }

    /// Orders containers so each starts after its `depends_on` (recipe order
    /// otherwise); refuses unknown names and cycles.
    fn start_order(
        &self,
        containers: Vec<ContainerPlan>,
    ) -> Result<Vec<ContainerPlan>, RecipeError> {
        for c in &containers {
            for dep in &c.depends_on {
                if *dep == c.name {
                    return Err(c
                        .at
                        .error(format!("container {:?} depends on itself", c.name)));
                }
                if !containers.iter().any(|other| other.name == *dep) {
                    return Err(c.at.error(format!(
                        "container {:?} depends on {dep:?}, which is not a container of this recipe",
                        c.name
                    )));
                }
            }
        }
        let mut pending = containers;
        let mut ordered: Vec<ContainerPlan> = Vec::new();
        while !pending.is_empty() {
            let ready = pending.iter().position(|c| {
                c.depends_on
                    .iter()
                    .all(|dep| ordered.iter().any(|o| o.name == *dep))
            });
            match ready {
                Some(index) => ordered.push(pending.remove(index)),
                None => {
                    let names: Vec<&str> = pending.iter().map(|c| c.name.as_str()).collect();
                    return Err(pending[0].at.error(format!(
                        "depends_on forms a cycle between containers {}",
                        names.join(", ")
                    )));
                }
            }
        }
        Ok(ordered)
    }

    fn update(&self, raw: Option<RawUpdate>) -> Result<UpdatePlan, RecipeError> {
        let mut plan = UpdatePlan::default();
        let Some(raw) = raw else { return Ok(plan) };
        if let Some(timeout) = &raw.health_timeout {
            plan.health_timeout = self.duration(timeout, "health_timeout")?;
            if plan.health_timeout.is_zero() {
                return self.err(&timeout.span(), "health_timeout must be more than 0 s");
            }
        }
        let mut stems: Vec<String> = Vec::new();
        for key in &raw.keys {
            let path = self.local_path(key, "update key")?;
            let content = std::fs::read(&path).map_err(|e| {
                self.at(&key.span())
                    .error(format!("cannot read update key {}: {e}", path.display()))
            })?;
            if let Err(why) = check_minisign_public_key(&content) {
                return self.err(
                    &key.span(),
                    format!("{} is not a minisign public key: {why}", path.display()),
                );
            }
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let stem_ok = !stem.is_empty()
                && !stem.starts_with('.')
                && stem
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !stem_ok {
                return self.err(
                    &key.span(),
                    format!(
                        "update key file name {stem:?} must be letters, digits, '-', '_' or '.'"
                    ),
                );
            }
            if stems.contains(&stem) {
                return self.err(
                    &key.span(),
                    format!("two update keys would both be /etc/berth/keys/{stem}.pub: rename one"),
                );
            }
            stems.push(stem.clone());
            plan.keys.push(PublicKeyFile {
                path,
                stem,
                content,
            });
        }
        Ok(plan)
    }

    fn duration(&self, value: &Spanned<String>, what: &str) -> Result<Duration, RecipeError> {
        parse_duration(value.get_ref()).ok_or_else(|| {
            self.at(&value.span()).error(format!(
                "{what} {:?} is not a duration: write a whole number with ms, s or m, like \"500ms\", \"5s\" or \"2m\"",
                value.get_ref()
            ))
        })
    }

    fn health(&self, raw: Spanned<RawHealth>, name: &str) -> Result<HealthCheck, RecipeError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let kinds = [
            raw.exec.as_ref().map(|e| e.span()),
            raw.http.as_ref().map(|h| h.span()),
            raw.tcp.as_ref().map(|t| t.span()),
        ];
        let given: Vec<&Range<usize>> = kinds.iter().flatten().collect();
        if given.is_empty() {
            return self.err(
                &span,
                format!("the health check of container {name:?} needs one of `exec = [...]`, `http = \"http://127.0.0.1:PORT/\"` or `tcp = PORT`"),
            );
        }
        if given.len() > 1 {
            return self.err(
                given[1],
                format!("the health check of container {name:?} takes exactly one of `exec`, `http` and `tcp`"),
            );
        }
        let probe = if let Some(exec) = raw.exec {
            if exec.get_ref().is_empty() || exec.get_ref()[0].is_empty() {
                return self.err(
                    &exec.span(),
                    "`exec` is empty: name the program to run in the container",
                );
            }
            HealthProbe::Exec {
                argv: exec.into_inner(),
            }
        } else if let Some(http) = raw.http {
            let (port, path) = parse_local_http_url(http.get_ref()).map_err(|why| {
                self.at(&http.span())
                    .error(format!("health check url {:?} {why}", http.get_ref()))
            })?;
            HealthProbe::Http { port, path }
        } else if let Some(tcp) = raw.tcp {
            HealthProbe::Tcp {
                port: self.port(&tcp)?,
            }
        } else {
            return self.err(&span, "no health check kind");
        };
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let interval = match &raw.interval {
            Some(i) => {
                let d = self.duration(i, "interval")?;
                if d.is_zero() {
                    return self.err(&i.span(), "interval must be more than 0 s");
                }
                millis(d)
            }
            None => DEFAULT_HEALTH_INTERVAL_MS,
        };
        let timeout = match &raw.timeout {
            Some(t) => {
                let d = self.duration(t, "timeout")?;
                if d.is_zero() {
                    return self.err(&t.span(), "timeout must be more than 0 s");
                }
                millis(d)
            }
            None => DEFAULT_HEALTH_TIMEOUT_CHECK_MS,
        };
        let retries = match &raw.retries {
            Some(r) => match u32::try_from(*r.get_ref()) {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => {
                    return self.err(
                        &r.span(),
                        "retries must be a whole number from 1 to 100 (consecutive failures before unhealthy)",
                    )
                }
            },
            None => DEFAULT_HEALTH_RETRIES,
        };
        let start_period = match &raw.start_period {
            Some(p) => millis(self.duration(p, "start_period")?),
            None => 0,
        };
        Ok(HealthCheck {
            probe,
            interval_ms: interval,
            timeout_ms: timeout,
            retries,
            start_period_ms: start_period,
        })
    }

    fn port(&self, value: &Spanned<i64>) -> Result<u16, RecipeError> {
        match u16::try_from(*value.get_ref()) {
            Ok(port) if port > 0 => Ok(port),
            _ => self.err(&value.span(), "a port is a number from 1 to 65535"),
        }
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

    fn kernel(&self, raw: Option<Spanned<RawKernel>>) -> Result<KernelPlan, RecipeError> {
        let Some(raw) = raw else {
            return Ok(KernelPlan {
                source: KernelSource::Package {
                    name: DEFAULT_KERNEL_PACKAGE.to_string(),
                    at: self.at(&(0..0)),
                },
                cmdline: String::new(),
                modules: Vec::new(),
            });
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let source = match (&raw.package, &raw.path, &raw.modules_dir) {
            (Some(p), Some(_), _) | (Some(p), _, Some(_)) => {
                return self.err(
                    &p.span(),
                    "[kernel] takes either `package` or `path` + `modules_dir`, not both",
                )
            }
            (Some(p), None, None) => KernelSource::Package {
                name: self.package_name(p)?,
                at: self.at(&p.span()),
            },
            (None, Some(image), Some(modules)) => KernelSource::Local {
                image: self.local_path(image, "kernel image")?,
                modules_dir: self.local_path(modules, "kernel modules folder")?,
            },
            (None, Some(image), None) => return self.err(
                &image.span(),
                "a local kernel `path` needs `modules_dir` too (its /lib/modules/<version> folder)",
            ),
            (None, None, Some(m)) => {
                return self.err(&m.span(), "`modules_dir` needs a kernel `path`")
            }
            (None, None, None) => KernelSource::Package {
                name: DEFAULT_KERNEL_PACKAGE.to_string(),
                at: self.at(&span),
            },
        };
        let cmdline = match raw.cmdline {
            Some(c) if c.get_ref().contains(['\n', '\r']) => {
                return self.err(&c.span(), "the kernel command line must be one line")
            }
            Some(c) => c.into_inner().trim().to_string(),
            None => String::new(),
        };
        let mut modules = Vec::new();
        for m in raw.modules {
            let ok = !m.get_ref().is_empty()
                && m.get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return self.err(&m.span(), format!("{:?} is not a module name", m.get_ref()));
            }
            modules.push(m.into_inner());
        }
        Ok(KernelPlan {
            source,
            cmdline,
            modules,
        })
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

    fn disk(&self, raw: Option<RawDisk>) -> Result<DiskSizes, RecipeError> {
        let mut sizes = DiskSizes::default();
        let Some(raw) = raw else { return Ok(sizes) };
        if let Some(esp) = raw.esp {
            sizes.esp = self.size(&esp, "esp", MIN_ESP)?;
        }
        if let Some(root) = raw.root {
            sizes.root = self.size(&root, "root", MIN_ROOT)?;
        }
        if let Some(data) = raw.data {
            sizes.data = self.size(&data, "data", MIN_DATA)?;
        }
        Ok(sizes)
    }

    fn size(&self, value: &Spanned<RawSize>, what: &str, min: u64) -> Result<u64, RecipeError> {
        let bytes = match value.get_ref() {
            RawSize::Bytes(n) => u64::try_from(*n).ok(),
            RawSize::Text(t) => parse_size(t),
        };
        let Some(bytes) = bytes else {
            return self.err(
                &value.span(),
                format!("{what} size is not a size: write a whole number with a unit, like \"64M\" or \"1G\""),
            );
        };
        if bytes % MIB != 0 {
            return self.err(
                &value.span(),
                format!("{what} size must be a whole number of MiB (partitions are 1 MiB aligned)"),
            );
        }
        if bytes < min {
            let why = if what == "esp" {
                " (FAT32 needs at least 65525 clusters)"
            } else {
                ""
            };
            return self.err(
                &value.span(),
                format!(
                    "{what} size {} MiB is too small: at least {} MiB{why}",
                    bytes / MIB,
                    min / MIB
                ),
            );
        }
        Ok(bytes)
    }

    fn network(&self, raw: Option<RawNetwork>) -> Result<NetworkConfig, RecipeError> {
        let Some(raw) = raw else {
            return Ok(NetworkConfig::default());
        };
        let mut dns = Vec::new();
        for server in raw.dns.iter().flatten() {
            let address = server.get_ref().parse::<Ipv4Addr>().map_err(|_| {
                self.at(&server.span()).error(format!(
                    "DNS server {:?} is not an IPv4 address",
                    server.get_ref()
                ))
            })?;
            dns.push(address.to_string());
        }
        let dhcp = raw.dhcp.as_ref().map(|d| (*d.get_ref(), d.span()));
        let Some(ipv4) = raw.ipv4 else {
            return Ok(NetworkConfig {
                ipv4: None,
                dhcp: dhcp.is_none_or(|(on, _)| on),
                dns,
            });
        };
        if let Some((true, span)) = dhcp {
            return self.err(
                &span,
                "dhcp = true and a static ipv4 exclude each other: remove one of them".to_string(),
            );
        }
        let ipv4 = ipv4.into_inner();
        let (address, prefix) = ipv4
            .address
            .get_ref()
            .split_once('/')
            .and_then(|(a, p)| Some((a.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)))
            .filter(|(_, p)| *p <= 32)
            .ok_or_else(|| {
                self.at(&ipv4.address.span()).error(format!(
                    "address {:?} is not an IPv4 address with a prefix length, like \"10.0.2.15/24\"",
                    ipv4.address.get_ref()
                ))
            })?;
        let gateway = match &ipv4.gateway {
            Some(g) => Some(
                g.get_ref()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| {
                        self.at(&g.span())
                            .error(format!("gateway {:?} is not an IPv4 address", g.get_ref()))
                    })?
                    .to_string(),
            ),
            None => None,
        };
        let interface = match &ipv4.interface {
            Some(i) => {
                let ok = !i.get_ref().is_empty()
                    && i.get_ref().len() < 16
                    && i.get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
                if !ok {
                    return self.err(
                        &i.span(),
                        format!("{:?} is not an interface name", i.get_ref()),
                    );
                }
                i.get_ref().clone()
            }
            None => "eth0".to_string(),
        };
        Ok(NetworkConfig {
            ipv4: Some(StaticIpv4 {
                interface,
                address: address.to_string(),
                prefix,
                gateway,
            }),
            dhcp: false,
            dns,
        })
    }

    fn container(
        &self,
        raw: RawContainer,
        span: &Range<usize>,
    ) -> Result<ContainerPlan, RecipeError> {
        let name = self.name(&raw.name, "container name")?;
        let at = self.at(&raw.name.span());
        let source = match (raw.packages, raw.image) {
            (Some(p), Some(_)) => {
                return self.err(
                    &p.span(),
                    format!("container {name:?} has both `packages` and `image`: pick one root filesystem source"),
                )
            }
            (None, None) => {
                return self.err(
                    span,
                    format!("container {name:?} needs a root filesystem: `packages = [...]` or `image = \"oci:DIR\"`"),
                )
            }
            (Some(packages), None) => {
                if packages.get_ref().is_empty() {
                    return self.err(&packages.span(), "`packages` is empty");
                }
                let mut list = Vec::new();
                for p in packages.into_inner() {
                    list.push((self.package_name(&p)?, self.at(&p.span())));
                }
                RootfsSource::Packages(list)
            }
            (None, Some(image)) => RootfsSource::Image {
                reference: self.image_ref(&image)?,
                at: self.at(&image.span()),
            },
        };
        let command = match raw.command {
            Some(c) if c.get_ref().is_empty() => {
                return self.err(&c.span(), "`command` is empty: name the program to run")
            }
            Some(c) => Some(c.into_inner()),
            None => None,
        };
        if command.is_none() && matches!(source, RootfsSource::Packages(_)) {
            return self.err(
                &raw.name.span(),
                format!("container {name:?} has no `command`: packages have no default entrypoint"),
            );
        }
        let mut env = Vec::new();
        for (key, value) in raw.env {
            let ok = !key.get_ref().is_empty()
                && !key.get_ref().contains('=')
                && !key.get_ref().contains('\0');
            if !ok {
                return self.err(
                    &key.span(),
                    format!("{:?} is not an environment variable name", key.get_ref()),
                );
            }
            env.push((key.into_inner(), value));
        }
        let workdir = match raw.workdir {
            Some(w) if !w.get_ref().starts_with('/') => {
                return self.err(&w.span(), "`workdir` must be an absolute path")
            }
            Some(w) => Some(w.into_inner()),
            None => None,
        };
        let health = match raw.health {
            Some(health) => Some(self.health(health, &name)?),
            None => None,
        };
        let user = match raw.user {
            Some(u) if !is_user_spec(u.get_ref()) => {
                return self.err(
                    &u.span(),
                    format!(
                        "user {:?} is not NAME, UID, UID:GID or NAME:GROUP",
                        u.get_ref()
                    ),
                )
            }
            Some(u) => Some(u.into_inner()),
            None => None,
        };
        let network = match &raw.network {
            None => ContainerNetwork::Host,
            Some(n) => match n.get_ref().as_str() {
                "host" => ContainerNetwork::Host,
                "none" => ContainerNetwork::None,
                other => {
                    return self.err(
                        &n.span(),
                        format!("network {other:?} is not \"host\" or \"none\""),
                    )
                }
            },
        };
        let mut volumes: Vec<(String, String)> = Vec::new();
        for volume in &raw.volumes {
            let (vol, path) = self.volume(volume)?;
            if volumes.iter().any(|(_, p)| *p == path) {
                return self.err(
                    &volume.span(),
                    format!("two volumes are mounted on {path:?}"),
                );
            }
            volumes.push((vol, path));
        }
        let limits = Limits {
            memory: match &raw.memory {
                Some(m) => Some(self.size(m, "memory", 4 * 1024 * 1024)?),
                None => None,
            },
            millicpus: match &raw.cpus {
                Some(c) => {
                    let cpus = *c.get_ref();
                    if !(0.01..=1024.0).contains(&cpus) {
                        return self.err(
                            &c.span(),
                            "cpus is a number of CPUs from 0.01 to 1024, like 0.5",
                        );
                    }
                    // In range: the cast cannot truncate or lose the sign.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Some((cpus * 1000.0).round() as u64)
                }
                None => None,
            },
            pids: match &raw.pids {
                Some(p) if *p.get_ref() < 1 => {
                    return self.err(
                        &p.span(),
                        "pids is the most processes the container may have: at least 1",
                    )
                }
                Some(p) => Some(*p.get_ref()),
                None => None,
            },
        };
        let cap_add = raw
            .cap_add
            .iter()
            .map(|c| self.capability(c))
            .collect::<Result<Vec<_>, _>>()?;
        let cap_drop = raw
            .cap_drop
            .iter()
            .map(|c| self.capability(c))
            .collect::<Result<Vec<_>, _>>()?;
        let depends_on = raw
            .depends_on
            .iter()
            .map(|d| self.name(d, "container name"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ContainerPlan {
            name,
            source,
            command,
            args: raw.args,
            env,
            workdir,
            user,
            restart: raw.restart.unwrap_or(RestartPolicy::Never),
            critical: raw.critical.unwrap_or(false),
            health,
            network,
            volumes,
            writable: raw.writable.unwrap_or(false),
            limits,
            cap_add,
            cap_drop,
            privileges: if raw.privileged.unwrap_or(false) {
                Privileges::Privileged
            } else {
                Privileges::Confined
            },
            depends_on,
            at,
        })
    }

    /// `"NAME:/path"`: a named volume and where the container sees it.
    fn volume(&self, value: &Spanned<String>) -> Result<(String, String), RecipeError> {
        let bad = || {
            self.at(&value.span()).error(format!(
                "volume {:?} is not NAME:/PATH (a volume name, a colon, an absolute path in the container)",
                value.get_ref()
            ))
        };
        let (name, path) = value.get_ref().split_once(':').ok_or_else(bad)?;
        let name = self.name(&Spanned::new(value.span(), name.to_string()), "volume name")?;
        let clean = path.starts_with('/')
            && path != "/"
            && path
                .split('/')
                .skip(1)
                .all(|part| !part.is_empty() && part != "." && part != "..")
            && !path.contains(['\0', ':', ',']);
        if !clean {
            return Err(bad());
        }
        Ok((name, path.to_string()))
    }

    /// A capability name: `NET_ADMIN` or `CAP_NET_ADMIN`, returned as `CAP_NET_ADMIN`.
    fn capability(&self, value: &Spanned<String>) -> Result<String, RecipeError> {
        let upper = value.get_ref().to_ascii_uppercase();
        let name = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        if !CAPABILITIES.contains(&name.as_str()) {
            return self.err(
                &value.span(),
                format!(
                    "{:?} is not a Linux capability (like \"NET_ADMIN\")",
                    value.get_ref()
                ),
            );
        }
        Ok(name)
    }

    fn image_ref(&self, value: &Spanned<String>) -> Result<ImageRef, RecipeError> {
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

/// Whether `text` is `HOST` or `HOST:PORT` as image references spell registries.
fn is_registry_host(text: &str) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (text, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && !host.starts_with(['.', '-']);
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    host_ok && port_ok
}

/// Whether `text` is a container user as OCI image configs write it.
fn is_user_spec(text: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    match text.split_once(':') {
        Some((u, g)) => part(u) && part(g),
        None => part(text),
    }
}

/// Linux capabilities by name (as of 6.1).
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Parses `64M`, `1G`, `512K`, `2T`, `1GiB`, `1048576` into bytes (binary units).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

/// Parses a duration: a whole number followed by `ms`, `s` or `m` (`"500ms"`,
/// `"5s"`, `"2m"`). Anything else is `None`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return None;
    }
    let number: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => number,
        "s" => number.checked_mul(1000)?,
        "m" => number.checked_mul(60_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

/// The port and path of a health check URL, which must be plain `http://` to the
/// device itself (`127.0.0.1` or `localhost`): containers share the host's network.
/// The error completes "health check url \"…\" …".
pub fn parse_local_http_url(url: &str) -> Result<(u16, String), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("must start with http:// (https is not supported)".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if host != "127.0.0.1" && host != "localhost" {
        return Err(format!(
            "must name 127.0.0.1 or localhost, not {host:?} (containers share the device's network)"
        ));
    }
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("has a bad port {p:?}")),
        },
    };
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) || path.contains('#') {
        return Err("has a path with spaces, control characters or a fragment".into());
    }
    Ok((port, path.to_string()))
}

/// Checks that a file is a minisign public key, with the same parser the device
/// agent trusts keys with.
pub fn check_minisign_public_key(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_string())?;
    match berth_bundle::TrustedKeys::parse(text) {
        Ok(_) => Ok(()),
        Err(berth_bundle::BundleError::BadKey { reason, .. }) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in [
            "",
            "5",
            "s",
            "1.5s",
            "5 s",
            "-1s",
            "5h",
            "5S",
            "99999999999999999999m",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn local_http_urls() {
        assert_eq!(
            parse_local_http_url("http://127.0.0.1:8080/health?x=1"),
            Ok((8080, "/health?x=1".to_string()))
        );
        assert_eq!(
            parse_local_http_url("http://localhost"),
            Ok((80, "/".to_string()))
        );
        assert!(parse_local_http_url("https://127.0.0.1/").is_err());
        assert!(parse_local_http_url("http://10.0.2.2/").is_err());
        assert!(parse_local_http_url("http://127.0.0.1:0/").is_err());
        assert!(parse_local_http_url("http://127.0.0.1:x/").is_err());
        assert!(parse_local_http_url("http://127.0.0.1/a b").is_err());
    }

    #[test]
    fn minisign_keys() {
        let key = "untrusted comment: minisign public key 1\nRWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\n";
        assert_eq!(check_minisign_public_key(key.as_bytes()), Ok(()));
        assert!(check_minisign_public_key(b"untrusted comment: x\naGVsbG8=\n").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Some(64 * MIB));
        assert_eq!(parse_size("1G"), Some(1024 * MIB));
        assert_eq!(parse_size("1GiB"), Some(1024 * MIB));
        assert_eq!(parse_size("512K"), Some(512 * 1024));
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("64Q"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999T"), None);
    }

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
}
