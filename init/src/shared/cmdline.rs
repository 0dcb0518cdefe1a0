//! The kernel command line, as far as the init needs it.

use std::path::Path;

use berth_format::blockdev::{self, Roots};
use berth_format::{KernelCmdline, Slot};

/// Where the kernel publishes its command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

/// Failure to read the command line.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// `/proc/cmdline` could not be read (is /proc mounted?).
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Reads and parses the kernel command line from `path` (normally `/proc/cmdline`).
pub fn read(path: &Path) -> Result<KernelCmdline, CmdlineError> {
    let text = std::fs::read_to_string(path).map_err(|source| CmdlineError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(KernelCmdline::parse(&text))
}

/// What the early stage needs to find the root: the PARTUUID from `root=PARTUUID=…`.
/// `None` when the command line names the root some other way (or not at all),
/// which berth images never do.
pub fn root_partuuid(cmdline: &KernelCmdline) -> Option<&str> {
    cmdline
        .root_partuuid
        .as_deref()
        .filter(|uuid| looks_like_uuid(uuid))
}

/// The slot this system booted: the one whose root partition (by its GPT label,
/// `root-a` or `root-b`) `root=PARTUUID=…` names, which is the partition the
/// early stage mounted. A `berth.slot=` word that says otherwise is logged and
/// ignored: the root is what really runs.
pub fn booted_slot(roots: &Roots, cmdline: &KernelCmdline) -> Result<Slot, String> {
    let root = root_partuuid(cmdline).ok_or("the command line names no root=PARTUUID=")?;
    let disk = blockdev::disk_with_partuuid(roots, root).map_err(|e| e.to_string())?;
    let slot = disk
        .slot_of(root)
        .ok_or_else(|| format!("the root PARTUUID={root} is neither slot's partition"))?;
    if let Some(named) = cmdline.slot.filter(|named| *named != slot) {
        log!(
            "the command line says berth.slot={named} but the root PARTUUID={root} is slot {slot}'s: booted slot {slot}"
        );
    }
    Ok(slot)
}

/// The data partition's PARTUUID from `berth.data=PARTUUID=…`, if well-formed.
pub fn data_partuuid(cmdline: &KernelCmdline) -> Option<&str> {
    cmdline
        .data_partuuid
        .as_deref()
        .filter(|uuid| looks_like_uuid(uuid))
}

/// A lowercase hyphenated GUID: 8-4-4-4-12 hex digits. Anything else cannot match a
/// GPT entry, so it is better reported as malformed than waited for.
fn looks_like_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_format::blockdev::fake;

    const LINE: &str = "BOOT_IMAGE=/berth/a/vmlinuz root=PARTUUID=0FC63DAF-8483-4772-8E79-3D69D8477DE4 ro \
        berth.slot=a berth.data=PARTUUID=4d21b016-b534-45c2-a9fb-5c16e091fd2d console=ttyS0 panic=5 quiet\n";

    #[test]
    fn reads_a_berth_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmdline");
        std::fs::write(&path, LINE).unwrap();
        let cmdline = read(&path).unwrap();
        assert_eq!(
            root_partuuid(&cmdline),
            Some("0fc63daf-8483-4772-8e79-3d69d8477de4")
        );
        assert_eq!(
            data_partuuid(&cmdline),
            Some("4d21b016-b534-45c2-a9fb-5c16e091fd2d")
        );
        assert_eq!(cmdline.slot, Some(Slot::A));
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read(Path::new("/nonexistent/cmdline")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cmdline"), "{err}");
    }

    #[test]
    fn other_root_forms_are_not_a_partuuid() {
        let cmdline = KernelCmdline::parse("root=/dev/vda2 console=ttyS0");
        assert_eq!(root_partuuid(&cmdline), None);
        assert_eq!(data_partuuid(&cmdline), None);
        let cmdline = KernelCmdline::parse("root=PARTUUID=abcd berth.data=PARTUUID=");
        assert_eq!(root_partuuid(&cmdline), None);
        assert_eq!(data_partuuid(&cmdline), None);
    }

    #[test]
    fn uuid_shape() {
        assert!(looks_like_uuid("4d21b016-b534-45c2-a9fb-5c16e091fd2d"));
        assert!(!looks_like_uuid("4d21b016-b534-45c2-a9fb-5c16e091fd2"));
        assert!(!looks_like_uuid("4d21b016-b534-45c2-a9fb-5c16e091fd2g"));
        assert!(!looks_like_uuid("4d21b016b534-45c2-a9fb-5c16e091fd2d0"));
    }

    #[test]
    fn the_booted_slot_is_the_roots_partition_not_the_slot_word() {
        let dir = tempfile::tempdir().unwrap();
        let roots = fake::tree_in(dir.path(), true);
        let lying = KernelCmdline::parse(&format!(
            "root=PARTUUID={} ro berth.slot=a console=ttyS0 berth.slot=b",
            fake::ROOT_A_UUID
        ));
        assert_eq!(lying.slot, Some(Slot::B), "the last word wins when parsed");
        assert_eq!(booted_slot(&roots, &lying), Ok(Slot::A));
        let plain = KernelCmdline::parse(&format!("root=PARTUUID={}", fake::ROOT_B_UUID));
        assert_eq!(booted_slot(&roots, &plain), Ok(Slot::B));
        let data = KernelCmdline::parse(&format!("root=PARTUUID={}", fake::DATA_UUID));
        assert!(booted_slot(&roots, &data).is_err());
        assert!(booted_slot(&roots, &KernelCmdline::parse("berth.slot=a")).is_err());
    }
}
