//! The berth disk layout: partition labels and types, where each slot's kernel and
//! initramfs live on the ESP, the Type #1 boot entries, and the kernel command line
//! keys the init reads.
//!
//! | # | label    | type (Discoverable Partitions Specification) |
//! |---|----------|----------------------------------------------|
//! | 1 | `esp`    | EFI System Partition                         |
//! | 2 | `root-a` | root (x86-64 or arm64, [`Arch::root_type_guid`]) |
//! | 3 | `root-b` | root (the same)                              |
//! | 4 | `data`   | variable data (`/var`)                       |

use std::fmt;
use std::str::FromStr;

pub use crate::arch::Arch;

/// Logical sector size of berth disk images, in bytes: the unit of the GPT's LBAs
/// (the builder writes 512-byte sectors; QEMU's and most real disks' default).
pub const SECTOR_SIZE: u64 = 512;

/// GPT partition label of the EFI system partition.
pub const ESP_LABEL: &str = "esp";
/// GPT partition label of the data partition, mounted on `/var`.
pub const DATA_LABEL: &str = "data";

/// EFI System Partition type GUID.
pub const ESP_TYPE_GUID: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// Variable data partition (`/var`) type GUID, from the same specification.
pub const VAR_TYPE_GUID: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";

/// Where the init finds its resolved configuration inside the root filesystem.
pub const IMAGE_CONFIG_PATH: &str = "/etc/berth/image.toml";
/// Folder of the containers' OCI bundles inside the root filesystem
/// (`<name>/config.json` and `<name>/rootfs/`).
pub const CONTAINERS_DIR: &str = "/usr/lib/berth/containers";
/// The OCI runtime inside the root filesystem.
/// Named volumes: `<VOLUMES_DIR>/<volume>`, on the data partition.
pub const VOLUMES_DIR: &str = "/var/lib/berth/volumes";
/// Per-container state on the data partition (a writable root's overlay layers).
pub const CONTAINER_STATE_DIR: &str = "/var/lib/berth/containers";
/// The DNS configuration every host-network container sees as /etc/resolv.conf.
pub const RESOLV_CONF: &str = "/run/berth/resolv.conf";
/// The cgroup (below the cgroup2 root) of container `<name>` is
/// `<CGROUP_PARENT>/<name>/<CGROUP_LEAF>`: the init reads the middle one's
/// `memory.events`, which outlives the runtime's leaf.
pub const CGROUP_PARENT: &str = "/berth";
pub const CGROUP_LEAF: &str = "ctr";
/// Path of `/usr/bin/crun` in the root.
pub const CRUN_PATH: &str = "/usr/bin/crun";
/// Present only in the initramfs: the modules to load, one path per line, in order.
/// Its presence is what tells the init it runs as the early stage.
pub const INITRAMFS_MODULES_PATH: &str = "/etc/berth/initramfs-modules";

