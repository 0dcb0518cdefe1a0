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
    crate::logfile::init_line(text.trim_end_matches('\n').as_bytes());
}

/// Writes raw bytes to the console. Errors are ignored: there is nowhere else to
/// report them, and PID 1 must not stop over a console hiccup.
pub fn write_console(bytes: &[u8]) {
    let _ = std::io::stderr().lock().write_all(bytes);
}

/// Prints a line prefixed `berth-init: ` on the console.
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}
