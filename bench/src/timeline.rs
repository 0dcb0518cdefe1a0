//! One boot's milestones on one time axis, from console lines stamped with the
//! host's clock on arrival.
//!
//! The kernel stamps its own lines (printk, seconds since it started); the init
//! stamps "container X started … at T ms since boot" on `CLOCK_BOOTTIME`, the same
//! clock. Lines printed live reach the host within milliseconds, so the smallest
//! `host arrival − printk stamp` over all kernel lines is when the kernel's clock
//! read zero, on the host's clock measured from QEMU's start. That offset places
//! QEMU start, kernel start, PID 1 and the first container on one axis.

use std::sync::OnceLock;

use regex::Regex;

/// A console line and when it reached the host, in seconds since QEMU started.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub host_s: f64,
    pub text: String,
}

/// The milestones of one boot, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Milestones {
    /// QEMU start → the kernel's clock at zero (firmware, boot loader, kernel
    /// decompression), on the host's clock.
    pub kernel_start: Option<f64>,
    /// Kernel start → PID 1 ("Run /init as init process"), the kernel's own stamp.
    pub pid1: Option<f64>,
    /// Kernel start → the init started the first container's runtime, the init's
    /// own `CLOCK_BOOTTIME` stamp.
    pub container_started: Option<f64>,
    /// Kernel start → the container's first output line, its host arrival moved
    /// onto the kernel's clock.
    pub container_output: Option<f64>,
    /// QEMU start → the container's first output line, host clock.
    pub qemu_to_output: Option<f64>,
    /// The init's own timers (seconds), which split PID 1 → first container:
    /// early stage start → modules loaded and the root partition found,
    pub modules_and_root: Option<f64>,
    /// → dm-verity's read of the whole root (absent without verity),
    pub verity: Option<f64>,
    /// and the main stage's start → ready to start containers (mounts, data
    /// partition, ESP, provisioning, network).
    pub system_ready: Option<f64>,
}

impl Milestones {
    /// PID 1 → first container running (runtime started by the init).
    pub fn pid1_to_container(&self) -> Option<f64> {
        Some(self.container_started? - self.pid1?)
    }

    /// PID 1 → the container's first output line.
    pub fn pid1_to_output(&self) -> Option<f64> {
        Some(self.container_output? - self.pid1?)
    }

    /// PID 1 → container as a share of the kernel's own boot time (kernel start →
    /// PID 1).
    pub fn ratio(&self) -> Option<f64> {
        Some(self.pid1_to_container()? / self.pid1?)
    }

    /// What PID 1 → first container spends outside the init's timers: the
    /// switch to the root, the main stage's exec, and spawning the runtime.
    pub fn rest(&self) -> Option<f64> {
        let timed = self.modules_and_root? + self.verity.unwrap_or(0.0) + self.system_ready?;
        Some(self.pid1_to_container()? - timed)
    }
}

/// The init's timer lines: (regex with the milliseconds as group 1, setter).
type Timer = (Regex, fn(&mut Milestones, f64));

fn timers() -> &'static [Timer] {
    static RE: OnceLock<Vec<Timer>> = OnceLock::new();
    RE.get_or_init(|| {
        let re = |text: &str| Regex::new(text).expect("valid regex");
        vec![
            (
                re(r"berth-init: loaded \d+ modules, root \S+ found after (\d+) ms"),
                |m, s| m.modules_and_root = Some(s),
            ),
            (
                re(r"berth-init: verified root \(\d+ blocks\) in (\d+) ms"),
                |m, s| m.verity = Some(s),
            ),
            (re(r"berth-init: system ready in (\d+) ms"), |m, s| {
                m.system_ready = Some(s)
            }),
        ]
    })
}

fn printk() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^\[\s*(\d+\.\d+)\]").expect("valid regex"))
}

fn run_init() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\]\s+Run \S+ as init process").expect("valid regex"))
}

fn started() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"berth-init: container \S+ started \(pid \d+\) at (\d+) ms since boot")
            .expect("valid regex")
    })
}

/// The milestones in `lines`; `output` is the text of the container's first output
/// line (matched as a substring), when it prints one.
pub fn milestones(lines: &[Line], output: Option<&str>) -> Milestones {
    let mut m = Milestones::default();
    let mut offset: Option<f64> = None;
    for line in lines {
        if let Some(stamp) = printk_stamp(&line.text) {
            let lag = line.host_s - stamp;
            offset = Some(offset.map_or(lag, |o: f64| o.min(lag)));
            if m.pid1.is_none() && run_init().is_match(&line.text) {
                m.pid1 = Some(stamp);
            }
        }
        if m.container_started.is_none() {
            if let Some(c) = started().captures(&line.text) {
                m.container_started = c[1].parse::<f64>().ok().map(|ms| ms / 1000.0);
            }
        }
        for (re, set) in timers() {
            if let Some(ms) = re
                .captures(&line.text)
                .and_then(|c| c[1].parse::<f64>().ok())
            {
                set(&mut m, ms / 1000.0);
            }
        }
        if m.qemu_to_output.is_none() && output.is_some_and(|o| line.text.contains(o)) {
            m.qemu_to_output = Some(line.host_s);
        }
    }
    m.kernel_start = offset;
    if let (Some(host), Some(offset)) = (m.qemu_to_output, offset) {
        m.container_output = Some(host - offset);
    }
    m
}

fn printk_stamp(text: &str) -> Option<f64> {
    printk().captures(text)?[1].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(host_s: f64, text: &str) -> Line {
        Line {
            host_s,
            text: text.to_string(),
        }
    }

    #[test]
    fn places_everything_on_one_axis() {
        let lines = [
            line(0.5, "BdsDxe: starting Boot0001"),
            // Early lines come in a burst when the console registers: late.
            line(3.0, "[    0.000000] Linux version 6.1.0"),
            line(3.1, "[    0.900000] console [ttyS0] enabled"),
            line(4.2, "[    2.000000] Run /init as init process"),
            line(
                4.4,
                "berth-init: loaded 25 modules, root /dev/vda2 found after 200 ms",
            ),
            line(4.5, "berth-init: verified root (1352 blocks) in 50 ms"),
            line(4.9, "berth-init: system ready in 300 ms"),
            line(
                5.0,
                "berth-init: container hello started (pid 42) at 2750 ms since boot",
            ),
            line(5.6, "[hello] Hello from berth!"),
        ];
        let m = milestones(&lines, Some("Hello from berth!"));
        let near = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        assert!(near(m.kernel_start, 2.2), "{m:?}");
        assert!(near(m.pid1, 2.0));
        assert!(near(m.container_started, 2.75));
        assert!(near(m.pid1_to_container(), 0.75));
        assert!(near(m.ratio(), 0.375));
        assert!(near(m.qemu_to_output, 5.6));
        assert!(near(m.container_output, 3.4));
        assert!(near(m.pid1_to_output(), 1.4));
        assert!(near(m.modules_and_root, 0.2));
        assert!(near(m.verity, 0.05));
        assert!(near(m.system_ready, 0.3));
        assert!(near(m.rest(), 0.2));
    }

    #[test]
    fn missing_milestones_stay_missing() {
        let m = milestones(&[line(1.0, "[    0.100000] Linux version")], None);
        assert!(m.pid1.is_none() && m.ratio().is_none() && m.qemu_to_output.is_none());
        assert!(m.kernel_start.is_some());
    }
}
