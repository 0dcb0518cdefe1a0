//! Debian packages through the host's own apt configuration: `apt-cache show` tells
//! the candidate version and its sha256, `apt-get download` fetches the file, and the
//! blob cache keeps it by sha256 so a second build downloads nothing.
//!
//! Every name is looked up for the image's architecture (`NAME:arm64`), so an arm64
//! image is built on an x86_64 host from apt's multi-arch lists
//! (`dpkg --add-architecture arm64`, which the README's setup command does); a name
//! with no package of that architecture falls back to an `Architecture: all` one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_format::Arch;

use crate::progress::Progress;
use crate::sources::cache::{Cache, CacheError};

/// Failure to resolve or fetch a package.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    /// apt could not be run at all.
    #[error("cannot run {tool}: {source} (berth needs apt; install the host tools with the README's setup command)")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
    /// apt knows no such package (for the image's architecture).
    #[error("unknown Debian package {name:?}: apt has no {arch} candidate for it (check the name, or run `apt-get update`{hint})", arch = arch.debian(), hint = foreign_hint(*arch))]
    Unknown { name: String, arch: Arch },
    /// A dependency could not be satisfied by any alternative.
    #[error("package {package:?} depends on {dependency:?}, which apt cannot provide")]
    Dependency { package: String, dependency: String },
    /// `apt-get download` failed.
    #[error("apt-get download {name}={version} failed: {stderr} (if the lock file pins a version the archive no longer has, run `berth lock --update RECIPE {name}`)")]
    Download {
        name: String,
        version: String,
        stderr: String,
    },
    /// apt's metadata lacks a field berth needs.
    #[error("apt-cache show {name}: no {field} field")]
    Field { name: String, field: &'static str },
    /// The cache refused the file.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The downloaded file could not be found.
    #[error("apt-get download {name}: no .deb file appeared in {dir}")]
    Missing { name: String, dir: PathBuf },
}

/// A package version apt would install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
    pub size: u64,
    /// `Pre-Depends` and `Depends`, each a list of alternatives (package names).
    pub depends: Vec<Vec<String>>,
}

/// A package fetched into the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub package: Package,
    /// The `.deb` in the blob cache.
    pub path: PathBuf,
}

/// For an image of a foreign architecture, how to get apt's lists of it.
fn foreign_hint(arch: Arch) -> String {
    if arch == Arch::X86_64 {
        return String::new();
    }
    format!(
        "; an {0} image needs apt's {0} lists: `dpkg --add-architecture {0} && apt-get update`, which the README's setup command runs",
        arch.debian()
    )
}

/// Looks up the candidate versions of `names` for `arch`: each name's package of
/// that architecture, else its `Architecture: all` package. Names apt does not
/// know for `arch` are absent from the answer. A name may carry an architecture
/// qualifier (`apt-cache showpkg` prints `exim4:arm64`): it is dropped.
pub fn show(
    cache: &Cache,
    arch: Arch,
    names: &[String],
) -> Result<BTreeMap<String, Package>, AptError> {
    let names: Vec<String> = names
        .iter()
        .map(|n| n.split(':').next().unwrap_or(n).to_string())
        .collect();
    let qualified: Vec<String> = names
        .iter()
        .map(|n| format!("{n}:{}", arch.debian()))
        .collect();
    let mut out = show_stanzas(cache, &qualified, |a| a == arch.debian())?;
    // `NAME:ARCH` finds no `Architecture: all` package; the bare name finds it
    // (and the host's own architecture's package, which is not taken).
    let rest: Vec<String> = names
        .iter()
        .filter(|n| !out.contains_key(*n))
        .cloned()
        .collect();
    if !rest.is_empty() {
        out.extend(show_stanzas(cache, &rest, |a| a == "all")?);
    }
    Ok(out)
}

/// `apt-cache show` of `names`, keeping the stanzas whose architecture `keep`
/// accepts.
fn show_stanzas(
    cache: &Cache,
    names: &[String],
    keep: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, Package>, AptError> {
    let mut out = BTreeMap::new();
    if names.is_empty() {
        return Ok(out);
    }
    // apt-cache exits 100 when any name is unknown but still prints the others.
    let text = apt_cache(cache, &["show", "--no-all-versions", "-q=2"], names)?;
    for stanza in text.split("\n\n") {
        let fields = parse_stanza(stanza);
        let Some(name) = fields.get("Package") else {
            continue;
        };
        let get = |field: &'static str| {
            fields.get(field).cloned().ok_or(AptError::Field {
                name: name.clone(),
                field,
            })
        };
        let mut depends = Vec::new();
        for key in ["Pre-Depends", "Depends"] {
            if let Some(list) = fields.get(key) {
                depends.extend(parse_depends(list));
            }
        }
        let package = Package {
            name: name.clone(),
            version: get("Version")?,
            architecture: get("Architecture")?,
            sha256: get("SHA256")?,
            size: get("Size")?.parse().unwrap_or(0),
            depends,
        };
        if keep(&package.architecture) {
            out.entry(name.clone()).or_insert(package);
        }
    }
    Ok(out)
}

