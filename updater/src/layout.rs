//! The berth disk layout: partition labels and types, where each slot's kernel and
//! initramfs live on the ESP, the Type #1 boot entries, and the kernel command line
//! keys the init reads.
//!
//! | # | label    | type (Discoverable Partitions Specification) |
//! |---|----------|----------------------------------------------|
//! | 1 | `esp`    | EFI System Partition                         |
//! | 2 | `root-a` | root (x86-64)                                |
//! | 3 | `root-b` | root (x86-64)                                |
//! | 4 | `data`   | variable data (`/var`)                       |

use std::fmt;
use std::str::FromStr;

/// GPT partition label of the EFI system partition.
pub const ESP_LABEL: &str = "esp";
/// GPT partition label of the data partition, mounted on `/var`.
pub const DATA_LABEL: &str = "data";

/// EFI System Partition type GUID.
pub const ESP_TYPE_GUID: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// Root partition (x86-64) type GUID, from the Discoverable Partitions Specification.
pub const ROOT_X86_64_TYPE_GUID: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// Variable data partition (`/var`) type GUID, from the same specification.
pub const VAR_TYPE_GUID: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";

/// Where the init finds its resolved configuration inside the root filesystem.
pub const IMAGE_CONFIG_PATH: &str = "/etc/berth/image.toml";
/// Folder of the containers' OCI bundles inside the root filesystem
/// (`<name>/config.json` and `<name>/rootfs/`).
pub const CONTAINERS_DIR: &str = "/usr/lib/berth/containers";
/// The OCI runtime inside the root filesystem.
pub const CRUN_PATH: &str = "/usr/bin/crun";
/// Present only in the initramfs: the modules to load, one path per line, in order.
/// Its presence is what tells the init it runs as the early stage.
pub const INITRAMFS_MODULES_PATH: &str = "/etc/berth/initramfs-modules";

/// Kernel command line key naming the booted slot (`berth.slot=a`).
pub const CMDLINE_SLOT: &str = "berth.slot";
/// Kernel command line key naming the data partition (`berth.data=PARTUUID=…`).
pub const CMDLINE_DATA: &str = "berth.data";
/// Boot loader menu sort key shared by all berth entries.
pub const SORT_KEY: &str = "berth";

/// One of the two A/B slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// Both slots, A first.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The slot's letter as used in paths and on the command line: `a` or `b`.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The slot's GPT partition label: `root-a` or `root-b`.
    pub fn partition_label(self) -> &'static str {
        match self {
            Slot::A => "root-a",
            Slot::B => "root-b",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Path of the slot's kernel on the ESP, relative to its root.
    pub fn kernel_path(self) -> String {
        format!("berth/{}/vmlinuz", self.letter())
    }

    /// Path of the slot's initramfs on the ESP, relative to its root.
    pub fn initramfs_path(self) -> String {
        format!("berth/{}/initramfs.img", self.letter())
    }

    /// Boot entry id of the slot, without counter or `.conf`: `berth-a`.
    pub fn entry_id(self) -> String {
        format!("berth-{}", self.letter())
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.letter())
    }
}

/// A slot name that is neither `a` nor `b`.
#[derive(Debug, thiserror::Error)]
#[error("unknown slot {0:?}: expected \"a\" or \"b\"")]
pub struct UnknownSlot(pub String);

impl FromStr for Slot {
    type Err = UnknownSlot;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            other => Err(UnknownSlot(other.to_string())),
        }
    }
}

/// A systemd-boot Type #1 boot entry for one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub title: String,
    /// Image version; systemd-boot boots the highest `version` first within a sort key.
    pub version: String,
    pub slot: Slot,
    /// PARTUUID (lowercase, hyphenated) of the slot's root partition.
    pub root_partuuid: String,
    /// PARTUUID of the data partition.
    pub data_partuuid: String,
    /// Extra kernel command line from the recipe, appended last.
    pub extra_cmdline: String,
}

