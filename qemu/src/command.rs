//! The VM description and the QEMU command line it turns into.
//!
//! [`qemu_args`] is a pure function: everything it needs that exists only at run
//! time (the accelerator, the QMP socket, the UEFI variable store copy) comes in as
//! arguments, so the exact argv is unit-tested.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use berth_format::Arch;

use crate::accel::Accel;

/// The QEMU binary used for x86_64 images unless a [`VmConfig`] names another.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// The QEMU binary of arm64 images (Debian's qemu-system-arm).
pub const QEMU_AARCH64: &str = "qemu-system-aarch64";
/// The machine type every x86_64 berth VM uses. UEFI variable stores are tied to it.
pub const MACHINE: &str = "q35";
/// The machine type of arm64 VMs: QEMU's generic Arm board (PCIe, a PL011
/// UART, UEFI through AAVMF).
pub const MACHINE_AARCH64: &str = "virt";
/// The CPU arm64 VMs emulate under TCG (QEMU's `virt` default is a 32-bit
/// Cortex-A15): an ARMv8.0 core every arm64 Debian kernel runs on, without the
/// pointer authentication that `max` emulates slowly.
pub const TCG_CPU_AARCH64: &str = "cortex-a72";
/// AAVMF (OVMF for Arm, Debian's qemu-efi-aarch64): code and variable store.
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS_TEMPLATE: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// The QEMU binary for guests of `arch`.
pub fn qemu_program(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => DEFAULT_QEMU,
        Arch::Arm64 => QEMU_AARCH64,
    }
}

/// The machine type for guests of `arch`.
pub fn machine(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => MACHINE,
        Arch::Arm64 => MACHINE_AARCH64,
    }
}
/// Guest memory unless the caller asks for more.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// Virtual CPUs unless the caller asks for another count.
pub const DEFAULT_CPUS: u32 = 2;
/// OVMF's code, mapped read-only.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF's pristine variable store; each VM gets a copy of it.
pub const OVMF_VARS_TEMPLATE: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Failure to describe a VM.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The disk image's first bytes could not be read to tell raw from qcow2.
    #[error("reading the disk image {path} to detect its format: {source}")]
    ReadImage {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The UEFI variable store copy could not be made.
    #[error("copying the UEFI variable store {template} to {path}: {source} (the UEFI firmware comes with the README's setup command: ovmf for x86_64 images, qemu-efi-aarch64 for arm64 ones)")]
    CopyVars {
        template: PathBuf,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How the disk image is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    /// QEMU's name of the format.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// Tells the format from the image's first bytes (qcow2 starts with `QFI\xfb`).
    pub fn detect(image: &Path) -> Result<DiskFormat, CommandError> {
        let read_error = |source| CommandError::ReadImage {
            path: image.to_path_buf(),
            source,
        };
        let mut file = fs::File::open(image).map_err(read_error)?;
        let mut magic = [0u8; 4];
        let mut filled = 0;
        while filled < magic.len() {
            let n = file.read(&mut magic[filled..]).map_err(read_error)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(if filled == 4 && &magic == b"QFI\xfb" {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        })
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to writes to the disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskWrites {
    /// Writes go to the image file.
    #[default]
    Persist,
    /// Writes go to a temporary overlay that QEMU drops on exit (`snapshot=on`); the
    /// image file is only read, so several VMs can boot the same image at once.
    Discard,
}

/// How the guest sees its disk: the paravirtual disk of VMs, or one of the
/// controllers of real hardware, as QEMU presents each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskBus {
    /// virtio-blk (`/dev/vda`): the default.
    #[default]
    Virtio,
    /// An NVMe controller (`/dev/nvme0n1`).
    Nvme,
    /// A SATA disk on the AHCI controller (`/dev/sda`; q35's own ICH9 AHCI, a
    /// PCI one added on arm64's `virt`).
    Sata,
    /// A USB mass-storage stick on an xHCI controller (`/dev/sda`).
    Usb,
}

/// A name that is no disk bus.
#[derive(Debug, thiserror::Error)]
#[error("unknown disk bus {0:?}: expected virtio, nvme, sata or usb")]
pub struct UnknownDiskBus(pub String);

impl std::str::FromStr for DiskBus {
    type Err = UnknownDiskBus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "virtio" => Ok(DiskBus::Virtio),
            "nvme" => Ok(DiskBus::Nvme),
            "sata" | "ahci" => Ok(DiskBus::Sata),
            "usb" => Ok(DiskBus::Usb),
            other => Err(UnknownDiskBus(other.to_string())),
        }
    }
}

impl DiskBus {
    /// The `-device` arguments that attach drive `disk` (several for a bus that
    /// needs its controller first).
    fn devices(self, arch: Arch) -> Vec<&'static str> {
        match (self, arch) {
            (DiskBus::Virtio, _) => vec!["virtio-blk-pci,drive=disk"],
            (DiskBus::Nvme, _) => vec!["nvme,drive=disk,serial=berth-disk"],
            (DiskBus::Sata, Arch::X86_64) => vec!["ide-hd,drive=disk,bus=ide.0"],
            (DiskBus::Sata, Arch::Arm64) => {
                vec!["ich9-ahci,id=ahci", "ide-hd,drive=disk,bus=ahci.0"]
            }
            (DiskBus::Usb, _) => vec!["qemu-xhci,id=xhci", "usb-storage,drive=disk,bus=xhci.0"],
        }
    }
}

