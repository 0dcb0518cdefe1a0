//! Assembling the trees: the image's read-only root (init, crun and e2fsck with
//! exactly the shared libraries they need, the containers' bundles, the image configuration)
//! and the initramfs (init + the modules needed to reach the root). Each
//! container's `config.json` comes from [`runtime_spec`].

use std::collections::{BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use berth_format::image_config::ImageInfo;
use berth_format::layout::{
    CONTAINERS_DIR, CRUN_PATH, E2FSCK_PATH, ESP_MOUNT, FSCK_FAT_PATH, IMAGE_CONFIG_PATH,
    INITRAMFS_MODULES_PATH, KEYS_DIR,
};
use berth_format::{ContainerConfig, DebugConfig, ImageConfig, UpdateConfig};

use crate::progress::Progress;
use crate::recipe::{
    BuildPlan, ConsoleShell, ContainerNetwork, RecipeError, RootVerity, RootfsSource,
};
use crate::sources::apt::{self, AptError, Fetched};
use crate::sources::deb::{self, DebError};
use crate::sources::install::{self, InstallError};
use crate::sources::kernel::{
    Kernel, KernelError, ModuleIndex, OPTIONAL_MODULES, REQUIRED_MODULES, VERITY_MODULES,
};
use crate::sources::lock::{LockedImage, Pins};
use crate::sources::oci::{self, ImageDefaults, OciError, Sources};
use crate::tree::files::{self, FilesError};
use crate::tree::runtime_spec::{self, RuntimeSpecError};
use crate::tree::{Node, NodeKind, Tree, TreeError};

/// Library folders searched for `DT_NEEDED` entries, in ld.so's order on Debian
/// (a tree holds one architecture's packages, so only its triple's folders exist).
const LIB_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib64",
    "lib",
    "usr/lib",
];
/// The Debian package the debug console shell comes from (one static binary).
const CONSOLE_SHELL_PACKAGE: &str = "busybox-static";
/// An image's files may add up to this many times the root partition's size.
const UNPACK_LIMIT_FACTOR: u64 = 8;

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
    #[error(transparent)]
    RuntimeSpec(#[from] RuntimeSpecError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Install(#[from] InstallError),
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
    sources: &Sources<'_>,
    staging: &Path,
    names: &[String],
    with_depends: bool,
    inputs: &mut Inputs,
    pins: &Pins,
    progress: &Progress,
) -> Result<Tree, RootfsError> {
    let mut tree = Tree::new(staging);
    let (cache, arch) = (sources.cache, sources.arch);
    let packages = apt::pin(apt::resolve(cache, arch, names, with_depends)?, pins);
    for fetched in apt::fetch_all(cache, &packages, progress)? {
        let mut archive = deb::data_tar(&fetched.path)?;
        tree.unpack_tar(&mut archive, false)?;
        inputs.packages.push(fetched);
    }
    Ok(tree)
}

/// A package container's root. When no package of the closure has a `preinst`
/// or `postinst`, unpacking is installing and the root is just their files
/// (busybox-static alone stays one file). Otherwise the packages, with Debian's
/// Essential set their scripts may rely on, are installed by dpkg through
/// mmdebstrap ([`install`]), scripts and all, as on Debian.
fn package_container(
    sources: &Sources<'_>,
    staging: &Path,
    names: &[String],
    inputs: &mut Inputs,
    pins: &Pins,
    plan: &BuildPlan,
    progress: &Progress,
) -> Result<Tree, RootfsError> {
    let (cache, arch) = (sources.cache, sources.arch);
    let packages = apt::pin(apt::resolve(cache, arch, names, true)?, pins);
    let fetched = apt::fetch_all(cache, &packages, progress)?;
    let mut scripts = false;
    for one in &fetched {
        scripts |= deb::has_install_scripts(&one.path)?;
    }
    if !scripts {
        let mut tree = Tree::new(staging);
        for one in fetched {
            tree.unpack_tar(&mut deb::data_tar(&one.path)?, false)?;
            inputs.packages.push(one);
        }
        return Ok(tree);
    }
    let mut wanted: Vec<String> = names.to_vec();
    wanted.extend(install::ESSENTIAL.iter().map(|s| s.to_string()));
    let packages = apt::pin(apt::resolve(cache, arch, &wanted, true)?, pins);
    let all = apt::fetch_all(cache, &packages, progress)?;
    let tar = install::install(
        cache,
        arch,
        &all,
        names,
        crate::build::epoch(plan),
        progress,
    )?;
    let file = fs::File::open(&tar).map_err(|source| RootfsError::Io {
        path: tar.clone(),
        source,
    })?;
    let mut tree = Tree::new(staging);
    tree.unpack_tar(&mut tar::Archive::new(std::io::BufReader::new(file)), false)?;
    inputs.packages.extend(all);
    Ok(tree)
}

/// The system's programs from Debian packages, each added with exactly the
/// shared libraries it needs: the OCI runtime, `e2fsck`, with which the init
/// checks and repairs the data partition before mounting it, and `fsck.fat`,
/// with which it repairs the ESP after a cut.
const SYSTEM_PROGRAMS: &[(&str, &str)] = &[
    ("crun", CRUN_PATH),
    ("e2fsprogs", E2FSCK_PATH),
    ("dosfstools", FSCK_FAT_PATH),
];

