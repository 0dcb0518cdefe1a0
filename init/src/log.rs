//! Console output. PID 1's standard error is the kernel console (the serial port on
//! a berth image), so everything goes there, one `write` per line so lines from the
//! init and from containers never interleave mid-line.

use std::fmt;
use std::io::Write;

/// Prefix of every line the init itself prints (the end-to-end tests grep for it).
pub const PREFIX: &str = "berth-init: ";

/// Writes one line of the init's own output: `berth-init: <message>`.
pub fn line(args: fmt::Arguments<'_>) {
    let text = format!("{PREFIX}{args}\n");
    write_console(text.as_bytes());
    crate::shared::logfile::init_line(text.trim_end_matches('\n').as_bytes());
}

/// Writes raw bytes to the console. Errors are ignored: there is nowhere else to
/// report them, and PID 1 must not stop over a console hiccup.
pub fn write_console(bytes: &[u8]) {
    let _ = std::io::stderr().lock().write_all(bytes);
}

/// Waits, up to `limit`, until the console's tty has sent what it holds.
///
/// Killing the debug shell hangs up the console's tty (the shell leads its
/// session there), and a hangup throws away the output still queued in the
/// serial driver: the lines just logged would never reach anyone. So the init
/// lets the queue drain first. Bounded, because a console held by flow control
/// must not stop a shutdown.
pub fn drain_console(limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one c_int through the pointer, which is valid
        // and writable for the call; fd 2 is only read by the ioctl.
        let rc = unsafe { libc::ioctl(2, libc::TIOCOUTQ, &mut queued) };
        if rc != 0 || queued <= 0 || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Milliseconds since the kernel started, on `CLOCK_BOOTTIME` (the clock of the
/// kernel's own printk timestamps, give or take the few ms before timekeeping
/// starts), so the init's milestones line up with the kernel's on one time axis.
pub fn since_boot_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs * 1000 + nanos / 1_000_000
}

/// Prints a line prefixed `berth-init: ` on the console.
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_boot_counts_up_from_boot() {
        let a = super::since_boot_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = super::since_boot_ms();
        assert!(a > 0 && b >= a + 20, "{a} then {b}");
    }
}
