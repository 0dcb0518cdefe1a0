//! berth-init: PID 1 of a berth image.
//!
//! In the initramfs (where `/etc/berth/initramfs-modules` exists) it runs the early
//! stage: modules, root partition, switch_root, exec `/sbin/init`. In the root it
//! runs the main stage: file systems, network, then the containers, supervised
//! until a poweroff or reboot. It never exits and never panics: what it cannot
//! survive becomes a logged reboot, and a root that fails dm-verity a refused slot.

#[macro_use]
mod log;

// The source follows the boot: the early stage (initramfs), then the main stage
// as it runs, system setup, network, the run loop; `shared` holds what both
// stages use.
mod early;
mod net;
mod run;
mod shared;
mod system;

use std::path::Path;

use berth_format::layout::INITRAMFS_MODULES_PATH;

use crate::shared::power;

const USAGE: &str = "\
berth-init: the init (PID 1) of a berth image.
It boots the system and its containers and must be started by the kernel;
run by hand it does nothing.
";

fn main() {
    if std::process::id() != 1 {
        eprint!("{USAGE}");
        std::process::exit(2);
    }
    if Path::new(INITRAMFS_MODULES_PATH).exists() {
        match early::run() {
            refused @ early::EarlyError::SlotRefused { .. } => {
                power::refuse_slot(&refused.to_string())
            }
            other => power::fatal(&format!("early stage: {other}")),
        }
    }
    power::fatal(&system::run().to_string())
}
