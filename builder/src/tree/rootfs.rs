//! Assembling the trees: the image's read-only root (init, crun with exactly the
//! shared libraries it needs, the containers' bundles, the image configuration)
//! and the initramfs (init + the modules needed to reach the root).

use std::collections::{BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use berth_format::image_config::ImageInfo;
use berth_format::layout::{
    CGROUP_LEAF, CGROUP_PARENT, CONTAINERS_DIR, CRUN_PATH, ESP_MOUNT, IMAGE_CONFIG_PATH,
    INITRAMFS_MODULES_PATH, KEYS_DIR, RESOLV_CONF, VOLUMES_DIR,
};
use berth_format::{ContainerConfig, DebugConfig, ImageConfig, UpdateConfig};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::recipe::{
    BuildPlan, ConsoleShell, ContainerNetwork, ContainerPlan, Limits, Privileges, RecipeError,
    RootVerity, RootfsSource, CAPABILITIES,
};
use crate::sources::apt::{self, AptError, Fetched};
use crate::sources::cache::Cache;
use crate::sources::deb::{self, DebError};
use crate::sources::kernel::{
    Kernel, KernelError, ModuleIndex, OPTIONAL_MODULES, REQUIRED_MODULES, VERITY_MODULES,
};
use crate::sources::lock::{LockedImage, Pins};
use crate::sources::oci::{self, ImageDefaults, OciError, Sources};
use crate::tree::{Node, NodeKind, Tree, TreeError};

/// Library folders searched for `DT_NEEDED` entries, in ld.so's order on Debian.
const LIB_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "lib",
    "usr/lib",
];
/// The Debian package the debug console shell comes from (one static binary).
const CONSOLE_SHELL_PACKAGE: &str = "busybox-static";
/// An image's files may add up to this many times the root partition's size.
const UNPACK_LIMIT_FACTOR: u64 = 8;
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Failure while assembling a tree.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{binary} needs {library}, which no package provides")]
    MissingLibrary { binary: String, library: String },
    #[error("{path} is not a valid ELF file: {reason}")]
    Elf { path: String, reason: String },
    #[error("writing the OCI runtime config of {container}: {reason}")]
    Spec { container: String, reason: String },
}

/// The inputs a tree was made from, for the build report.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    pub packages: Vec<Fetched>,
    /// Each container image, pinned.
    pub images: Vec<LockedImage>,
}

/// Unpacks packages (with their dependencies) into a new tree.
fn packages_tree(
    cache: &Cache,
    staging: &Path,
    names: &[String],
    with_depends: bool,
    inputs: &mut Inputs,
    pins: &Pins,
) -> Result<Tree, RootfsError> {
    let mut tree = Tree::new(staging);
    for package in apt::pin(apt::resolve(cache, names, with_depends)?, pins) {
        let fetched = apt::fetch(cache, &package)?;
        let mut archive = deb::data_tar(&fetched.path)?;
        tree.unpack_tar(&mut archive, false)?;
        inputs.packages.push(fetched);
    }
    Ok(tree)
}

/// Adds `crun` and exactly the shared libraries it needs (the `DT_NEEDED`
/// closure, with the dynamic loader) to `root`.
fn add_crun(
    root: &mut Tree,
    cache: &Cache,
    staging: &Path,
    inputs: &mut Inputs,
    pins: &Pins,
) -> Result<(), RootfsError> {
    let scratch = packages_tree(cache, staging, &["crun".to_string()], true, inputs, pins)?;
    let crun = CRUN_PATH.trim_start_matches('/');
    root.copy_from(&scratch, crun)?;
    let mut queue = VecDeque::from([crun.to_string()]);
    let mut seen = BTreeSet::new();
    while let Some(key) = queue.pop_front() {
        let resolved = scratch.resolve(&key, true)?.unwrap_or_default();
        if !seen.insert(resolved.clone()) {
            continue;
        }
        let Some(Node {
            kind: NodeKind::File(content),
            ..
        }) = scratch.get(&resolved)
        else {
            continue;
        };
        let bytes = fs::read(content).map_err(|source| RootfsError::Io {
            path: content.clone(),
            source,
        })?;
        let elf = goblin::elf::Elf::parse(&bytes).map_err(|e| RootfsError::Elf {
            path: key.clone(),
            reason: e.to_string(),
        })?;
        if let Some(interp) = elf.interpreter {
            let interp = interp.trim_start_matches('/').to_string();
            root.copy_from(&scratch, &interp)?;
            queue.push_back(interp);
        }
        for library in elf.libraries {
            let found = LIB_DIRS.iter().find_map(|dir| {
                let key = format!("{dir}/{library}");
                scratch
                    .resolve(&key, true)
                    .ok()
                    .flatten()
                    .filter(|r| scratch.get(r).is_some())
                    .map(|_| key)
            });
            let Some(found) = found else {
                return Err(RootfsError::MissingLibrary {
                    binary: key.clone(),
                    library: library.to_string(),
                });
            };
            root.copy_from(&scratch, &found)?;
            queue.push_back(found);
        }
    }
    Ok(())
}

