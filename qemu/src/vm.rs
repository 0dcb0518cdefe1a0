//! A running QEMU: its console, its QMP socket, its exit. Dropping a [`Vm`] kills
//! QEMU, so no caller (and no failing test) leaves a VM behind.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;

use crate::accel::{self, Accel, AccelError};
use crate::command::{self, BootMode, CommandError, DiskWrites, Runtime, VmConfig};
use crate::console::{self, Console, Echo, ExpectError, Found, LogHint, Outputs, Tail};
use crate::qmp::{Qmp, QmpError};

/// How long QEMU gets to open its QMP socket.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Vm::stop`] waits after `quit` before killing.
const QUIT_GRACE: Duration = Duration::from_secs(5);

/// Failure to start or control a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The accelerator could not be chosen.
    #[error(transparent)]
    Accel(#[from] AccelError),
    /// The command line could not be prepared.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The VM's scratch folder (QMP socket, throwaway variable store) failed.
    #[error("creating the VM's scratch folder in {path}: {source}")]
    Scratch {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The console log could not be opened.
    #[error("opening the console log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    /// QEMU did not start.
    #[error("starting {program} for {image}: {source} (QEMU comes with the README's setup command: qemu-system-x86 for x86_64 images, qemu-system-arm for arm64 ones)")]
    Spawn {
        program: PathBuf,
        image: PathBuf,
        source: std::io::Error,
    },
    /// Asking the OS about the QEMU process failed.
    #[error("waiting for QEMU (pid {pid}, {image}): {source}")]
    Wait {
        pid: u32,
        image: PathBuf,
        source: std::io::Error,
    },
    /// QEMU was still running when the time ran out.
    #[error("QEMU (pid {pid}, {image}) still running after {} s{log}; last console lines:\n{tail}", timeout.as_secs_f32())]
    StillRunning {
        pid: u32,
        image: PathBuf,
        timeout: Duration,
        tail: Tail,
        log: LogHint,
    },
}

/// How a VM is started besides its [`VmConfig`].
#[derive(Default)]
pub struct VmOptions {
    /// Every console line is also written here (e.g. `Box::new(std::io::stdout())`).
    pub echo: Option<Box<dyn Write + Send>>,
    /// The console (and QEMU's stderr, marked) is appended to this file; its folder
    /// is created.
    pub log: Option<PathBuf>,
    /// Forces an accelerator; `None` runs [`accel::detect`].
    pub accel: Option<Accel>,
}

impl std::fmt::Debug for VmOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmOptions")
            .field("echo", &self.echo.as_ref().map(|_| "…"))
            .field("log", &self.log)
            .field("accel", &self.accel)
            .finish()
    }
}

/// Waits for a VM's debug shell from another thread (see [`Vm::shell_gate`]).
#[derive(Debug, Clone)]
pub struct ShellGate(Arc<Console>);

impl ShellGate {
    /// Blocks until the guest announced its debug shell (true) or QEMU closed
    /// its console (false).
    pub fn wait(&self) -> bool {
        self.0.wait_for_shell()
    }
}

/// A running QEMU.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    /// QEMU's standard input: the serial console's input (`-serial stdio`).
    stdin: Option<ChildStdin>,
    status: Option<ExitStatus>,
    image: PathBuf,
    accel: Accel,
    args: Vec<OsString>,
    console: Arc<Console>,
    readers: Vec<JoinHandle<()>>,
    qmp_path: PathBuf,
    qmp: Mutex<Option<Qmp>>,
    log: Option<PathBuf>,
    /// Holds the QMP socket (and the throwaway variable store); removed on drop.
    _scratch: tempfile::TempDir,
}

impl Vm {
    /// Starts QEMU for `config`. For UEFI boot the variable store is a fresh copy
    /// in the scratch folder when writes are discarded (so several VMs can boot one
    /// image), or the persistent copy next to the image, made when missing.
    pub fn start(config: &VmConfig, options: VmOptions) -> Result<Vm, VmError> {
        Vm::start_with_echo(config, options, Echo::Lines)
    }

