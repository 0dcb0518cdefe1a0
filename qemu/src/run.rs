//! `berth run`: boot an image with the console on stdout, optionally until a line
//! matches.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regex::Regex;

use crate::command::{
    BootMode, CommandError, DirectBoot, DiskBus, DiskWrites, Firmware, PortForward, VmConfig,
    DEFAULT_CPUS, DEFAULT_MEMORY_MIB,
};
use crate::console::{Echo, ExpectError};
use crate::direct::{self, DirectError};
use crate::terminal::{self, ConsoleInput, ConsoleWriter, RawTerminal, TerminalError};
use crate::vm::{Vm, VmError, VmOptions};

/// How long `--expect` waits when no timeout is given.
pub const DEFAULT_EXPECT_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the run loop looks at Ctrl-C and the clock.
const TICK: Duration = Duration::from_millis(100);

/// How `berth run` boots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RunBoot {
    /// OVMF and the image's own boot loader.
    #[default]
    Uefi,
    /// The kernel, initramfs and command line of the entry the boot loader would
    /// pick, taken out of the image (`--direct`; raw images only).
    DirectFromImage,
    /// A kernel, initramfs and command line given by the caller.
    Direct(DirectBoot),
}

/// What `berth run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub image: PathBuf,
    /// `--port HOST:GUEST`, forwarded on the host's 127.0.0.1.
    pub ports: Vec<PortForward>,
    /// `--snapshot`: writes to the disk are dropped when QEMU exits.
    pub snapshot: bool,
    /// `--expect RE`: succeed as soon as a console line matches.
    pub expect: Option<Regex>,
    /// `--timeout S`: with `expect`, how long to wait for it (default
    /// [`DEFAULT_EXPECT_TIMEOUT`]); without, stop the VM after this long.
    pub timeout: Option<Duration>,
    pub boot: RunBoot,
    pub memory_mib: u32,
    pub cpus: u32,
    /// `--disk-bus`: how the disk is attached (virtio by default).
    pub disk_bus: DiskBus,
    /// `--watchdog`: an i6300esb hardware watchdog.
    pub watchdog: bool,
    /// Stream the console to stdout (on by default).
    pub echo: bool,
    /// Also append the console to this file.
    pub log: Option<PathBuf>,
    /// Where the guest's console input comes from (none by default; `berth run`
    /// uses [`ConsoleInput::detect`]).
    pub input: ConsoleInput,
}

impl RunOptions {
    /// Defaults: UEFI, no ports, writes kept, no expect, 512 MiB, 2 CPUs, echo on.
    pub fn new(image: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            image: image.into(),
            ports: Vec::new(),
            snapshot: false,
            expect: None,
            timeout: None,
            boot: RunBoot::Uefi,
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: DEFAULT_CPUS,
            disk_bus: DiskBus::Virtio,
            watchdog: false,
            echo: true,
            log: None,
            input: ConsoleInput::Closed,
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum RunOutcome {
    /// A console line matched `expect`; the VM was stopped.
    Matched { line: String },
    /// `expect` did not match in time; the VM was stopped.
    TimedOut {
        timeout: Duration,
        tail: Vec<String>,
    },
    /// QEMU exited before `expect` matched.
    EndedBeforeMatch {
        status: ExitStatus,
        tail: Vec<String>,
    },
    /// No `expect`: QEMU exited by itself.
    Exited { status: ExitStatus },
    /// No `expect`, and the timeout ran out; the VM was stopped.
    Stopped { timeout: Duration },
    /// Ctrl-C (SIGINT), SIGTERM or SIGHUP on the host; the VM was stopped.
    Interrupted,
    /// The escape key ([`terminal::ESCAPE`]) was typed at the console; the VM
    /// was stopped.
    Quit,
}

impl RunOutcome {
    /// The exit code `berth run` should end with: 0 on a match, 1 when it did not
    /// come, QEMU's own status when it ran to its end, 130 on a signal, 0 when
    /// the person at the console quit.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunOutcome::Matched { .. } | RunOutcome::Stopped { .. } | RunOutcome::Quit => 0,
            RunOutcome::TimedOut { .. } | RunOutcome::EndedBeforeMatch { .. } => 1,
            RunOutcome::Exited { status } => exit_code_of(*status),
            RunOutcome::Interrupted => 130,
        }
    }
}

