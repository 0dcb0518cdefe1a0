//! Direct boot from an image: the kernel, initramfs and command line of the entry
//! systemd-boot would boot, read from the image's ESP without mounting anything.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use berth_format::entries::{self, EntryFile, ENTRIES_DIR};
use berth_format::gpt;
use berth_format::layout::ESP_LABEL;
use berth_format::window::Window;

use crate::command::{CommandError, DirectBoot, DiskFormat};

/// Logical block size of berth images.
const BLOCK: u64 = 512;

/// Failure to take the boot files out of an image.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The image could not be opened or read.
    #[error("reading the image {path}: {source}")]
    Image { path: PathBuf, source: io::Error },
    /// Direct boot reads the image itself, and only raw images.
    #[error("direct boot needs a raw image, but {path} is qcow2: boot the .img file (or convert with `qemu-img convert -O raw`)")]
    Qcow2 { path: PathBuf },
    /// The format could not be told.
    #[error(transparent)]
    Format(#[from] CommandError),
    /// The partition table could not be read.
    #[error("reading the partition table of {path}: {source}")]
    Gpt {
        path: PathBuf,
        source: gpt::GptError,
    },
    /// No partition is labelled `esp`.
    #[error("no partition labelled {ESP_LABEL:?} in {path} (found: {found})")]
    NoEsp { path: PathBuf, found: String },
    /// The ESP is not a FAT file system fatfs can read.
    #[error("opening the FAT file system of the ESP in {path}: {source}")]
    Fat { path: PathBuf, source: io::Error },
    /// A file or folder on the ESP could not be read.
    #[error("reading {esp_path} on the ESP of {image}: {source}")]
    EspFile {
        image: PathBuf,
        esp_path: String,
        source: io::Error,
    },
    /// No entry names a kernel that exists.
    #[error("no bootable entry in {ENTRIES_DIR}/ on the ESP of {image} (entries: {found})")]
    NoEntry { image: PathBuf, found: String },
    /// A boot file could not be written out.
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Copies the kernel and initramfs of the entry systemd-boot would boot from
/// `image` into `workdir` (`vmlinuz`, `initrd.img`; several `initrd` lines are
/// concatenated, as the kernel accepts) and returns them with the entry's
/// `options` as the command line.
pub fn extract_direct_boot(image: &Path, workdir: &Path) -> Result<DirectBoot, DirectError> {
    if DiskFormat::detect(image)? == DiskFormat::Qcow2 {
        return Err(DirectError::Qcow2 {
            path: image.to_path_buf(),
        });
    }
    let image_error = |source| DirectError::Image {
        path: image.to_path_buf(),
        source,
    };
    let mut file = File::open(image).map_err(image_error)?;
    let partitions = gpt::read_partitions(&mut file).map_err(|source| DirectError::Gpt {
        path: image.to_path_buf(),
        source,
    })?;
    let esp = partitions
        .iter()
        .find(|p| p.label == ESP_LABEL)
        .ok_or_else(|| DirectError::NoEsp {
            path: image.to_path_buf(),
            found: partitions
                .iter()
                .map(|p| format!("{:?}", p.label))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let window = Window::new(file, esp.first_lba * BLOCK, esp.size_bytes(BLOCK));
    let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new()).map_err(|source| {
        DirectError::Fat {
            path: image.to_path_buf(),
            source,
        }
    })?;
    let root = fs.root_dir();
    let esp_error = |esp_path: &str| {
        let esp_path = esp_path.to_string();
        move |source| DirectError::EspFile {
            image: image.to_path_buf(),
            esp_path,
            source,
        }
    };

    let dir = root.open_dir(ENTRIES_DIR).map_err(esp_error(ENTRIES_DIR))?;
    let mut found = Vec::new();
    for item in dir.iter() {
        let item = item.map_err(esp_error(ENTRIES_DIR))?;
        let name = item.file_name();
        if !item.is_file() || !entries::is_entry_file_name(&name) {
            continue;
        }
        let path = format!("{ENTRIES_DIR}/{name}");
        let mut text = String::new();
        item.to_file()
            .read_to_string(&mut text)
            .map_err(esp_error(&path))?;
        found.push(EntryFile::parse(&name, &text));
    }
    let chosen = entries::choose(&found, |entry| {
        entry
            .linux
            .as_deref()
            .is_some_and(|linux| root.open_file(esp_relative(linux)).is_ok())
    })
    .ok_or_else(|| DirectError::NoEntry {
        image: image.to_path_buf(),
        found: if found.is_empty() {
            "none".into()
        } else {
            found
                .iter()
                .map(|e| e.file_name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        },
    })?;

    let kernel = workdir.join("vmlinuz");
    let initrd = workdir.join("initrd.img");
    let linux = chosen.linux.as_deref().unwrap_or_default();
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DirectError::Write { path, source }
    };
    let mut out = File::create(&kernel).map_err(write_error(&kernel))?;
    copy_out(&root, linux, &mut out, image, &kernel)?;
    let mut out = File::create(&initrd).map_err(write_error(&initrd))?;
    for path in &chosen.initrd {
        copy_out(&root, path, &mut out, image, &initrd)?;
    }
    out.sync_all().map_err(write_error(&initrd))?;
    drop(out);
    if chosen.initrd.is_empty() {
        // QEMU wants a file for -initrd; an empty one means "none".
        fs::write(&initrd, b"").map_err(write_error(&initrd))?;
    }
    Ok(DirectBoot {
        kernel,
        initrd,
        cmdline: chosen.options.clone(),
    })
}

fn copy_out<T: fatfs::ReadWriteSeek>(
    root: &fatfs::Dir<'_, T>,
    esp_path: &str,
    out: &mut File,
    image: &Path,
    dest: &Path,
) -> Result<(), DirectError> {
    let mut source =
        root.open_file(esp_relative(esp_path))
            .map_err(|source| DirectError::EspFile {
                image: image.to_path_buf(),
                esp_path: esp_path.to_string(),
                source,
            })?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(DirectError::EspFile {
                    image: image.to_path_buf(),
                    esp_path: esp_path.to_string(),
                    source,
                })
            }
        };
        out.write_all(&buf[..n])
            .map_err(|source| DirectError::Write {
                path: dest.to_path_buf(),
                source,
            })?;
    }
}

