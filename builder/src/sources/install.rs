//! Installing Debian packages as Debian does: mmdebstrap (Debian's own tool)
//! installs them with dpkg into an empty root and runs their maintainer scripts,
//! so base-passwd's users and groups, the system users that `adduser --system`
//! makes, the folders, owners and modes postinsts set, alternatives' links and
//! the dynamic linker's cache are all there.
//!
//! The packages are exactly the ones the builder resolved, pinned in the lock
//! file and kept in the blob cache: they are laid out as a small local
//! repository that is mmdebstrap's only mirror, so apt can pick nothing else and
//! nothing is downloaded. mmdebstrap writes a tar, reproducible with
//! `SOURCE_DATE_EPOCH`; the tar is kept in the cache under a key of the
//! packages' sha256s, the requested names, the architecture and the time, so a
//! warm build runs no maintainer script.
//!
//! The scripts are programs of the image's architecture: for another one than
//! the host's, the kernel needs qemu-user through binfmt_misc, and the build is
//! refused with what to install when it is missing.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_format::Arch;

use crate::progress::Progress;
use crate::sources::apt::Fetched;
use crate::sources::cache::{sha256_bytes, Cache, CacheError};

/// Debian 12's `Essential: yes` packages: what every maintainer script may use
/// without depending on it (Debian policy 3.8), so what an installed root holds
/// besides the packages asked for. The same set as mmdebstrap's `essential`
/// variant.
pub const ESSENTIAL: &[&str] = &[
    "base-files",
    "base-passwd",
    "bash",
    "bsdutils",
    "coreutils",
    "dash",
    "debianutils",
    "diffutils",
    "dpkg",
    "findutils",
    "grep",
    "gzip",
    "hostname",
    "init-system-helpers",
    "libc-bin",
    "login",
    "ncurses-base",
    "ncurses-bin",
    "perl-base",
    "sed",
    "sysvinit-utils",
    "tar",
    "util-linux",
];

/// Changes when the way roots are installed changes, so cached tars of an
/// older way are not taken.
const INSTALL_VERSION: &str = "berth-install-2";
/// The suite name of the local repository (a label: it is the only source).
const SUITE: &str = "berth";

/// Failure to install packages into a root.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A tool could not be started.
    #[error("cannot run {tool}: {source} (installing Debian packages needs mmdebstrap; install the host tools with scripts/install-deps)")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
    /// `dpkg-deb -f` failed on a cached package.
    #[error("dpkg-deb -f {path}: {stderr}")]
    Control { path: PathBuf, stderr: String },
    /// The maintainer scripts are foreign programs and nothing can run them.
    #[error("the packages {packages} have maintainer scripts, which are {arch} programs: this {host} host runs them only through qemu-user (binfmt_misc has no qemu-{cpu}); install qemu-user-static and binfmt-support, or use an OCI image for this container")]
    Emulation {
        packages: String,
        arch: &'static str,
        host: &'static str,
        cpu: &'static str,
    },
    /// mmdebstrap failed; the end of what it said.
    #[error("mmdebstrap failed installing {packages}: {tail}")]
    Mmdebstrap { packages: String, tail: String },
}

/// The root mmdebstrap installs from `debs` (Essential ones among them) with
/// `include` asked for, as a tar in the cache.
pub fn install(
    cache: &Cache,
    arch: Arch,
    debs: &[Fetched],
    include: &[String],
    epoch: u64,
    progress: &Progress,
) -> Result<PathBuf, InstallError> {
    let mut key = format!("{INSTALL_VERSION}\n{}\n{epoch}\n", arch.debian());
    for name in include {
        let _ = writeln!(key, "include {name}");
    }
    let mut hashes: Vec<&str> = debs.iter().map(|d| d.package.sha256.as_str()).collect();
    hashes.sort_unstable();
    hashes.dedup();
    for hash in hashes {
        let _ = writeln!(key, "deb {hash}");
    }
    let key = format!("install-{}", sha256_bytes(key.as_bytes()));
    let dir = cache.derived(&key, |dir| -> Result<(), InstallError> {
        progress.detail(&format!(
            "installing {} with their maintainer scripts",
            include.join(", ")
        ));
        check_emulation(arch, include)?;
        let repo = dir.join("repo");
        write_repository(&repo, arch, debs)?;
        mmdebstrap(&repo, &dir.join("root.tar"), arch, include, epoch)?;
        fs::remove_dir_all(&repo).map_err(|source| InstallError::Io {
            path: repo.clone(),
            source,
        })
    })?;
    Ok(dir.join("root.tar"))
}

/// Refuses an architecture the host can run neither natively nor through
/// qemu-user's binfmt_misc handler.
fn check_emulation(arch: Arch, include: &[String]) -> Result<(), InstallError> {
    let host = std::env::consts::ARCH;
    let cpu = match arch {
        Arch::X86_64 => "x86_64",
        Arch::Arm64 => "aarch64",
    };
    if host == cpu
        || Path::new("/proc/sys/fs/binfmt_misc")
            .join(format!("qemu-{cpu}"))
            .exists()
    {
        return Ok(());
    }
    Err(InstallError::Emulation {
        packages: include.join(", "),
        arch: arch.debian(),
        host,
        cpu,
    })
}

