//! The reader on a real small image: the GPT written by `sgdisk`, the ESP
//! formatted and filled with the `fatfs` crate, root-a holding a squashfs made by
//! `mksquashfs` (zstd, as the builder's).

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::process::Command;

use berth_format::layout::{BootEntry, Slot};

use super::*;

const MIB: u64 = 1024 * 1024;
const CONFIG: &str =
    "[image]\nname='hello'\nversion='1.0.0'\ncompatible='hello'\nhostname='hello'\n";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn entry(slot: Slot, version: &str) -> BootEntry {
    BootEntry {
        title: format!("hello {version}"),
        version: version.into(),
        slot,
        root_partuuid: format!("0000000{}-0000-0000-0000-000000000000", slot.letter()),
        data_partuuid: "0000000d-0000-0000-0000-000000000000".into(),
        verity: None,
        extra_cmdline: "quiet".into(),
        arch: berth_format::Arch::X86_64,
    }
}

/// A 24 MiB image in `dir`: esp (8 MiB, FAT) with `esp_files`, root-a (4 MiB,
/// squashfs with `/etc/berth/image.toml`), root-b (4 MiB, empty), data.
fn make_image(dir: &Path, esp_files: &[(&str, &[u8])]) -> PathBuf {
    let image = dir.join("hello-1.0.0.img");
    File::create(&image)
        .and_then(|f| f.set_len(24 * MIB))
        .expect("image file");
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+8M", "-t", "1:ef00", "-c", "1:esp"])
        .args(["-n", "2:0:+4M", "-t", "2:8304", "-c", "2:root-a"])
        .args(["-n", "3:0:+4M", "-t", "3:8304", "-c", "3:root-b"])
        .args(["-n", "4:0:0", "-t", "4:8310", "-c", "4:data"])
        .arg(&image));
    let (esp_start, esp_len, root_start) = {
        let image = Image::open(&image).expect("open");
        let esp = image.partition_range(ESP_LABEL).expect("esp");
        let root = image.partition_range("root-a").expect("root-a");
        (esp.0, esp.1, root.0)
    };

    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .expect("open rw");
    fatfs::format_volume(
        Window::new(&file, esp_start, esp_len),
        fatfs::FormatVolumeOptions::new(),
    )
    .expect("format");
    {
        let fs = fatfs::FileSystem::new(
            Window::new(&file, esp_start, esp_len),
            fatfs::FsOptions::new(),
        )
        .expect("mount");
        for (path, content) in esp_files {
            let mut folder = fs.root_dir();
            let parts: Vec<&str> = path.split('/').collect();
            for part in &parts[..parts.len() - 1] {
                folder = match folder.open_dir(part) {
                    Ok(d) => d,
                    Err(_) => folder.create_dir(part).expect("mkdir"),
                };
            }
            let mut f = folder.create_file(parts[parts.len() - 1]).expect("create");
            f.write_all(content).expect("write");
        }
        fs.unmount().expect("unmount");
    }

    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("etc/berth")).expect("mkdir");
    fs::write(tree.join("etc/berth/image.toml"), CONFIG).expect("config");
    let squashfs = dir.join("root.squashfs");
    run(Command::new("mksquashfs")
        .arg(&tree)
        .arg(&squashfs)
        .args(["-comp", "zstd", "-noappend", "-quiet", "-all-root"])
        .args(["-mkfs-time", "1700000000"]));
    let mut file = file;
    file.seek(SeekFrom::Start(root_start)).expect("seek");
    file.write_all(&fs::read(&squashfs).expect("squashfs"))
        .expect("write root-a");
    image
}

fn standard_esp() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("loader/loader.conf", b"timeout 0\n".to_vec()),
        (
            "loader/entries/berth-a.conf",
            entry(Slot::A, "1.0.0").render().into_bytes(),
        ),
        (
            "loader/entries/berth-b+0-3.conf",
            entry(Slot::B, "1.1.0").render().into_bytes(),
        ),
        ("loader/entries/notes.txt", b"not an entry".to_vec()),
        ("berth/a/vmlinuz", b"kernel a".to_vec()),
        ("berth/a/initramfs.img", b"initrd a".to_vec()),
        ("berth/b/vmlinuz", b"kernel b".to_vec()),
    ]
}

fn image_with(dir: &Path, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let borrowed: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (*p, c.as_slice())).collect();
    make_image(dir, &borrowed)
}

#[test]
fn finds_partitions_by_label() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = image_with(dir.path(), &standard_esp());
    let image = Image::open(&path).expect("open");
    let labels: Vec<&str> = image
        .partitions()
        .iter()
        .map(|p| p.label.as_str())
        .collect();
    assert_eq!(labels, ["esp", "root-a", "root-b", "data"]);
    assert_eq!(image.partition_range("esp").expect("esp"), (MIB, 8 * MIB));
    assert_eq!(
        image.partition_range("root-a").expect("root-a"),
        (9 * MIB, 4 * MIB)
    );
    assert_eq!(image.partition_window("root-b").expect("b").len(), 4 * MIB);
    let err = image.partition("swap").expect_err("no swap");
    let text = err.to_string();
    assert!(
        text.contains("\"swap\"") && text.contains("hello-1.0.0.img") && text.contains("\"data\""),
        "{text}"
    );
}

