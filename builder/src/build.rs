//! The build pipeline: recipe → sources → trees → initramfs → squashfs → disk.

use std::fs;
use std::path::{Path, PathBuf};

use berth_format::layout::{self, BootEntry, Slot};
use berth_format::Arch;

use crate::disk::bmap::{BlockMap, BmapError};
use crate::disk::{self, DiskError, DiskIds, DiskInput};
use crate::filesystem::initramfs::{self, InitramfsError};
use crate::filesystem::squashfs::{self, SquashfsError};
use crate::filesystem::verity::{self, HashTree, VerityError};
use crate::progress::Progress;
use crate::recipe::{self, BuildPlan, KernelSource, RecipeError, RootVerity};
use crate::report::*;
use crate::sources::boot_loader::{self, BootLoaderError};
use crate::sources::cache::{sha256_file, Cache, CacheError};
use crate::sources::kernel::{self, Kernel, KernelError};
use crate::sources::lock::{Lock, LockError, LockMode, LockedPackage, Pins};
use crate::sources::oci::Sources;
use crate::sources::registry::{human_bytes, Registries, RegistryError};
use crate::tree::rootfs::{self, Inputs, RootfsError};
use crate::tree::Tree;

/// Failure of a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(transparent)]
    Squashfs(#[from] SquashfsError),
    #[error(transparent)]
    Verity(#[from] VerityError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Bmap(#[from] BmapError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    BootLoader(#[from] BootLoaderError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("berth lock --update: no container or locked package is called {name:?} (containers: {containers}; see the lock file for packages)")]
    UnknownName { name: String, containers: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{name} for {arch} not found (looked in {looked}): build it with `{build}`, or pass {flag} PATH")]
    NoBinary {
        name: &'static str,
        arch: Arch,
        looked: String,
        build: String,
        flag: &'static str,
    },
    #[error("{path} is a binary for another CPU than {arch}: the {arch} image needs {name} built with `{build}`")]
    WrongArch {
        path: PathBuf,
        name: &'static str,
        arch: Arch,
        build: String,
    },
    #[error("qemu-img convert to qcow2 failed (install qemu-utils): {0}")]
    Qcow2(String),
    #[error("{path} is not a static binary: {name} runs without any shared library in the image; build it with `{build}`")]
    NotStatic {
        path: PathBuf,
        name: &'static str,
        build: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub recipe: PathBuf,
    pub out_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// berth-init; found next to the `berth` binary when `None`.
    pub init: Option<PathBuf>,
    /// berth-update, the device agent; found like berth-init when `None`.
    pub update_agent: Option<PathBuf>,
    /// How the recipe's lock file is used.
    pub lock_mode: LockMode,
    /// Make every built part anew, taking nothing built from the cache (downloads
    /// still come from it): `--check-reproducible` sets it, so both of its builds
    /// really compress their own initramfs.
    pub fresh: bool,
}

/// A static binary of berth's that goes into every image.
#[derive(Debug, Clone, Copy)]
pub struct ImageBinary {
    pub name: &'static str,
    /// Environment variable that names it for x86_64 images; arm64 images take
    /// `<env>_ARM64` (a build of each architecture can run in one environment).
    pub env: &'static str,
    /// The `berth build` flag that names it.
    pub flag: &'static str,
}

impl ImageBinary {
    /// How to build it for `arch`.
    pub fn build(self, arch: Arch) -> String {
        format!(
            "cargo build --release -p berth-init -p berth-agent --target {}",
            arch.rust_target()
        )
    }

    /// The environment variable that names it for `arch`.
    pub fn env(self, arch: Arch) -> String {
        match arch {
            Arch::X86_64 => self.env.to_string(),
            other => format!("{}_{}", self.env, other.recipe_name().to_ascii_uppercase()),
        }
    }
}

/// PID 1.
pub const INIT: ImageBinary = ImageBinary {
    name: "berth-init",
    env: "BERTH_INIT",
    flag: "--init",
};

/// The device agent.
pub const UPDATE_AGENT: ImageBinary = ImageBinary {
    name: "berth-update",
    env: "BERTH_UPDATE_AGENT",
    flag: "--update-agent",
};

/// What a build produced.
#[derive(Debug)]
pub struct Built {
    pub image: PathBuf,
    /// The image's block map (`NAME-VERSION.bmap`, bmaptool's format).
    pub bmap: PathBuf,
    pub report: PathBuf,
    pub report_data: BuildReport,
    /// What went over the network to registries.
    pub fetched: Fetched,
}

/// Requests made to registries and bytes received in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    pub requests: u64,
    pub bytes: u64,
}

/// What `berth lock` did.
#[derive(Debug)]
pub struct Locked {
    pub path: PathBuf,
    /// Whether the file was written (it differed or did not exist).
    pub written: bool,
    /// The lines that changed (empty when none).
    pub changes: String,
    pub lock: Lock,
    pub fetched: Fetched,
}

/// Finds one of berth's image binaries for `arch`: the path its environment
/// variable names (taken as given), else the first *static* one *for `arch`* of:
/// next to the running executable, then the musl target folders of the cargo
/// target folder it was built in. A dynamic one on the way is passed over,
/// because `cargo build --release --workspace` puts a host build of berth-init
/// next to `berth`, which could never run in an image; so is one for another CPU.
pub fn find_binary(binary: ImageBinary, arch: Arch) -> Result<PathBuf, BuildError> {
    if let Some(p) = std::env::var_os(binary.env(arch)) {
        return image_binary(Some(Path::new(&p)), binary, arch);
    }
    let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    first_static(&candidates(dir, binary.name, arch), binary, arch)
}

/// Where a binary is looked for when `berth` runs from `dir`: `dir` itself, then
/// the musl release folder one and two levels up (`target/release/berth` and
/// `target/<triple>/release/berth` both find `target/x86_64-unknown-linux-musl/release`).
fn candidates(dir: &Path, name: &str, arch: Arch) -> Vec<PathBuf> {
    let mut found = vec![dir.join(name)];
    for up in [dir.parent(), dir.parent().and_then(Path::parent)]
        .into_iter()
        .flatten()
    {
        found.push(up.join(arch.rust_target()).join("release").join(name));
    }
    found
}

/// The first of `candidates` that exists, is static and is for `arch`.
fn first_static(
    candidates: &[PathBuf],
    binary: ImageBinary,
    arch: Arch,
) -> Result<PathBuf, BuildError> {
    let mut unfit = None;
    for path in candidates.iter().filter(|p| p.is_file()) {
        match image_binary(Some(path), binary, arch) {
            Ok(path) => return Ok(path),
            Err(e @ (BuildError::NotStatic { .. } | BuildError::WrongArch { .. })) => {
                unfit.get_or_insert(e);
            }
            Err(other) => return Err(other),
        }
    }
    Err(match unfit {
        Some(e) => e,
        None => BuildError::NoBinary {
            name: binary.name,
            arch,
            build: binary.build(arch),
            flag: binary.flag,
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        },
    })
}

/// The given path or the found one, checked to be a static binary for `arch`.
fn image_binary(
    given: Option<&Path>,
    binary: ImageBinary,
    arch: Arch,
) -> Result<PathBuf, BuildError> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => return find_binary(binary, arch),
    };
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let not_static = || BuildError::NotStatic {
        path: path.clone(),
        name: binary.name,
        build: binary.build(arch),
    };
    let elf = goblin::elf::Elf::parse(&bytes).map_err(|_| not_static())?;
    if elf.header.e_machine != arch.elf_machine() {
        return Err(BuildError::WrongArch {
            path: path.clone(),
            name: binary.name,
            arch,
            build: binary.build(arch),
        });
    }
    if elf.interpreter.is_some() || !elf.libraries.is_empty() {
        return Err(not_static());
    }
    Ok(path)
}

