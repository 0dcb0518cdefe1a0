//! The host's side of an interactive console: the terminal in raw mode while
//! `berth run` hands the keyboard to the guest, restored on every way out, and
//! the bytes typed (or written by a script) forwarded to QEMU's standard input,
//! which is the guest's serial port.
//!
//! - [`RawTerminal`] puts standard input in raw mode and restores what it found
//!   when dropped, and from a panic hook (the release profile aborts on panic, so
//!   no destructor would run then).
//! - [`forward`] copies standard input to the console: from a terminal every key
//!   as it is pressed until [`ESCAPE`] (Ctrl-]); from a pipe or file every line,
//!   once the guest's debug shell is up.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};

use rustix::termios::{self, OptionalActions, Termios};

/// The key that ends an interactive console: Ctrl-] (as telnet's and
/// `virsh console`'s), which no shell or editor in the guest needs.
pub const ESCAPE: u8 = 0x1d;
/// How [`ESCAPE`] is named to the person at the keyboard.
pub const ESCAPE_NAME: &str = "Ctrl-]";

/// Where the console's input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsoleInput {
    /// Nothing is forwarded: the guest's console gets no input.
    #[default]
    Closed,
    /// Standard input is a terminal: raw mode, every key forwarded, [`ESCAPE`]
    /// quits.
    Terminal,
    /// Standard input is a pipe or a file: its bytes are forwarded as they come,
    /// once the guest's debug shell announced itself.
    Lines,
}

impl ConsoleInput {
    /// [`ConsoleInput::Terminal`] when standard input is a terminal this
    /// process may use, [`ConsoleInput::Closed`] when it is the controlling
    /// terminal but this process runs in the background (`berth run … &`:
    /// touching the terminal would stop it with SIGTTOU or SIGTTIN), else
    /// [`ConsoleInput::Lines`].
    pub fn detect() -> ConsoleInput {
        let stdin = std::io::stdin();
        if !termios::isatty(&stdin) {
            return ConsoleInput::Lines;
        }
        match termios::tcgetpgrp(&stdin) {
            // A terminal that is not this process's controlling terminal has
            // no foreground to be in (the call fails): it is usable.
            Ok(foreground) if foreground != rustix::process::getpgrp() => ConsoleInput::Closed,
            _ => ConsoleInput::Terminal,
        }
    }
}

/// A terminal attribute call failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} of the terminal on standard input: {source}")]
pub struct TerminalError {
    what: &'static str,
    source: std::io::Error,
}

/// The settings the panic hook restores (the terminal's, before raw mode).
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

/// Standard input in raw mode; the settings found are put back on drop.
#[derive(Debug)]
pub struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    /// Saves the terminal's settings and switches it to raw mode: no echo, no
    /// line editing, no signals from Ctrl-C or Ctrl-Z (they reach the guest), no
    /// output processing.
    pub fn enter() -> Result<RawTerminal, TerminalError> {
        let saved = termios::tcgetattr(std::io::stdin()).map_err(|e| TerminalError {
            what: "reading the settings",
            source: e.into(),
        })?;
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved.clone());
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_saved();
                previous(info);
            }));
        });
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &raw).map_err(|e| {
            TerminalError {
                what: "switching to raw mode",
                source: e.into(),
            }
        })?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // Nothing more can be done when this fails: the terminal is gone.
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Puts back the settings a live [`RawTerminal`] saved (from the panic hook).
fn restore_saved() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(saved) = saved {
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &saved);
    }
}

/// The terminal's size in rows and columns, when standard output (or input) is a
/// terminal that knows it.
pub fn window_size() -> Option<(u16, u16)> {
    [
        termios::tcgetwinsize(std::io::stdout()),
        termios::tcgetwinsize(std::io::stdin()),
    ]
    .into_iter()
    .flatten()
    .map(|size| (size.ws_row, size.ws_col))
    .find(|&(rows, cols)| rows > 0 && cols > 0)
}

/// The command that tells the guest's shell the window size.
pub fn stty_command(rows: u16, cols: u16) -> String {
    format!("stty rows {rows} cols {cols}")
}

/// The guest's console input, shared by the forwarding thread and the run loop.
pub type ConsoleWriter = Arc<Mutex<Box<dyn Write + Send>>>;

/// Copies `input` to the console until it ends, the console closes, or (with
/// [`ConsoleInput::Terminal`]) [`ESCAPE`] is typed, which sets `quit`. With
/// [`ConsoleInput::Lines`] nothing is forwarded before `ready` returns true
/// (called once, it may block): firmware and boot loader would otherwise eat
/// what a script wrote.
pub fn forward(
    mut input: impl Read,
    console: &ConsoleWriter,
    mode: ConsoleInput,
    quit: &AtomicBool,
    ready: impl FnOnce() -> bool,
) {
    if mode == ConsoleInput::Closed || (mode == ConsoleInput::Lines && !ready()) {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let (bytes, escaped) = match mode {
            ConsoleInput::Terminal => match buf[..n].iter().position(|&b| b == ESCAPE) {
                Some(at) => (&buf[..at], true),
                None => (&buf[..n], false),
            },
            _ => (&buf[..n], false),
        };
        if !bytes.is_empty() {
            let mut writer = console.lock().unwrap_or_else(|e| e.into_inner());
            if writer
                .write_all(bytes)
                .and_then(|()| writer.flush())
                .is_err()
            {
                return;
            }
        }
        if escaped {
            quit.store(true, Ordering::SeqCst);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn run(input: &[u8], mode: ConsoleInput, ready: bool) -> (Vec<u8>, bool) {
        let sink = Sink::default();
        let writer: ConsoleWriter = Arc::new(Mutex::new(Box::new(sink.clone())));
        let quit = AtomicBool::new(false);
        forward(Cursor::new(input.to_vec()), &writer, mode, &quit, || ready);
        let bytes = sink.0.lock().expect("sink").clone();
        (bytes, quit.load(Ordering::SeqCst))
    }

    #[test]
    fn keys_reach_the_console_until_the_escape() {
        assert_eq!(
            run(b"ls\r\x03top\x1dnot this", ConsoleInput::Terminal, false),
            (b"ls\r\x03top".to_vec(), true)
        );
        assert_eq!(
            run(b"\x1d", ConsoleInput::Terminal, false),
            (Vec::new(), true)
        );
        assert_eq!(
            run(b"no escape\r", ConsoleInput::Terminal, false),
            (b"no escape\r".to_vec(), false)
        );
    }

    #[test]
    fn lines_wait_for_the_shell_and_ignore_the_escape() {
        assert_eq!(
            run(b"echo a\x1d\necho b\n", ConsoleInput::Lines, true),
            (b"echo a\x1d\necho b\n".to_vec(), false)
        );
        assert_eq!(
            run(b"echo a\n", ConsoleInput::Lines, false),
            (Vec::new(), false)
        );
        assert_eq!(
            run(b"echo a\n", ConsoleInput::Closed, true),
            (Vec::new(), false)
        );
    }

    #[test]
    fn stty_names_rows_then_columns() {
        assert_eq!(stty_command(50, 132), "stty rows 50 cols 132");
    }
}
