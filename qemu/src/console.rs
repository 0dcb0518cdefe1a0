//! The serial console: bytes from QEMU's stdout split into clean lines, echoed and
//! logged, and kept until a caller matches them.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use regex::Regex;

/// How many of the last console lines an error shows.
pub const TAIL_LINES: usize = 40;
/// How many of QEMU's own last stderr lines are kept for errors.
const STDERR_LINES: usize = 20;
/// Unmatched console lines kept at most; older ones are dropped (a VM that nobody
/// reads from must not grow without bound).
const MAX_PENDING: usize = 200_000;
/// What berth-init prints when a development image's debug shell starts on the
/// console (`[debug] console_shell = true`).
pub const SHELL_ANNOUNCEMENT: &str = "debug shell on the console";

/// Splits a byte stream into lines: `\n` ends a line, `\r` is dropped, escape
/// sequences and control bytes are made harmless (see [`sanitize`]).
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn new() -> LineSplitter {
        LineSplitter::default()
    }

    /// Feeds bytes; returns the lines they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for byte in bytes {
            if *byte == b'\n' {
                lines.push(sanitize(&self.partial));
                self.partial.clear();
            } else {
                self.partial.push(*byte);
            }
        }
        lines
    }

    /// The unterminated last line, if it holds anything visible.
    pub fn finish(&mut self) -> Option<String> {
        let line = sanitize(&self.partial);
        self.partial.clear();
        (!line.is_empty()).then_some(line)
    }
}

/// Makes one raw console line safe to print and match: drops `\r`, NUL and ANSI
/// escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL|ESC \`, two-byte `ESC x`),
/// writes other control bytes as `\xNN`, and decodes UTF-8 lossily.
pub fn sanitize(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let byte = raw[i];
        match byte {
            0x1b => {
                i += 1;
                match raw.get(i) {
                    Some(b'[') => {
                        i += 1;
                        // Parameter and intermediate bytes, then one final byte.
                        while i < raw.len() && (0x20..=0x3f).contains(&raw[i]) {
                            i += 1;
                        }
                        if i < raw.len() && (0x40..=0x7e).contains(&raw[i]) {
                            i += 1;
                        }
                    }
                    Some(b']') => {
                        i += 1;
                        while i < raw.len() {
                            if raw[i] == 0x07 {
                                i += 1;
                                break;
                            }
                            if raw[i] == 0x1b && raw.get(i + 1) == Some(&b'\\') {
                                i += 2;
                                break;
                            }
                            i += 1;
                        }
                    }
                    Some(_) => i += 1,
                    None => {}
                }
                continue;
            }
            b'\r' | 0 => {}
            b'\t' => out.push(byte),
            0x01..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{byte:02x}").as_bytes()),
            _ => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last lines of a console, shown in errors one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail(pub Vec<String>);

impl fmt::Display for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("    (nothing)");
        }
        for (i, line) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "    | {line}")?;
        }
        Ok(())
    }
}

/// Where the console log is, for error messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogHint(pub Option<PathBuf>);

impl fmt::Display for LogHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(path) => write!(f, " (full console log: {})", path.display()),
            None => Ok(()),
        }
    }
}

/// A console line that did not come.
#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    /// The time ran out first.
    #[error("no console line matched {patterns} within {} s{log}; last console lines:\n{tail}", timeout.as_secs_f32())]
    Timeout {
        patterns: String,
        timeout: Duration,
        tail: Tail,
        log: LogHint,
    },
    /// QEMU closed its console (it exited) first.
    #[error("QEMU ended before a console line matched {patterns}{log}; last console lines:\n{tail}\nQEMU's last messages:\n{stderr}")]
    Ended {
        patterns: String,
        tail: Tail,
        stderr: Tail,
        log: LogHint,
    },
}

impl ExpectError {
    /// The last console lines at the time of the error.
    pub fn tail(&self) -> &[String] {
        match self {
            ExpectError::Timeout { tail, .. } | ExpectError::Ended { tail, .. } => &tail.0,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Lines not yet looked at by an expect.
    pending: VecDeque<String>,
    /// The last [`TAIL_LINES`] lines, looked at or not.
    tail: VecDeque<String>,
    /// QEMU's last stderr lines.
    stderr: VecDeque<String>,
    /// Lines seen in all.
    count: u64,
    /// The console's stream ended.
    closed: bool,
    /// QEMU's stderr ended.
    stderr_closed: bool,
    /// Lines seen that announce the debug shell ([`SHELL_ANNOUNCEMENT`]): one
    /// per boot of a development image.
    shells: u64,
}

/// What [`Console::wait_for`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// Pattern index and the line.
    Line(usize, String),
    TimedOut,
    Closed,
}

/// Console lines shared between the reader threads and the callers.
#[derive(Debug, Default)]
pub(crate) struct Console {
    state: Mutex<State>,
    changed: Condvar,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A reader thread that panicked leaves consistent data behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push_line(&self, line: String) {
        let mut state = self.lock();
        if state.tail.len() == TAIL_LINES {
            state.tail.pop_front();
        }
        if line.contains(SHELL_ANNOUNCEMENT) {
            state.shells += 1;
        }
        state.tail.push_back(line.clone());
        if state.pending.len() == MAX_PENDING {
            state.pending.pop_front();
        }
        state.pending.push_back(line);
        state.count += 1;
        drop(state);
        self.changed.notify_all();
    }

