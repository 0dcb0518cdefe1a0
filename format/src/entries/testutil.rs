//! Test helpers shared by the submodules: a scratch ESP folder and boot entries.

use std::fs;
use std::path::Path;

use super::{simulate_boot, EspState, ENTRIES_DIR};
use crate::layout::{BootEntry, Slot};

// ---- the state machine against a scratch ESP folder ----

pub(super) struct Esp(tempfile::TempDir);

impl Esp {
    /// An ESP with both slots' kernels and initramfs on it and no entries.
    pub(super) fn new() -> Esp {
        let dir = tempfile::tempdir().expect("tempdir");
        for slot in Slot::ALL {
            for path in [slot.kernel_path(), slot.initramfs_path()] {
                let path = dir.path().join(path);
                fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                fs::write(&path, b"boot file").expect("write");
            }
        }
        fs::create_dir_all(dir.path().join(ENTRIES_DIR)).expect("mkdir entries");
        fs::write(
            dir.path().join("loader/loader.conf"),
            crate::layout::LOADER_CONF,
        )
        .expect("loader.conf");
        Esp(dir)
    }

    /// Slot A as the builder leaves it: blessed, `version` = image version.
    pub(super) fn built(version: &str) -> Esp {
        let esp = Esp::new();
        esp.write("berth-a.conf", &boot_entry(Slot::A, version).render());
        esp
    }

    pub(super) fn path(&self) -> &Path {
        self.0.path()
    }

    pub(super) fn write(&self, name: &str, text: &str) {
        fs::write(self.path().join(ENTRIES_DIR).join(name), text).expect("write entry");
    }

    /// The file names in `loader/entries`, sorted; asserts no temporary file
    /// was left behind.
    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path().join(ENTRIES_DIR))
            .expect("read entries")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        assert!(
            names
                .iter()
                .all(|n| !n.starts_with('.') && !n.ends_with(".tmp")),
            "temporary file left behind: {names:?}"
        );
        names
    }

    pub(super) fn state(&self) -> EspState {
        EspState::read(self.path()).expect("read state")
    }

    pub(super) fn next(&self) -> Option<Slot> {
        self.state().next_boot()
    }

    pub(super) fn boot(&self) -> Option<Slot> {
        simulate_boot(self.path()).expect("boot")
    }
}

pub(super) fn boot_entry(slot: Slot, version: &str) -> BootEntry {
    BootEntry {
        title: format!("berth hello {version}"),
        version: version.into(),
        slot,
        root_partuuid: format!("0000000{}-0000-0000-0000-000000000000", slot.letter()),
        data_partuuid: "dddddddd-0000-0000-0000-000000000000".into(),
        verity: None,
        extra_cmdline: String::new(),
        arch: crate::Arch::X86_64,
    }
}