#[test]
fn reads_files_and_folders_of_the_esp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = image_with(dir.path(), &standard_esp());
    let image = Image::open(&path).expect("open");
    let esp = image.esp().expect("esp");
    assert_eq!(
        esp.read("loader/loader.conf").expect("read"),
        b"timeout 0\n"
    );
    assert_eq!(
        esp.read_to_string("/berth/a/vmlinuz").expect("read"),
        "kernel a"
    );
    assert_eq!(esp.list("").expect("root"), ["berth", "loader"]);
    assert_eq!(
        esp.list("loader/entries").expect("entries"),
        ["berth-a.conf", "berth-b+0-3.conf", "notes.txt"]
    );
    assert!(esp.is_file("berth/b/vmlinuz"));
    assert!(!esp.is_file("berth/b"));
    assert!(!esp.is_file("berth/b/initramfs.img"));
    let err = esp.read("berth/b/initramfs.img").expect_err("missing");
    let text = err.to_string();
    assert!(
        text.contains("berth/b/initramfs.img") && text.contains("hello-1.0.0.img"),
        "{text}"
    );
}

#[test]
fn reads_boot_entries_and_a_slots_boot_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = image_with(dir.path(), &standard_esp());
    let image = Image::open(&path).expect("open");
    let esp = image.esp().expect("esp");
    let files = esp.entry_files().expect("entries");
    let names: Vec<&str> = files.iter().map(|e| e.file_name.as_str()).collect();
    assert_eq!(names, ["berth-a.conf", "berth-b+0-3.conf"]);
    assert_eq!(files[0].linux.as_deref(), Some("/berth/a/vmlinuz"));

    let (name, parsed) = esp.slot_entry(Slot::A).expect("slot a");
    assert_eq!(name, "berth-a.conf");
    assert_eq!(parsed, entry(Slot::A, "1.0.0"));
    assert_eq!(
        esp.slot_entry(Slot::B).expect("slot b").0,
        "berth-b+0-3.conf"
    );
    assert_eq!(esp.kernel(Slot::A).expect("kernel"), b"kernel a");
    assert_eq!(esp.initramfs(Slot::A).expect("initramfs"), b"initrd a");
    assert!(esp.initramfs(Slot::B).is_err());
}

#[test]
fn a_slot_needs_exactly_one_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = standard_esp();
    files.push((
        "loader/entries/berth-a+3.conf",
        entry(Slot::A, "1.0.0").render().into_bytes(),
    ));
    let path = image_with(dir.path(), &files);
    let image = Image::open(&path).expect("open");
    let esp = image.esp().expect("esp");
    let text = esp.slot_entry(Slot::A).expect_err("two").to_string();
    assert!(
        text.contains("several boot entries for slot a")
            && text.contains("berth-a+3.conf, berth-a.conf"),
        "{text}"
    );
    drop(esp);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = image_with(dir.path(), &[("loader/entries/notes.txt", b"x".to_vec())]);
    let image = Image::open(&path).expect("open");
    let text = image
        .esp()
        .expect("esp")
        .slot_entry(Slot::A)
        .expect_err("none");
    assert!(
        text.to_string().contains("no boot entry for slot a"),
        "{text}"
    );
}

#[test]
fn writes_and_renames_on_a_writable_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = image_with(dir.path(), &standard_esp());
    {
        let image = Image::open_writable(&path).expect("open");
        let esp = image.esp().expect("esp");
        esp.write("berth/provision.toml", b"[update]\n")
            .expect("write");
        esp.write("loader/loader.conf", b"timeout 1\n")
            .expect("overwrite");
        esp.rename("loader/entries", "berth-a.conf", "berth-a+3.conf")
            .expect("rename");
        esp.unmount().expect("unmount");
    }
    let image = Image::open(&path).expect("reopen");
    let esp = image.esp().expect("esp");
    assert_eq!(
        esp.read("berth/provision.toml").expect("read"),
        b"[update]\n"
    );
    assert_eq!(
        esp.read("loader/loader.conf").expect("read"),
        b"timeout 1\n"
    );
    assert_eq!(
        esp.list("loader/entries").expect("list"),
        ["berth-a+3.conf", "berth-b+0-3.conf", "notes.txt"]
    );
}

#[test]
fn reads_a_slots_squashfs_and_image_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = image_with(dir.path(), &standard_esp());
    let image = Image::open(&path).expect("open");
    let squashfs = image.squashfs(Slot::A).expect("squashfs");
    assert_eq!(squashfs.created, 1_700_000_000);
    let written = fs::metadata(dir.path().join("root.squashfs")).expect("meta");
    assert!(squashfs.bytes_used <= written.len() && squashfs.bytes_used > 96);
    let config = image.image_config(Slot::A).expect("config");
    assert_eq!(config.image.name, "hello");
    assert_eq!(config.image.version, "1.0.0");

    let text = image.squashfs(Slot::B).expect_err("empty slot").to_string();
    assert!(
        text.contains("root-b") && text.contains("squashfs") && text.contains("hello-1.0.0.img"),
        "{text}"
    );
}

#[test]
fn a_file_without_gpt_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("blank.img");
    fs::write(&path, vec![0u8; 64 * 1024]).expect("write");
    let err = Image::open(&path).expect_err("no gpt");
    assert!(matches!(err, ImageError::Gpt { .. }), "{err:?}");
    assert!(err.to_string().contains("blank.img"), "{err}");
    let err = Image::open(&dir.path().join("missing.img")).expect_err("missing");
    assert!(err.to_string().contains("missing.img"), "{err}");
}
