//! berth's device contract, shared by the builder, the init and the device agent:
//! the disk layout (partitions, ESP paths, boot entries, the kernel command line),
//! the boot-entry state machine (`entries`), the GPT reader and partition windows,
//! block devices, the update state file and the image configuration the init runs
//! from.
//!
//! The builder writes these formats, the init and the agent read them. The init
//! depends on this crate alone, so everything here is plain std + serde/toml.

pub mod arch;
pub mod atomic;
pub mod blockdev;
pub mod clock;
pub mod data;
pub mod entries;
pub mod fatsync;
pub mod gpt;
pub mod image_config;
pub mod layout;
pub mod provision;
pub mod reboot;
pub mod state;
pub mod window;

pub use arch::Arch;
pub use image_config::{
    ContainerConfig, DebugConfig, HealthCheck, HealthProbe, ImageConfig, NetworkConfig,
    RestartPolicy, UpdateConfig,
};
pub use layout::{BootEntry, KernelCmdline, Slot};