/// Adds Debian's busybox-static as `/bin/busybox`, with `/bin/sh` linking to it,
/// for the init's debug shell on the console.
fn add_console_shell(
    root: &mut Tree,
    cache: &Cache,
    staging: &Path,
    inputs: &mut Inputs,
    pins: &Pins,
) -> Result<(), RootfsError> {
    let scratch = packages_tree(
        cache,
        staging,
        &[CONSOLE_SHELL_PACKAGE.to_string()],
        false,
        inputs,
        pins,
    )?;
    root.add_dir("bin", 0o755);
    root.copy_from(&scratch, "bin/busybox")?;
    root.add_symlink("bin/sh", "busybox");
    Ok(())
}

/// The OCI runtime configuration of a container.
pub fn runtime_spec(
    plan: &BuildPlan,
    container: &ContainerPlan,
    defaults: &ImageDefaults,
    rootfs: &Tree,
) -> Result<Spec, RootfsError> {
    let fail = |reason: String| RootfsError::Spec {
        container: container.name.clone(),
        reason,
    };
    let args: Vec<String> = match &container.command {
        Some(command) => command
            .iter()
            .chain(container.args.iter().flatten())
            .cloned()
            .collect(),
        None => defaults
            .entrypoint
            .iter()
            .chain(container.args.as_ref().unwrap_or(&defaults.cmd))
            .cloned()
            .collect(),
    };
    if args.is_empty() {
        return Err(container
            .at
            .error(format!(
                "container {:?}: the image has no entrypoint or command; set `command`",
                container.name
            ))
            .into());
    }
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    };
    set(DEFAULT_PATH.to_string());
    defaults.env.iter().cloned().for_each(&mut set);
    container
        .env
        .iter()
        .for_each(|(k, v)| set(format!("{k}={v}")));
    let (uid, gid) = match (&container.user, &defaults.user) {
        (Some(user), _) => resolve_user(user, rootfs).ok_or_else(|| {
            fail(format!(
                "user {user:?} of the recipe is neither numeric nor in the image's /etc/passwd"
            ))
        })?,
        (None, Some(user)) => resolve_user(user, rootfs).ok_or_else(|| {
            fail(format!(
                "user {user:?} of the image is neither numeric nor in its /etc/passwd"
            ))
        })?,
        (None, None) => (0, 0),
    };
    let cwd = container
        .workdir
        .clone()
        .or_else(|| defaults.workdir.clone())
        .unwrap_or_else(|| "/".to_string());

    let mut spec = Spec::default();
    // No UTS namespace: containers see the device's host name, which the init
    // sets at boot (from the recipe, or from the ESP's provisioning file).
    let _ = &plan.hostname;
    spec.set_hostname(None);
    if !defaults.exposed_ports.is_empty() {
        // The image-spec's name for them in a runtime config: informational,
        // containers share the device's network.
        spec.set_annotations(Some(
            [(
                "org.opencontainers.image.exposedPorts".to_string(),
                defaults.exposed_ports.join(","),
            )]
            .into_iter()
            .collect(),
        ));
    }
    let mut root = oci_spec::runtime::Root::default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(true));
    spec.set_root(Some(root));
    let process = spec
        .process_mut()
        .as_mut()
        .ok_or_else(|| fail("no process".into()))?;
    process.set_terminal(Some(false));
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(cwd));
    process.set_no_new_privileges(Some(true));
    let mut user = oci_spec::runtime::User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    process.set_user(user);
    // The root is read-only: give the container a private, writable /tmp (as
    // `docker run --read-only --tmpfs /tmp` would).
    let mut tmp = oci_spec::runtime::Mount::default();
    tmp.set_destination(PathBuf::from("/tmp"));
    tmp.set_typ(Some("tmpfs".into()));
    tmp.set_source(Some(PathBuf::from("tmpfs")));
    tmp.set_options(Some(
        ["nosuid", "nodev", "mode=1777", "size=64m"]
            .map(String::from)
            .to_vec(),
    ));
    let bind = |source: &str, destination: &str, options: &[&str]| {
        let mut mount = oci_spec::runtime::Mount::default();
        mount.set_destination(PathBuf::from(destination));
        mount.set_typ(Some("bind".into()));
        mount.set_source(Some(PathBuf::from(source)));
        mount.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
        mount
    };
    if let Some(mounts) = spec.mounts_mut() {
        mounts.push(tmp);
        // The host's DNS configuration (written by the init: static servers or the
        // DHCP lease's, rewritten in place so the bind mount follows it).
        if container.network == ContainerNetwork::Host {
            mounts.push(bind(
                RESOLV_CONF,
                "/etc/resolv.conf",
                &["bind", "ro", "nosuid", "nodev", "noexec"],
            ));
        }
        for (volume, path) in &container.volumes {
            mounts.push(bind(
                &format!("{VOLUMES_DIR}/{volume}"),
                path,
                &["rbind", "rw", "nosuid", "nodev"],
            ));
        }
    }
    if container.writable {
        // The init mounts an overlay on the bundle's rootfs before the start.
        if let Some(root) = spec.root_mut() {
            root.set_readonly(Some(false));
        }
    }
    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| fail("no linux section".into()))?;
    if let Some(namespaces) = linux.namespaces_mut() {
        namespaces.retain(|n| {
            n.typ() != LinuxNamespaceType::Uts
                && (n.typ() != LinuxNamespaceType::Network
                    || container.network == ContainerNetwork::None)
        });
    }
    linux.set_cgroups_path(Some(PathBuf::from(format!(
        "{CGROUP_PARENT}/{}/{CGROUP_LEAF}",
        container.name
    ))));
    if let Some(resources) = resources(&container.limits).map_err(|e| fail(e.to_string()))? {
        linux.set_resources(Some(resources));
    }
    if container.privileges == Privileges::Privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    }
    confine(spec, container).map_err(|e| fail(e.to_string()))
}