/// Where the init mounts the ESP (read-write) in the running system; the device
/// agent and the boot assessment edit boot entries there.
pub const ESP_MOUNT: &str = "/efi";
/// Folder of the update trust anchors (minisign public keys, `*.pub`) inside the
/// root filesystem.
pub const KEYS_DIR: &str = "/etc/berth/keys";
/// The device agent inside the root filesystem.
pub const UPDATE_AGENT_PATH: &str = "/usr/bin/berth-update";
/// Where the outcome of the last install, boot assessment and rollback is kept
/// (on the data partition, so it survives slot switches).
pub const UPDATE_STATE_PATH: &str = "/var/lib/berth/update/state.toml";
/// The CAs the update agent trusts for https:// (the recipe's `[update] ca`);
/// without it, the roots compiled into the agent.
pub const UPDATE_CA_PATH: &str = "/etc/berth/update-ca.pem";
/// The lock every writing `berth-update` holds (on the tmpfs: no stale lock
/// survives a reboot).
pub const UPDATE_LOCK_PATH: &str = "/run/berth/update.lock";
/// The device's random rollout seed (64 hex digits), next to the state file:
/// it places the device in every release's rollout waves, the same place each
/// time. Created by the agent on first use.
pub const UPDATE_SEED_PATH: &str = "/var/lib/berth/update/seed";
/// What became of the data partition at this boot (mounted, repaired, or not
/// mounted and `/var` a tmpfs), written by the init on the tmpfs `/run`.
pub const DATA_REPORT_PATH: &str = "/run/berth/data.toml";
/// `e2fsck` inside the root filesystem (Debian's e2fsprogs, with its shared
/// libraries): the init checks and repairs the data partition with it.
pub const E2FSCK_PATH: &str = "/sbin/e2fsck";
/// dosfstools' checker, run on the ESP before the main stage mounts it when
/// the last mount did not end cleanly.
pub const FSCK_FAT_PATH: &str = "/sbin/fsck.fat";
/// The data partition's reserved blocks (mkfs.ext4 keeps 5 % by default)
/// belong to this user id, which no process runs as, instead of root: ext4
/// then lets only processes with `CAP_SYS_RESOURCE` (the init, the update
/// agent; no container unless the recipe grants it) use them, so a container
/// running as root cannot fill what the system needs to update and bless.
pub const DATA_RESERVE_UID: u32 = 0xFFFF_FFFE;
/// The per-device provisioning file on the mounted ESP (read by the init).
pub const PROVISION_ESP_FILE: &str = "/efi/berth/provision.toml";
/// Where the init keeps the provisioning settings it accepted (on the data
/// partition); the device agent reads `[update] repository` from it.
pub const PROVISION_SAVED_FILE: &str = "/var/lib/berth/provision.toml";
/// The running program's architecture as bundle manifests name it (the
/// Discoverable Partitions Specification's spelling): on a device, the agent
/// refuses a bundle for any other.
pub const ARCHITECTURE: &str = Arch::native().manifest_name();

/// Kernel command line key naming the booted slot (`berth.slot=a`).
pub const CMDLINE_SLOT: &str = "berth.slot";
/// Kernel command line key naming the data partition (`berth.data=PARTUUID=…`).
pub const CMDLINE_DATA: &str = "berth.data";
/// Kernel command line key: the dm-verity root hash of the slot's root filesystem
/// (lowercase hex). When present, the init refuses to mount the root without
/// verity.
pub const CMDLINE_VERITY_ROOTHASH: &str = "berth.verity.roothash";
/// Kernel command line key: the verity salt (lowercase hex, may be `-` for none).
pub const CMDLINE_VERITY_SALT: &str = "berth.verity.salt";
/// Kernel command line key: number of 4096-byte data blocks covered by verity.
pub const CMDLINE_VERITY_BLOCKS: &str = "berth.verity.blocks";
/// Kernel command line key: byte offset of the hash tree in the slot partition.
pub const CMDLINE_VERITY_HASH_OFFSET: &str = "berth.verity.hashoffset";
/// Why a word of a recipe's extra kernel command line is refused: it is one of
/// the words berth itself writes into a boot entry ([`BootEntry::cmdline`]), or
/// one that would change what the kernel boots into. Appended after berth's own
/// words, the kernel (and [`KernelCmdline::parse`]) would take the recipe's
/// instead: another root, no verity, an init that is not berth's, a panic that
/// never reboots. `None`: the word is the recipe's to add.
pub fn reserved_cmdline_word(word: &str) -> Option<&'static str> {
    let key = word.split_once('=').map_or(word, |(key, _)| key);
    match key {
        "root" | "rootfstype" | "rootflags" | "ro" | "rw" => {
            Some("berth names the slot's root partition itself and mounts it read-only")
        }
        "init" | "rdinit" => Some("berth-init is PID 1"),
        "panic" => Some("berth sets panic=5 so a failed boot reboots and counts down"),
        "console" => Some("berth's console (ttyS0, ttyAMA0 on arm64) carries the init's log"),
        key if key.starts_with("berth.") || key == "berth" => {
            Some("berth.* words are berth's own (slot, data partition, dm-verity)")
        }
        _ => None,
    }
}

