//! Helpers for berth's end-to-end tests: build the host CLI and the init once per
//! test process, build each recipe's image once (shared between test processes
//! under a file lock, rebuilt when the recipe or the binaries are newer), and boot
//! images in QEMU with at most [`MAX_VMS`] VMs at a time.
//!
//! Everything goes under the workspace's `target/`: images in `target/e2e/<recipe>/`,
//! console logs in `target/e2e/logs/<test>.log`.
//!
//! The helpers panic with a full explanation on failure: they run inside tests.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub mod dns;
pub mod images;
pub mod sntp;

pub use dns::DnsServer;
pub use sntp::SntpServer;

use berth_qemu::{extract_direct_boot, BootMode, DiskWrites, PortForward, Vm, VmConfig, VmOptions};
use fs4::FileExt;
use regex::Regex;

/// How long a test waits for a boot milestone: generous, QEMU runs under TCG here.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// VMs running at once across a test process's threads (the machines have 2 cores).
pub const MAX_VMS: usize = 2;
/// The init's target triple.
pub const INIT_TARGET: &str = "x86_64-unknown-linux-musl";

/// The workspace root (this crate's parent folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target folder: `CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Where the end-to-end tests keep their images and logs.
pub fn e2e_dir() -> PathBuf {
    target_dir().join("e2e")
}

/// The release binaries the tests use.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The host CLI, `target/release/berth`.
    pub berth: PathBuf,
    /// PID 1 of the images, `target/x86_64-unknown-linux-musl/release/berth-init`.
    pub init: PathBuf,
    /// The device agent of the images, `…/release/berth-update`.
    pub update_agent: PathBuf,
}

/// Builds the host CLI and the init (release) once per test process.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        cargo_build(&["build", "--release", "-p", "berth-builder"]);
        // The device binaries, static: berth-init and berth-update (the agent).
        cargo_build(&[
            "build",
            "--release",
            "-p",
            "berth-init",
            "-p",
            "berth-agent",
            "--target",
            INIT_TARGET,
        ]);
        let target = target_dir();
        let binaries = Binaries {
            berth: target.join("release").join("berth"),
            init: target.join(INIT_TARGET).join("release").join("berth-init"),
            update_agent: target
                .join(INIT_TARGET)
                .join("release")
                .join("berth-update"),
        };
        for path in [&binaries.berth, &binaries.init, &binaries.update_agent] {
            assert!(
                path.is_file(),
                "cargo build succeeded but {} is missing",
                path.display()
            );
        }
        binaries
    })
}

fn cargo_build(args: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|err| panic!("running {cargo:?} {}: {err}", args.join(" ")));
    assert!(
        output.status.success(),
        "{cargo:?} {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A path relative to the workspace root (`recipes/hello.toml`).
pub fn workspace_path(relative: impl AsRef<Path>) -> PathBuf {
    workspace_root().join(relative)
}

/// Builds the image of `recipe` (a path relative to the workspace root or
/// absolute) into `target/e2e/<recipe-stem>/` and returns the `NAME-VERSION.img`
/// path. An image newer than the recipe and both binaries is reused; a file lock
/// keeps concurrent test processes and threads from building the same one twice.
pub fn build_image(recipe: impl AsRef<Path>) -> PathBuf {
    let recipe = workspace_path(recipe);
    let binaries = binaries();
    let stem = recipe
        .file_stem()
        .unwrap_or_else(|| panic!("recipe path {} has no file name", recipe.display()))
        .to_string_lossy()
        .into_owned();
    let e2e = e2e_dir();
    fs::create_dir_all(&e2e).unwrap_or_else(|err| panic!("creating {}: {err}", e2e.display()));
    let lock_path = e2e.join(format!("{stem}.lock"));
    let lock = File::create(&lock_path)
        .unwrap_or_else(|err| panic!("creating the lock file {}: {err}", lock_path.display()));
    // fs4's trait method, not std's inherent `File::lock` (newer than the MSRV).
    FileExt::lock(&lock).unwrap_or_else(|err| panic!("locking {}: {err}", lock_path.display()));

    let out = e2e.join(&stem);
    let inputs = [
        recipe.as_path(),
        &binaries.berth,
        &binaries.init,
        &binaries.update_agent,
    ];
    if let Some(image) = find_image(&out) {
        if is_newer_than_all(&image, &inputs) {
            return image;
        }
    }
    if out.exists() {
        fs::remove_dir_all(&out)
            .unwrap_or_else(|err| panic!("removing the old build {}: {err}", out.display()));
    }
    fs::create_dir_all(&out).unwrap_or_else(|err| panic!("creating {}: {err}", out.display()));
    let output = Command::new(&binaries.berth)
        .arg("build")
        .arg(&recipe)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|err| panic!("running {}: {err}", binaries.berth.display()));
    assert!(
        output.status.success(),
        "berth build {} failed ({}):\n{}{}",
        recipe.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let image = find_image(&out).unwrap_or_else(|| {
        panic!(
            "berth build {} succeeded but left no single *.img in {}",
            recipe.display(),
            out.display()
        )
    });
    drop(lock);
    image
}

/// The one `*.img` in `dir`, if there is exactly one.
fn find_image(dir: &Path) -> Option<PathBuf> {
    let mut images = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "img") && path.is_file());
    let image = images.next()?;
    images.next().is_none().then_some(image)
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn is_newer_than_all(output: &Path, inputs: &[&Path]) -> bool {
    let Some(built) = modified(output) else {
        return false;
    };
    inputs
        .iter()
        .all(|input| modified(input).is_some_and(|time| time < built))
}

