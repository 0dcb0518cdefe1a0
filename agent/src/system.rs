//! What the device agent needs to know about the running system: which slot is
//! booted, what image runs, where each slot's partition is, where the ESP is
//! mounted, where the trust anchors and the state file are. [`System::discover`]
//! finds all of it on a device; tests build a `System` over scratch files.

use std::path::{Path, PathBuf};

use berth_format::blockdev::{self, Roots};
use berth_format::image_config::ImageConfig;
use berth_format::layout::{
    KernelCmdline, Slot, DATA_LABEL, DATA_REPORT_PATH, ESP_MOUNT, IMAGE_CONFIG_PATH, KEYS_DIR,
    UPDATE_STATE_PATH,
};

/// Why the running system could not be described.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    ImageConfig { path: PathBuf, message: String },
    #[error(
        "the kernel command line has no {0}: this system was not booted from a berth boot entry"
    )]
    Cmdline(&'static str),
    #[error(transparent)]
    Disk(#[from] blockdev::NotFound),
    #[error("the booted root PARTUUID={partuuid} on {disk} is neither slot's root partition")]
    RootNotASlot { disk: String, partuuid: String },
    #[error("the boot disk {disk} has no partition labelled {label:?}")]
    NoPartition { disk: String, label: String },
    #[error("partition {label:?} on {disk} has no device node")]
    NoNode { disk: String, label: String },
    #[error("the ESP is not mounted on {0} (no loader/ folder there)")]
    NoEsp(PathBuf),
}

/// One slot's root partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDevice {
    pub slot: Slot,
    /// Device node (or, in tests, a regular file standing in for it).
    pub node: PathBuf,
    /// PARTUUID, lowercase.
    pub partuuid: String,
    /// Partition size in bytes.
    pub size: u64,
}

/// The running image's identity (from `/etc/berth/image.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningImage {
    pub name: String,
    pub version: String,
    pub compatible: String,
}

/// The running system, as the agent sees it.
#[derive(Debug, Clone)]
pub struct System {
    /// The mounted ESP.
    pub esp: PathBuf,
    /// The update state file (on the data partition).
    pub state_path: PathBuf,
    /// What became of the data partition at this boot, written by the init
    /// ([`berth_format::layout::DATA_REPORT_PATH`] on a device).
    pub data_report: PathBuf,
    /// Folder of trusted public keys.
    pub keys_dir: PathBuf,
    /// The slot the running system booted from.
    pub booted: Slot,
    pub image: RunningImage,
    /// Slot A's and slot B's partitions, in that order.
    pub slots: [SlotDevice; 2],
    /// PARTUUID of the data partition, for the boot entries the agent writes.
    pub data_partuuid: String,
    /// What looked wrong but was worked around (a `berth.slot=` word that
    /// disagrees with the booted root); [`System::discover`] prints them.
    pub warnings: Vec<String>,
}

impl System {
    /// The real system: `/proc/cmdline`, `/etc/berth/image.toml`, the boot disk's
    /// GPT through `/sys` and `/dev`, the ESP on `/efi`.
    pub fn discover() -> Result<System, SystemError> {
        let cmdline = read(Path::new("/proc/cmdline"))?;
        let image = read(Path::new(IMAGE_CONFIG_PATH))?;
        let system = System::from_parts(
            &cmdline,
            &image,
            &Roots::system(),
            Path::new(ESP_MOUNT),
            Path::new(KEYS_DIR),
            Path::new(UPDATE_STATE_PATH),
        )?;
        for warning in &system.warnings {
            eprintln!("berth-update: {warning}");
        }
        Ok(system)
    }

    /// A system from its parts (the kernel command line, the image.toml text,
    /// where sysfs and /dev are, where the ESP is mounted, where the keys and the
    /// state file are).
    pub fn from_parts(
        cmdline: &str,
        image_toml: &str,
        roots: &Roots,
        esp: &Path,
        keys_dir: &Path,
        state_path: &Path,
    ) -> Result<System, SystemError> {
        let cmdline = KernelCmdline::parse(cmdline);
        let root = cmdline
            .root_partuuid
            .as_deref()
            .ok_or(SystemError::Cmdline("root=PARTUUID="))?;
        let config: ImageConfig =
            toml::from_str(image_toml).map_err(|err| SystemError::ImageConfig {
                path: PathBuf::from(IMAGE_CONFIG_PATH),
                message: err.message().to_string(),
            })?;
        let disk = blockdev::disk_with_partuuid(roots, root)?;
        // The booted slot is the one whose partition the init mounted as the
        // root (the last root= word, as the kernel and the init read it), not
        // what a berth.slot= word says: a word can be wrong, the root cannot.
        let booted = disk
            .slot_of(root)
            .ok_or_else(|| SystemError::RootNotASlot {
                disk: disk.node.display().to_string(),
                partuuid: root.to_string(),
            })?;
        let mut warnings = Vec::new();
        if let Some(named) = cmdline.slot.filter(|named| *named != booted) {
            warnings.push(format!(
                "the kernel command line says berth.slot={named} but the root \
                 (PARTUUID={root}) is slot {booted}'s partition: slot {booted} is the booted slot"
            ));
        }
        let part = |label: &str| {
            disk.by_label(label)
                .ok_or_else(|| SystemError::NoPartition {
                    disk: disk.node.display().to_string(),
                    label: label.to_string(),
                })
        };
        let slot_device = |slot: Slot| -> Result<SlotDevice, SystemError> {
            let found = part(slot.partition_label())?;
            let node = found.node.clone().ok_or_else(|| SystemError::NoNode {
                disk: disk.node.display().to_string(),
                label: slot.partition_label().to_string(),
            })?;
            Ok(SlotDevice {
                slot,
                node,
                partuuid: found.gpt.part_guid.to_ascii_lowercase(),
                size: found.size(disk.block_size),
            })
        };
        let slots = [slot_device(Slot::A)?, slot_device(Slot::B)?];
        let data_partuuid = part(DATA_LABEL)?.gpt.part_guid.to_ascii_lowercase();
        if !esp.join("loader").is_dir() {
            return Err(SystemError::NoEsp(esp.to_path_buf()));
        }
        Ok(System {
            esp: esp.to_path_buf(),
            state_path: state_path.to_path_buf(),
            data_report: PathBuf::from(DATA_REPORT_PATH),
            keys_dir: keys_dir.to_path_buf(),
            booted,
            image: RunningImage {
                name: config.image.name,
                version: config.image.version,
                compatible: config.image.compatible,
            },
            slots,
            data_partuuid,
            warnings,
        })
    }