/// The cgroup v2 limits as OCI resources (crun writes memory.max, cpu.max,
/// pids.max); `None` when the recipe sets none.
fn resources(
    limits: &Limits,
) -> Result<Option<oci_spec::runtime::LinuxResources>, oci_spec::OciSpecError> {
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };
    if *limits == Limits::default() {
        return Ok(None);
    }
    let mut builder = LinuxResourcesBuilder::default();
    if let Some(bytes) = limits.memory {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        // No swap on berth devices: memory + swap = memory.
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()?,
        );
    }
    if let Some(millicpus) = limits.millicpus {
        let quota = i64::try_from(millicpus * 100).unwrap_or(i64::MAX);
        builder = builder.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(100_000u64)
                .build()?,
        );
    }
    if let Some(pids) = limits.pids {
        builder = builder.pids(LinuxPidsBuilder::default().limit(pids).build()?);
    }
    Ok(Some(builder.build()?))
}

/// System calls a confined container may not make (EPERM), after Docker's
/// default profile, reduced to a deny list: kernel modules, kexec, reboot,
/// swap, accounting, keyrings, BPF, perf, userfaultfd, handles by inode and
/// long-obsolete calls. Each group is lifted when the recipe adds the
/// capability it belongs to.
const DENIED_SYSCALLS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "acct",
            "add_key",
            "bpf",
            "create_module",
            "get_kernel_syms",
            "keyctl",
            "lookup_dcookie",
            "nfsservctl",
            "perf_event_open",
            "query_module",
            "request_key",
            "_sysctl",
            "sysfs",
            "uselib",
            "userfaultfd",
            "ustat",
            "vhangup",
        ],
    ),
    (
        "CAP_SYS_ADMIN",
        &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "name_to_handle_at",
            "quotactl",
            "swapon",
            "swapoff",
            "fsopen",
            "fsmount",
            "fsconfig",
            "move_mount",
            "open_tree",
            "fspick",
            "mount_setattr",
        ],
    ),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_MODULE",
        &["init_module", "finit_module", "delete_module"],
    ),
    ("CAP_SYS_BOOT", &["reboot", "kexec_load", "kexec_file_load"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_adjtime"],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
];

/// Capabilities (the OCI default set, `cap_add`, minus `cap_drop`; every one when
/// privileged), no new privileges and the seccomp filter unless privileged.
fn confine(spec: Spec, container: &ContainerPlan) -> Result<Spec, serde_json::Error> {
    let mut value = serde_json::to_value(&spec)?;
    let privileged = container.privileges == Privileges::Privileged;
    let mut caps: BTreeSet<String> = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        .map(String::from)
        .into_iter()
        .collect();
    if privileged {
        caps.extend(CAPABILITIES.map(String::from));
    }
    caps.extend(container.cap_add.iter().cloned());
    for drop in &container.cap_drop {
        caps.remove(drop);
    }
    let list = serde_json::Value::from(caps.iter().cloned().collect::<Vec<_>>());
    if let Some(process) = value.get_mut("process").and_then(|p| p.as_object_mut()) {
        let sets = [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ];
        let capabilities: serde_json::Map<String, serde_json::Value> = sets
            .iter()
            .map(|set| (set.to_string(), list.clone()))
            .collect();
        process.insert("capabilities".into(), capabilities.into());
        process.insert("noNewPrivileges".into(), (!privileged).into());
    }
    if !privileged {
        let names: Vec<&str> = DENIED_SYSCALLS
            .iter()
            .filter(|(cap, _)| cap.is_empty() || !caps.contains(*cap))
            .flat_map(|(_, names)| names.iter().copied())
            .collect();
        let seccomp = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{ "names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }],
        });
        if let Some(linux) = value.get_mut("linux").and_then(|l| l.as_object_mut()) {
            linux.insert("seccomp".into(), seccomp);
        }
    }
    serde_json::from_value(value)
}

