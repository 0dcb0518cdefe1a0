//! The ACPI power button. QEMU's `system_powerdown` (and a real power button)
//! reaches PID 1 only as an input event: the kernel's `button` driver registers an
//! input device named "Power Button" and `evdev` gives it a `/dev/input/eventN`
//! node, where a press reads as `EV_KEY`/`KEY_POWER`/1. The run loop polls
//! every power button it found; a press begins a poweroff.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::EventLoop;
use crate::shared::power::PowerAction;

/// The input device name the ACPI button driver gives power buttons.
pub const POWER_BUTTON_NAME: &str = "Power Button";
/// `EV_KEY` from linux/input-event-codes.h.
pub const EV_KEY: u16 = 1;
/// `KEY_POWER` from linux/input-event-codes.h.
pub const KEY_POWER: u16 = 116;

/// Size of `struct timeval` at the head of each event (16 bytes on 64-bit).
const TIME_SIZE: usize = std::mem::size_of::<libc::timeval>();
/// Size of one `struct input_event`: time, then u16 type, u16 code, i32 value.
pub const EVENT_SIZE: usize = TIME_SIZE + 8;

/// One input event, without its time stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    /// A key press (not a release or an autorepeat) of the power key.
    pub fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == 1
    }
}

/// Decodes the whole events in `buf` (native byte order, as the kernel writes them);
/// a trailing partial event is ignored (evdev never returns one).
pub fn parse_events(buf: &[u8]) -> Vec<InputEvent> {
    buf.chunks_exact(EVENT_SIZE)
        .map(|raw| {
            let tail = &raw[TIME_SIZE..];
            InputEvent {
                kind: u16::from_ne_bytes([tail[0], tail[1]]),
                code: u16::from_ne_bytes([tail[2], tail[3]]),
                value: i32::from_ne_bytes([tail[4], tail[5], tail[6], tail[7]]),
            }
        })
        .collect()
}

/// The event device nodes of all input devices named "Power Button", found through
/// `<sys>/class/input/eventN/device/name`.
pub fn find_power_buttons(sys: &Path, dev: &Path) -> Vec<PathBuf> {
    let class = sys.join("class/input");
    let Ok(entries) = std::fs::read_dir(&class) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("event"))
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("device/name"))
                .is_ok_and(|name| name.trim() == POWER_BUTTON_NAME)
        })
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let devname = std::fs::read_to_string(entry.path().join("uevent"))
                .ok()
                .and_then(|text| {
                    text.lines()
                        .find_map(|line| line.strip_prefix("DEVNAME="))
                        .map(str::to_string)
                })
                .unwrap_or_else(|| format!("input/{name}"));
            dev.join(devname)
        })
        .collect();
    found.sort();
    found
}

/// Opens an event device for the event loop: read-only, non-blocking, close-on-exec.
pub fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Opens every power button, for the loop to poll.
pub(super) fn open_power_buttons() -> Vec<Option<File>> {
    let paths = find_power_buttons(Path::new("/sys"), Path::new("/dev"));
    if paths.is_empty() {
        log!(
            "no power button input device (kernel modules button and evdev): \
             ACPI power-off requests will not be seen"
        );
    }
    paths
        .iter()
        .filter_map(|path| match open(path) {
            Ok(file) => Some(Some(file)),
            Err(err) => {
                log!("opening power button {}: {err}", path.display());
                None
            }
        })
        .collect()
}

impl EventLoop {
    /// A power button is readable: a press begins a poweroff.
    pub(super) fn handle_button(&mut self, index: usize) {
        let Some(Some(file)) = self.buttons.get_mut(index) else {
            return;
        };
        let mut buf = [0u8; EVENT_SIZE * 16];
        let mut pressed = false;
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    pressed |= parse_events(&buf[..n])
                        .iter()
                        .any(InputEvent::is_power_press);
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => {
                    log!("power button: {err}; no longer watching it");
                    self.buttons[index] = None;
                    break;
                }
            }
        }
        if pressed {
            self.begin_shutdown(PowerAction::PowerOff, "power button pressed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn raw(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut out = vec![0xeeu8; TIME_SIZE];
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&code.to_ne_bytes());
        out.extend_from_slice(&value.to_ne_bytes());
        out
    }

    #[test]
    fn event_size_matches_libc() {
        assert_eq!(EVENT_SIZE, std::mem::size_of::<libc::input_event>());
    }

    #[test]
    fn parses_a_power_press_between_sync_events() {
        let mut buf = raw(EV_KEY, KEY_POWER, 1);
        buf.extend(raw(0, 0, 0)); // EV_SYN
        buf.extend(raw(EV_KEY, KEY_POWER, 0)); // release
        buf.extend(raw(EV_KEY, KEY_POWER, 2)); // autorepeat
        buf.extend([1, 2, 3]); // partial trailing bytes
        let events = parse_events(&buf);
        assert_eq!(events.len(), 4);
        assert_eq!(
            events[0],
            InputEvent {
                kind: EV_KEY,
                code: KEY_POWER,
                value: 1
            }
        );
        let presses: Vec<bool> = events.iter().map(InputEvent::is_power_press).collect();
        assert_eq!(presses, [true, false, false, false]);
    }

    #[test]
    fn other_keys_are_not_the_power_button() {
        assert!(!parse_events(&raw(EV_KEY, 28, 1))[0].is_power_press());
        assert!(!parse_events(&raw(2, KEY_POWER, 1))[0].is_power_press());
    }

    #[test]
    fn finds_power_buttons_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let input = sys.join("class/input");
        for (event, name, uevent) in [
            (
                "event0",
                "Power Button\n",
                Some("MAJOR=13\nMINOR=64\nDEVNAME=input/event0\n"),
            ),
            ("event1", "AT Translated Set 2 keyboard\n", None),
            ("event2", "Power Button\n", None),
        ] {
            fs::create_dir_all(input.join(event).join("device")).unwrap();
            fs::write(input.join(event).join("device/name"), name).unwrap();
            if let Some(uevent) = uevent {
                fs::write(input.join(event).join("uevent"), uevent).unwrap();
            }
        }
        // input0 is the device itself, not an event node.
        fs::create_dir_all(input.join("input0")).unwrap();
        fs::write(input.join("input0/name"), "Power Button\n").unwrap();
        let dev = Path::new("/dev");
        assert_eq!(
            find_power_buttons(&sys, dev),
            [dev.join("input/event0"), dev.join("input/event2")]
        );
        assert!(find_power_buttons(&dir.path().join("none"), dev).is_empty());
    }
}
