//! Choosing QEMU's accelerator: KVM when it really works, TCG otherwise.
//!
//! `/dev/kvm` existing proves little: on some hosts it opens, runs a trivial guest,
//! and then stops with "KVM internal error … emulation failure" as soon as OVMF runs
//! from its flash. So the probe boots for real, twice, under KVM:
//! 1. a 512-byte boot sector (`mov al,1; out 0xf4,al; hlt`) through SeaBIOS; the
//!    `isa-debug-exit` device turns the write into QEMU exit status 3;
//! 2. when OVMF is installed, OVMF itself on the same machine type berth uses; KVM
//!    works when it prints on the serial console in time.
//!
//! Anything else within the time limit means TCG. The answer is cached per host boot
//! (keyed by `/proc/sys/kernel/random/boot_id`) in `$XDG_CACHE_HOME/berth/accel` or
//! `~/.cache/berth/accel`; `BERTH_ACCEL=kvm|tcg` overrides both.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::command::{Firmware, MACHINE};

/// Environment variable that forces the accelerator.
pub const ACCEL_ENV: &str = "BERTH_ACCEL";
/// How long each probe boot may take before KVM is taken as not working.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

const KVM_DEVICE: &str = "/dev/kvm";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// QEMU's exit status when the guest writes 1 to the `isa-debug-exit` port: (1 << 1) | 1.
const DEBUG_EXIT_STATUS: i32 = 3;

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's own emulator: slow, works everywhere.
    Tcg,
}

impl Accel {
    /// QEMU's name for it (`-accel NAME`).
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The CPU model to give the guest (`-cpu MODEL`), if not QEMU's default:
    /// the host's own CPU under KVM, so the guest's kernel and the update
    /// agent's hashing and decompression use all of its features. Under TCG the
    /// default model stays: emulating more features (`max`) was not faster here
    /// and changes what the guest kernel does (5-level paging, for one).
    pub fn cpu_model(self) -> Option<&'static str> {
        match self {
            Accel::Kvm => Some("host"),
            Accel::Tcg => None,
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is neither `kvm` nor `tcg`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown accelerator {0:?}: expected \"kvm\" or \"tcg\"")]
pub struct UnknownAccel(pub String);

impl FromStr for Accel {
    type Err = UnknownAccel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(UnknownAccel(other.to_string())),
        }
    }
}

/// Failure to choose an accelerator.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccelError {
    /// `BERTH_ACCEL` holds something else than `kvm` or `tcg`.
    #[error("environment variable {ACCEL_ENV}: {0}")]
    BadEnv(UnknownAccel),
    /// The probe's scratch files could not be written.
    #[error("writing the KVM probe file {path}: {message}")]
    Scratch { path: PathBuf, message: String },
    /// QEMU could not be started at all.
    #[error("starting {program} for the KVM probe: {message} (is qemu-system-x86 installed?)")]
    Spawn { program: PathBuf, message: String },
}

/// Why an accelerator was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// `BERTH_ACCEL` said so.
    Env,
    /// A probe earlier in this host boot said so.
    Cached,
    /// `/dev/kvm` cannot be opened read-write.
    NoKvmDevice(String),
    /// The probe just ran; the text says what it saw.
    Probed(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Env => write!(f, "from {ACCEL_ENV}"),
            Reason::Cached => f.write_str("probed earlier in this host boot"),
            Reason::NoKvmDevice(why) => write!(f, "{KVM_DEVICE} unusable: {why}"),
            Reason::Probed(what) => write!(f, "probe: {what}"),
        }
    }
}

/// The accelerator for this process's VMs: decided once per process, logged once to
/// stderr, with the per-boot cache and the `BERTH_ACCEL` override.
pub fn detect(qemu: &Path) -> Result<Accel, AccelError> {
    static CHOICE: OnceLock<Result<Accel, AccelError>> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let (accel, reason) = choose(qemu)?;
            eprintln!("berth: QEMU accelerator {accel} ({reason})");
            Ok(accel)
        })
        .clone()
}

