//! The kernel: from a Debian package (extracted once into the cache) or a local
//! image + modules folder, and the modules the initramfs needs, in load order,
//! resolved from `modules.dep`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use berth_format::Arch;

use crate::progress::Progress;
use crate::sources::apt::{self, AptError};
use crate::sources::cache::{Cache, CacheError};
use crate::sources::deb::{self, DebError};
use crate::tree::normalize;

/// Modules without which berth cannot reach its root.
pub const REQUIRED_MODULES: &[&str] = &["squashfs"];
/// Modules a dm-verity root needs on top of those (`reed_solomon`, `dm-mod` and
/// `dm-bufio` come in through `modules.dep`).
pub const VERITY_MODULES: &[&str] = &["dm_verity"];
/// Modules loaded when the kernel has them (drivers for the disks and NICs berth
/// is run on: virtio in VMs; NVMe, SATA through AHCI and USB mass storage on
/// xHCI on real hardware, which Debian's generic kernel has and the cloud
/// kernel mostly lacks; the ACPI power button, ext4 where it is not built in, and FAT with
/// the code pages the init mounts the ESP with, `codepage=437,iocharset=iso8859-1`:
/// the boot assessment renames boot entries there; overlay for containers with a
/// writable root, and QEMU's i6300esb watchdog). They are loaded in the early
/// stage, so the main stage has them after the switch to the root.
pub const OPTIONAL_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "nvme",
    "ahci",
    "xhci_pci",
    "usb_storage",
    "uas",
    "sd_mod",
    "ext4",
    "button",
    "evdev",
    "vfat",
    "nls_cp437",
    "nls_iso8859-1",
    "overlay",
    "i6300esb",
];

/// Version of what an extracted kernel folder in the cache holds: part of its
/// name, so a folder made by an older berth is made anew. 2: `modules.dep`
/// lists the modules of each one's `softdep pre:` too.
pub const EXTRACT_FORMAT: u32 = 2;

/// Failure to get the kernel ready.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("kernel {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("package {package} holds no /boot/vmlinuz-*: is it a kernel image package?")]
    NoImage { package: String },
    #[error("package {package} is not a kernel and depends on no linux-image-* package")]
    NotKernel { package: String },
    #[error(
        "{dir} has no modules.dep: the modules folder must be /lib/modules/<version> of the kernel"
    )]
    NoModulesDep { dir: PathBuf },
    #[error("kernel {version} has no module {name:?} (neither in modules.dep nor built in)")]
    NoModule { version: String, name: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A kernel ready to be put on the ESP and into the initramfs.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The vmlinuz file.
    pub image: PathBuf,
    /// `/lib/modules/<version>`.
    pub modules_dir: PathBuf,
    /// The kernel release (`6.1.0-31-cloud-amd64`).
    pub version: String,
    /// The package it came from, if any.
    pub package: Option<apt::Fetched>,
}

/// Resolves a kernel package name (a metapackage such as `linux-image-cloud-amd64`
/// is followed to the image package it depends on), fetches and extracts it.
pub fn from_package(
    cache: &Cache,
    arch: Arch,
    name: &str,
    pins: &crate::sources::lock::Pins,
    progress: &Progress,
) -> Result<Kernel, KernelError> {
    let mut package = apt::resolve(cache, arch, &[name.to_string()], false)?
        .pop()
        .ok_or_else(|| AptError::Unknown {
            name: name.to_string(),
            arch,
        })?;
    if !is_image_package(&package.name) {
        let target = package
            .depends
            .iter()
            .flatten()
            .find(|d| is_image_package(d))
            .cloned()
            .ok_or_else(|| KernelError::NotKernel {
                package: name.to_string(),
            })?;
        package = apt::resolve(cache, arch, &[target], false)?
            .pop()
            .ok_or_else(|| KernelError::NotKernel {
                package: name.to_string(),
            })?;
    }
    let package = apt::pin(vec![package], pins)
        .pop()
        .ok_or_else(|| AptError::Unknown {
            name: name.to_string(),
            arch,
        })?;
    let fetched = apt::fetch(cache, &package, progress)?;
    let deb_path = fetched.path.clone();
    let key = format!("kernel-{}-{EXTRACT_FORMAT}", package.sha256);
    let dir = cache.derived::<KernelError>(&key, |dir| extract_kernel(&deb_path, dir))?;
    let boot = dir.join("boot");
    // The first by name, not in the folder's (file system dependent) order.
    let image = fs::read_dir(&boot)
        .map_err(io_err(&boot))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .min()
        .ok_or_else(|| KernelError::NoImage {
            package: package.name.clone(),
        })?;
    let version = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    let modules_dir = dir.join("lib/modules").join(&version);
    if !modules_dir.is_dir() {
        return Err(KernelError::NoModulesDep { dir: modules_dir });
    }
    Ok(Kernel {
        image,
        modules_dir,
        version,
        package: Some(fetched),
    })
}