fn artifact(path: &Path) -> Result<Artifact, BuildError> {
    Ok(Artifact {
        size: fs::metadata(path).map_err(io_err(path))?.len(),
        sha256: sha256_file(path).map_err(io_err(path))?,
    })
}

/// The fixed timestamp of a build: `SOURCE_DATE_EPOCH`, else the recipe's
/// `[image] epoch`, else 0.
pub fn epoch(plan: &BuildPlan) -> u64 {
    source_date_epoch().or(plan.epoch).unwrap_or(0)
}

/// `SOURCE_DATE_EPOCH` (unix seconds), when set to a number.
pub fn source_date_epoch() -> Option<u64> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

/// Everything up to the root tree: the recipe read, sources fetched and
/// unpacked, the lock file checked and written.
struct Prepared {
    plan: BuildPlan,
    init: PathBuf,
    agent: PathBuf,
    epoch: u64,
    mtime: u32,
    work: tempfile::TempDir,
    staging: PathBuf,
    kernel: Kernel,
    /// systemd-boot's EFI binary for the image's architecture.
    boot_loader: PathBuf,
    root_tree: Tree,
    inputs: Inputs,
    lock_path: PathBuf,
    lock: Lock,
    lock_written: bool,
    lock_changes: String,
    fetched: Fetched,
    cache: Cache,
    _cache: crate::sources::cache::CacheLock,
}