/// Counting semaphore limiting VMs per process.
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

static SLOTS: Slots = Slots {
    used: Mutex::new(0),
    freed: Condvar::new(),
};

/// One of the [`MAX_VMS`] VM slots, given back on drop.
#[derive(Debug)]
pub struct VmPermit(());

impl VmPermit {
    /// Waits for a free slot.
    pub fn acquire() -> VmPermit {
        let mut used = SLOTS.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= MAX_VMS {
            used = SLOTS.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        VmPermit(())
    }
}

impl Drop for VmPermit {
    fn drop(&mut self) {
        let mut used = SLOTS.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(1);
        drop(used);
        SLOTS.freed.notify_one();
    }
}

/// How a test boots an image. Writes go to a throwaway overlay unless
/// `keep_writes`, so tests can share one image.
#[derive(Debug, Clone, Default)]
pub struct BootOptions {
    /// Boot the default entry's kernel directly instead of through OVMF and
    /// systemd-boot.
    pub direct: bool,
    pub ports: Vec<PortForward>,
    /// Guest memory; the library default when `None`.
    pub memory_mib: Option<u32>,
    /// Console log name under `target/e2e/logs/`; the test's name when `None`.
    pub log_name: Option<String>,
    /// Echo the console to the test's stderr as well.
    pub echo: bool,
    /// Write to the image file itself (and keep UEFI variables next to it) instead
    /// of a throwaway overlay: for tests that check the disk after the VM is gone.
    /// Boot a copy of a built image, never the shared one.
    pub persist: bool,
    /// Add QEMU's i6300esb watchdog device.
    pub watchdog: bool,
    /// NICs after the first, each on its own user-mode network (`eth1`, …).
    pub extra_nics: u32,
}

/// A booted VM holding one VM slot; derefs to [`Vm`]. Dropping it kills QEMU, then
/// frees the slot.
#[derive(Debug)]
pub struct TestVm {
    // Field order matters: the VM dies before the slot is given back.
    vm: Vm,
    _permit: VmPermit,
    _direct_files: Option<tempfile::TempDir>,
}

impl TestVm {
    /// The console log of this VM.
    pub fn log(&self) -> &Path {
        self.vm.log_path().unwrap_or(Path::new("(no log)"))
    }
}

impl Deref for TestVm {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        &self.vm
    }
}

impl DerefMut for TestVm {
    fn deref_mut(&mut self) -> &mut Vm {
        &mut self.vm
    }
}