/// dm-verity block size berth uses for both data and hash blocks.
pub const VERITY_BLOCK_SIZE: u64 = 4096;

/// Boot loader menu sort key shared by all berth entries.
pub const SORT_KEY: &str = "berth";
/// Key of the comment line in a boot entry that carries the slot's image version
/// when the entry's `version` line is a boot-order rank
/// (`# berth-image-version 1.1.0`).
pub const IMAGE_VERSION_COMMENT: &str = "berth-image-version";

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

impl serde::Serialize for Slot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.letter())
    }
}

impl<'de> serde::Deserialize<'de> for Slot {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
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
    /// dm-verity parameters of the slot's root, when it has a hash tree.
    pub verity: Option<VerityParams>,
    /// Extra kernel command line from the recipe, appended last.
    pub extra_cmdline: String,
    /// The image's architecture: it names the serial console.
    pub arch: Arch,
}

/// How the init sets up dm-verity for a slot: the hash tree (format 1, sha256,
/// 4096-byte blocks, no superblock) follows the filesystem in the same partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Root hash, lowercase hex (64 characters for sha256).
    pub root_hash: String,
    /// Salt, lowercase hex (empty for none).
    pub salt: String,
    /// Data blocks covered (filesystem size / 4096, rounded up).
    pub data_blocks: u64,
    /// Byte offset of the hash tree's first block in the partition.
    pub hash_offset: u64,
}

impl VerityParams {
    /// Bytes of the slot content these parameters describe: the (padded)
    /// filesystem and the hash tree after it (format 1, sha256, 4096-byte
    /// blocks, 128 digests a hash block, no superblock; none for one block).
    pub fn slot_bytes(&self) -> u64 {
        const PER_BLOCK: u64 = VERITY_BLOCK_SIZE / 32;
        let mut tree = 0u64;
        let mut level = self.data_blocks;
        while level > 1 {
            level = level.div_ceil(PER_BLOCK);
            tree = tree.saturating_add(level);
        }
        self.hash_offset
            .saturating_add(tree.saturating_mul(VERITY_BLOCK_SIZE))
    }

    /// The command line words that carry these parameters.
    pub fn cmdline(&self) -> String {
        let salt = if self.salt.is_empty() {
            "-"
        } else {
            &self.salt
        };
        format!(
            "{CMDLINE_VERITY_ROOTHASH}={} {CMDLINE_VERITY_SALT}={salt} {CMDLINE_VERITY_BLOCKS}={} {CMDLINE_VERITY_HASH_OFFSET}={}",
            self.root_hash, self.data_blocks, self.hash_offset
        )
    }
}

impl BootEntry {
    /// The kernel command line of this entry.
    pub fn cmdline(&self) -> String {
        // panic=5: a kernel panic (for instance PID 1 dying) reboots, so the boot
        // counter runs down instead of the machine hanging forever.
        let mut line = format!(
            "root=PARTUUID={} ro {}={} {}=PARTUUID={} console={} panic=5",
            self.root_partuuid,
            CMDLINE_SLOT,
            self.slot,
            CMDLINE_DATA,
            self.data_partuuid,
            self.arch.console()
        );
        if let Some(verity) = &self.verity {
            line.push(' ');
            line.push_str(&verity.cmdline());
        }
        if !self.extra_cmdline.trim().is_empty() {
            line.push(' ');
            line.push_str(self.extra_cmdline.trim());
        }
        line
    }

    /// The entry file's content, with the image version as the entry's `version`
    /// (what the builder writes for the first slot).
    pub fn render(&self) -> String {
        self.render_with_version(&self.version, "")
    }

