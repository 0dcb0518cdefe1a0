//! `[[container]]`: each container's root filesystem source, process, health
//! check, network, volumes, limits and privileges, and the order they start in.

mod capabilities;
mod health;
mod image_ref;
mod limits;
mod rlimits;

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use berth_format::{HealthCheck, RestartPolicy};
use serde::Deserialize;
use toml::Spanned;

use super::files::{FileCopy, FilesInto, RawFile};
use super::units::RawSize;
use super::{Location, RecipeError, Validator};
use health::RawHealth;

pub use capabilities::CAPABILITIES;
pub use image_ref::{ImageRef, RegistryRef};
pub use limits::Limits;
pub use rlimits::Rlimit;
use rlimits::{RawRlimit, RawSysctl};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContainer {
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
    #[serde(default)]
    files: Vec<Spanned<RawFile>>,
    #[serde(default)]
    rlimits: BTreeMap<Spanned<String>, Spanned<RawRlimit>>,
    #[serde(default)]
    sysctls: BTreeMap<Spanned<String>, Spanned<RawSysctl>>,
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
    /// Where `user` was written, for a name the container's root does not know.
    pub user_at: Option<Location>,
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
    /// Process limits, sorted by name (`RLIMIT_NOFILE` always among them).
    pub rlimits: Vec<Rlimit>,
    /// Namespaced kernel settings, by dotted name.
    pub sysctls: BTreeMap<String, String>,
    /// Capabilities added to, and dropped from, the OCI default set (`CAP_` names).
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileges: Privileges,
    /// Containers started before this one.
    pub depends_on: Vec<String>,
    /// The user's files and folders copied into its root.
    pub files: Vec<FileCopy>,
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

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone)]
pub enum RootfsSource {
    /// Debian packages unpacked into an empty root (with their dependencies).
    Packages(Vec<(String, Location)>),
    /// An OCI image.
    Image { reference: ImageRef, at: Location },
}

/// Logs under /var/log/berth that are not a container's: the init's, the
/// kernel's and the update agent's. A container may not take their names.
const SYSTEM_LOG_NAMES: [&str; 3] = ["init", "kernel", "berth-update"];

impl Validator<'_> {
    /// Every container, in recipe order; refuses two with the same name.
    pub(super) fn containers(
        &self,
        raw: Vec<Spanned<RawContainer>>,
    ) -> Result<Vec<ContainerPlan>, RecipeError> {
        let mut seen = HashSet::new();
        let mut containers = Vec::new();
        for container in raw {
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
        Ok(containers)
    }

    fn container(
        &self,
        raw: RawContainer,
        span: &Range<usize>,
    ) -> Result<ContainerPlan, RecipeError> {
        let name = self.name(&raw.name, "container name")?;
        if SYSTEM_LOG_NAMES.contains(&name.as_str()) {
            return self.err(
                &raw.name.span(),
                format!("container name {name:?} is taken: /var/log/berth/{name}.log is the system's own log"),
            );
        }
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
        let user_at = raw.user.as_ref().map(|u| self.at(&u.span()));
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
        let limits = self.limits(raw.memory.as_ref(), raw.cpus.as_ref(), raw.pids.as_ref())?;
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
        let files = self.files(raw.files, FilesInto::Container)?;
        let rlimits = self.rlimits(&raw.rlimits)?;
        let sysctls = self.sysctls(&raw.sysctls, network)?;
        Ok(ContainerPlan {
            name,
            source,
            command,
            args: raw.args,
            env,
            workdir,
            user,
            user_at,
            restart: raw.restart.unwrap_or(RestartPolicy::Never),
            critical: raw.critical.unwrap_or(false),
            health,
            network,
            volumes,
            writable: raw.writable.unwrap_or(false),
            limits,
            rlimits,
            sysctls,
            cap_add,
            cap_drop,
            privileges: if raw.privileged.unwrap_or(false) {
                Privileges::Privileged
            } else {
                Privileges::Confined
            },
            depends_on,
            files,
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

    /// Orders containers so each starts after its `depends_on` (recipe order
    /// otherwise); refuses unknown names and cycles.
    pub(super) fn start_order(
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
}

/// Whether `text` is a container user as OCI image configs write it.
pub(in crate::recipe) fn is_user_spec(text: &str) -> bool {
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