/// A TCP port of the guest reachable from the host through QEMU's user networking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// Port on the host's 127.0.0.1.
    pub host: u16,
    /// Port in the guest.
    pub guest: u16,
}

/// A `HOST:GUEST` string that is not two port numbers.
#[derive(Debug, thiserror::Error)]
#[error("bad port forward {0:?}: expected HOST:GUEST, two port numbers such as 8080:80")]
pub struct BadPortForward(pub String);

impl std::str::FromStr for PortForward {
    type Err = BadPortForward;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPortForward(s.to_string());
        let (host, guest) = s.split_once(':').ok_or_else(bad)?;
        Ok(PortForward {
            host: host.trim().parse().map_err(|_| bad())?,
            guest: guest.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// A kernel, initramfs and command line booted without firmware boot loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

/// The UEFI firmware files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    /// Firmware code, mapped read-only.
    pub code: PathBuf,
    /// Pristine variable store copied for each image and machine type.
    pub vars_template: PathBuf,
}

impl Default for Firmware {
    fn default() -> Self {
        Firmware::for_arch(Arch::X86_64)
    }
}

impl Firmware {
    /// The UEFI firmware for guests of `arch`: OVMF or AAVMF.
    pub fn for_arch(arch: Arch) -> Firmware {
        let (code, vars) = match arch {
            Arch::X86_64 => (OVMF_CODE, OVMF_VARS_TEMPLATE),
            Arch::Arm64 => (AAVMF_CODE, AAVMF_VARS_TEMPLATE),
        };
        Firmware {
            code: PathBuf::from(code),
            vars_template: PathBuf::from(vars),
        }
    }
}

/// How the VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootMode {
    /// OVMF, then the boot loader on the disk's ESP.
    Uefi(Firmware),
    /// QEMU loads the kernel and initramfs itself (SeaBIOS, no boot loader).
    Direct(DirectBoot),
}

/// Everything that describes a VM. Build one with [`VmConfig::new`] and change the
/// public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The guest's architecture: the machine type, CPU and firmware follow it.
    pub arch: Arch,
    pub image: PathBuf,
    pub format: DiskFormat,
    pub writes: DiskWrites,
    /// How the disk is attached.
    pub disk_bus: DiskBus,
    pub memory_mib: u32,
    pub cpus: u32,
    pub ports: Vec<PortForward>,
    pub boot: BootMode,
    /// An Intel 6300ESB watchdog device (`-device i6300esb`): the guest's
    /// `/dev/watchdog` when its kernel has the driver.
    pub watchdog: bool,
    /// More virtio NICs after the first, each on its own user-mode network
    /// (no forwarded ports): the guest sees `eth1`, `eth2`, … .
    pub extra_nics: u32,
    /// Record every request the guest makes to the disk — writes with their
    /// data, flushes, discards, in the order they completed — into this file,
    /// in the dm-log-writes format (QEMU's `blklogwrites` driver, 512-byte log
    /// sectors; the file must exist and is written from its start). For
    /// power-cut tests: with the disk as it was, the log gives every state a
    /// cut could leave. Ignored with [`DiskWrites::Discard`] (the writes would
    /// go to the throwaway overlay above the log).
    pub write_log: Option<PathBuf>,
    /// Appended to the command line as they are.
    pub extra_args: Vec<OsString>,
}