fn exit_code_of(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// Failure of `berth run` before or while the VM ran.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Direct(#[from] DirectError),
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The folder for the extracted kernel could not be made.
    #[error("creating a temporary folder for the direct boot files in {path}: {source}")]
    Scratch {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The Ctrl-C handler could not be installed.
    #[error("installing the Ctrl-C handler: {0}")]
    Signal(std::io::Error),
    /// The terminal could not be switched to raw mode.
    #[error(transparent)]
    Terminal(#[from] TerminalError),
}

/// Boots `opts.image`, streams its console to stdout, and returns how it ended.
/// With `expect`, a match stops the VM at once (QMP `quit`, then kill); a timeout
/// prints the console's tail on stderr. SIGINT, SIGTERM or SIGHUP end QEMU; a
/// second one ends this process at once (not with a terminal in raw mode: the
/// run always ends through its loop, so the terminal is restored).
///
/// With [`ConsoleInput::Terminal`] standard input is in raw mode while QEMU
/// runs, every key goes to the guest, the console is echoed byte for byte,
/// [`terminal::ESCAPE`] (Ctrl-]) quits, and the window size is typed into the
/// guest's debug shell (`stty rows R cols C`) each time one starts. With
/// [`ConsoleInput::Lines`] what standard input holds is forwarded once the
/// guest's debug shell is up.
pub fn run(opts: &RunOptions) -> Result<RunOutcome, RunError> {
    let interactive = opts.input == ConsoleInput::Terminal;
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        if !interactive {
            // The conditional shutdown goes first: it fires on the second signal only.
            signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&interrupted))
                .map_err(RunError::Signal)?;
        }
        signal_hook::flag::register(signal, Arc::clone(&interrupted)).map_err(RunError::Signal)?;
    }
    let resized = Arc::new(AtomicBool::new(false));
    if interactive {
        signal_hook::flag::register(signal_hook::consts::SIGWINCH, Arc::clone(&resized))
            .map_err(RunError::Signal)?;
    }

    let mut config = VmConfig::new(&opts.image)?;
    config.ports.clone_from(&opts.ports);
    config.writes = if opts.snapshot {
        DiskWrites::Discard
    } else {
        DiskWrites::Persist
    };
    config.memory_mib = opts.memory_mib;
    config.cpus = opts.cpus;
    config.disk_bus = opts.disk_bus;
    config.watchdog = opts.watchdog;
    // Kept alive until QEMU has read the files.
    let mut _direct_dir = None;
    config.boot = match &opts.boot {
        RunBoot::Uefi => BootMode::Uefi(Firmware::for_arch(config.arch)),
        RunBoot::Direct(direct) => BootMode::Direct(direct.clone()),
        RunBoot::DirectFromImage => {
            let dir = tempfile::Builder::new()
                .prefix("berth-direct-")
                .tempdir()
                .map_err(|source| RunError::Scratch {
                    path: std::env::temp_dir(),
                    source,
                })?;
            let direct = direct::extract_direct_boot(&opts.image, dir.path())?;
            _direct_dir = Some(dir);
            BootMode::Direct(direct)
        }
    };

    let mut vm = Vm::start_with_echo(
        &config,
        VmOptions {
            echo: opts
                .echo
                .then(|| Box::new(std::io::stdout()) as Box<dyn std::io::Write + Send>),
            log: opts.log.clone(),
            accel: None,
        },
        if interactive {
            Echo::Bytes
        } else {
            Echo::Lines
        },
    )?;

    let quit = Arc::new(AtomicBool::new(false));
    let input = match opts.input {
        ConsoleInput::Closed => None,
        mode => vm.take_console_input().map(|stdin| {
            let writer: ConsoleWriter = Arc::new(Mutex::new(Box::new(stdin)));
            let gate = vm.shell_gate();
            let (thread_writer, thread_quit) = (Arc::clone(&writer), Arc::clone(&quit));
            // Blocked in a read of standard input until a key comes: it is not
            // joined, and ends with the process.
            std::thread::spawn(move || {
                terminal::forward(std::io::stdin(), &thread_writer, mode, &thread_quit, || {
                    gate.wait()
                });
            });
            writer
        }),
    };

    let raw = if interactive {
        eprintln!(
            "berth run: the console is on this terminal: keys go to the guest (Ctrl-C too); {} quits",
            terminal::ESCAPE_NAME
        );
        Some(RawTerminal::enter()?)
    } else {
        None
    };
    let signals = Signals {
        interrupted: &interrupted,
        quit: &quit,
        resized: interactive.then_some(&*resized),
    };
    let outcome = drive(&mut vm, opts, &signals, input.as_ref());
    // The terminal is restored before anything more is printed, and on every
    // way out of the loop (errors included).
    drop(raw);
    let outcome = outcome?;
    report(&outcome, opts);
    Ok(outcome)
}

/// What the run loop watches besides QEMU.
struct Signals<'a> {
    /// SIGINT, SIGTERM or SIGHUP came.
    interrupted: &'a AtomicBool,
    /// The escape key was typed.
    quit: &'a AtomicBool,
    /// SIGWINCH came (interactive runs only).
    resized: Option<&'a AtomicBool>,
}