    pub(crate) fn push_stderr(&self, line: String) {
        let mut state = self.lock();
        if state.stderr.len() == STDERR_LINES {
            state.stderr.pop_front();
        }
        state.stderr.push_back(line);
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Whether QEMU's stdout has closed (QEMU exited).
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub(crate) fn tail(&self) -> Vec<String> {
        self.lock().tail.iter().cloned().collect()
    }

    pub(crate) fn close_stderr(&self) {
        self.lock().stderr_closed = true;
        self.changed.notify_all();
    }

    /// QEMU's last stderr lines, after waiting up to `grace` for the stream to end
    /// (QEMU's last words come on stderr just as stdout closes).
    pub(crate) fn stderr_tail(&self, grace: Duration) -> Vec<String> {
        let deadline = Instant::now() + grace;
        let mut state = self.lock();
        while !state.stderr_closed {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.stderr.iter().cloned().collect()
    }

    /// How many times the debug shell was announced so far.
    pub(crate) fn shell_announcements(&self) -> u64 {
        self.lock().shells
    }

    /// Waits until the debug shell was announced at least once (true) or the
    /// console closed (false).
    pub(crate) fn wait_for_shell(&self) -> bool {
        let mut state = self.lock();
        loop {
            if state.shells > 0 {
                return true;
            }
            if state.closed {
                return false;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub(crate) fn line_count(&self) -> u64 {
        self.lock().count
    }

    /// Consumes lines until one matches a pattern, the console closes, or `deadline`.
    pub(crate) fn wait_for(&self, patterns: &[&Regex], deadline: Instant) -> Found {
        let mut state = self.lock();
        loop {
            while let Some(line) = state.pending.pop_front() {
                if let Some(index) = patterns.iter().position(|re| re.is_match(&line)) {
                    return Found::Line(index, line);
                }
            }
            if state.closed {
                return Found::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Found::TimedOut;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Where console lines go besides the [`Console`].
pub(crate) struct Outputs {
    /// Echo, e.g. the host's stdout for `berth run`.
    pub echo: Option<Box<dyn Write + Send>>,
    /// How `echo` gets the console.
    pub echo_mode: Echo,
    /// The console log file, shared with the stderr reader.
    pub log: Option<Arc<Mutex<File>>>,
}

/// How the console is echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Echo {
    /// Clean lines ([`sanitize`]d), each written once it ends: for logs, CI and
    /// test output.
    #[default]
    Lines,
    /// The bytes as QEMU wrote them, at once, escape sequences and partial
    /// lines (a shell's prompt) included: for a terminal a person works in.
    Bytes,
}

/// Writes one line to a shared log; a failing log must not stop the console.
pub(crate) fn log_line(log: &Option<Arc<Mutex<File>>>, line: &str) {
    if let Some(log) = log {
        let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(file, "{line}");
    }
}

/// Reads QEMU's stdout until it closes.
pub(crate) fn read_console(mut source: impl Read, console: &Console, mut outputs: Outputs) {
    let mut splitter = LineSplitter::new();
    let mut buf = [0u8; 8192];
    let emit = |line: String, outputs: &mut Outputs| {
        if let (Some(echo), Echo::Lines) = (outputs.echo.as_mut(), outputs.echo_mode) {
            // A closed stdout (`berth run | head`) must not stop the console.
            let _ = writeln!(echo, "{line}");
            let _ = echo.flush();
        }
        log_line(&outputs.log, &line);
        console.push_line(line);
    };
    loop {
        match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let (Some(echo), Echo::Bytes) = (outputs.echo.as_mut(), outputs.echo_mode) {
                    let _ = echo.write_all(&buf[..n]);
                    let _ = echo.flush();
                }
                for line in splitter.push(&buf[..n]) {
                    emit(line, &mut outputs);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if let Some(line) = splitter.finish() {
        emit(line, &mut outputs);
    }
    console.close();
}

/// Reads QEMU's stderr until it closes: kept for errors, logged, and shown on the
/// host's stderr.
pub(crate) fn read_stderr(source: impl Read, console: &Console, log: Option<Arc<Mutex<File>>>) {
    let mut reader = std::io::BufReader::new(source);
    let mut splitter = LineSplitter::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for line in splitter.push(&buf[..n]) {
                    eprintln!("qemu: {line}");
                    log_line(&log, &format!("[qemu stderr] {line}"));
                    console.push_stderr(line);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if let Some(line) = splitter.finish() {
        eprintln!("qemu: {line}");
        log_line(&log, &format!("[qemu stderr] {line}"));
        console.push_stderr(line);
    }
    console.close_stderr();
}

/// `/a/`, `/b/` for error messages.
pub(crate) fn describe(patterns: &[&Regex]) -> String {
    patterns
        .iter()
        .map(|re| format!("/{}/", re.as_str()))
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn splits_crlf_and_keeps_partial_lines() {
        let mut splitter = LineSplitter::new();
        assert_eq!(splitter.push(b"Hel"), Vec::<String>::new());
        assert_eq!(splitter.push(b"lo\r\nwor"), vec!["Hello"]);
        assert_eq!(splitter.push(b"ld\n\r\nlast"), vec!["world", ""]);
        assert_eq!(splitter.finish().as_deref(), Some("last"));
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn strips_escapes_and_nul() {
        assert_eq!(
            sanitize(b"\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: loading\x1b[0m"),
            "BdsDxe: loading"
        );
        assert_eq!(sanitize(b"a\0b\rc"), "abc");
        assert_eq!(sanitize(b"\x1b]0;title\x07text"), "text");
        assert_eq!(sanitize(b"\x1b]0;title\x1b\\text"), "text");
        assert_eq!(sanitize(b"\x1bcreset"), "reset");
        assert_eq!(sanitize(b"bell\x07 tab\t"), "bell\\x07 tab\t");
        assert_eq!(sanitize(b"cut\x1b"), "cut");
        assert_eq!(sanitize(b"cut\x1b[12"), "cut");
        assert_eq!(sanitize(b"bad \xff utf8"), "bad \u{fffd} utf8");
        assert_eq!(sanitize("h\u{e9}llo".as_bytes()), "h\u{e9}llo");
    }

    #[test]
    fn reader_keeps_the_partial_last_line_and_closes() {
        let console = Console::default();
        let log_file = tempfile::NamedTempFile::new().expect("temp file");
        let log = Arc::new(Mutex::new(log_file.reopen().expect("reopen")));
        read_console(
            Cursor::new(b"one\r\n\x1b[1mtwo\x1b[0m\nthree".to_vec()),
            &console,
            Outputs {
                echo: None,
                echo_mode: Echo::Lines,
                log: Some(log),
            },
        );
        assert_eq!(console.tail(), vec!["one", "two", "three"]);
        let re = Regex::new("^thr").expect("regex");
        let far = Instant::now() + Duration::from_secs(60);
        assert_eq!(
            console.wait_for(&[&re], far),
            Found::Line(0, "three".into())
        );
        assert_eq!(console.wait_for(&[&re], far), Found::Closed);
        let logged = std::fs::read_to_string(log_file.path()).expect("log");
        assert_eq!(logged, "one\ntwo\nthree\n");
    }

    #[test]
    fn expect_consumes_lines_in_order() {
        let console = Console::default();
        for line in ["[flaky] flaky run", "restarting", "[flaky] flaky run"] {
            console.push_line(line.to_string());
        }
        let flaky = Regex::new(r"\[flaky\] flaky run").expect("regex");
        let restart = Regex::new("restarting").expect("regex");
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(
            console.wait_for(&[&restart, &flaky], soon),
            Found::Line(1, "[flaky] flaky run".into())
        );
        assert_eq!(
            console.wait_for(&[&restart], soon),
            Found::Line(0, "restarting".into())
        );
        assert!(matches!(console.wait_for(&[&flaky], soon), Found::Line(..)));
        assert_eq!(console.wait_for(&[&flaky], soon), Found::TimedOut);
    }

    #[test]
    fn waiters_wake_on_new_lines() {
        let console = Arc::new(Console::default());
        let writer = {
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                console.push_line("late line".into());
            })
        };
        let re = Regex::new("late").expect("regex");
        let found = console.wait_for(&[&re], Instant::now() + Duration::from_secs(60));
        assert_eq!(found, Found::Line(0, "late line".into()));
        writer.join().expect("writer");
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn byte_echo_passes_prompts_and_escapes_and_counts_shells() {
        let console = Console::default();
        let out = Shared::default();
        let raw =
            b"berth-init: debug shell on the console (development image)\r\n\x1b[1m/ # \x1b[0m";
        read_console(
            Cursor::new(raw.to_vec()),
            &console,
            Outputs {
                echo: Some(Box::new(out.clone())),
                echo_mode: Echo::Bytes,
                log: None,
            },
        );
        assert_eq!(*out.0.lock().expect("buffer"), raw.to_vec());
        assert_eq!(console.shell_announcements(), 1);
        assert!(console.wait_for_shell());
        assert_eq!(console.tail().last().map(String::as_str), Some("/ # "));
        let quiet = Console::default();
        quiet.close();
        assert!(!quiet.wait_for_shell());
    }

    #[test]
    fn tail_is_bounded_and_errors_show_it() {
        let console = Console::default();
        for i in 0..100 {
            console.push_line(format!("line {i}"));
        }
        let tail = console.tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last().map(String::as_str), Some("line 99"));
        let err = ExpectError::Timeout {
            patterns: "/x/".into(),
            timeout: Duration::from_secs(3),
            tail: Tail(tail),
            log: LogHint(Some(PathBuf::from("/logs/t.log"))),
        };
        let text = err.to_string();
        assert!(text.contains("/x/ within 3 s"), "{text}");
        assert!(text.contains("/logs/t.log"), "{text}");
        assert!(text.ends_with("    | line 99"), "{text}");
    }
}
