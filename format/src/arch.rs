//! The CPU architectures berth builds images for, and every name each one goes by:
//! the recipe's, Debian's, the OCI platform's, Rust's target, UEFI's removable-media
//! boot file, the Discoverable Partitions Specification's root type, and the
//! serial console the kernel writes to.

use std::fmt;
use std::str::FromStr;

/// An image's CPU architecture (`[image] arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Arch {
    /// 64-bit x86 (`x86_64`), the default.
    #[default]
    X86_64,
    /// 64-bit Arm (`arm64`, also called aarch64).
    Arm64,
}

/// A name that is no architecture berth builds for.
#[derive(Debug, thiserror::Error)]
#[error("unknown architecture {0:?}: expected \"x86_64\" or \"arm64\"")]
pub struct UnknownArch(pub String);

impl Arch {
    /// Every architecture, the default first.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// The architecture this program was compiled for: on a device, the device's.
    pub const fn native() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::X86_64
        }
    }

    /// The recipe's spelling (`x86_64`, `arm64`).
    pub const fn recipe_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The name in bundle manifests: the Discoverable Partitions Specification's
    /// spelling (`x86-64`, `arm64`).
    pub const fn manifest_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86-64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Debian's architecture (`amd64`, `arm64`): `apt-get download NAME:ARCH`.
    pub const fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The OCI platform architecture of container images (`amd64`, `arm64`).
    pub const fn oci(self) -> &'static str {
        self.debian()
    }

    /// The Rust target berth-init and berth-update are built for (static, musl).
    pub const fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// UEFI's suffix for the architecture's boot files: `BOOTX64.EFI`,
    /// `systemd-bootaa64.efi`.
    pub const fn efi_suffix(self) -> &'static str {
        match self {
            Arch::X86_64 => "x64",
            Arch::Arm64 => "aa64",
        }
    }

    /// The firmware's removable-media boot path on the ESP.
    pub fn efi_boot_path(self) -> String {
        format!(
            "EFI/BOOT/BOOT{}.EFI",
            self.efi_suffix().to_ascii_uppercase()
        )
    }

    /// systemd-boot's file name for the architecture.
    pub fn systemd_boot_name(self) -> String {
        format!("systemd-boot{}.efi", self.efi_suffix())
    }

    /// The root partition type GUID of the Discoverable Partitions Specification.
    pub const fn root_type_guid(self) -> &'static str {
        match self {
            Arch::X86_64 => "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
            Arch::Arm64 => "b921b045-1df0-41c3-af44-4c6f280d3fae",
        }
    }

    /// The serial console berth's boot entries name: the 16550 UART of PCs and of
    /// QEMU's `pc`/`q35`, the PL011 of QEMU's `virt` board and of most Arm boards
    /// (the Raspberry Pi's primary UART among them).
    pub const fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// The ELF machine of the architecture's executables (`e_machine`).
    pub const fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62, // EM_X86_64
            Arch::Arm64 => 183, // EM_AARCH64
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.recipe_name())
    }
}

impl FromStr for Arch {
    type Err = UnknownArch;

    /// The recipe's names, and the other common spellings of each (`amd64`,
    /// `x86-64`, `aarch64`), so a name from Debian, Docker or Rust is understood.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" | "x86-64" | "amd64" => Ok(Arch::X86_64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            other => Err(UnknownArch(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_the_boot_files_are_uefi_s() {
        for arch in Arch::ALL {
            for name in [arch.recipe_name(), arch.manifest_name(), arch.debian()] {
                assert_eq!(name.parse::<Arch>().unwrap(), arch, "{name}");
            }
        }
        assert_eq!(Arch::X86_64.efi_boot_path(), "EFI/BOOT/BOOTX64.EFI");
        assert_eq!(Arch::Arm64.efi_boot_path(), "EFI/BOOT/BOOTAA64.EFI");
        assert_eq!(Arch::Arm64.systemd_boot_name(), "systemd-bootaa64.efi");
        assert_eq!(Arch::default(), Arch::X86_64);
        let err = "riscv64".parse::<Arch>().unwrap_err().to_string();
        assert!(err.contains("\"x86_64\" or \"arm64\""), "{err}");
    }
}
