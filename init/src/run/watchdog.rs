//! The hardware (or softdog) watchdog: when `/dev/watchdog` exists, the init
//! opens it (which arms it) and writes to it from its event loop every
//! [`PET_INTERVAL`]; a hung init stops petting and the watchdog resets the
//! machine. An orderly shutdown disarms it with the magic close (`V`, then
//! close) just before the final reboot(2) — after the file systems are
//! unmounted — so a poweroff is not turned into a reset.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The device node.
pub const DEVICE: &str = "/dev/watchdog";
/// Time between two writes (watchdog timeouts are 30 s or more by default:
/// i6300esb 30 s, softdog 60 s).
pub const PET_INTERVAL: Duration = Duration::from_secs(5);

/// The open device, shared by the event loop and the final shutdown step.
static OPEN: Mutex<Option<File>> = Mutex::new(None);

fn open_device() -> std::sync::MutexGuard<'static, Option<File>> {
    OPEN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens (arms) the watchdog when there is one. Returns when it is next due.
pub fn start(now: Instant) -> Option<Instant> {
    if !std::path::Path::new(DEVICE).exists() {
        return None;
    }
    match OpenOptions::new().write(true).open(DEVICE) {
        Ok(file) => {
            log!(
                "watchdog {DEVICE} armed: petting it every {} s",
                PET_INTERVAL.as_secs()
            );
            *open_device() = Some(file);
            Some(now + PET_INTERVAL)
        }
        Err(err) => {
            log!("opening watchdog {DEVICE}: {err}");
            None
        }
    }
}

/// Pets the watchdog; returns when it is next due.
pub fn pet(now: Instant) -> Option<Instant> {
    let mut device = open_device();
    let file = device.as_mut()?;
    if let Err(err) = file.write_all(b"\0") {
        log!("petting watchdog {DEVICE}: {err}");
    }
    Some(now + PET_INTERVAL)
}

/// Disarms the watchdog (magic close) before an orderly poweroff or reboot.
pub fn stop() {
    if let Some(mut file) = open_device().take() {
        match file.write_all(b"V") {
            Ok(()) => log!("watchdog stopped"),
            Err(err) => log!("stopping watchdog {DEVICE}: {err}"),
        }
    }
}