/// The runtime configuration's bytes. oci-spec keeps capabilities in `HashSet`s,
/// which serialize in a different order in every process: they are sorted here so
/// the same recipe always gives the same `config.json` (and the same image).
pub fn spec_json(spec: &Spec) -> serde_json::Result<Vec<u8>> {
    let mut value = serde_json::to_value(spec)?;
    if let Some(sets) = value
        .pointer_mut("/process/capabilities")
        .and_then(serde_json::Value::as_object_mut)
    {
        for set in sets.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    serde_json::to_vec_pretty(&value)
}

fn resolve_user(user: &str, rootfs: &Tree) -> Option<(u32, u32)> {
    let (name, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let key = rootfs.resolve(file, true).ok()??;
        let Some(Node {
            kind: NodeKind::File(path),
            ..
        }) = rootfs.get(&key)
        else {
            return None;
        };
        let text = fs::read_to_string(path).ok()?;
        text.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&name) && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    let (uid, mut gid) = match name.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup("etc/passwd", name)?,
    };
    if let Some(group) = group {
        gid = match group.parse::<u32>() {
            Ok(g) => g,
            Err(_) => lookup("etc/group", group)?.0,
        };
    }
    Some((uid, gid))
}

/// Builds the image's root tree.
pub fn root_tree(
    plan: &BuildPlan,
    sources: &Sources<'_>,
    pins: &Pins,
    staging: &Path,
    init: &Path,
    update_agent: &Path,
    progress: &dyn Fn(&str),
) -> Result<(Tree, Inputs), RootfsError> {
    let cache = sources.cache;
    let mut inputs = Inputs::default();
    let mut root = Tree::new(staging);
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var",
        "etc/berth",
        "usr/bin",
        "usr/sbin",
        "sbin",
        "mnt",
    ] {
        root.add_dir(dir, 0o755);
    }
    // The init mounts the ESP here (the root is read-only at run time).
    root.add_dir(ESP_MOUNT.trim_start_matches('/'), 0o755);
    root.add_dir("tmp", 0o1777);
    root.add_host_file("sbin/init", init, 0o755);
    root.add_host_file(
        berth_format::layout::UPDATE_AGENT_PATH.trim_start_matches('/'),
        update_agent,
        0o755,
    );
    progress("crun and its libraries");
    add_crun(&mut root, cache, staging, &mut inputs, pins)?;

    let config = ImageConfig {
        image: ImageInfo {
            name: plan.name.clone(),
            version: plan.version.to_string(),
            compatible: plan.compatible.clone(),
            hostname: plan.hostname.clone(),
            epoch: crate::build::epoch(plan),
        },
        network: plan.network.clone(),
        update: UpdateConfig {
            health_timeout_ms: u64::try_from(plan.update.health_timeout.as_millis())
                .unwrap_or(u64::MAX),
        },
        debug: DebugConfig {
            console_shell: plan.console_shell == ConsoleShell::Busybox,
        },
        logs: plan.logs.clone(),
        containers: plan
            .containers
            .iter()
            .map(|c| ContainerConfig {
                name: c.name.clone(),
                restart: c.restart,
                critical: c.critical,
                health: c.health.clone(),
                volumes: c.volumes.iter().map(|(volume, _)| volume.clone()).collect(),
                writable: c.writable,
            })
            .collect(),
    };
    root.add_bytes(IMAGE_CONFIG_PATH, config.render().as_bytes(), 0o644)?;
    let keys_dir = KEYS_DIR.trim_start_matches('/');
    for key in &plan.update.keys {
        root.add_dir(keys_dir, 0o755);
        root.add_bytes(&format!("{keys_dir}/{}.pub", key.stem), &key.content, 0o644)?;
    }
    if plan.console_shell == ConsoleShell::Busybox {
        progress("busybox for the console shell");
        add_console_shell(&mut root, cache, staging, &mut inputs, pins)?;
    }
    let os_release = format!(
        "NAME=\"berth\"\nID=berth\nPRETTY_NAME=\"berth {name} {version}\"\nIMAGE_ID={name}\nIMAGE_VERSION={version}\nBERTH_VERSION={berth}\n",
        name = plan.name,
        version = plan.version,
        berth = env!("CARGO_PKG_VERSION"),
    );
    root.add_bytes("usr/lib/os-release", os_release.as_bytes(), 0o644)?;
    root.add_symlink("etc/os-release", "../usr/lib/os-release");

    for container in &plan.containers {
        progress(&format!("container {}", container.name));
        let (mut tree, defaults) = match &container.source {
            RootfsSource::Packages(list) => {
                let names: Vec<String> = list.iter().map(|(n, _)| n.clone()).collect();
                let tree = packages_tree(cache, staging, &names, true, &mut inputs, pins).map_err(|e| {
                    match e {
                        // Point at the recipe line of the unknown package.
                        RootfsError::Apt(AptError::Unknown { name }) => {
                            match list.iter().find(|(n, _)| *n == name) {
                                Some((_, at)) => RootfsError::Recipe(at.error(format!(
                                    "unknown Debian package {name:?}: apt has no candidate for it (check the name, or run `apt-get update`)"
                                ))),
                                None => RootfsError::Apt(AptError::Unknown { name }),
                            }
                        }
                        e => e,
                    }
                })?;
                (tree, ImageDefaults::default())
            }
            RootfsSource::Image { reference, .. } => {
                let written = reference.to_string();
                let pin = pins.image(&container.name, &written);
                let resolved = oci::resolve(reference, pin, &container.name, sources)?;
                // The squashfs must fit the root partition; zstd rarely does
                // better than 1:8 on real images, so more is a mistake or a bomb.
                let limit = plan.disk.root.saturating_mul(UNPACK_LIMIT_FACTOR);
                let unpacked = oci::unpack(&resolved, staging, limit)?;
                inputs.images.push(LockedImage {
                    container: container.name.clone(),
                    reference: written,
                    digest: resolved.digest.clone(),
                    manifest: resolved.manifest.clone(),
                });
                (unpacked.tree, unpacked.defaults)
            }
        };
        // Mount points the runtime needs on a read-only root.
        let volume_dirs = container
            .volumes
            .iter()
            .map(|(_, path)| path.trim_start_matches('/').to_string());
        for dir in ["proc", "dev", "sys", "tmp"]
            .map(String::from)
            .into_iter()
            .chain(volume_dirs)
        {
            if tree
                .resolve(&dir, true)?
                .is_none_or(|k| tree.get(&k).is_none())
            {
                tree.add_dir(&dir, 0o755);
            }
        }
        if container.network == ContainerNetwork::Host
            && tree
                .resolve("etc/resolv.conf", true)?
                .is_none_or(|k| tree.get(&k).is_none())
        {
            tree.add_bytes("etc/resolv.conf", b"", 0o644)?;
        }
        let spec = runtime_spec(plan, container, &defaults, &tree)?;
        let json = spec_json(&spec).map_err(|e| RootfsError::Spec {
            container: container.name.clone(),
            reason: e.to_string(),
        })?;
        let bundle = format!(
            "{}/{}",
            CONTAINERS_DIR.trim_start_matches('/'),
            container.name
        );
        root.add_dir(&bundle, 0o755);
        root.add_bytes(&format!("{bundle}/config.json"), &json, 0o644)?;
        root.graft(&format!("{bundle}/rootfs"), tree);
    }
    Ok((root, inputs))
}