/// Adds each of [`SYSTEM_PROGRAMS`] and exactly the shared libraries they need
/// (the `DT_NEEDED` closure, with the dynamic loader) to `root`.
fn add_system_programs(
    root: &mut Tree,
    sources: &Sources<'_>,
    staging: &Path,
    inputs: &mut Inputs,
    pins: &Pins,
    progress: &Progress,
) -> Result<(), RootfsError> {
    let packages: Vec<String> = SYSTEM_PROGRAMS
        .iter()
        .map(|(package, _)| package.to_string())
        .collect();
    let scratch = packages_tree(sources, staging, &packages, true, inputs, pins, progress)?;
    let mut queue = VecDeque::new();
    for (_, path) in SYSTEM_PROGRAMS {
        let path = path.trim_start_matches('/');
        root.copy_from(&scratch, path)?;
        queue.push_back(path.to_string());
    }
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
    sources: &Sources<'_>,
    staging: &Path,
    inputs: &mut Inputs,
    pins: &Pins,
    progress: &Progress,
) -> Result<(), RootfsError> {
    let scratch = packages_tree(
        sources,
        staging,
        &[CONSOLE_SHELL_PACKAGE.to_string()],
        false,
        inputs,
        pins,
        progress,
    )?;
    root.add_dir("bin", 0o755);
    root.copy_from(&scratch, "bin/busybox")?;
    root.add_symlink("bin/sh", "busybox");
    Ok(())
}

/// Builds the image's root tree.
pub fn root_tree(
    plan: &BuildPlan,
    sources: &Sources<'_>,
    pins: &Pins,
    staging: &Path,
    init: &Path,
    update_agent: &Path,
    progress: &Progress,
) -> Result<(Tree, Inputs), RootfsError> {
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
    progress.detail("crun, e2fsck and their libraries");
    add_system_programs(&mut root, sources, staging, &mut inputs, pins, progress)?;

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
            repository: plan.update.repository.clone(),
            channel: plan.update.channel.as_ref().map(|c| c.as_str().to_string()),
            interval_s: plan.update.interval.map(|i| i.as_secs()),
            tries: plan.update.tries,
            reboot: plan.update.reboot.map(|r| r.to_string()),
            report: plan.update.report.clone(),
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
    if let Some(ca) = &plan.update.ca {
        root.add_bytes(
            berth_format::layout::UPDATE_CA_PATH.trim_start_matches('/'),
            ca,
            0o644,
        )?;
    }
    if plan.console_shell == ConsoleShell::Busybox {
        progress.detail("busybox for the console shell");
        add_console_shell(&mut root, sources, staging, &mut inputs, pins, progress)?;
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
        progress.detail(&format!("container {}", container.name));
        let (mut tree, defaults) = match &container.source {
            RootfsSource::Packages(list) => {
                let names: Vec<String> = list.iter().map(|(n, _)| n.clone()).collect();
                let tree =
                    package_container(sources, staging, &names, &mut inputs, pins, plan, progress)
                        .map_err(|e| {
                            match e {
                                // Point at the recipe line of the unknown package.
                                RootfsError::Apt(AptError::Unknown { name, arch }) => {
                                    match list.iter().find(|(n, _)| *n == name) {
                                        Some((_, at)) => RootfsError::Recipe(at.error(format!(
                                            "{}",
                                            AptError::Unknown {
                                                name: name.clone(),
                                                arch
                                            }
                                        ))),
                                        None => RootfsError::Apt(AptError::Unknown { name, arch }),
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
                let limits = oci::UnpackLimits {
                    bytes: limit,
                    entries: oci::MAX_ENTRIES,
                };
                let unpacked = oci::unpack(&resolved, staging, limits)?;
                inputs.images.push(LockedImage {
                    container: container.name.clone(),
                    reference: written,
                    digest: resolved.digest.clone(),
                    manifest: resolved.manifest.clone(),
                });
                (unpacked.tree, unpacked.defaults)
            }
        };
        files::copy_into(&mut tree, &container.files)?;
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
        let json = runtime_spec::config_json(plan, container, &defaults, &tree)?;
        let bundle = format!(
            "{}/{}",
            CONTAINERS_DIR.trim_start_matches('/'),
            container.name
        );
        root.add_dir(&bundle, 0o755);
        root.add_bytes(&format!("{bundle}/config.json"), &json, 0o644)?;
        root.graft(&format!("{bundle}/rootfs"), tree);
    }
    add_image_files(&mut root, plan)?;
    Ok((root, inputs))
}

/// The recipe's `[image] files`, last: they may add to the root but not replace
/// anything berth put there (the recipe already keeps them out of berth's
/// folders and the mount points).
fn add_image_files(root: &mut Tree, plan: &BuildPlan) -> Result<(), RootfsError> {
    for file in &plan.files {
        let taken = root
            .resolve(&file.target, false)?
            .and_then(|key| root.get(&key))
            .is_some_and(|node| node.kind != NodeKind::Dir || !file.source.is_dir());
        if taken {
            return Err(RootfsError::Recipe(file.at.error(format!(
                "/{} is already in the image's root (berth's own): image files may add, not replace",
                file.target
            ))));
        }
    }
    files::copy_into(root, &plan.files)?;
    Ok(())
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
