//! A pseudo-terminal for tests that use a program as a person at a terminal
//! would: the program gets the terminal side as its stdin, stdout and stderr; the
//! test types into the other side and reads what the program shows.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcgetattr, tcsetwinsize, Winsize};

/// Everything the program wrote on the terminal, and where the test has read to.
#[derive(Debug, Default)]
struct Screen {
    bytes: Vec<u8>,
    /// Bytes before this were matched by an earlier [`Terminal::expect`].
    seen: usize,
}

/// A pseudo-terminal pair and the program on it.
#[derive(Debug)]
pub struct Terminal {
    master: File,
    /// The terminal side, kept open here so its settings can be read after the
    /// program exits.
    slave: File,
    screen: Arc<(Mutex<Screen>, Condvar)>,
}

impl Terminal {
    /// Opens a pseudo-terminal of `rows` × `cols`.
    pub fn open(rows: u16, cols: u16) -> Terminal {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("posix_openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(i32::try_from(rustix::fs::OFlags::NOCTTY.bits()).expect("O_NOCTTY fits"))
            .open(name.to_str().expect("a UTF-8 pts name"))
            .expect("opening the terminal side");
        tcsetwinsize(
            &slave,
            Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .expect("setting the window size");
        let master = File::from(master);
        let screen = Arc::new((Mutex::new(Screen::default()), Condvar::new()));
        let mut reader = master.try_clone().expect("cloning the master");
        let shared = Arc::clone(&screen);
        // Ends with the test process: the master stays open as long as `slave`.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let (lock, changed) = &*shared;
                        lock.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .bytes
                            .extend_from_slice(&buf[..n]);
                        changed.notify_all();
                    }
                }
            }
        });
        Terminal {
            master,
            slave,
            screen,
        }
    }

    /// The terminal's settings, as `tcgetattr` gives them, in a comparable form.
    pub fn settings(&self) -> String {
        format!("{:?}", tcgetattr(&self.slave).expect("tcgetattr"))
    }

    /// Whether the terminal is in canonical (line-editing) mode.
    pub fn is_canonical(&self) -> bool {
        tcgetattr(&self.slave)
            .expect("tcgetattr")
            .local_modes
            .contains(rustix::termios::LocalModes::ICANON)
    }

    /// Starts `command` with this terminal as its stdin, stdout and stderr.
    pub fn spawn(&self, command: &mut Command) -> Program {
        let side = || Stdio::from(self.slave.try_clone().expect("cloning the terminal side"));
        Program(
            command
                .stdin(side())
                .stdout(side())
                .stderr(side())
                .spawn()
                .unwrap_or_else(|err| panic!("starting {command:?}: {err}")),
        )
    }

    /// Types `bytes` as keys.
    pub fn type_keys(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("typing");
        self.master.flush().expect("typing");
    }

    /// Waits until `text` shows on the terminal after what earlier calls
    /// matched; returns everything shown up to and including it.
    pub fn expect(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.screen;
        let mut screen = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let unseen = &screen.bytes[screen.seen..];
            if let Some(at) = find(unseen, text.as_bytes()) {
                let end = screen.seen + at + text.len();
                let shown = String::from_utf8_lossy(&screen.bytes[screen.seen..end]).into_owned();
                screen.seen = end;
                return shown;
            }
            let now = Instant::now();
            if now >= deadline {
                let start = screen.bytes.len().saturating_sub(3000);
                panic!(
                    "{text:?} did not show on the terminal within {} s; it shows:\n{}",
                    timeout.as_secs(),
                    String::from_utf8_lossy(&screen.bytes[start..])
                );
            }
            screen = changed
                .wait_timeout(screen, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Everything shown so far.
    pub fn shown(&self) -> String {
        let screen = self.screen.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&screen.bytes).into_owned()
    }
}

/// A program started on a [`Terminal`], stopped when dropped, so a failing test
/// leaves no VM behind: SIGTERM first (`berth run` then stops its QEMU), SIGKILL
/// when it is still there after a while.
#[derive(Debug)]
pub struct Program(pub Child);

impl Drop for Program {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Waits up to `timeout` for `child` to exit; kills it and panics when it does
/// not.
pub fn wait_exit(program: &mut Program, timeout: Duration) -> std::process::ExitStatus {
    let child = &mut program.0;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the program did not exit within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