/// Decides without memoising or logging: override, cache, then the real probe.
pub fn choose(qemu: &Path) -> Result<(Accel, Reason), AccelError> {
    if let Some(value) = std::env::var_os(ACCEL_ENV) {
        let value = value.to_string_lossy();
        if !value.trim().is_empty() {
            let accel = value.parse().map_err(AccelError::BadEnv)?;
            return Ok((accel, Reason::Env));
        }
    }
    let boot_id = fs::read_to_string(BOOT_ID)
        .ok()
        .map(|id| id.trim().to_string());
    let cache = cache_path();
    if let (Some(id), Some(path)) = (&boot_id, &cache) {
        if let Some(accel) = read_cache(path, id) {
            return Ok((accel, Reason::Cached));
        }
    }
    let (accel, reason) = probe(qemu)?;
    if let (Some(id), Some(path)) = (&boot_id, &cache) {
        if let Err(err) = write_cache(path, id, accel) {
            eprintln!(
                "berth: warning: cannot cache the accelerator in {}: {err}",
                path.display()
            );
        }
    }
    Ok((accel, reason))
}

/// Where the per-boot answer is cached, if the environment names a home.
pub fn cache_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".cache"),
    };
    Some(base.join("berth").join("accel"))
}

fn read_cache(path: &Path, boot_id: &str) -> Option<Accel> {
    parse_cache(&fs::read_to_string(path).ok()?, boot_id)
}

/// The cache holds one line: `BOOT_ID ACCEL`.
fn parse_cache(text: &str, boot_id: &str) -> Option<Accel> {
    let (id, accel) = text.trim().split_once(' ')?;
    if id != boot_id {
        return None;
    }
    accel.parse().ok()
}

fn write_cache(path: &Path, boot_id: &str, accel: Accel) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut partial = path.as_os_str().to_os_string();
    partial.push(format!(".{}", std::process::id()));
    fs::write(&partial, format!("{boot_id} {accel}\n"))?;
    fs::rename(&partial, path)
}

/// The boot sector: `mov al,1; out 0xf4,al; hlt`, zeros, `55 AA`.
pub fn probe_boot_sector() -> [u8; 512] {
    let mut sector = [0u8; 512];
    sector[..5].copy_from_slice(&[0xB0, 0x01, 0xE6, 0xF4, 0xF4]);
    sector[510] = 0x55;
    sector[511] = 0xAA;
    sector
}

/// Runs the probe boots under KVM (no cache, no override).
pub fn probe(qemu: &Path) -> Result<(Accel, Reason), AccelError> {
    if let Err(err) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
    {
        return Ok((Accel::Tcg, Reason::NoKvmDevice(err.to_string())));
    }
    let scratch = tempfile::Builder::new()
        .prefix("berth-kvm-probe-")
        .tempdir()
        .map_err(|err| AccelError::Scratch {
            path: std::env::temp_dir(),
            message: err.to_string(),
        })?;
    let dir = scratch.path();
    let sector = dir.join("boot-sector.img");
    write_scratch(&sector, &probe_boot_sector())?;
    let mut command = Command::new(qemu);
    command.args([
        "-accel",
        "kvm",
        "-machine",
        "pc",
        "-nodefaults",
        "-display",
        "none",
    ]);
    command.args([
        "-m",
        "16",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]);
    command
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", sector.display()));
    match run_probe(qemu, command, PROBE_TIMEOUT, || false)? {
        ProbeEnd::Exited(Some(DEBUG_EXIT_STATUS)) => {}
        ProbeEnd::Exited(code) => {
            return Ok((
                Accel::Tcg,
                Reason::Probed(format!(
                    "the boot sector under KVM ended with status {code:?}, not {DEBUG_EXIT_STATUS}"
                )),
            ));
        }
        ProbeEnd::TimedOut | ProbeEnd::Ready => {
            return Ok((
                Accel::Tcg,
                Reason::Probed(format!(
                    "the boot sector did not finish under KVM within {} s",
                    PROBE_TIMEOUT.as_secs()
                )),
            ));
        }
    }

    let firmware = Firmware::default();
    if !firmware.code.exists() || !firmware.vars_template.exists() {
        return Ok((
            Accel::Kvm,
            Reason::Probed("a boot sector ran under KVM (OVMF not installed, not tried)".into()),
        ));
    }
    let vars = dir.join("vars.fd");
    let template = fs::read(&firmware.vars_template).map_err(|err| AccelError::Scratch {
        path: firmware.vars_template.clone(),
        message: err.to_string(),
    })?;
    write_scratch(&vars, &template)?;
    let serial = dir.join("serial.log");
    let mut command = Command::new(qemu);
    command.args([
        "-accel",
        "kvm",
        "-machine",
        MACHINE,
        "-nodefaults",
        "-display",
        "none",
    ]);
    command.args(["-m", "128", "-monitor", "none"]);
    command
        .arg("-serial")
        .arg(format!("file:{}", serial.display()));
    command.arg("-drive").arg(format!(
        "if=pflash,format=raw,unit=0,readonly=on,file={}",
        firmware.code.display()
    ));
    command.arg("-drive").arg(format!(
        "if=pflash,format=raw,unit=1,file={}",
        vars.display()
    ));
    let printed = || fs::metadata(&serial).is_ok_and(|m| m.len() > 0);
    Ok(match run_probe(qemu, command, PROBE_TIMEOUT, printed)? {
        ProbeEnd::Ready => (
            Accel::Kvm,
            Reason::Probed("a boot sector and OVMF ran under KVM".into()),
        ),
        ProbeEnd::Exited(code) => (
            Accel::Tcg,
            Reason::Probed(format!(
                "OVMF under KVM exited with status {code:?} before printing anything"
            )),
        ),
        ProbeEnd::TimedOut => (
            Accel::Tcg,
            Reason::Probed(format!(
                "OVMF printed nothing under KVM within {} s",
                PROBE_TIMEOUT.as_secs()
            )),
        ),
    })
}