    /// The entry file's content with `boot_version` as the entry's `version` line
    /// (the boot-order rank, see `entries`) and the image version kept in a
    /// `# berth-image-version` comment line.
    pub fn render_ranked(&self, boot_version: &str) -> String {
        let comment = format!("# {IMAGE_VERSION_COMMENT} {}\n", self.version);
        self.render_with_version(boot_version, &comment)
    }

    /// Reads back an entry file berth wrote ([`render`](BootEntry::render) or
    /// [`render_ranked`](BootEntry::render_ranked)): the image version is the
    /// `# berth-image-version` comment when there is one, else the `version` line;
    /// the words [`cmdline`](BootEntry::cmdline) generates are stripped from
    /// `options` and the rest is kept as `extra_cmdline`.
    pub fn parse(text: &str) -> Result<BootEntry, EntryParseError> {
        let bad = |reason: String| EntryParseError(reason);
        let (mut title, mut version, mut image_version) = (None, None, None);
        let (mut linux, mut initrd, mut options) = (None, None, None);
        for line in text.lines() {
            let line = line.trim();
            if let Some(comment) = line.strip_prefix('#') {
                if let Some(v) = comment.trim().strip_prefix(IMAGE_VERSION_COMMENT) {
                    image_version = Some(v.trim().to_string());
                }
                continue;
            }
            let (key, value) = match line.split_once(char::is_whitespace) {
                Some((key, value)) => (key, value.trim().to_string()),
                None => (line, String::new()),
            };
            match key {
                "title" => title = Some(value),
                "version" => version = Some(value),
                "linux" => linux = Some(value),
                "initrd" => initrd = Some(value),
                "options" => options = Some(value),
                _ => {}
            }
        }
        let title = title.ok_or_else(|| bad("no title line".into()))?;
        let version = image_version
            .or(version)
            .ok_or_else(|| bad("no version line".into()))?;
        let linux = linux.ok_or_else(|| bad("no linux line".into()))?;
        let options = options.ok_or_else(|| bad("no options line".into()))?;
        let slot = Slot::ALL
            .into_iter()
            .find(|s| linux == format!("/{}", s.kernel_path()))
            .ok_or_else(|| bad(format!("linux {linux} is not a berth slot's kernel")))?;
        if initrd.as_deref() != Some(format!("/{}", slot.initramfs_path()).as_str()) {
            return Err(bad(format!(
                "initrd {:?} is not slot {slot}'s initramfs",
                initrd.unwrap_or_default()
            )));
        }
        let parsed = KernelCmdline::parse(&options);
        if let Some(error) = parsed.verity_error {
            return Err(bad(error));
        }
        let mut entry = BootEntry {
            title,
            version,
            slot,
            root_partuuid: parsed
                .root_partuuid
                .ok_or_else(|| bad("options have no root=PARTUUID=".into()))?,
            data_partuuid: parsed
                .data_partuuid
                .ok_or_else(|| bad(format!("options have no {CMDLINE_DATA}=PARTUUID=")))?,
            verity: parsed.verity,
            extra_cmdline: String::new(),
            // The console berth wrote tells the architecture (ttyAMA0: arm64).
            arch: Arch::ALL
                .into_iter()
                .find(|a| {
                    let word = format!("console={}", a.console());
                    options.split_whitespace().any(|w| w == word)
                })
                .unwrap_or_default(),
        };
        if parsed.slot != Some(slot) {
            return Err(bad(format!(
                "options name slot {:?} but the kernel is slot {slot}'s",
                parsed.slot.map(|s| s.letter())
            )));
        }
        let generated = entry.cmdline();
        let rest = options
            .strip_prefix(&generated)
            .filter(|rest| rest.is_empty() || rest.starts_with(' '))
            .ok_or_else(|| {
                bad(format!(
                    "options {options:?} do not start with the words berth writes ({generated:?})"
                ))
            })?;
        entry.extra_cmdline = rest.trim().to_string();
        Ok(entry)
    }