/// Builds the initramfs tree: berth-init as `/init`, the modules to reach the root
/// (decompressed; with dm-verity's when the root has a hash tree), and the list of
/// modules to load, in order.
pub fn initramfs_tree(
    plan: &BuildPlan,
    kernel: &Kernel,
    staging: &Path,
    init: &Path,
) -> Result<Tree, RootfsError> {
    let index = ModuleIndex::load(&kernel.modules_dir)?;
    let mut names: Vec<String> = REQUIRED_MODULES.iter().map(|s| s.to_string()).collect();
    if plan.verity == RootVerity::HashTree {
        names.extend(VERITY_MODULES.iter().map(|s| s.to_string()));
    }
    names.extend(
        OPTIONAL_MODULES
            .iter()
            .filter(|m| index.has(m))
            .map(|s| s.to_string()),
    );
    names.extend(plan.kernel.modules.iter().cloned());
    let files = index.resolve(&names, &kernel.version)?;

    let mut tree = Tree::new(staging);
    for dir in ["dev", "proc", "sys", "sysroot", "run", "etc/berth"] {
        tree.add_dir(dir, 0o755);
    }
    // The kernel opens /dev/console before devtmpfs is mounted.
    tree.insert(
        "dev/console",
        Node {
            kind: NodeKind::CharDevice { major: 5, minor: 1 },
            mode: 0o600,
            uid: 0,
            gid: 0,
        },
    );
    tree.insert(
        "dev/null",
        Node {
            kind: NodeKind::CharDevice { major: 1, minor: 3 },
            mode: 0o666,
            uid: 0,
            gid: 0,
        },
    );
    tree.add_host_file("init", init, 0o755);
    let mut list = String::new();
    for file in &files {
        let source = kernel.modules_dir.join(file);
        let bytes = crate::sources::kernel::read_module(&source)?;
        let plain = file
            .strip_suffix(".xz")
            .or_else(|| file.strip_suffix(".zst"))
            .unwrap_or(file);
        let target = format!("lib/modules/{}/{plain}", kernel.version);
        tree.add_bytes(&target, &bytes, 0o644)?;
        list.push('/');
        list.push_str(&target);
        list.push('\n');
    }
    tree.add_bytes(INITRAMFS_MODULES_PATH, list.as_bytes(), 0o644)?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_bytes_do_not_depend_on_hash_order() {
        // Every Spec gets its capability sets from a fresh, randomly keyed
        // HashSet: the bytes must still be the same each time.
        let first = spec_json(&Spec::default()).unwrap();
        for _ in 0..16 {
            assert_eq!(spec_json(&Spec::default()).unwrap(), first);
        }
        let value: serde_json::Value = serde_json::from_slice(&first).unwrap();
        let bounding: Vec<&str> = value["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(bounding.len() > 1, "{bounding:?}");
        assert!(bounding.is_sorted(), "{bounding:?}");
    }
}