/// apt's binary package cache, kept in berth's cache folder.
///
/// apt-cache rebuilds its package cache from the package lists unless it can keep
/// one: a second or so each call, and a build makes several. Container images
/// (Debian's own among them, so most CI runners) switch the system-wide cache off,
/// so berth names its own; apt checks it against the lists and rebuilds it after an
/// `apt-get update`, and writes it by atomic rename, so builds can share it.
fn pkgcache_options(cache: &Cache) -> [String; 4] {
    let dir = cache.root().join("apt");
    [
        "-o".to_string(),
        format!(
            "Dir::Cache::pkgcache={}",
            dir.join("pkgcache.bin").display()
        ),
        "-o".to_string(),
        format!(
            "Dir::Cache::srcpkgcache={}",
            dir.join("srcpkgcache.bin").display()
        ),
    ]
}

/// Runs `apt-cache` in the C locale and returns its standard output (its exit
/// status is not an error: it fails for unknown names but still answers the rest).
fn apt_cache(cache: &Cache, args: &[&str], names: &[String]) -> Result<String, AptError> {
    let output = Command::new("apt-cache")
        .args(pkgcache_options(cache))
        .args(args)
        .args(names)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| AptError::Spawn {
            tool: "apt-cache",
            source,
        })?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn parse_stanza(stanza: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in stanza.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(key) = &last {
                if let Some(v) = fields.get_mut(key) {
                    let v: &mut String = v;
                    v.push('\n');
                    v.push_str(line.trim());
                }
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            fields.insert(key.to_string(), value.trim().to_string());
            last = Some(key.to_string());
        }
    }
    fields
}

