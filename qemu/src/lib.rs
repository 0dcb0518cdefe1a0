//! berth's QEMU front end: turns a VM description into a QEMU command line, runs it,
//! reads its serial console and talks QMP. Used by `berth run` and by the
//! end-to-end tests.
//!
//! - [`command`]: [`VmConfig`] → argv ([`qemu_args`], pure and unit-tested);
//! - [`accel`]: KVM when a real probe boot works, TCG otherwise, cached per host boot;
//! - [`vm`]: a running [`Vm`]: `expect` on console lines, QMP, exit, kill on drop;
//! - [`direct`]: the boot files of an image's default entry, for `--direct`;
//! - [`run`]: the `berth run` command;
//! - [`terminal`]: the host's terminal in raw mode and the console's input.

pub mod accel;
pub mod command;
pub mod console;
pub mod direct;
pub mod qmp;
pub mod run;
pub mod terminal;
pub mod vm;

pub use accel::Accel;
pub use command::{
    qemu_args, BootMode, DirectBoot, DiskBus, DiskFormat, DiskWrites, Firmware, PortForward,
    Runtime, VmConfig,
};
pub use console::{Echo, ExpectError};
pub use direct::{extract_direct_boot, DirectError};
pub use qmp::{Qmp, QmpError};
pub use run::{run, RunBoot, RunError, RunOptions, RunOutcome};
pub use terminal::ConsoleInput;
pub use vm::{ShellGate, Vm, VmError, VmOptions};