impl VmConfig {
    /// A UEFI VM booting `image` with the defaults: 512 MiB, 2 CPUs, writes kept, no
    /// forwarded ports; the disk format is read from the image (raw unless it starts
    /// with the qcow2 magic), and so is its architecture ([`image_arch`]).
    pub fn new(image: impl Into<PathBuf>) -> Result<VmConfig, CommandError> {
        let image = image.into();
        let format = DiskFormat::detect(&image)?;
        let arch = match format {
            DiskFormat::Raw => image_arch(&image),
            DiskFormat::Qcow2 => Arch::X86_64,
        };
        Ok(VmConfig {
            qemu: PathBuf::from(qemu_program(arch)),
            arch,
            image,
            format,
            writes: DiskWrites::default(),
            disk_bus: DiskBus::default(),
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: DEFAULT_CPUS,
            ports: Vec::new(),
            boot: BootMode::Uefi(Firmware::for_arch(arch)),
            watchdog: false,
            extra_nics: 0,
            write_log: None,
            extra_args: Vec::new(),
        })
    }

    /// Where a persistent VM keeps its UEFI variable store: next to the image, one
    /// per machine type (`hello-1.0.0.img.q35.vars.fd`), because a store used with
    /// one machine type drops the other into the EFI shell.
    pub fn persistent_vars_path(&self) -> PathBuf {
        let mut name = self
            .image
            .file_name()
            .map(OsStr::to_os_string)
            .unwrap_or_default();
        name.push(format!(".{}.vars.fd", machine(self.arch)));
        self.image.with_file_name(name)
    }
}

/// The architecture of a raw berth image: arm64 when its ESP holds the arm64
/// removable-media boot file (`EFI/BOOT/BOOTAA64.EFI`), else x86_64 (also for a
/// disk that is no berth image).
pub fn image_arch(image: &Path) -> Arch {
    let Ok(disk) = berth_image::Image::open(image) else {
        return Arch::X86_64;
    };
    let arm64 = disk
        .esp()
        .is_ok_and(|esp| esp.is_file(&Arch::Arm64.efi_boot_path()));
    if arm64 {
        Arch::Arm64
    } else {
        Arch::X86_64
    }
}

/// Copies the firmware's variable store template to `path` unless `path` exists.
pub fn ensure_vars_copy(firmware: &Firmware, path: &Path) -> Result<(), CommandError> {
    if path.exists() {
        return Ok(());
    }
    let copy_error = |source| CommandError::CopyVars {
        template: firmware.vars_template.clone(),
        path: path.to_path_buf(),
        source,
    };
    // Copy to a temporary name and rename, so an interrupted copy is never taken
    // for a store.
    let mut partial = path.as_os_str().to_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    fs::copy(&firmware.vars_template, &partial).map_err(copy_error)?;
    // The Debian template is read-only; the copy must be writable for pflash.
    let mut perms = fs::metadata(&partial).map_err(copy_error)?.permissions();
    #[allow(clippy::permissions_set_readonly_false)] // only the owner's write bit matters here
    perms.set_readonly(false);
    fs::set_permissions(&partial, perms).map_err(copy_error)?;
    fs::rename(&partial, path).map_err(copy_error)
}

/// The run-time pieces of a QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub accel: Accel,
    /// Where QEMU listens for QMP.
    pub qmp_socket: PathBuf,
    /// The writable UEFI variable store (UEFI boot only).
    pub uefi_vars: PathBuf,
}

