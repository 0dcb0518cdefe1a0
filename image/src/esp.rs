//! The FAT file system of an image's ESP: files, folders, and the boot entries in
//! `loader/entries/` read with `berth_format`'s parsers.

use std::fs::File;
use std::io::{self, Read, Write};

use berth_format::entries::{self, EntryFile, ENTRIES_DIR};
use berth_format::layout::{BootEntry, Slot};
use berth_format::window::Window;

use crate::{Image, ImageError};

/// The ESP of an [`Image`], opened with `fatfs`. Paths are relative to the ESP's
/// root (`loader/loader.conf`); a leading `/`, as boot entries write them, is
/// accepted too. Edits reach the image when the `Esp` is dropped or
/// [`unmount`](Esp::unmount)ed; `unmount` reports failures, drop cannot.
pub struct Esp<'a> {
    image: &'a Image,
    fs: fatfs::FileSystem<Window<&'a File>>,
}

impl std::fmt::Debug for Esp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Esp")
            .field("image", &self.image.path())
            .finish_non_exhaustive()
    }
}

impl<'a> Esp<'a> {
    pub(crate) fn open(image: &'a Image, window: Window<&'a File>) -> Result<Esp<'a>, ImageError> {
        let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new()).map_err(|source| {
            ImageError::Fat {
                path: image.path().to_path_buf(),
                source,
            }
        })?;
        Ok(Esp { image, fs })
    }

    fn error(&self, esp_path: &str, source: io::Error) -> ImageError {
        ImageError::EspFile {
            path: self.image.path().to_path_buf(),
            esp_path: esp_path.to_string(),
            source,
        }
    }

    /// The bytes of the file at `path`.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, ImageError> {
        let mut data = Vec::new();
        self.fs
            .root_dir()
            .open_file(relative(path))
            .and_then(|mut file| file.read_to_end(&mut data))
            .map_err(|e| self.error(path, e))?;
        Ok(data)
    }

    /// The text of the file at `path` (UTF-8).
    pub fn read_to_string(&self, path: &str) -> Result<String, ImageError> {
        String::from_utf8(self.read(path)?).map_err(|e| {
            self.error(
                path,
                io::Error::new(io::ErrorKind::InvalidData, e.utf8_error()),
            )
        })
    }

    /// Whether `path` names a file (not a folder).
    pub fn is_file(&self, path: &str) -> bool {
        self.fs.root_dir().open_file(relative(path)).is_ok()
    }

    /// The names in folder `dir` (`""` for the root), sorted, without `.` and `..`.
    pub fn list(&self, dir: &str) -> Result<Vec<String>, ImageError> {
        let root = self.fs.root_dir();
        let folder = match relative(dir) {
            "" => root,
            dir => root.open_dir(dir).map_err(|e| self.error(dir, e))?,
        };
        let mut names = Vec::new();
        for item in folder.iter() {
            let name = item.map_err(|e| self.error(dir, e))?.file_name();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Writes `content` to the file at `path`, replacing what was there; its
    /// folder must exist.
    pub fn write(&self, path: &str, content: &[u8]) -> Result<(), ImageError> {
        let mut file = self
            .fs
            .root_dir()
            .create_file(relative(path))
            .map_err(|e| self.error(path, e))?;
        file.truncate()
            .and_then(|()| file.write_all(content))
            .and_then(|()| file.flush())
            .map_err(|e| self.error(path, e))
    }

    /// Creates the folder at `path` (its parent must exist); an existing one
    /// is kept.
    pub fn create_dir(&self, path: &str) -> Result<(), ImageError> {
        self.fs
            .root_dir()
            .create_dir(relative(path))
            .map(drop)
            .map_err(|e| self.error(path, e))
    }

    /// Renames `from` to `to`, both in folder `dir`.
    pub fn rename(&self, dir: &str, from: &str, to: &str) -> Result<(), ImageError> {
        let folder = self
            .fs
            .root_dir()
            .open_dir(relative(dir))
            .map_err(|e| self.error(dir, e))?;
        folder
            .rename(from, &folder, to)
            .map_err(|e| self.error(&format!("{dir}/{from}"), e))
    }

    /// Writes back what changed and closes the file system.
    pub fn unmount(self) -> Result<(), ImageError> {
        let path = self.image.path().to_path_buf();
        self.fs
            .unmount()
            .map_err(|source| ImageError::Fat { path, source })
    }

    /// The boot entry files in `loader/entries/` (names [`entries::is_entry_file_name`]
    /// accepts), parsed, in name order.
    pub fn entry_files(&self) -> Result<Vec<EntryFile>, ImageError> {
        let mut found = Vec::new();
        for name in self.list(ENTRIES_DIR)? {
            let path = format!("{ENTRIES_DIR}/{name}");
            if !entries::is_entry_file_name(&name) || !self.is_file(&path) {
                continue;
            }
            found.push(EntryFile::parse(&name, &self.read_to_string(&path)?));
        }
        Ok(found)
    }

    /// The one boot entry of `slot` (whatever its counter): its file name and
    /// content, parsed as an entry berth wrote.
    pub fn slot_entry(&self, slot: Slot) -> Result<(String, BootEntry), ImageError> {
        let entry_error = |reason: String| ImageError::Entry {
            path: self.image.path().to_path_buf(),
            reason,
        };
        let names: Vec<String> = self
            .list(ENTRIES_DIR)?
            .into_iter()
            .filter(|n| entries::parse_slot_file_name(n).is_some_and(|(s, _)| s == slot))
            .collect();
        let name = match names.as_slice() {
            [one] => one.clone(),
            [] => return Err(entry_error(format!("no boot entry for slot {slot}"))),
            many => {
                return Err(entry_error(format!(
                    "several boot entries for slot {slot}: {}",
                    many.join(", ")
                )))
            }
        };
        let path = format!("{ENTRIES_DIR}/{name}");
        let text = String::from_utf8_lossy(&self.read(&path)?).into_owned();
        let entry = BootEntry::parse(&text).map_err(|e| entry_error(format!("{path}: {e}")))?;
        Ok((name, entry))
    }

    /// `slot`'s kernel (`berth/<slot>/vmlinuz`).
    pub fn kernel(&self, slot: Slot) -> Result<Vec<u8>, ImageError> {
        self.read(&slot.kernel_path())
    }

    /// `slot`'s initramfs (`berth/<slot>/initramfs.img`).
    pub fn initramfs(&self, slot: Slot) -> Result<Vec<u8>, ImageError> {
        self.read(&slot.initramfs_path())
    }
}

/// Entry paths are absolute on the ESP (`/berth/a/vmlinuz`); fatfs wants them
/// relative to the root folder.
fn relative(path: &str) -> &str {
    path.trim_start_matches(['/', '\\'])
}