/// A local kernel image and its modules folder.
pub fn from_local(image: &Path, modules_dir: &Path) -> Result<Kernel, KernelError> {
    if !modules_dir.join("modules.builtin").is_file() && !modules_dir.join("modules.dep").is_file()
    {
        return Err(KernelError::NoModulesDep {
            dir: modules_dir.to_path_buf(),
        });
    }
    let version = modules_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    Ok(Kernel {
        image: image.to_path_buf(),
        modules_dir: modules_dir.to_path_buf(),
        version,
        package: None,
    })
}

fn is_image_package(name: &str) -> bool {
    name.strip_prefix("linux-image-")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Extracts `/boot/vmlinuz-*` and `/lib/modules/**` of a kernel package into `dir`.
fn extract_kernel(deb_path: &Path, dir: &Path) -> Result<(), KernelError> {
    let mut archive = deb::data_tar(deb_path)?;
    let entries = archive.entries().map_err(io_err(deb_path))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err(deb_path))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).to_string();
        // normalize() clamps `..`, so the key never leaves `dir`.
        let Some(key) = normalize(&raw) else { continue };
        let key = key.strip_prefix("usr/").unwrap_or(&key).to_string();
        let wanted = (key.starts_with("boot/vmlinuz-")) || key.starts_with("lib/modules/");
        if !wanted {
            continue;
        }
        let target = dir.join(&key);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut file = fs::File::create(&target).map_err(io_err(&target))?;
        io::copy(&mut entry, &mut file).map_err(io_err(&target))?;
    }
    // Debian's packages leave modules.dep to depmod in their postinst: make it here,
    // once, so later builds read it from the cache.
    let modules = dir.join("lib/modules");
    if let Ok(entries) = fs::read_dir(&modules) {
        for release in entries.filter_map(|e| e.ok()) {
            let dep = generate_modules_dep(&release.path())?;
            let path = release.path().join("modules.dep");
            fs::write(&path, dep).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Reads the `depends=` of every module's `.modinfo` section and writes the
/// equivalent of depmod's `modules.dep` (direct dependencies; resolution recurses).
pub fn generate_modules_dep(modules_dir: &Path) -> Result<String, KernelError> {
    let mut paths: BTreeMap<String, String> = BTreeMap::new();
    let mut depends: BTreeMap<String, ModInfo> = BTreeMap::new();
    // Alias (`crypto-crc32c`) → the modules that declare it.
    let mut providers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(modules_dir).sort_by_file_name() {
        let entry = entry.map_err(|e| KernelError::Io {
            path: modules_dir.to_path_buf(),
            source: e.into(),
        })?;
        let rel = entry
            .path()
            .strip_prefix(modules_dir)
            .unwrap_or(entry.path())
            .to_string_lossy()
            .to_string();
        if !entry.file_type().is_file() || !rel.contains(".ko") {
            continue;
        }
        let bytes = read_module(entry.path())?;
        let name = module_name(&rel);
        let info = modinfo(&bytes);
        for alias in &info.aliases {
            providers
                .entry(alias.clone())
                .or_default()
                .push(name.clone());
        }
        depends.insert(name.clone(), info);
        paths.insert(name, rel);
    }
    let mut out = String::new();
    for (name, path) in &paths {
        let info = &depends[name];
        // A `softdep pre:` names a module or an alias (ext4's `crypto-crc32c`:
        // crc32c_generic and crc32c-intel provide it). modprobe loads them first;
        // berth has no modprobe, so they go in front of the hard dependencies.
        let soft = info.soft_pre.iter().flat_map(|wanted| {
            let by_name = paths.contains_key(wanted).then(|| wanted.clone());
            by_name
                .into_iter()
                .chain(providers.get(wanted).cloned().unwrap_or_default())
        });
        let mut deps: Vec<&str> = Vec::new();
        for dep in soft.chain(info.depends.iter().cloned()) {
            if let Some(path) = paths.get(&dep).filter(|_| dep != *name) {
                if !deps.contains(&path.as_str()) {
                    deps.push(path);
                }
            }
        }
        out.push_str(&format!("{path}: {}\n", deps.join(" ")));
    }
    Ok(out)
}

/// A module file's bytes, decompressed when it is `.ko.xz` or `.ko.zst` (berth
/// loads plain modules: the kernel may lack in-kernel decompression).
pub fn read_module(path: &Path) -> Result<Vec<u8>, KernelError> {
    let raw = fs::read(path).map_err(io_err(path))?;
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        let mut out = Vec::new();
        io::Read::read_to_end(&mut xz2::read::XzDecoder::new(&raw[..]), &mut out)
            .map_err(io_err(path))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        zstd::stream::decode_all(&raw[..]).map_err(io_err(path))
    } else {
        Ok(raw)
    }
}

/// What berth reads of a module's `.modinfo` section (names with `_`).
#[derive(Debug, Default, PartialEq, Eq)]
struct ModInfo {
    /// `depends=`: modules whose symbols it uses.
    depends: Vec<String>,
    /// `softdep=pre: …`: modules or aliases to load before it.
    soft_pre: Vec<String>,
    /// `alias=`: other names it is loaded by (only plain names: no wildcards).
    aliases: Vec<String>,
}

/// The `depends=`, `softdep=pre:` and plain `alias=` fields of a module.
fn modinfo(elf_bytes: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    let names = |list: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(list)
            .split([',', ' '])
            .filter(|d| !d.is_empty())
            .map(|d| d.replace('-', "_"))
            .collect()
    };
    let Ok(elf) = goblin::elf::Elf::parse(elf_bytes) else {
        return info;
    };
    for section in &elf.section_headers {
        if elf.shdr_strtab.get_at(section.sh_name) != Some(".modinfo") {
            continue;
        }
        let start = usize::try_from(section.sh_offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(section.sh_size).unwrap_or(0));
        let Some(data) = elf_bytes.get(start..end) else {
            return info;
        };
        for field in data.split(|b| *b == 0) {
            if let Some(list) = field.strip_prefix(b"depends=") {
                info.depends = names(list);
            } else if let Some(soft) = field.strip_prefix(b"softdep=") {
                // `pre: a b post: c`: the words between `pre:` and `post:`.
                let text = String::from_utf8_lossy(soft);
                let mut pre = false;
                for word in text.split_whitespace() {
                    match word {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        w if pre => info.soft_pre.push(w.replace('-', "_")),
                        _ => {}
                    }
                }
            } else if let Some(alias) = field.strip_prefix(b"alias=") {
                if !alias.iter().any(|b| matches!(b, b'*' | b'?' | b'[' | b':')) {
                    info.aliases.extend(names(alias));
                }
            }
        }
        return info;
    }
    info
}

