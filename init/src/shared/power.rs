//! The end of every boot: the last steps of a shutdown, and the reboot that any
//! fatal error becomes. None of these functions return.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{sync, Pid};

/// How long a fatal error stays on the console before the reboot.
pub const FATAL_DELAY: Duration = Duration::from_secs(5);
/// How long the final shutdown waits for killed leftovers to be reaped.
const REAP_LEFTOVERS: Duration = Duration::from_secs(2);

/// What the machine does at the end of a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

impl PowerAction {
    fn mode(self) -> RebootMode {
        match self {
            PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
            PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
        }
    }

    /// The last line printed before the machine goes away.
    pub fn final_line(self) -> &'static str {
        match self {
            PowerAction::PowerOff => "powering off",
            PowerAction::Reboot => "rebooting",
        }
    }
}

/// Logs a fatal error, leaves it on the console for a moment and reboots: the
/// boot loader's counter then runs down toward the other slot.
pub fn fatal(message: &str) -> ! {
    log!("fatal: {message}");
    log!("rebooting in {} s", FATAL_DELAY.as_secs());
    std::thread::sleep(FATAL_DELAY);
    sync();
    crate::shared::mounts::unmount_all();
    sync();
    log!("{}", PowerAction::Reboot.final_line());
    power(PowerAction::Reboot)
}

/// What happens once the booted slot's root has been refused (it failed dm-verity,
/// or could not be verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedSlotAction {
    /// Stop with the reason on the console: the root never runs, and the machine
    /// does not reboot into the same slot over and over.
    Halt,
    /// Reboot: the booted entry is on trial, so the boot loader's counter runs
    /// down and the other slot comes back.
    Reboot,
    /// The booted entry is blessed (a bad block in a slot that booted well
    /// before) and the other slot can boot: make the other slot boot next,
    /// record why, and reboot into it.
    FallBack,
}

/// Decides what a refused slot leads to, from the booted entry's boot counter
/// (read from the ESP): reboot while the entry counts and a reboot leads somewhere
/// else — it has tries left, or it has none and the other slot's entry can boot
/// (an exhausted entry sorts last). A blessed entry falls back to the other slot
/// when that one can boot. Halt when there is no entry (or a direct kernel
/// boot), and when nothing else can boot: a reboot would only boot the same
/// broken slot again, forever.
pub fn refused_slot_action(counting: Option<crate::shared::esp::Counting>) -> RefusedSlotAction {
    match counting {
        Some(crate::shared::esp::Counting {
            counter: Some(counter),
            other_can_boot,
        }) if counter.left > 0 || other_can_boot => RefusedSlotAction::Reboot,
        Some(crate::shared::esp::Counting {
            counter: None,
            other_can_boot: true,
        }) => RefusedSlotAction::FallBack,
        _ => RefusedSlotAction::Halt,
    }
}

/// Logs why the booted slot is refused and carries out [`refused_slot_action`]
/// (the early stage mounts the ESP read-only for a moment to read the counter).
pub fn refuse_slot(message: &str) -> ! {
    log!("{message}");
    let counting = match crate::shared::esp::counting_now() {
        Ok(counting) => Some(counting),
        Err(why) => {
            log!("cannot read the boot counter: {why}");
            None
        }
    };
    match refused_slot_action(counting) {
        RefusedSlotAction::Halt => halt(),
        RefusedSlotAction::FallBack => match crate::shared::esp::fall_back(message) {
            Ok(other) => {
                log!("the booted slot's entry is blessed and slot {other} can boot: it boots next; rebooting into it");
                sync();
                crate::shared::mounts::unmount_all();
                sync();
                log!("{}", PowerAction::Reboot.final_line());
                power(PowerAction::Reboot)
            }
            Err(why) => {
                log!("cannot fall back to the other slot: {why}");
                halt()
            }
        },
        RefusedSlotAction::Reboot => {
            let left = counting.and_then(|c| c.counter).map_or(0, |c| c.left);
            log!("the boot entry is on trial ({left} tries left): rebooting, so the boot loader falls back to the other slot");
            sync();
            crate::shared::mounts::unmount_all();
            sync();
            log!("{}", PowerAction::Reboot.final_line());
            power(PowerAction::Reboot)
        }
    }
}

/// Stops for good without powering off, so the last lines stay on the console:
/// sync, then sleep forever (PID 1 must not exit).
pub fn halt() -> ! {
    log!("system halted");
    sync();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The end of an orderly shutdown, once the containers are stopped (or past their
/// grace period): kill whatever is left, sync, unmount, sync, and power off or
/// reboot.
pub fn finish(action: PowerAction) -> ! {
    // Everything but PID 1: container leftovers, orphans, stray runtime processes.
    match kill(Pid::from_raw(-1), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(errno) => log!("killing remaining processes: {errno}"),
    }
    reap_all(REAP_LEFTOVERS);
    sync();
    crate::shared::mounts::unmount_all();
    sync();
    crate::run::watchdog::stop();
    log!("{}", action.final_line());
    power(action)
}

/// Reaps children until none is left or `limit` passes.
fn reap_all(limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(_) => {}
            // ECHILD: nothing left to wait for.
            Err(_) => return,
        }
    }
}

/// reboot(2); if even that fails there is nothing left to do but wait (PID 1 must
/// not exit: the kernel would panic, and with `panic=5` reboot anyway).
fn power(action: PowerAction) -> ! {
    let Err(errno) = reboot(action.mode());
    log!("reboot({:?}) failed: {errno}", action.mode());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_lines() {
        assert_eq!(PowerAction::PowerOff.final_line(), "powering off");
        assert_eq!(PowerAction::Reboot.final_line(), "rebooting");
        assert_eq!(PowerAction::PowerOff.mode(), RebootMode::RB_POWER_OFF);
    }

    #[test]
    fn refused_slots_reboot_only_while_the_counter_leads_elsewhere() {
        use crate::shared::esp::Counting;
        use berth_format::entries::Counter;
        let counting = |left, done, other_can_boot| {
            Some(Counting {
                counter: Some(Counter { left, done }),
                other_can_boot,
            })
        };
        assert_eq!(refused_slot_action(None), RefusedSlotAction::Halt);
        let blessed = Some(Counting {
            counter: None,
            other_can_boot: true,
        });
        assert_eq!(refused_slot_action(blessed), RefusedSlotAction::FallBack);
        let blessed_alone = Some(Counting {
            counter: None,
            other_can_boot: false,
        });
        assert_eq!(refused_slot_action(blessed_alone), RefusedSlotAction::Halt);
        assert_eq!(
            refused_slot_action(counting(2, 1, true)),
            RefusedSlotAction::Reboot
        );
        assert_eq!(
            refused_slot_action(counting(2, 1, false)),
            RefusedSlotAction::Reboot
        );
        assert_eq!(
            refused_slot_action(counting(0, 3, true)),
            RefusedSlotAction::Reboot
        );
        assert_eq!(
            refused_slot_action(counting(0, 3, false)),
            RefusedSlotAction::Halt
        );
    }
}