fn prepare(
    options: &BuildOptions,
    progress: &mut Progress,
    work_parent: &Path,
) -> Result<Prepared, BuildError> {
    progress.step("recipe");
    let plan = recipe::load(&options.recipe)?;
    let init = image_binary(options.init.as_deref(), INIT, plan.arch)?;
    let agent = image_binary(options.update_agent.as_deref(), UPDATE_AGENT, plan.arch)?;
    let epoch = epoch(&plan);
    let mtime = u32::try_from(epoch).unwrap_or(u32::MAX);
    let lock_path = plan.lock_path();
    let old_lock = Lock::read(&lock_path)?;
    if let LockMode::Update(names) = &options.lock_mode {
        for name in names {
            let known =
                plan.containers.iter().any(|c| &c.name == name) || old_lock.package(name).is_some();
            if !known {
                return Err(BuildError::UnknownName {
                    name: name.clone(),
                    containers: plan
                        .containers
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    let pins = Pins::new(old_lock.clone(), options.lock_mode.clone());
    let cache = Cache::open(&options.cache_dir)?;
    // Held until the build ends: `berth cache prune` waits for no build.
    let cache_lock = cache.lock_shared()?;
    let registries = Registries::new(&plan.registries, progress.verbosity())?;
    let sources = Sources {
        cache: &cache,
        registries: &registries,
        arch: plan.arch,
    };
    fs::create_dir_all(work_parent).map_err(io_err(work_parent))?;
    let work = tempfile::Builder::new()
        .prefix(".berth-build-")
        .tempdir_in(work_parent)
        .map_err(io_err(work_parent))?;
    let staging = work.path().join("staging");
    fs::create_dir(&staging).map_err(io_err(&staging))?;

    progress.step("kernel");
    let kernel = match &plan.kernel.source {
        KernelSource::Package { name, at } => {
            kernel::from_package(&cache, plan.arch, name, &pins, progress).map_err(|e| match e {
                KernelError::Apt(e @ crate::sources::apt::AptError::Unknown { .. }) => {
                    BuildError::Recipe(at.error(format!("kernel: {e}")))
                }
                e => e.into(),
            })?
        }
        KernelSource::Local { image, modules_dir } => kernel::from_local(image, modules_dir)?,
    };

    progress.step("root filesystem tree");
    let (root_tree, mut inputs) =
        { rootfs::root_tree(&plan, &sources, &pins, &staging, &init, &agent, progress)? };
    let (boot_loader, loader_package) =
        boot_loader::systemd_boot(&cache, plan.arch, &pins, progress)?;
    // Pinned and reported like the root's packages.
    inputs.packages.extend(loader_package);

    // The lock of what this build used.
    let mut lock = Lock {
        version: crate::sources::lock::LOCK_VERSION,
        images: inputs.images.clone(),
        packages: inputs
            .packages
            .iter()
            .chain(kernel.package.iter())
            .map(|f| LockedPackage {
                name: f.package.name.clone(),
                version: f.package.version.clone(),
                sha256: f.package.sha256.clone(),
            })
            .collect(),
    };
    lock.images.sort();
    lock.images.dedup();
    lock.packages.sort();
    lock.packages.dedup();
    let lock_changes = old_lock.changes(&lock);
    let recipe_name = plan
        .recipe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock_written = match options.lock_mode {
        LockMode::Locked if !lock_changes.is_empty() => {
            return Err(LockError::Changed {
                path: lock_path,
                changes: lock_changes,
            }
            .into())
        }
        _ => lock.write(&lock_path, &recipe_name)?,
    };
    let fetched = Fetched {
        requests: registries
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        bytes: registries
            .stats
            .bytes
            .load(std::sync::atomic::Ordering::Relaxed),
    };
    Ok(Prepared {
        plan,
        init,
        agent,
        epoch,
        mtime,
        work,
        staging,
        kernel,
        boot_loader,
        root_tree,
        inputs,
        lock_path,
        lock,
        lock_written,
        lock_changes,
        fetched,
        cache,
        _cache: cache_lock,
    })
}

/// Resolves and fetches every input of the recipe and writes its lock file,
/// without building an image (`berth lock`).
pub fn lock(options: &BuildOptions, progress: &mut Progress) -> Result<Locked, BuildError> {
    let scratch = std::env::temp_dir();
    let prepared = prepare(options, progress, &scratch)?;
    progress.finish();
    Ok(Locked {
        path: prepared.lock_path,
        written: prepared.lock_written,
        changes: prepared.lock_changes,
        lock: prepared.lock,
        fetched: prepared.fetched,
    })
}

/// Runs the whole pipeline.
pub fn build(options: &BuildOptions, progress: &mut Progress) -> Result<Built, BuildError> {
    let Prepared {
        plan,
        init,
        agent,
        epoch,
        mtime,
        work,
        staging,
        kernel,
        boot_loader,
        root_tree,
        inputs,
        lock_path,
        lock_written,
        fetched,
        cache,
        _cache,
        ..
    } = prepare(options, progress, &options.out_dir)?;
    if lock_written {
        progress.say(&format!("wrote {}", lock_path.display()));
    }

    progress.step("initramfs");
    let initramfs_tree = rootfs::initramfs_tree(&plan, &kernel, &staging, &init)?;
    let initramfs_path = work.path().join("initramfs.img");
    initramfs::write(
        &initramfs_tree,
        &initramfs_path,
        mtime,
        (!options.fresh).then_some(&cache),
    )?;

    progress.step("squashfs root");
    // The slot's content: the squashfs, then (with verity) its hash tree.
    let root_path = work.path().join("root.img");
    let filesystem_size = squashfs::write(&root_tree, &root_path, mtime, progress)?;
    let tree: Option<HashTree> = match plan.verity {
        RootVerity::HashTree => {
            progress.step("verity hash tree");
            let salt = verity::derive_salt(&plan.name, &plan.version.to_string());
            Some(verity::append(&root_path, &salt, plan.disk.root)?)
        }
        RootVerity::Off => None,
    };

    progress.step("disk image");
    let stem = format!("{}-{}", plan.name, plan.version);
    let image = options.out_dir.join(format!("{stem}.img"));
    let tmp_image = work.path().join(format!("{stem}.img"));
    let ids = DiskIds::derive(&plan.name, &plan.version.to_string());
    let entry = BootEntry {
        title: format!("berth {} {}", plan.name, plan.version),
        version: plan.version.to_string(),
        slot: Slot::A,
        root_partuuid: ids.root_a.to_string(),
        data_partuuid: ids.data.to_string(),
        verity: tree.as_ref().map(HashTree::params),
        extra_cmdline: plan.kernel.cmdline.clone(),
        arch: plan.arch,
    };
    disk::write(
        &tmp_image,
        &DiskInput {
            sizes: plan.disk,
            ids: ids.clone(),
            kernel: &kernel.image,
            initramfs: &initramfs_path,
            root: &root_path,
            entry,
            boot_loader: &boot_loader,
            epoch,
        },
        &progress.bytes(fs::metadata(&root_path).ok().map(|m| m.len())),
    )?;

    progress.step("block map");
    // From the image's holes, as written: the ranges a flasher writes.
    let bmap = options.out_dir.join(format!("{stem}.bmap"));
    let tmp_bmap = work.path().join(format!("{stem}.bmap"));
    BlockMap::of_file(&tmp_image)?.write(&tmp_bmap)?;

    progress.step("report");
    let disk_artifact = artifact(&tmp_image)?;
    let offsets = disk::partition_offsets(&plan.disk);
    let labels = [
        (layout::ESP_LABEL, ids.esp),
        (Slot::A.partition_label(), ids.root_a),
        (Slot::B.partition_label(), ids.root_b),
        (layout::DATA_LABEL, ids.data),
    ];
    let mut packages: Vec<PackageInput> = inputs
        .packages
        .iter()
        .map(|f| PackageInput {
            name: f.package.name.clone(),
            version: f.package.version.clone(),
            sha256: f.package.sha256.clone(),
        })
        .collect();
    packages.sort();
    packages.dedup();
    let report = BuildReport {
        image: ImageId {
            name: plan.name.clone(),
            version: plan.version.to_string(),
            compatible: plan.compatible.clone(),
        },
        berth_version: env!("CARGO_PKG_VERSION").to_string(),
        epoch,
        outputs: Outputs {
            disk: DiskArtifact {
                path: image.display().to_string(),
                size: disk_artifact.size,
                sha256: disk_artifact.sha256,
            },
            kernel: artifact(&kernel.image)?,
            initramfs: artifact(&initramfs_path)?,
            root: {
                let Artifact { size, sha256 } = artifact(&root_path)?;
                RootArtifact {
                    size,
                    sha256,
                    verity: tree.as_ref().map(|t| {
                        let p = t.params();
                        VerityReport {
                            root_hash: p.root_hash,
                            salt: p.salt,
                            data_blocks: p.data_blocks,
                            hash_offset: p.hash_offset,
                            filesystem_size,
                        }
                    }),
                }
            },
        },
        partitions: labels
            .iter()
            .zip(offsets)
            .map(|((label, id), (offset, size))| PartitionReport {
                label: label.to_string(),
                partuuid: id.to_string(),
                offset,
                size,
            })
            .collect(),
        inputs: InputsReport {
            kernel: KernelInput {
                release: kernel.version.clone(),
                package: kernel.package.as_ref().map(|f| PackageInput {
                    name: f.package.name.clone(),
                    version: f.package.version.clone(),
                    sha256: f.package.sha256.clone(),
                }),
            },
            init: artifact(&init)?,
            update_agent: artifact(&agent)?,
            systemd_boot: artifact(&boot_loader)?,
            packages,
            images: inputs
                .images
                .iter()
                .map(|i| ImageInput {
                    container: i.container.clone(),
                    reference: i.reference.clone(),
                    digest: i.digest.clone(),
                    manifest: i.manifest.clone(),
                })
                .collect(),
        },
    };
    let report_path = options.out_dir.join(format!("{stem}.json"));
    let json = serde_json::to_string_pretty(&report).map_err(|e| BuildError::Io {
        path: report_path.clone(),
        source: std::io::Error::other(e),
    })?;
    let tmp_report = work.path().join("report.json");
    fs::write(&tmp_report, json + "\n").map_err(io_err(&tmp_report))?;
    // The image, its block map and its report appear together, each by one
    // rename (the map first: a flasher that finds the image finds its map).
    fs::rename(&tmp_bmap, &bmap).map_err(io_err(&bmap))?;
    fs::rename(&tmp_image, &image).map_err(io_err(&image))?;
    fs::rename(&tmp_report, &report_path).map_err(io_err(&report_path))?;
    progress.finish();
    progress.say(&format!(
        "registries: {} requests, {} fetched",
        fetched.requests,
        human_bytes(fetched.bytes)
    ));
    Ok(Built {
        image,
        bmap,
        report: report_path,
        report_data: report,
        fetched,
    })
}

/// Writes a qcow2 copy of a built raw image next to it (`NAME-VERSION.qcow2`), for
/// tools and clouds that want qcow2; `berth run` boots either.
pub fn convert_qcow2(image: &Path) -> Result<PathBuf, BuildError> {
    let out = image.with_extension("qcow2");
    let tmp = image.with_extension("qcow2.tmp");
    let output = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(image)
        .arg(&tmp)
        .output()
        .map_err(|e| BuildError::Qcow2(e.to_string()))?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(BuildError::Qcow2(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    fs::rename(&tmp, &out).map_err(io_err(&out))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies a host program to `to`, creating its folder.
    fn put(from: &str, to: &Path) {
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(from, to).unwrap();
    }

    // busybox-static (scripts/install-deps) is a static ELF, /bin/true a dynamic one.
    const STATIC_ELF: &str = "/bin/busybox";
    const DYNAMIC_ELF: &str = "/bin/true";
    const X86: Arch = Arch::X86_64;

    #[test]
    fn an_arm64_image_passes_over_static_binaries_for_x86_64() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        put(STATIC_ELF, &release.join("berth-init"));
        let arm = Arch::Arm64;
        let err = first_static(&candidates(&release, INIT.name, arm), INIT, arm).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, BuildError::WrongArch { .. }), "{text}");
        assert!(
            text.contains("--target aarch64-unknown-linux-musl"),
            "{text}"
        );
        assert_eq!(INIT.env(arm), "BERTH_INIT_ARM64");
        assert_eq!(INIT.env(X86), "BERTH_INIT");
    }

    #[test]
    fn a_host_build_next_to_berth_is_passed_over_for_the_musl_one() {
        // What `cargo build --release --workspace` leaves: a dynamic berth-init
        // next to berth, the static one in the musl target folder.
        let target = tempfile::tempdir().unwrap();
        let release = target.path().join("release");
        let musl = target
            .path()
            .join("x86_64-unknown-linux-musl/release/berth-init");
        put(DYNAMIC_ELF, &release.join("berth-init"));
        put(STATIC_ELF, &musl);
        let found = first_static(&candidates(&release, INIT.name, X86), INIT, X86).unwrap();
        assert_eq!(found, musl);
    }

    #[test]
    fn a_static_binary_next_to_berth_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        put(STATIC_ELF, &release.join("berth-init"));
        put(
            STATIC_ELF,
            &dir.path()
                .join("x86_64-unknown-linux-musl/release/berth-init"),
        );
        let found = first_static(&candidates(&release, INIT.name, X86), INIT, X86).unwrap();
        assert_eq!(found, release.join("berth-init"));
    }

    #[test]
    fn only_dynamic_builds_are_refused_with_the_command_that_makes_a_static_one() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        put(DYNAMIC_ELF, &release.join("berth-update"));
        let err = first_static(
            &candidates(&release, UPDATE_AGENT.name, X86),
            UPDATE_AGENT,
            X86,
        )
        .unwrap_err();
        assert!(matches!(err, BuildError::NotStatic { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("release/berth-update is not a static binary"),
            "{text}"
        );
        assert!(
            text.contains("--target x86_64-unknown-linux-musl"),
            "{text}"
        );
    }

    #[test]
    fn nothing_found_names_every_place_looked() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        let err = first_static(&candidates(&release, INIT.name, X86), INIT, X86).unwrap_err();
        assert!(matches!(err, BuildError::NoBinary { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("x86_64-unknown-linux-musl/release/berth-init"),
            "{err}"
        );
    }
}