/// The QEMU argv (without the program name) for `config`.
pub fn qemu_args(config: &VmConfig, runtime: &Runtime) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&dyn AsRef<OsStr>]| {
        for part in parts {
            args.push(part.as_ref().to_os_string());
        }
    };
    push(&[&"-nodefaults", &"-machine", &machine(config.arch)]);
    push(&[&"-accel", &runtime.accel.as_str()]);
    let cpu = match (runtime.accel.cpu_model(), config.arch) {
        (Some(model), _) => Some(model),
        (None, Arch::Arm64) => Some(TCG_CPU_AARCH64),
        (None, Arch::X86_64) => None,
    };
    if let Some(model) = cpu {
        push(&[&"-cpu", &model]);
    }
    push(&[&"-m", &config.memory_mib.to_string()]);
    push(&[&"-smp", &config.cpus.to_string()]);
    push(&[&"-display", &"none", &"-vga", &"none"]);
    push(&[&"-serial", &"stdio", &"-monitor", &"none"]);
    push(&[
        &"-qmp",
        &option_value("unix:", &runtime.qmp_socket, ",server=on,wait=off"),
    ]);
    match &config.boot {
        BootMode::Uefi(firmware) => {
            push(&[
                &"-drive",
                &option_value(
                    "if=pflash,format=raw,unit=0,readonly=on,file=",
                    &firmware.code,
                    "",
                ),
            ]);
            push(&[
                &"-drive",
                &option_value("if=pflash,format=raw,unit=1,file=", &runtime.uefi_vars, ""),
            ]);
        }
        BootMode::Direct(direct) => {
            push(&[&"-kernel", &direct.kernel]);
            push(&[&"-initrd", &direct.initrd]);
            push(&[&"-append", &direct.cmdline]);
        }
    }
    match (&config.write_log, config.writes) {
        (Some(log), DiskWrites::Persist) => {
            // The logging filter on top of the image's format driver.
            let mut drive = option_value(
                &format!(
                    "driver=blklogwrites,if=none,id=disk,log-sector-size=512,file.driver={},file.file.filename=",
                    config.format
                ),
                &config.image,
                ",log.driver=file,log.filename=",
            );
            drive.push(option_value("", log, ""));
            push(&[&"-drive", &drive]);
        }
        _ => {
            let mut drive_tail = format!(",if=none,id=disk,format={}", config.format);
            if config.writes == DiskWrites::Discard {
                drive_tail.push_str(",snapshot=on");
            }
            push(&[
                &"-drive",
                &option_value("file=", &config.image, &drive_tail),
            ]);
        }
    }
    for device in config.disk_bus.devices(config.arch) {
        push(&[&"-device", &device]);
    }
    let mut netdev = String::from("user,id=net0");
    for port in &config.ports {
        netdev.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{}-:{}",
            port.host, port.guest
        ));
    }
    push(&[&"-netdev", &netdev]);
    push(&[&"-device", &"virtio-net-pci,netdev=net0"]);
    for nic in 1..=config.extra_nics {
        push(&[&"-netdev", &format!("user,id=net{nic}")]);
        push(&[&"-device", &format!("virtio-net-pci,netdev=net{nic}")]);
    }
    if config.watchdog {
        push(&[&"-device", &"i6300esb"]);
    }
    args.extend(config.extra_args.iter().cloned());
    args
}

