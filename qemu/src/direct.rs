//! Direct boot from an image: the kernel, initramfs and command line of the entry
//! systemd-boot would boot, read from the image's ESP without mounting anything.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use berth_format::entries::{self, ENTRIES_DIR};
use berth_image::{Image, ImageError};

use crate::command::{CommandError, DirectBoot, DiskFormat};

/// Failure to take the boot files out of an image.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The image, its partition table or its ESP could not be read.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Direct boot reads the image itself, and only raw images.
    #[error("direct boot needs a raw image, but {path} is qcow2: boot the .img file (or convert with `qemu-img convert -O raw`)")]
    Qcow2 { path: PathBuf },
    /// The format could not be told.
    #[error(transparent)]
    Format(#[from] CommandError),
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
    let disk = Image::open(image)?;
    let esp = disk.esp()?;
    let found = esp.entry_files()?;
    let chosen = entries::choose(&found, |entry| {
        entry
            .linux
            .as_deref()
            .is_some_and(|linux| esp.is_file(linux))
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
    fs::write(&kernel, esp.read(linux)?).map_err(write_error(&kernel))?;
    let mut out = File::create(&initrd).map_err(write_error(&initrd))?;
    for path in &chosen.initrd {
        out.write_all(&esp.read(path)?)
            .map_err(write_error(&initrd))?;
    }
    out.sync_all().map_err(write_error(&initrd))?;
    Ok(DirectBoot {
        kernel,
        initrd,
        cmdline: chosen.options.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logical block size of berth images.
    const BLOCK: u64 = berth_image::SECTOR_SIZE;

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
        // A valid primary: readers check its CRCs (there is no backup).
        disk[header + 12..header + 16].copy_from_slice(&92u32.to_le_bytes());
        disk[header + 24..header + 32].copy_from_slice(&1u64.to_le_bytes());
        let entries_crc = berth_format::gpt::crc32(&disk[entry..entry + 128 * 128]);
        disk[header + 88..header + 92].copy_from_slice(&entries_crc.to_le_bytes());
        berth_format::gpt::seal_header(&mut disk[header..2 * header], 92);
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