/// Parses a `Depends` value into alternatives of bare package names
/// (`libc6 (>= 2.34), libfoo | libbar` → `[[libc6], [libfoo, libbar]]`).
pub fn parse_depends(value: &str) -> Vec<Vec<String>> {
    value
        .split(',')
        .map(|group| {
            group
                .split('|')
                .filter_map(|alt| {
                    let name = alt.trim().split([' ', '(', '[']).next()?;
                    // `libfoo:any` names the same package.
                    let name = name.split(':').next()?;
                    (!name.is_empty()).then(|| name.to_string())
                })
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

/// Resolves `roots` and, if `with_depends`, everything they depend on, recursively,
/// for `arch`. Returns packages sorted by name.
pub fn resolve(
    cache: &Cache,
    arch: Arch,
    roots: &[String],
    with_depends: bool,
) -> Result<Vec<Package>, AptError> {
    let mut found: BTreeMap<String, Package> = BTreeMap::new();
    let known = show(cache, arch, roots)?;
    for root in roots {
        if !known.contains_key(root) {
            return Err(AptError::Unknown {
                name: root.clone(),
                arch,
            });
        }
    }
    // Breadth first, one level at a time: the dependencies of a whole level
    // are looked up with one apt-cache call (an installed root's hundred-odd
    // packages took hundreds of calls, one per package, most of a build).
    let mut level: Vec<Package> = known.into_values().collect();
    let mut asked: BTreeSet<String> = roots.iter().cloned().collect();
    let mut answers: BTreeMap<String, Package> = BTreeMap::new();
    while !level.is_empty() {
        let mut added = Vec::new();
        for package in level.drain(..) {
            if found.contains_key(&package.name) {
                continue;
            }
            found.insert(package.name.clone(), package.clone());
            added.push(package);
        }
        if !with_depends {
            break;
        }
        let wanted: Vec<String> = added
            .iter()
            .flat_map(|p| p.depends.iter().flatten())
            .filter(|n| !asked.contains(*n) && !found.contains_key(*n))
            .cloned()
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect();
        answers.extend(show(cache, arch, &wanted)?);
        asked.extend(wanted);
        let mut next: Vec<Package> = Vec::new();
        for package in &added {
            for group in &package.depends {
                let taken = |n: &String| found.contains_key(n) || next.iter().any(|q| &q.name == n);
                if group.iter().any(taken) {
                    continue;
                }
                // The first alternative apt can provide; else a virtual
                // package's provider, and only fail when nothing was found.
                match group.iter().find_map(|n| answers.get(n)) {
                    Some(p) => next.push(p.clone()),
                    None => match show_provider(cache, arch, group)? {
                        Some(p) if found.contains_key(&p.name) => {}
                        Some(p) => next.push(p),
                        None => {
                            return Err(AptError::Dependency {
                                package: package.name.clone(),
                                dependency: group.join(" | "),
                            })
                        }
                    },
                }
            }
        }
        level = next;
    }
    Ok(found.into_values().collect())
}

/// For a virtual package, the first real package apt lists as providing it.
fn show_provider(cache: &Cache, arch: Arch, group: &[String]) -> Result<Option<Package>, AptError> {
    for name in group {
        let text = apt_cache(cache, &["showpkg"], std::slice::from_ref(name))?;
        let providers = text
            .split("Reverse Provides:")
            .nth(1)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect::<Vec<_>>();
        if let Some(p) = show(cache, arch, &providers)?.into_values().next() {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Replaces each package's version by the one `pins` holds for it (the lock
/// file's), if any. Dependencies stay as apt's candidate says: a pinned version
/// is the same package at another version, and Debian keeps dependencies of one
/// package stable across such updates.
pub fn pin(packages: Vec<Package>, pins: &crate::sources::lock::Pins) -> Vec<Package> {
    packages
        .into_iter()
        .map(|mut p| {
            if let Some(locked) = pins.package(&p.name) {
                p.version = locked.version.clone();
                p.sha256 = locked.sha256.clone();
            }
            p
        })
        .collect()
}

/// Bytes of the files under `dir` and its sub-folders (apt-get's `partial/`).
fn downloaded_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => downloaded_bytes(&entry.path()),
            Ok(_) => entry.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Runs `apt-get download NAMES…` in `dir` and returns its output. apt-get
/// writes the files itself: their size, polled, is the progress shown (of
/// `total` bytes). Its stderr is drained by `wait_with_output` after it
/// exits; with -q=2 it says a line per failed package at most, well within a
/// pipe's buffer.
fn apt_get_download(
    cache: &Cache,
    names: &[String],
    dir: &Path,
    progress: &Progress,
    total: u64,
) -> Result<std::process::Output, AptError> {
    let spawn_error = |source| AptError::Spawn {
        tool: "apt-get",
        source,
    };
    let bytes = progress.bytes(Some(total));
    let mut child = Command::new("apt-get")
        .args(pkgcache_options(cache))
        .args(["download", "-q=2", "-o", "APT::Sandbox::User=root"])
        .args(names)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    while child.try_wait().ok().flatten().is_none() {
        bytes.set(downloaded_bytes(dir));
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().map_err(spawn_error)
}

/// Fetches a package into the blob cache (or finds it there), showing the
/// download's bytes on `progress`.
pub fn fetch(cache: &Cache, package: &Package, progress: &Progress) -> Result<Fetched, AptError> {
    if let Some(path) = cache.get(&package.sha256)? {
        return Ok(Fetched {
            package: package.clone(),
            path,
        });
    }
    let dir = cache.tempdir()?;
    progress.detail(&format!("downloading {} {}", package.name, package.version));
    let output = apt_get_download(
        cache,
        &[download_name(package)],
        dir.path(),
        progress,
        package.size,
    )?;
    if !output.status.success() {
        return Err(AptError::Download {
            name: package.name.clone(),
            version: package.version.clone(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let deb = std::fs::read_dir(dir.path())
        .ok()
        .and_then(|mut entries| {
            entries.find_map(|e| {
                let p = e.ok()?.path();
                (p.extension()? == "deb").then_some(p)
            })
        })
        .ok_or_else(|| AptError::Missing {
            name: package.name.clone(),
            dir: dir.path().to_path_buf(),
        })?;
    let path = cache.insert(
        &deb,
        &package.sha256,
        &format!("{}_{}.deb", package.name, package.version),
    )?;
    Ok(Fetched {
        package: package.clone(),
        path,
    })
}

/// Fetches packages into the blob cache (or finds them there), in order. The
/// ones missing from the cache are downloaded by one `apt-get download`, which
/// pipelines its requests over one connection: a package container of two
/// hundred packages costs one apt start-up, not two hundred. When that call
/// fails, each package is fetched on its own, so the error names the package.
pub fn fetch_all(
    cache: &Cache,
    packages: &[Package],
    progress: &Progress,
) -> Result<Vec<Fetched>, AptError> {
    let mut cached = Vec::with_capacity(packages.len());
    for package in packages {
        cached.push(cache.get(&package.sha256)?);
    }
    let missing: Vec<&Package> = packages
        .iter()
        .zip(&cached)
        .filter_map(|(package, path)| path.is_none().then_some(package))
        .collect();
    if missing.len() > 1 {
        download_batch(cache, &missing, progress)?;
    }
    packages.iter().map(|p| fetch(cache, p, progress)).collect()
}

/// One `apt-get download` for several packages, each file checked against its
/// sha256 as it enters the cache. A failed call leaves the packages to
/// [`fetch`], one at a time.
fn download_batch(
    cache: &Cache,
    packages: &[&Package],
    progress: &Progress,
) -> Result<(), AptError> {
    let dir = cache.tempdir()?;
    progress.detail(&format!("downloading {} Debian packages", packages.len()));
    let names: Vec<String> = packages.iter().map(|p| download_name(p)).collect();
    let total = packages.iter().map(|p| p.size).sum();
    // Its outcome shows in which files it left: a failure is [`fetch`]'s to name.
    apt_get_download(cache, &names, dir.path(), progress, total)?;
    for package in packages {
        let file = dir.path().join(deb_file_name(package));
        if file.is_file() {
            cache.insert(
                &file,
                &package.sha256,
                &format!("{}_{}.deb", package.name, package.version),
            )?;
        }
    }
    Ok(())
}

/// The file name `apt-get download` gives a package: `NAME_VERSION_ARCH.deb`,
/// with the version's epoch colon quoted as `%3a` (apt's `QuoteString`).
fn deb_file_name(package: &Package) -> String {
    format!(
        "{}_{}_{}.deb",
        package.name,
        package.version.replace(':', "%3a"),
        package.architecture
    )
}

/// `apt-get download`'s name for a package: `NAME:ARCH=VERSION`, or
/// `NAME=VERSION` for an `Architecture: all` one (which takes no qualifier).
fn download_name(package: &Package) -> String {
    match package.architecture.as_str() {
        "all" => format!("{}={}", package.name, package.version),
        arch => format!("{}:{arch}={}", package.name, package.version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_keeps_its_package_cache_in_berths_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let pkgcache = dir.path().join("apt/pkgcache.bin");
        let names = [
            "busybox-static".to_string(),
            "no-such-package-x".to_string(),
        ];
        let first = show(&cache, Arch::X86_64, &names).unwrap();
        assert!(
            pkgcache.is_file(),
            "apt-cache wrote no {}",
            pkgcache.display()
        );
        let built = pkgcache.metadata().unwrap().modified().unwrap();
        // The second call reads the cache apt built, and answers the same.
        assert_eq!(show(&cache, Arch::X86_64, &names).unwrap(), first);
        assert_eq!(pkgcache.metadata().unwrap().modified().unwrap(), built);
        assert_eq!(first.keys().collect::<Vec<_>>(), ["busybox-static"]);
        assert_eq!(first["busybox-static"].sha256.len(), 64);
    }

    #[test]
    fn packages_are_looked_up_for_the_image_architecture_or_all() {
        // The README's setup command adds apt's arm64 lists on the x86_64 host.
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let names = ["crun".to_string(), "tzdata".to_string()];
        for arch in Arch::ALL {
            let found = show(&cache, arch, &names).unwrap();
            assert_eq!(found["crun"].architecture, arch.debian());
            assert_eq!(found["tzdata"].architecture, "all");
            let crun = download_name(&found["crun"]);
            assert!(
                crun.starts_with(&format!("crun:{}=", arch.debian())),
                "{crun}"
            );
            assert!(download_name(&found["tzdata"]).starts_with("tzdata="));
        }
        let amd = show(&cache, Arch::X86_64, &names).unwrap();
        let arm = show(&cache, Arch::Arm64, &names).unwrap();
        assert_ne!(amd["crun"].sha256, arm["crun"].sha256);
        // A package that exists only for another architecture is unknown here.
        let only_amd = ["linux-image-cloud-amd64".to_string()];
        assert!(show(&cache, Arch::Arm64, &only_amd).unwrap().is_empty());
        let err = resolve(&cache, Arch::Arm64, &only_amd, false).unwrap_err();
        assert!(err.to_string().contains("no arm64 candidate"), "{err}");
    }

    #[test]
    fn downloaded_files_are_named_as_apt_names_them() {
        let package = Package {
            name: "libc6".into(),
            version: "1:2.36-9+deb12u7".into(),
            architecture: "arm64".into(),
            sha256: String::new(),
            size: 0,
            depends: Vec::new(),
        };
        assert_eq!(
            deb_file_name(&package),
            "libc6_1%3a2.36-9+deb12u7_arm64.deb"
        );
    }

    #[test]
    fn depends_are_split_into_alternatives() {
        let d = parse_depends("libc6 (>= 2.34), libfoo:any | libbar [amd64], libbaz");
        assert_eq!(
            d,
            vec![
                vec!["libc6".to_string()],
                vec!["libfoo".to_string(), "libbar".to_string()],
                vec!["libbaz".to_string()]
            ]
        );
    }

    #[test]
    fn stanza_fields_with_continuations() {
        let f = parse_stanza("Package: a\nDescription: x\n more\nSHA256: ff");
        assert_eq!(f["Package"], "a");
        assert_eq!(f["Description"], "x\nmore");
        assert_eq!(f["SHA256"], "ff");
    }
}