    /// The device's rollout seed: `seed` next to the state file
    /// ([`berth_format::layout::UPDATE_SEED_PATH`] on a device).
    pub fn seed_path(&self) -> PathBuf {
        self.state_path.with_file_name("seed")
    }

    /// The partition of `slot`.
    pub fn slot(&self, slot: Slot) -> &SlotDevice {
        match slot {
            Slot::A => &self.slots[0],
            Slot::B => &self.slots[1],
        }
    }

    /// The slot an install writes: the one not running.
    pub fn target(&self) -> Slot {
        self.booted.other()
    }
}

fn read(path: &Path) -> Result<String, SystemError> {
    std::fs::read_to_string(path).map_err(|source| SystemError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Asks PID 1 (berth-init) for an orderly reboot: SIGINT, which it treats like
/// Ctrl-Alt-Del (containers stopped, file systems synced, then the reboot).
pub fn request_reboot() -> std::io::Result<()> {
    // SAFETY: kill has no memory effects; PID 1 is the init.
    let rc = unsafe { libc::kill(1, libc::SIGINT) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_format::blockdev::fake;

    fn fake_tree() -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        let roots = fake::tree_in(dir.path(), true);
        (dir, roots)
    }

    const IMAGE: &str = "[image]\nname = \"hello\"\nversion = \"1.0.0\"\ncompatible = \"hello\"\nhostname = \"hello\"\n";

    #[test]
    fn discovers_slots_from_the_command_line_and_the_gpt() {
        let (dir, roots) = fake_tree();
        let esp = dir.path().join("efi");
        std::fs::create_dir_all(esp.join("loader")).unwrap();
        let cmdline = format!(
            "root=PARTUUID={} ro berth.slot=a console=ttyS0",
            fake::ROOT_A_UUID
        );
        let system = System::from_parts(
            &cmdline,
            IMAGE,
            &roots,
            &esp,
            Path::new("/k"),
            Path::new("/s"),
        )
        .unwrap();
        assert_eq!(system.booted, Slot::A);
        assert_eq!(system.target(), Slot::B);
        assert_eq!(system.slot(Slot::B).node, roots.dev.join("vda3"));
        assert_eq!(system.slot(Slot::B).partuuid, fake::ROOT_B_UUID);
        assert_eq!(system.slot(Slot::A).size, 2 * 1024 * 1024);
        assert_eq!(system.data_partuuid, fake::DATA_UUID);
        assert_eq!(system.image.version, "1.0.0");
    }

    #[test]
    fn missing_pieces_are_named() {
        let (dir, roots) = fake_tree();
        let esp = dir.path().join("efi");
        let keys = Path::new("/k");
        let state = Path::new("/s");
        let no_root =
            System::from_parts("berth.slot=a", IMAGE, &roots, &esp, keys, state).unwrap_err();
        assert!(no_root.to_string().contains("root=PARTUUID="), "{no_root}");
        let data_root = System::from_parts(
            &format!("root=PARTUUID={} berth.slot=a", fake::DATA_UUID),
            IMAGE,
            &roots,
            &esp,
            keys,
            state,
        )
        .unwrap_err();
        assert!(
            matches!(data_root, SystemError::RootNotASlot { .. }),
            "{data_root}"
        );
        let no_esp = System::from_parts(
            &format!("root=PARTUUID={} berth.slot=b", fake::ROOT_B_UUID),
            IMAGE,
            &roots,
            &esp,
            keys,
            state,
        )
        .unwrap_err();
        assert!(matches!(no_esp, SystemError::NoEsp(_)), "{no_esp}");
    }

    #[test]
    fn the_booted_slot_is_the_booted_roots_not_a_word_on_the_command_line() {
        let (dir, roots) = fake_tree();
        let esp = dir.path().join("efi");
        std::fs::create_dir_all(esp.join("loader")).unwrap();
        let at = |cmdline: &str| {
            System::from_parts(
                cmdline,
                IMAGE,
                &roots,
                &esp,
                Path::new("/k"),
                Path::new("/s"),
            )
            .unwrap()
        };
        // A recipe's extra words come last, and the last berth.slot= wins.
        let lying = at(&format!(
            "root=PARTUUID={} ro berth.slot=a console=ttyS0 berth.slot=b",
            fake::ROOT_A_UUID
        ));
        assert_eq!(lying.booted, Slot::A);
        assert_eq!(lying.target(), Slot::B);
        assert_eq!(lying.warnings.len(), 1, "{:?}", lying.warnings);
        assert!(
            lying.warnings[0].contains("berth.slot=b"),
            "{:?}",
            lying.warnings
        );
        // No word at all: the root still tells.
        let bare = at(&format!("root=PARTUUID={}", fake::ROOT_B_UUID));
        assert_eq!(bare.booted, Slot::B);
        assert!(bare.warnings.is_empty());
    }
}