    /// [`Vm::start`], with the console echoed as `echo_mode` says (`berth run`
    /// on a terminal echoes bytes, so a shell's prompt shows before its line
    /// ends).
    pub fn start_with_echo(
        config: &VmConfig,
        options: VmOptions,
        echo_mode: Echo,
    ) -> Result<Vm, VmError> {
        let accel = match options.accel {
            Some(accel) => accel,
            // KVM runs guests of the host's own architecture only.
            None if config.arch != berth_format::Arch::native() => accel::Accel::Tcg,
            None => accel::detect(&config.qemu)?,
        };
        let scratch = tempfile::Builder::new()
            .prefix("berth-vm-")
            .tempdir()
            .map_err(|source| VmError::Scratch {
                path: std::env::temp_dir(),
                source,
            })?;
        let qmp_path = scratch.path().join("qmp.sock");
        let uefi_vars = match (&config.boot, config.writes) {
            (BootMode::Uefi(firmware), DiskWrites::Discard) => {
                let path = scratch
                    .path()
                    .join(format!("efivars.{}.fd", command::machine(config.arch)));
                command::ensure_vars_copy(firmware, &path)?;
                path
            }
            (BootMode::Uefi(firmware), DiskWrites::Persist) => {
                let path = config.persistent_vars_path();
                command::ensure_vars_copy(firmware, &path)?;
                path
            }
            (BootMode::Direct(_), _) => PathBuf::new(),
        };
        let args = command::qemu_args(
            config,
            &Runtime {
                accel,
                qmp_socket: qmp_path.clone(),
                uefi_vars,
            },
        );

        let log_file = match &options.log {
            Some(path) => Some(Arc::new(Mutex::new(open_log(path, &config.qemu, &args)?))),
            None => None,
        };

        let mut child = Command::new(&config.qemu)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| VmError::Spawn {
                program: config.qemu.clone(),
                image: config.image.clone(),
                source,
            })?;