impl BootEntry {
    /// The kernel command line of this entry.
    pub fn cmdline(&self) -> String {
        // panic=5: a kernel panic (for instance PID 1 dying) reboots, so the boot
        // counter runs down instead of the machine hanging forever.
        let mut line = format!(
            "root=PARTUUID={} ro {}={} {}=PARTUUID={} console=ttyS0 panic=5",
            self.root_partuuid, CMDLINE_SLOT, self.slot, CMDLINE_DATA, self.data_partuuid
        );
        if !self.extra_cmdline.trim().is_empty() {
            line.push(' ');
            line.push_str(self.extra_cmdline.trim());
        }
        line
    }

    /// The entry file's content.
    pub fn render(&self) -> String {
        format!(
            "title {title}\nversion {version}\nsort-key {sort}\nlinux /{kernel}\ninitrd /{initrd}\noptions {options}\n",
            title = self.title,
            version = self.version,
            sort = SORT_KEY,
            kernel = self.slot.kernel_path(),
            initrd = self.slot.initramfs_path(),
            options = self.cmdline(),
        )
    }
}

/// The `loader/loader.conf` berth writes: no menu, and deliberately no `default`
/// line (systemd-boot 252 includes the boot counter in the entry id, so a default
/// either stops matching or pins an exhausted entry; see BOOT-FACTS.md).
pub const LOADER_CONF: &str = "timeout 0\nconsole-mode keep\neditor no\n";

/// What the init needs from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCmdline {
    /// `root=PARTUUID=…`, lowercased.
    pub root_partuuid: Option<String>,
    /// `berth.data=PARTUUID=…`, lowercased.
    pub data_partuuid: Option<String>,
    /// `berth.slot=a|b`.
    pub slot: Option<Slot>,
}

impl KernelCmdline {
    /// Parses `/proc/cmdline`; unknown words are ignored (the kernel owns most of them).
    pub fn parse(line: &str) -> KernelCmdline {
        let mut out = KernelCmdline::default();
        for word in line.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "root" => out.root_partuuid = partuuid(value),
                k if k == CMDLINE_DATA => out.data_partuuid = partuuid(value),
                k if k == CMDLINE_SLOT => out.slot = value.parse().ok(),
                _ => {}
            }
        }
        out
    }
}

fn partuuid(value: &str) -> Option<String> {
    value
        .strip_prefix("PARTUUID=")
        .map(|u| u.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> BootEntry {
        BootEntry {
            title: "berth hello 1.0.0".into(),
            version: "1.0.0".into(),
            slot: Slot::A,
            root_partuuid: "11111111-2222-3333-4444-555555555555".into(),
            data_partuuid: "66666666-7777-8888-9999-aaaaaaaaaaaa".into(),
            extra_cmdline: " quiet ".into(),
        }
    }

    #[test]
    fn entry_renders_type1_keys() {
        let text = entry().render();
        assert!(text.contains("\nversion 1.0.0\n"));
        assert!(text.contains("\nsort-key berth\n"));
        assert!(text.contains("\nlinux /berth/a/vmlinuz\n"));
        assert!(text.contains("\ninitrd /berth/a/initramfs.img\n"));
        assert!(text.ends_with("panic=5 quiet\n"), "{text}");
    }

    #[test]
    fn cmdline_round_trips_through_the_parser() {
        let parsed = KernelCmdline::parse(&format!("BOOT_IMAGE=x {} foo", entry().cmdline()));
        assert_eq!(parsed.slot, Some(Slot::A));
        assert_eq!(
            parsed.root_partuuid.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(
            parsed.data_partuuid.as_deref(),
            Some("66666666-7777-8888-9999-aaaaaaaaaaaa")
        );
    }

    #[test]
    fn parser_lowercases_and_ignores_other_roots() {
        let parsed = KernelCmdline::parse("root=/dev/vda2 berth.slot=B");
        assert_eq!(parsed.root_partuuid, None);
        assert_eq!(parsed.slot, Some(Slot::B));
        let parsed = KernelCmdline::parse("root=PARTUUID=ABCD berth.slot=c");
        assert_eq!(parsed.root_partuuid.as_deref(), Some("abcd"));
        assert_eq!(parsed.slot, None);
    }

    #[test]
    fn slots_name_their_paths() {
        assert_eq!(Slot::B.kernel_path(), "berth/b/vmlinuz");
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.partition_label(), "root-b");
        assert_eq!(Slot::A.entry_id(), "berth-a");
    }
}
