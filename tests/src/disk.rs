//! A built or used disk image, read and edited offline through berth-image.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;

use berth_format::entries::{EspState, ENTRIES_DIR};
use berth_format::Slot;
use berth_image::Image;
use berth_qemu::extract_direct_boot;

/// Copies a partition of `image` into its own file.
pub fn extract_partition(image: &Path, label: &str, out: &Path) {
    let image = open(image);
    let mut part = image
        .partition_window(label)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out_file = File::create(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    std::io::copy(&mut part, &mut out_file).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

/// The initramfs module list (`/etc/berth/initramfs-modules`) of an image's
/// default boot entry, extracted with the standard `cpio`.
pub fn initramfs_module_list(image: &Path) -> String {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let boot = extract_direct_boot(image, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let raw = zstd::stream::decode_all(File::open(&boot.initrd).unwrap()).unwrap();
    let mut cpio = Command::new("cpio")
        .args(["-i", "--quiet", "-d", "etc/berth/initramfs-modules"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cpio.stdin.take().unwrap().write_all(&raw).unwrap();
    assert!(cpio.wait().unwrap().success());
    fs::read_to_string(dir.path().join("etc/berth/initramfs-modules")).unwrap()
}

/// Position of module `name` (file name without `.ko`) in a module list.
pub fn module_position(list: &str, name: &str) -> usize {
    list.lines()
        .position(|l| l.ends_with(&format!("/{name}.ko")))
        .unwrap_or_else(|| panic!("{name} not in\n{list}"))
}

/// Opens a disk image offline, panicking with the reader's explanation.
fn open(image: &Path) -> Image {
    Image::open(image).unwrap_or_else(|e| panic!("{e}"))
}

/// Opens a disk image offline for editing its ESP.
fn open_writable(image: &Path) -> Image {
    Image::open_writable(image).unwrap_or_else(|e| panic!("{e}"))
}

/// The file names in `loader/entries/` of a disk image's ESP, sorted.
pub fn esp_entry_names(image: &Path) -> Vec<String> {
    let image = open(image);
    let esp = image.esp().unwrap_or_else(|e| panic!("{e}"));
    esp.list(ENTRIES_DIR).unwrap_or_else(|e| panic!("{e}"))
}

/// Renames a file in `loader/entries/` of a disk image's ESP, offline: e.g.
/// `berth-a.conf` to `berth-a+3.conf` to put slot A on trial.
pub fn rename_esp_entry(image: &Path, from: &str, to: &str) {
    let image = open_writable(image);
    let esp = image.esp().unwrap_or_else(|e| panic!("{e}"));
    esp.rename(ENTRIES_DIR, from, to)
        .and_then(|()| esp.unmount())
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The text of a file on a disk image's ESP (`path` relative to its root).
pub fn read_esp_file(image: &Path, path: &str) -> String {
    let image = open(image);
    let esp = image.esp().unwrap_or_else(|e| panic!("{e}"));
    esp.read_to_string(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The boot entries of a disk image's ESP as systemd-boot would see them, read
/// offline: the entries and the slots' kernels are copied into a scratch folder
/// (kernels as empty files: only their presence counts).
pub fn esp_state(image: &Path) -> EspState {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp folder: {e}"));
    let entries = dir.path().join(ENTRIES_DIR);
    fs::create_dir_all(&entries).unwrap_or_else(|e| panic!("{}: {e}", entries.display()));
    let opened = open(image);
    let esp = opened.esp().unwrap_or_else(|e| panic!("{e}"));
    for name in esp.list(ENTRIES_DIR).unwrap_or_else(|e| panic!("{e}")) {
        let text = esp
            .read(&format!("{ENTRIES_DIR}/{name}"))
            .unwrap_or_else(|e| panic!("{e}"));
        fs::write(entries.join(&name), text).unwrap_or_else(|e| panic!("copying {name}: {e}"));
    }
    // A stand-in for each kernel: EspState reads only whether it is there and
    // not empty (an empty one is no kernel, as to systemd-boot).
    for slot in Slot::ALL {
        let kernel = slot.kernel_path();
        if esp.is_file(&kernel) {
            let bytes = esp.read(&kernel).unwrap_or_else(|e| panic!("{e}"));
            let copy = dir.path().join(&kernel);
            fs::create_dir_all(copy.parent().expect("berth/<slot>/vmlinuz has a folder"))
                .and_then(|()| fs::write(&copy, &bytes[..bytes.len().min(1)]))
                .unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
        }
    }
    EspState::read(dir.path())
        .unwrap_or_else(|e| panic!("reading the ESP entries of {}: {e}", image.display()))
}

/// Writes a file on a disk image's ESP, offline (its folder must exist).
pub fn write_esp_file(image: &Path, path: &str, content: &str) {
    let image = open_writable(image);
    let esp = image.esp().unwrap_or_else(|e| panic!("{e}"));
    esp.write(path, content.as_bytes())
        .and_then(|()| esp.unmount())
        .unwrap_or_else(|e| panic!("{e}"));
}