        let console = Arc::new(Console::default());
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let console = Arc::clone(&console);
            let outputs = Outputs {
                echo: options.echo,
                echo_mode,
                log: log_file.clone(),
            };
            readers.push(thread::spawn(move || {
                console::read_console(stdout, &console, outputs);
            }));
        }
        if let Some(stderr) = child.stderr.take() {
            let console = Arc::clone(&console);
            let log = log_file;
            readers.push(thread::spawn(move || {
                console::read_stderr(stderr, &console, log);
            }));
        }

        let stdin = child.stdin.take();
        Ok(Vm {
            child,
            stdin,
            status: None,
            image: config.image.clone(),
            accel,
            args,
            console,
            readers,
            qmp_path,
            qmp: Mutex::new(None),
            log: options.log,
            _scratch: scratch,
        })
    }

    /// Types `line` and Enter on the serial console (QEMU's standard input).
    pub fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the console input is closed",
            )
        })?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()
    }

    /// Takes the console's input (QEMU's standard input) for a caller that
    /// writes to it from another thread; [`Vm::send_line`] fails afterwards.
    pub fn take_console_input(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// How many times the guest announced its debug shell so far (one per boot
    /// of a development image).
    pub fn shell_announcements(&self) -> u64 {
        self.console.shell_announcements()
    }

    /// A handle that waits, from any thread, for the guest's debug shell.
    pub fn shell_gate(&self) -> ShellGate {
        ShellGate(Arc::clone(&self.console))
    }

    /// The accelerator QEMU runs with.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The arguments QEMU was started with (without the program).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// The console log file, if one was asked for.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Waits for the next console line matching `pattern`; lines before it are
    /// consumed, so calling again finds a later line.
    pub fn expect(&self, pattern: &Regex, timeout: Duration) -> Result<String, ExpectError> {
        self.expect_any(&[pattern], timeout).map(|(_, line)| line)
    }

    /// Waits for the next console line matching any of `patterns`; returns which
    /// one matched and the line.
    pub fn expect_any(
        &self,
        patterns: &[&Regex],
        timeout: Duration,
    ) -> Result<(usize, String), ExpectError> {
        match self.console.wait_for(patterns, Instant::now() + timeout) {
            Found::Line(index, line) => Ok((index, line)),
            Found::TimedOut => Err(ExpectError::Timeout {
                patterns: console::describe(patterns),
                timeout,
                tail: Tail(self.console.tail()),
                log: LogHint(self.log.clone()),
            }),
            Found::Closed => Err(self.ended(patterns)),
        }
    }

    /// Like [`Vm::expect_any`] up to `deadline`, but `Ok(None)` when the time runs
    /// out: for callers that poll something else in between (Ctrl-C).
    pub fn poll_any(
        &self,
        patterns: &[&Regex],
        deadline: Instant,
    ) -> Result<Option<(usize, String)>, ExpectError> {
        match self.console.wait_for(patterns, deadline) {
            Found::Line(index, line) => Ok(Some((index, line))),
            Found::TimedOut => Ok(None),
            Found::Closed => Err(self.ended(patterns)),
        }
    }

    fn ended(&self, patterns: &[&Regex]) -> ExpectError {
        ExpectError::Ended {
            patterns: console::describe(patterns),
            tail: Tail(self.console.tail()),
            stderr: Tail(self.console.stderr_tail(Duration::from_secs(2))),
            log: LogHint(self.log.clone()),
        }
    }

    /// The last console lines (at most [`console::TAIL_LINES`]).
    pub fn tail(&self) -> Vec<String> {
        self.console.tail()
    }

    /// How many console lines QEMU printed so far.
    pub fn line_count(&self) -> u64 {
        self.console.line_count()
    }

    /// Runs a QMP command, connecting on first use.
    pub fn qmp(&self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.with_qmp(|qmp| qmp.execute(command, arguments))
    }

    /// Presses the ACPI power button.
    pub fn powerdown(&self) -> Result<(), QmpError> {
        self.with_qmp(Qmp::system_powerdown)
    }

    /// Resets the machine.
    pub fn reset(&self) -> Result<(), QmpError> {
        self.with_qmp(Qmp::system_reset)
    }

    /// Asks QEMU to quit at once (QMP `quit`); does not wait for the exit.
    pub fn quit(&self) -> Result<(), QmpError> {
        self.with_qmp(Qmp::quit)
    }

    fn with_qmp<T>(&self, op: impl FnOnce(&mut Qmp) -> Result<T, QmpError>) -> Result<T, QmpError> {
        let mut guard: MutexGuard<'_, Option<Qmp>> =
            self.qmp.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let console = Arc::clone(&self.console);
            let qmp = Qmp::connect_while(&self.qmp_path, QMP_CONNECT_TIMEOUT, || {
                // QEMU that already exited will never create the socket.
                !console.is_closed()
            })?;
            *guard = Some(qmp);
        }
        let qmp = guard.as_mut().ok_or_else(|| QmpError::Closed {
            path: self.qmp_path.clone(),
            waiting_for: "a connection".into(),
        })?;
        let result = op(qmp);
        if matches!(result, Err(QmpError::Closed { .. } | QmpError::Io { .. })) {
            *guard = None;
        }
        result
    }

    /// QEMU's exit status if it has exited, without waiting.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>, VmError> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|source| VmError::Wait {
                pid: self.child.id(),
                image: self.image.clone(),
                source,
            })?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                self.join_readers();
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(VmError::StillRunning {
                    pid: self.child.id(),
                    image: self.image.clone(),
                    timeout,
                    tail: Tail(self.console.tail()),
                    log: LogHint(self.log.clone()),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, VmError> {
        if let Some(status) = self.try_status()? {
            return Ok(status);
        }
        let pid = self.child.id();
        // Fails only when the process already exited; `wait` tells either way.
        let _ = self.child.kill();
        let status = self.child.wait().map_err(|source| VmError::Wait {
            pid,
            image: self.image.clone(),
            source,
        })?;
        self.status = Some(status);
        self.join_readers();
        Ok(status)
    }

    /// Ends QEMU: QMP `quit`, a short wait, then SIGKILL if it is still there.
    pub fn stop(&mut self) -> Result<ExitStatus, VmError> {
        if let Some(status) = self.try_status()? {
            return Ok(status);
        }
        if self.quit().is_ok() {
            if let Ok(status) = self.wait_exit(QUIT_GRACE) {
                return Ok(status);
            }
        }
        self.kill()
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn open_log(path: &Path, qemu: &Path, args: &[OsString]) -> Result<File, VmError> {
    let log_error = |source| VmError::Log {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(log_error)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(log_error)?;
    let command_line: Vec<String> = std::iter::once(qemu.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    writeln!(file, "=== berth-qemu: {}", command_line.join(" ")).map_err(log_error)?;
    Ok(file)
}
