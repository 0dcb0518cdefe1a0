//! systemd-boot, the boot loader on every image's ESP.
//!
//! An x86_64 image takes the host's own (`/usr/lib/systemd/boot/efi/`, from
//! Debian's systemd-boot-efi, which the README's setup command installs), as it
//! always has, so its images stay byte for byte what they were. An image for
//! another architecture takes the EFI binary from that architecture's
//! systemd-boot-efi package through apt (fetched into the cache, pinned in the
//! lock file like every other package): `systemd-bootaa64.efi` is the same on
//! every host.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use berth_format::Arch;

use crate::progress::Progress;
use crate::sources::apt::{self, AptError, Fetched};
use crate::sources::cache::{Cache, CacheError};
use crate::sources::deb::{self, DebError};
use crate::sources::lock::Pins;
use crate::tree::normalize;

/// Where Debian's systemd-boot-efi puts the EFI binaries.
pub const EFI_DIR: &str = "usr/lib/systemd/boot/efi";
/// The package that holds them.
pub const PACKAGE: &str = "systemd-boot-efi";

/// Failure to get systemd-boot.
#[derive(Debug, thiserror::Error)]
pub enum BootLoaderError {
    #[error("/{EFI_DIR}/{file} is missing: install Debian's systemd-boot-efi (see the README's setup command)")]
    NotOnHost { file: String },
    #[error("package {PACKAGE} {version} for {arch} holds no /{EFI_DIR}/{file}")]
    NotInPackage {
        version: String,
        arch: Arch,
        file: String,
    },
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// systemd-boot for `arch`: the EFI binary, and the package it came from when it
/// was not the host's.
pub fn systemd_boot(
    cache: &Cache,
    arch: Arch,
    pins: &Pins,
    progress: &Progress,
) -> Result<(PathBuf, Option<Fetched>), BootLoaderError> {
    let file = arch.systemd_boot_name();
    if arch == Arch::X86_64 {
        let path = Path::new("/").join(EFI_DIR).join(&file);
        if !path.is_file() {
            return Err(BootLoaderError::NotOnHost { file });
        }
        return Ok((path, None));
    }
    let package = apt::resolve(cache, arch, &[PACKAGE.to_string()], false)?;
    let package = apt::pin(package, pins)
        .pop()
        .ok_or_else(|| AptError::Unknown {
            name: PACKAGE.to_string(),
            arch,
        })?;
    let fetched = apt::fetch(cache, &package, progress)?;
    let deb_path = fetched.path.clone();
    let wanted = format!("{EFI_DIR}/{file}");
    let dir = cache
        .derived::<BootLoaderError>(&format!("systemd-boot-{}", package.sha256), |dir| {
            extract(&deb_path, &wanted, dir)
        })?;
    let path = dir.join(&file);
    if !path.is_file() {
        return Err(BootLoaderError::NotInPackage {
            version: package.version.clone(),
            arch,
            file,
        });
    }
    Ok((path, Some(fetched)))
}

/// Copies the package's file `wanted` (a normalized path) into `dir`, by its
/// file name.
fn extract(deb_path: &Path, wanted: &str, dir: &Path) -> Result<(), BootLoaderError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootLoaderError::Io { path, source }
    };
    let mut archive = deb::data_tar(deb_path)?;
    for entry in archive.entries().map_err(io_err(deb_path))? {
        let mut entry = entry.map_err(io_err(deb_path))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).to_string();
        if normalize(&raw).as_deref() != Some(wanted) {
            continue;
        }
        let name = Path::new(wanted).file_name().unwrap_or_default();
        let target = dir.join(name);
        let mut file = fs::File::create(&target).map_err(io_err(&target))?;
        io::copy(&mut entry, &mut file).map_err(io_err(&target))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Verbosity;
    use crate::sources::lock::{Lock, LockMode};

    #[test]
    fn the_arm64_boot_loader_comes_from_the_arm64_package() {
        // Through apt's arm64 lists, which the README's setup command adds.
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let pins = Pins::new(Lock::default(), LockMode::Use);
        let progress = Progress::new(Verbosity::Quiet);
        let (path, fetched) = systemd_boot(&cache, Arch::Arm64, &pins, &progress).unwrap();
        assert_eq!(path.file_name().unwrap(), "systemd-bootaa64.efi");
        let fetched = fetched.expect("the arm64 one is a package");
        assert_eq!(fetched.package.architecture, "arm64");
        let bytes = fs::read(&path).unwrap();
        // A PE image for the Arm64 machine (IMAGE_FILE_MACHINE_ARM64, 0xaa64).
        let pe = u32::from_le_bytes(bytes[0x3c..0x40].try_into().unwrap()) as usize;
        assert_eq!(&bytes[pe..pe + 4], b"PE\0\0");
        assert_eq!(u16::from_le_bytes([bytes[pe + 4], bytes[pe + 5]]), 0xaa64);
        // A second call takes it from the cache.
        let (again, _) = systemd_boot(&cache, Arch::Arm64, &pins, &progress).unwrap();
        assert_eq!(again, path);
        // The x86_64 one is the host's.
        let (host, none) = systemd_boot(&cache, Arch::X86_64, &pins, &progress).unwrap();
        assert_eq!(
            host,
            Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
        );
        assert!(none.is_none());
    }
}
