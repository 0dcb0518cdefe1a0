//! berth-init: PID 1 of a berth image.
//!
//! In the initramfs (where `/etc/berth/initramfs-modules` exists) it runs the early
//! stage: modules, root partition, switch_root, exec `/sbin/init`. In the root it
//! runs the main stage: file systems, network, then the containers, supervised
//! until a poweroff or reboot. It never exits and never panics: what it cannot
//! survive becomes a logged reboot, and a root that fails dm-verity a refused slot.

#[macro_use]
mod log;

mod assess;
mod cmdline;
mod console;
mod containers;
mod dhcp;
mod dhcp_link;
mod early;
mod envmerge;
mod esp;
mod grow;
mod health;
mod input;
mod kmod;
mod kmsg;
mod logfile;
mod mounts;
mod net;
mod output;
mod power;
mod provision;
mod rtc;
mod runloop;
mod shell;
mod sntp;
mod supervisor;
mod system;
mod verity;
mod watchdog;

use std::path::Path;

use berth_format::layout::INITRAMFS_MODULES_PATH;

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
