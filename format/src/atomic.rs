//! Files on the device replaced whole: a power cut leaves the old file or the
//! new one, never half of one. The state file, the kept provisioning copy and
//! the agent's kept index all go through [`write_atomically`].

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `NAME.tmp` beside `path`, syncs it, renames it over
/// `path` and syncs the folder (so the rename itself survives a cut). The
/// folder is made first if it is missing.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temp = dir.join(name);
    let written = fs::File::create(&temp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temp, path));
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_no_temporary_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.toml");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.toml"]);
    }

    #[test]
    fn writing_atomically_never_leaves_a_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/kept.toml");
        write_atomically(&path, b"one").unwrap();
        // A temporary left by a cut write is replaced, and the file is whole.
        std::fs::write(dir.path().join("a/b/kept.toml.tmp"), b"torn").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!dir.path().join("a/b/kept.toml.tmp").exists());
        // A file in the way of the temporary: the write fails, the old file stays.
        std::fs::create_dir(dir.path().join("a/b/kept.toml.tmp")).unwrap();
        assert!(write_atomically(&path, b"three").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a folder: the rename fails after the temporary was written.
        let path = dir.path().join("taken");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"kept").unwrap();
        assert!(write_atomically(&path, b"new").is_err());
        assert_eq!(fs::read(path.join("inside")).unwrap(), b"kept");
        assert!(!dir.path().join("taken.tmp").exists());
    }
}