fn write_scratch(path: &Path, bytes: &[u8]) -> Result<(), AccelError> {
    fs::write(path, bytes).map_err(|err| AccelError::Scratch {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

enum ProbeEnd {
    /// QEMU exited by itself with this status code.
    Exited(Option<i32>),
    /// The readiness check passed while QEMU ran.
    Ready,
    /// Neither within the time limit.
    TimedOut,
}

fn run_probe(
    qemu: &Path,
    mut command: Command,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<ProbeEnd, AccelError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn().map_err(|err| AccelError::Spawn {
        program: qemu.to_path_buf(),
        message: err.to_string(),
    })?;
    let deadline = Instant::now() + timeout;
    let end = loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(ProbeEnd::Exited(status.code())),
            Ok(None) => {}
            Err(_) => break ProbeEnd::TimedOut,
        }
        if ready() {
            break ProbeEnd::Ready;
        }
        if Instant::now() >= deadline {
            break ProbeEnd::TimedOut;
        }
        thread::sleep(Duration::from_millis(50));
    };
    end_probe(child);
    Ok(end)
}

/// Kills a probe QEMU. A process stuck in the kernel may not die at once: it is then
/// left to a thread that reaps it whenever it does, rather than blocking the caller.
fn end_probe(mut child: Child) {
    let _ = child.kill();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    thread::spawn(move || {
        let _ = child.wait();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_bytes() {
        let sector = probe_boot_sector();
        assert_eq!(&sector[..5], &[0xB0, 0x01, 0xE6, 0xF4, 0xF4]);
        assert!(sector[5..510].iter().all(|b| *b == 0));
        assert_eq!(&sector[510..], &[0x55, 0xAA]);
    }

    #[test]
    fn cache_is_keyed_by_boot_id() {
        assert_eq!(parse_cache("abc tcg\n", "abc"), Some(Accel::Tcg));
        assert_eq!(parse_cache("abc kvm", "abc"), Some(Accel::Kvm));
        assert_eq!(parse_cache("abc kvm", "def"), None);
        assert_eq!(parse_cache("abc", "abc"), None);
        assert_eq!(parse_cache("abc xen", "abc"), None);
    }

    #[test]
    fn cache_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth").join("accel");
        write_cache(&path, "id-1", Accel::Kvm).expect("write");
        assert_eq!(read_cache(&path, "id-1"), Some(Accel::Kvm));
        assert_eq!(read_cache(&path, "id-2"), None);
    }

    #[test]
    fn accel_names_parse() {
        assert_eq!("kvm".parse::<Accel>().expect("kvm"), Accel::Kvm);
        assert_eq!(" tcg\n".parse::<Accel>().expect("tcg"), Accel::Tcg);
        assert!("hvf".parse::<Accel>().is_err());
    }
}