    fn render_with_version(&self, version: &str, comment: &str) -> String {
        format!(
            "title {title}\n{comment}version {version}\nsort-key {sort}\nlinux /{kernel}\ninitrd /{initrd}\noptions {options}\n",
            title = self.title,
            sort = SORT_KEY,
            kernel = self.slot.kernel_path(),
            initrd = self.slot.initramfs_path(),
            options = self.cmdline(),
        )
    }
}

/// A boot entry file that is not one berth wrote.
#[derive(Debug, thiserror::Error)]
#[error("not a berth boot entry: {0}")]
pub struct EntryParseError(pub String);

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
    /// The `berth.verity.*` words, when all four are present and well-formed.
    pub verity: Option<VerityParams>,
    /// Some but not all `berth.verity.*` words, or malformed ones: the init must
    /// refuse to boot rather than silently mount without verity.
    pub verity_error: Option<String>,
}

impl KernelCmdline {
    /// Parses `/proc/cmdline`; unknown words are ignored (the kernel owns most of them).
    pub fn parse(line: &str) -> KernelCmdline {
        let mut out = KernelCmdline::default();
        let (mut hash, mut salt, mut blocks, mut offset) = (None, None, None, None);
        for word in line.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "root" => out.root_partuuid = partuuid(value),
                k if k == CMDLINE_DATA => out.data_partuuid = partuuid(value),
                k if k == CMDLINE_SLOT => out.slot = value.parse().ok(),
                k if k == CMDLINE_VERITY_ROOTHASH => hash = Some(value.to_ascii_lowercase()),
                k if k == CMDLINE_VERITY_SALT => salt = Some(value.to_ascii_lowercase()),
                k if k == CMDLINE_VERITY_BLOCKS => blocks = Some(value.to_string()),
                k if k == CMDLINE_VERITY_HASH_OFFSET => offset = Some(value.to_string()),
                _ => {}
            }
        }
        match (hash, salt, blocks, offset) {
            (None, None, None, None) => {}
            (Some(hash), Some(salt), Some(blocks), Some(offset)) => {
                let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
                let salt = if salt == "-" { String::new() } else { salt };
                match (blocks.parse::<u64>(), offset.parse::<u64>()) {
                    (Ok(data_blocks), Ok(hash_offset))
                        if hash.len() == 64
                            && hex(&hash)
                            && hex(&salt)
                            && salt.len() % 2 == 0
                            && hash_offset % VERITY_BLOCK_SIZE == 0
                            && data_blocks > 0 =>
                    {
                        out.verity = Some(VerityParams {
                            root_hash: hash,
                            salt,
                            data_blocks,
                            hash_offset,
                        })
                    }
                    _ => out.verity_error = Some("malformed berth.verity.* parameters".into()),
                }
            }
            _ => out.verity_error = Some(
                "incomplete berth.verity.* parameters (need roothash, salt, blocks, hashoffset)"
                    .into(),
            ),
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
            verity: None,
            extra_cmdline: " quiet ".into(),
            arch: Arch::X86_64,
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
    fn a_slot_spans_its_filesystem_and_its_hash_tree() {
        let params = |data_blocks: u64| VerityParams {
            root_hash: "ab".repeat(32),
            salt: String::new(),
            data_blocks,
            hash_offset: data_blocks * 4096,
        };
        // One data block needs no tree; up to 128 one hash block; 129 need
        // two leaves and a root block; 128² + 1 need 129 + 2 + 1.
        for (blocks, tree) in [(1, 0), (2, 1), (128, 1), (129, 3), (16_385, 129 + 2 + 1)] {
            assert_eq!(
                params(blocks).slot_bytes(),
                (blocks + tree) * 4096,
                "{blocks} data blocks"
            );
        }
    }

    #[test]
    fn verity_parameters_round_trip_and_partial_ones_are_errors() {
        let mut e = entry();
        e.verity = Some(VerityParams {
            root_hash: "ab".repeat(32),
            salt: "0102".into(),
            data_blocks: 1000,
            hash_offset: 4096 * 1000,
        });
        let parsed = KernelCmdline::parse(&e.cmdline());
        assert_eq!(parsed.verity, e.verity);
        assert_eq!(parsed.verity_error, None);
        let partial = KernelCmdline::parse("berth.verity.roothash=abcd");
        assert!(partial.verity.is_none() && partial.verity_error.is_some());
        let odd = KernelCmdline::parse(&e.cmdline().replace("hashoffset=4096000", "hashoffset=7"));
        assert!(odd.verity.is_none() && odd.verity_error.is_some());
        let none = KernelCmdline::parse(&entry().cmdline());
        assert!(none.verity.is_none() && none.verity_error.is_none());
    }

    #[test]
    fn entries_parse_back_to_what_was_rendered() {
        let plain = entry();
        let mut verity = entry();
        verity.slot = Slot::B;
        verity.extra_cmdline = "quiet loglevel=3".into();
        verity.verity = Some(VerityParams {
            root_hash: "cd".repeat(32),
            salt: String::new(),
            data_blocks: 7,
            hash_offset: 7 * 4096,
        });
        let mut bare = entry();
        bare.extra_cmdline = String::new();
        let mut arm = entry();
        arm.arch = Arch::Arm64;
        assert!(
            arm.cmdline().contains(" console=ttyAMA0 "),
            "{}",
            arm.cmdline()
        );
        for e in [plain, verity, bare, arm] {
            let expected = BootEntry {
                extra_cmdline: e.extra_cmdline.trim().to_string(),
                ..e.clone()
            };
            assert_eq!(BootEntry::parse(&e.render()).unwrap(), expected);
            let ranked = BootEntry::parse(&e.render_ranked("3")).unwrap();
            assert_eq!(ranked, expected);
            assert_eq!(ranked.render(), e.render());
        }
    }

    #[test]
    fn foreign_entries_are_not_parsed() {
        let text = entry().render();
        for (from, to) in [
            ("linux /berth/a/vmlinuz", "linux /vmlinuz"),
            (
                "initrd /berth/a/initramfs.img",
                "initrd /berth/b/initramfs.img",
            ),
            ("berth.slot=a", "berth.slot=b"),
            ("options root=", "options quiet root="),
            (" panic=5", ""),
            ("title berth hello 1.0.0\n", ""),
        ] {
            let changed = text.replace(from, to);
            assert_ne!(changed, text, "{from}");
            assert!(BootEntry::parse(&changed).is_err(), "{changed}");
        }
    }

    #[test]
    fn slots_name_their_paths() {
        assert_eq!(Slot::B.kernel_path(), "berth/b/vmlinuz");
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.partition_label(), "root-b");
        assert_eq!(Slot::A.entry_id(), "berth-a");
    }

    #[test]
    fn every_word_berth_writes_is_reserved() {
        let mut verity = entry();
        verity.extra_cmdline = String::new();
        verity.verity = Some(VerityParams {
            root_hash: "ab".repeat(32),
            salt: String::new(),
            data_blocks: 10,
            hash_offset: 4096,
        });
        for word in verity.cmdline().split_ascii_whitespace() {
            assert!(reserved_cmdline_word(word).is_some(), "{word}");
        }
        for word in ["init=/bin/sh", "rdinit=/x", "berth.anything=1", "rw"] {
            assert!(reserved_cmdline_word(word).is_some(), "{word}");
        }
        for word in ["quiet", "loglevel=3", "rootwait", "berthold=1", "nomodeset"] {
            assert_eq!(reserved_cmdline_word(word), None, "{word}");
        }
    }
}
