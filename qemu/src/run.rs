//! `berth run`: boot an image with the console on stdout, optionally until a line
//! matches.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::command::{
    BootMode, CommandError, DirectBoot, DiskWrites, Firmware, PortForward, VmConfig, DEFAULT_CPUS,
    DEFAULT_MEMORY_MIB,
};
use crate::console::ExpectError;
use crate::direct::{self, DirectError};
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
    /// Stream the console to stdout (on by default).
    pub echo: bool,
    /// Also append the console to this file.
    pub log: Option<PathBuf>,
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
            echo: true,
            log: None,
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
    /// Ctrl-C (SIGINT) or SIGTERM on the host; the VM was stopped.
    Interrupted,
}

impl RunOutcome {
    /// The exit code `berth run` should end with: 0 on a match, 1 when it did not
    /// come, QEMU's own status when it ran to its end, 130 on Ctrl-C.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunOutcome::Matched { .. } | RunOutcome::Stopped { .. } => 0,
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
}

/// Boots `opts.image`, streams its console to stdout, and returns how it ended.
/// With `expect`, a match stops the VM at once (QMP `quit`, then kill); a timeout
/// prints the console's tail on stderr. Ctrl-C (or SIGTERM) ends QEMU; a second
/// Ctrl-C ends this process at once.
pub fn run(opts: &RunOptions) -> Result<RunOutcome, RunError> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The conditional shutdown goes first: it fires on the second signal only.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&interrupted))
            .map_err(RunError::Signal)?;
        signal_hook::flag::register(signal, Arc::clone(&interrupted)).map_err(RunError::Signal)?;
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
    // Kept alive until QEMU has read the files.
    let mut _direct_dir = None;
    config.boot = match &opts.boot {
        RunBoot::Uefi => BootMode::Uefi(Firmware::default()),
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

    let mut vm = Vm::start(
        &config,
        VmOptions {
            echo: opts
                .echo
                .then(|| Box::new(std::io::stdout()) as Box<dyn std::io::Write + Send>),
            log: opts.log.clone(),
            accel: None,
        },
    )?;

    let start = Instant::now();
    let outcome = match &opts.expect {
        Some(pattern) => {
            let timeout = opts.timeout.unwrap_or(DEFAULT_EXPECT_TIMEOUT);
            let deadline = start + timeout;
            loop {
                if interrupted.load(Ordering::SeqCst) {
                    vm.stop()?;
                    break RunOutcome::Interrupted;
                }
                let now = Instant::now();
                if now >= deadline {
                    let tail = vm.tail();
                    vm.stop()?;
                    eprintln!(
                        "berth run: no console line matched /{}/ within {} s; last console lines:",
                        pattern.as_str(),
                        timeout.as_secs_f32()
                    );
                    for line in &tail {
                        eprintln!("    | {line}");
                    }
                    break RunOutcome::TimedOut { timeout, tail };
                }
                match vm.poll_any(&[pattern], deadline.min(now + TICK)) {
                    Ok(Some((_, line))) => {
                        vm.stop()?;
                        break RunOutcome::Matched { line };
                    }
                    Ok(None) => {}
                    Err(ExpectError::Ended { tail, .. }) => {
                        let status = vm.kill()?;
                        eprintln!(
                            "berth run: QEMU exited ({status}) before a console line matched /{}/",
                            pattern.as_str()
                        );
                        break RunOutcome::EndedBeforeMatch {
                            status,
                            tail: tail.0,
                        };
                    }
                    Err(ExpectError::Timeout { .. }) => {}
                }
            }
        }
        None => loop {
            if interrupted.load(Ordering::SeqCst) {
                vm.stop()?;
                break RunOutcome::Interrupted;
            }
            if let Some(status) = vm.try_status()? {
                // Let the reader threads print the last lines.
                let status = vm.wait_exit(Duration::from_secs(5)).unwrap_or(status);
                break RunOutcome::Exited { status };
            }
            if let Some(timeout) = opts.timeout {
                if start.elapsed() >= timeout {
                    vm.stop()?;
                    break RunOutcome::Stopped { timeout };
                }
            }
            std::thread::sleep(TICK);
        },
    };
    Ok(outcome)
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
    }
}
