//! `[debug]`: development aids, off by default.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDebug {
    #[serde(default)]
    console_shell: Option<bool>,
}

/// A shell on the serial console, for development images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleShell {
    /// No shell: the console only shows output (the default).
    Off,
    /// Debian's busybox-static at `/bin/busybox` (`/bin/sh` links to it), run on
    /// the console by the init and started again when it exits.
    Busybox,
}

/// The console shell `[debug]` asks for (none unless `console_shell = true`).
pub(super) fn console_shell(raw: Option<RawDebug>) -> ConsoleShell {
    match raw.and_then(|d| d.console_shell) {
        Some(true) => ConsoleShell::Busybox,
        Some(false) | None => ConsoleShell::Off,
    }
}