/// The parsed module index of a kernel.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Module name (with `_`) → (path relative to the modules folder, its deps).
    modules: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
}

fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

impl ModuleIndex {
    /// Reads `modules.dep` and `modules.builtin` of a modules folder.
    pub fn load(modules_dir: &Path) -> Result<ModuleIndex, KernelError> {
        let dep_path = modules_dir.join("modules.dep");
        let dep = match fs::read_to_string(&dep_path) {
            Ok(dep) => dep,
            Err(_) => generate_modules_dep(modules_dir)?,
        };
        let builtin = fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
        Ok(ModuleIndex::parse(&dep, &builtin))
    }

    pub fn parse(dep: &str, builtin: &str) -> ModuleIndex {
        let mut index = ModuleIndex::default();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(module_name).collect();
            index
                .modules
                .insert(module_name(path), (path.to_string(), deps));
        }
        index.builtin = builtin.lines().map(module_name).collect();
        index
    }

    /// Whether the kernel has `name` as a module or built in.
    pub fn has(&self, name: &str) -> bool {
        let n = name.replace('-', "_");
        self.modules.contains_key(&n) || self.builtin.contains(&n)
    }

    /// The module files (relative paths) to load for `names`, dependencies first,
    /// each once; built-in modules need no file.
    pub fn resolve(&self, names: &[String], version: &str) -> Result<Vec<String>, KernelError> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            self.visit(&name.replace('-', "_"), version, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        version: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), KernelError> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        match self.modules.get(name) {
            Some((path, deps)) => {
                for dep in deps {
                    self.visit(dep, version, seen, order)?;
                }
                order.push(path.clone());
                Ok(())
            }
            None if self.builtin.contains(name) => Ok(()),
            None => Err(KernelError::NoModule {
                version: version.to_string(),
                name: name.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_ring.ko:\n\
kernel/fs/squashfs/squashfs.ko:\n\
kernel/drivers/md/dm-mod.ko:\n";

    #[test]
    fn dependencies_load_first_and_once() {
        let index = ModuleIndex::parse(DEP, "kernel/fs/ext4/ext4.ko\n");
        let order = index
            .resolve(
                &[
                    "virtio_blk".into(),
                    "virtio".into(),
                    "ext4".into(),
                    "dm_mod".into(),
                ],
                "v",
            )
            .unwrap();
        assert_eq!(
            order,
            vec![
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/md/dm-mod.ko",
            ]
        );
        assert!(index.has("dm-mod"));
        assert!(matches!(
            index.resolve(&["nope".into()], "v"),
            Err(KernelError::NoModule { .. })
        ));
    }

    #[test]
    fn image_package_names() {
        assert!(is_image_package("linux-image-6.1.0-31-cloud-amd64"));
        assert!(!is_image_package("linux-image-cloud-amd64"));
    }
}