/// A local apt repository of exactly `debs`: `pool/` with the files (hard
/// links to the cache, or copies) and one Packages index, with a Release file
/// apt is told to trust.
fn write_repository(repo: &Path, arch: Arch, debs: &[Fetched]) -> Result<(), InstallError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Io { path, source }
    };
    let pool = repo.join("pool");
    let index_dir = repo.join(format!("dists/{SUITE}/main/binary-{}", arch.debian()));
    fs::create_dir_all(&pool).map_err(io(&pool))?;
    fs::create_dir_all(&index_dir).map_err(io(&index_dir))?;
    let mut index = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for deb in debs {
        if !seen.insert(deb.package.sha256.clone()) {
            continue;
        }
        let name = format!("{}.deb", deb.package.sha256);
        let target = pool.join(&name);
        if fs::hard_link(&deb.path, &target).is_err() {
            fs::copy(&deb.path, &target).map_err(io(&target))?;
        }
        let output = Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb.path)
            .env("LC_ALL", "C")
            .output()
            .map_err(|source| InstallError::Spawn {
                tool: "dpkg-deb",
                source,
            })?;
        if !output.status.success() {
            return Err(InstallError::Control {
                path: deb.path.clone(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        let control = String::from_utf8_lossy(&output.stdout);
        let size = fs::metadata(&deb.path).map_err(io(&deb.path))?.len();
        let _ = write!(
            index,
            "{}\nFilename: pool/{name}\nSize: {size}\nSHA256: {}\n\n",
            control.trim_end(),
            deb.package.sha256
        );
    }
    let packages = index_dir.join("Packages");
    fs::write(&packages, &index).map_err(io(&packages))?;
    let release = format!(
        "Suite: {SUITE}\nCodename: {SUITE}\nArchitectures: {arch}\nComponents: main\nDate: Thu, 01 Jan 1970 00:00:00 UTC\nSHA256:\n {hash} {size} main/binary-{arch}/Packages\n",
        arch = arch.debian(),
        hash = sha256_bytes(index.as_bytes()),
        size = index.len(),
    );
    let release_path = repo.join(format!("dists/{SUITE}/Release"));
    fs::write(&release_path, release).map_err(io(&release_path))
}

/// Runs mmdebstrap: the Essential packages of the repository and `include`,
/// installed with dpkg and their maintainer scripts, written as a tar.
fn mmdebstrap(
    repo: &Path,
    tar: &Path,
    arch: Arch,
    include: &[String],
    epoch: u64,
) -> Result<(), InstallError> {
    let source = format!("deb [trusted=yes] copy://{} {SUITE} main", repo.display());
    // The umask is fixed so files scripts create get the same modes whatever
    // the builder's umask (the reproducibility check builds under two).
    let output = Command::new("sh")
        .args(["-c", "umask 022 && exec mmdebstrap \"$@\"", "sh"])
        .args([
            "--variant=essential",
            "--mode=auto",
            "--format=tar",
            "--quiet",
            // mmdebstrap leaves its mirror in sources.list: here a temporary
            // folder, whose random name would make every install differ.
            "--customize-hook=rm -f \"$1/etc/apt/sources.list\"",
        ])
        .arg(format!("--architectures={}", arch.debian()))
        .arg(format!("--include={}", include.join(",")))
        .arg(SUITE)
        .arg(tar)
        .arg(&source)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| InstallError::Spawn {
            tool: "mmdebstrap",
            source,
        })?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        return Err(InstallError::Mmdebstrap {
            packages: include.join(", "),
            tail,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_scripts_need_qemu_user_or_are_refused_naming_the_packages() {
        let include = ["mosquitto".to_string()];
        let native = match std::env::consts::ARCH {
            "aarch64" => Arch::Arm64,
            _ => Arch::X86_64,
        };
        assert!(check_emulation(native, &include).is_ok());
        let foreign = if native == Arch::X86_64 {
            Arch::Arm64
        } else {
            Arch::X86_64
        };
        let cpu = if foreign == Arch::Arm64 {
            "aarch64"
        } else {
            "x86_64"
        };
        let registered = Path::new("/proc/sys/fs/binfmt_misc")
            .join(format!("qemu-{cpu}"))
            .exists();
        match check_emulation(foreign, &include) {
            Ok(()) => assert!(registered),
            Err(e) => {
                assert!(!registered);
                let message = e.to_string();
                assert!(message.contains("mosquitto"), "{message}");
                assert!(message.contains("qemu-user-static"), "{message}");
            }
        }
    }

    #[test]
    fn the_essential_set_is_sorted_and_holds_what_scripts_use() {
        assert!(ESSENTIAL.is_sorted());
        for name in ["base-passwd", "dash", "dpkg", "coreutils"] {
            assert!(ESSENTIAL.contains(&name), "{name}");
        }
    }
}
