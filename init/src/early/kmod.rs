//! Loading the initramfs's kernel modules, in the order the builder listed them
//! (`/etc/berth/initramfs-modules`, dependencies first, resolved from modules.dep).

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// Failure to read the module list or to load one module.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// The list file could not be read.
    #[error("reading the module list {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A listed module file could not be opened.
    #[error("opening module {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The kernel refused the module.
    #[error("loading module {path}: {errno}")]
    Load { path: PathBuf, errno: Errno },
}

/// What happened to one module.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Newly loaded.
    Loaded,
    /// The kernel already had it (built in, or loaded before).
    AlreadyLoaded,
    /// The module is not for this machine: its init answered ENODEV (a CPU
    /// feature it needs is missing, as crc32c-intel's SSE 4.2 under TCG). The
    /// kernel's generic code does the job; modprobe skips these too.
    NotForThisMachine,
}

/// The module paths of a list file's text: one absolute path per line; blank lines
/// and `#` comments are ignored.
pub fn parse_list(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(PathBuf::from)
        .collect()
}

/// Reads the list file.
pub fn read_list(path: &Path) -> Result<Vec<PathBuf>, KmodError> {
    std::fs::read_to_string(path)
        .map(|text| parse_list(&text))
        .map_err(|source| KmodError::List {
            path: path.to_path_buf(),
            source,
        })
}

/// Loads one uncompressed module with `finit_module`.
pub fn load(path: &Path) -> Result<Outcome, KmodError> {
    let file = File::open(path).map_err(|source| KmodError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    match finit_module(&file, c"", ModuleInitFlags::empty()) {
        Ok(()) => Ok(Outcome::Loaded),
        Err(Errno::EEXIST) => Ok(Outcome::AlreadyLoaded),
        Err(Errno::ENODEV) => Ok(Outcome::NotForThisMachine),
        Err(errno) => Err(KmodError::Load {
            path: path.to_path_buf(),
            errno,
        }),
    }
}

/// Loads every module in the list, logging (and skipping) the ones that fail: a
/// missing optional driver must not stop the boot; a missing disk driver shows up
/// as "no partition" a moment later, with this log line above it.
pub fn load_all(list: &Path) -> usize {
    let paths = match read_list(list) {
        Ok(paths) => paths,
        Err(err) => {
            log!("{err}");
            return 0;
        }
    };
    let mut loaded = 0;
    for path in &paths {
        match load(path) {
            Ok(Outcome::Loaded) => loaded += 1,
            Ok(Outcome::AlreadyLoaded) => log!("module {} already loaded", module_name(path)),
            Ok(Outcome::NotForThisMachine) => {
                log!(
                    "module {} is not for this machine: skipped",
                    module_name(path)
                )
            }
            Err(err) => log!("{err}"),
        }
    }
    loaded
}

/// `virtio_blk` for `/lib/modules/…/virtio_blk.ko`.
fn module_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|name| name.to_str())
        .map(|name| name.strip_suffix(".ko").unwrap_or(name))
        .unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_skips_blanks_and_comments() {
        let text = "# disk\n/lib/modules/6.1/kernel/virtio.ko\n\n  /lib/modules/6.1/kernel/virtio_blk.ko  \n";
        assert_eq!(
            parse_list(text),
            vec![
                PathBuf::from("/lib/modules/6.1/kernel/virtio.ko"),
                PathBuf::from("/lib/modules/6.1/kernel/virtio_blk.ko"),
            ]
        );
    }

    #[test]
    fn missing_module_file_is_an_open_error() {
        let err = load(Path::new("/nonexistent/x.ko")).unwrap_err();
        assert!(matches!(err, KmodError::Open { .. }));
        assert!(err.to_string().contains("/nonexistent/x.ko"));
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name(Path::new("/a/b/virtio_blk.ko")), "virtio_blk");
        assert_eq!(module_name(Path::new("/a/b/odd")), "odd");
    }
}