/// Entry paths are absolute on the ESP (`/berth/a/vmlinuz`); fatfs wants them
/// relative to the root folder.
fn esp_relative(path: &str) -> &str {
    path.trim_start_matches(['/', '\\'])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GPT disk with one FAT partition labelled `esp` holding `files`.
    fn disk_with_esp(files: &[(&str, &[u8])]) -> Vec<u8> {
        const FIRST: u64 = 2048;
        const SECTORS: u64 = 16 * 1024; // 8 MiB: FAT16, enough for the reader
        let mut disk = vec![0u8; usize::try_from((FIRST + SECTORS + 34) * BLOCK).expect("size")];
        let header = usize::try_from(BLOCK).expect("block");
        disk[header..header + 8].copy_from_slice(b"EFI PART");
        disk[header + 72..header + 80].copy_from_slice(&2u64.to_le_bytes());
        disk[header + 80..header + 84].copy_from_slice(&128u32.to_le_bytes());
        disk[header + 84..header + 88].copy_from_slice(&128u32.to_le_bytes());
        let entry = 2 * header;
        disk[entry] = 0x28; // any non-zero type GUID marks the entry used
        disk[entry + 32..entry + 40].copy_from_slice(&FIRST.to_le_bytes());
        disk[entry + 40..entry + 48].copy_from_slice(&(FIRST + SECTORS - 1).to_le_bytes());
        for (i, unit) in "esp".encode_utf16().enumerate() {
            disk[entry + 56 + 2 * i..entry + 58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
        let start = usize::try_from(FIRST * BLOCK).expect("start");
        let end = usize::try_from((FIRST + SECTORS) * BLOCK).expect("end");
        let esp = &mut disk[start..end];
        fatfs::format_volume(
            io::Cursor::new(&mut *esp),
            fatfs::FormatVolumeOptions::new(),
        )
        .expect("format");
        {
            let fs = fatfs::FileSystem::new(io::Cursor::new(&mut *esp), fatfs::FsOptions::new())
                .expect("mount");
            let root = fs.root_dir();
            for (path, content) in files {
                let mut dir = root.clone();
                let parts: Vec<&str> = path.split('/').collect();
                for part in &parts[..parts.len() - 1] {
                    dir = match dir.open_dir(part) {
                        Ok(d) => d,
                        Err(_) => dir.create_dir(part).expect("mkdir"),
                    };
                }
                let mut file = dir.create_file(parts[parts.len() - 1]).expect("create");
                file.truncate().expect("truncate");
                file.write_all(content).expect("write");
            }
        }
        disk
    }

    fn entry_text(slot: &str, version: &str) -> Vec<u8> {
        format!(
            "title berth hello {version}\nversion {version}\nsort-key berth\nlinux /berth/{slot}/vmlinuz\ninitrd /berth/{slot}/initramfs.img\noptions root=PARTUUID=slot-{slot} ro console=ttyS0\n"
        )
        .into_bytes()
    }

    #[test]
    fn extracts_the_entry_systemd_boot_would_boot() {
        let a = entry_text("a", "1.0.0");
        let b = entry_text("b", "1.1.0");
        let disk = disk_with_esp(&[
            ("loader/loader.conf", b"timeout 0\n"),
            ("loader/entries/berth-a.conf", &a),
            ("loader/entries/berth-b+2-1.conf", &b),
            ("berth/a/vmlinuz", b"kernel a"),
            ("berth/a/initramfs.img", b"initrd a"),
            ("berth/b/vmlinuz", b"kernel b"),
            ("berth/b/initramfs.img", b"initrd b"),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("hello-1.1.0.img");
        fs::write(&image, &disk).expect("write image");
        let work = dir.path().join("work");
        fs::create_dir(&work).expect("mkdir");
        let boot = extract_direct_boot(&image, &work).expect("extract");
        assert_eq!(fs::read(&boot.kernel).expect("kernel"), b"kernel b");
        assert_eq!(fs::read(&boot.initrd).expect("initrd"), b"initrd b");
        assert_eq!(boot.cmdline, "root=PARTUUID=slot-b ro console=ttyS0");
        // The image was only read.
        assert_eq!(fs::read(&image).expect("image"), disk);
    }

    #[test]
    fn exhausted_slot_and_missing_kernels_fall_back() {
        let a = entry_text("a", "1.0.0");
        let b = entry_text("b", "1.1.0");
        let c = entry_text("c", "1.2.0");
        let disk = disk_with_esp(&[
            ("loader/entries/berth-a.conf", &a),
            ("loader/entries/berth-b+0-3.conf", &b),
            // Newest, but its kernel is not on the ESP: systemd-boot skips it.
            ("loader/entries/berth-c.conf", &c),
            ("loader/entries/notes.txt", b"not an entry"),
            ("berth/a/vmlinuz", b"kernel a"),
            ("berth/a/initramfs.img", b"initrd a"),
            ("berth/b/vmlinuz", b"kernel b"),
            ("berth/b/initramfs.img", b"initrd b"),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("hello.img");
        fs::write(&image, &disk).expect("write image");
        let boot = extract_direct_boot(&image, dir.path()).expect("extract");
        assert_eq!(fs::read(&boot.kernel).expect("kernel"), b"kernel a");
        assert_eq!(boot.cmdline, "root=PARTUUID=slot-a ro console=ttyS0");
    }

    #[test]
    fn no_entries_is_an_error_naming_the_image() {
        let disk = disk_with_esp(&[("loader/loader.conf", b"timeout 0\n")]);
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("empty-esp.img");
        fs::write(&image, &disk).expect("write image");
        let err = extract_direct_boot(&image, dir.path()).expect_err("no entries");
        let text = err.to_string();
        assert!(
            text.contains("loader/entries") && text.contains("empty-esp.img"),
            "{text}"
        );
    }

    #[test]
    fn qcow2_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("hello-1.0.0.qcow2");
        fs::write(&image, b"QFI\xfb\0\0\0\x03").expect("write");
        let err = extract_direct_boot(&image, dir.path()).expect_err("qcow2");
        let text = err.to_string();
        assert!(
            text.contains("raw") && text.contains("hello-1.0.0.qcow2"),
            "{text}"
        );
    }

    #[test]
    fn an_image_without_gpt_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("blank.img");
        fs::write(&image, vec![0u8; 64 * 1024]).expect("write");
        let err = extract_direct_boot(&image, dir.path()).expect_err("no gpt");
        assert!(err.to_string().contains("blank.img"), "{err}");
    }
}