/// The current test's name, as libtest names its thread, made safe for a file name.
pub fn test_name() -> String {
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed-test")
        .to_string();
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Boots `image` and returns the running VM, its console logged to
/// `target/e2e/logs/<test>.log` (emptied on the first boot of that name in this
/// process).
pub fn boot(image: &Path, opts: BootOptions) -> TestVm {
    static LOGS_SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let permit = VmPermit::acquire();
    let mut config = VmConfig::new(image)
        .unwrap_or_else(|err| panic!("describing a VM for {}: {err}", image.display()));
    config.writes = if opts.persist {
        DiskWrites::Persist
    } else {
        DiskWrites::Discard
    };
    config.ports = opts.ports.clone();
    config.watchdog = opts.watchdog;
    config.extra_nics = opts.extra_nics;
    if let Some(memory) = opts.memory_mib {
        config.memory_mib = memory;
    }
    let mut direct_files = None;
    if opts.direct {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-direct-")
            .tempdir()
            .unwrap_or_else(|err| panic!("creating a temporary folder: {err}"));
        let direct = extract_direct_boot(image, dir.path()).unwrap_or_else(|err| panic!("{err}"));
        config.boot = BootMode::Direct(direct);
        direct_files = Some(dir);
    }

    let name = opts.log_name.clone().unwrap_or_else(test_name);
    let log = e2e_dir().join("logs").join(format!("{name}.log"));
    {
        let mut seen = LOGS_SEEN.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get_or_insert_with(HashSet::new).insert(name) {
            // A log from an earlier run of the tests; a missing one is fine.
            let _ = fs::remove_file(&log);
        }
    }
    let echo: Option<Box<dyn Write + Send>> = if opts.echo {
        Some(Box::new(std::io::stderr()))
    } else {
        None
    };
    let vm = Vm::start(
        &config,
        VmOptions {
            echo,
            log: Some(log),
            accel: None,
        },
    )
    .unwrap_or_else(|err| panic!("booting {}: {err}", image.display()));
    TestVm {
        vm,
        _permit: permit,
        _direct_files: direct_files,
    }
}

/// A regex matching `text` literally.
pub fn literal(text: &str) -> Regex {
    Regex::new(&regex::escape(text)).expect("an escaped literal is a valid regex")
}

/// Waits until each of `texts` was on the console, in any order (lines that
/// come in no fixed order: a late DHCP lease, a container's output around a
/// health check); panics after [`BOOT_TIMEOUT`] for one of them.
pub fn expect_all(vm: &TestVm, texts: &[&str]) {
    let patterns: Vec<Regex> = texts.iter().map(|t| literal(t)).collect();
    let mut waiting: Vec<usize> = (0..texts.len()).collect();
    while !waiting.is_empty() {
        let open: Vec<&Regex> = waiting.iter().map(|&i| &patterns[i]).collect();
        let (index, _) = vm
            .expect_any(&open, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e} (log: {})", vm.log().display()));
        waiting.remove(index);
    }
}

/// Runs the host CLI (`berth ARGS`); panics with its output when it fails.
pub fn berth_cli(args: &[&std::ffi::OsStr]) -> String {
    let mut command = Command::new(&binaries().berth);
    command.args(args);
    run_tool(&mut command)
}

/// A release key pair `BASE.pub` + `BASE.key`, generated unless it exists.
pub fn release_key(base: &Path) {
    if !base.with_extension("key").exists() {
        berth_cli(&["key".as_ref(), "generate".as_ref(), base.as_os_str()]);
    }
}

/// Where a test file's update fixture lives, under `target/e2e/<name>/`: its
/// `recipes/` and `bundles/` folders and two release key pairs, `release` (the
/// images trust it) and `other` (they do not), made once.
#[derive(Debug)]
pub struct ReleaseWorkspace {
    pub dir: PathBuf,
    pub recipes: PathBuf,
    pub bundles: PathBuf,
    /// `keys/release` (`.pub`, `.key`).
    pub release: PathBuf,
    /// `keys/other`: a valid key the images do not trust.
    pub other: PathBuf,
}

impl ReleaseWorkspace {
    pub fn new(name: &str) -> ReleaseWorkspace {
        let dir = e2e_dir().join(name);
        let recipes = dir.join("recipes");
        let keys = dir.join("keys");
        let bundles = dir.join("bundles");
        for d in [&recipes, &keys, &bundles] {
            fs::create_dir_all(d).unwrap_or_else(|err| panic!("{}: {err}", d.display()));
        }
        let release = keys.join("release");
        let other = keys.join("other");
        release_key(&release);
        release_key(&other);
        ReleaseWorkspace {
            dir,
            recipes,
            bundles,
            release,
            other,
        }
    }

    /// Writes `recipes/<file_name>` (only when its text changed, so an image
    /// already built from it is reused) and builds its image.
    pub fn build(&self, file_name: &str, text: &str) -> PathBuf {
        let recipe = self.recipes.join(file_name);
        if fs::read_to_string(&recipe).ok().as_deref() != Some(text) {
            fs::write(&recipe, text).unwrap_or_else(|err| panic!("{}: {err}", recipe.display()));
        }
        build_image(&recipe)
    }
}

/// `berth bundle IMAGE --key KEY_BASE.key --out OUT`; returns `out`.
pub fn make_bundle(image: &Path, key_base: &Path, out: PathBuf) -> PathBuf {
    berth_cli(&[
        "bundle".as_ref(),
        image.as_os_str(),
        "--key".as_ref(),
        key_base.with_extension("key").as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    out
}

/// Types `command` into an image's debug shell (`[debug] console_shell = true`)
/// and returns its exit code, which the shell prints after a marker the typed
/// line itself does not contain.
pub fn shell(vm: &mut TestVm, command: &str) -> i32 {
    vm.send_line(&format!("{command}; echo @@rc\"\"=$?"))
        .unwrap_or_else(|err| panic!("typing into the console: {err}"));
    let marker = Regex::new(r"@@rc=\d+").expect("a valid regex");
    let line = vm
        .expect(&marker, BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    line.rsplit('=')
        .next()
        .and_then(|code| code.trim().parse().ok())
        .unwrap_or_else(|| panic!("no exit code in {line:?}"))
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|err| panic!("binding 127.0.0.1:0 to find a free port: {err}"));
    listener
        .local_addr()
        .unwrap_or_else(|err| panic!("reading the bound address: {err}"))
        .port()
}

/// `GET path` on `127.0.0.1:port` (HTTP/1.0, plain TCP), retried until a `200`
/// answer or `deadline`. Returns the whole response, headers included; the error
/// says what the last try saw.
pub fn http_get(port: u16, path: &str, deadline: Instant) -> Result<String, String> {
    loop {
        let last = match http_get_once(port, path) {
            Ok(response) if response.starts_with("HTTP/1.") && status_is_ok(&response) => {
                return Ok(response)
            }
            Ok(response) => format!(
                "answer: {:?}",
                response.lines().next().unwrap_or("(empty answer)")
            ),
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "GET http://127.0.0.1:{port}{path} never answered 200; last try: {last}"
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn status_is_ok(response: &str) -> bool {
    response
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        == Some("200")
}

/// One plain `GET path` on `127.0.0.1:port` (HTTP/1.0): the whole response.
pub fn http_get_once(port: u16, path: &str) -> Result<String, String> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .map_err(|err| format!("connect: {err}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|err| format!("set_read_timeout: {err}"))?;
    // One write: `write!` on an unbuffered stream sends each formatted
    // piece as its own segment, which a strict server may read piecemeal.
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("send: {err}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|err| format!("read: {err}"))?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// Copies a partition of `image` into its own file.
pub fn extract_partition(image: &Path, label: &str, out: &Path) {
    let mut disk = File::open(image).unwrap();
    let parts = berth_format::gpt::read_partitions(&mut disk).unwrap();
    let part = parts
        .iter()
        .find(|p| p.label == label)
        .unwrap_or_else(|| panic!("no partition {label} in {parts:?}"));
    std::io::Seek::seek(&mut disk, std::io::SeekFrom::Start(part.first_lba * 512)).unwrap();
    let mut out = File::create(out).unwrap();
    std::io::copy(
        &mut std::io::Read::take(&mut disk, part.size_bytes(512)),
        &mut out,
    )
    .unwrap();
}

/// Runs a standard tool and returns its stdout and stderr; fails the test when
/// it fails.
pub fn run_tool(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The initramfs module list (`/etc/berth/initramfs-modules`) of an image's
/// default boot entry, extracted with the standard `cpio`.
pub fn initramfs_module_list(image: &Path) -> String {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let boot = extract_direct_boot(image, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let raw = zstd::stream::decode_all(File::open(&boot.initrd).unwrap()).unwrap();
    let mut cpio = Command::new("cpio")
        .args(["-i", "--quiet", "-d", "etc/berth/initramfs-modules"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cpio.stdin.take().unwrap().write_all(&raw).unwrap();
    assert!(cpio.wait().unwrap().success());
    fs::read_to_string(dir.path().join("etc/berth/initramfs-modules")).unwrap()
}

/// Position of module `name` (file name without `.ko`) in a module list.
pub fn module_position(list: &str, name: &str) -> usize {
    list.lines()
        .position(|l| l.ends_with(&format!("/{name}.ko")))
        .unwrap_or_else(|| panic!("{name} not in\n{list}"))
}

/// A byte range of a file (one partition of a disk image) as a stream of its own,
/// for `fatfs`.
struct PartitionStream {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl std::io::Read for PartitionStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Seek, SeekFrom};
        let left = usize::try_from(self.len.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let n = buf.len().min(left);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Write for PartitionStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::io::{Seek, SeekFrom};
        let left = usize::try_from(self.len.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        if left == 0 && !buf.is_empty() {
            return Err(std::io::Error::other("write past the end of the partition"));
        }
        let n = buf.len().min(left);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl std::io::Seek for PartitionStream {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| std::io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

/// Opens the ESP of a disk image (offline) with `fatfs`.
fn open_esp(image: &Path) -> fatfs::FileSystem<PartitionStream> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap_or_else(|e| panic!("opening {}: {e}", image.display()));
    let parts = berth_format::gpt::read_partitions(&mut file).unwrap();
    let esp = parts
        .iter()
        .find(|p| p.label == berth_format::layout::ESP_LABEL)
        .unwrap_or_else(|| panic!("no ESP in {parts:?}"));
    let stream = PartitionStream {
        file,
        start: esp.first_lba * 512,
        len: esp.size_bytes(512),
        pos: 0,
    };
    fatfs::FileSystem::new(stream, fatfs::FsOptions::new())
        .unwrap_or_else(|e| panic!("reading the ESP of {}: {e}", image.display()))
}

/// The file names in `loader/entries/` of a disk image's ESP, sorted.
pub fn esp_entry_names(image: &Path) -> Vec<String> {
    let esp = open_esp(image);
    let dir = esp.root_dir().open_dir("loader/entries").unwrap();
    let mut names: Vec<String> = dir
        .iter()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name != "." && name != "..")
        .collect();
    names.sort();
    names
}

/// Renames a file in `loader/entries/` of a disk image's ESP, offline: e.g.
/// `berth-a.conf` to `berth-a+3.conf` to put slot A on trial.
pub fn rename_esp_entry(image: &Path, from: &str, to: &str) {
    let esp = open_esp(image);
    let dir = esp.root_dir().open_dir("loader/entries").unwrap();
    dir.rename(from, &dir, to)
        .unwrap_or_else(|e| panic!("renaming {from} to {to} on the ESP: {e}"));
    drop(dir);
    esp.unmount().unwrap();
}

/// The text of a file on a disk image's ESP (`path` relative to its root).
pub fn read_esp_file(image: &Path, path: &str) -> String {
    use std::io::Read as _;
    let esp = open_esp(image);
    let mut text = String::new();
    esp.root_dir()
        .open_file(path)
        .unwrap_or_else(|e| panic!("opening {path} on the ESP: {e}"))
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("reading {path} on the ESP: {e}"));
    text
}

/// The boot entries of a disk image's ESP as systemd-boot would see them, read
/// offline: the entries and the slots' kernels are copied into a scratch folder
/// (kernels as empty files: only their presence counts).
pub fn esp_state(image: &Path) -> berth_format::entries::EspState {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp folder: {e}"));
    let entries = dir.path().join("loader/entries");
    fs::create_dir_all(&entries).unwrap_or_else(|e| panic!("{}: {e}", entries.display()));
    for name in esp_entry_names(image) {
        let text = read_esp_file(image, &format!("loader/entries/{name}"));
        fs::write(entries.join(&name), text).unwrap_or_else(|e| panic!("copying {name}: {e}"));
    }
    let esp = open_esp(image);
    for slot in berth_format::Slot::ALL {
        let kernel = slot.kernel_path();
        if esp.root_dir().open_file(&kernel).is_ok() {
            let copy = dir.path().join(&kernel);
            fs::create_dir_all(copy.parent().expect("berth/<slot>/vmlinuz has a folder"))
                .and_then(|()| fs::write(&copy, b""))
                .unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
        }
    }
    berth_format::entries::EspState::read(dir.path())
        .unwrap_or_else(|e| panic!("reading the ESP entries of {}: {e}", image.display()))
}

/// Writes a file on a disk image's ESP, offline (its folder must exist).
pub fn write_esp_file(image: &Path, path: &str, content: &str) {
    use std::io::Write as _;
    let esp = open_esp(image);
    {
        let mut file = esp
            .root_dir()
            .create_file(path)
            .unwrap_or_else(|e| panic!("creating {path} on the ESP: {e}"));
        file.truncate().unwrap();
        file.write_all(content.as_bytes())
            .unwrap_or_else(|e| panic!("writing {path} on the ESP: {e}"));
        file.flush().unwrap();
    }
    esp.unmount().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exactly_one_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(find_image(dir.path()), None);
        fs::write(dir.path().join("hello-1.0.0.img"), b"").expect("write");
        fs::write(dir.path().join("hello-1.0.0.img.q35.vars.fd"), b"").expect("write");
        fs::write(dir.path().join("hello-1.0.0.qcow2"), b"").expect("write");
        assert_eq!(
            find_image(dir.path()),
            Some(dir.path().join("hello-1.0.0.img"))
        );
        fs::write(dir.path().join("other-1.0.0.img"), b"").expect("write");
        assert_eq!(find_image(dir.path()), None);
    }

    #[test]
    fn freshness_needs_every_input_older() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        fs::write(&old, b"").expect("write");
        fs::write(&new, b"").expect("write");
        let earlier = SystemTime::now() - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(earlier))
            .expect("set mtime");
        assert!(is_newer_than_all(&new, &[&old]));
        assert!(!is_newer_than_all(&old, &[&new]));
        assert!(!is_newer_than_all(
            &new,
            &[&old, &dir.path().join("missing")]
        ));
    }

    #[test]
    fn permits_never_exceed_the_limit() {
        let peak = std::sync::Arc::new(Mutex::new((0usize, 0usize)));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let peak = std::sync::Arc::clone(&peak);
                std::thread::spawn(move || {
                    let _permit = VmPermit::acquire();
                    {
                        let mut p = peak.lock().expect("lock");
                        p.0 += 1;
                        p.1 = p.1.max(p.0);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    peak.lock().expect("lock").0 -= 1;
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let peak = peak.lock().expect("lock").1;
        assert!((1..=MAX_VMS).contains(&peak), "peak {peak}");
    }

    #[test]
    fn http_status_line() {
        assert!(status_is_ok("HTTP/1.1 200 OK\r\n\r\nbody"));
        assert!(!status_is_ok("HTTP/1.1 404 Not Found\r\n"));
        assert!(!status_is_ok(""));
    }

    #[test]
    fn literals_are_escaped() {
        assert!(literal("[flaky] flaky run").is_match("x [flaky] flaky run"));
        assert!(!literal("a.b").is_match("axb"));
    }

    #[test]
    fn http_get_reads_a_local_server() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            // Read the whole head: TCP may deliver it in several pieces.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).expect("read");
                assert!(n > 0, "client closed before the end of its request");
                request.extend_from_slice(&buf[..n]);
            }
            assert!(request.starts_with(b"GET /index.html HTTP/1.0\r\n"));
            stream
                .write_all(b"HTTP/1.0 200 OK\r\n\r\nWelcome to berth")
                .expect("write");
        });
        let page = http_get(
            port,
            "/index.html",
            Instant::now() + Duration::from_secs(30),
        )
        .expect("page");
        assert!(page.ends_with("Welcome to berth"));
        server.join().expect("server");
    }
}

/// A qcow2 overlay in `dir` over the raw image `base`: the guest writes to the
/// overlay and the base stays as built, so each test gets a device of its own
/// without copying the whole disk.
pub fn overlay(base: &Path, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.qcow2"));
    let _ = fs::remove_file(&path);
    run_tool(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(base)
            .arg(&path),
    );
    path
}

/// Converts a qcow2 overlay (or any image QEMU reads) into a raw file, for
/// checking a device's disk offline with the standard tools.
pub fn to_raw(image: &Path, raw: &Path) {
    run_tool(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(image)
            .arg(raw),
    );
}

/// A static HTTP/1.0 file server on 127.0.0.1 (the guest reaches it at
/// 10.0.2.2 through QEMU's user networking), serving the files of one folder
/// and its subfolders;
/// stops when dropped.
#[derive(Debug)]
pub struct FileServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FileServer {
    /// Serves `dir` on a free port.
    pub fn start(dir: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|err| panic!("binding a file server: {err}"));
        let port = listener.local_addr().expect("bound address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let dir = dir.clone();
                        std::thread::spawn(move || serve_one(stream, &dir));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        FileServer { port, stop }
    }

    /// The URL of `name` as the guest sees it.
    pub fn guest_url(&self, name: &str) -> String {
        format!("http://10.0.2.2:{}/{name}", self.port)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve_one(mut stream: TcpStream, dir: &Path) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("");
    let name = path.trim_start_matches('/');
    // Subfolders (an update repository's bundles/) but nothing that leaves `dir`.
    let safe = !name.is_empty()
        && !name.contains('\\')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    let file = safe.then(|| File::open(dir.join(name)).ok()).flatten();
    match file {
        Some(mut file) => {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n"
            );
            let _ = std::io::copy(&mut file, &mut stream);
        }
        None => {
            let _ = stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        }
    }
}