/// `prefix` + `path` with QEMU's option escaping (a comma is written twice) + `suffix`.
fn option_value(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut bytes = prefix.as_bytes().to_vec();
    for byte in path.as_os_str().as_bytes() {
        bytes.push(*byte);
        if *byte == b',' {
            bytes.push(b',');
        }
    }
    bytes.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(boot: BootMode) -> VmConfig {
        VmConfig {
            qemu: PathBuf::from(DEFAULT_QEMU),
            arch: Arch::X86_64,
            image: PathBuf::from("/images/hello-1.0.0.img"),
            format: DiskFormat::Raw,
            writes: DiskWrites::Persist,
            disk_bus: DiskBus::Virtio,
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: DEFAULT_CPUS,
            ports: Vec::new(),
            boot,
            watchdog: false,
            extra_nics: 0,
            write_log: None,
            extra_args: Vec::new(),
        }
    }

    #[test]
    fn the_host_cpu_under_kvm_and_the_default_model_under_tcg() {
        let config = config(BootMode::Uefi(Firmware::default()));
        let kvm = strings(qemu_args(&config, &runtime(Accel::Kvm)));
        let at = kvm
            .iter()
            .position(|a| a == "-cpu")
            .expect("-cpu under KVM");
        assert_eq!(kvm[at + 1], "host");
        let tcg = strings(qemu_args(&config, &runtime(Accel::Tcg)));
        assert!(!tcg.iter().any(|a| a == "-cpu"), "{tcg:?}");
    }

    #[test]
    fn arm64_guests_run_on_the_virt_board_with_a_64_bit_cpu_and_aavmf() {
        let mut config = config(BootMode::Uefi(Firmware::for_arch(Arch::Arm64)));
        config.arch = Arch::Arm64;
        let args = strings(qemu_args(&config, &runtime(Accel::Tcg)));
        let after = |flag: &str| {
            let at = args.iter().position(|a| a == flag).expect(flag);
            args[at + 1].clone()
        };
        assert_eq!(after("-machine"), "virt");
        assert_eq!(after("-cpu"), TCG_CPU_AARCH64);
        assert!(
            args.iter().any(|a| a
                == "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd"),
            "{args:?}"
        );
        // KVM (an arm64 host) gives the host's CPU.
        let kvm = strings(qemu_args(&config, &runtime(Accel::Kvm)));
        let at = kvm.iter().position(|a| a == "-cpu").unwrap();
        assert_eq!(kvm[at + 1], "host");
        assert_eq!(qemu_program(Arch::Arm64), "qemu-system-aarch64");
        assert!(config
            .persistent_vars_path()
            .ends_with("hello-1.0.0.img.virt.vars.fd"));
    }

    #[test]
    fn the_disk_goes_on_the_bus_asked_for() {
        let mut config = config(BootMode::Uefi(Firmware::default()));
        let devices = |config: &VmConfig| {
            let args = strings(qemu_args(config, &runtime(Accel::Tcg)));
            args.windows(2)
                .filter(|w| w[0] == "-device" && !w[1].starts_with("virtio-net"))
                .map(|w| w[1].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(devices(&config), ["virtio-blk-pci,drive=disk"]);
        config.disk_bus = "nvme".parse().unwrap();
        assert_eq!(devices(&config), ["nvme,drive=disk,serial=berth-disk"]);
        config.disk_bus = "sata".parse().unwrap();
        assert_eq!(devices(&config), ["ide-hd,drive=disk,bus=ide.0"]);
        config.disk_bus = "usb".parse().unwrap();
        assert_eq!(
            devices(&config),
            ["qemu-xhci,id=xhci", "usb-storage,drive=disk,bus=xhci.0"]
        );
        let err = "scsi".parse::<DiskBus>().unwrap_err().to_string();
        assert!(err.contains("virtio, nvme, sata or usb"), "{err}");
    }

    #[test]
    fn watchdog_device_when_asked() {
        let mut config = config(BootMode::Uefi(Firmware::default()));
        let without = strings(qemu_args(&config, &runtime(Accel::Tcg)));
        assert!(!without.iter().any(|a| a == "i6300esb"));
        config.watchdog = true;
        let with = strings(qemu_args(&config, &runtime(Accel::Tcg)));
        let at = with
            .iter()
            .position(|a| a == "i6300esb")
            .expect("the device");
        assert_eq!(with[at - 1], "-device");
    }

    #[test]
    fn extra_nics_each_on_their_own_user_network() {
        let mut config = config(BootMode::Uefi(Firmware::default()));
        config.extra_nics = 2;
        let args = strings(qemu_args(&config, &runtime(Accel::Tcg)));
        let devices: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "-device" && w[1].starts_with("virtio-net-pci"))
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            devices,
            [
                "virtio-net-pci,netdev=net0",
                "virtio-net-pci,netdev=net1",
                "virtio-net-pci,netdev=net2"
            ]
        );
        assert!(args.iter().any(|a| a == "user,id=net2"));
    }

    fn runtime(accel: Accel) -> Runtime {
        Runtime {
            accel,
            qmp_socket: PathBuf::from("/tmp/vm/qmp.sock"),
            uefi_vars: PathBuf::from("/images/hello-1.0.0.img.q35.vars.fd"),
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|a| a.into_string().expect("utf-8 in tests"))
            .collect()
    }

    #[test]
    fn uefi_default_argv() {
        let args = strings(qemu_args(
            &config(BootMode::Uefi(Firmware::default())),
            &runtime(Accel::Tcg),
        ));
        let expected = [
            "-nodefaults",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-smp",
            "2",
            "-display",
            "none",
            "-vga",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-qmp",
            "unix:/tmp/vm/qmp.sock,server=on,wait=off",
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "-drive",
            "if=pflash,format=raw,unit=1,file=/images/hello-1.0.0.img.q35.vars.fd",
            "-drive",
            "file=/images/hello-1.0.0.img,if=none,id=disk,format=raw",
            "-device",
            "virtio-blk-pci,drive=disk",
            "-netdev",
            "user,id=net0",
            "-device",
            "virtio-net-pci,netdev=net0",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn a_write_log_puts_blklogwrites_over_the_disk() {
        let mut config = config(BootMode::Uefi(Firmware::default()));
        config.image = PathBuf::from("/w/a,b.img");
        config.write_log = Some(PathBuf::from("/w/writes.log"));
        let args = strings(qemu_args(&config, &runtime(Accel::Tcg)));
        let drive = args
            .iter()
            .find(|a| a.contains("id=disk"))
            .expect("a disk drive");
        assert_eq!(
            drive,
            "driver=blklogwrites,if=none,id=disk,log-sector-size=512,file.driver=raw,\
             file.file.filename=/w/a,,b.img,log.driver=file,log.filename=/w/writes.log"
        );
        // With writes discarded the log would see none of them: not used.
        config.writes = DiskWrites::Discard;
        let args = strings(qemu_args(&config, &runtime(Accel::Tcg)));
        assert!(args.iter().any(|a| a.ends_with("snapshot=on")), "{args:?}");
        assert!(!args.iter().any(|a| a.contains("blklogwrites")), "{args:?}");
    }

    #[test]
    fn direct_snapshot_ports_and_extras() {
        let mut config = config(BootMode::Direct(DirectBoot {
            kernel: PathBuf::from("/w/vmlinuz"),
            initrd: PathBuf::from("/w/initrd.img"),
            cmdline: "root=PARTUUID=x ro console=ttyS0".into(),
        }));
        config.format = DiskFormat::Qcow2;
        config.image = PathBuf::from("/images/web-1.0.0.qcow2");
        config.writes = DiskWrites::Discard;
        config.memory_mib = 1024;
        config.cpus = 1;
        config.ports = vec![
            PortForward {
                host: 8080,
                guest: 80,
            },
            PortForward {
                host: 2222,
                guest: 22,
            },
        ];
        config.extra_args = vec!["-no-reboot".into()];
        let args = strings(qemu_args(&config, &runtime(Accel::Kvm)));
        let expected = [
            "-nodefaults",
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "1024",
            "-smp",
            "1",
            "-display",
            "none",
            "-vga",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-qmp",
            "unix:/tmp/vm/qmp.sock,server=on,wait=off",
            "-kernel",
            "/w/vmlinuz",
            "-initrd",
            "/w/initrd.img",
            "-append",
            "root=PARTUUID=x ro console=ttyS0",
            "-drive",
            "file=/images/web-1.0.0.qcow2,if=none,id=disk,format=qcow2,snapshot=on",
            "-device",
            "virtio-blk-pci,drive=disk",
            "-netdev",
            "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:127.0.0.1:2222-:22",
            "-device",
            "virtio-net-pci,netdev=net0",
            "-no-reboot",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        let mut config = config(BootMode::Uefi(Firmware::default()));
        config.image = PathBuf::from("/odd,dir/a,b.img");
        let args = strings(qemu_args(&config, &runtime(Accel::Tcg)));
        assert!(
            args.contains(&"file=/odd,,dir/a,,b.img,if=none,id=disk,format=raw".to_string()),
            "{args:?}"
        );
    }

    #[test]
    fn vars_live_next_to_the_image_per_machine() {
        let config = config(BootMode::Uefi(Firmware::default()));
        assert_eq!(
            config.persistent_vars_path(),
            PathBuf::from("/images/hello-1.0.0.img.q35.vars.fd")
        );
    }

    #[test]
    fn port_forwards_parse() {
        let port: PortForward = "8080:80".parse().expect("valid");
        assert_eq!(
            port,
            PortForward {
                host: 8080,
                guest: 80
            }
        );
        assert!("8080".parse::<PortForward>().is_err());
        assert!("8080:http".parse::<PortForward>().is_err());
        assert!("70000:80".parse::<PortForward>().is_err());
    }

    #[test]
    fn format_is_detected_from_magic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("a.img");
        fs::write(&raw, [0u8; 1024]).expect("write");
        assert_eq!(DiskFormat::detect(&raw).expect("detect"), DiskFormat::Raw);
        let qcow = dir.path().join("a.qcow2");
        fs::write(&qcow, b"QFI\xfb\0\0\0\x03").expect("write");
        assert_eq!(
            DiskFormat::detect(&qcow).expect("detect"),
            DiskFormat::Qcow2
        );
        let missing = dir.path().join("missing.img");
        let err = DiskFormat::detect(&missing).expect_err("missing file");
        assert!(err.to_string().contains("missing.img"), "{err}");
    }

    #[test]
    fn vars_copy_is_made_once_and_writable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let template = dir.path().join("template.fd");
        fs::write(&template, b"vars").expect("write");
        let mut perms = fs::metadata(&template).expect("meta").permissions();
        perms.set_readonly(true);
        fs::set_permissions(&template, perms).expect("chmod");
        let firmware = Firmware {
            code: dir.path().join("code.fd"),
            vars_template: template,
        };
        let copy = dir.path().join("img.q35.vars.fd");
        ensure_vars_copy(&firmware, &copy).expect("copy");
        assert!(!fs::metadata(&copy).expect("meta").permissions().readonly());
        fs::write(&copy, b"changed").expect("writable");
        ensure_vars_copy(&firmware, &copy).expect("second call");
        assert_eq!(fs::read(&copy).expect("read"), b"changed");
    }
}