/// Runs the VM until it ends, `expect` matches or times out, a signal comes or
/// the escape key is typed; prints nothing of its own (the terminal may be raw).
fn drive(
    vm: &mut Vm,
    opts: &RunOptions,
    signals: &Signals<'_>,
    input: Option<&ConsoleWriter>,
) -> Result<RunOutcome, RunError> {
    let start = Instant::now();
    let expect_timeout = opts.timeout.unwrap_or(DEFAULT_EXPECT_TIMEOUT);
    let mut shells = 0;
    loop {
        if signals.interrupted.load(Ordering::SeqCst) {
            vm.stop()?;
            return Ok(RunOutcome::Interrupted);
        }
        if signals.quit.load(Ordering::SeqCst) {
            vm.stop()?;
            return Ok(RunOutcome::Quit);
        }
        if let Some(resized) = signals.resized {
            let announced = vm.shell_announcements();
            if announced > shells {
                shells = announced;
                if let (Some((rows, cols)), Some(input)) = (terminal::window_size(), input) {
                    let mut writer = input.lock().unwrap_or_else(|e| e.into_inner());
                    // A closed console input shows in QEMU's exit soon enough.
                    let _ = writeln!(writer, "{}", terminal::stty_command(rows, cols))
                        .and_then(|()| writer.flush());
                }
            }
            if resized.swap(false, Ordering::SeqCst) {
                if let Some((rows, cols)) = terminal::window_size() {
                    eprint!(
                        "\r\nberth run: the window is now {rows}x{cols}; tell the guest's shell with `{}`\r\n",
                        terminal::stty_command(rows, cols)
                    );
                }
            }
        }
        let now = Instant::now();
        match &opts.expect {
            Some(pattern) => {
                let deadline = start + expect_timeout;
                if now >= deadline {
                    let tail = vm.tail();
                    vm.stop()?;
                    return Ok(RunOutcome::TimedOut {
                        timeout: expect_timeout,
                        tail,
                    });
                }
                match vm.poll_any(&[pattern], deadline.min(now + TICK)) {
                    Ok(Some((_, line))) => {
                        vm.stop()?;
                        return Ok(RunOutcome::Matched { line });
                    }
                    Ok(None) | Err(ExpectError::Timeout { .. }) => {}
                    Err(ExpectError::Ended { tail, .. }) => {
                        let status = vm.kill()?;
                        return Ok(RunOutcome::EndedBeforeMatch {
                            status,
                            tail: tail.0,
                        });
                    }
                }
            }
            None => {
                if let Some(status) = vm.try_status()? {
                    // Let the reader threads print the last lines.
                    let status = vm.wait_exit(Duration::from_secs(5)).unwrap_or(status);
                    return Ok(RunOutcome::Exited { status });
                }
                if let Some(timeout) = opts.timeout {
                    if start.elapsed() >= timeout {
                        vm.stop()?;
                        return Ok(RunOutcome::Stopped { timeout });
                    }
                }
                std::thread::sleep(TICK);
            }
        }
    }
}

/// Says on stderr how a run ended, where that is news.
fn report(outcome: &RunOutcome, opts: &RunOptions) {
    let pattern = opts.expect.as_ref().map_or("", Regex::as_str);
    match outcome {
        RunOutcome::TimedOut { timeout, tail } => {
            eprintln!(
                "berth run: no console line matched /{pattern}/ within {} s; last console lines:",
                timeout.as_secs_f32()
            );
            for line in tail {
                eprintln!("    | {line}");
            }
        }
        RunOutcome::EndedBeforeMatch { status, .. } => {
            eprintln!(
                "berth run: QEMU exited ({status}) before a console line matched /{pattern}/"
            );
        }
        RunOutcome::Quit => {
            eprintln!("\nberth run: {} typed: QEMU stopped", terminal::ESCAPE_NAME);
        }
        RunOutcome::Exited { status } if opts.input == ConsoleInput::Terminal => {
            eprintln!("\nberth run: QEMU exited ({status})");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_codes() {
        assert_eq!(RunOutcome::Matched { line: "x".into() }.exit_code(), 0);
        assert_eq!(
            RunOutcome::TimedOut {
                timeout: Duration::from_secs(1),
                tail: vec![]
            }
            .exit_code(),
            1
        );
        assert_eq!(
            RunOutcome::EndedBeforeMatch {
                status: ExitStatus::from_raw(0),
                tail: vec![]
            }
            .exit_code(),
            1
        );
        assert_eq!(
            RunOutcome::Exited {
                status: ExitStatus::from_raw(3 << 8)
            }
            .exit_code(),
            3
        );
        assert_eq!(
            RunOutcome::Exited {
                status: ExitStatus::from_raw(9)
            }
            .exit_code(),
            137
        );
        assert_eq!(RunOutcome::Interrupted.exit_code(), 130);
        assert_eq!(RunOutcome::Quit.exit_code(), 0);
    }
}
